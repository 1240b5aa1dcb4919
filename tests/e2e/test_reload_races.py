"""Reloads that land in the middle of a pass (issue 28, part 2): each test
reaches one of the engine's guards against a decision made on declarations
that are no more, and tests/mutants/ holds the patch that takes it out.

What must hold whatever the timing: a phone no longer declared is never
DELETEd, nothing is released twice, every row ends in the state the API
shows with its history, and stderr says why."""

import time

from conftest import MSG, num, phone, pid, stderr_of, wait_for

# Generous: the machine may be loaded.
LONG = 20


def history_kinds(rig, key):
    return [(h["kind"], h["old_state"], h["new_state"], h["method"], h["http_status"], h["detail"])
            for h in rig.db_history(key)]


def crash_with_a_delete_out(rig, key, phone_id):
    """Starts the daemon, lets the DELETE of phone_id leave (the API sits on
    it and releases nothing), and SIGKILLs the daemon: the row stays in_flight.
    Returns once its look is due (the settle time after the DELETE)."""
    rig.fake.script(phone_id, "DELETE", [{"delay": 10, "status": 503}])
    proc = rig.start()
    wait_for(lambda: rig.fake.delete_counts.get(phone_id), what="the first DELETE", timeout=LONG)
    proc.kill()
    proc.wait(5)
    row = rig.db_rows()[key]
    assert row["state"] == "in_flight" and row["sent_at"] > 0, row
    wait_for(lambda: time.time() * 1e6 > row["next_at"], what="the settle time", timeout=LONG)


def test_a_delete_decided_during_the_listing_is_dropped_by_a_reload(make_rig):
    """A look at a DELETE lost in a crash finds the phone still assigned while
    the account is being listed: its DELETE waits for the listing to end.  A
    reload un-declares the phone meanwhile (and declares a new number): the
    waiting DELETE is dropped, never sent, and the rows by number are not
    matched against a listing read before the reload (the new number's phone
    was not kept from it: it would be called not in the account)."""
    # Two pages by cursor: phones 1-3 and 100 others on the first.
    rig = make_rig([phone(n) for n in range(1, 111)], paging="cursor")
    rig.write_config([{"id": pid(1)}])
    crash_with_a_delete_out(rig, pid(1), pid(1))

    # The restart lists the account (a number is declared), its second page
    # slowly; the look at phone 1 goes out meanwhile.
    rig.fake.script("list", "GET", [{}, {"delay": 4}])
    rig.write_config([{"id": pid(1)}, {"number": num(2)}])
    looks = lambda: [h for h in rig.db_history(pid(1)) if h["kind"] == "call" and h["method"] == "GET"]
    before = len(looks())
    proc = rig.start(env={"RETIRED_LOG_LEVEL": "debug"})
    # Its answer committed, the DELETE it decided waits for the listing;
    # the first page is read (phone 3 not kept: nothing declares it yet).
    wait_for(lambda: len(looks()) > before, what="the look at phone 1", timeout=LONG)
    wait_for(lambda: "after=" in stderr_of(proc), what="the second page asked", timeout=LONG)
    assert [r for r in rig.fake.requests(method="GET") if r["path"] == "/v1/phone/" and r["status"]
            and "after=" in r["query"]] == [], "the listing ended before the reload"
    rig.write_config([{"number": num(2)}, {"number": num(3)}])
    reply = rig.ctl("reload")
    assert "reloaded" in reply.stdout, reply

    def settled():
        rows = rig.db_rows()
        return (rows.get(num(2), {}).get("state") == "scheduled" and rows.get(num(3), {}).get("state") == "scheduled"
                and rows[pid(1)]["state"] == "cancelled" and rows[pid(1)]["sent_at"] == 0)
    wait_for(settled, what="the rows to settle", timeout=LONG)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    err = stderr_of(proc)

    # The one DELETE of phone 1 is the one the crash cut short.
    assert rig.fake.delete_counts.get(pid(1)) == 1, (rig.fake.delete_counts, err)
    # Phone 3 was never called absent from the account.
    assert all(h["new_state"] != "unresolved" for h in rig.db_history(num(3))), history_kinds(rig, num(3))
    assert not [l for l in err.splitlines() if MSG["unresolved"] in l], err
    assert "Reload: 1 queued releases dropped" in err, err
    assert "The declarations changed since the account was listed" in err, err
    hist = history_kinds(rig, pid(1))
    assert ("state", "in_flight", "cancelled", None, None, "no longer declared") in hist, hist
    rig.assert_exactly_once(one_delete=True)


def test_a_release_answered_after_a_reload_cancelled_it_goes_on_record(make_rig):
    """A DELETE is out (the API takes 3 s to answer, having ordered the
    release at once) when a reload un-declares the phone: the row is
    cancelled, then the 204 arrives.  What the API did is the truth: the row
    becomes scheduled from cancelled, the DELETE and its 204 are on record,
    and nothing is sent again."""
    rig = make_rig([phone(1), phone(2)])
    rig.fake.script(pid(1), "DELETE", [{"delay": 3}])
    rig.write_config([{"id": pid(1)}, {"id": pid(2)}])
    proc = rig.start()
    wait_for(lambda: rig.fake.delete_counts.get(pid(1)) and rig.db_rows()[pid(1)]["state"] == "in_flight",
             what="the DELETE of phone 1", timeout=LONG)
    rig.write_config([{"id": pid(2)}])
    reply = rig.ctl("reload")
    assert "reloaded" in reply.stdout, reply
    assert rig.db_rows()[pid(1)]["state"] == "cancelled", "the DELETE was answered before the reload"
    wait_for(lambda: any(h["new_state"] == "scheduled" for h in rig.db_history(pid(1))),
             what="the answer to the DELETE", timeout=LONG)
    wait_for(lambda: rig.db_rows()[pid(2)]["state"] == "scheduled", what="phone 2", timeout=LONG)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    err = stderr_of(proc)

    hist = rig.db_history(pid(1))
    calls = [(h["method"], h["http_status"]) for h in hist if h["kind"] == "call"]
    assert ("DELETE", 204) in calls, (calls, err)
    steps = [(h["old_state"], h["new_state"]) for h in hist if h["kind"] == "state"]
    assert steps[-2:] == [("in_flight", "cancelled"), ("cancelled", "scheduled")], steps
    assert rig.db_rows()[pid(1)]["state"] == "scheduled"
    assert [l for l in err.splitlines() if MSG["scheduled"] in l and pid(1) in l], err
    assert rig.fake.delete_counts.get(pid(1)) == 1
    rig.assert_exactly_once(one_delete=True)


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def test_a_delete_is_refused_at_the_wire_once_the_apis_clock_says_not_yet(make_rig):
    """Phone 1's not_before came yesterday; its look says the API's clock
    agrees, and its DELETE queues behind phone 2's look.  That look's Date is
    31 days behind ours: by the API's clock phone 1 is not due yet, so its
    DELETE is refused as it reaches the wire, and it stays pending."""
    rig = make_rig([phone(1), phone(2)])
    rig.write_config([{"id": pid(1), "not_before": stamp(time.time() - 86400)}, {"id": pid(2)}],
                     pace={"rate": 0.5, "burst": 1, "concurrency": 1})
    proc = rig.start(env={"RETIRED_LOG_LEVEL": "debug"})
    wait_for(lambda: [r for r in rig.fake.requests(phone_id=pid(1), method="GET") if r["status"] == 200],
             what="the look at phone 1", timeout=LONG)
    rig.fake.configure(date_offset=-31 * 86400)
    assert not rig.fake.requests(phone_id=pid(2), method="GET"), "phone 2 was looked at before the API's clock moved"
    # Phone 1's DELETE was queued first: refused before phone 2's left.
    wait_for(lambda: rig.db_rows()[pid(2)]["state"] == "scheduled", what="phone 2", timeout=LONG)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    err = stderr_of(proc)
    assert rig.deletes(pid(1)) == [], err
    assert rig.db_rows()[pid(1)]["state"] == "pending", rig.db_rows()[pid(1)]
    assert "%s: not sent: not due yet by the API's clock" % pid(1) in err, err
    assert [l for l in err.splitlines() if MSG["clock_skew"] in l], err
    rig.assert_exactly_once(one_delete=True)


def test_a_look_answered_after_a_reload_changed_its_row_records_nothing(make_rig):
    """The look at phone 1 is out (the API takes 3 s) when a reload cancels it
    and declares phone 2.  Its answer ("assigned: release it") was decided on
    the old declaration: nothing of it is recorded, no DELETE leaves, and the
    daemon goes on (phone 2 is released) instead of pausing."""
    rig = make_rig([phone(1), phone(2)])
    rig.fake.script(pid(1), "GET", [{"delay": 3}])
    rig.write_config([{"id": pid(1)}])
    proc = rig.start(env={"RETIRED_LOG_LEVEL": "debug"})
    wait_for(lambda: "start GET /v1/phone/%s" % pid(1) in stderr_of(proc), what="the look at phone 1", timeout=LONG)
    rig.write_config([{"id": pid(2)}])
    reply = rig.ctl("reload")
    assert "reloaded" in reply.stdout, reply
    assert not rig.fake.requests(phone_id=pid(1), method="GET"), "the look was answered before the reload"
    wait_for(lambda: rig.db_rows().get(pid(2), {}).get("state") == "scheduled", what="phone 2", timeout=LONG)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    err = stderr_of(proc)
    assert "%s changed in the ledger meanwhile" % pid(1) in err, err
    assert "Paused all calls" not in err, err
    assert rig.deletes(pid(1)) == [] and rig.db_rows()[pid(1)]["state"] == "cancelled", err
    rig.assert_exactly_once(one_delete=True)
