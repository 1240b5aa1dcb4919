"""Listing the account: paging, and a page that fails for a while."""

from conftest import MSG, num, phone, pid


def test_list_page_503_is_retried(make_rig):
    rig = make_rig([phone(n) for n in range(1, 4)])
    rig.fake.script("list", "GET", [503])
    rig.write_config([{"number": num(n)} for n in range(1, 4)])
    run = rig.run()
    assert run.rc == 0, run
    lists = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] is None]
    assert [e["status"] for e in lists] == [503, 200]
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    assert len(rig.deletes()) == 3
    assert not run.events(MSG["failed"])


def test_list_failing_for_a_whole_pass_is_retried_later(make_rig):
    """max_attempts pages fail: the pass gives up on the listing, the phones wait
    (retrying), and a later pass lists again and releases them."""
    rig = make_rig([phone(n) for n in range(1, 4)])
    rig.fake.script("list", "GET", [503, 502, 500])
    rig.write_config([{"number": num(n)} for n in range(1, 4)], retry={"max_attempts": 3})
    run = rig.run()
    assert run.rc == 0, run
    lists = [e["status"] for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] is None]
    assert lists[:3] == [503, 502, 500] and lists[-1] == 200
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    assert len(rig.deletes()) == 3
    rig.assert_exactly_once(one_delete=True)


def test_paging_through_a_larger_account(make_rig):
    """250 phones: three pages of 100; numbers on every page are found."""
    phones = [phone(n) for n in range(1, 251)]
    rig = make_rig(phones)
    picks = [3, 120, 249]
    rig.write_config([{"number": num(n)} for n in picks] + [{"number": num(999)}])
    run = rig.run()
    assert run.rc == 0, run
    lists = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] is None]
    assert len(lists) == 3 and all(e["status"] == 200 for e in lists)
    assert lists[1]["query"].startswith("limit=100&after=")
    rows = rig.list()
    assert all(rows[num(n)]["state"] == "scheduled" and rows[num(n)]["id"] == pid(n) for n in picks)
    assert rows[num(999)]["state"] == "unresolved"
    assert "250 phones" in run.outcome("unresolved", number=num(999))["line"]
