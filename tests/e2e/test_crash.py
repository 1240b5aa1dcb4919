"""Crash recovery: a DELETE goes out only after its row is committed in_flight,
and after a crash an in_flight row is looked at again (GET), never re-sent blindly."""

import random
import time

import pytest

from conftest import SETTLED, num, phone, pid, wait_for

N = 30


def key_of(n):
    return num(n) if n % 2 else pid(n)


def history_shows_delete(rig, key):
    """The ledger knows a DELETE went out: its call, or the in_flight step committed before it."""
    return any(h["method"] == "DELETE" or h["new_state"] == "in_flight" for h in rig.db_history(key))


@pytest.mark.parametrize("round_", range(4))
def test_sigkill_during_deletes_then_recover(make_rig, round_):
    rng = random.Random(7919 * (round_ + 1))
    phones = [phone(n, provider="custom" if n % 3 == 0 else "netelip") for n in range(1, N + 1)]
    rig = make_rig(phones, latency=0.08)
    rig.write_config([{"number": num(n)} if n % 2 else {"id": pid(n)} for n in range(1, N + 1)],
                     pace={"rate": 200.0, "burst": 20, "concurrency": 4})
    target = rng.randint(1, N - 8)
    proc = rig.start("--once") if round_ % 2 else rig.start()
    # delete_counts grows as a DELETE arrives, before the fake's latency: so
    # killing now catches DELETEs in flight.
    wait_for(lambda: sum(rig.fake.delete_counts.values()) >= target or proc.poll() is not None,
             what="%d DELETEs to arrive" % target)
    proc.kill()
    proc.wait(5)
    assert proc.returncode == -9, "the daemon ended before the kill (target %d)" % target

    # At the crash: every phone the API got a DELETE for was committed first.
    rows = rig.db_rows()
    sent = {p for p, c in rig.fake.snapshot(phones=False)["delete_counts"].items() if c}
    by_id = {pid(n): key_of(n) for n in range(1, N + 1)}
    for p in sent:
        assert rows[by_id[p]]["state"] in ("in_flight", "scheduled", "released", "retrying"), rows[by_id[p]]
    in_flight_at_crash = [k for k, r in rows.items() if r["state"] == "in_flight"]
    # The fake logs a request once answered: let it finish those the dead daemon sent.
    wait_for(lambda: len(rig.deletes()) == sum(rig.fake.snapshot(phones=False)["delete_counts"].values()),
             what="the fake to answer the DELETEs already sent")
    t_restart = time.monotonic()

    # Recovery.
    run = rig.run()
    assert run.rc == 0, run
    rows = rig.db_rows()
    assert not [k for k, r in rows.items() if r["state"] == "in_flight"]
    assert all(r["state"] in SETTLED for r in rows.values()), {k: r["state"] for k, r in rows.items()}
    snap = rig.fake.snapshot(phones=False)
    assert snap["violations"] == [], "double release after the crash: %s" % snap["violations"]
    assert all(c == 1 for c in snap["release_counts"].values())
    for n in range(1, N + 1):
        row = rows[key_of(n)]
        assert snap["release_counts"].get(pid(n)) == 1, "phone %d never released" % n
        assert row["state"] == ("released" if n % 3 == 0 else "scheduled"), (n, row)
        assert history_shows_delete(rig, key_of(n)), n
    # A row caught in flight was looked at (GET) before anything else, and sent
    # again only if its DELETE had not reached the API.
    for k in in_flight_at_crash:
        p = rows[k]["id"]
        before = [e for e in rig.fake.log if e["phone_id"] == p and e["t"] < t_restart]
        after = [e for e in rig.fake.log if e["phone_id"] == p and e["t"] > t_restart]
        assert after and after[0]["method"] == "GET", (k, before, after)
        if any(e["method"] == "DELETE" for e in before):
            assert not [e for e in after if e["method"] == "DELETE"], (k, before, after)


@pytest.mark.parametrize("provider,final,gone", [("netelip", "scheduled", False), ("custom", "released", False),
                                                  ("custom", "released", True)])
@pytest.mark.parametrize("by", ["number", "id"])
def test_in_flight_applied_is_looked_at_not_resent(make_rig, by, provider, final, gone):
    """Killed while the API (which has applied the release) had not answered yet."""
    rig = make_rig([phone(1, provider=provider), phone(2)], custom_release="gone" if gone else "released")
    rig.fake.script(pid(1), "DELETE", [{"delay": 10, "apply": True}])
    key = num(1) if by == "number" else pid(1)
    rig.write_config([{"number": num(1)}] if by == "number" else [{"id": pid(1)}])
    proc = rig.start("--once")
    # Applied, not only arrived: the fake counts a DELETE before its handler
    # applies it, and a loaded machine shows the gap.
    wait_for(lambda: rig.fake.release_counts.get(pid(1)), what="the DELETE applied")
    proc.kill()
    proc.wait(5)
    assert rig.db_rows()[key]["state"] == "in_flight"
    assert rig.fake.release_counts.get(pid(1)) == 1 and rig.fake.delete_counts.get(pid(1)) == 1

    rig.fake.clear_log()
    run = rig.run()
    assert run.rc == 0, run
    assert rig.fake.delete_counts.get(pid(1)) == 1, "an in_flight DELETE was re-sent blindly"
    assert rig.fake.log[0]["method"] == "GET" and rig.fake.log[0]["phone_id"] == pid(1)
    assert rig.fake.violations == []
    row = rig.list()[key]
    assert row["state"] == final
    hist = rig.show(key)["history"]
    steps = [(e["from"], e["to"]) for e in hist if e["kind"] == "state"]
    assert steps[-2:] == [("pending", "in_flight"), ("in_flight", final)]
    assert any(e["kind"] == "call" and e["method"] == "GET" and e["seq"] > max(
        h["seq"] for h in hist if h["to"] == "in_flight") for e in hist)


def test_in_flight_not_applied_is_looked_at_then_sent(make_rig):
    """Killed while the DELETE was lost on the way (the API did nothing): the
    restart looks first, sees the phone still assigned, and only then re-sends."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [{"delay": 10, "status": 503}])
    rig.write_config([{"id": pid(1)}])
    proc = rig.start("--once")
    wait_for(lambda: rig.fake.delete_counts.get(pid(1)), what="the DELETE")
    proc.kill()
    proc.wait(5)
    assert rig.db_rows()[pid(1)]["state"] == "in_flight"
    assert not rig.fake.release_counts

    rig.fake.clear_log()
    run = rig.run()
    assert run.rc == 0, run
    # (The killed run's DELETE is held 10 s by the fake: it is the scripted entry, if logged at all.)
    assert [(e["method"], e["status"]) for e in rig.fake.log if not e["scripted"]] == [("GET", 200), ("DELETE", 204)]
    assert rig.list()[pid(1)]["state"] == "scheduled"
    rig.assert_exactly_once()


def test_sigterm_waits_for_deletes_in_flight(make_rig):
    """SIGTERM: no new call; those in flight finish and are recorded; exit 0."""
    rig = make_rig([phone(n) for n in range(1, 13)], latency=0.4)
    rig.write_config([{"id": pid(n)} for n in range(1, 13)], pace={"rate": 100.0, "burst": 20, "concurrency": 3})
    proc = rig.start()
    wait_for(lambda: sum(rig.fake.delete_counts.values()) >= 3, what="three DELETEs in flight")
    proc.terminate()
    assert proc.wait(10) == 0
    rows = rig.db_rows()
    assert not [k for k, r in rows.items() if r["state"] == "in_flight"], rows
    sent = {p for p, c in rig.fake.delete_counts.items() if c}
    assert sent and len(sent) < 12
    for n in range(1, 13):
        assert rows[pid(n)]["state"] == ("scheduled" if pid(n) in sent else "pending"), n
    # The answers of the DELETEs in flight were recorded.
    for p in sent:
        assert any(h["method"] == "DELETE" and h["http_status"] == 204 for h in rig.db_history(p))
    with open(proc.stderr_path) as f:
        assert "Stopping" in f.read()
