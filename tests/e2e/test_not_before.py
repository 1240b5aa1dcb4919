"""not_before: a release waits for its time; --once counts the wait as settled."""

from conftest import num, phone, pid


def test_future_not_before_waits(make_rig):
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"number": num(1), "not_before": "2099-01-01T00:00:00Z"},
                      {"id": pid(2), "not_before": "2099-06-30T12:00:00Z"}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.deletes() == []
    rows = rig.list()
    assert rows[num(1)]["state"] == "pending" and rows[pid(2)]["state"] == "pending"
    assert rows[num(1)]["not_before"] == "2099-01-01T00:00:00Z"
    assert rows[pid(2)]["not_before"] == "2099-06-30T12:00:00Z"
    assert all(p["scheduled_release_at"] is None for p in rig.fake.phones.values())


def test_past_not_before_releases(make_rig):
    rig = make_rig([phone(1), phone(2, provider="custom"), phone(3)])
    rig.write_config([{"number": num(1), "not_before": "2020-01-01T00:00:00Z"},
                      {"id": pid(2), "not_before": "2024-02-29T23:59:59Z"},
                      {"number": num(3), "not_before": "2099-01-01T00:00:00Z"}])
    run = rig.run()
    assert run.rc == 0, run
    rows = rig.list()
    assert rows[num(1)]["state"] == "scheduled"
    assert rows[pid(2)]["state"] == "released"
    assert rows[num(3)]["state"] == "pending"
    assert sorted(e["phone_id"] for e in rig.deletes()) == [pid(1), pid(2)]
