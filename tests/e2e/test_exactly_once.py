"""A declared phone is released once, however many times the daemon runs."""

from conftest import EXIT, num, phone, pid

ACCOUNT = [phone(n, provider="custom" if n % 2 else "netelip") for n in range(1, 13)] + \
          [phone(20, status="reserved"), phone(21, status="released")]
DECLARED = [{"number": num(n)} for n in range(1, 7)] + [{"id": pid(n)} for n in range(7, 13)] + \
           [{"number": num(20)}, {"id": pid(21)}, {"number": num(99)}]


def test_second_run_sends_no_delete(make_rig):
    rig = make_rig(ACCOUNT)
    rig.write_config(DECLARED)
    first = rig.run()
    assert first.rc == EXIT["operator"], first
    assert len(rig.deletes()) == 12
    after_first = {k: r["state"] for k, r in rig.list().items()}
    assert set(after_first.values()) == {"scheduled", "released", "deferred", "unresolved"}

    rig.fake.clear_log()
    second = rig.run()
    assert second.rc == EXIT["operator"], second    # num(99) is still not in the account
    assert rig.deletes() == [], "the second run sent DELETEs"
    assert {k: r["state"] for k, r in rig.list().items()} == after_first
    # The second run re-announces nothing: no outcome lines for phones already settled.
    assert not second.events(OUTCOME="released") and not second.events(OUTCOME="scheduled")
    rig.assert_exactly_once(one_delete=True)
    assert all(rig.fake.snapshot()["delete_counts"].get(pid(n)) == 1 for n in range(1, 13))


def test_scheduled_release_completes_without_a_second_delete(make_rig):
    """Once the billing period is over, a resync sees the netelip phone released."""
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"number": num(1)}, {"id": pid(2)}])
    assert rig.run().rc == 0
    assert {r["state"] for r in rig.list().values()} == {"scheduled"}
    rig.fake.advance(3600 + 60)
    assert rig.fake.phone(pid(1))["status"] == "released"
    rig.fake.clear_log()
    run = rig.run()
    assert run.rc == 0, run
    assert rig.deletes() == []
    assert {r["state"] for r in rig.list().values()} == {"released"}
    assert run.outcome("released", number=num(1))
    rig.assert_exactly_once(one_delete=True)
