"""retirectl's side of the control socket (issue 30): it sends a request
again only when the daemon refused it unread ("busy"), never after it may
have been read, and each way the socket can fail reads as one clear line with
its own exit code: 3, not delivered (it did nothing: run it again); 4, sent
but not answered (it may have been carried out: look before sending again);
1, refused by the daemon.  The daemon here is a small stand-in on the socket,
so that each failure is made on purpose."""

import socket
import subprocess
import threading

import pytest

from conftest import RETIRECTL, child_env

BUSY = b"error busy the socket had too many clients; the request was not read, send it again\n"


class StandIn:
    """Answers each connection with the next of `script`: bytes to send after
    reading the request line (None: close at once, before reading)."""

    def __init__(self, path, script):
        self.path, self.script, self.requests = path, list(script), []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.sock.settimeout(0.05)     # so that close() ends the thread at once
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.script and not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            answer = self.script.pop(0)
            with conn:
                if answer is None:
                    continue
                conn.settimeout(5)
                line = b""
                while not line.endswith(b"\n"):
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    line += chunk
                self.requests.append(line)
                conn.sendall(answer)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def standin(tmp_path):
    made = []

    def make(script):
        conf = tmp_path / "retired.conf"
        sock = str(tmp_path / "control")
        conf.write_text('control_socket = "%s";\nledger = "%s";\nreleases = ();\n' % (sock, tmp_path / "ledger.db"))
        s = StandIn(sock, script)
        s.conf = str(conf)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def ctl(s, *args):
    return subprocess.run([RETIRECTL, "-c", s.conf] + list(args), capture_output=True, text=True,
                          env=child_env(), timeout=60, stdin=subprocess.DEVNULL)


def test_a_request_refused_unread_is_sent_again_until_answered(standin):
    s = standin([BUSY, BUSY, b"ok paused\n"])
    p = ctl(s, "pause", "OPS-1")
    assert p.returncode == 0 and p.stdout == "paused\n", p
    assert s.requests == [b"pause OPS-1\n"] * 3


def test_a_socket_that_stays_busy_is_not_delivered(standin):
    s = standin([BUSY] * 20)
    p = ctl(s, "approve", "abcdef012345")
    assert p.returncode == 3, p
    assert "stayed busy (10 tries)" in p.stderr and "was not delivered and did nothing; run it again" in p.stderr
    assert p.stderr.count("\n") == 1 and "Broken pipe" not in p.stderr
    assert len(s.requests) == 10          # bounded: not one more


@pytest.mark.parametrize("answer", [b"ok paus", b""], ids=["cut_short", "closed_after_reading"])
def test_a_request_that_may_have_been_read_is_never_sent_again(standin, answer):
    s = standin([answer, b"ok approved\n"])
    p = ctl(s, "approve", "abcdef012345")
    assert p.returncode == 4, p
    assert "'approve' may have been carried out; look with 'retirectl status'" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and "Broken pipe" not in p.stderr
    assert s.requests == [b"approve abcdef012345\n"]     # once, whatever came back


def test_the_daemons_refusal_is_its_own_words(standin):
    s = standin([b"error refused: only root and the daemon's own user may use this socket\n"])
    p = ctl(s, "resume")
    assert p.returncode == 1, p
    assert p.stderr == "retirectl: refused: only root and the daemon's own user may use this socket\n"


def test_status_says_when_the_daemon_did_not_answer(standin):
    s = standin([b"ok pa"])
    p = ctl(s, "status")
    assert p.returncode == 0, p
    assert "daemon      did not answer" in p.stdout, p.stdout
    assert "Broken pipe" not in p.stderr


def test_a_daemon_gone_before_reading_does_not_kill_retirectl(standin):
    """The stand-in closes before reading: retirectl's write meets a closed
    socket; it reports, it does not die of SIGPIPE."""
    s = standin([None, None])
    p = ctl(s, "retry", "+34910000001")
    assert p.returncode in (3, 4), p
    assert p.returncode != -13 and "Broken pipe" not in p.stderr
    assert p.stderr.startswith("retirectl: ") and p.stderr.count("\n") == 1, p.stderr
