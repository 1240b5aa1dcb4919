"""What the daemon benchmarks share: a fresh folder in the build with the
binaries made, a config of generated declarations (gen-config.py) that
runs dry against an API nobody answers, and a notification socket."""
import os, socket, subprocess, threading, time

top = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
build = os.environ.get("RETIRED_BUILD", os.path.join(top, "build"))


def fresh(name, *targets):
    """An empty build/NAME, and `make all` plus TARGETS (paths under the build)."""
    d = os.path.join(build, name)
    subprocess.run(["rm", "-rf", d], check=True)
    os.makedirs(d)
    subprocess.run(["make", "-s", "-C", top, f"BUILD={build}", "all"] + [os.path.join(build, t) for t in targets],
                   check=True, stdout=subprocess.DEVNULL)
    return d


def gen_config(conf, n, ledger, per_file=None):
    subprocess.run(["/usr/bin/python3", os.path.join(top, "tests/bench/gen-config.py"), conf, str(n), "0", ledger]
                   + ([str(per_file)] if per_file else []), check=True)


def dry_unreachable(conf, d, max_attempts):
    """CONF made a dry run against 127.0.0.1:9 (a token file, mode 0600, as in
    production), trying the listing MAX_ATTEMPTS times, its control socket in D."""
    token = os.path.join(d, "token")
    with open(token, "w") as f:
        f.write("bench-token\n")
    os.chmod(token, 0o600)
    with open(conf) as f:
        text = f.read().replace("hold = 0; };", "hold = 0; dry_run = true; };")
    text += (f'api: {{ base_url = "http://127.0.0.1:9"; token_file = "{token}"; }};\n'
             f'retry: {{ max_attempts = {max_attempts}; }};\n'
             f'control_socket = "{d}/control";\n')
    with open(conf, "w") as f:
        f.write(text)


def notify_socket(path, on_message):
    """A notification socket bound at PATH and read at once by a thread, as
    systemd reads it (a full socket would block retired in sd_notify():
    net.unix.max_dgram_qlen is 10 here): on_message(t, lines) for each
    datagram, t its monotonic arrival.  Returns the socket, to close."""
    note = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    note.bind(path)

    def listen():
        while True:
            try:
                msg = note.recv(4096).decode().split("\n")
            except OSError:
                return
            on_message(time.monotonic(), msg)

    threading.Thread(target=listen, daemon=True).start()
    return note
