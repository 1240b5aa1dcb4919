"""The API key never leaks: not to stderr (the journal), the ledger, argv or the
environment; it only travels in the Authorization header."""

import glob
import secrets
import subprocess

from conftest import EXIT, num, phone, pid, wait_for


def ledger_bytes(rig):
    """Every file of the ledger (db, -wal, -shm, lock) as bytes."""
    out = {}
    for path in glob.glob(rig.ledger + "*"):
        with open(path, "rb") as f:
            out[path] = f.read()
    return out


def assert_absent(token, rig, stderr_text):
    assert token not in stderr_text
    files = ledger_bytes(rig)
    assert rig.ledger in files
    for path, data in files.items():
        assert token.encode() not in data, "the key is in %s" % path


def test_key_never_leaks(make_rig):
    token = "sk-live-" + secrets.token_hex(20)
    rig = make_rig([phone(1), phone(2, provider="custom"), phone(3, status="reserved"), phone(4)], token=token)
    rig.set_token(token)
    # phone 4 fails with a 409: the API's error text goes to the ledger and stderr too.
    rig.fake.script(pid(4), "DELETE", [409])
    rig.write_config([{"number": num(1)}, {"id": pid(2)}, {"number": num(3)}, {"number": num(4)}])
    proc = rig.start()

    def settled():
        rows = rig.db_rows()
        return len(rows) == 4 and all(r["state"] in ("scheduled", "released", "deferred", "failed")
                                      for r in rows.values())
    wait_for(settled, what="the phones to settle")

    # While it runs: not in argv, not in the environment, not in the ledger (WAL included).
    ps = subprocess.run(["ps", "-eo", "pid,args"], stdout=subprocess.PIPE, text=True, check=True).stdout
    assert str(proc.pid) in ps and token not in ps
    with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
        assert token.encode() not in f.read()
    with open("/proc/%d/environ" % proc.pid, "rb") as f:
        assert token.encode() not in f.read()
    assert any(p.endswith("-wal") for p in ledger_bytes(rig)), "expected a WAL file while the daemon runs"
    with open(proc.stderr_path) as f:
        assert_absent(token, rig, f.read())

    proc.terminate()
    assert proc.wait(10) == 0
    with open(proc.stderr_path) as f:
        err = f.read()
    assert_absent(token, rig, err)
    assert "409" in rig.list()[num(4)]["last_error"]
    # retirectl's views do not show it either.
    for args in (["list", "--json"], ["status", "--json"], ["show", num(4), "--json"]):
        assert token not in rig.ctl(*args).stdout

    # And it did reach the API, in the header.
    assert rig.fake.log and all(e["authorization_header_present"] and e["auth_ok"] for e in rig.fake.log)
    assert all(token not in e["path"] + e["query"] for e in rig.fake.log)


def test_refused_key_never_leaks(make_rig):
    token = "sk-wrong-" + secrets.token_hex(20)
    rig = make_rig([phone(1)])
    rig.set_token(token)
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert_absent(token, rig, run.stderr)
    assert [e["authorization_header_present"] for e in rig.fake.log] == [True]
