"""A DELETE answered 2xx is the API saying it acted (issue 26): whatever its
code (200, 202, a 204 for a provider the daemon does not know) and whatever
its body, the phone is looked at at once and recorded from what that one GET
shows; one still assigned then (an API at work in the background) is looked
at again at the settle time and never sent again before.  The decisions are
in tests/reconcile/delete.txt and look.txt; these show the whole daemon."""

import json
import os
import sqlite3

from conftest import MSG, phone, pid, wait_for

# The bodies a 2xx may come with; none of them is read as a verdict.
BODIES = {
    "empty": {},
    "json": {"body": {"status": "success", "message": "Phone released"}},
    "error_json": {"body": {"status": "error", "error_code": "RELEASE_QUEUED", "message": "will be done"}},
    "html": {"body": "<html><body><h1>Accepted</h1></body></html>", "content_type": "text/html"},
}
CASES = [(status, kind, provider) for status in (200, 202) for kind in BODIES for provider in ("netelip", "custom")]
FINAL = {"netelip": "scheduled", "custom": "released"}


def calls(rig, key, method):
    return [h for h in rig.db_history(key) if h["kind"] == "call" and h["method"] == method]


def history_says(rig, key, text):
    """Whether a step of the phone's history says text; False while the daemon has
    not created the ledger (or its tables) yet."""
    if not os.path.exists(rig.ledger):
        return False
    try:
        return any(text in (h["detail"] or "") for h in rig.db_history(key))
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return False
        raise


def test_2xx_with_any_body_is_recorded_after_one_look(make_rig):
    """200 and 202, each body, netelip and custom: recorded after one GET, one DELETE
    each, and --once ends at once although the settle time is a minute."""
    rig = make_rig([phone(n, provider=p) for n, (_, _, p) in enumerate(CASES, 1)])
    for n, (status, kind, _) in enumerate(CASES, 1):
        rig.fake.script(pid(n), "DELETE", [dict(BODIES[kind], status=status, apply=True)])
    rig.write_config([{"id": pid(n)} for n in range(1, len(CASES) + 1)], api={"settle_time": 60.0})
    run = rig.run()

    assert run.rc == 0, run
    # Not after the settle time: the API's word is taken at once.
    assert run.elapsed < 20, "--once took %.1f s with settle_time = 60 s" % run.elapsed
    rig.assert_exactly_once(one_delete=True)
    rows = rig.list()
    for n, (status, kind, provider) in enumerate(CASES, 1):
        case = "phone %d: DELETE %d, %s body, %s" % (n, status, kind, provider)
        assert rows[pid(n)]["state"] == FINAL[provider], (case, rows[pid(n)])
        assert rows[pid(n)]["attempts"] == 0, (case, rows[pid(n)])
        (delete,) = rig.deletes(pid(n))
        gets = [e for e in rig.fake.requests(pid(n), "GET") if e["t"] > delete["t"]]
        assert len(gets) == 1, (case, gets)
        assert run.outcome(FINAL[provider], phone_id=pid(n))
        # The DELETE's answer is on record, and what was made of it.
        (d,) = calls(rig, pid(n), "DELETE")
        assert d["http_status"] == status and "accepted; looking at the phone now" in d["detail"], (case, d)
    assert not run.events(MSG["retrying"]) and not run.events(MSG["failed"]), run


def sent_times(rig, key):
    """When each DELETE of the phone left, as the daemon recorded it (its step
    to in_flight, wall seconds): what the settle time counts from.  (The fake's
    time of arrival comes later, by as much as a loaded machine delays it.)"""
    con = sqlite3.connect("file:%s?mode=ro" % rig.ledger, uri=True)
    try:
        return [at / 1e6 for (at,) in con.execute(
            "SELECT h.at FROM history h JOIN phones p ON p.pk = h.phone"
            " WHERE p.key = ? AND h.kind = 'state' AND h.new_state = 'in_flight' ORDER BY h.seq", (key,))]
    finally:
        con.close()


def test_accepted_and_done_in_the_background_is_not_sent_again(make_rig):
    """An API that accepts now and releases later: the look at once sees the phone
    assigned, the daemon says so and waits for the settle time; the look then finds
    the release done.  Never a second DELETE."""
    settle = 1.5
    rig = make_rig([phone(1, provider="custom"), phone(2, provider="netelip")])
    rig.fake.script(pid(1), "DELETE", [{"status": 202, "body": {"status": "accepted"}, "apply": True,
                                        "apply_after": 3600}])
    rig.fake.script(pid(2), "DELETE", [{"status": 200, "apply": True, "apply_after": 3600}])
    rig.write_config([{"id": pid(1)}, {"id": pid(2)}], api={"settle_time": settle})
    proc = rig.start("--once")

    # Looked at once, still assigned: on record as accepted, the row waiting.
    for n in (1, 2):
        wait_for(lambda: history_says(rig, pid(n), "accepted, looking again at the settle time"),
                 what="phone %d's first look" % n, timeout=30)
    rows = rig.db_rows()
    for n in (1, 2):
        assert rows[pid(n)]["state"] == "in_flight", rows[pid(n)]
        assert len(rig.fake.requests(pid(n), "DELETE")) == 1
    # The API's worker gets to them now.
    rig.fake.advance(3600)
    assert proc.wait(30) == 0

    rig.assert_exactly_once(one_delete=True)
    rows = rig.list()
    assert rows[pid(1)]["state"] == "released" and rows[pid(2)]["state"] == "scheduled", rows
    for n in (1, 2):
        (delete,) = rig.deletes(pid(n))
        gets = [e for e in rig.fake.requests(pid(n), "GET") if e["t"] > delete["t"]]
        # One look at once, one at the settle time (no sooner), that recorded it.
        assert len(gets) == 2, gets
        assert gets[0]["t_reply"] - delete["t"] < settle, gets
        assert gets[1]["wall"] >= sent_times(rig, pid(n))[0] + settle - 0.005, gets


def test_a_204_of_an_unknown_provider_done_in_the_background_is_not_sent_again(make_rig):
    """The 204 path of a provider the daemon does not know looked at once, and a
    look that found the phone assigned sent the DELETE again at once: now it waits
    for the settle time like any accepted DELETE."""
    settle = 1.5
    rig = make_rig([phone(1, provider="custom")])
    # The daemon learns the provider from its first look: one it does not know.
    rig.fake.script(pid(1), "GET", [{"status": 200, "body": json.dumps(
        dict(rig.fake.phone(pid(1)), telephony_provider="twilio"))}])
    rig.fake.script(pid(1), "DELETE", [{"status": 204, "apply": True, "apply_after": 3600}])
    rig.write_config([{"id": pid(1)}], api={"settle_time": settle})
    proc = rig.start("--once")
    wait_for(lambda: history_says(rig, pid(1), "HTTP 204: accepted, looking again at the settle time"),
             what="the look after the 204", timeout=30)
    rig.fake.advance(3600)             # the API's worker gets to it now
    assert proc.wait(30) == 0
    rig.assert_exactly_once(one_delete=True)
    assert rig.list()[pid(1)]["state"] == "released"
    (d,) = calls(rig, pid(1), "DELETE")
    assert "DELETE answered HTTP 204 (provider twilio): accepted" in d["detail"], d
    (delete,) = rig.deletes(pid(1))
    gets = [e for e in rig.fake.requests(pid(1), "GET") if e["t"] > delete["t"]]
    # One look at once, one at the settle time (no sooner), that recorded it.
    assert len(gets) == 2 and gets[1]["wall"] >= sent_times(rig, pid(1))[0] + settle - 0.005, gets


def test_accepted_but_never_done_is_sent_again_only_after_the_settle_time(make_rig):
    """A 202 that did nothing: the second DELETE leaves once a look at the settle
    time has found the phone still assigned, not before."""
    settle = 1.0
    rig = make_rig([phone(1, provider="custom")])
    rig.fake.script(pid(1), "DELETE", [{"status": 202, "body": "<html>Accepted</html>", "content_type": "text/html"}])
    rig.write_config([{"id": pid(1)}], api={"settle_time": settle})
    run = rig.run()
    assert run.rc == 0, run
    first, second = rig.deletes(pid(1))
    assert second["wall"] >= sent_times(rig, pid(1))[0] + settle - 0.005, (first, second)
    looks = [e for e in rig.fake.requests(pid(1), "GET") if first["t"] < e["t"] < second["t"]]
    assert len(looks) == 2, looks          # at once, then at the settle time
    rig.assert_exactly_once()
    row = rig.list()[pid(1)]
    assert row["state"] == "released" and row["attempts"] == 1, row
