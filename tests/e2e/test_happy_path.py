"""Declared phones reach the outcome their remote state calls for, and each
outcome is one journal-style line on stderr."""

import pytest

from conftest import EXIT, MSG, dashed, num, phone, pid, spaced

SIP = "trunk8@sip.example.com"

ACCOUNT = [
    phone(1),                                       # netelip assigned      -> scheduled
    phone(2, provider="custom"),                    # custom assigned       -> released
    phone(3),                                       # netelip, id + number  -> scheduled
    phone(4, status="reserved"),                    # -> deferred
    phone(5, status="pending_verification"),        # -> deferred
    phone(6, status="released", provider="custom"),  # -> released, no DELETE
    phone(7, status="finished"),                    # -> released, no DELETE
    phone(8, provider="custom", number=SIP, region_codes=[]),  # SIP identifier -> released
    phone(9),                                       # declared with phone 10's number -> failed
    phone(10),                                      # (its number is misused above: untouched)
    phone(11),                                      # not declared at all: untouched
    phone(12, provider="custom"),                   # number written with dots and parentheses
]

DECLARED = [
    {"number": spaced(1), "reason": "OPS-1 shop closed"},
    {"id": pid(2)},
    {"id": pid(3), "number": dashed(3)},
    {"number": num(4)},
    {"id": pid(5)},
    {"number": num(6)},
    {"id": pid(7)},
    {"number": SIP},
    {"id": pid(9), "number": num(10)},
    {"number": num(99)},        # no such number in the account
    {"id": pid(98)},            # no such id in the account
    {"number": "+34 (910) 000.012"},
]

# key in the ledger -> (expected state, DELETE expected, phone index)
EXPECTED = {
    num(1): ("scheduled", True, 1),
    pid(2): ("released", True, 2),
    pid(3): ("scheduled", True, 3),
    num(4): ("deferred", False, 4),
    pid(5): ("deferred", False, 5),
    num(6): ("released", False, 6),
    pid(7): ("released", False, 7),
    SIP: ("released", True, 8),
    pid(9): ("failed", False, 9),
    num(99): ("unresolved", False, None),
    pid(98): ("unresolved", False, None),
    num(12): ("released", True, 12),
}


@pytest.fixture
def done(make_rig):
    rig = make_rig(ACCOUNT)
    rig.write_config(DECLARED)
    run = rig.run()
    assert run.rc == EXIT["operator"], run    # the account has a typo, a carrier conflict, a refusal
    return rig, run


def test_ledger_states(done):
    rig, run = done
    rows = rig.list()
    assert {k: r["state"] for k, r in rows.items()} == {k: v[0] for k, v in EXPECTED.items()}
    # Numbers are stored in their normalised form; the resolved id is kept.
    assert rows[num(1)]["number"] == num(1) and rows[num(1)]["id"] == pid(1)
    assert rows[num(1)]["reason"] == "OPS-1 shop closed"
    assert rows[pid(3)]["number"] == num(3)
    assert rows[SIP]["id"] == pid(8)
    assert rows[num(12)]["id"] == pid(12)
    assert rows[num(99)]["last_error"] and rows[pid(98)]["last_error"]
    assert "disagree" in rows[pid(9)]["last_error"]
    status = rig.status()
    assert status["total"] == len(EXPECTED)
    assert status["counts"].get("scheduled") == 2 and status["counts"].get("released") == 5
    assert not status["counts"].get("in_flight") and not status["counts"].get("pending")


def test_remote_effects(done):
    rig, run = done
    fake = rig.fake
    for key, (state, deleted, n) in EXPECTED.items():
        if n is None:
            continue
        assert len(rig.deletes(pid(n))) == (1 if deleted else 0), key
    # Nothing else was touched: not the undeclared phone, not the one whose number was misused.
    assert rig.deletes(pid(10)) == [] and rig.deletes(pid(11)) == []
    assert len(rig.deletes()) == 5
    assert all(e["status"] == 204 for e in rig.deletes())
    # netelip: the release is ordered, the phone stays assigned until the end of the billing period.
    for n in (1, 3):
        p = fake.phone(pid(n))
        assert p["status"] == "assigned" and p["scheduled_release_at"], p
    # custom: released at once.
    for n in (2, 8, 12):
        assert fake.phone(pid(n))["status"] == "released"
    for n in (4, 5, 9, 10, 11):
        p = fake.phone(pid(n))
        assert not p["scheduled_release_at"] and p["status"] in ("assigned", "reserved", "pending_verification")
    rig.assert_exactly_once(one_delete=True)


def test_journal_lines_for_numbers(done):
    """Every outcome of a phone declared by number is one line with MESSAGE_ID,
    PHONE_NUMBER (normalised), PHONE_ID when known, OUTCOME."""
    rig, run = done
    for key, (state, deleted, n) in EXPECTED.items():
        if key.startswith("+") or "@" in key:
            ev = run.outcome(state, number=key)
            assert ev["MESSAGE_ID"] == MSG[state]
            if n is not None:
                assert ev["PHONE_ID"] == pid(n)
            if deleted:
                assert ev["HTTP_STATUS"] == "204" and ev["ATTEMPT"] == "1", ev["line"]
            else:
                assert "ATTEMPT" not in ev, ev["line"]
    # The id + number pair that disagree names the declared number.
    ev = run.outcome("failed", phone_id=pid(9))
    assert ev["PHONE_NUMBER"] == num(10) and ev["MESSAGE_ID"] == MSG["failed"]


def test_journal_lines_for_ids(done):
    rig, run = done
    for key, (state, deleted, n) in EXPECTED.items():
        if key.startswith("+") or "@" in key:
            continue
        ev = run.outcome(state, phone_id=key)
        assert ev["MESSAGE_ID"] == MSG[state]
        if deleted:
            assert ev["HTTP_STATUS"] == "204" and ev["ATTEMPT"] == "1", ev["line"]
    # A pass summary closes the run.
    assert run.events(MSG["pass_summary"])


def test_journal_lines_for_ids_carry_the_number(done):
    """A phone declared by id is found in the journal by its number too (the API's)."""
    rig, run = done
    for key, (state, deleted, n) in EXPECTED.items():
        if key.startswith("+") or "@" in key or n in (None, 9):
            continue
        ev = run.outcome(state, phone_id=key)
        assert ev.get("PHONE_NUMBER") == (SIP if n == 8 else num(n)), ev["line"]


def test_history_of_a_release(done):
    rig, run = done
    h = rig.show(num(1))
    assert h["state"] == "scheduled" and h["id"] == pid(1)
    steps = [(e["from"], e["to"]) for e in h["history"] if e["kind"] == "state"]
    assert steps == [(None, "pending"), ("pending", "in_flight"), ("in_flight", "scheduled")]
    calls = [(e["method"], e["path"], e["http_status"]) for e in h["history"] if e["kind"] == "call"]
    assert ("DELETE", "/v1/phone/" + pid(1), 204) in calls
    # The row was committed in_flight before the DELETE reached the API (both wall clocks).
    in_flight_at = next(e["at"] for e in rig.db_history(num(1)) if e["new_state"] == "in_flight") / 1e6
    arrived = rig.deletes(pid(1))[0]["wall"]
    assert in_flight_at <= arrived, "in_flight committed %.6f s after the DELETE arrived" % (in_flight_at - arrived)


def test_by_id_uses_get_per_phone(make_rig):
    """A handful of phones declared by id are observed with one GET each, no listing."""
    rig = make_rig([phone(1), phone(2, provider="custom"), phone(3, status="reserved"),
                    phone(4, status="released"), phone(5)])
    rig.write_config([{"id": pid(n)} for n in (1, 2, 3, 4, 97)])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    log = rig.fake.log
    assert not [e for e in log if e["method"] == "GET" and e["phone_id"] is None], "listed the account"
    assert sorted(e["phone_id"] for e in log if e["method"] == "GET") == sorted(pid(n) for n in (1, 2, 3, 4, 97))
    assert sorted(e["phone_id"] for e in rig.deletes()) == sorted([pid(1), pid(2)])
    rows = rig.list()
    assert {k: r["state"] for k, r in rows.items()} == {
        pid(1): "scheduled", pid(2): "released", pid(3): "deferred", pid(4): "released", pid(97): "unresolved"}
    assert run.outcome("unresolved", phone_id=pid(97))["HTTP_STATUS"] == "404"
    assert rows[pid(1)]["provider"] == "netelip" and rows[pid(2)]["provider"] == "custom"
    assert rig.fake.phone(pid(5))["scheduled_release_at"] is None
    rig.assert_exactly_once(one_delete=True)


def test_number_reassigned_after_release(make_rig):
    """A number can come back under a new id after release: the live phone is the one released."""
    old = phone(20, status="released")
    new = dict(phone(21), number=num(20))
    rig = make_rig([old, new])
    rig.write_config([{"number": spaced(20)}])
    run = rig.run()
    assert run.rc == 0, run
    assert [e["phone_id"] for e in rig.deletes()] == [pid(21)]
    row = rig.list()[num(20)]
    assert row["state"] == "scheduled" and row["id"] == pid(21)
    rig.assert_exactly_once(one_delete=True)


def test_failed_without_a_delete_counts_no_attempt(done):
    """attempts counts failed calls: a phone failed for an id/number mismatch made none."""
    rig, run = done
    assert rig.deletes(pid(9)) == []
    assert rig.list()[pid(9)]["attempts"] == 0


def test_sip_identifier_on_two_live_phones_is_not_guessed(make_rig):
    """A SIP identifier is whatever an import said, and two imports may share
    one: the daemon waits for the whole list and refuses to pick."""
    sip = "trunk30@sip.example.com"
    rig = make_rig([dict(phone(30, provider="custom"), number=sip), dict(phone(31, provider="custom"), number=sip)])
    rig.write_config([{"number": sip}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    assert rig.deletes() == [], "released %s, one of two phones with that identifier" % rig.deletes()[0]["phone_id"]
    row = rig.list()[sip]
    assert row["state"] == "failed" and "ambiguous" in row["last_error"], row
    assert run.events(MSG["failed"], PHONE_NUMBER=sip)


def test_sip_identifier_on_one_live_phone_is_released_after_the_listing(make_rig):
    sip = "trunk32@sip.example.com"
    rig = make_rig([dict(phone(32, provider="custom"), number=sip), phone(33)])
    rig.write_config([{"number": sip}])
    run = rig.run()
    assert run.rc == 0, run
    assert [e["phone_id"] for e in rig.deletes()] == [pid(32)]
    assert rig.list()[sip]["state"] == "released"


def test_number_on_two_live_phones_is_not_guessed(make_rig):
    """Two live phones with one E.164 number: nothing was clearly declared, so
    nothing is released; the row names both ids, for the operator to pick one."""
    rig = make_rig([phone(30), dict(phone(31), number=num(30)), phone(32)])
    rig.write_config([{"number": num(30)}, {"number": num(32)}])
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    assert [e["phone_id"] for e in rig.deletes()] == [pid(32)], "released one of two phones with that number"
    row = rig.show(num(30))
    assert row["state"] == "failed" and row["id"] is None, row
    assert "ambiguous" in row["last_error"], row
    detail = [h["detail"] for h in row["history"] if h["to"] == "failed"][0]
    assert pid(30) in detail and pid(31) in detail, detail
    line = run.outcome("failed", number=num(30))["line"]
    assert pid(30) in line and pid(31) in line and "declare the one meant by id" in line
