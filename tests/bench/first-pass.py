#!/usr/bin/python3
"""The first pass at scale (issue 12): retired starts with N declarations,
all new (drop-ins of 1,000), in a dry run with no hold, and the API cannot be
reached, the case that once wrote a journal line per row and starved the
loop.  Measures start to READY=1, start to the first pass's end, the loop's
answers meanwhile (the longest `retirectl status` over the control socket,
the longest gap between watchdog pings at WatchdogSec=2s from the start, and SIGTERM to
exit), the lines written, and the peak RSS (VmHWM).

Usage: first-pass.py [N]   (default 1000000)
"""
import os, subprocess, sys, time

from benchlib import build, dry_unreachable, fresh, gen_config, notify_socket

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
d = fresh("bench-first-pass")
conf = os.path.join(d, "retired.conf")
gen_config(conf, n, os.path.join(d, "ledger.db"), 1000)
# Three tries of the listing, not the default's five: the pass ends sooner, the work is the same.
dry_unreachable(conf, d, 3)

sock_path = os.path.join(d, "notify")
pings, ready = [], []


def on_note(t, msg):
    if "WATCHDOG=1" in msg:
        pings.append(t)
    if "READY=1" in msg and not ready:
        ready.append(t)


note = notify_socket(sock_path, on_note)
err_path = os.path.join(d, "stderr")
env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="2000000")
t0 = time.monotonic()
with open(err_path, "w") as err:
    p = subprocess.Popen([os.path.join(build, "retired"), "-c", conf], env=env, stderr=err)


def pass_done():
    with open(err_path) as f:
        return "Pass done" in f.read()


worst, asked = 0.0, 0
deadline = t0 + 600
while not pass_done():
    assert p.poll() is None, "retired exited: see " + err_path
    assert time.monotonic() < deadline, "no pass end within 600 s"
    if ready:
        a = time.monotonic()
        subprocess.run([os.path.join(build, "retirectl"), "-c", conf, "status"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        worst = max(worst, time.monotonic() - a)
        asked += 1
    time.sleep(0.1)
t_done = time.monotonic()
with open(f"/proc/{p.pid}/status") as f:
    hwm = next(line.split(":", 1)[1].strip() for line in f if line.startswith("VmHWM"))
# From the start: systemd arms the watchdog when it starts the process, not at
# READY=1 (a first start of 1,000,000 was once killed by it before READY=1).
gaps = [(b - a, b <= ready[0]) for a, b in zip([t0] + pings, pings)]
before = max((g for g, early in gaps if early), default=float("nan"))
after = max((g for g, early in gaps if not early), default=float("nan"))
a = time.monotonic()
p.terminate()
p.wait(60)
t_stop = time.monotonic() - a
note.close()
with open(err_path) as f:
    lines = sum(1 for _ in f)
print(f"{n} declarations, all new, dry run, API unreachable:")
print(f"  start to READY=1 {ready[0] - t0:6.2f} s; to the first pass's end {t_done - t0:6.2f} s")
print(f"  retirectl status, longest of {asked}: {worst * 1000:.0f} ms; longest watchdog gap "
      f"{before:.2f} s up to READY=1, {after:.2f} s after ({len(pings)} pings); SIGTERM to exit {t_stop * 1000:.0f} ms")
print(f"  {lines} lines written; peak RSS {hwm}")
