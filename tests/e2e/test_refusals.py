"""A DELETE refused with an unexpected 4xx is never guessed at: the daemon looks
at the phone again (GET) before deciding."""

import json

import pytest

from conftest import EXIT, MSG, num, phone, pid

NOPE = {"status": 409, "body": json.dumps({"status": "error", "error_code": "X", "message": "nope"}),
        "content_type": "application/json"}


@pytest.mark.parametrize("by", ["number", "id"])
def test_409_on_assigned_phone_fails_with_the_api_message(make_rig, by):
    rig = make_rig([phone(1), phone(2)])
    rig.fake.script(pid(1), "DELETE", [NOPE])
    rig.write_config([{"number": num(1)}, {"number": num(2)}] if by == "number" else
                     [{"id": pid(1)}, {"id": pid(2)}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    key = num(1) if by == "number" else pid(1)
    row = rig.list()[key]
    assert row["state"] == "failed"
    assert "nope" in row["last_error"] and "409" in row["last_error"], row["last_error"]
    # One DELETE, then a GET of that phone, and no second DELETE.
    calls = [(e["method"], e["status"]) for e in rig.fake.log if e["phone_id"] == pid(1)]
    i = calls.index(("DELETE", 409))
    assert ("GET", 200) in calls[i + 1:]
    assert len(rig.deletes(pid(1))) == 1
    ev = run.outcome("failed", phone_id=pid(1))
    assert ev["MESSAGE_ID"] == MSG["failed"] and "nope" in ev["line"]
    hist = rig.show(key)["history"]
    assert any(e["method"] == "DELETE" and e["http_status"] == 409 for e in hist)
    assert hist[-1]["kind"] == "state" and hist[-1]["to"] == "failed"
    # The API's refusal did not stop the other phone.
    assert rig.list()[num(2) if by == "number" else pid(2)]["state"] == "scheduled"
    assert rig.fake.phone(pid(1))["scheduled_release_at"] is None
    rig.assert_exactly_once(one_delete=True)


def test_409_but_released_meanwhile_is_released(make_rig):
    """The refusal came, but the GET shows the phone released: released, no failure."""
    rig = make_rig([phone(1, provider="custom")])
    rig.fake.script(pid(1), "DELETE", [dict(NOPE, apply=True)])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[pid(1)]["state"] == "released"
    assert len(rig.deletes(pid(1))) == 1
    rig.assert_exactly_once(one_delete=True)


@pytest.mark.parametrize("status", [400, 422])
def test_other_4xx_then_still_assigned_fails(make_rig, status):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [status])
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    row = rig.list()[num(1)]
    assert row["state"] == "failed" and str(status) in row["last_error"]
    assert len(rig.deletes(pid(1))) == 1


@pytest.mark.parametrize("by", ["number", "id"])
def test_404_on_delete_is_released(make_rig, by):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [404])
    rig.write_config([{"number": num(1)}] if by == "number" else [{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    row = rig.list()[num(1) if by == "number" else pid(1)]
    assert row["state"] == "released"
    ev = run.outcome("released", phone_id=pid(1))
    assert ev["HTTP_STATUS"] == "404"
    assert len(rig.deletes(pid(1))) == 1
