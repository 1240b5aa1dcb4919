"""The audit views of a real ledger after a real run: retirectl history as CSV,
JSON and text, its filters, exports chained by --after-seq across a clock set
back, released_at, the stale error a release drops, and status --openmetrics."""

import csv
import datetime
import io
import json
import os
import re
import sqlite3
import subprocess
import time

import pytest

from conftest import EXIT, RETIRECTL, child_env, num, phone, pid

REASON = 'OPS-1, "shop" closed\nsecond line'
HEADER = ["seq", "time", "key", "id", "number", "kind", "from", "to", "method", "path", "http_status",
          "latency_ms", "attempt", "reason", "detail", "clock_back", "nickname"]
STATES = ["pending", "deferred", "in_flight", "retrying", "scheduled", "released", "failed", "cancelled",
          "unresolved", "in_use"]
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")


@pytest.fixture
def rig(make_rig):
    """Phone 1 released after a 503 (a failed DELETE, a look, a second DELETE),
    2 scheduled, 3 deferred, a number not in the account."""
    rig = make_rig([phone(1, provider="custom"), phone(2), phone(3, status="reserved")])
    rig.fake.script(pid(1), "DELETE", [503])
    rig.write_config([{"number": num(1), "reason": REASON}, {"id": pid(2)}, {"number": num(3)},
                      {"number": num(99)}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run       # num(99) is not in the account
    return rig


def ctl_raw(rig, *args):
    """retirectl's stdout as bytes: CRLF must survive."""
    p = subprocess.run([RETIRECTL, "-c", rig.config_path] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), timeout=60)
    assert p.returncode == 0, "retirectl %s: rc=%d\n%s" % (args, p.returncode, p.stderr.decode())
    return p.stdout


def history_csv(rig, *args):
    out = ctl_raw(rig, "history", "--csv", *args)
    rows = list(csv.reader(io.StringIO(out.decode(), newline="")))
    assert rows[0] == HEADER
    return [dict(zip(HEADER, r)) for r in rows[1:]], out


def all_steps(rig):
    """Every history row, read from the ledger itself."""
    con = sqlite3.connect("file:%s?mode=ro" % rig.ledger, uri=True)
    try:
        return con.execute("SELECT seq, at FROM history ORDER BY seq").fetchall()
    finally:
        con.close()


def parse_time(s):
    assert TIME_RE.match(s), s
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_history_csv_is_rfc_4180_with_one_row_per_step(rig):
    rows, raw = history_csv(rig)
    steps = all_steps(rig)
    assert [int(r["seq"]) for r in rows] == [s for s, _ in steps]
    # Every record ends with CRLF; a bare LF is only inside the quoted reason.
    assert raw.endswith(b"\r\n")
    assert raw.count(b"\n") == raw.count(b"\r\n") + sum(r["reason"].count("\n") for r in rows)
    for r, (_, at) in zip(rows, steps):
        assert len(r) == len(HEADER)
        assert parse_time(r["time"]) == EPOCH + datetime.timedelta(milliseconds=at // 1000)

    mine = [r for r in rows if r["key"] == num(1)]
    assert {r["number"] for r in mine} == {num(1)} and {r["id"] for r in mine} == {pid(1)}
    # The declared reason, comma, quotes and line break as written.
    assert {r["reason"] for r in mine} == {REASON}
    deletes = [r for r in mine if r["method"] == "DELETE"]
    assert [(r["http_status"], r["attempt"]) for r in deletes] == [("503", "1"), ("204", "2")]
    assert [(r["from"], r["to"]) for r in mine if r["kind"] == "state"] == [
        ("", "pending"), ("pending", "in_flight"), ("in_flight", "retrying"), ("retrying", "in_flight"),
        ("in_flight", "released")]
    assert mine[-1]["attempt"] == "2"
    # A phone never sent a DELETE has made no attempt; its look is on record.
    deferred = [r for r in rows if r["key"] == num(3)]
    assert {r["attempt"] for r in deferred} == {"0"}
    assert [r["method"] for r in deferred if r["kind"] == "call"] == ["GET"]
    assert deferred[-1]["to"] == "deferred" and "reserved" in deferred[-1]["detail"]


def test_history_json_says_the_same_as_the_csv(rig):
    rows, _ = history_csv(rig)
    steps = json.loads(ctl_raw(rig, "history", "--json"))
    assert isinstance(steps, list) and len(steps) == len(rows)
    for j, c in zip(steps, rows):
        assert set(j) == set(HEADER)
        for k in HEADER:
            want = "" if j[k] is None else str(int(j[k])) if isinstance(j[k], bool) else str(j[k])
            assert want == c[k], (k, j, c)
    assert isinstance(steps[0]["seq"], int) and steps[0]["from"] is None
    assert all(j["clock_back"] is False for j in steps), "the clock went only forward in this run"
    # Nothing to export is an empty array.
    assert json.loads(ctl_raw(rig, "history", "--json", "--since", "9999-12-31")) == []


def test_history_filters(rig):
    rows, _ = history_csv(rig)
    released = history_csv(rig, "--state", "released")[0]
    assert [(r["key"], r["to"]) for r in released] == [(num(1), "released")]
    assert [r["seq"] for r in history_csv(rig, "--state", "failed")[0]] == []

    first, last = parse_time(rows[0]["time"]), parse_time(rows[-1]["time"])
    day = first.strftime("%Y-%m-%d")
    since = "@%d" % int(first.timestamp())
    until = "@%d" % (int(last.timestamp()) + 1)
    assert history_csv(rig, "--since", since, "--until", until)[0] == rows
    assert history_csv(rig, "--since", day)[0] == rows
    assert history_csv(rig, "--since", first.strftime("%Y-%m-%dT%H:%M:%SZ"))[0] == rows
    assert history_csv(rig, "--until", since)[0] == []
    assert history_csv(rig, "--since", until)[0] == []
    assert history_csv(rig, "--since", "1999-01-01", "--state", "deferred")[0] == \
        [r for r in rows if r["to"] == "deferred"]

    # From a cursor: the steps numbered after it, with --state those into it.
    assert history_csv(rig, "--after-seq", "0")[0] == rows
    cut = len(rows) // 2
    assert history_csv(rig, "--after-seq", rows[cut]["seq"])[0] == rows[cut + 1:]
    assert history_csv(rig, "--after-seq", rows[cut]["seq"], "--state", "deferred")[0] == \
        [r for r in rows[cut + 1:] if r["to"] == "deferred"]
    assert history_csv(rig, "--after-seq", rows[-1]["seq"])[0] == []


def test_history_text_is_for_people(rig):
    out = rig.ctl("history").stdout.splitlines()
    assert out[0].split() == ["SEQ", "TIME", "KEY", "TRY", "STEP"]
    assert len(out) == 1 + len(all_steps(rig))
    assert [int(line.split()[0]) for line in out[1:]] == [s for s, _ in all_steps(rig)]
    assert any(num(1) in line and "DELETE" in line and "-> 503" in line for line in out)


@pytest.mark.parametrize("args, says", [
    (["history", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
    (["history", "--until", "2026-02-30"], "--until: '2026-02-30' is not a time"),
    (["history", "--since", "2026-12-01T10:00:00+01:00"], "is not a time in UTC"),
    (["history", "--since", "2026-12-02", "--until", "2026-12-01"], "--until must come after --since"),
    (["history", "--state", "gone"], "unknown state 'gone'; one of: " + ", ".join(STATES)),
    (["history", "--csv", "--json"], "exclude each other"),
    (["history", "extra"], "history takes no arguments (see retirectl --help)"),
    (["history", "--nope"], "Try 'retirectl --help'"),
    (["list", "--csv"], "--csv does not work with list, only with history (see retirectl --help)"),
    (["list", "--since", "2026-12-01"], "--since does not work with list"),
    (["show", num(1), "--openmetrics"], "--openmetrics does not work with show, only with status"),
    (["status", "--openmetrics", "--json"], "exclude each other"),
    (["check", "--json"], "--json does not work with check"),
])
def test_bad_input_is_refused_saying_why(rig, args, says):
    p = rig.ctl(*args, check=False)
    assert p.returncode == 1, p
    assert p.stdout == ""
    assert says in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) <= 2, p.stderr


DAY = 86400 * 1_000_000


def add_looks(rig, key, ats):
    """History rows written with sqlite3 straight into the ledger retired made,
    as a daemon records its looks at a phone (the history is append-only by
    trigger: an INSERT is what it allows); their seqs.  Only so can a test give
    a step a recorded time of its choosing: retired's clock is the host's."""
    con = sqlite3.connect(rig.ledger)
    try:
        pk, phone_id = con.execute("SELECT pk, id FROM phones WHERE key = ?", (key,)).fetchone()
        with con:
            return [con.execute("INSERT INTO history (phone, at, kind, method, path, http_status, latency_ms, detail)"
                                " VALUES (?, ?, 'call', 'GET', ?, 200, 1, 'observed reserved')",
                                (pk, at, "/v1/phone/" + phone_id)).lastrowid for at in ats]
    finally:
        con.close()


def export_after(rig, cursor, fmt="--csv"):
    """One export of a chain, as the README's daily one: its rows and the
    cursor for the next (the last row's seq, or the same when none came)."""
    if fmt == "--csv":
        rows = history_csv(rig, "--after-seq", str(cursor))[0]
        assert {r["clock_back"] for r in rows} <= {"0", "1"}
        rows = [dict(r, seq=int(r["seq"]), clock_back=r["clock_back"] == "1") for r in rows]
    else:
        out = ctl_raw(rig, "history", fmt, "--after-seq", str(cursor)).decode()
        rows = json.loads(out)
        # The README's cron job reads the cursor with sed: each object on a
        # line of its own, beginning with its seq.
        assert [int(m) for m in re.findall(r'^\{"seq":([0-9]*),', out, re.M)] == [r["seq"] for r in rows]
    return rows, rows[-1]["seq"] if rows else cursor


def test_exports_chained_by_seq_miss_nothing_when_the_clock_steps_back(rig):
    """Daily exports, each from the last seq of the one before, across a clock
    set back a day and put right again: every step comes out once, in order,
    with the time it was recorded at, and the first step recorded behind the
    one before it is flagged.  The steps of the clock set back are written
    into the ledger by hand (see add_looks): the deferred phone's looks on
    two resyncs."""
    steps = all_steps(rig)
    day1, cursor = export_after(rig, 0)
    assert [r["seq"] for r in day1] == [s for s, _ in steps]
    assert not any(r["clock_back"] for r in day1)
    assert export_after(rig, cursor) == ([], cursor), "nothing new, nothing out; the cursor stays"

    # Recorded after day 1's export, timed a day before everything in it:
    # a time window after day 1 never sees them.
    last_at = steps[-1][1]
    back = add_looks(rig, num(3), [last_at - DAY + i * 1000 for i in range(3)])
    window = history_csv(rig, "--since", "@%d" % (last_at // 1_000_000))[0]
    assert not {int(r["seq"]) for r in window} & set(back)

    day2, cursor = export_after(rig, cursor, "--json")
    assert [r["seq"] for r in day2] == back
    assert [r["clock_back"] for r in day2] == [True, False, False], \
        "the step back is flagged against day 1's last step, which this export leaves out"
    assert [parse_time(r["time"]) for r in day2] == \
        [EPOCH + datetime.timedelta(milliseconds=(last_at - DAY + i * 1000) // 1000) for i in range(3)]
    assert all(r["key"] == num(3) and r["method"] == "GET" for r in day2)

    # The clock put right: later than the step before, no flag.
    right = add_looks(rig, num(3), [last_at + 1000, last_at + 2000])
    day3, cursor = export_after(rig, cursor)
    assert [r["seq"] for r in day3] == right and not any(r["clock_back"] for r in day3)

    chained = [r["seq"] for r in day1 + day2 + day3]
    assert chained == [s for s, _ in all_steps(rig)], "every step once, in order"

    # For people: the seq first, the step back marked.
    text = rig.ctl("history", "--after-seq", str(day1[-1]["seq"])).stdout.splitlines()
    assert [int(line.split()[0]) for line in text[1:]] == back + right
    assert [int(line.split()[0]) for line in text[1:] if "[clock back]" in line] == back[:1]

    # A cursor this history never reached comes from elsewhere: said, and
    # nothing on stdout that could pass for an export.
    p = rig.ctl("history", "--csv", "--after-seq", str(cursor + 1), check=False)
    assert (p.returncode, p.stdout) == (1, "")
    assert "--after-seq %d: the ledger holds no step numbered that or later" % (cursor + 1) in p.stderr


@pytest.mark.parametrize("args, says", [
    (["history", "--after-seq", "x"], "--after-seq: 'x' is not a step number"),
    (["history", "--after-seq", "-1"], "--after-seq: '-1' is not a step number"),
    (["history", "--after-seq=-1"], "'-1' is not a step number"),
    (["history", "--after-seq", ""], "'' is not a step number"),
    (["history", "--after-seq", "+1"], "'+1' is not a step number"),
    (["history", "--after-seq", " 1"], "' 1' is not a step number"),
    (["history", "--after-seq", "1 "], "'1 ' is not a step number"),
    (["history", "--after-seq", "0x10"], "'0x10' is not a step number"),
    (["history", "--after-seq", "9223372036854775808"], "'9223372036854775808' is not a step number"),
    (["history", "--after-seq", "1" * 30], "is not a step number"),
    (["history", "--after-seq", "1", "--since", "2026-12-01"], "--after-seq and --since exclude each other"),
    (["history", "--until", "2026-12-01", "--after-seq", "1"], "--after-seq and --until exclude each other"),
    (["list", "--after-seq", "1"], "--after-seq does not work with list, only with history"),
    # Read as numbers, past what an absent ledger (an empty history) reached.
    (["history", "--after-seq", "1"], "--after-seq 1: the ledger holds no step numbered that or later"),
    (["history", "--after-seq", "9223372036854775807"], "the ledger holds no step numbered that or later"),
])
def test_a_bad_cursor_is_refused_saying_why(tmp_path, args, says):
    """No run needed: retirectl alone, on an absent ledger (read as empty)."""
    p = subprocess.run([RETIRECTL, "-c", str(tmp_path / "none.conf"), "--ledger", str(tmp_path / "none.db")] + args,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                       timeout=30, text=True)
    assert p.returncode == 1, p
    assert p.stdout == ""
    assert says in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) <= 2, p.stderr
    assert not os.path.exists(tmp_path / "none.db")


def test_a_cursor_at_the_start_of_an_empty_history_is_an_empty_export(tmp_path):
    p = subprocess.run([RETIRECTL, "--ledger", str(tmp_path / "none.db"), "history", "--csv", "--after-seq", "0"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                       timeout=30)
    assert (p.returncode, p.stderr) == (0, b"")
    assert p.stdout == (",".join(HEADER) + "\r\n").encode()


def test_a_released_phone_shows_when_and_no_stale_error(rig):
    rows = rig.list()
    released_step = history_csv(rig, "--state", "released")[0][0]
    want = parse_time(released_step["time"]).replace(microsecond=0)
    assert parse_time(rows[num(1)]["released_at"]) == want
    assert rows[num(1)]["last_error"] is None, "the 503 before the release is no error any more"
    assert all(r["released_at"] is None for k, r in rows.items() if k != num(1))
    assert rows[num(99)]["last_error"], "an unreleased row keeps its error"

    show = rig.show(num(1))
    assert show["released_at"] == rows[num(1)]["released_at"] and show["last_error"] is None
    # The history still tells what failed.
    assert [h["http_status"] for h in show["history"] if h["method"] == "DELETE"] == [503, 204]
    text = rig.ctl("show", num(1)).stdout
    assert "released at:  %s\n" % rows[num(1)]["released_at"] in text
    assert "last error:   n/a\n" in text
    listing = rig.ctl("list").stdout.splitlines()
    assert "RELEASED AT" in listing[0]
    assert any(line.startswith(num(1)) and rows[num(1)]["released_at"] in line for line in listing)


def test_status_openmetrics_is_well_formed(rig):
    out = rig.ctl("status", "--openmetrics").stdout
    assert out.endswith("# EOF\n")
    lines = out.splitlines()
    assert lines[-1] == "# EOF" and lines.count("# EOF") == 1
    typed, helped, samples = {}, set(), {}
    for line in lines[:-1]:
        assert line, "no blank lines"
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind == "gauge" and name not in typed
            typed[name] = kind
        elif line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
        else:
            m = re.fullmatch(r'([a-z_]+)(\{state="([a-z_]+)"\})? (\d+(\.\d+)?)', line)
            assert m, line
            assert m.group(1) in typed, "a sample before its TYPE: " + line
            samples[(m.group(1), m.group(3))] = float(m.group(4))
    assert set(typed) == helped
    counts = rig.status()["counts"]
    assert {s: samples[("retired_phones", s)] for s in STATES} == {s: counts.get(s, 0) for s in STATES}
    assert samples[("retired_phones", "pending")] == 0, "zeros are there too"
    steps = all_steps(rig)
    assert samples[("retired_history_steps", None)] == len(steps)
    assert samples[("retired_last_step_timestamp_seconds", None)] == pytest.approx(steps[-1][1] / 1e6, abs=0.001)


def test_openmetrics_of_a_missing_ledger_is_all_zeros(make_rig):
    rig = make_rig([])
    rig.write_config([])
    out = rig.ctl("status", "--openmetrics").stdout
    assert not os.path.exists(rig.ledger), "a read never creates the ledger"
    for s in STATES:
        assert 'retired_phones{state="%s"} 0\n' % s in out
    assert "retired_history_steps 0\n" in out and out.endswith("# EOF\n")


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/usr/bin/time", os.X_OK), reason="needs GNU time (Debian package time)")
def test_a_long_history_is_streamed(rig):
    """300,000 more steps, all of one phone (a phone looked at on every resync
    for years): the export neither holds them in memory nor slows down per row.
    Sanitized, where the RSS bound cannot hold, a fifth of it: the same code
    runs under ASan for a fraction of the CPU."""
    n = 60_000 if os.environ.get("RETIRED_SANITIZED") else 300_000
    later = int(time.time()) + 86400
    con = sqlite3.connect(rig.ledger)
    pk = con.execute("SELECT pk FROM phones WHERE key = ?", (num(3),)).fetchone()[0]
    with con:
        con.executemany("INSERT INTO history (phone, at, kind, method, path, http_status, latency_ms, detail)"
                        " VALUES (?, ?, 'call', 'GET', '/v1/phone/x', 200, 1, 'observed reserved')",
                        ((pk, later * 1_000_000 + i) for i in range(n)))
    con.close()

    def export(*args):
        """Rows out, peak RSS in MiB (GNU time's: a child forked from pytest
        starts with pytest's pages), CPU seconds (a loaded make check once
        stretched this export's wall time thirty times; a slowdown per row
        shows in its CPU time all the same)."""
        rss_file = os.path.join(rig.dir, "rss")
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file, RETIRECTL, "-c", rig.config_path,
                              "history"] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=child_env())
        out = io.TextIOWrapper(p.stdout, newline="")
        lines = sum(1 for _ in (csv.reader(out) if "--csv" in args else out))
        assert p.wait(60) == 0
        with open(rss_file) as f:
            rss, user, system = f.read().split()[-3:]
        return lines, int(rss) / 1024, float(user) + float(system)

    small_lines, small_rss, _ = export("--csv", "--until", "@%d" % later)
    lines, rss, elapsed = export("--csv")
    assert lines == len(all_steps(rig)) + 1
    json_lines, json_rss, _ = export("--json")
    assert json_lines == lines + 1, "one object a line, between [ and ]"
    if os.environ.get("RETIRED_SANITIZED"):
        pytest.skip("ASan's quarantine keeps freed memory: no RSS bound (%d lines in %.1f CPU s)" % (lines, elapsed))
    assert rss < small_rss + 8 and json_rss < small_rss + 8, \
        "%.1f MiB (JSON %.1f) for %d rows, %.1f MiB for %d" % (rss, json_rss, lines, small_rss, small_lines)
    assert elapsed < 30, "%.1f CPU s for %d rows" % (elapsed, lines)
