"""Safety when the world moves under the daemon: one test (or a few) for each
finding of the issue "Safety under change and uncertainty".  The decisions
behind them are in the table (tests/reconcile/findings.txt); these show the
whole daemon keeping the three promises: never release what is not clearly
declared, never release twice, never lose a record."""

import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import EXIT, MSG, RETIRED, child_env, num, phone, pid, stderr_of, wait_for

HTML_404 = {"status": 404, "body": "<html><body><h1>404 Not Found</h1>nginx</body></html>",
            "content_type": "text/html"}


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ---------------------------------------------------------------- 1. reloads during a pass

def test_a_reload_stops_what_it_changed_before_it_leaves(make_rig):
    """A paced pass; a reload postpones some rows, re-numbers others, names others
    by another id, and cancels others.  Once the reload is applied, not one DELETE
    leaves for any of them; the untouched rows go on."""
    keep = list(range(1, 9))          # untouched: released
    later = list(range(11, 19))       # postponed to 2030
    renum = list(range(21, 29))       # declared by id and number; the number corrected to a wrong one
    reid = list(range(31, 39))        # declared by number; an id added that names another phone
    drop = list(range(41, 49))        # cancelled
    others = [n + 200 for n in reid]
    rig = make_rig([phone(n) for n in keep + later + renum + reid + drop + others])

    def decl(reloaded):
        d = [{"number": num(n)} for n in keep]
        d += [dict({"number": num(n)}, **({"not_before": "2030-01-01T00:00:00Z"} if reloaded else {})) for n in later]
        d += [{"id": pid(n), "number": num(n + 500) if reloaded else num(n)} for n in renum]
        d += [dict({"number": num(n)}, **({"id": pid(n + 200)} if reloaded else {})) for n in reid]
        d += [] if reloaded else [{"number": num(n)} for n in drop]
        return d

    # The untouched rows come first in the ledger, so they are released first.
    rig.write_config(decl(False), pace={"rate": 5.0, "burst": 1, "concurrency": 2})
    proc = rig.start()
    wait_for(lambda: len(rig.deletes()) >= 3, what="the first DELETEs", timeout=30)
    rig.write_config(decl(True), pace={"rate": 5.0, "burst": 1, "concurrency": 2})
    reply = rig.ctl("reload")
    applied = time.monotonic()
    assert "reloaded" in reply.stdout, reply
    wait_for(lambda: {r["key"]: r["state"] for r in rig.db_rows().values()}.get(num(keep[-1])) == "released"
             or rig.db_rows()[num(keep[-1])]["state"] == "scheduled", what="the untouched rows", timeout=20)
    wait_for(lambda: rig.db_rows()[pid(renum[-1])]["state"] == "failed", what="the re-numbered rows", timeout=30)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)

    changed = {pid(n) for n in later + renum + reid + drop} | {pid(n) for n in others}
    late = [d for d in rig.deletes() if d["phone_id"] in changed and d["t"] > applied]
    assert late == [], "DELETEs left after the reload was applied: %s" % late
    # (And none before either: the changed rows were queued behind the untouched ones.)
    rows = rig.db_rows()
    for n in later:
        assert rows[num(n)]["state"] == "pending" and rig.deletes(pid(n)) == [], rows[num(n)]
    for n in renum:
        assert rows[pid(n)]["state"] == "failed" and "disagree" in rows[pid(n)]["last_error"], rows[pid(n)]
    for n in reid:
        assert rows[num(n)]["state"] == "failed" and rig.deletes(pid(n)) == [] and rig.deletes(pid(n + 200)) == []
    for n in drop:
        assert rows[num(n)]["state"] == "cancelled" and rig.deletes(pid(n)) == []
    for n in keep:
        assert rows[num(n)]["state"] == "scheduled"
    rig.assert_exactly_once(one_delete=True)


# ---------------------------------------------------------------- 2. the record of a release

def test_an_ordered_release_stays_on_record_whatever_a_resync_sees(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1), "number": num(1)}])
    assert rig.run().rc == 0
    assert rig.list()[pid(1)]["state"] == "scheduled"
    # The API now writes the number differently, and shows no release ordered.
    rig.fake.add_phones([dict(rig.fake.phone(pid(1)), number="0034 910 000 001", scheduled_release_at=None)])
    run = rig.run()
    assert run.rc == 0, run
    row = rig.show(pid(1))
    assert row["state"] == "scheduled", row
    assert not run.events(MSG["failed"])
    assert [l for l in run.lines if "stays scheduled" in l], run
    # The release takes effect: recorded.
    rig.fake.add_phones([dict(rig.fake.phone(pid(1)), status="released")])
    run = rig.run()
    assert rig.list()[pid(1)]["state"] == "released", run
    rig.assert_exactly_once(one_delete=True)


# ---------------------------------------------------------------- 3. a 404 that is not the API's

def test_a_404_from_a_proxy_is_not_a_release(make_rig):
    """Every DELETE answered 404 with an HTML page: never recorded released; the
    phone is looked at, sent again, and once the attempts are spent, failed."""
    rig = make_rig([phone(n) for n in range(1, 6)])
    for n in range(1, 6):
        rig.fake.script(pid(n), "DELETE", [HTML_404] * 5)
    rig.write_config([{"id": pid(n)} for n in range(1, 6)], retry={"max_attempts": 3})
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    assert not run.events(MSG["released"]), run
    rows = rig.list()
    for n in range(1, 6):
        assert rows[pid(n)]["state"] == "failed" and "404" in rows[pid(n)]["last_error"], rows[pid(n)]
        assert rig.fake.phone(pid(n))["status"] == "assigned"
        assert len(rig.deletes(pid(n))) == 3


def test_a_404_with_the_apis_own_body_is_gone(make_rig):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [404])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[pid(1)]["state"] == "released"
    assert "already gone (HTTP 404)" in run.outcome("released", phone_id=pid(1))["line"]


# ---------------------------------------------------------------- 4. unknown outcomes settle first

SLOW = {"delay": 2.0, "apply_late": True}     # the API releases it 2 s after the request came


def test_a_delete_slower_than_the_timeout_is_not_sent_again(make_rig):
    """api.timeout 1 s, the API takes 2 s and releases it: the phone is looked at
    only after the settle time (3 s), finds the release, sends nothing more."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [SLOW])
    rig.write_config([{"id": pid(1)}], api={"timeout": 1.0, "settle_time": 3.0})
    run = rig.run()
    assert run.rc == 0, run
    assert rig.fake.delete_counts == {pid(1): 1}, rig.fake.delete_counts
    assert rig.fake.violations == []
    assert rig.list()[pid(1)]["state"] == "scheduled"
    sent = rig.deletes(pid(1))[0]["t"]
    looks = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] == pid(1) and e["t"] > sent]
    assert looks and looks[0]["t"] >= sent + 2.9, "looked at %.2f s after the DELETE" % (looks[0]["t"] - sent)


def test_a_delete_cut_short_by_a_crash_settles_after_a_restart(make_rig):
    """SIGKILL while the API is still at work on a DELETE, and a restart at once:
    the row is looked at no sooner than the settle time after the DELETE left."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [SLOW])
    rig.write_config([{"id": pid(1)}], api={"settle_time": 3.0})
    proc = rig.start()
    wait_for(lambda: rig.fake.delete_counts.get(pid(1)), what="the DELETE")
    proc.kill()
    proc.wait(5)
    assert rig.db_rows()[pid(1)]["state"] == "in_flight"
    run = rig.run()
    assert run.rc == 0, run
    assert rig.fake.delete_counts == {pid(1): 1} and rig.fake.violations == []
    assert rig.list()[pid(1)]["state"] == "scheduled"


# ---------------------------------------------------------------- 7. one ledger, one writer

@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_second_daemon_through_another_name_is_refused(make_rig, link):
    rig = make_rig([phone(n) for n in range(1, 21)], latency=0.05)
    decl = [{"number": num(n)} for n in range(1, 21)]
    rig.write_config(decl, pace={"rate": 20.0})
    # The first daemon must still be running when the second starts: one of
    # its DELETEs is answered only once the test opens the gate (a run of a
    # second would otherwise end before a sanitized second daemon on a
    # loaded machine has opened the ledger).
    gate = threading.Event()
    rig.fake.script(pid(20), "DELETE", [{"gate": gate}])
    first = rig.start("--once")
    try:
        wait_for(lambda: rig.fake.delete_counts.get(pid(20)), what="the first daemon's gated DELETE")
        second = run_second(rig, link)
    finally:
        gate.set()
    assert second.returncode == EXIT["setup"], second.stderr
    assert "in use by another writer" in second.stderr, second.stderr
    assert first.wait(30) == 0, stderr_of(first)
    rig.assert_exactly_once(one_delete=True)
    assert len(rig.deletes()) == 20


def run_second(rig, link):
    """The same config, the same ledger under another name, in a second retired."""
    other = rig.ledger + ".other"
    (os.link if link == "hard" else os.symlink)(rig.ledger, other)
    with open(rig.config_path) as f:
        text = f.read()
    assert text.count('ledger = "%s";' % rig.ledger) == 1
    second_conf = os.path.join(rig.dir, "second.conf")
    with open(second_conf, "w") as f:
        f.write(text.replace('ledger = "%s";' % rig.ledger, 'ledger = "%s";' % other))
    return subprocess.run([RETIRED, "-c", second_conf, "--once"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=child_env(), timeout=60)


# ---------------------------------------------------------------- 8. two clocks

def control(rig, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(rig.control_socket)
    s.sendall(line.encode() + b"\n")
    out = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        out += b
    s.close()
    return out.decode()


def test_not_before_waits_for_the_apis_clock_too(make_rig):
    """Our clock is 31 days ahead of the API's (here: the API's Date is 31 days
    behind): a phone whose not_before has come by our clock, but not by the
    API's, is not released; the skew is warned of and shown in the status."""
    rig = make_rig([phone(1), phone(2)], date_offset=-31 * 86400)
    rig.write_config([{"number": num(1), "not_before": stamp(time.time() - 86400)}, {"number": num(2)}])
    proc = rig.start()
    wait_for(lambda: rig.db_rows().get(num(2), {}).get("state") == "scheduled", what="the phone with no not_before")
    status = control(rig, "status")
    proc.terminate()
    assert proc.wait(10) == 0
    err = stderr_of(proc)
    assert rig.deletes(pid(1)) == [], "released by our clock alone"
    assert rig.db_rows()[num(1)]["state"] == "pending"
    warn = [l for l in err.splitlines() if MSG["clock_skew"] in l]
    assert len(warn) == 1 and "behind" in warn[0], err
    assert "API clock" in status and "behind" in status, status


def test_an_api_clock_ahead_of_ours_changes_nothing(make_rig):
    rig = make_rig([phone(1)], date_offset=31 * 86400)
    rig.write_config([{"number": num(1), "not_before": stamp(time.time() - 86400)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[num(1)]["state"] == "scheduled"


def test_an_api_without_a_date_header_leaves_our_clock_alone(make_rig):
    """No Date header on any answer: there is no second clock to hold
    not_before against, so ours decides; nothing is taken for a skew."""
    rig = make_rig([phone(1), phone(2)], date_header="none")
    rig.write_config([{"number": num(1), "not_before": stamp(time.time() - 60)}, {"id": pid(2)}])
    run = rig.run()
    assert run.rc == 0, run
    rows = rig.list()
    assert rows[num(1)]["state"] == "scheduled" and rows[pid(2)]["state"] == "scheduled", rows
    assert not [l for l in run.lines if MSG["clock_skew"] in l], run
    rig.assert_exactly_once(one_delete=True)


def test_the_resync_timer_confirms_an_ordered_release(make_rig):
    """resync_interval 1 s: the timer keeps bringing passes that look at the
    scheduled phone, and the one after the billing period ends records it
    released, with no DELETE sent again."""
    rig = make_rig([phone(1)], billing_period=2.5)
    rig.write_config([{"id": pid(1)}], extra="resync_interval = 1.0;")
    proc = rig.start()
    wait_for(lambda: rig.db_rows().get(pid(1), {}).get("state") == "scheduled", what="the order", timeout=20)
    wait_for(lambda: rig.db_rows()[pid(1)]["state"] == "released", what="the resync that sees it released",
             timeout=20)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    err = stderr_of(proc)
    assert err.count("(resync)") >= 2, err
    steps = [(h["old_state"], h["new_state"]) for h in rig.db_history(pid(1)) if h["kind"] == "state"]
    assert steps[-1] == ("scheduled", "released"), steps
    rig.assert_exactly_once(one_delete=True)
