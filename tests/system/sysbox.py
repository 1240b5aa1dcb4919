"""SysBox: a private, throw-away systemd (PID 1) for system tests.

    from sysbox import SysBox, skip_reason
    with SysBox() as box:                       # boots, waits until the manager is up
        box.install("/etc/systemd/system/t.service", UNIT)
        box.systemctl("daemon-reload")
        box.systemctl("start", "t.service")
        print(box.journalctl("-u", "t.service", "-o", "cat"))

The box is /lib/systemd/systemd booted as PID 1 of new PID, mount, UTS, IPC and
cgroup namespaces (unshare).  Inside, /etc, /var and /usr are copy-on-write
overlays whose upper layers live in the box's work dir; /run, /tmp and /dev are
fresh tmpfs; the rest of the host file system, /sys and /proc/sys are read-only.
Every unit the stock *.wants/ folders would start (except journald) and every
generator is masked, so booting runs no tmpfiles, sysctl, sysusers, getty...
See README.md beside this file for the why of each step.

Python 3 standard library only; run as root.  Nothing here touches the host
outside the work dir, a cgroup under the host's cgroup2 tree, and the
processes it starts; stop() (kill -9) removes all three.
"""

import fcntl
import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

SYSTEMD = "/lib/systemd/systemd"
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = "sysbox.target"
OVERLAID = ("etc", "var", "usr")
# Top-level folders the box mounts over: a work dir there would be hidden
# from the box, or would sit inside the overlay it serves as upper layer of.
HIDDEN = ("tmp", "run", "dev", "proc", "sys") + OVERLAID
# Where work dirs go when the project itself lives under one of HIDDEN.
FALLBACK_PARENTS = ("/srv", "/opt", "/mnt", "/root", "/home")
_said_parent = False
# Units that must keep running: tests read the journal.
KEEP = {"systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket"}
# Masked on top of everything found in the stock *.wants/ folders: units that
# are pulled in other ways (generators, dependencies, activation) and that
# would write to the host or need hardware.
EXTRA_MASKS = """
    systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service
    systemd-tmpfiles-clean.service systemd-tmpfiles-clean.timer
    systemd-sysctl.service systemd-sysusers.service systemd-remount-fs.service
    systemd-fsck-root.service systemd-firstboot.service systemd-machine-id-commit.service
    systemd-modules-load.service kmod-static-nodes.service systemd-binfmt.service
    proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
    systemd-random-seed.service systemd-pstore.service systemd-update-utmp.service
    systemd-journal-flush.service systemd-journal-catalog-update.service
    systemd-journald-audit.socket systemd-update-done.service ldconfig.service
    systemd-hwdb-update.service systemd-timesyncd.service systemd-logind.service
    systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service
    systemd-resolved.service dbus.service dbus.socket
    getty@.service serial-getty@.service console-getty.service container-getty@.service
""".split()
EMPTY_TARGETS = ("sysinit.target", "basic.target", "network.target",
                 "network-online.target", "network-pre.target")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

# Runs as PID 1 of the new namespaces (argv: workdir, shared, console pty,
# systemd args) and ends by exec'ing systemd.  Mounts made here exist only in
# the box's mount namespace (unshare made every mount private first).
SETUP_SH = r"""
set -eu
[ "$$" = 1 ] || { echo "sysbox: not PID 1 of a new PID namespace, refusing" >&2; exit 99; }
W=$1 SHARED=$2 CONSOLE=$3; shift 3
for d in etc var usr; do            # copy-on-write system dirs
    mount -t overlay "sysbox-$d" -o "lowerdir=/$d,upperdir=$W/upper/$d,workdir=$W/work/$d" "/$d"
done
mount --bind "$W" "$W"              # the work dir stays writable ...
mount -o remount,bind,ro /          # ... the rest of the host's root fs does not
mount -t tmpfs -o mode=0755,nosuid,nodev sysbox-run /run
mount -t tmpfs -o mode=1777,nosuid,nodev sysbox-tmp /tmp
mount --bind "$CONSOLE" "$W/console"     # the host pty that becomes /dev/console
mount -t tmpfs -o mode=0755,nosuid sysbox-dev /dev     # private /dev
cd /dev
mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
mkdir -m 755 pts; mkdir -m 1777 shm; mkdir -m 755 mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
ln -s pts/ptmx ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
ln -s /proc/self/fd fd; ln -s fd/0 stdin; ln -s fd/1 stdout; ln -s fd/2 stderr
: > console; mount --move "$W/console" /dev/console
cd /
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys   # no host sysctl writes
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger; mount -o remount,bind,ro /proc/sysrq-trigger
fi
mount -o remount,bind,ro /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup     # root = the box's cgroup
if [ "$SHARED" = 1 ]; then mount --make-rshared /; fi   # LoadCredential= needs it, see README
exec env -i container=sysbox PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=sysbox.target --show-status=no "$@"
"""

# Host-side lifeline of a box (argv: unshare's pid, the box's cgroup).  Its
# stdin is a pipe only the test process writes to: EOF means that process died
# without stop() (which kills the reaper first).
REAPER_SH = r"""
read _ && exit
pkill -KILL -P "$1"                 # the box's PID 1; the kernel kills the rest
for i in $(seq 100); do             # then its cgroup, once the processes are gone
    find "$2" -depth -type d -exec rmdir {} + 2>/dev/null && exit
    sleep 0.1
done
"""


def _cgroup2_root():
    """Mount point of the host's cgroup2 hierarchy, or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    return None


def skip_reason():
    """None when a SysBox can boot here, else a human reason why not."""
    if os.geteuid() != 0:
        return "sysbox needs root (mounts, namespaces); run the system tests as root"
    for tool in ("unshare", "nsenter", "mount", "mknod", "pkill"):
        if not shutil.which(tool, path=ENV["PATH"]):
            return f"sysbox needs `{tool}` (packages util-linux, coreutils, procps), which is missing"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing: install the `systemd` package"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read().split():
            return "overlayfs is not available in this kernel (/proc/filesystems)"
    if not _cgroup2_root():
        return "no cgroup2 hierarchy is mounted on the host"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--uts",
                            "--ipc", "--cgroup", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create namespaces here (unshare: {probe.stderr.strip()})"
    return None


def _usable_parent(path):
    """A folder can hold work dirs when the box does not replace it (see
    SysBox) and we can write there."""
    real = os.path.realpath(path)
    return real.split("/")[1] not in HIDDEN and os.path.isdir(real) and os.access(real, os.W_OK)


def default_parent():
    """Where new work dirs go: $SYSBOX_PARENT if set, else build/ in the
    project, else (a clone under /tmp, say, which the box hides behind its own
    tmpfs) the first usable of FALLBACK_PARENTS.  The fallback is said on
    stderr once, so that a kept work dir (SYSBOX_KEEP=1) can be found."""
    global _said_parent
    chosen = os.environ.get("SYSBOX_PARENT")
    if chosen:
        if not _usable_parent(chosen):
            raise ValueError(f"SYSBOX_PARENT={chosen} is not a writable folder outside "
                             f"/{', /'.join(HIDDEN)}")
        return chosen
    build = os.path.join(PROJECT, "build")
    if _usable_parent(PROJECT):
        os.makedirs(build, exist_ok=True)
        return build
    for parent in FALLBACK_PARENTS:
        if _usable_parent(parent):
            if not _said_parent:
                sys.stderr.write(f"sysbox: {PROJECT} is under a folder the box replaces; "
                                 f"work dirs go to {parent}/systest-* instead\n")
                _said_parent = True
            return parent
    raise ValueError(f"no folder for the box's work dir: {PROJECT} and "
                     f"{', '.join(FALLBACK_PARENTS)} are all hidden in the box or not writable; "
                     "set SYSBOX_PARENT")


class SysBoxError(RuntimeError):
    """The box died or cannot boot; wait_for() does not retry on it."""


class CommandFailed(subprocess.CalledProcessError):
    """A command in the box failed; its message shows the command's output."""

    def __str__(self):
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


POLL_MAX = 0.5   # s between polls at most, however long the wait


def wait_for(predicate, timeout=30.0, interval=0.1, what=None):
    """Poll predicate() until it returns a truthy value (returned) or the
    deadline passes (TimeoutError, chained to the predicate's last exception).
    Exceptions other than SysBoxError count as "not yet".  A poll is a
    process or two in the box (systemctl, journalctl, a sanitized retirectl:
    up to 0.1 s of CPU), so the interval grows by half each time up to
    POLL_MAX: an answer that comes at once is seen at once, and a long wait
    on a loaded machine does not feed on the CPU it waits for."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except SysBoxError:
            raise
        except Exception as exc:  # retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for "
                               f"{what or getattr(predicate, '__name__', predicate)}") from last_exc
        time.sleep(interval)
        interval = max(interval, min(POLL_MAX, interval * 1.5))


def _ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if _ppid(d) == pid:
                    kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _open_pty():
    """A pty from the devpts instance that /dev/pts shows (os.openpty() may use
    another one), so that its /dev/pts/N path can be bind-mounted in the box.
    We keep a slave fd open so that the master never sees EIO while systemd
    closes and reopens its console."""
    TIOCSPTLCK, TIOCGPTN = 0x40045431, 0x80045430
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    path = "/dev/pts/%d" % struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    return master, os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC), path


def _drain(fd, path):
    """Copy what the box writes to its console (pty master fd) into path."""
    with open(path, "ab") as out:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: every slave end is closed, the box is gone
                data = b""
            if not data:
                break
            out.write(data.replace(b"\r\n", b"\n"))
            out.flush()
    os.close(fd)


def _join_cgroup(procs_file):
    """preexec_fn of unshare: move into the box's cgroup (the root of its
    cgroup namespace)."""
    with open(procs_file, "w") as f:
        f.write("0")


class SysBox:
    """A private systemd booted in namespaces.  workdir: where the overlay
    layers and logs go; must not be under /tmp, /run, /dev, /etc, /var or /usr.
    Default: a new systest-XXXX under default_parent(), removed by stop()
    (unless keep=True or SYSBOX_KEEP=1 in the environment).
    dbus=True also runs the D-Bus system bus (for systemd-run, busctl...).
    shared_root=False skips `mount --make-rshared /` (only to show why it is needed)."""

    def __init__(self, workdir=None, *, dbus=False, shared_root=True, keep=None, systemd_args=()):
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="systest-", dir=default_parent())
            self._own_workdir = True
        else:
            os.makedirs(workdir, exist_ok=True)
            self._own_workdir = False
        self.workdir = os.path.realpath(workdir)
        top = self.workdir.split("/")[1]
        if top in HIDDEN:
            raise ValueError(f"SysBox workdir must not be under /{top}: {self.workdir}")
        self.dbus = dbus
        self.shared_root = shared_root
        self.systemd_args = list(systemd_args)  # e.g. ["--log-level=debug"]
        self.keep = keep if keep is not None else os.environ.get("SYSBOX_KEEP") == "1"
        self.upper = os.path.join(self.workdir, "upper")
        self.console_log = os.path.join(self.workdir, "console.log")   # the box's /dev/console
        self.setup_log = os.path.join(self.workdir, "setup.log")       # setup script output
        self.pid = None           # the box's systemd, as seen from the host
        self.boot_seconds = None  # start() to manager running
        self.boot_state = None    # is-system-running when start() returned
        self._unshare = None
        self._reaper = None
        self._cgroup = None
        self._console = None
        os.makedirs(self.upper, exist_ok=True)
        for d in OVERLAID:
            os.makedirs(os.path.join(self.workdir, "work", d), exist_ok=True)
            self._makedirs("/" + d)  # same mode as the host's, whatever our umask

    # -- files ---------------------------------------------------------------
    def install(self, path_inside, content, mode=0o644, uid=0, gid=0):
        """Write a file that appears at path_inside in the box, never on the host.
        Running box: written from inside its mount namespace (so symlinks such
        as /var/run -> /run resolve in the box).  Before start(): written into
        the upper layer of the /etc, /var or /usr overlay."""
        if not path_inside.startswith("/") or "/../" in path_inside + "/":
            raise ValueError(f"absolute, normalized path expected: {path_inside}")
        data = content.encode() if isinstance(content, str) else content
        if self.pid:
            script = ('umask 022; mkdir -p "$(dirname "$1")"; umask 077; cat > "$1"; '
                      'chown "$2" "$1"; chmod "$3" "$1"')
            argv = ["sh", "-c", script, "install", path_inside, f"{uid}:{gid}", "%o" % mode]
            r = subprocess.run(self._nsenter(*argv), input=data, capture_output=True, env=ENV,
                               timeout=60)
            if r.returncode != 0:
                raise CommandFailed(r.returncode, argv, r.stdout, r.stderr)
            return
        if path_inside.split("/")[1] not in OVERLAID:
            raise ValueError(f"before start() only /etc, /var and /usr can be written: {path_inside}")
        self._makedirs(os.path.dirname(path_inside))
        fd = os.open(self.upper + path_inside,
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)

    def _makedirs(self, dir_inside):
        """Before start(): create dir_inside in the upper layer, each level with
        the mode/owner of the host's (lower) dir so that the merged dir keeps
        its permissions.  A symlink in the lower layer (e.g. /var/run) would be
        shadowed by a real dir: refuse, such paths must be written after start()."""
        if dir_inside == "/":
            return
        self._makedirs(os.path.dirname(dir_inside))
        if os.path.islink(dir_inside):
            raise ValueError(f"{dir_inside} is a symlink on the host; install there after start()")
        upper = self.upper + dir_inside
        if not os.path.isdir(upper):
            st = os.stat(dir_inside) if os.path.isdir(dir_inside) else None
            os.mkdir(upper)
            os.chown(upper, st.st_uid if st else 0, st.st_gid if st else 0)
            os.chmod(upper, st.st_mode & 0o7777 if st else 0o755)

    def share(self, host_path):
        """A copy of a host file in the work dir, which the box sees at the
        same path; returns that path.  For files the box must read by path
        (a .deb for dpkg) that may live where the box cannot see them."""
        dest = os.path.join(self.workdir, "shared", os.path.basename(host_path))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(host_path, dest)
        return dest

    def install_unit(self, name, text):
        """Install /etc/systemd/system/NAME and daemon-reload if running."""
        self.install(f"/etc/systemd/system/{name}", text)
        if self.pid:
            self.systemctl("daemon-reload")

    def _configure(self):
        """Masks, empty targets and the box's own target, in the /etc layer."""
        wants = set()
        for base in ("/lib/systemd/system", "/usr/local/lib/systemd/system", "/etc/systemd/system"):
            for d in glob.glob(base + "/*.wants") + glob.glob(base + "/*.requires"):
                wants.update(os.listdir(d))
        keep = KEEP | ({"dbus.socket", "dbus.service"} if self.dbus else set())
        masks = (wants | set(EXTRA_MASKS)) - keep - set(EMPTY_TARGETS)
        for name in sorted(masks):
            self._link(f"/etc/systemd/system/{name}")
        for gen in glob.glob("/lib/systemd/system-generators/*") + \
                glob.glob("/usr/local/lib/systemd/system-generators/*"):
            self._link(f"/etc/systemd/system-generators/{os.path.basename(gen)}")
        for name in EMPTY_TARGETS:
            self.install(f"/etc/systemd/system/{name}", f"[Unit]\nDescription=sysbox empty {name}\n")
        units = " ".join(sorted(keep))
        self.install(f"/etc/systemd/system/{TARGET}",
                     f"[Unit]\nDescription=sysbox test target\nWants=sysinit.target {units}\n"
                     f"After=sysinit.target {units}\n")
        # Its own machine id: journalctl then reads only the box's journal
        # (never the host's persistent one, whose boot id would be the same).
        if not os.path.exists(self.upper + "/etc/machine-id"):
            self.install("/etc/machine-id", uuid.uuid4().hex + "\n", mode=0o444)
        # No core dumps from crashing services (the host's core_pattern is global).
        self.install("/etc/systemd/system.conf.d/sysbox.conf",
                     "[Manager]\nDefaultLimitCORE=0\nLogColor=no\n")

    def _link(self, path_inside):
        self._makedirs(os.path.dirname(path_inside))
        if not os.path.lexists(self.upper + path_inside):
            os.symlink("/dev/null", self.upper + path_inside)

    # -- life cycle ------------------------------------------------------------
    def start(self, timeout=30):
        if self.pid:
            raise RuntimeError("SysBox already started")
        reason = skip_reason()
        if reason:
            raise SysBoxError(reason)
        t0 = time.monotonic()
        self._configure()
        # /dev/console is a pty (systemd logs there only if it is a tty), drained by a thread.
        master, self._console_slave, pty_path = _open_pty()
        self._console = threading.Thread(target=_drain, args=(master, self.console_log), daemon=True)
        self._console.start()
        open(os.path.join(self.workdir, "console"), "w").close()  # mount point
        cgroot = _cgroup2_root()
        with open("/proc/self/cgroup") as f:
            mine = [l.split(":", 2)[2].strip() for l in f if l.startswith("0::")][0]
        self._cgroup = os.path.join(cgroot + mine, "sysbox-" + os.path.basename(self.workdir))
        os.makedirs(self._cgroup, exist_ok=True)
        with open(self.setup_log, "w") as log:
            self._unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--mount-proc",
                 "--propagation", "private", "--uts", "--ipc", "--cgroup",
                 "/bin/sh", "-c", SETUP_SH, "sysbox-setup", self.workdir,
                 "1" if self.shared_root else "0", pty_path, *self.systemd_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                start_new_session=True,
                preexec_fn=lambda: _join_cgroup(os.path.join(self._cgroup, "cgroup.procs")))
        # Lifeline: if this Python process dies without stop(), the reaper reads
        # EOF and kills the box's PID 1 (PR_SET_PDEATHSIG, hence unshare's
        # --kill-child, is not honoured on every kernel, e.g. not on this CI's).
        self._reaper = subprocess.Popen(
            ["sh", "-c", REAPER_SH, "sysbox-reaper", str(self._unshare.pid), self._cgroup],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=ENV, start_new_session=True)
        try:
            def systemd_pid():
                self._check_alive()
                for kid in _children(self._unshare.pid):
                    with open(f"/proc/{kid}/comm") as f:
                        if f.read().strip() == "systemd":
                            return kid
            self.pid = wait_for(systemd_pid, timeout, what="the box's systemd to exec")

            def manager_up():
                self._check_alive()
                state = self.systemctl("is-system-running", check=False).stdout.strip()
                return state if state in ("running", "degraded") else None
            self.boot_state = wait_for(manager_up, max(1.0, timeout - (time.monotonic() - t0)),
                                       what="systemctl is-system-running")
            self.boot_seconds = time.monotonic() - t0
        except BaseException as exc:
            logs = self.logs()
            self.stop()
            if isinstance(exc, Exception):
                raise SysBoxError(f"SysBox failed to boot: {exc}\n{logs}") from exc
            raise
        return self

    def wait_for(self, predicate, timeout=30.0, interval=0.1, what=None):
        """Module wait_for(), but stops at once (SysBoxError) if the box dies."""
        def alive_and():
            self._check_alive()
            return predicate()
        return wait_for(alive_and, timeout, interval,
                        what or getattr(predicate, "__name__", predicate))

    def _check_alive(self):
        if self._unshare is None:
            raise SysBoxError("SysBox is not running")
        if self._unshare.poll() is not None:
            raise SysBoxError(f"the box exited with status {self._unshare.returncode}")

    def logs(self, tail=20000):
        """The end of the setup script's output and of the box's console."""
        out = []
        for path in (self.setup_log, self.console_log):
            try:
                with open(path, errors="replace") as f:
                    out.append(f"--- {os.path.basename(path)} ---\n{f.read()[-tail:]}")
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        """kill -9 the box's systemd (the kernel then kills every process in its
        PID namespace and the mount namespace with all its mounts goes away),
        remove its cgroup and, unless kept, its work dir.  Idempotent."""
        if self._reaper is not None:
            self._reaper.kill()  # we do its job now
            self._reaper.wait()
            self._reaper.stdin.close()
            self._reaper = None
        if self._unshare is not None:
            if self._unshare.poll() is None:
                for pid1 in _children(self._unshare.pid):  # systemd, or the setup script
                    os.kill(pid1, signal.SIGKILL)
            try:
                self._unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(timeout=10)
            self._unshare = None
        self.pid = None
        if self._console:
            os.close(self._console_slave)  # last slave end: the drain thread sees EIO
            self._console.join(timeout=5)
            self._console = None
        if self._cgroup:
            wait_for(self._remove_cgroup, 10, interval=0.05, what=f"removal of {self._cgroup}")
            self._cgroup = None
        if self._own_workdir and not self.keep and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir)

    def _remove_cgroup(self):
        if not os.path.isdir(self._cgroup):
            return True
        for root, dirs, _ in os.walk(self._cgroup, topdown=False):
            for d in dirs:
                try:
                    os.rmdir(os.path.join(root, d))
                except OSError:
                    return False  # still busy: processes are being reaped
        try:
            os.rmdir(self._cgroup)
        except OSError:
            return False
        return True

    def __enter__(self):
        if not self.pid:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- talking to the box ------------------------------------------------------
    def run(self, *argv, check=True, input=None, timeout=60):
        """Run argv inside the box's namespaces (as root, outside any unit).
        Returns a text CompletedProcess; check=True raises CommandFailed."""
        r = subprocess.run(self._nsenter(*argv), input=input, capture_output=True, text=True,
                           env=ENV, timeout=timeout)
        if check and r.returncode != 0:
            raise CommandFailed(r.returncode, list(argv), r.stdout, r.stderr)
        return r

    def _nsenter(self, *argv):
        if not self.pid:
            raise SysBoxError("SysBox is not running")
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-C", "--", *argv]

    def systemctl(self, *args, check=True):
        return self.run("systemctl", "--no-pager", *args, check=check)

    def journalctl(self, *args):
        """journalctl's stdout (after syncing the journal, so that what was just
        logged is there)."""
        self.run("journalctl", "--sync", check=False)
        return self.run("journalctl", "--no-pager", *args).stdout

    def journal_entries(self, *args):
        """Journal entries (dicts) of `journalctl -o json ARGS`."""
        out = self.journalctl("-o", "json", *args)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def show(self, unit, *props):
        """{prop: value} from systemctl show."""
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
