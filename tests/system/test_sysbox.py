"""Tests of the SysBox harness itself: a private systemd boots, runs notify and
watchdog services, DynamicUser + LoadCredential work, the journal is
queryable, and the host is left untouched.

    /usr/bin/python3 -m pytest -q tests/system/test_sysbox.py

Needs root; skips (with the reason) where a box cannot boot, or fails
instead when SYSBOX_REQUIRED=1 (for CI, where a skip would hide a regression).
"""

import os
import socket
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sysbox import SysBox, skip_reason  # noqa: E402

SCRIPTS = "/usr/local/libexec/sysbox-test"
SYSCTLS = ("fs/file-max", "fs/nr_open", "net/unix/max_dgram_qlen", "kernel/printk_devkmsg")
SECRET = "tok-3f9a1c-not-a-real-secret"


@pytest.fixture(scope="module", autouse=True)
def _need_sysbox():
    """Runs before the other module fixtures, so no box is tried in vain."""
    reason = skip_reason()
    if reason:
        if os.environ.get("SYSBOX_REQUIRED") == "1":
            pytest.fail(f"SYSBOX_REQUIRED=1 but: {reason}")
        pytest.skip(reason)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _host_state():
    return {
        "machine-id": _read("/etc/machine-id"),
        "hostname": socket.gethostname(),
        "sysctls": {k: _read(f"/proc/sys/{k}") for k in SYSCTLS},
        "/dev/log": os.path.lexists("/dev/log"),
        "/run/systemd/private": os.path.lexists("/run/systemd/private"),
        "/run/log/journal": os.path.lexists("/run/log/journal"),
        "/etc/systemd/system": sorted(os.listdir("/etc/systemd/system")),
    }


@pytest.fixture(scope="module")
def host_before():
    """The host as it was before any box of this module booted, plus a
    sentinel file in the host's /tmp (a naive boot would clean /tmp)."""
    fd, sentinel = tempfile.mkstemp(prefix="sysbox-sentinel-", dir="/tmp")
    os.write(fd, b"must survive the box\n")
    os.close(fd)
    yield {"sentinel": sentinel, **_host_state()}
    os.unlink(sentinel)


@pytest.fixture(scope="module")
def box(host_before):
    b = SysBox()
    # Installed before boot: goes into the /etc and /usr overlay upper layers.
    b.install("/etc/retired/api-token", SECRET + "\n", mode=0o600)
    b.install(f"{SCRIPTS}/notify.sh", NOTIFY_SH, mode=0o755)
    b.install(f"{SCRIPTS}/watchdog.sh", WATCHDOG_SH, mode=0o755)
    b.start(timeout=30)
    print(f"\nsysbox booted in {b.boot_seconds:.2f}s ({b.boot_state}), work dir {b.workdir}")
    yield b
    b.stop()


def test_boot_is_clean_and_isolated(box):
    assert box.boot_state == "running", box.systemctl("--failed", check=False).stdout
    assert box.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert box.run("systemd-detect-virt", "--container").stdout.strip() == "container-other"
    box_id = box.run("cat", "/etc/machine-id").stdout.strip()
    assert len(box_id) == 32 and box_id.encode() not in (_read("/etc/machine-id") or b"")
    assert box.show("systemd-journald.service", "ActiveState")["ActiveState"] == "active"
    for unit in ("systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
                 "systemd-sysctl.service", "systemd-sysusers.service",
                 "systemd-remount-fs.service", "getty@tty1.service", "systemd-timesyncd.service",
                 "systemd-modules-load.service", "systemd-binfmt.service",
                 "systemd-journal-flush.service", "systemd-tmpfiles-clean.timer"):
        props = box.show(unit, "LoadState", "ActiveState")
        assert props == {"LoadState": "masked", "ActiveState": "inactive"}, unit
    # Private /dev, /run and /tmp; a read-only host root outside the overlays.
    mounts = box.run("findmnt", "-rno", "TARGET,FSTYPE").stdout
    assert {tuple(l.split()) for l in mounts.splitlines()} >= {
        ("/tmp", "tmpfs"), ("/run", "tmpfs"), ("/dev", "tmpfs"), ("/etc", "overlay")}
    assert box.run("touch", "/root/sysbox-probe", check=False).returncode != 0
    assert box.run("sh", "-c", "echo 1 > /proc/sys/fs/file-max", check=False).returncode != 0


NOTIFY_SH = """#!/bin/sh
echo "notify-test: starting"
sleep 0.3
systemd-notify --ready --status="serving 3 widgets"
exec sleep infinity
"""


def test_notify_service_becomes_active_with_status(box):
    box.install_unit("sysbox-notify.service", f"""[Unit]
Description=sysbox Type=notify probe
[Service]
Type=notify
NotifyAccess=all
TimeoutStartSec=15s
ExecStart={SCRIPTS}/notify.sh
""")
    box.systemctl("start", "sysbox-notify.service")  # returns once READY=1 arrived
    props = box.show("sysbox-notify.service", "ActiveState", "SubState", "StatusText")
    assert props == {"ActiveState": "active", "SubState": "running",
                     "StatusText": "serving 3 widgets"}
    assert "notify-test: starting" in box.journalctl("-u", "sysbox-notify.service", "-o", "cat")
    box.systemctl("stop", "sysbox-notify.service")


def test_journal_fields_are_queryable_as_json(box):
    # journald attributes a message to a unit by reading /proc/PID/cgroup of
    # the sender when it processes the message.  Short-lived senders (logger,
    # systemd-cat's cat) may be gone by then and their lines then lack
    # _SYSTEMD_UNIT (~3% here), so they run in the background and the shell
    # execs sleep, which keeps them as unreaped zombies (still attributable).
    # The service's own stdout is always attributed.
    box.install_unit("sysbox-log.service", r"""[Unit]
Description=sysbox journal probe
[Service]
Type=oneshot
LogExtraFields=RETIRED_TEST=journal-probe
ExecStart=/bin/sh -c 'echo "plain stdout line"; \
  echo "warning via systemd-cat" | systemd-cat -t sysbox-cat -p warning & \
  printf "MESSAGE=release checked\nRETIRED_RELEASE=42\nSYSLOG_IDENTIFIER=sysbox-logger\n" \
    | logger --journald & \
  exec sleep 1'
""")
    box.systemctl("start", "sysbox-log.service")
    entries = box.journal_entries("-u", "sysbox-log.service")
    by_msg = {e.get("MESSAGE"): e for e in entries}
    stdout = by_msg["plain stdout line"]
    assert stdout["_SYSTEMD_UNIT"] == "sysbox-log.service"
    assert stdout["_TRANSPORT"] == "stdout"
    assert stdout["RETIRED_TEST"] == "journal-probe"
    cat = by_msg["warning via systemd-cat"]
    assert (cat["SYSLOG_IDENTIFIER"], cat["PRIORITY"]) == ("sysbox-cat", "4")
    native = by_msg["release checked"]
    assert native["RETIRED_RELEASE"] == "42"
    assert native["SYSLOG_IDENTIFIER"] == "sysbox-logger"
    assert native["_TRANSPORT"] == "journal"
    # The custom field is also a journalctl match.
    assert [e["MESSAGE"] for e in box.journal_entries("RETIRED_RELEASE=42")] == ["release checked"]


CRED_UNIT = r"""[Unit]
Description=sysbox LoadCredential probe
[Service]
Type=oneshot
DynamicUser=yes
LoadCredential=api-token:/etc/retired/api-token
ExecStart=/bin/sh -c 'echo "uid=$(id -u) user=$(id -un)"; \
  echo "token=$(cat "$CREDENTIALS_DIRECTORY/api-token")"; \
  stat -c "dir=%%U:%%a" "$CREDENTIALS_DIRECTORY"; \
  stat -c "mode=%%a owner=%%U" "$CREDENTIALS_DIRECTORY/api-token"; \
  findmnt -no FSTYPE "$CREDENTIALS_DIRECTORY" | sed "s/^/fstype=/"'
"""


def _cred_output(b):
    b.install_unit("sysbox-cred.service", CRED_UNIT)
    b.systemctl("start", "sysbox-cred.service", check=False)
    out = b.journalctl("-u", "sysbox-cred.service", "-o", "cat")
    return dict(l.split("=", 1) for l in out.split() if "=" in l)


def test_load_credential_reaches_dynamic_user(box):
    out = _cred_output(box)
    assert out["token"] == SECRET
    assert 61184 <= int(out["uid"]) <= 65519, out  # systemd's DynamicUser= range
    assert out["user"] == "sysbox-cred"
    assert out["owner"] == "sysbox-cred" and out["mode"] == "400"
    assert out["dir"] == "sysbox-cred:500"
    assert out["fstype"] in ("ramfs", "tmpfs")  # its own mount, made by systemd
    # The source stays 0600 root in the box and never appears on the host.
    assert box.run("stat", "-c", "%a %U", "/etc/retired/api-token").stdout.split() == ["600", "root"]


def test_load_credential_is_empty_without_shared_mounts():
    """Why SysBox runs `mount --make-rshared /`: systemd (which believes it is
    in a container here) leaves propagation alone; the credentials mount made
    in a helper's private mount namespace then never reaches the service,
    which sees an empty root-owned 0700 directory instead."""
    with SysBox(shared_root=False) as b:
        b.install("/etc/retired/api-token", SECRET + "\n", mode=0o600)
        out = _cred_output(b)
        assert out["token"] == ""
        assert out["dir"] == "root:700"  # the bare mount point systemd made
        assert "mode" not in out  # the service could not even stat the file
        assert out["fstype"] == "tmpfs"  # i.e. no mount of its own: this is /run


def test_dbus_option_allows_systemd_run():
    """No D-Bus by default (systemd-run, busctl need it); dbus=True adds it."""
    with SysBox(dbus=True) as b:
        assert b.boot_state == "running"
        r = b.run("systemd-run", "--wait", "--pipe", "-p", "DynamicUser=yes", "id", "-u")
        assert 61184 <= int(r.stdout) <= 65519


WATCHDOG_SH = """#!/bin/sh
systemd-notify --ready --status="pinging"
for i in 1 2 3; do sleep 0.5; systemd-notify WATCHDOG=1; done
systemd-notify --status="stopped pinging"
exec sleep infinity
"""


def test_watchdog_kills_and_restarts(box):
    box.install_unit("sysbox-watchdog.service", f"""[Unit]
Description=sysbox watchdog probe
StartLimitIntervalSec=0
[Service]
Type=notify
NotifyAccess=all
WatchdogSec=2s
Restart=on-failure
RestartSec=200ms
TimeoutStartSec=15s
ExecStart={SCRIPTS}/watchdog.sh
""")
    box.systemctl("start", "sysbox-watchdog.service")
    box.wait_for(lambda: int(box.show("sysbox-watchdog.service", "NRestarts")["NRestarts"]) >= 2,
                 timeout=20, interval=0.2, what="two watchdog restarts")
    log = box.journalctl("-u", "sysbox-watchdog.service", "-o", "cat")
    assert "Watchdog timeout" in log
    assert "status=6/ABRT" in log  # WatchdogSignal= defaults to SIGABRT
    assert "Failed with result 'watchdog'" in log
    assert "Scheduled restart job" in log
    box.systemctl("stop", "sysbox-watchdog.service")


def test_host_untouched(box, host_before):
    box.install("/etc/sysbox-probe", "written after boot\n")
    box.install("/var/run/sysbox-probe", "through the box's /var/run -> /run link\n")
    assert box.run("cat", "/run/sysbox-probe").stdout.startswith("through")
    pid, workdir = box.pid, box.workdir
    box.stop()  # the module's box ends here; later tests get none
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(workdir)
    assert not os.path.exists("/etc/sysbox-probe")
    assert not os.path.exists("/run/sysbox-probe")
    assert _read("/etc/retired/api-token") != (SECRET + "\n").encode()
    assert _read(host_before["sentinel"]) == b"must survive the box\n"
    after = _host_state()
    for key, value in after.items():
        assert value == host_before[key], key
