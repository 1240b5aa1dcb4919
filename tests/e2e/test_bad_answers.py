"""Answers the daemon cannot trust are never acted upon: malformed bodies are
retried, unknown statuses are not released, a phone changing state is followed."""

import json

import pytest

from conftest import EXIT, MSG, num, phone, pid


def body_of(fake, n, **changes):
    p = dict(fake.phone(pid(n)), **changes)
    return json.dumps(p)


@pytest.mark.parametrize("answer", [
    {"status": 200, "body": "{\"trunc"},
    {"status": 200, "body": "<html>maintenance</html>", "content_type": "text/html"},
    {"status": 200, "body": "{\"id\": 12}"},
    {"status": 200, "body": "[]"},
])
def test_malformed_phone_is_retried(make_rig, answer):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "GET", [answer])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    gets = [e for e in rig.fake.log if e["method"] == "GET"]
    assert len(gets) == 2 and gets[0]["scripted"] == answer
    d = rig.deletes(pid(1))
    assert len(d) == 1 and d[0]["t"] > gets[1]["t"], "released on the strength of a malformed answer"
    assert rig.list()[pid(1)]["state"] == "scheduled"


@pytest.mark.parametrize("page", [
    {"status": 200, "body": "{\"data\": [], \"has_more\""},
    {"status": 200, "body": "{\"data\": \"nope\", \"has_more\": false}"},
    {"status": 200, "body": "{\"has_more\": false}"},
    {"status": 502, "body": "<html>bad gateway</html>", "content_type": "text/html"},
])
def test_malformed_list_page_is_retried(make_rig, page):
    rig = make_rig([phone(n) for n in range(1, 4)])
    rig.fake.script("list", "GET", [page])
    rig.write_config([{"number": num(n)} for n in range(1, 4)])
    run = rig.run()
    assert run.rc == 0, run
    lists = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] is None]
    assert len(lists) == 2 and lists[0]["scripted"] == page
    assert all(e["t"] > lists[1]["t"] for e in rig.deletes())
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    # An empty (malformed) page did not make the numbers "unresolved".
    assert not run.events(MSG["unresolved"])


def test_unknown_status_is_not_released(make_rig):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "GET", [{"status": 200, "body": body_of(rig.fake, 1, status="porting_out")}])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.deletes() == []
    row = rig.list()[pid(1)]
    assert row["state"] == "deferred" and row["last_error"]
    assert run.outcome("deferred", phone_id=pid(1))


def test_answer_about_another_phone_is_not_acted_upon(make_rig):
    rig = make_rig([phone(1), phone(2)])
    rig.fake.script(pid(1), "GET", [{"status": 200, "body": body_of(rig.fake, 2)}])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert [e["phone_id"] for e in rig.deletes()] == [pid(1)]
    assert rig.fake.phone(pid(2))["scheduled_release_at"] is None
    assert rig.list()[pid(1)]["state"] == "scheduled"


def test_unknown_fields_are_ignored(make_rig):
    rig = make_rig([phone(1, x_new_field={"nested": [1, 2]}, labels=["a"])])
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[num(1)]["state"] == "scheduled"


def test_deferred_phone_released_once_it_is_assigned(make_rig):
    rig = make_rig([phone(1, status="reserved"), phone(2, status="pending_verification")])
    rig.write_config([{"number": num(1)}, {"id": pid(2)}])
    assert rig.run().rc == 0
    assert {r["state"] for r in rig.list().values()} == {"deferred"}
    assert rig.deletes() == []
    rig.fake.add_phones([phone(1), phone(2, provider="custom")])
    run = rig.run()
    assert run.rc == 0, run
    rows = rig.list()
    assert rows[num(1)]["state"] == "scheduled" and rows[pid(2)]["state"] == "released"
    rig.assert_exactly_once(one_delete=True)


def test_unresolved_number_released_once_it_appears(make_rig):
    rig = make_rig([phone(1)])
    rig.write_config([{"number": num(5)}])
    assert rig.run().rc == EXIT["operator"]
    assert rig.list()[num(5)]["state"] == "unresolved"
    rig.fake.add_phones([phone(5)])
    run = rig.run()
    assert run.rc == 0, run
    row = rig.list()[num(5)]
    assert row["state"] == "scheduled" and row["id"] == pid(5)
    assert [e["phone_id"] for e in rig.deletes()] == [pid(5)]
