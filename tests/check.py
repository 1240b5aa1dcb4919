#!/usr/bin/python3
"""make check and make check-fast: every stage, side by side where it can be.

    tests/check.py            # what `make check` runs (CI, through .ci/run)
    tests/check.py --fast     # `make check-fast`: the edit loop (e2e but the slow tests)
    tests/check.py e2e fuzz   # some stages only (and what they need)

Each stage is one command with the stages it needs; a stage starts as soon as
those have passed, so the builds, the package, the plain and the sanitized
suites and the fuzzers overlap.  Most of a suite's time is spent waiting on
the daemon's timers, not on the CPU, which is why they can share two cores.
Every stage runs even when another one fails (a stage whose prerequisite
failed is reported as not run); the exit code is 0 only when all passed.
Each stage's output goes to build/check/STAGE.log; a failed stage's tail is
printed, and the closing table gives each stage's time in this run.
"""

import argparse
import glob
import os
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGS = os.path.join(TOP, "build", "check")
PY = "/usr/bin/python3"
MAKE = ["make", "--no-print-directory"]
# pytest workers: the e2e tests wait on timers far more than they compute,
# so more workers than cores; the system tests each boot a systemd.
E2E_WORKERS = os.environ.get("CHECK_E2E_WORKERS", "6")
E2E_SAN_WORKERS = os.environ.get("CHECK_E2E_SAN_WORKERS", "8")
SYSTEM_WORKERS = os.environ.get("CHECK_SYSTEM_WORKERS", "3")


def pytest(*paths, workers=None):
    argv = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=25"]
    if workers:
        argv += ["-n", workers]
    return argv + list(paths)


SYSTEM = ["tests/system/test_sysbox.py", "tests/system/test_service.py", "tests/system/test_clone_location.py"]
# ASan keeps 256 MiB of freed memory from reuse by default, so a daemon that
# runs a thousand calls keeps touching new pages: a third of the sanitized
# suites' CPU.  4 MiB still holds tens of thousands of our allocations (the
# few calls' worth of work that a use after free in an event loop follows)
# back, and costs a tenth of the sanitized suite's CPU less than 16 MiB.
SAN = {"RETIRED_BUILD": os.path.join(TOP, "build-san"), "RETIRED_SANITIZED": "1",
       "ASAN_OPTIONS": ":".join(filter(None, ["quarantine_size_mb=4", os.environ.get("ASAN_OPTIONS")]))}

# Stages that burn CPU for a fixed time (the fuzzers) or that nothing waits
# for (and that take little) run at a lower priority, so that the longest
# paths (build-san -> e2e-san, package -> system-pkg) get the CPU when it is
# short.  Not a build: niced, the plain build and the fuzzers' waited minutes
# behind the suites.
# The stages that lead the longest paths take little CPU (about 30 s each)
# but many short steps, each of which waits its turn behind the suites:
# they go first (as root; elsewhere nice says so and runs them as they are).
# unit-san is such a path too: 46 CPU seconds that took 280 s behind the
# e2e suites' workers and ended the run.
NICE = {"fuzz": 10, "lintian": 10, "package": -5, "system-pkg": -5, "build-san": -5, "unit-san": -5}

# name: (argv, needs, extra environment, what it shows)
STAGES = {
    "build":      (MAKE + ["-j2", "all", "unit-build"], [], {}, "retired, retirectl, retirectl-live, the unit tests"),
    "build-san":  (MAKE + ["-j2", "SANITIZE=1", "all", "unit-build"], [], {}, "the same with ASan+UBSan"),
    "build-fuzz": (MAKE + ["-j2", "fuzz-build"], [], {}, "the libFuzzer harnesses"),
    "package":    (MAKE + ["deb"], [], {"DEB_BUILD_OPTIONS": "parallel=2"}, "the .deb (its build runs the unit tests)"),
    "lintian":    (MAKE + ["lintian"], ["package"], {}, "no error, no warning in the .deb"),
    "unit":       (MAKE + ["unit"], ["build"], {}, "cmocka: config, ledger, plan, decision tables, pacer"),
    "unit-san":   (MAKE + ["unit", "SANITIZE=1"], ["build-san"], SAN, "the same, sanitized"),
    "fake":       (pytest("tests/fake-diga"), [], {}, "the fake Diga API's own tests"),
    "house":      ([PY, "tests/house/limits.py"], [], {}, "no file above 1,100 lines, no function above 80"),
    # Every e2e test runs once in make check: the tests at scale on the plain
    # build (under ASan they cost a fifth of the run's CPU and find nothing
    # the rest do not), all the others on the sanitized build, which fails
    # on what the plain one would pass and on memory errors besides.  The
    # plain build's other runs: the system stages, the package's, valgrind.
    "e2e":        (pytest("-m", "slow", "tests/e2e", workers=E2E_WORKERS), ["build"], {},
                   "the tests at scale: retired against the fake"),
    "e2e-core":   (pytest("-m", "not slow", "tests/e2e", workers=E2E_WORKERS), ["build"], {},
                   "retired against the fake, but the tests at scale"),
    "e2e-san":    (pytest("-m", "not slow", "tests/e2e", workers=E2E_SAN_WORKERS), ["build-san"], SAN,
                   "all the other e2e tests, sanitized"),
    "system":     (pytest(*SYSTEM, workers=SYSTEM_WORKERS), ["build"], {"SYSBOX_REQUIRED": "1"},
                   "the box itself, and the unit, under a private systemd"),
    "system-pkg": (pytest("tests/system/test_package.py", workers=SYSTEM_WORKERS), ["package"],
                   {"SYSBOX_REQUIRED": "1"}, "the package under a private systemd: install, upgrade, purge"),
    # Only the file that runs our binaries: the box's own tests and the
    # package (which holds the plain build) have nothing sanitized to run.
    "system-san": (pytest("tests/system/test_service.py", workers=SYSTEM_WORKERS), ["build-san"],
                   dict(SAN, SYSBOX_REQUIRED="1"), "the unit, sanitized"),
    "valgrind":   (MAKE + ["valgrind"], ["build"], {}, "the demo under memcheck"),
    "fuzz":       (MAKE + ["fuzz-crashes", "fuzz-smoke"], ["build-fuzz"], {}, "saved crashes, 5 s of each harness"),
}
# The edit loop: the e2e tests but those marked slow (at scale: see
# tests/e2e/conftest.py), which make check runs.
FAST = ["build", "house", "unit", "fake", "e2e-core"]


def closure(names):
    out = []
    for n in names:
        for dep in closure(STAGES[n][1]):
            if dep not in out:
                out.append(dep)
        if n not in out:
            out.append(n)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only " + ", ".join(FAST))
    ap.add_argument("stages", nargs="*", help="stages to run (default: all)")
    args = ap.parse_args()
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        ap.error("no such stage: %s (stages: %s)" % (", ".join(unknown), ", ".join(STAGES)))
    # The system tests are split by what they need; a new file must be placed.
    found = {os.path.relpath(p, TOP) for p in glob.glob(os.path.join(TOP, "tests/system/test_*.py"))}
    unplaced = found - set(SYSTEM) - {"tests/system/test_package.py"}
    if unplaced:
        ap.error("tests/check.py runs no stage for %s: add it to SYSTEM" % ", ".join(sorted(unplaced)))
    wanted = closure(args.stages or (FAST if args.fast else [s for s in STAGES if s != "e2e-core"]))
    os.makedirs(LOGS, exist_ok=True)
    # The box's and the tests' own processes must not inherit a make jobserver.
    base_env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    t0 = time.monotonic()
    running, result, spent, cpu = {}, {}, {}, {}
    while len(result) < len(wanted):
        for name in wanted:
            if name in running or name in result:
                continue
            needs = STAGES[name][1]
            if any(result.get(d) not in (None, 0) for d in needs):
                result[name] = None            # not run: a prerequisite failed
                print("check: %-10s not run (%s failed)" % (name, ", ".join(
                    d for d in needs if result.get(d) not in (None, 0))), flush=True)
                continue
            if all(result.get(d) == 0 for d in needs):
                argv, _, env, _ = STAGES[name]
                if name in NICE:
                    argv = ["nice", "-n", str(NICE[name])] + argv
                log = open(os.path.join(LOGS, name + ".log"), "w")
                running[name] = (subprocess.Popen(argv, cwd=TOP, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=dict(base_env, **env)),
                                 time.monotonic(), log)
                print("check: %-10s started at %4.0f s" % (name, time.monotonic() - t0), flush=True)
        if not running:
            continue
        pid, status, usage = os.wait4(-1, 0)
        for name, (proc, start, log) in list(running.items()):
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                log.close()
                del running[name]
                result[name], spent[name] = proc.returncode, time.monotonic() - start
                cpu[name] = usage.ru_utime + usage.ru_stime
                print("check: %-10s %s in %4.0f s" % (name, "passed" if proc.returncode == 0 else
                                                      "FAILED (%d)" % proc.returncode, spent[name]),
                      flush=True)
                if proc.returncode != 0:
                    with open(os.path.join(LOGS, name + ".log"), errors="replace") as f:
                        tail = f.read()[-6000:]
                    print("---- end of build/check/%s.log ----\n%s\n----" % (name, tail), flush=True)

    total = time.monotonic() - t0
    print("\n| stage | what it shows | seconds | CPU seconds | result |\n|---|---|---|---|---|")
    for name in wanted:
        r = result[name]
        print("| %s | %s | %s | %s | %s |" % (
            name, STAGES[name][3], "%.0f" % spent[name] if name in spent else "-",
            "%.0f" % cpu[name] if name in cpu else "-",
            "passed" if r == 0 else "not run" if r is None else "FAILED"))
    print("| all | side by side | %.0f | %.0f | |" % (total, sum(cpu.values())))
    failed = [n for n in wanted if result[n] != 0]
    # The closing line CI reads.
    print("check: %d passed, %d failed" % (len(wanted) - len(failed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
