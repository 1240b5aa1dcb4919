"""Fixtures of the end-to-end tests: the real `retired` and `retirectl` binaries
against the in-process fake Diga API (tests/fake-diga/fake_diga.py).

Run with Debian's pytest:  /usr/bin/python3 -m pytest -q tests/e2e
The binaries come from $RETIRED_BUILD (default: ../../build beside this folder),
so `make check SANITIZE=1` can point the tests at build-san/ and `make coverage`
at build/coverage/ (RETIRED_SANITIZED and RETIRED_COVERAGE loosen time bounds).

Every test gets its own fake (a small explicit account), its own tmp dir with the
token file (mode 0600), the config and the ledger.  Nothing waits with a fixed
sleep: the daemon is run with --once (it exits once every phone is settled) under
a timeout, and background runs are watched by polling with deadlines.
"""

import json
import os
import re
import sqlite3
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fake-diga"))
from fake_diga import FakeDiga  # noqa: E402

BUILD = os.path.abspath(os.environ.get("RETIRED_BUILD") or os.path.join(HERE, "..", "..", "build"))
RETIRED = os.path.join(BUILD, "retired")
RETIRECTL = os.path.join(BUILD, "retirectl")
# What retirectl runs for plan --live, from beside itself.
RETIRECTL_LIVE = os.path.join(BUILD, "retirectl-live")
TOKEN = "test-token"
VIEW_ONLY_TOKEN = "view-only-token"

def _message_ids():
    """MESSAGE_IDs by lowercase name ("released", "auth_paused"...), from daemon/messages.h."""
    with open(os.path.join(HERE, "..", "..", "daemon", "messages.h")) as f:
        ids = {k.lower(): v for k, v in re.findall(r'#define\s+MESSAGE_(\w+)\s+"([0-9a-f]{32})"', f.read())}
    assert {"released", "scheduled", "deferred", "retrying", "failed", "cancelled", "unresolved",
            "auth_paused", "dry_run", "config_rejected", "approval_needed", "pass_summary"} <= set(ids), ids
    return ids


MSG = _message_ids()


def _exit_codes():
    """retired's exit codes by lowercase name ("settled", "stopped", "operator", "setup")."""
    with open(os.path.join(HERE, "..", "..", "daemon", "retired.c")) as f:
        return {k.lower(): int(v) for k, v in re.findall(r"#define\s+EXIT_(\w+)\s+(\d+)", f.read())}


EXIT = _exit_codes()

SETTLED = {"released", "scheduled", "deferred", "unresolved", "failed", "cancelled"}
# Deadlines tell a hang from an answer, so they are paid only when a test
# fails: generous enough for a sanitized build on a machine at a quarter of
# its speed (the suites run side by side, beside other work).
RUN_TIMEOUT = float(os.environ.get("RETIRED_E2E_TIMEOUT", "60"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test at scale (tens of thousands of rows, or a thousand "
                            "calls); make check-fast leaves it out (-m 'not slow'), make check runs it")


def pytest_collection_modifyitems(config, items):
    missing = [p for p in (RETIRED, RETIRECTL, RETIRECTL_LIVE) if not os.access(p, os.X_OK)]
    if missing:
        skip = pytest.mark.skip(reason="not built: %s (run make, or set RETIRED_BUILD)" % ", ".join(missing))
        for item in items:
            if os.path.dirname(str(item.fspath)) == HERE:
                item.add_marker(skip)


# ---------------------------------------------------------------- accounts

def pid(n):
    """A deterministic, canonical (lowercase, version 4) phone id."""
    return str(uuid.UUID(int=0x5E7_1BED_0000_0000_0000_0000 + n, version=4))


def num(n):
    """The canonical number of phone n (as the fake and the daemon write it)."""
    return "+3491%07d" % n


def spaced(n):
    """The number of phone n as a human writes it: '+34 910 000 001'."""
    d = num(n)[1:]
    return "+%s %s %s %s" % (d[:2], d[2:5], d[5:8], d[8:])


def dashed(n):
    d = num(n)[1:]
    return "+%s-%s-%s-%s" % (d[:2], d[2:5], d[5:8], d[8:])


def phone(n, status="assigned", provider="netelip", number=None, **extra):
    """One phone dict for the fake: id pid(n), number num(n) unless given."""
    p = {"id": pid(n), "number": number or num(n), "status": status, "telephony_provider": provider}
    if provider == "custom":
        p["sip_config"] = {"termination_uri": "sip.example.com", "username": "trunk%d" % n,
                           "inbound_media_encryption": "allow", "outbound_media_encryption": "allow",
                           "allowed_addresses": None}
    p.update(extra)
    return p


# ---------------------------------------------------------------- log lines

_FIELD_RE = re.compile(r" ([A-Z][A-Z_]*)=(\S*)")


def fields(line):
    """The KEY=VALUE fields a stderr line carries (PHONE_NUMBER, OUTCOME, MESSAGE_ID...)."""
    return dict(_FIELD_RE.findall(line))


class Run:
    """The outcome of one `retired` run."""

    def __init__(self, argv, rc, stderr, elapsed):
        self.argv, self.rc, self.stderr, self.elapsed = argv, rc, stderr, elapsed
        self.lines = [line for line in stderr.splitlines() if line]

    def events(self, message_id=None, **match):
        """Lines as dicts (fields plus 'line'), filtered by MESSAGE_ID and field values."""
        out = []
        for line in self.lines:
            f = fields(line)
            if message_id and f.get("MESSAGE_ID") != message_id:
                continue
            if all(f.get(k) == v for k, v in match.items()):
                f["line"] = line
                out.append(f)
        return out

    def outcome(self, state, number=None, phone_id=None):
        """The one stderr line of `state` (an OUTCOME) for a phone, by number or id."""
        match = {"OUTCOME": state}
        if number:
            match["PHONE_NUMBER"] = number
        if phone_id:
            match["PHONE_ID"] = phone_id
        ev = self.events(MSG.get(state), **match)
        assert len(ev) == 1, "expected one %s line for %s, got %d:\n%s" % (
            state, number or phone_id, len(ev), self.stderr)
        return ev[0]

    def __repr__(self):
        return "Run(rc=%r, %.2fs)\n%s" % (self.rc, self.elapsed, self.stderr)


# ---------------------------------------------------------------- the rig

def _render(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))   # a JSON string is a valid libconfig string here


def child_env():
    """The daemon must write plain lines to stderr, not to the journal, and must
    not pick up a systemd credential or state folder from the test runner."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY",
                        "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "RETIRED_LOG_LEVEL")}
    env["LC_ALL"] = "C"
    return env


class Rig:
    """A fake Diga API, a tmp dir, a token file, a config and a ledger."""

    def __init__(self, tmp_path, fake):
        self.dir = str(tmp_path)
        os.makedirs(self.dir, exist_ok=True)
        self.fake = fake
        self.token_file = os.path.join(self.dir, "token")
        self.ledger = os.path.join(self.dir, "ledger.db")
        self.config_path = os.path.join(self.dir, "retired.conf")
        # A unix socket path must fit in 108 bytes: pytest's tmp_path may not.
        self.run_dir = tempfile.mkdtemp(prefix="retired-e2e-", dir="/tmp")
        self.control_socket = os.path.join(self.run_dir, "control")
        self.procs = []
        self.set_token(TOKEN)

    # -- files

    def set_token(self, token, mode=0o600):
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        os.chmod(self.token_file, mode)

    def write_config(self, releases, *, api=None, pace=None, retry=None, safety=None, extra="", path=None):
        """Writes the config; each group is the test defaults updated by the dict given."""
        groups = {
            # A short settle time: a test that loses a DELETE's answer looks at it soon.
            "api": {"base_url": self.fake.url, "token_file": self.token_file, "timeout": 5.0, "settle_time": 0.5},
            "pace": {"rate": 50.0, "burst": 10, "concurrency": 4},
            "retry": {"max_attempts": 3, "base_delay": 0.05, "max_delay": 0.2},
            "safety": {"dry_run": False, "max_new_releases": 1000, "hold": 0},
        }
        for name, over in (("api", api), ("pace", pace), ("retry", retry), ("safety", safety)):
            groups[name].update(over or {})
        out = []
        for name, kv in groups.items():
            out.append("%s: {\n%s};" % (name, "".join("  %s = %s;\n" % (k, _render(v)) for k, v in kv.items())))
        out.append("ledger = %s;" % _render(self.ledger))
        out.append("control_socket = %s;" % _render(self.control_socket))
        entries = []
        for r in releases:
            entries.append("  { %s }" % " ".join("%s = %s;" % (k, _render(v)) for k, v in r.items()))
        out.append("releases = (\n%s\n);" % ",\n".join(entries))
        out.append(extra)
        path = path or self.config_path
        with open(path, "w") as f:
            f.write("\n".join(out) + "\n")
        return path

    # -- running

    def argv(self, *args):
        return [RETIRED, "-c", self.config_path] + list(args)

    def run(self, *args, timeout=RUN_TIMEOUT, once=True, env=None):
        """Runs retired (with --once by default) to its end; returns a Run."""
        argv = self.argv(*((("--once",) if once else ()) + args))
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(child_env(), **(env or {})), timeout=timeout, text=True)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            pytest.fail("retired did not exit within %.0f s: %s\n%s" % (timeout, argv, err))
        return Run(argv, p.returncode, p.stderr, time.monotonic() - t0)

    def start(self, *args, env=None):
        """Starts retired in the background (stderr to a file); returns the Popen."""
        err_path = os.path.join(self.dir, "retired.%d.stderr" % len(self.procs))
        err = open(err_path, "w")
        p = subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, env=dict(child_env(), **(env or {})))
        err.close()
        p.stderr_path = err_path
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- retirectl

    def ctl(self, *args, check=True, probe=False):
        """retirectl with these arguments.  A probe only reads the state for a
        test's assertions (list, show, status, often in a poll): sanitized, it
        skips LeakSanitizer's check at exit, a third of each run's CPU; the
        verbs a test runs for themselves keep it."""
        env = child_env()
        if probe and os.environ.get("RETIRED_SANITIZED"):
            env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
        p = subprocess.run([RETIRECTL, "-c", self.config_path] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60, text=True)
        if check:
            assert p.returncode == 0, "retirectl %s: rc=%d\n%s" % (args, p.returncode, p.stderr)
        return p

    def ctl_json(self, *args, probe=True):
        p = self.ctl(*(list(args) + ["--json"]), probe=probe)
        try:
            return json.loads(p.stdout)
        except ValueError:
            pytest.fail("retirectl %s --json printed no valid JSON:\n%s" % (args, p.stdout))

    def list(self):
        """retirectl list --json as {key: phone}."""
        return {p["key"]: p for p in self.ctl_json("list")}

    def show(self, key):
        return self.ctl_json("show", key)

    def status(self):
        return self.ctl_json("status")

    # -- the ledger, read-only

    def db_rows(self):
        """The phones table, read directly (read-only), as {key: row dict}; {} while
        the daemon has not created it yet."""
        if not os.path.exists(self.ledger):
            return {}
        con = sqlite3.connect("file:%s?mode=ro" % self.ledger, uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return {r["key"]: dict(r) for r in con.execute("SELECT * FROM phones ORDER BY pk")}
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {}
            raise
        finally:
            con.close()

    def db_history(self, key):
        con = sqlite3.connect("file:%s?mode=ro" % self.ledger, uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(
                "SELECT h.* FROM history h JOIN phones p ON p.pk = h.phone WHERE p.key = ? ORDER BY h.seq", (key,))]
        finally:
            con.close()

    # -- the fake

    def deletes(self, phone_id=None):
        return self.fake.requests(phone_id=phone_id, method="DELETE")

    def assert_exactly_once(self, one_delete=False):
        """No phone released twice (the fake's violations); with one_delete, not even
        a second DELETE sent (retries after a failed DELETE are otherwise fine)."""
        snap = self.fake.snapshot(phones=False)
        assert snap["violations"] == [], "double releases: %s" % snap["violations"]
        assert all(n <= 1 for n in snap["release_counts"].values()), snap["release_counts"]
        if one_delete:
            assert all(n <= 1 for n in snap["delete_counts"].values()), snap["delete_counts"]


def stderr_of(proc):
    """What a background run (Rig.start) has written to stderr so far."""
    with open(proc.stderr_path) as f:
        return f.read()


def wait_for(predicate, timeout=30.0, interval=0.02, what="condition"):
    """Polls until predicate() is truthy; returns its value or fails the test.
    The interval grows by half each time up to 0.1 s: what comes at once is
    seen at once, and a dozen tests waiting side by side on a loaded machine
    do not spend its CPU on asking."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)
        interval = max(interval, min(0.1, interval * 1.5))


@pytest.fixture
def make_rig(tmp_path):
    """make_rig(phones, **fake_knobs) -> a Rig with a started FakeDiga over exactly those phones."""
    made = []

    def make(phones, **knobs):
        fake = FakeDiga(phones, **knobs)
        fake.start()
        rig = Rig(tmp_path / ("rig%d" % len(made) if made else "rig"), fake)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop_all()
        rig.fake.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs for a ledger, and a way to fill it up and free it again
    (test_hostile.py, test_big_start.py)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for the ledger")
    mnt = str(tmp_path / "disk")
    os.makedirs(mnt)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", mnt],
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % p.stderr.strip())

    class Disk:
        path = mnt
        filler = os.path.join(mnt, "filler")

        def fill(self, leave):
            """Takes all free space but `leave` bytes."""
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            with open(self.filler, "ab") as f:
                f.write(b"\0" * max(0, free - leave))
            st = os.statvfs(mnt)
            return st.f_bavail * st.f_frsize

        def free_up(self):
            os.unlink(self.filler)

    yield Disk()
    subprocess.run(["umount", "-l", mnt])
