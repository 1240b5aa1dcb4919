"""A DELETE answered with a success the daemon cannot record as it stands (a
204 for a provider it does not know) is looked at at once; one the look shows
still assigned (an API at work in the background) is looked at again at the
settle time and never sent again before.  The decisions are in
tests/reconcile/delete.txt and look.txt; these show the whole daemon."""

import json

from conftest import phone, pid, wait_for


def test_a_204_of_an_unknown_provider_done_in_the_background_is_not_sent_again(make_rig):
    """The 204 path of a provider the daemon does not know looked at once, and a
    look that found the phone assigned sent the DELETE again at once: now it waits
    for the settle time."""
    settle = 1.5
    rig = make_rig([phone(1, provider="custom")])
    # The daemon learns the provider from its first look: one it does not know.
    rig.fake.script(pid(1), "GET", [{"status": 200, "body": json.dumps(
        dict(rig.fake.phone(pid(1)), telephony_provider="twilio"))}])
    rig.fake.script(pid(1), "DELETE", [{"status": 204, "apply": True, "apply_after": 3600}])
    rig.write_config([{"id": pid(1)}], api={"settle_time": settle})
    proc = rig.start("--once")

    def looked_after_delete():
        d = rig.deletes(pid(1))
        return d and [e for e in rig.fake.requests(pid(1), "GET") if e["t"] > d[0]["t"]]
    wait_for(looked_after_delete, what="the look after the 204", timeout=30)
    rig.fake.advance(3600)             # the API's worker gets to it now
    assert proc.wait(30) == 0
    rig.assert_exactly_once(one_delete=True)
    assert rig.list()[pid(1)]["state"] == "released"
    (delete,) = rig.deletes(pid(1))
    gets = [e for e in rig.fake.requests(pid(1), "GET") if e["t"] > delete["t"]]
    # One look at once, one at the settle time (no sooner), that recorded it.
    assert len(gets) == 2 and gets[1]["t"] - delete["t"] >= settle * 0.95, gets
