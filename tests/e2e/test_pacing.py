"""The pacer: a token bucket (rate, burst) and a cap on calls in flight, shared by
every call, checked from the daemon's own record of when each call left (its
debug log) and from the fake's record of when each request arrived."""

import re

import pytest

from conftest import num, phone, pid


def max_window_excess(times, rate, burst):
    """The largest count - (rate * (t_j - t_i) + burst) over all windows [t_i, t_j]."""
    times = sorted(times)
    worst, where = float("-inf"), None
    for i in range(len(times)):
        for j in range(i, len(times)):
            excess = (j - i + 1) - (rate * (times[j] - times[i]) + burst)
            if excess > worst:
                worst, where = excess, (i, j, times[j] - times[i])
    return worst, where


def max_overlap(log):
    """Most requests in flight at once at the fake, from [t, t_reply]."""
    events = sorted([(e["t"], 1) for e in log] + [(e["t_reply"], -1) for e in log], key=lambda x: (x[0], x[1]))
    n = peak = 0
    for _, d in events:
        n += d
        peak = max(peak, n)
    return peak


# The bucket bounds when the daemon *sends*: exactly, but for the rounding of
# the times it logs (its debug log, on CLOCK_MONOTONIC).  When a request
# *arrives* at the fake (accept, a handler thread, parsing) depends on the
# machine's load: by tens of milliseconds on a busy one, so a bound on
# arrivals would judge the machine.  What the arrivals do show, whatever the
# load, is that no call left before it was counted: the k-th arrival (the
# fake's clock is CLOCK_MONOTONIC too) is never earlier than the k-th send.
SENT_SLACK = 0.001
CLOCK_ROUNDING = 0.000002
DEBUG = {"RETIRED_LOG_LEVEL": "debug"}


def sent_times(run):
    return [float(t) for t in re.findall(r"^retired: start \S+ \S+ at ([0-9.]+)", run.stderr, re.M)]


def holds(run):
    """(from, until) of each hold of every call the daemon made (Retry-After)."""
    return [(float(a), float(b)) for a, b in
            re.findall(r"^retired: hold at ([0-9.]+) until ([0-9.]+)", run.stderr, re.M)]


def assert_paced(run, log, rate, burst):
    sent = sent_times(run)
    assert len(sent) == len(log), "%d calls logged as sent, %d arrived" % (len(sent), len(log))
    excess, where = max_window_excess(sent, rate, burst)
    assert excess <= SENT_SLACK, "window %s has %.3f calls over rate*dt+burst as sent" % (where, excess)
    for k, (s, a) in enumerate(zip(sorted(sent), sorted(e["t"] for e in log))):
        assert a >= s - CLOCK_ROUNDING, "arrival %d came %.6f s before its send was counted" % (k, s - a)


@pytest.mark.parametrize("rate,burst,conc,latency", [(20.0, 5, 8, 0.05), (100.0, 5, 8, 0.01)])
def test_rate_and_burst_list_mode(make_rig, rate, burst, conc, latency):
    """120 phones by number (the account is listed, then a DELETE each).  The first
    page is a burst of work for the daemon (100 outcomes to record): calls must
    still leave at the pace they are counted at."""
    n = 120
    rig = make_rig([phone(i, provider="custom" if i % 4 == 0 else "netelip") for i in range(1, n + 1)],
                   latency=latency)
    rig.write_config([{"number": num(i)} for i in range(1, n + 1)],
                     pace={"rate": rate, "burst": burst, "concurrency": conc})
    run = rig.run(timeout=30, env=DEBUG)
    assert run.rc == 0, run
    log = rig.fake.log
    assert len(rig.deletes()) == n
    rig.assert_exactly_once(one_delete=True)
    assert max_overlap(log) <= conc
    # No faster on average than the bucket allows.  (Not needlessly slow
    # either, but that is a speed, measured by tests/bench/release.py.)
    sent = sent_times(run)
    assert max(sent) - min(sent) >= (len(log) - burst - 1) / rate
    assert_paced(run, log, rate, burst)


def test_rate_and_burst_get_mode(make_rig):
    """Ten phones by id: one GET and one DELETE each, all through the same bucket."""
    rate, burst, conc = 20.0, 5, 8
    rig = make_rig([phone(i) for i in range(1, 11)], latency=0.02)
    rig.write_config([{"id": pid(i)} for i in range(1, 11)], pace={"rate": rate, "burst": burst, "concurrency": conc})
    run = rig.run(env=DEBUG)
    assert run.rc == 0, run
    log = rig.fake.log
    assert len(log) == 20 and not [e for e in log if e["method"] == "GET" and e["phone_id"] is None]
    assert_paced(run, log, rate, burst)
    assert max_overlap(log) <= conc


@pytest.mark.parametrize("conc", [1, 3])
def test_concurrency_cap(make_rig, conc):
    """A generous bucket and a slow API: the cap on calls in flight is what binds."""
    n = 12
    rig = make_rig([phone(i) for i in range(1, n + 1)], latency=0.08)
    rig.write_config([{"number": num(i)} for i in range(1, n + 1)],
                     pace={"rate": 1000.0, "burst": 100, "concurrency": conc})
    run = rig.run()
    assert run.rc == 0, run
    peak = max_overlap(rig.fake.log)
    assert peak <= conc
    assert peak == conc, "the cap was never reached: the test exercised nothing"


def test_429_slows_down_and_completes(make_rig):
    """The API's own limit is lower than the configured rate: 429s come back, the
    daemon backs off and honours Retry-After, and every phone is released once."""
    n = 16
    rig = make_rig([phone(i) for i in range(1, n + 1)], rate_limit=10, rate_burst=4)
    rig.write_config([{"number": num(i)} for i in range(1, n + 1)],
                     pace={"rate": 40.0, "burst": 10, "concurrency": 4}, retry={"max_attempts": 8})
    run = rig.run(timeout=30, env=DEBUG)
    assert run.rc == 0, run
    log = rig.fake.log
    statuses = [e["status"] for e in log]
    assert 429 in statuses
    # Retry-After (whole seconds, at least 1 here) holds every call, not just the
    # refused one: from the moment the daemon read a 429, nothing leaves for
    # the second it asked for (by the daemon's own clock, whatever the load).
    held = holds(run)
    assert len(held) == statuses.count(429), (held, statuses)
    # Each hold lasts the second asked for from when the 429 was answered
    # (the fake's clock is CLOCK_MONOTONIC too), however late it was read.
    answered = sorted(e["t_reply"] for e in log if e["status"] == 429)
    for t, (_, until) in zip(answered, sorted(held, key=lambda h: h[1])):
        assert until >= t + 0.999, "a hold until %.3f for a 429 answered at %.3f" % (until, t)
    sent = sent_times(run)
    for start, until in held:
        early = [s for s in sent if start < s < until]
        assert not early, "%d calls sent within the hold %.3f..%.3f" % (len(early), start, until)
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    rig.assert_exactly_once()
    assert len(rig.fake.release_counts) == n
