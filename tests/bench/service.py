#!/usr/bin/python3
"""Benchmarks of retired as a service (issue 4), outside systemd: the
notification socket is ours, so READY=1 and RELOADING=1 are timed exactly.

- start to READY=1 with a ledger of N rows (released phones from earlier
  work) and a config declaring 100 phones;
- the same start with a config declaring all N phones (a no-op plan), in
  one file up to 100,000 and in drop-ins of 1,000 beyond (a file is at
  most 8 MiB, about 130,000 such declarations);
- reload (SIGHUP: RELOADING=1 to READY=1) of N declarations;
- idle wake-ups over SECONDS (context switches of the settled daemon, whose
  only timers are the watchdog pings at WATCHDOG_USEC/2 and the hourly
  resync), and idle RSS.

Usage: service.py [N] [SECONDS]
"""
import os, socket, sqlite3, subprocess, sys, time

from benchlib import build, fresh, gen_config

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
idle_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
d = fresh("bench-service", "tests/fill-ledger")
ledger = os.path.join(d, "ledger.db")
gen_config(f"{d}/all.conf", n, ledger, None if n <= 100000 else 1000)
gen_config(f"{d}/few.conf", 100, ledger)
subprocess.run([os.path.join(build, "tests/fill-ledger"), f"{d}/all.conf", ledger], check=True)
db = sqlite3.connect(ledger)
db.execute("UPDATE phones SET state = 'released'")   # earlier work, all done
db.commit()
db.close()

# The daemon needs an API only when something is due; nothing is, so any
# loopback URL does.  A token file, mode 0600, as in production.
token = os.path.join(d, "token")
with open(token, "w") as f:
    f.write("bench-token\n")
os.chmod(token, 0o600)
for name in ("all", "few"):
    with open(f"{d}/{name}.conf", "a") as f:
        f.write(f'api: {{ base_url = "http://127.0.0.1:9"; token_file = "{token}"; }};\n'
                f'control_socket = "{d}/control";\n')


class Notify:
    def __init__(self):
        self.path = os.path.join(d, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait(self, word, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            msg = self.sock.recv(4096).decode()
            if word in msg.split("\n"):
                return time.monotonic()

    def close(self):
        self.sock.close()
        os.unlink(self.path)


def start(conf, watchdog_usec=None):
    note = Notify()
    env = dict(os.environ, NOTIFY_SOCKET=note.path)
    t0 = time.monotonic()
    p = subprocess.Popen([os.path.join(build, "retired"), "-c", conf], env=env,
                         stderr=subprocess.DEVNULL)
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    t1 = note.wait("READY=1")
    return p, note, t1 - t0


def stop(p, note):
    p.terminate()
    p.wait()
    note.close()


p, note, t = start(f"{d}/few.conf")
print(f"start to READY=1, ledger of {n} rows, 100 declared:      {t * 1000:7.1f} ms")
stop(p, note)
p, note, t = start(f"{d}/all.conf")
print(f"start to READY=1, ledger of {n} rows, {n} declared:   {t * 1000:7.1f} ms")
p.send_signal(1)
t0 = time.monotonic()
note.wait("RELOADING=1")
t1 = note.wait("READY=1")
print(f"reload (SIGHUP to READY=1) of {n} declarations:          {(t1 - t0) * 1000:7.1f} ms")
stop(p, note)

# Idle: watchdog at 30 s (the unit's WatchdogSec=), as systemd would set it.
note = Notify()
env = dict(os.environ, NOTIFY_SOCKET=note.path, WATCHDOG_USEC="30000000")
p = subprocess.Popen([os.path.join(build, "retired"), "-c", f"{d}/few.conf"], env=env, stderr=subprocess.DEVNULL)
note.wait("READY=1")


def switches(pid):
    with open(f"/proc/{pid}/status") as f:
        kv = dict(line.split(":", 1) for line in f)
    return int(kv["voluntary_ctxt_switches"]) + int(kv["nonvoluntary_ctxt_switches"]), kv["VmRSS"].strip()


time.sleep(1)   # let the start-up pass settle before counting
a, _ = switches(p.pid)
pings = 0
deadline = time.monotonic() + idle_seconds
note.sock.settimeout(0.5)
while time.monotonic() < deadline:
    try:
        if "WATCHDOG=1" in note.sock.recv(4096).decode().split("\n"):
            pings += 1
    except socket.timeout:
        pass
b, rss = switches(p.pid)
print(f"idle for {idle_seconds:.0f} s: {b - a} wake-ups, {pings} watchdog pings; idle RSS {rss}")
stop(p, note)
