"""What an operator leans on around the irreversible act: the hold window
(safety.hold), pause and resume, the exit codes a batch job reads, an honest
reload, the key named by its fingerprint, and progress while a pass runs."""

import os
import pty
import re
import select
import socket
import subprocess
import time

import pytest

from conftest import EXIT, MSG, RETIRECTL, RETIRED, child_env, num, phone, pid, spaced, stderr_of, wait_for


def daemon(rig, *args, env=None):
    """Starts the daemon (no --once) and waits until its control socket answers."""
    p = rig.start(*args, env=env)

    def answers():
        out = rig.ctl("status", check=False).stdout
        return p.poll() is not None or ("\ndaemon " in "\n" + out and "not running" not in out)
    wait_for(answers, what="the daemon's control socket")
    assert p.poll() is None, stderr_of(p)
    return p


# ---------------------------------------------------------------- the hold window

def test_held_release_waits_and_says_from_when(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1)}], safety={"hold": 60})
    plan = rig.ctl("plan", check=False)
    assert plan.returncode == 2 and "safety.hold = 60 s: it may go from" in plan.stdout, plan.stdout
    t0 = time.time()
    run = rig.run()
    # Waiting for its time counts as settled: a batch run is not an error.
    assert run.rc == EXIT["settled"], run
    assert rig.deletes() == [] and rig.fake.log == [], "a held release was acted upon"
    row = rig.db_rows()[pid(1)]
    assert row["state"] == "pending" and t0 + 59 <= row["hold_until"] <= time.time() + 61, row
    listed = rig.list()[pid(1)]
    assert listed["held_until"] and listed["held_until"] > listed["updated_at"], listed
    assert "held until:   20" in rig.ctl("show", pid(1)).stdout


def test_withdrawn_during_the_hold_nothing_is_sent(make_rig):
    """Saving a drop-in is not releasing: the typo is taken back within the hold."""
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"id": pid(1)}], safety={"hold": 3})
    p = daemon(rig)
    wait_for(lambda: rig.db_rows().get(pid(1), {}).get("state") == "pending", what="the row")
    rig.write_config([{"id": pid(2)}], safety={"hold": 3})      # pid(1) was the typo
    # The hold runs from when the reload applies, which is after it is asked
    # for and may be long before retirectl returns on a loaded machine.
    t_asked = time.time()
    assert rig.ctl("reload").stdout.strip() == "reloaded"
    assert rig.db_rows()[pid(1)]["state"] == "cancelled"
    wait_for(lambda: rig.db_rows()[pid(2)]["state"] == "scheduled", timeout=30, what="pid(2) after its hold")
    deletes = rig.deletes()
    assert [d["phone_id"] for d in deletes] == [pid(2)], deletes
    assert deletes[0]["wall"] >= t_asked + 3, "released %.2f s after the reload was asked for, within its hold" % (
        deletes[0]["wall"] - t_asked)
    p.terminate()
    assert p.wait(10) == 0


def test_a_changed_number_is_held_again(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1), "number": "+34910000099"}], safety={"hold": 0})
    rig.ctl("pause")
    assert rig.run().rc == EXIT["stopped"]
    rig.ctl("resume")
    # The number corrected: a change the DELETE acts on, so a new hold.
    rig.write_config([{"id": pid(1), "number": num(1)}], safety={"hold": 60})
    run = rig.run()
    assert run.rc == EXIT["settled"], run
    assert rig.deletes() == [], "the corrected declaration went before its hold"
    assert rig.db_rows()[pid(1)]["hold_until"] > time.time() + 50
    # A new reason alone changes nothing the DELETE acts on: no new hold.
    rig.write_config([{"id": pid(1), "number": num(1), "reason": "OPS-7"}], safety={"hold": 0})
    before = rig.db_rows()[pid(1)]["hold_until"]
    rig.run()
    assert rig.db_rows()[pid(1)]["hold_until"] == before and rig.deletes() == []


# ---------------------------------------------------------------- pause and resume

def test_pause_is_kept_in_the_ledger_across_restarts(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1)}])
    out = rig.ctl("pause", "change", "freeze", "OPS-99").stdout
    assert "kept in the ledger" in out, out
    status = rig.status()
    assert status["paused"]["uid"] == os.getuid() and status["paused"]["reason"] == "change freeze OPS-99", status
    assert "PAUSED by uid %d" % os.getuid() in rig.ctl("status").stdout
    run = rig.run()
    assert run.rc == EXIT["stopped"] and "paused by an operator" in run.stderr, run
    assert rig.deletes() == []
    run = rig.run()         # and again: nothing changed by restarting
    assert run.rc == EXIT["stopped"] and rig.deletes() == []
    rig.ctl("resume")
    run = rig.run()
    assert run.rc == EXIT["settled"], run
    assert [d["phone_id"] for d in rig.deletes()] == [pid(1)]


def test_pause_stops_a_running_pass_and_resume_finishes_it(make_rig):
    phones = [phone(i) for i in range(1, 11)]
    rig = make_rig(phones)
    rig.write_config([{"id": pid(i)} for i in range(1, 11)], pace={"rate": 4.0, "burst": 1, "concurrency": 1})
    p = daemon(rig)
    wait_for(lambda: len(rig.deletes()) >= 2, what="the first DELETEs")
    assert rig.ctl("pause", "wrong", "batch").stdout.startswith("paused")
    t_paused = time.time()
    n_at_pause = len(rig.deletes())
    # Nothing more leaves: watch for longer than three DELETEs would take at this pace.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert all(d["wall"] <= t_paused + 0.05 for d in rig.deletes()), "a DELETE left after the pause"
        time.sleep(0.05)
    assert len(rig.deletes()) <= n_at_pause + 1      # one may have been on the wire already
    err = stderr_of(p)
    assert MSG["paused"] in err and "wrong batch" in err, err
    assert rig.ctl("resume").stdout.strip() == "resumed"
    wait_for(lambda: all(r["state"] == "scheduled" for r in rig.db_rows().values()), timeout=30, what="the rest")
    rig.assert_exactly_once()
    assert MSG["resumed"] in stderr_of(p)
    p.terminate()
    assert p.wait(10) == 0


# ---------------------------------------------------------------- exit codes

def test_exit_code_when_a_phone_needs_an_operator(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1)}, {"number": "+34999999999"}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    assert rig.db_rows()["+34999999999"]["state"] == "unresolved"
    assert re.search(r"1 declared phone needs an operator", run.stderr), run


def test_exit_code_for_a_config_error_and_a_bad_option(make_rig):
    rig = make_rig([phone(1)])
    with open(rig.config_path, "w") as f:
        f.write("releases = ( { id = 7; } );\n")
    run = rig.run()
    assert run.rc == EXIT["setup"] and re.search(r"retired\.conf:1: ", run.stderr), run
    p = subprocess.run([RETIRED, "--no-such-option"], stderr=subprocess.PIPE, text=True, env=child_env())
    assert p.returncode == EXIT["setup"] and "Try 'retired --help'" in p.stderr, p.stderr
    assert rig.fake.log == []


# ---------------------------------------------------------------- reload

def test_reload_answers_only_once_applied_and_fails_on_a_rejected_config(make_rig):
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"id": pid(1)}])
    p = daemon(rig)
    wait_for(lambda: rig.db_rows().get(pid(1), {}).get("state") == "scheduled", what="pid(1)")
    good = rig.write_config([{"id": pid(1)}, {"id": pid(2)}])
    r = rig.ctl("reload")
    # Applied when the answer comes: the new row is in the ledger already.
    assert r.stdout.strip() == "reloaded" and pid(2) in rig.db_rows(), r
    with open(good, "a") as f:
        f.write("pace: { rate = -1.0; };\n")
    # As under ExecReload=: $RUNTIME_DIRECTORY names where the socket is by
    # default, which is where retirectl asks when the config does not load.
    r = subprocess.run([RETIRECTL, "-c", rig.config_path, "reload"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=dict(child_env(), RUNTIME_DIRECTORY=rig.run_dir))
    assert r.returncode != 0 and re.search(r"retired\.conf:\d+: ", r.stderr), r
    # The daemon heard of it too: its journal says the config was rejected.
    wait_for(lambda: MSG["config_rejected"] in stderr_of(p), what="the daemon's 'config rejected'")
    assert p.poll() is None
    p.terminate()
    assert p.wait(10) == 0


# ---------------------------------------------------------------- the key

def test_the_key_is_named_by_its_fingerprint_only(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    lines = [l for l in run.lines if l.startswith("retired: API key ")]
    assert len(lines) == 1 and re.match(r"retired: API key [0-9a-f]{16} from ", lines[0]), run
    assert "test-token" not in run.stderr


def test_check_warns_when_the_unit_could_not_read_token_file(make_rig):
    if os.geteuid() != 0:
        pytest.skip("needs root: the warning is about a root-owned key file")
    rig = make_rig([phone(1)])
    rig.write_config([{"id": pid(1)}])
    for argv in ([RETIRED, "-c", rig.config_path, "-n"], ):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        assert p.returncode == 0 and "dynamic user" in p.stderr, p.stderr
    r = rig.ctl("check")
    assert "dynamic user" in r.stderr and "LoadCredential=" in r.stderr, r.stderr


# ---------------------------------------------------------------- progress

def test_status_shows_progress_during_a_pass(make_rig, tmp_path):
    rig = make_rig([phone(i) for i in range(1, 9)])
    rig.write_config([{"id": pid(i)} for i in range(1, 9)], pace={"rate": 2.0, "burst": 1, "concurrency": 1})
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    p = rig.start("--once", env={"NOTIFY_SOCKET": path})
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(re.search(r"\d+/\d+ at [\d.]+/s, ETA \d+ s", s) for s in seen):
        seen += [l for l in sock.recv(4096).decode().split("\n") if l.startswith("STATUS=")]
    sock.close()
    assert any(re.search(r"pass since \S+Z: \d+/\d+ at [\d.]+/s, ETA \d+ s", s) for s in seen), seen
    assert p.wait(20) == EXIT["settled"], stderr_of(p)
    # Not a terminal: no progress bar among the lines.
    assert "\033[K" not in stderr_of(p)


def test_a_terminal_gets_a_progress_bar(make_rig):
    rig = make_rig([phone(i) for i in range(1, 7)])
    rig.write_config([{"id": pid(i)} for i in range(1, 7)], pace={"rate": 2.0, "burst": 1, "concurrency": 1})
    master, slave = pty.openpty()
    p = subprocess.Popen(rig.argv("--once"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                         env=dict(child_env(), TERM="xterm"))
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 20)
        if not r:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(20) == EXIT["settled"]
    text = out.decode(errors="replace")
    assert re.search(r"\[#*\.*\] \d+/6", text), text
    assert "\r\033[K" in text


# ---------------------------------------------------------------- many rows, one entry

def test_many_cancellations_are_one_journal_entry(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"number": "+3491%07d" % i} for i in range(150)], safety={"hold": 600})
    assert rig.run().rc == EXIT["settled"]
    rig.write_config([{"id": pid(1)}], safety={"hold": 600})
    run = rig.run()
    cancelled = run.events(MSG["cancelled"])
    assert len(cancelled) == 1 and "150 phones cancelled" in cancelled[0]["line"], cancelled
    assert sum(1 for r in rig.db_rows().values() if r["state"] == "cancelled") == 150
    assert rig.fake.log == []


@pytest.mark.slow
def test_a_long_start_keeps_the_watchdog_fed(make_rig, tmp_path):
    """A first start with 100,000 new declarations (drop-ins of 1,000) works
    for longer than the watchdog interval before READY=1, and before the
    event loop runs: the daemon pings meanwhile, or systemd kills it and
    starts it again, forever.  It extends the start timeout as it goes, too
    (EXTEND_TIMEOUT_USEC=, 30 s from each message): on a slow machine a
    million declarations outlast TimeoutStartSec= and would meet the same
    fate."""
    # Sanitized, the start is several times slower: fewer declarations make
    # it as long (and the test skips itself if the start is too short).
    n, per_file, watchdog = (30000 if os.environ.get("RETIRED_SANITIZED") else 100000), 1000, 1.0
    rig = make_rig([phone(1)])
    dropins = tmp_path / "releases.d"
    dropins.mkdir()
    for k in range(0, n, per_file):
        (dropins / ("%06d.conf" % k)).write_text("releases = (\n%s\n);\n" % ",\n".join(
            '  { number = "+3492%07d"; }' % i for i in range(k, k + per_file)))
    rig.write_config([], safety={"max_new_releases": n, "dry_run": True},
                     extra='releases_dir = "%s";' % dropins)
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(120)
    t0 = time.monotonic()
    p = rig.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(int(watchdog * 1e6))})
    pings, extends, ready = [], [], None
    try:
        while ready is None:
            lines = sock.recv(4096).decode().split("\n")
            t = time.monotonic()
            if "WATCHDOG=1" in lines:
                pings.append(t)
            extends += [(t, l) for l in lines if l.startswith("EXTEND_TIMEOUT_USEC=")]
            if "READY=1" in lines:
                ready = t
        # The loop's pings and statuses go on; an extension would now stretch
        # RuntimeMaxSec= instead, so none comes.
        until = time.monotonic() + 1.5
        sock.settimeout(0.5)
        while time.monotonic() < until:
            try:
                assert "EXTEND_TIMEOUT_USEC" not in sock.recv(4096).decode(), "an extension after READY=1"
            except socket.timeout:
                pass
    finally:
        sock.close()
        p.terminate()
    assert p.wait(20) == 0, stderr_of(p)
    assert "%d declared" % n in stderr_of(p), stderr_of(p)
    if ready - t0 < watchdog:
        pytest.skip("the start took %.2f s, too short against WatchdogSec=%.1fs to show anything" %
                    (ready - t0, watchdog))
    # The commit of the plan's one transaction is one step of SQLite: 0.2 s or
    # so at this size on an idle machine, inside the interval.  Its fsync
    # takes what the disk gives, so on a loaded machine the bound is a share
    # of the start instead: a start that does not ping has one gap, all of it.
    gaps = [b - a for a, b in zip([t0] + pings, pings + [ready])]
    bound = max(watchdog, (ready - t0) / 4)
    assert max(gaps) < bound, "start %.2f s, %d pings, longest gap %.2f s" % (ready - t0, len(pings), max(gaps))
    assert extends and {l for _, l in extends} == {"EXTEND_TIMEOUT_USEC=30000000"}, extends
    times = [t for t, _ in extends]
    gaps = [b - a for a, b in zip([t0] + times, times + [ready])]
    assert max(gaps) < max(watchdog, (ready - t0) / 4), "longest time without an extension: %.2f s" % max(gaps)


# ---------------------------------------------------------------- the plan as read

def test_plan_shows_each_kind_of_change_as_documented(make_rig):
    """`retirectl plan` prints one line per change, kind by kind, in the shape
    retirectl(1) gives: what an operator reviews before a reload."""
    rig = make_rig([phone(n) for n in range(1, 6)])
    rig.write_config([{"id": pid(1)}])
    assert rig.run().rc == EXIT["settled"]
    held = {"hold": 3600}
    rig.write_config([{"id": pid(2)}, {"id": pid(3), "reason": "a"}, {"id": pid(5)}], safety=held)
    assert rig.run().rc == EXIT["settled"]
    rig.write_config([{"id": pid(3), "reason": "a"}, {"id": pid(5)}], safety=held)
    assert rig.run().rc == EXIT["settled"]
    rows = rig.db_rows()
    gone = rows[pid(1)]["state"]
    assert gone in ("released", "scheduled") and (rows[pid(2)]["state"], rows[pid(3)]["state"]) == \
        ("cancelled", "pending"), rows
    path = rig.write_config([{"id": pid(2)}, {"id": pid(3), "reason": "b"}, {"number": spaced(4)}],
                            safety=held)
    plan = rig.ctl("plan", check=False)
    assert plan.returncode == 2, plan.stderr
    changes = [line for line in plan.stdout.splitlines() if line[:2] in ("+ ", "- ", "~ ", "! ")]
    assert changes[1:] == [
        "+ redeclare %s (cancelled -> pending)" % pid(2),
        "- cancel    %s (pending -> cancelled)" % pid(5),
        "~ update    %s (pending -> pending)" % pid(3),
        "! keep      %s number=%s (%s, no longer declared: cannot be undone)" % (pid(1), num(1), gone),
    ], plan.stdout
    assert re.fullmatch(r"\+ add       %s \(declared at %s:\d+\)" % (re.escape(num(4)), re.escape(path)),
                        changes[0]), plan.stdout
    assert plan.stdout.startswith("Plan ") and "1 to add, 1 to declare again, 1 to cancel, 1 to update; " \
        "1 no longer declared but kept." in plan.stdout, plan.stdout
