"""Start-up refusals: exit 1 with a message an operator can act on, nothing sent."""

import os

import pytest

from conftest import EXIT, MSG, num, phone, pid


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_readable_by_others_is_refused(make_rig, mode):
    rig = make_rig([phone(1)])
    rig.set_token("test-token", mode=mode)
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    ev = [e for e in run.events(MSG["config_rejected"]) if rig.token_file in e["line"]]
    assert ev, "no message naming %s:\n%s" % (rig.token_file, run.stderr)
    assert "0600" in ev[0]["line"]
    assert rig.fake.log == [], "calls were made with a key others can read"
    assert "test-token" not in run.stderr


def test_empty_token_file_is_refused(make_rig):
    rig = make_rig([phone(1)])
    with open(rig.token_file, "w") as f:
        f.write("\n")
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert any(rig.token_file in line and "empty" in line for line in run.lines), run
    assert rig.fake.log == []


def test_missing_token_file_is_refused(make_rig):
    rig = make_rig([phone(1)])
    os.unlink(rig.token_file)
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert any(rig.token_file in line for line in run.lines), run
    assert rig.fake.log == []


def test_invalid_declaration_is_refused_with_file_and_line(make_rig):
    rig = make_rig([phone(1)])
    path = rig.write_config([{"number": num(1)}, {"id": "not-a-uuid"}])
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert any(path + ":" in line and "not-a-uuid" in line for line in run.lines), run
    assert rig.fake.log == []
    assert not os.path.exists(rig.ledger) or rig.list() == {}


def test_a_broken_declaration_keeps_the_record_readable(make_rig):
    """The ledger's views need only the settings: a declaration gone bad after a
    run leaves status and list working, while check, plan and reload refuse it
    with FILE:LINE."""
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(1)}])
    assert rig.run().rc == EXIT["settled"]
    path = rig.write_config([{"number": num(1)}, {"id": "not-a-uuid"}])
    assert "released" in rig.ctl("status").stdout or "scheduled" in rig.ctl("status").stdout
    assert set(rig.list()) == {num(1)}
    for verb in ("check", "plan", "reload"):
        p = rig.ctl(verb, check=False)
        assert p.returncode != 0 and path + ":" in p.stderr and "not-a-uuid" in p.stderr, (verb, p.stderr)


def test_plain_http_to_a_remote_host_is_refused(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(1)}], api={"base_url": "http://api.diga.io"})
    run = rig.run()
    assert run.rc == EXIT["setup"], run
    assert any("https://" in line for line in run.lines), run


def test_an_escaped_nul_in_a_number_is_refused_and_nothing_released(make_rig):
    """libconfig reads "+3491000\\x000012" as +34910000012, a phone of the
    account: the NUL is refused with FILE:LINE by the check, by retired -n and
    by a run, and neither that phone nor the ledger is touched."""
    rig = make_rig([phone(1), phone(12)])
    rig.write_config([{"number": num(1)}])
    assert rig.run().rc == EXIT["settled"]
    rows, history = rig.db_rows(), rig.db_history(num(1))
    path = rig.write_config([{"number": num(1)}, {"number": "NUMBER"}])
    with open(path) as f:
        text = f.read().replace('"NUMBER"', '"+3491000\\x000012"')
    with open(path, "w") as f:
        f.write(text)
    line = next(i for i, l in enumerate(text.split("\n"), 1) if "\\x00" in l)
    want = "%s:%d: \\x00 in a string: no setting may hold a NUL" % (path, line)

    p = rig.ctl("check", check=False)
    assert p.returncode == 1 and want in p.stderr, p.stderr
    for args in (("-n",), ("--once",)):
        run = rig.run(*args, once=False)
        assert run.rc == EXIT["setup"] and any(want in l for l in run.lines), (args, run)
    assert rig.deletes(pid(12)) == [] and rig.fake.requests(pid(12)) == []
    assert rig.db_rows() == rows and rig.db_history(num(1)) == history
