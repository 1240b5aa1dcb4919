"""TLS: the fake served over HTTPS with a certificate from a throwaway CA made
with the openssl CLI.  The daemon verifies the server against the system store,
or against api.ca_file when given; nothing in the config turns verification off.
A phone the daemon could not reach over a trusted connection is never released,
and never lost: it ends retrying, then failed, with the certificate error."""

import os
import re
import shutil
import ssl
import subprocess
import threading

import pytest

from conftest import EXIT, MSG, Rig, num, phone, pid, wait_for

import fake_diga

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
CA_CNF = """[ca]
default_ca = d
[d]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
x509_extensions = ext
[p]
commonName = supplied
[ext]
subjectAltName = IP:127.0.0.1
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
"""


class Pki:
    """A CA, a server certificate for 127.0.0.1 (SAN IP:127.0.0.1) and its key;
    more certificates on demand (another CA, wrong name, expired)."""

    def __init__(self, folder):
        self.dir = str(folder)
        os.makedirs(self.dir, exist_ok=True)
        self.ca, self.ca_key = self.make_ca("ca", "retired test CA")
        self.cert, self.key = self.make_server("server", self.ca, self.ca_key, "IP:127.0.0.1")

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        p = subprocess.run(["openssl"] + list(args), cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        assert p.returncode == 0, "openssl %s:\n%s" % (" ".join(args), p.stderr)

    def make_ca(self, name, cn):
        self.openssl("req", "-x509", *EC, "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
                     "-subj", "/CN=" + cn)
        return self.path(name + ".pem"), self.path(name + ".key")

    def make_server(self, name, ca, ca_key, san):
        self.openssl("req", *EC, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=retired-test-server")
        with open(self.path(name + ".ext"), "w") as f:
            f.write("subjectAltName = %s\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n" % san)
        self.openssl("x509", "-req", "-in", name + ".csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                     "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
        return self.path(name + ".pem"), self.path(name + ".key")

    def make_expired(self, name):
        """Signed by the CA, valid for one day in 2020 (`openssl ca` sets the dates)."""
        self.openssl("req", *EC, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=retired-test-server")
        with open(self.path("ca.cnf"), "w") as f:
            f.write(CA_CNF)
        open(self.path("index.txt"), "w").close()
        with open(self.path("serial"), "w") as f:
            f.write("1000\n")
        self.openssl("ca", "-batch", "-config", "ca.cnf", "-cert", self.ca, "-keyfile", self.ca_key,
                     "-in", name + ".csr", "-out", name + ".pem", "-notext",
                     "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
        return self.path(name + ".pem"), self.path(name + ".key")


class TlsFakeDiga(fake_diga.FakeDiga):
    """The fake, its listening socket wrapped in TLS before it serves (FakeDiga.start
    with one more step; the fake itself is not changed)."""

    def __init__(self, phones, cert, key, **knobs):
        super().__init__(phones, **knobs)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.handshake_errors = []

    def start(self):
        srv = fake_diga._Server((self.host, self.port), fake_diga._Handler)
        srv.fake = self
        srv.socket = self.tls.wrap_socket(srv.socket, server_side=True)
        # A client that refuses the certificate fails the handshake inside accept():
        # socketserver drops that connection; keep the reason for the test to see.
        errors, accept = self.handshake_errors, srv.get_request

        def get_request():
            try:
                return accept()
            except ssl.SSLError as e:
                errors.append(str(e))
                raise
        srv.get_request = get_request
        self._server, self.port = srv, srv.server_address[1]
        self.url = "https://%s:%d" % (self.host, self.port)
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-diga-tls", daemon=True)
        self._thread.start()
        return self.url


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_rig(tmp_path, pki):
    """tls_rig(phones, cert=None, key=None) -> a Rig whose fake speaks HTTPS."""
    made = []

    def make(phones, cert=None, key=None, **knobs):
        fake = TlsFakeDiga(phones, cert or pki.cert, key or pki.key, **knobs)
        fake.start()
        rig = Rig(tmp_path / ("rig%d" % len(made)), fake)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop_all()
        rig.fake.stop()


PHONES = [phone(1), phone(2, provider="custom")]
DECL = [{"id": pid(1)}, {"number": num(2)}]


def assert_refused(rig, run, error, server_sees_it=True):
    """Every call failed on the certificate: nothing released, the fake never saw
    a request.  The listing (one phone is declared by number) got no HTTP
    answer, so no GET by id is tried either (issue 12: an unreachable API is
    one warning, not an attempt charged to each phone): both phones stay
    pending with no attempt, the warning names the error, and --once gives
    up (exit 1) saying why."""
    assert run.rc == 1, run
    assert rig.fake.log == [], "a request got through: %s" % rig.fake.log
    assert rig.fake.release_counts == {}
    rows = rig.list()
    for key in (pid(1), num(2)):
        assert rows[key]["state"] == "pending" and rows[key]["attempts"] == 0, rows[key]
    assert not run.events(MSG["failed"]) and not run.events(MSG["retrying"]), run
    warned = [l for l in run.lines if "could not be listed" in l]
    assert warned and all(re.search(error, l) and "the API cannot be reached; 2 phones wait" in l
                          for l in warned), run
    stop = [l for l in run.lines if l.startswith("retired: Stopping:")]
    assert len(stop) == 1 and re.search(error, stop[0]), run
    # (A name mismatch is found by the client after the handshake, which the
    # server saw succeed; it then closes the connection without a request.)
    if server_sees_it:
        assert rig.fake.handshake_errors, "the server saw no refused handshake"


def test_without_ca_file_the_self_signed_server_is_refused(tls_rig):
    rig = tls_rig(PHONES)
    rig.write_config(DECL)
    run = rig.run()
    assert_refused(rig, run, r"SSL certificate problem: (unable to get local issuer certificate|self.signed)")


def test_with_ca_file_it_works(tls_rig, pki):
    rig = tls_rig(PHONES)
    rig.write_config(DECL, api={"ca_file": pki.ca})
    run = rig.run()
    assert run.rc == 0, run
    rows = rig.list()
    assert rows[pid(1)]["state"] == "scheduled" and rows[num(2)]["state"] == "released", run
    rig.assert_exactly_once(one_delete=True)
    assert rig.fake.handshake_errors == []
    assert not run.events(MSG["retrying"])


def test_ca_file_of_another_ca_is_refused(tls_rig, pki):
    other, _ = pki.make_ca("other-ca", "some other CA")
    rig = tls_rig(PHONES)
    rig.write_config(DECL, api={"ca_file": other})
    run = rig.run()
    assert_refused(rig, run, r"SSL certificate problem")


def test_certificate_for_another_name_is_refused(tls_rig, pki):
    """Trusted CA, but the certificate names other.example, not 127.0.0.1."""
    cert, key = pki.make_server("wrong-name", pki.ca, pki.ca_key, "DNS:other.example")
    rig = tls_rig(PHONES, cert=cert, key=key)
    rig.write_config(DECL, api={"ca_file": pki.ca})
    run = rig.run()
    assert_refused(rig, run, r"(does not match|no alternative certificate subject name matches|"
                             r"certificate subject name .* does not match)", server_sees_it=False)


def test_localhost_against_an_ip_only_certificate_is_refused(tls_rig, pki):
    """The certificate is for IP:127.0.0.1; the same server reached as
    https://localhost does not match it."""
    rig = tls_rig(PHONES)
    rig.write_config(DECL, api={"ca_file": pki.ca, "base_url": "https://localhost:%d" % rig.fake.port})
    run = rig.run()
    assert_refused(rig, run, r"localhost", server_sees_it=False)


def test_expired_certificate_is_refused(tls_rig, pki):
    cert, key = pki.make_expired("expired")
    rig = tls_rig(PHONES, cert=cert, key=key)
    rig.write_config(DECL, api={"ca_file": pki.ca})
    run = rig.run()
    assert_refused(rig, run, r"expired")


def test_refused_then_trusted_releases_once(tls_rig, pki):
    """Refused for want of the CA (nothing is sent, no phone charged an
    attempt); the operator adds api.ca_file and starts the daemon: each is
    released exactly once, with no retry asked."""
    rig = tls_rig(PHONES)
    rig.write_config(DECL, retry={"max_attempts": 2})
    assert_refused(rig, rig.run(), r"SSL certificate problem")
    rig.write_config(DECL, api={"ca_file": pki.ca})
    proc = rig.start()
    try:
        wait_for(lambda: {r["state"] for r in rig.db_rows().values()} == {"scheduled", "released"},
                 what="the phones to be released over TLS")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    rig.assert_exactly_once(one_delete=True)


@pytest.mark.parametrize("setting", ["insecure = true", "verify = false", "verify_peer = false",
                                     "ssl_verify = false", "tls_verify = false", "ca_file = \"\"; insecure = 1"])
def test_verification_cannot_be_turned_off(tls_rig, setting):
    """There is no key for it: an attempt is an unknown setting, rejected with
    FILE:LINE, and nothing is sent."""
    rig = tls_rig(PHONES)
    path = rig.write_config(DECL)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("api: {\n", "api: {\n  %s;\n" % setting, 1))
    line = 2    # the line after "api: {"
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    name = setting.split(";")[-1].split("=")[0].strip()
    ev = [e for e in run.events(MSG["config_rejected"]) if "%s:%d:" % (path, line) in e["line"]]
    assert ev and "unknown setting 'api.%s'" % name in ev[0]["line"], run
    assert rig.fake.log == [] and rig.fake.handshake_errors == []
    assert not os.path.exists(rig.ledger)


def test_plain_http_to_the_tls_port_does_not_release(tls_rig):
    """http:// (allowed on loopback) against the HTTPS server: no answer the daemon
    can use, nothing released."""
    rig = tls_rig(PHONES)
    rig.write_config(DECL, api={"base_url": "http://127.0.0.1:%d" % rig.fake.port, "timeout": 1.0})
    run = rig.run()
    # No HTTP answer to the listing: neither phone gets a verdict (exit 1).
    assert run.rc == 1, run
    assert rig.fake.log == [] and rig.fake.release_counts == {}
    rows = rig.list()
    assert rows[pid(1)]["state"] == "pending" and rows[num(2)]["state"] == "pending", rows
    assert rows[pid(1)]["attempts"] == 0, rows



def test_missing_ca_file_is_refused_at_start(tls_rig):
    rig = tls_rig(PHONES)
    # A short path: the message shows at most 80 characters of the value, and
    # pytest's tmp_path is longer under xdist (make coverage) or a deep basetemp.
    missing = os.path.join(rig.run_dir, "no-such-ca.pem")
    path = rig.write_config(DECL, api={"ca_file": missing})
    run = rig.run()
    if rig.fake.release_counts or rig.fake.log:
        pytest.fail("a request went out with no usable CA: %s" % rig.fake.log)
    assert run.rc == EXIT["setup"], run
    assert [l for l in run.lines if path + ":" in l and missing in l], run
    # Refused before the ledger is even opened: no phone was marked failed.
    rows = rig.db_rows() if os.path.exists(rig.ledger) else {}
    assert not [r for r in rows.values() if r["state"] == "failed"], rows
