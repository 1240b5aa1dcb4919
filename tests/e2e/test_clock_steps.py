"""The hold is real time (issue 29): whatever the daemon's wall clock does (a
day slow at start and put right, stepped back or forward mid-hold, a restart
mid-hold), no DELETE leaves before safety.hold seconds of real time after its
declaration was applied; not_before stays safe under the same steps.

Only the daemon's wall clock moves: tests/e2e/clockshim.c, preloaded, adds
the offset the test writes to a file to CLOCK_REALTIME (the monotonic and
boot clocks, the fake API's clock and ours here stay right).  Times below are
real ones (time.time(), and the fake's "wall" stamp of each request)."""

import os
import time
from datetime import datetime, timezone

import pytest

from conftest import BUILD, MSG, phone, pid, stderr_of, wait_for

DAY = 86400.0
HOLD = 3.0
SHIM = os.path.join(BUILD, "tests", "clockshim.so")
DONE = ("released", "scheduled")


class Clock:
    """The daemon's wall clock, as an offset from the real one."""

    def __init__(self, rig, offset):
        self.path = os.path.join(rig.dir, "clock-offset")
        self.set(offset)
        self.env = {"LD_PRELOAD": SHIM, "RETIRED_CLOCK_OFFSET_FILE": self.path}
        if os.environ.get("RETIRED_SANITIZED"):
            # ASan wants its runtime first; ours is linked in, and the shim
            # only wraps libc's clock calls.
            self.env["ASAN_OPTIONS"] = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                              "verify_asan_link_order=0"]))

    def set(self, offset):
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write("%f\n" % offset)
        os.replace(tmp, self.path)


@pytest.fixture
def clock():
    if not os.path.exists(SHIM):
        pytest.fail("the clock shim is not built: %s (make unit-build builds it)" % SHIM)
    return Clock


def applied(rig, keys):
    rows = rig.db_rows()
    return all(k in rows for k in keys)


def released(rig, keys):
    rows = rig.db_rows()
    return all(k in rows and rows[k]["state"] in DONE for k in keys)


def assert_held(rig, keys, since):
    """Each phone's DELETE left HOLD seconds after `since` (real time) at the
    earliest, and it was released once."""
    for k in keys:
        sent = [e["wall"] for e in rig.deletes(k)]
        assert sent, "no DELETE of %s" % k
        assert min(sent) >= since + HOLD, "%s: DELETE %.2f s after its declaration (hold %.0f s)" % (
            k, min(sent) - since, HOLD)
    rig.assert_exactly_once(one_delete=True)


@pytest.mark.parametrize("step", ["put_right", "stepped_forward", "stepped_back"])
def test_a_clock_moved_after_start_does_not_shorten_the_hold(make_rig, clock, step):
    """The machine booted a day slow (or right, then stepped a day forward, or
    back): 5 phones declared at start, 3 more by a reload, then the clock
    moved a day.  By the wall clock every hold is long over (or a day away);
    by real time none is, none of the 8 goes before it is, and all go when
    it is."""
    rig = make_rig([phone(n) for n in range(1, 9)])
    c = clock(rig, -DAY if step == "put_right" else 0.0)
    moved = {"put_right": 0.0, "stepped_forward": DAY, "stepped_back": -DAY}[step]
    first, more = [pid(n) for n in range(1, 6)], [pid(n) for n in range(6, 9)]
    rig.write_config([{"id": k} for k in first], safety={"hold": HOLD})
    t_start = time.time()
    proc = rig.start(env=c.env)
    wait_for(lambda: applied(rig, first), what="the declarations applied")
    rig.write_config([{"id": k} for k in first + more], safety={"hold": HOLD})
    t_reload = time.time()
    assert "reloaded" in rig.ctl("reload").stdout
    c.set(moved)
    wait_for(lambda: released(rig, first + more), what="the releases", timeout=30)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    assert_held(rig, first, t_start)
    assert_held(rig, more, t_reload)


def test_a_hold_set_by_a_reload_after_the_api_clock_is_known(make_rig, clock):
    """The daemon already talked to the API (its clock known, the skew warned
    of) when a reload sets a hold and adds 3 phones; the clock is put right a
    moment later: the 3 wait their whole hold all the same."""
    rig = make_rig([phone(n) for n in range(1, 5)])
    c = clock(rig, -DAY)
    rig.write_config([{"id": pid(1)}], safety={"hold": 0})
    proc = rig.start(env=c.env)
    wait_for(lambda: released(rig, [pid(1)]), what="the first release")
    more = [pid(n) for n in range(2, 5)]
    rig.write_config([{"id": pid(1)}] + [{"id": k} for k in more], safety={"hold": HOLD})
    t_reload = time.time()
    assert "reloaded" in rig.ctl("reload").stdout
    c.set(0.0)
    wait_for(lambda: released(rig, more), what="the held releases", timeout=30)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    assert_held(rig, more, t_reload)


@pytest.mark.parametrize("offset", [-DAY, DAY])
def test_a_restart_mid_hold_with_the_clock_moved_keeps_the_hold(make_rig, clock, offset):
    """Stopped in the middle of a hold, started again with the clock a day
    back or a day forward: the hold kept in the ledger runs on, by real time."""
    rig = make_rig([phone(1), phone(2)])
    c = clock(rig, 0.0)
    keys = [pid(1), pid(2)]
    rig.write_config([{"id": k} for k in keys], safety={"hold": HOLD})
    t_start = time.time()
    proc = rig.start(env=c.env)
    wait_for(lambda: applied(rig, keys), what="the declarations applied")
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    assert rig.deletes() == []
    c.set(offset)
    proc = rig.start(env=c.env)
    wait_for(lambda: released(rig, keys), what="the releases", timeout=30)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    assert_held(rig, keys, t_start)
    if offset < 0:
        # Said once, with both times: what is recorded now dates before what was.
        assert stderr_of(proc).count("earlier than the last step on record") == 1, stderr_of(proc)


def test_not_before_is_safe_through_steps_back_and_forth(make_rig, clock):
    """A not_before a few seconds ahead (real time), the clock a day slow at
    start, stepped back another day mid-run and put right later: nothing goes
    before not_before by real time, and nothing twice."""
    rig = make_rig([phone(1), phone(2)])
    c = clock(rig, -DAY)
    at = int(time.time()) + 4
    when = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys = [pid(1), pid(2)]
    rig.write_config([{"id": k, "not_before": when} for k in keys], safety={"hold": 0})
    proc = rig.start(env=c.env)
    wait_for(lambda: applied(rig, keys), what="the declarations applied")
    c.set(-2 * DAY)
    wait_for(lambda: MSG["pass_summary"] in stderr_of(proc) or time.time() > at - 2, what="a pass", timeout=10)
    c.set(0.0)
    wait_for(lambda: released(rig, keys), what="the releases", timeout=30)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    for k in keys:
        assert min(e["wall"] for e in rig.deletes(k)) >= at, k
    rig.assert_exactly_once(one_delete=True)
