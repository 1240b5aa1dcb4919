"""Dry run: observe and say what would be released; release nothing."""

import pytest

from conftest import MSG, VIEW_ONLY_TOKEN, num, phone, pid

ACCOUNT = [phone(1), phone(2, provider="custom"), phone(3, status="reserved"), phone(4, status="released"),
           phone(5)]
DECLARED = [{"number": num(1)}, {"id": pid(2)}, {"number": num(3)}, {"id": pid(4)}]


@pytest.mark.parametrize("how", ["flag", "config"])
def test_dry_run_releases_nothing(make_rig, how):
    rig = make_rig(ACCOUNT)
    if how == "flag":
        rig.write_config(DECLARED)
        run = rig.run("--dry-run")
    else:
        rig.write_config(DECLARED, safety={"dry_run": True})
        run = rig.run()
    assert run.rc == 0, run
    assert rig.deletes() == [], "a dry run sent a DELETE"
    assert all(e["method"] == "GET" for e in rig.fake.log)
    # One "would release" line per assigned phone, with the dry-run MESSAGE_ID.
    ev = run.events(MSG["dry_run"])
    assert sorted(e["PHONE_ID"] for e in ev) == [pid(1), pid(2)], run
    for e in ev:
        assert "would release" in e["line"] and e["OUTCOME"] == "dry_run"
    assert [e["PHONE_NUMBER"] for e in ev if e["PHONE_ID"] == pid(1)] == [num(1)]
    rows = rig.list()
    assert rows[num(1)]["state"] == "pending" and rows[pid(2)]["state"] == "pending"
    assert rows[num(1)]["attempts"] == 0 and rows[pid(2)]["attempts"] == 0
    assert not run.events(OUTCOME="released", PHONE_ID=pid(2))
    assert not run.events(MSG["scheduled"])
    assert all(p["scheduled_release_at"] is None for p in rig.fake.phones.values())
    assert rig.fake.phone(pid(2))["status"] == "assigned"

    # A real run afterwards releases them.
    rig.write_config(DECLARED)
    run = rig.run()
    assert run.rc == 0, run
    rows = rig.list()
    assert rows[num(1)]["state"] == "scheduled" and rows[pid(2)]["state"] == "released"
    assert sorted(e["phone_id"] for e in rig.deletes()) == [pid(1), pid(2)]
    rig.assert_exactly_once(one_delete=True)


def test_dry_run_needs_only_the_view_permission(make_rig):
    """A key with phones.view only is enough to see what would be released."""
    rig = make_rig(ACCOUNT)
    rig.set_token(VIEW_ONLY_TOKEN)
    rig.write_config(DECLARED, safety={"dry_run": True})
    run = rig.run()
    assert run.rc == 0, run
    assert not run.events(MSG["auth_paused"])
    assert rig.deletes() == []
    assert sorted(e["PHONE_ID"] for e in run.events(MSG["dry_run"])) == [pid(1), pid(2)]
