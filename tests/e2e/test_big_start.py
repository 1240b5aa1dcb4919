"""A large start or reload and the disk (issue 25), scaled down to 20,000
declarations: the first start writes the ledger once (a rollback journal, no
WAL as large as the file beside it), a large commit gives its WAL back, and a
full disk during a first start leaves no ledger behind, says which folder is
full, and the next start after room is made completes."""

import os
import sqlite3
import threading

from conftest import EXIT, MSG, stderr_of, wait_for

N = 20000
SAFETY = {"dry_run": True, "max_new_releases": N}


def decls(first, n):
    return [{"number": "+3491%07d" % i} for i in range(first, first + n)]


def rows(path):
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM phones").fetchone()[0]
    finally:
        con.close()


def on_disk(path):
    """The ledger's bytes on disk: the file, its journal, WAL and shared memory."""
    total = 0
    for side in ("", "-journal", "-wal", "-shm"):
        try:
            total += os.stat(path + side).st_size
        except FileNotFoundError:
            pass
    return total


def wal_size(path):
    try:
        return os.stat(path + "-wal").st_size
    except FileNotFoundError:
        return 0


class Peak:
    """The most the ledger took on disk, read as often as the machine lets a
    thread, while a start runs.  With `until`, up to the moment it says the
    start is over: a reading is kept only when `until` was still false just
    after it, so none is taken once the first pass may be writing its WAL."""

    def __init__(self, path, until=None):
        self.path, self.peak, self.stop = path, 0, threading.Event()
        self.until = until
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self):
        while not self.stop.is_set():
            size = on_disk(self.path)
            if self.until and self.until():
                return
            self.peak = max(self.peak, size)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def loaded(proc, times=1):
    return lambda: stderr_of(proc).count(MSG["config_loaded"]) >= times


def test_a_first_start_writes_the_ledger_once_and_leaves_no_wal(make_rig):
    rig = make_rig([])
    rig.write_config(decls(0, N), safety=SAFETY)
    started = []
    # The plan is applied and said so before the first pass begins.
    with Peak(rig.ledger, until=lambda: bool(started) and loaded(started[0])()) as peak:
        started.append(rig.start())
        proc = started[0]
        wait_for(loaded(proc), timeout=60, what="the first start's plan applied")
    size = os.stat(rig.ledger).st_size
    assert rows(rig.ledger) == N
    # In WAL mode the WAL grew as large as the file before its checkpoint.
    assert peak.peak <= 1.2 * size, (peak.peak, size)
    # The pass that follows records what it found through the WAL, given
    # back when the pass ends.
    wait_for(lambda: wal_size(rig.ledger) < 1 << 20, timeout=30,
             what="the WAL given back after the pass (%d bytes)" % wal_size(rig.ledger))
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)


def test_a_large_reload_gives_its_wal_back(make_rig):
    rig = make_rig([])
    rig.write_config(decls(0, 100), safety=SAFETY)
    proc = rig.start()
    wait_for(loaded(proc), what="the first start")
    rig.write_config(decls(0, N), safety=SAFETY)
    proc.send_signal(1)
    wait_for(lambda: stderr_of(proc).count(MSG["config_loaded"]) >= 2, timeout=60, what="the reload applied")
    assert rows(rig.ledger) == N
    # A WAL as large as the reload's changes would be kept for the next
    # writes, up to journal_size_limit (64 MiB), without the checkpoint.
    wait_for(lambda: wal_size(rig.ledger) < 1 << 20, timeout=10,
             what="the WAL truncated (%d bytes)" % wal_size(rig.ledger))
    # The stop records the outcomes of the batch of rows already decided
    # (up to 256, a commit each): a second here, but 10 s was once too few
    # under make check's sanitized suites and its I/O.
    proc.terminate()
    assert proc.wait(30) == 0, stderr_of(proc)


def test_a_full_disk_during_a_first_start_leaves_no_ledger_and_the_next_start_completes(make_rig, small_disk):
    rig = make_rig([])
    rig.ledger = os.path.join(small_disk.path, "ledger.db")
    rig.write_config(decls(0, N), safety=SAFETY)
    small_disk.fill(leave=1 << 20)      # the ledger of N rows takes about 7 MiB
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    said = [l for l in run.stderr.splitlines() if "Cannot apply the plan" in l]
    assert said and "No space left on device" in said[0] and small_disk.path in said[0], run.stderr
    left = sorted(set(os.listdir(small_disk.path)) - {"filler"})
    assert left == [], "a failed first start left files: %s" % left
    assert rig.fake.log == []

    small_disk.free_up()
    proc = rig.start()
    wait_for(loaded(proc), timeout=60, what="the start after room was made")
    assert rows(rig.ledger) == N
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
