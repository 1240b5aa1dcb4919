#!/usr/bin/python3
"""Benchmark of the release engine (issues 3 and 9).

The fake Diga API with LATENCY per answer and an account of ACCOUNT phones;
DECLARED of them declared by number; retired --once with rate R, burst B,
concurrency C.  Reports the pass time against the ideal (calls / rate), the
largest overshoot of the pacing bound (rate * t + burst calls in any window
of t seconds), the calls per released phone beyond the list pages, the peak
RSS, and the same job done by a sequential curl loop, as a ratio.  The
account is listed whole before the first DELETE: the listing's time is
reported against its own ideal (pages / rate).  --paging cursor makes the fake
an API that pages by cursor only (no total_pages): one page after another.

Usage: release.py [--account N] [--declared N] [--rate R] [--burst B]
                  [--concurrency C] [--latency S] [--paging both|cursor] [--skip-curl]
"""
import argparse, json, os, re, shutil, subprocess, sys, time

top = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
build = os.environ.get("RETIRED_BUILD", os.path.join(top, "build"))
sys.path.insert(0, os.path.join(top, "tests", "fake-diga"))
import fake_diga  # noqa: E402


def start_fake(d, args):
    port_file = os.path.join(d, "port")
    log = os.path.join(d, "api.jsonl")
    p = subprocess.Popen([sys.executable, os.path.join(top, "tests/fake-diga/fake_diga.py"),
                          "--port", "0", "--port-file", port_file, "--phones", str(args.account),
                          "--seed", "7", "--latency", str(args.latency), "--log", log,
                          "--paging", args.paging],
                         stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or p.poll() is not None:
            raise SystemExit("the fake did not start")
        time.sleep(0.05)
    return p, f"http://127.0.0.1:{open(port_file).read().strip()}", log


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def max_overshoot(times, rate, burst):
    """Largest (calls in [t_i, t_j]) - (rate * (t_j - t_i) + burst) over all windows."""
    times = sorted(times)
    worst = float("-inf")
    for i in range(len(times)):
        for j in range(i, min(len(times), i + 4 * burst + int(rate * 5))):
            worst = max(worst, (j - i + 1) - (rate * (times[j] - times[i]) + burst))
    return worst


def declared_numbers(account, declared):
    # Every fourth phone of the account, by number: a mix of netelip, custom,
    # reserved and released ones, as in a real clean-up.
    phones = fake_diga.make_account(account, 7)
    return [p["number"] for p in phones][::max(1, account // declared)][:declared]


def run_retired(d, url, args):
    token = os.path.join(d, "token")
    with open(token, "w") as f:
        f.write("test-token\n")
    os.chmod(token, 0o600)
    conf = os.path.join(d, "retired.conf")
    with open(conf, "w") as f:
        f.write(f'api: {{ base_url = "{url}"; token_file = "{token}"; timeout = 10.0; }};\n'
                f'pace: {{ rate = {args.rate}; burst = {args.burst}; concurrency = {args.concurrency}; }};\n'
                # Every declared number of the generated account is one with an
                # agent on it (each fourth phone): released all the same, so
                # the figures are the engine's, as before issue 31.
                f'safety: {{ max_new_releases = 1000000; hold = 0; in_use = "release"; }};\n'
                f'ledger = "{d}/ledger.db";\nreleases = (\n')
        f.write(",\n".join(f'  {{ number = "{n}"; }}' for n in declared_numbers(args.account, args.declared)))
        f.write("\n);\n")
    t0 = time.monotonic()
    # At debug level retired logs when each call leaves, for the sender-side bound.
    r = subprocess.run(["/usr/bin/time", "-f", "%M", os.path.join(build, "retired"), "-c", conf, "--once"],
                       stderr=subprocess.PIPE, text=True, env=dict(os.environ, RETIRED_LOG_LEVEL="debug"))
    wall = time.monotonic() - t0
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit("retired failed")
    rss_kib = int(r.stderr.strip().splitlines()[-1])
    sent = [float(m.group(1)) for m in re.finditer(r"^retired: start \S+ \S+ at ([0-9.]+)", r.stderr, re.M)]
    return wall, rss_kib, sent


def run_curl_loop(d, url, log, args):
    """What an operator would script: page through the list with curl, then
    DELETE each declared assigned phone, one call after another."""
    wanted = set(declared_numbers(args.account, args.declared))
    auth = ["-H", "Authorization: Bearer test-token"]
    t0 = time.monotonic()
    after, ids = "", []
    while True:
        out = subprocess.run(["curl", "-sf", *auth, f"{url}/v1/phone/?limit=100{after}"],
                             capture_output=True, text=True, check=True).stdout
        page = json.loads(out)
        ids += [p["id"] for p in page["data"] if p["number"] in wanted and p["status"] == "assigned"
                and not p.get("scheduled_release_at")]
        if not page["has_more"]:
            break
        after = "&after=" + page["last_id"]
    for i in ids:
        subprocess.run(["curl", "-sf", "-X", "DELETE", *auth, f"{url}/v1/phone/{i}"], check=True,
                       capture_output=True)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--account", type=int, default=20000)
    ap.add_argument("--declared", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--paging", choices=("both", "cursor"), default="both")
    ap.add_argument("--skip-curl", action="store_true")
    args = ap.parse_args()

    d = os.path.join(build, "bench-release")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fake, url, log = start_fake(d, args)
    try:
        wall, rss, sent = run_retired(d, url, args)
        entries = [e for e in read_log(log)]
        lists = sum(1 for e in entries if e["method"] == "GET" and e["path"].rstrip("/") == "/v1/phone")
        calls = len(entries)
        released = sum(1 for e in entries if e["method"] == "DELETE" and e["status"] == 204)
        pages = [e for e in entries if e["method"] == "GET" and e["path"].rstrip("/") == "/v1/phone"]
        listing = max(e["t_reply"] for e in pages) - min(e["t"] for e in pages)
        first_delete = min((e["t"] for e in entries if e["method"] == "DELETE"), default=float("inf"))
        ideal = calls / args.rate
        over = max_overshoot([e["t"] for e in entries], args.rate, args.burst)
        print(f"account {args.account}, declared {args.declared} by number, latency {args.latency*1000:.0f} ms, "
              f"rate {args.rate:g}, burst {args.burst}, concurrency {args.concurrency}")
        print(f"retired --once:   {wall:7.2f} s for {calls} calls ({lists} list pages, {released} releases)")
        print(f"ideal (calls/rate): {ideal:5.2f} s   ratio {wall / ideal:.3f}")
        print(f"listing ({'by page' if args.paging == 'both' else 'by cursor'}): {listing:6.2f} s for {lists} pages, "
              f"ideal {lists / args.rate:.2f} s, ratio {listing / (lists / args.rate):.3f}; "
              f"first DELETE {'after' if first_delete >= max(e['t_reply'] for e in pages) else 'BEFORE'} the last page")
        print(f"calls per released phone beyond the list pages: {(calls - lists) / max(1, released):.3f}")
        print(f"largest overshoot of rate*t+burst: {max_overshoot(sent, args.rate, args.burst):+.2f} calls "
              f"as sent, {over:+.2f} as arrived at the fake (its threads add jitter)")
        print(f"peak RSS: {rss / 1024:.1f} MiB")
        if not args.skip_curl:
            fake.terminate(); fake.wait()
            shutil.rmtree(d); os.makedirs(d)
            fake, url, log = start_fake(d, args)
            curl = run_curl_loop(d, url, log, args)
            print(f"sequential curl loop: {curl:7.2f} s   retired is {curl / wall:.1f}x faster")
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
