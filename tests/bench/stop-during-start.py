#!/usr/bin/python3
"""A stop during a long start or reload (issue 12: signals served within a
second at a million rows).  retired starts with N declarations, all new
(drop-ins of 1,000), in a dry run against an API nobody answers: once to
READY=1, which gives the start's time T; then again with a fresh ledger and
SIGTERM at 20%, 50% and 80% of T.  Then, on a daemon that did start, a
reload of the same files to READY=1 (its time R), and one with SIGTERM at
half of R.  Prints the time from each SIGTERM to the exit, the exit status,
and what the ledger holds of each stopped start (nothing).

Usage: stop-during-start.py [N]   (default 1000000)
"""
import os, signal, sqlite3, subprocess, sys, threading, time

from benchlib import build, dry_unreachable, fresh, gen_config, notify_socket

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
d = fresh("bench-stop-during-start")
conf = os.path.join(d, "retired.conf")
ledger = os.path.join(d, "ledger.db")
gen_config(conf, n, ledger, 1000)
dry_unreachable(conf, d, 100)

sock_path = os.path.join(d, "notify")
ready = threading.Condition()
readies = []


def on_note(t, msg):
    if "READY=1" in msg:
        with ready:
            readies.append(t)
            ready.notify_all()


def wait_ready(count, timeout=900):
    with ready:
        assert ready.wait_for(lambda: len(readies) >= count, timeout), "no READY=1 within %d s" % timeout
        return readies[count - 1]


def start():
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    with ready:
        readies.clear()
    err = open(os.path.join(d, "stderr"), "w")
    t0 = time.monotonic()
    p = subprocess.Popen([os.path.join(build, "retired"), "-c", conf], stderr=err,
                         env=dict(os.environ, NOTIFY_SOCKET=sock_path))
    err.close()
    return p, t0


def stop(p):
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(900)
    return time.monotonic() - t, rc


def rows():
    if not os.path.exists(ledger):
        return "no ledger"
    db = sqlite3.connect("file:%s?mode=ro" % ledger, uri=True)
    try:
        return "%d rows" % db.execute("SELECT count(*) FROM phones").fetchone()[0]
    except sqlite3.OperationalError as e:
        return str(e)
    finally:
        db.close()


notify_socket(sock_path, on_note)
p, t0 = start()
t_start = wait_ready(1) - t0
# The reload of the same files: nothing changes, all of it is read and matched.
p.send_signal(signal.SIGHUP)
t1 = time.monotonic()
t_reload = wait_ready(2) - t1
print(f"{n} declarations: start to READY=1 {t_start:.2f} s, reload to READY=1 {t_reload:.2f} s")
p.send_signal(signal.SIGHUP)
time.sleep(t_reload / 2)
secs, rc = stop(p)
print(f"SIGTERM {t_reload / 2:6.2f} s into a reload:  exit after {secs * 1000:6.0f} ms, status {rc}")
for share in (0.2, 0.5, 0.8):
    p, t0 = start()
    time.sleep(t_start * share)
    # A start this short may be over before the signal: then it says so.
    late = " (after READY=1: N is too small to tell)" if readies else ""
    secs, rc = stop(p)
    print(f"SIGTERM {t_start * share:6.2f} s into the start: exit after {secs * 1000:6.0f} ms, status {rc}, "
          f"ledger: {rows()}{late}")
