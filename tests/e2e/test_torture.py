"""Crash torture: the daemon is SIGKILLed at random moments, round after round,
against a fake API that fails (random 5xx), throttles (a rate limit just below
the daemon's) and is slow (latency); then a last `--once` run settles everything.

After every kill:
  - the ledger passes PRAGMA integrity_check;
  - every DELETE that reached the API is on record (its in_flight step was
    committed before it left);
  - the declarations are in the ledger all or not at all (one transaction).
At the end:
  - no phone was released twice (the fake's violations), nor even hit by a
    second DELETE after its release;
  - every phone the API released or scheduled is released or scheduled in the
    ledger, with a DELETE or an in_flight step in its history;
  - every declared phone has a row, none is left in_flight, pending or retrying,
    and each ended where its account says (scheduled, released, deferred, unresolved);
  - no phone that was not declared was released or even sent a DELETE.

The size comes from the environment, so `make check` runs the short form:
  TORTURE_ROUNDS (default 5), TORTURE_PHONES (default 100), TORTURE_SEED
  (default fixed).  The seed is printed, and repeated in every failure message:
  TORTURE_SEED=<seed> reproduces the same kills and the same API faults (timing
  still varies).
"""

import os
import random
import sqlite3
import subprocess
import time

import pytest

from conftest import EXIT, SETTLED, num, phone, pid, spaced

ROUNDS = int(os.environ.get("TORTURE_ROUNDS", "5"))
PHONES = int(os.environ.get("TORTURE_PHONES", "100"))
SEED = int(os.environ.get("TORTURE_SEED", "20261126"))

# At 100 calls/s the work (a DELETE per phone, the GETs and list pages, and each
# restart's resync) spreads over the rounds: most kills land while it is going on.
DAEMON_RATE = 100.0
FAKE_RATE = 90.0           # just below: the API answers 429 now and then


def plan_account(n_phones):
    """The account and the declarations: a mix of netelip and custom phones,
    declared by number (plain or spaced), by id, or by both; some reserved
    (deferred), some not in the account (unresolved), and undeclared phones
    beside them that must never be touched."""
    phones, decls, expect = [], [], {}
    for n in range(1, n_phones + 1):
        missing, reserved = n % 23 == 7, n % 17 == 5
        provider = "custom" if n % 3 == 0 and not reserved else "netelip"
        if not missing:
            phones.append(phone(n, provider=provider, status="reserved" if reserved else "assigned"))
        kind = n % 4
        if kind == 0:
            decls.append({"number": num(n)})
            key = num(n)
        elif kind == 1:
            decls.append({"id": pid(n)})
            key = pid(n)
        elif kind == 2:
            decls.append({"id": pid(n), "number": spaced(n), "reason": "TORTURE-%d both" % n})
            key = pid(n)
        else:
            decls.append({"number": spaced(n), "reason": "TORTURE-%d" % n})
            key = num(n)
        expect[key] = (n, "unresolved" if missing else "deferred" if reserved else
                       "released" if provider == "custom" else "scheduled")
    undeclared = [phone(n, provider="custom" if n % 2 else "netelip")
                  for n in range(n_phones + 1, n_phones + 1 + max(5, n_phones // 10))]
    return phones + undeclared, decls, expect, {p["id"] for p in undeclared}


def ledger_facts(path):
    """(integrity, {key: state}, ids with a DELETE or an in_flight step on record),
    read without writing (the ledger may have a hot WAL from the killed daemon),
    unless a first start was killed inside its plan: a new ledger is written
    through a rollback journal, and its hot journal is taken back only by a
    connection that may write, as the next start (or retirectl) does."""
    if not os.path.exists(path):
        return [("ok",)], {}, set()
    journal = path + "-journal"
    hot = os.path.exists(journal) and os.path.getsize(journal) > 0
    con = sqlite3.connect(path if hot else "file:%s?mode=ro" % path, uri=not hot, timeout=10)
    try:
        try:
            states = dict(con.execute("SELECT key, state FROM phones"))
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return con.execute("PRAGMA integrity_check").fetchall(), {}, set()
            raise
        sent = {r[0] for r in con.execute(
            "SELECT DISTINCT p.id FROM history h JOIN phones p ON p.pk = h.phone "
            "WHERE h.new_state = 'in_flight' OR h.method = 'DELETE'")}
        return con.execute("PRAGMA integrity_check").fetchall(), states, sent
    finally:
        con.close()


def kill_at_random(rig, proc, rng):
    """SIGKILL after a random delay, or after the API has answered K more
    requests (whichever the dice chose), or once the daemon has ended."""
    if rng.random() < 0.5:
        delay = rng.uniform(0.0, 0.5)
        how = "after %.3f s" % delay
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:   # still running, as intended
            pass
    else:
        k = rng.randint(1, 80)
        how = "after %d more requests" % k
        target, deadline = len(rig.fake.log) + k, time.monotonic() + 1.0
        while len(rig.fake.log) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    proc.kill()
    proc.wait(10)
    return how


@pytest.mark.slow
def test_sigkill_torture(make_rig):
    rng = random.Random(SEED)
    context = "TORTURE_SEED=%d TORTURE_ROUNDS=%d TORTURE_PHONES=%d" % (SEED, ROUNDS, PHONES)
    account, decls, expect, undeclared = plan_account(PHONES)
    declared_ids = {pid(n) for n, _ in expect.values()}
    # A released custom phone stays listed, or is gone (404) as the real API may do.
    custom_release = rng.choice(["released", "gone"])
    context += " (custom_release=%s)" % custom_release
    rig = make_rig(account, seed=SEED, error_rate=0.1, rate_limit=FAKE_RATE, rate_burst=15, latency=0.01,
                   custom_release=custom_release)
    print(context)
    rig.write_config(decls, pace={"rate": DAEMON_RATE, "burst": 20, "concurrency": 8},
                     retry={"max_attempts": 100, "base_delay": 0.05, "max_delay": 0.2},
                     safety={"max_new_releases": PHONES + 10})

    def check(cond, what):
        if not cond:
            pytest.fail("%s\n(%s; reproduce with %s)" % (what, history[-1] if history else "before round 1", context))

    history, killed_early, busy = [], 0, 0
    t_start = time.monotonic()
    for r in range(ROUNDS):
        rig.fake.configure(latency=rng.uniform(0.005, 0.02),
                           retry_after_mode=rng.choice(["seconds", "none", "none", "date"]))
        once = rng.random() < 0.3
        proc = rig.start("--once") if once else rig.start()
        before = len(rig.fake.log)
        how = kill_at_random(rig, proc, rng)
        busy += len(rig.fake.log) > before
        if proc.returncode != -9:
            killed_early += 1
            check(proc.returncode == 0, "round %d: the daemon exited %s before the kill; stderr in %s"
                  % (r, proc.returncode, proc.stderr_path))
        history.append("round %d: %s%s, %s" % (r, "--once, " if once else "", how,
                                               "killed" if proc.returncode == -9 else "had exited"))

        integrity, states, sent = ledger_facts(rig.ledger)
        check(integrity == [("ok",)], "integrity_check after the kill: %s" % integrity)
        check(not states or set(states) == set(expect),
              "the declarations are half in the ledger: %d of %d rows" % (len(states), len(expect)))
        arrived = {p for p, c in rig.fake.snapshot(phones=False)["delete_counts"].items() if c}
        check(arrived <= sent, "DELETEs the API got with no in_flight on record: %s" % sorted(arrived - sent)[:10])
        check(rig.fake.violations == [], "double release: %s" % rig.fake.violations[:3])

    # The last run settles everything (faults still on).
    t_rounds = time.monotonic() - t_start
    run = rig.run(timeout=max(60.0, PHONES * 0.2))
    history.append("final --once run: rc %d in %.1f s" % (run.rc, run.elapsed))
    check(run.rc in (EXIT["settled"], EXIT["operator"]), "the final run: %r" % run)
    print("%d rounds in %.1f s (%d with calls, %d ended before the kill), final run %.1f s, %d requests, "
          "%d 429, %d 5xx" % (ROUNDS, t_rounds, busy, killed_early, run.elapsed, len(rig.fake.log),
             sum(e["status"] == 429 for e in rig.fake.log),
             sum((e["status"] or 0) >= 500 for e in rig.fake.log)))

    integrity, states, sent = ledger_facts(rig.ledger)
    snap = rig.fake.snapshot(phones=False)
    check(integrity == [("ok",)], "integrity_check: %s" % integrity)
    check(snap["violations"] == [], "double release: %s" % snap["violations"][:3])
    check(all(c == 1 for c in snap["release_counts"].values()),
          "released more than once: %s" % {p: c for p, c in snap["release_counts"].items() if c != 1})
    released_ids = set(snap["release_counts"])
    # A DELETE after the release, even one the fake refused: the release was not known.
    for p in released_ids:
        check(snap["delete_counts"].get(p, 0) >= 1, p)

    # Nothing undeclared touched.
    check(released_ids <= declared_ids, "released but never declared: %s" % sorted(released_ids - declared_ids))
    hit = {p for p, c in snap["delete_counts"].items() if c}
    check(not hit & undeclared, "DELETE sent for undeclared phones: %s" % sorted(hit & undeclared))

    # Every declared phone is in the ledger, settled where its account says.
    check(set(states) == set(expect), "rows missing: %s; rows not declared: %s"
          % (sorted(set(expect) - set(states))[:10], sorted(set(states) - set(expect))[:10]))
    stuck = {k: s for k, s in states.items() if s not in SETTLED}
    check(not stuck, "not settled: %s" % dict(list(stuck.items())[:10]))
    wrong = {k: (states[k], want) for k, (n, want) in expect.items() if states[k] != want}
    check(not wrong, "%d phones ended in the wrong state, e.g. %s" % (len(wrong), dict(list(wrong.items())[:10])))

    # The API's releases and the ledger agree, and the ledger knows the DELETE.
    by_id = {pid(n): k for k, (n, _) in expect.items()}
    for p in released_ids:
        k = by_id[p]
        check(states[k] in ("released", "scheduled"), "%s released at the API, %s in the ledger" % (k, states[k]))
        check(p in sent, "%s released at the API with no DELETE or in_flight in its history" % k)
    for k, (n, want) in expect.items():
        if want in ("released", "scheduled"):
            check(pid(n) in released_ids, "%s is %s in the ledger, not at the API" % (k, states[k]))
        else:
            check(snap["delete_counts"].get(pid(n), 0) == 0, "%s (%s) got a DELETE" % (k, want))
