#!/usr/bin/python3
"""What a long pass costs while it waits (issue 12): retired with a ledger of
N declared, pending phones, in a dry run, and an API that cannot be reached,
so that the pass stays open while the listing is tried again and again.
Over SECONDS of that pass: how often STATUS= is sent (each one counts the
ledger) and the CPU time retired uses, as a share of one core.

Usage: pass-status.py [N] [SECONDS]   (default 1000000 30)
"""
import os, subprocess, sys, threading, time

from benchlib import build, dry_unreachable, fresh, gen_config, notify_socket

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
d = fresh("bench-pass-status", "tests/fill-ledger")
conf = os.path.join(d, "retired.conf")
ledger = os.path.join(d, "ledger.db")
gen_config(conf, n, ledger, 1000)
subprocess.run([os.path.join(build, "tests/fill-ledger"), conf, ledger], check=True)
# Enough tries of the listing that the pass outlasts the measurement.
dry_unreachable(conf, d, 50)

sock_path = os.path.join(d, "notify")
statuses, ready = [], threading.Event()


def on_note(t, msg):
    if any(m.startswith("STATUS=") and "pass since" in m for m in msg):
        statuses.append(t)
    if "READY=1" in msg:
        ready.set()


note = notify_socket(sock_path, on_note)
err_path = os.path.join(d, "stderr")
env = dict(os.environ, NOTIFY_SOCKET=sock_path)
with open(err_path, "w") as err:
    p = subprocess.Popen([os.path.join(build, "retired"), "-c", conf], env=env, stderr=err)
assert ready.wait(600), "no READY=1 within 600 s"


def cpu():
    with open(f"/proc/{p.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


deadline = time.monotonic() + 60
while not statuses:
    assert p.poll() is None, "retired exited: see " + err_path
    assert time.monotonic() < deadline, "no pass within 60 s of READY=1"
    time.sleep(0.1)
time.sleep(2)       # past the pass's start
c0, t0, s0 = cpu(), time.monotonic(), len(statuses)
time.sleep(seconds)
c1, t1, s1 = cpu(), time.monotonic(), len(statuses)
with open(err_path) as f:
    still = "Pass done" not in f.read()
p.terminate()
p.wait(60)
note.close()
assert still, "the pass ended during the measurement: see " + err_path
print(f"a pass over {n} rows waiting on the API, {t1 - t0:.0f} s: STATUS= every "
      f"{(t1 - t0) / max(s1 - s0, 1):.2f} s, CPU {100 * (c1 - c0) / (t1 - t0):.1f}% of one core")
