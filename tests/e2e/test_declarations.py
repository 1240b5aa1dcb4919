"""Declarations changing between runs: cancel, declare again, the blast-radius
guard, an operator's retry.  (Reload of a running daemon is not covered here.)"""

import os
import re

import pytest

from conftest import EXIT, MSG, num, phone, pid, wait_for


def test_undeclared_before_release_is_cancelled(make_rig):
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"number": num(1), "not_before": "2099-01-01T00:00:00Z"}, {"number": num(2)}])
    assert rig.run().rc == 0
    assert rig.list()[num(1)]["state"] == "pending"

    rig.write_config([{"number": num(2)}])
    run = rig.run()
    assert run.rc == 0, run
    ev = run.outcome("cancelled", number=num(1))
    assert ev["MESSAGE_ID"] == MSG["cancelled"]
    rows = rig.list()
    assert rows[num(1)]["state"] == "cancelled" and rows[num(2)]["state"] == "scheduled"
    assert [e["phone_id"] for e in rig.deletes()] == [pid(2)]

    # Declared again (now due): pending again, then released.
    rig.write_config([{"number": num(1)}, {"number": num(2)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[num(1)]["state"] == "scheduled"
    assert sorted(e["phone_id"] for e in rig.deletes()) == [pid(1), pid(2)]
    rig.assert_exactly_once(one_delete=True)


def test_undeclared_after_release_stays_released(make_rig):
    rig = make_rig([phone(1), phone(2, provider="custom")])
    rig.write_config([{"number": num(1)}, {"id": pid(2)}])
    assert rig.run().rc == 0
    rig.write_config([])
    run = rig.run()
    assert run.rc == 0, run
    assert not run.events(MSG["cancelled"])
    rows = rig.list()
    assert rows[num(1)]["state"] == "scheduled" and rows[pid(2)]["state"] == "released"
    assert len(rig.deletes()) == 2


def test_blast_radius_guard_holds_new_releases(make_rig):
    rig = make_rig([phone(n) for n in range(1, 6)])
    rig.write_config([{"number": num(n)} for n in range(1, 6)], safety={"max_new_releases": 3})
    run = rig.run()
    assert run.rc == 0, run
    ev = run.events(MSG["approval_needed"])
    assert len(ev) == 1 and "5 new releases" in ev[0]["line"], run
    assert rig.deletes() == []
    assert all(r["state"] != "scheduled" for r in rig.list().values())

    plan_hash = re.search(r"retirectl approve ([0-9a-f]+)", ev[0]["line"]).group(1)
    rig.ctl("approve", plan_hash)
    run = rig.run()
    assert run.rc == 0, run
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    assert len(rig.deletes()) == 5
    rig.assert_exactly_once(one_delete=True)


def test_operator_retry_of_a_failed_phone(make_rig):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [409])
    rig.write_config([{"number": num(1)}])
    assert rig.run().rc == EXIT["operator"]
    assert rig.list()[num(1)]["state"] == "failed"
    rig.ctl("retry", num(1))
    row = rig.list()[num(1)]
    assert row["state"] == "pending" and row["attempts"] == 0
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[num(1)]["state"] == "scheduled"
    assert [e["status"] for e in rig.deletes()] == [409, 204]


def test_undeclared_while_in_flight_records_what_the_delete_did(make_rig):
    """Crash with a DELETE in flight (applied at the API), then the phone is
    un-declared: its release is cancelled (no second DELETE may go out), and
    the look that follows records what the first DELETE did."""
    rig = make_rig([phone(1), phone(2)])
    rig.fake.script(pid(1), "DELETE", [{"delay": 10, "apply": True}])
    rig.write_config([{"number": num(1)}, {"number": num(2)}])
    proc = rig.start("--once")
    wait_for(lambda: rig.fake.release_counts.get(pid(1)), what="the DELETE applied")
    proc.kill()
    proc.wait(5)
    assert rig.db_rows()[num(1)]["state"] == "in_flight"
    rig.write_config([{"number": num(2)}])
    run = rig.run()
    assert run.rc == 0, run
    assert run.events(MSG["cancelled"], PHONE_NUMBER=num(1))
    assert run.events(MSG["scheduled"], PHONE_NUMBER=num(1)), "the truth goes on record after the cancel"
    assert rig.list()[num(1)]["state"] == "scheduled"
    # (The first DELETE is still held by the fake's delay: count it where it arrived.)
    assert rig.fake.delete_counts.get(pid(1)) == 1 and rig.fake.violations == []


def test_undeclared_while_retrying_after_an_applied_delete(make_rig):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [{"status": 502, "apply": True}])
    # A long backoff keeps the row 'retrying' while the config changes.
    rig.write_config([{"number": num(1)}], retry={"base_delay": 30.0, "max_delay": 30.0})
    proc = rig.start()
    wait_for(lambda: rig.db_rows().get(num(1), {}).get("state") == "retrying", what="the row to be retrying")
    proc.terminate()
    assert proc.wait(10) == 0
    assert rig.fake.phone(pid(1))["scheduled_release_at"], "the fake applied the release"

    rig.write_config([])
    run = rig.run()
    assert run.rc == 0, run
    assert len(rig.deletes(pid(1))) == 1
    assert rig.list()[num(1)]["state"] == "scheduled", \
        "the ledger must not say 'cancelled' for a phone the API released"


def test_an_id_in_capitals_is_the_same_phone(make_rig):
    """An id pasted from a dashboard in capitals is the phone's id: declared that way
    and in lowercase it is one phone, released once, and `show` and `retry` find it
    in capitals too."""
    rig = make_rig([phone(1), phone(2)])
    upper = pid(1).upper()
    rig.fake.script(pid(1), "DELETE", [409])
    path = rig.write_config([{"id": upper, "reason": "from a dashboard"}, {"id": pid(1)}, {"number": num(2)}])
    line = next(i for i, text in enumerate(open(path).read().splitlines(), 1) if upper in text)
    check = rig.ctl("check")
    assert "%s:%d: 1 id in capitals" % (path, line) in check.stderr, check.stderr
    assert "2 releases declared" in check.stdout, check.stdout

    assert rig.run().rc == EXIT["operator"]
    rows = rig.list()
    assert sorted(rows) == sorted([pid(1), num(2)]) and rows[pid(1)]["state"] == "failed", rows
    assert rig.show(upper)["key"] == pid(1)
    rig.ctl("retry", upper)
    assert rig.list()[pid(1)]["state"] == "pending"
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[pid(1)]["state"] == "scheduled"
    assert [e["status"] for e in rig.deletes(pid(1))] == [409, 204]
    rig.assert_exactly_once()


def test_a_phone_declared_ten_thousand_times_is_one_delete_and_one_warning(make_rig):
    """A list pasted over and over: one phone, one DELETE, and check, plan and the
    daemon's load line each say so once, with the count and the first places."""
    # The trial's ten thousand; sanitized, a thousand say the same at a tenth of the CPU.
    copies = 1000 if os.environ.get("RETIRED_SANITIZED") else 10000
    rig = make_rig([phone(1)])
    path = rig.write_config([{"number": num(1)}] * copies)
    lines = [i for i, text in enumerate(open(path).read().splitlines(), 1) if num(1) in text]
    assert len(lines) == copies
    said = "%s:%d: %s is declared %d times, also at %s:%d, %s:%d and %d more places" % (
        path, lines[0], num(1), copies, path, lines[1], path, lines[2], copies - 3)

    check = rig.ctl("check")
    assert check.stderr.count("declared %d times" % copies) == 1 and said in check.stderr, check.stderr
    assert "OK, 1 release declared" in check.stdout, check.stdout
    plan = rig.ctl("plan", check=False)
    assert plan.returncode == 2, plan
    assert plan.stderr.count("declared %d times" % copies) == 1 and said in plan.stderr, plan.stderr
    assert plan.stdout.count("+ add") == 1, plan.stdout

    run = rig.run()
    assert run.rc == 0, run
    loaded = run.events(MSG["config_loaded"])
    assert len(loaded) == 1 and said in loaded[0]["line"], run
    assert run.stderr.count("declared %d times" % copies) == 1, run
    assert len(rig.deletes(pid(1))) == 1
    rig.assert_exactly_once(one_delete=True)
