"""A stop that comes while a large set of declarations is read, planned or
applied (issue 12: signals served within a second at scale).  The work is cut
short where SQLite is (daemon/retired.c, on_ledger_progress), taken back
whole, and the stop served: the ledger is as it was, the daemon exits at once.

N is large enough that each stage lasts well over a second here (100,000
declarations: reading them ~0.7 s, applying them as new rows ~2 s), so the
signal, sent as soon as the stage is seen to begin, lands inside it.  The old
code blocked the signal through all of it, or died of it while reading.
"""

import os
import signal
import sqlite3
import time

import pytest

from conftest import EXIT, num, phone, stderr_of, wait_for

# A sanitized build does the same work about three times slower: a smaller N
# keeps each stage as long, for less of the suite's CPU.
pytestmark = pytest.mark.slow

N = 40_000 if os.environ.get("RETIRED_SANITIZED") else 100_000
PER_FILE = 1000
# The exit is timed from the signal; a sanitized build is several times slower,
# and so is make coverage's (-O0, counters, two test workers on two cores).
EXIT_WITHIN = 3.0 if os.environ.get("RETIRED_SANITIZED") or os.environ.get("RETIRED_COVERAGE") else 1.0


def write_dropins(folder, start, n):
    """n declarations by number (+3492 and seven digits, from start on), PER_FILE a file."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    for k, lo in enumerate(range(start, start + n, PER_FILE)):
        with open(os.path.join(folder, "%04d.conf" % k), "w") as f:
            f.write("releases = (\n%s\n);\n" % ",\n".join(
                '  { number = "+3492%07d"; reason = "bulk %d"; }' % (i, i)
                for i in range(lo, min(lo + PER_FILE, start + n))))


def ledger_snapshot(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return (db.execute("SELECT key, state, version FROM phones ORDER BY pk").fetchall(),
                db.execute("SELECT count(*) FROM history").fetchone()[0])
    finally:
        db.close()


def signals_blocked(proc):
    """retired blocks SIGTERM (for its signalfd) before it reads anything."""
    try:
        with open("/proc/%d/status" % proc.pid) as f:
            blk = next(line for line in f if line.startswith("SigBlk:"))
    except (OSError, StopIteration):
        return False
    return int(blk.split()[1], 16) & (1 << (signal.SIGTERM - 1))


def released_rig(make_rig, **config):
    """Three phones released (scheduled, as the fake answers) and on record,
    then N more declared in drop-ins."""
    rig = make_rig([phone(n) for n in range(1, 4)])
    dropins = os.path.join(rig.dir, "releases.d")
    write_dropins(dropins, 0, 0)
    extra = 'releases_dir = "%s";' % dropins
    rig.write_config([{"number": num(n)} for n in range(1, 4)], extra=extra)
    run = rig.run()
    assert run.rc == EXIT["settled"], run
    before = ledger_snapshot(rig.ledger)
    assert [(key, state) for key, state, _ in before[0]] == [(num(n), "scheduled") for n in range(1, 4)]
    write_dropins(dropins, 0, N)
    rig.write_config([{"number": num(n)} for n in range(1, 4)], extra=extra,
                     safety={"max_new_releases": 2 * N}, **config)
    return rig, before


def stopped_at_once(proc):
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(30)
    finally:
        elapsed = time.monotonic() - t0
    assert elapsed < EXIT_WITHIN, "exited %.2f s after SIGTERM:\n%s" % (elapsed, stderr_of(proc)[-2000:])
    return rc


def test_sigterm_while_the_declarations_are_read(make_rig):
    rig, before = released_rig(make_rig)
    proc = rig.start()
    wait_for(lambda: signals_blocked(proc) or proc.poll() is not None, what="retired to block SIGTERM")
    assert proc.poll() is None, stderr_of(proc)
    rc = stopped_at_once(proc)
    err = stderr_of(proc)
    assert rc == 0, err
    assert "Stopped while starting: nothing of this start was recorded" in err, err
    assert "API key" not in err, "the signal came after the files were read:\n" + err
    assert "Config rejected" not in err and "Cannot" not in err, err
    assert ledger_snapshot(rig.ledger) == before


def test_sigterm_while_the_declarations_are_applied(make_rig):
    """--once: the run stopped before it settled anything, so it says so (exit 1)."""
    rig, before = released_rig(make_rig)
    proc = rig.start("--once")
    wait_for(lambda: "API key" in stderr_of(proc) or proc.poll() is not None, timeout=60,
             what="the files to be read")
    assert proc.poll() is None, stderr_of(proc)
    rc = stopped_at_once(proc)
    err = stderr_of(proc)
    assert rc == EXIT["stopped"], err
    assert "Stopped while starting: nothing of this start was recorded" in err, err
    assert "Config loaded" not in err, "the signal came after the plan was applied:\n" + err
    assert "Cannot" not in err, err
    assert ledger_snapshot(rig.ledger) == before


def test_sigterm_during_a_reload_keeps_the_declarations_in_force(make_rig):
    """N pending rows declared and in force; a reload that would cancel all of
    them and add N others is cut short by SIGTERM: not one row cancelled or
    added, and the daemon stops as it would have without the reload."""
    rig = make_rig([])
    dropins = os.path.join(rig.dir, "releases.d")
    write_dropins(dropins, 0, N)
    # Nothing answers: the rows stay pending while the listing is tried again.
    rig.write_config([], api={"base_url": "http://127.0.0.1:9"},
                     retry={"max_attempts": 100, "base_delay": 0.5, "max_delay": 5.0},
                     safety={"max_new_releases": 2 * N}, extra='releases_dir = "%s";' % dropins)
    proc = rig.start()
    wait_for(lambda: "Listing phones: page by number failed" in stderr_of(proc) or proc.poll() is not None,
             timeout=120, what="the first pass to try the listing")
    assert proc.poll() is None, stderr_of(proc)
    before = ledger_snapshot(rig.ledger)
    assert len(before[0]) == N and {state for _, state, _ in before[0]} == {"pending"}
    write_dropins(dropins, N, N)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Reloading (SIGHUP)" in stderr_of(proc) or proc.poll() is not None, what="the reload")
    rc = stopped_at_once(proc)
    err = stderr_of(proc)
    assert rc == 0, err
    assert "Reload cut short by a stop; the previous config stays in force." in err, err
    assert err.count("Config loaded") == 1 and "Config reloaded" not in err, err
    assert "Stopping (" in err, err
    assert ledger_snapshot(rig.ledger) == before
