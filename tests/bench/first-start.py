#!/usr/bin/python3
"""A first start at scale and the disk (issue 25): retired starts with N new
declarations (drop-ins of 1,000) in a dry run against an API nobody answers.
Measures `retirectl plan` on the same files (no ledger yet), the start to
READY=1 and the steps the daemon says it took (its "Load steps" line), the
ledger's bytes on disk (file, journal, WAL) at their largest during the start
and after it, the WAL after the second pass, the ledger's bytes per row and
per history entry (SQLite's dbstat), and `retirectl status` (during the first two passes)
and `retirectl show KEY`, the longest of their runs.

Usage: first-start.py [N]   (default 1000000)
"""
import os, re, sqlite3, subprocess, sys, threading, time

from benchlib import build, dry_unreachable, fresh, gen_config, notify_socket

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
d = fresh("bench-first-start")
conf = os.path.join(d, "retired.conf")
ledger = os.path.join(d, "ledger.db")
gen_config(conf, n, ledger, 1000)
dry_unreachable(conf, d, 3)
retired, retirectl = os.path.join(build, "retired"), os.path.join(build, "retirectl")


def timed(argv, **kw):
    t = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, **kw)
    return time.monotonic() - t


def on_disk(side=None):
    total = 0
    for s in ([side] if side is not None else ["", "-journal", "-wal", "-shm"]):
        try:
            total += os.stat(ledger + s).st_size
        except FileNotFoundError:
            pass
    return total


plan = min(timed([retirectl, "-c", conf, "plan"]) for _ in range(2))
assert not os.path.exists(ledger), "retirectl plan made a ledger"

peak = {"disk": 0, "wal": 0}
stop = threading.Event()


def watch():
    while not stop.is_set():
        peak["disk"] = max(peak["disk"], on_disk())
        peak["wal"] = max(peak["wal"], on_disk("-wal"))
        time.sleep(0.002)


ready = []
note = notify_socket(os.path.join(d, "notify"), lambda t, msg: "READY=1" in msg and not ready and ready.append(t))
err_path = os.path.join(d, "stderr")
threading.Thread(target=watch, daemon=True).start()
t0 = time.monotonic()
with open(err_path, "w") as err:
    p = subprocess.Popen([retired, "-c", conf], stderr=err,
                         env=dict(os.environ, NOTIFY_SOCKET=os.path.join(d, "notify")))
while not ready:
    assert p.poll() is None, "retired exited: see " + err_path
    assert time.monotonic() < t0 + 600, "no READY=1 within 600 s"
    time.sleep(0.01)
start = ready[0] - t0
stop.set()
after_start = {"disk": on_disk(), "wal": on_disk("-wal"), "file": on_disk("")}


def text():
    with open(err_path) as f:
        return f.read()


# Through the first two passes and the turn between them: a pass's end
# finds the next due date, and the next pass counts its rows.
status = []
while text().count("Pass done") < 2:
    assert p.poll() is None, "retired exited: see " + err_path
    status.append(timed([retirectl, "-c", conf, "status"]))
    time.sleep(0.1)
status.sort()
wal_after_pass = on_disk("-wal")
key = "+349%08d" % (n // 2)
show_worst = max(timed([retirectl, "-c", conf, "show", key]) for _ in range(5))
p.terminate()
p.wait(60)
note.close()

steps = re.search(r"Load steps: (.*)\.", text())
con = sqlite3.connect("file:%s?mode=ro" % ledger, uri=True)
size = dict(con.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
rows = con.execute("SELECT count(*) FROM phones").fetchone()[0]
entries = con.execute("SELECT count(*) FROM history").fetchone()[0]
con.close()
proper = sum(v for k, v in size.items() if k == "phones" or k.startswith("phones_") or k == "sqlite_autoindex_phones_1")
hist = sum(v for k, v in size.items() if k.startswith("history"))
MiB = 1 << 20
print(f"{n} declarations, all new, drop-ins of 1,000, dry run, API unreachable:")
print(f"  retirectl plan {plan:6.2f} s; start to READY=1 {start:6.2f} s ({start / plan:.2f} x plan)")
print(f"  steps: {steps.group(1) if steps else '(no Load steps line)'}")
print(f"  ledger {after_start['file'] / MiB:.1f} MiB; on disk during the start at most {peak['disk'] / MiB:.1f} MiB "
      f"({peak['disk'] / after_start['file']:.2f} x), WAL at most {peak['wal'] / MiB:.1f} MiB")
print(f"  WAL after the start {after_start['wal'] / MiB:.2f} MiB, after the second pass {wal_after_pass / MiB:.2f} MiB")
print(f"  bytes per row {proper / rows:.0f} (phones and its indexes), per history entry {hist / entries:.0f} "
      f"({rows} rows, {entries} entries)")
print(f"  retirectl status during the first two passes, median and longest of {len(status)}: "
      f"{status[len(status) // 2] * 1000:.0f} / {status[-1] * 1000:.0f} ms; "
      f"retirectl show, longest of 5: {show_worst * 1000:.0f} ms")
