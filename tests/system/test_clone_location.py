"""A checkout under /tmp runs the system tests too.

The box mounts its own /tmp, /run, /etc, /var and /usr, so a work dir under
a clone in /tmp would be hidden from it.  sysbox.default_parent() then puts the
work dirs elsewhere and says where; this test copies the checkout into a /tmp
folder, as `git clone ... /tmp/x` would lay it out, and runs one system test
from there.

    /usr/bin/python3 -m pytest -q tests/system/test_clone_location.py
"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sysbox import PROJECT, skip_reason  # noqa: E402


def _copy_checkout(dest):
    """The checkout's files without its build output or .git, like `make deb`'s copy."""
    tar = subprocess.run(
        f"tar -c --exclude=./build --exclude=./build-san --exclude-vcs . | tar -x -C {dest}",
        shell=True, cwd=PROJECT, capture_output=True, text=True)
    assert tar.returncode == 0, tar.stderr


def test_a_checkout_under_tmp_runs_a_system_test():
    reason = skip_reason()
    if reason:
        if os.environ.get("SYSBOX_REQUIRED") == "1":
            pytest.fail(f"SYSBOX_REQUIRED=1 but: {reason}")
        pytest.skip(reason)
    clone = tempfile.mkdtemp(prefix="retired-clone-", dir="/tmp")
    try:
        _copy_checkout(clone)
        env = {k: v for k, v in os.environ.items()
               if k not in ("SYSBOX_PARENT", "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST")}
        env["SYSBOX_REQUIRED"] = "1"
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:xdist",
             "tests/system/test_sysbox.py", "-k", "test_boot_is_clean_and_isolated"],
            cwd=clone, env=env, capture_output=True, text=True, timeout=240)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "1 passed" in out, out
        # It said where the work dir went instead, used it, and removed it.
        assert "work dirs go to" in out, out
        parent = out.split("work dirs go to ", 1)[1].split("/systest-", 1)[0]
        workdir = out.split(", work dir ", 1)[1].split()[0]
        assert not parent.startswith("/tmp") and workdir.startswith(parent + "/systest-"), out
        assert not os.path.exists(workdir), f"{workdir} was left behind"
    finally:
        shutil.rmtree(clone, ignore_errors=True)
