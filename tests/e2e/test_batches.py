"""A pass over more rows than one batch (issue 12): the daemon takes its due
rows from the ledger a batch at a time (daemon/engine.c, BATCH = 256), so
these tests declare a few batches' worth and check that each row is met once,
and that a failed listing is one event however many rows it concerns.
"""

import sqlite3

import pytest

from conftest import EXIT, MSG, num, phone, pid

BATCH = 256


@pytest.mark.slow
def test_a_pass_over_several_batches_releases_each_phone_once(make_rig):
    """Three batches' worth, half by id and half by number: one listing, one
    DELETE per phone, none while the account is listed."""
    n = 3 * BATCH + 17
    rig = make_rig([phone(i) for i in range(1, n + 1)], paging="both")
    rig.write_config([{"id": pid(i)} if i % 2 else {"number": num(i)} for i in range(1, n + 1)],
                     pace={"rate": 2000.0, "burst": 100, "concurrency": 8}, safety={"max_new_releases": n})
    # Some 1,600 calls: a few seconds here, a minute or more sanitized on a
    # loaded machine; a hang never ends.
    run = rig.run(timeout=240)
    assert run.rc == EXIT["settled"], run
    rows = rig.list()
    assert len(rows) == n
    assert {r["state"] for r in rows.values()} == {"scheduled"}, run
    deletes = rig.deletes()
    assert sorted(d["phone_id"] for d in deletes) == sorted(pid(i) for i in range(1, n + 1))
    rig.assert_exactly_once(one_delete=True)
    lists = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] is None]
    assert lists and max(e["t_reply"] for e in lists) < min(d["t"] for d in deletes)
    assert len(run.events(MSG["pass_summary"])) == 1, run


def test_an_unreachable_api_is_one_warning_per_listing_not_one_line_per_row(make_rig):
    """Four batches due and nothing answers: no row is touched (no attempt, no
    history, no line of its own), each listing's failure is one warning with
    the count, and --once stops once the listing has failed max_attempts times."""
    n = 4 * BATCH
    rig = make_rig([])
    rig.write_config([{"id": pid(i)} if i % 4 == 0 else {"number": num(i)} for i in range(1, n + 1)],
                     api={"base_url": "http://127.0.0.1:9"}, retry={"max_attempts": 2},
                     safety={"max_new_releases": n})
    run = rig.run(timeout=60)
    assert run.rc == EXIT["stopped"], run
    warnings = [line for line in run.lines if "could not be listed" in line]
    assert 2 <= len(warnings) <= 3, run
    assert all("the API cannot be reached; %d phones wait without a verdict" % n in w for w in warnings), warnings
    assert not run.events(MSG["retrying"]) and not run.events(MSG["failed"]), run
    assert not [line for line in run.lines if "PHONE_NUMBER=" in line or "PHONE_ID=" in line], run
    assert len(run.lines) < 40, "\n".join(run.lines)
    db = sqlite3.connect("file:%s?mode=ro" % rig.ledger, uri=True)
    try:
        assert db.execute("SELECT state, count(*), max(attempts) FROM phones GROUP BY state").fetchall() == \
            [("pending", n, 0)]
        # The declarations' rows and nothing else: not a single call on record.
        assert db.execute("SELECT count(*) FROM history WHERE kind = 'call' OR new_state != 'pending'").fetchone() == (0,)
    finally:
        db.close()
