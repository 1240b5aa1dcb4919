"""Hostile and broken local input: a ledger the daemon cannot write, one locked by
another writer, truncated, from a newer schema, on a full disk; key and config
files that are not what they should be; ids and numbers that try to smuggle
path or query characters into a URL, from the config or from the API; absurdly
long values.  In every case: a clear message, exit 1 (or a clean refusal of
the bad piece), nothing sent that should not be, nothing on record lost or
"repaired" behind the operator's back.

Root-only cases (running as nobody, mounting a small tmpfs) skip themselves
with a reason when not run as root.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time

import pytest

from conftest import EXIT, MSG, Rig, Run, child_env, num, phone, pid, wait_for

NOBODY = 65534
UUID_PATH = re.compile(r"^/v1/phone/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$")
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
LIST_QUERY = re.compile(r"^(page=[1-9][0-9]*&limit=100&order=asc|limit=100&order=asc(&after=%s)?)$" % UUID_RE)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to run the daemon as nobody, or to "
                                                          "mount a small tmpfs); run the suite as root")


def file_state(path):
    """Bytes (as a digest), size and mtime of a file: what "untouched" means."""
    with open(path, "rb") as f:
        data = f.read()
    st = os.stat(path)
    return hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime_ns


def integrity(path):
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()


def assert_only_uuid_paths(rig):
    """No request ever went anywhere but /v1/phone/ or /v1/phone/<uuid>, with no
    query but the daemon's own paging."""
    for e in rig.fake.log:
        assert UUID_PATH.match(e["path"]), "request to %r" % e["path"]
        if e["phone_id"] is None:
            assert e["method"] == "GET" and LIST_QUERY.match(e["query"]), e
        else:
            assert e["query"] == "", e


def must(cond, msg=""):
    """An invariant that holds even while a known bug stands.  In an xfail test
    (raises=AssertionError) a broken must() is a real failure, never "expected"."""
    if not cond:
        pytest.fail("invariant broken: %s" % msg)


def lines_naming(run, *words):
    return [l for l in run.lines if all(w in l for w in words)]


# ---------------------------------------------------------------- a ledger it cannot write

@pytest.fixture
def open_dir():
    """A folder every user can reach (pytest's tmp dirs are root's alone)."""
    d = tempfile.mkdtemp(prefix="retired-hostile-", dir="/tmp")
    os.chmod(d, 0o711)
    yield d
    for root, dirs, _ in os.walk(d):
        for x in dirs:
            os.chmod(os.path.join(root, x), 0o700)
    shutil.rmtree(d, ignore_errors=True)


def run_as_nobody(rig, *args, timeout=20):
    argv = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] + rig.argv("--once", *args)
    t0 = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=child_env(), timeout=timeout, text=True)
    return Run(argv, p.returncode, p.stderr, time.monotonic() - t0)


def nobody_rig(make_rig, open_dir):
    """A rig in open_dir whose ledger holds a released phone 1, and whose config now
    also declares phone 2; every file is nobody's."""
    base = make_rig([phone(1), phone(2)])
    rig = Rig(os.path.join(open_dir, "rig"), base.fake)
    # make_rig cleans up base: let that clean up this rig's processes and run dir too.
    shutil.rmtree(rig.run_dir)
    rig.run_dir, rig.control_socket, rig.procs = base.run_dir, base.control_socket, base.procs
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0 and rig.list()[pid(1)]["state"] == "scheduled", run
    rig.write_config([{"id": pid(1)}, {"id": pid(2)}])
    # As after a clean stop: the last writer gone, no -wal or -shm beside the ledger.
    con = sqlite3.connect(rig.ledger)
    con.execute("PRAGMA user_version").fetchall()
    con.close()
    assert sorted(os.listdir(rig.dir)) == ["ledger.db", "retired.conf", "token"]
    for f in os.listdir(rig.dir):
        os.chown(os.path.join(rig.dir, f), NOBODY, NOBODY)
    os.chown(rig.dir, NOBODY, NOBODY)
    os.chmod(rig.dir, 0o755)
    rig.fake.clear_log()
    return rig


@needs_root
@pytest.mark.parametrize("folder", [
    "read-only",
    "writable",
])
def test_read_only_ledger_is_refused(make_rig, open_dir, folder):
    """chmod 0400 means nothing to root: the daemon runs as nobody, owner of a
    ledger it may only read.  It must refuse to start, name the file, send
    nothing, and leave the file as it was."""
    rig = nobody_rig(make_rig, open_dir)
    os.chmod(rig.ledger, 0o400)
    if folder == "read-only":
        os.chmod(rig.dir, 0o555)
    before = file_state(rig.ledger)
    run = run_as_nobody(rig)
    os.chmod(rig.dir, 0o755)

    must(run.rc == EXIT["setup"], run)
    must(rig.fake.log == [], "calls were made with a ledger that cannot record them")
    must(file_state(rig.ledger) == before, "the ledger changed")
    must(integrity(rig.ledger) == [("ok",)], "integrity")
    must(set(rig.db_rows()) == {pid(1)}, rig.db_rows())
    assert re.search(r"read-?only|Permission denied", run.stderr, re.I), run
    assert lines_naming(run, rig.ledger), "no line names the ledger %s:\n%s" % (rig.ledger, run.stderr)


# ---------------------------------------------------------------- a ledger in use

def test_ledger_lock_held_by_another_writer(make_rig):
    """The ledger's lock held (as retirectl or another retired would): refused at once."""
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(1)}])
    fd = os.open(rig.ledger, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = rig.run()
        assert run.rc == EXIT["setup"], run
        assert run.elapsed < 4, "refused only after %.1f s (busy_timeout is 5 s)" % run.elapsed
        assert lines_naming(run, rig.ledger, "in use by another writer"), run
        assert rig.fake.log == []
        assert os.path.getsize(rig.ledger) == 0, "the ledger was written while another writer held it"
    finally:
        os.close(fd)
    run = rig.run()
    assert run.rc == 0 and rig.list()[num(1)]["state"] == "scheduled", run


@pytest.fixture
def sqlite_writer():
    """Another SQLite connection holding the ledger's write lock (BEGIN EXCLUSIVE)."""
    held = []

    def hold(path):
        con = sqlite3.connect(path, isolation_level=None, timeout=10)
        con.execute("BEGIN EXCLUSIVE")
        held.append(con)
        return con

    yield hold
    for con in held:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()


def released_ledger(make_rig, n=3):
    rig = make_rig([phone(i) for i in range(1, n + 2)])
    rig.write_config([{"id": pid(i)} for i in range(1, n + 1)])
    assert rig.run().rc == 0
    rows = rig.db_rows()
    rig.write_config([{"id": pid(i)} for i in range(1, n + 2)])
    rig.fake.clear_log()
    return rig, rows


def test_sqlite_write_lock_at_start(make_rig, sqlite_writer):
    """Another connection holds the write lock: the daemon waits its busy_timeout
    (5 s), then exits 1, having sent nothing and lost nothing, and says why."""
    rig, rows = released_ledger(make_rig)
    con = sqlite_writer(rig.ledger)
    run = rig.run(timeout=15)
    con.execute("ROLLBACK")
    must(run.rc == EXIT["setup"], run)
    must(4 < run.elapsed < 30, "gave up after %.1f s (busy_timeout is 5 s)" % run.elapsed)
    must(rig.fake.log == [], "calls made")
    must(rig.db_rows() == rows, "rows changed")
    # Once the lock is gone, it works.
    again = rig.run()
    must(again.rc == 0 and rig.list()[pid(4)]["state"] == "scheduled", again)
    # The message: which file, and that it is locked.
    assert "%m" not in run.stderr, run
    assert lines_naming(run, rig.ledger, "locked"), run


def test_sqlite_write_lock_during_a_pass(make_rig, sqlite_writer):
    """The write lock is taken while the phone's GET is out and held past the
    busy_timeout; then released.  The daemon must either finish the phone or exit
    1 with a clear error, not sit there forever."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "GET", [{"delay": 0.5}])
    rig.write_config([{"id": pid(1)}])
    proc = rig.start("--once")
    wait_for(lambda: (pid(1), "GET") not in rig.fake._scripts, what="the GET to arrive")
    wait_for(lambda: os.path.exists(rig.ledger + "-wal"), what="the ledger to be open")
    con = sqlite_writer(rig.ledger)
    wait_for(lambda: "database is locked" in open(proc.stderr_path).read(), timeout=30,
             what="the daemon to give up on the lock")
    con.execute("ROLLBACK")
    try:
        rc = proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        rc = None
    err = open(proc.stderr_path).read()
    # Whatever it did, nothing was lost or released twice.
    must(rig.db_rows()[pid(1)]["state"] in ("pending", "scheduled", "in_flight"), err)
    must(rig.fake.violations == [], rig.fake.violations)
    assert rc is not None, "retired --once still running 2 s after the lock was released:\n" + err
    assert rc == EXIT["setup"] or rig.db_rows()[pid(1)]["state"] == "scheduled", err


# ---------------------------------------------------------------- a damaged or foreign ledger

def test_truncated_ledger_is_refused_not_repaired(make_rig):
    rig = make_rig([phone(n) for n in range(1, 41)])
    rig.write_config([{"id": pid(n)} for n in range(1, 41)])
    assert rig.run().rc == 0
    size = os.path.getsize(rig.ledger)
    assert size > 8192
    os.truncate(rig.ledger, size // 2)
    before, files = file_state(rig.ledger), sorted(os.listdir(rig.dir))
    rig.fake.clear_log()
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert lines_naming(run, rig.ledger), run
    assert re.search(r"malformed|corrupt|not a database", run.stderr), run
    assert file_state(rig.ledger) == before, "the damaged ledger was rewritten"
    assert sorted(os.listdir(rig.dir)) == files, "files appeared beside the damaged ledger"
    assert rig.fake.log == [], "calls were made against a damaged ledger"
    # retirectl does not paper over it either.
    p = rig.ctl("status", check=False)
    assert p.returncode == 1 and p.stderr, p


def test_ledger_from_a_newer_schema_is_refused_untouched(make_rig):
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"id": pid(1)}])
    assert rig.run().rc == 0
    con = sqlite3.connect(rig.ledger)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    rig.write_config([{"id": pid(1)}, {"id": pid(2)}])
    before, files = file_state(rig.ledger), sorted(os.listdir(rig.dir))
    rig.fake.clear_log()
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert lines_naming(run, rig.ledger, "99", "newer"), run
    assert file_state(rig.ledger) == before, "a ledger from a newer retired was written to"
    assert sorted(os.listdir(rig.dir)) == files
    assert rig.fake.log == []


# ---------------------------------------------------------------- a full disk

N_DISK = 300


def disk_rig(make_rig, disk):
    """300 phones; 10 released into a ledger on the small disk; all 300 declared now."""
    rig = make_rig([phone(n, provider="custom" if n % 2 else "netelip") for n in range(1, N_DISK + 1)])
    rig.ledger = os.path.join(disk.path, "ledger.db")
    rig.write_config([{"id": pid(n)} for n in range(1, 11)])
    assert rig.run().rc == 0
    rows = rig.db_rows()
    assert len(rows) == 10
    rig.write_config([{"id": pid(n)} for n in range(1, N_DISK + 1)], pace={"rate": 2000.0, "burst": 100})
    rig.fake.clear_log()
    return rig, rows


def sent_but_unrecorded(rig):
    """Phones the API got a DELETE for whose row does not show it (no in_flight
    step, no DELETE call): a DELETE must be committed in_flight before it leaves."""
    con = sqlite3.connect("file:%s?mode=ro" % rig.ledger, uri=True, timeout=10)
    try:
        known = {r[0] for r in con.execute(
            "SELECT DISTINCT p.id FROM history h JOIN phones p ON p.pk = h.phone "
            "WHERE h.new_state = 'in_flight' OR h.method = 'DELETE'")}
    finally:
        con.close()
    return sorted(p for p, n in rig.fake.delete_counts.items() if n and p not in known)


def test_full_disk_at_start(make_rig, small_disk):
    """No room to record the new declarations: exit 1 with a clear error, no call
    made, the rows already committed intact."""
    rig, rows = disk_rig(make_rig, small_disk)
    small_disk.fill(leave=150 * 1024)
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert re.search(r"No space left on device|database or disk is full", run.stderr), run
    assert rig.fake.log == []
    small_disk.free_up()
    assert integrity(rig.ledger) == [("ok",)]
    assert rig.db_rows() == rows


@pytest.mark.slow
def test_full_disk_mid_run(make_rig, small_disk):
    """The disk fills up while phones are being released.  The daemon must stop
    with exit 1 and a clear error; whatever it does, the ledger stays whole, no
    committed row is lost, every DELETE the API got is on record (in_flight
    first), and once there is room again a run settles everything, no phone
    released twice."""
    rig, rows = disk_rig(make_rig, small_disk)
    small_disk.fill(leave=400 * 1024)
    proc = rig.start("--once")
    try:
        # It stops as soon as a commit fails; a daemon that does not stop
        # runs forever, so the deadline only has to outlast a loaded machine.
        rc = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        rc = None
    err = open(proc.stderr_path).read()
    must("No space left on device" in err, err)
    small_disk.free_up()

    must(integrity(rig.ledger) == [("ok",)], "integrity")
    now = rig.db_rows()
    must(len(now) == N_DISK, "rows: %d" % len(now))
    for k, r in rows.items():
        must(now[k]["state"] == r["state"], (k, r, now[k]))
    must(sent_but_unrecorded(rig) == [], "DELETEs the ledger does not know: %s" % sent_but_unrecorded(rig))
    must(rig.fake.violations == [], rig.fake.violations)
    must(sum(rig.fake.delete_counts.values()) > 0, "the disk filled before any DELETE: leave more room")

    again = rig.run()
    must(again.rc == 0, again)
    settled = rig.db_rows()
    must({r["state"] for r in settled.values()} <= {"scheduled", "released"},
         {k: r["state"] for k, r in settled.items() if r["state"] not in ("scheduled", "released")})
    must(set(rig.fake.release_counts) == {pid(n) for n in range(1, N_DISK + 1)}, "not all released")
    must(all(n == 1 for n in rig.fake.release_counts.values()), "released twice")

    assert rc is not None, "retired --once still running 20 s after the disk filled up:\n" + err[-3000:]
    assert rc == EXIT["setup"], rc


# ---------------------------------------------------------------- key and config files

@pytest.mark.parametrize("mode", [0o602, 0o620, 0o606])
def test_key_file_writable_by_others_is_refused(make_rig, mode):
    """(Readable-by-others modes are in test_config_errors.py.)  Writable by
    others is as bad: someone else can swap the key."""
    rig = make_rig([phone(1)])
    rig.set_token("test-token", mode=mode)
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert [e for e in run.events(MSG["config_rejected"]) if rig.token_file in e["line"]], run
    assert rig.fake.log == []


def test_key_file_owner_read_only_is_fine(make_rig):
    rig = make_rig([phone(1)])
    rig.set_token("test-token", mode=0o400)
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == 0 and rig.list()[num(1)]["state"] == "scheduled", run


@pytest.mark.parametrize("kind", ["symlink", "directory", "too_large", "control_chars", "inner_space"])
def test_strange_key_file_is_refused(make_rig, kind):
    rig = make_rig([phone(1)])
    token = "test-token"
    if kind == "symlink":
        real = rig.token_file + ".real"
        os.rename(rig.token_file, real)
        os.symlink(real, rig.token_file)
    elif kind == "directory":
        os.unlink(rig.token_file)
        os.mkdir(rig.token_file, 0o700)
    else:
        token = {"too_large": "k" * 100_000, "control_chars": "test-\x1b[2Jtoken", "inner_space": "test token"}[kind]
        rig.set_token(token)
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert lines_naming(run, rig.token_file), run
    assert rig.fake.log == []
    assert token not in run.stderr and token[:20] not in run.stderr.replace(rig.token_file, "")


@pytest.mark.parametrize("which", ["key", "config"])
def test_fifo_instead_of_a_file_is_refused(make_rig, which):
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(1)}])
    path = rig.token_file if which == "key" else rig.config_path
    os.unlink(path)
    os.mkfifo(path, 0o600)
    p = subprocess.Popen(rig.argv("--once"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=child_env(), text=True)
    try:
        _, err = p.communicate(timeout=10)  # blocked: forever; refused: at once
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        err = None
    must(rig.fake.log == [], "calls made")
    assert err is not None, "retired blocked on the FIFO %s" % path
    assert p.returncode == EXIT["setup"] and path in err, err


# ---------------------------------------------------------------- URL smuggling: the config

# (An id in capitals is no smuggling: it is the same UUID, read in lowercase; issue 26.)
SMUGGLED_IDS = ["../../x", "a?b", "%2e%2e%2f", pid(1) + "/..", pid(1) + "?status=released",
                " " + pid(1), pid(1) + "#x", "..", pid(1)[:-1] + "/"]


@pytest.mark.parametrize("bad", SMUGGLED_IDS)
def test_id_with_url_characters_in_config_is_rejected(make_rig, bad):
    rig = make_rig([phone(1), phone(2)])
    path = rig.write_config([{"id": pid(2)}, {"id": bad}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    with open(path) as f:
        line = 1 + [i for i, l in enumerate(f.read().splitlines()) if "id = %s;" % json.dumps(bad) in l][0]
    assert lines_naming(run, "%s:%d: id:" % (path, line)), "no %s:%d: id: message:\n%s" % (path, line, run.stderr)
    assert rig.fake.log == []
    assert not os.path.exists(rig.ledger)


@pytest.mark.parametrize("bad", ["+34/910000001", "+34910000001?x=1", "+34%20910000001", "../34910000001",
                                 "+34910000001#", "+34910000001\\"])
def test_number_with_url_characters_in_config_is_rejected(make_rig, bad):
    rig = make_rig([phone(1)])
    path = rig.write_config([{"number": bad}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert [l for l in run.lines if re.search(re.escape(path) + r":\d+: number:", l)], run
    assert rig.fake.log == []


def test_sip_identifier_with_url_characters_never_reaches_a_url(make_rig):
    """A SIP identifier is an opaque name (user@host, kept as written): one full
    of URL characters is accepted, and only ever compared with the API's numbers."""
    sip = "../../v1/phone/?x=%2f#@evil.example"
    rig = make_rig([phone(1), phone(2, provider="custom", number="trunk2@sip.example.com")])
    rig.write_config([{"number": sip}, {"number": "trunk2@sip.example.com"}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    rows = rig.list()
    assert rows[sip]["state"] == "unresolved" and rows["trunk2@sip.example.com"]["state"] == "released"
    assert_only_uuid_paths(rig)
    assert [e["phone_id"] for e in rig.deletes()] == [pid(2)]


# ---------------------------------------------------------------- URL smuggling: the API

API_BAD_IDS = ["../../x", "a?b", "%2e%2e%2f", pid(3) + "/..", pid(3).upper(), pid(3) + "?x=1", "", None, 42,
               "x" * 100_000]


@pytest.mark.parametrize("bad", API_BAD_IDS, ids=lambda b: repr(b)[:20])
def test_list_page_with_a_smuggled_id_is_refused(make_rig, bad):
    """A phone whose id is not a UUID is skipped, with one warning naming it; the
    rest of the page counts (one odd phone must not hide the others), and the
    number that only that phone could carry gets no release, and says why.
    (An id in capitals is a UUID all the same: taken, in its lowercase form.)"""
    rig = make_rig([phone(1), phone(2), phone(3)])
    good = rig.fake.phone(pid(1))
    evil = dict(rig.fake.phone(pid(3)), id=bad)
    page = {"data": [good, evil], "has_more": False}
    rig.fake.script("list", "GET", [{"status": 200, "body": json.dumps(page)}])
    rig.write_config([{"number": num(1)}, {"number": num(3)}])
    run = rig.run()
    assert run.rc == (EXIT["settled"] if bad == pid(3).upper() else EXIT["operator"]), run
    lists = [e for e in rig.fake.log if e["phone_id"] is None]
    assert len(lists) == 1
    assert_only_uuid_paths(rig)
    rows = rig.list()
    assert rows[num(1)]["state"] == "scheduled"
    if bad == pid(3).upper():
        assert rows[num(3)]["state"] == "scheduled" and rows[num(3)]["id"] == pid(3)
        assert not [l for l in run.lines if "cannot be read" in l], run
    else:
        warn = [l for l in run.lines if "skipped a phone that cannot be read" in l]
        assert len(warn) == 1 and 'no valid "id"' in warn[0], run
        assert rows[num(3)]["state"] == "unresolved", rows[num(3)]
        assert "1 more could not be read" in run.outcome("unresolved", number=num(3))["line"]
        assert rig.deletes(pid(3)) == []
    rig.assert_exactly_once(one_delete=True)


@pytest.mark.parametrize("bad", ["../../x", pid(9) + "&status=released", "a?b", pid(9).upper()])
def test_smuggled_cursor_is_not_followed(make_rig, bad):
    """last_id is the API's cursor: one that is not a UUID is ignored, and the next
    page is asked for after the last phone's (valid) id instead.  (In capitals it
    is a UUID: followed, in its lowercase form.)"""
    rig = make_rig([phone(n) for n in range(1, 4)])
    first = {"data": [rig.fake.phone(pid(3))], "has_more": True, "last_id": bad}
    rig.fake.script("list", "GET", [{"status": 200, "body": json.dumps(first)}])
    rig.write_config([{"number": num(n)} for n in range(1, 4)])
    run = rig.run()
    assert run.rc == 0, run
    assert_only_uuid_paths(rig)
    lists = sorted((e for e in rig.fake.log if e["phone_id"] is None), key=lambda e: e["t"])
    after = pid(9) if bad == pid(9).upper() else pid(3)
    assert lists[1]["query"] == "limit=100&order=asc&after=" + after, lists
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    rig.assert_exactly_once(one_delete=True)


def test_list_cursor_that_does_not_move_is_not_followed_forever(make_rig):
    rig = make_rig([phone(1), phone(2)])
    stuck = {"data": [rig.fake.phone(pid(2))], "has_more": True, "last_id": pid(2)}
    # Four stuck answers: the first two passes each see the cursor repeat
    # once, give the listing up and retry later; the third lists for real.
    rig.fake.script("list", "GET", [{"status": 200, "body": json.dumps(stuck)}] * 4)
    rig.write_config([{"number": num(1)}], pace={"rate": 200.0, "burst": 50})
    run = rig.run()
    must(run.rc == 0, run)
    must(rig.fake.violations == [] and [e["phone_id"] for e in rig.deletes()] == [pid(1)], rig.deletes())
    assert_only_uuid_paths(rig)
    queries = [e["query"] for e in rig.fake.log if e["phone_id"] is None]
    repeats = max(queries.count(q) for q in set(queries))
    assert repeats <= 3, "asked %d times for the page after the same cursor" % repeats


@pytest.mark.parametrize("bad", ["../../x", "a?b", pid(2)])
def test_get_answering_a_smuggled_id_is_not_acted_upon(make_rig, bad):
    rig = make_rig([phone(1), phone(2)])
    rig.fake.script(pid(1), "GET", [{"status": 200, "body": json.dumps(dict(rig.fake.phone(pid(1)), id=bad))}])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    ev = run.events(MSG["retrying"], PHONE_ID=pid(1))
    assert ev and ('no valid \\"id\\"' in ev[0]["line"] or 'no valid "id"' in ev[0]["line"]
                   or "another phone" in ev[0]["line"]), run
    gets = sorted((e for e in rig.fake.log if e["method"] == "GET"), key=lambda e: e["t"])
    assert len(gets) == 2 and all(e["t"] > gets[1]["t"] for e in rig.deletes())
    assert [e["phone_id"] for e in rig.deletes()] == [pid(1)]
    assert_only_uuid_paths(rig)
    assert rig.list()[pid(1)]["state"] == "scheduled"


def test_get_answering_its_id_in_capitals_is_the_same_phone(make_rig):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "GET", [{"status": 200, "body": json.dumps(dict(rig.fake.phone(pid(1)), id=pid(1).upper()))}])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert len([e for e in rig.fake.log if e["method"] == "GET"]) == 1
    assert rig.list()[pid(1)]["state"] == "scheduled"


# ---------------------------------------------------------------- absurdly long values

@pytest.mark.parametrize("field,value,says", [
    ("number", "+34 " + "9" * 61, "longer than 64"),
    ("number", "+34" + " 9" * 50_000, "longer than 64"),
    ("number", "u" * 300 + "@sip.example.com", "longer than 256"),
    ("number", "9" * 21, "3 to 20 digits"),
    ("reason", "r" * 1025, "longer than 1024"),
    ("reason", "OPS " * 262_144, "longer than 1024"),   # 1 MiB
], ids=["number_65", "number_100k", "sip_316", "digits_21", "reason_1025", "reason_1MiB"])
def test_absurdly_long_values_in_config_are_rejected(make_rig, field, value, says):
    rig = make_rig([phone(1)])
    entry = {"number": num(1), field: value} if field == "reason" else {field: value}
    path = rig.write_config([{"id": pid(1)}, entry])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    lines = [l for l in run.lines if re.search(re.escape(path) + r":\d+: %s:" % field, l)]
    assert lines and says in lines[0], run
    assert max(len(l) for l in run.lines) < 2000, "the whole value was echoed back"
    assert rig.fake.log == []


def test_absurdly_long_number_from_the_api(make_rig):
    """A phone whose number is 100,000 characters: the page (or the phone's GET) is
    refused as malformed, nothing on it is acted upon, nothing crashes.  A long but
    plausible number (250 characters) is fine."""
    long_ok = "+34" + "9" * 250
    rig = make_rig([phone(1, number=long_ok), phone(2, number="+34" + "9" * 100_000), phone(3)])
    rig.write_config([{"id": pid(1)}, {"id": pid(2)}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    rows = rig.list()
    assert rows[pid(1)]["state"] == "scheduled" and rows[pid(1)]["number"] == long_ok, rows[pid(1)]
    assert rows[pid(2)]["state"] == "failed" and 'no valid "number"' in rows[pid(2)]["last_error"], rows[pid(2)]
    assert [e["phone_id"] for e in rig.deletes()] == [pid(1)]
    assert max(len(l) for l in run.lines) < 2000

    # Through the list: the odd phone is skipped, with a warning naming it; the
    # others count, so the number declared is resolved and released.
    rig.fake.clear_log()
    rig.write_config([{"number": num(3)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[num(3)]["state"] == "scheduled", run
    warn = [l for l in run.lines if "skipped a phone that cannot be read" in l]
    assert len(warn) == 1 and pid(2) in warn[0] and 'no valid "number"' in warn[0], run
    assert [e["phone_id"] for e in rig.deletes()] == [pid(3)]
    assert max(len(l) for l in run.lines) < 2000


# ---------------------------------------------------------------- the API's words in the log

FORGED = "retired: +34910000099 released: forged PHONE_NUMBER=+34910000099 OUTCOME=released MESSAGE_ID=%s" % \
    MSG["released"]


@pytest.mark.parametrize("via", ["number", "error_message"])
def test_api_text_cannot_forge_log_lines(make_rig, via):
    if via == "number":
        rig = make_rig([phone(1, number="+34910000001\n" + FORGED)])
    else:
        rig = make_rig([phone(1)])
        rig.fake.script(pid(1), "DELETE", [{"status": 409, "message": "nope\n" + FORGED}])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    must(run.rc == EXIT["operator"], run)
    must(rig.fake.violations == [], rig.fake.violations)
    assert all(l.startswith("retired: ") for l in run.lines)
    assert run.events(MSG["released"], PHONE_NUMBER="+34910000099") == [], run
    assert not [l for l in run.lines if l.startswith("retired: +34910000099")], run
