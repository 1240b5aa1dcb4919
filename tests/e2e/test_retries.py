"""Transient failures are retried with backoff; a DELETE whose fate is unknown is
looked at again before anything is re-sent."""

import pytest

from conftest import EXIT, MSG, num, phone, pid

# Declared by number (the account is listed) or by id (one GET per phone).
DECL = {"number": lambda n: {"number": num(n)}, "id": lambda n: {"id": pid(n)}}


def delete_calls(rig, key):
    return [e for e in rig.show(key)["history"] if e["kind"] == "call" and e["method"] == "DELETE"]


@pytest.mark.parametrize("by", ["number", "id"])
def test_503_twice_then_released(make_rig, by):
    rig = make_rig([phone(1, provider="custom"), phone(2)])
    rig.fake.script(pid(1), "DELETE", [503, 503])
    rig.write_config([DECL[by](1), DECL[by](2)], retry={"max_attempts": 5})
    run = rig.run()
    assert run.rc == 0, run
    key = num(1) if by == "number" else pid(1)
    row = rig.list()[key]
    assert row["state"] == "released"
    assert row["attempts"] == 2, "the two failed DELETEs (and only they) are counted"
    assert [e["status"] for e in rig.deletes(pid(1))] == [503, 503, 204]
    assert [c["http_status"] for c in delete_calls(rig, key)] == [503, 503, 204]
    retrying = run.events(MSG["retrying"], PHONE_ID=pid(1))
    assert [(e["OUTCOME"], e["HTTP_STATUS"], e["ATTEMPT"]) for e in retrying] == \
           [("retrying", "503", "1"), ("retrying", "503", "2")]
    ev = run.outcome("released", phone_id=pid(1))
    assert ev["HTTP_STATUS"] == "204" and ev["ATTEMPT"] == "3"
    # The other phone was not held up by the failures.
    assert rig.list()[num(2) if by == "number" else pid(2)]["state"] == "scheduled"
    rig.assert_exactly_once()


def test_429_retry_after_is_honoured(make_rig):
    rig = make_rig([phone(1), phone(2, provider="custom")])
    rig.fake.script(pid(1), "DELETE", [{"status": 429, "retry_after": "1"}])
    rig.write_config([{"number": num(1)}, {"number": num(2)}])
    run = rig.run()
    assert run.rc == 0, run
    d = rig.deletes(pid(1))
    assert [e["status"] for e in d] == [429, 204]
    # Retry-After: 1 (whole seconds).  The arrival times at the fake may be a few
    # ms closer than the daemon's send times, hence the small allowance.
    assert d[1]["t"] - d[0]["t"] >= 0.95, "retried %.3f s after a 429 with Retry-After: 1" % (d[1]["t"] - d[0]["t"])
    assert rig.list()[num(1)]["state"] == "scheduled"
    ev = run.events(MSG["retrying"], PHONE_ID=pid(1))
    assert len(ev) == 1 and ev[0]["HTTP_STATUS"] == "429"
    rig.assert_exactly_once()


@pytest.mark.parametrize("by", ["number", "id"])
def test_max_attempts_exhausted(make_rig, by):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [503] * 5)
    rig.write_config([DECL[by](1)], retry={"max_attempts": 3})
    run = rig.run()
    assert run.rc == EXIT["operator"], run
    row = rig.list()[num(1) if by == "number" else pid(1)]
    assert row["state"] == "failed"
    assert row["last_error"] and "503" in row["last_error"]
    assert row["attempts"] == 3
    assert [e["status"] for e in rig.deletes(pid(1))] == [503, 503, 503], "max_attempts = 3 DELETEs"
    ev = run.outcome("failed", phone_id=pid(1))
    # The last DELETE failed; a look after the settle time found the phone still
    # assigned, and that look (HTTP 200) is what failed it.
    assert ev["MESSAGE_ID"] == MSG["failed"] and ev["ATTEMPT"] == "3" and "HTTP 503" in ev["line"], ev
    assert rig.fake.phone(pid(1))["scheduled_release_at"] is None


@pytest.mark.parametrize("provider,final", [("netelip", "scheduled"), ("custom", "released")])
@pytest.mark.parametrize("by", ["number", "id"])
def test_dropped_connection_outcome(make_rig, by, provider, final):
    """The DELETE's connection is closed without an answer (nothing applied): the
    phone is released in the end, once."""
    rig = make_rig([phone(1, provider=provider)])
    rig.fake.script(pid(1), "DELETE", [{"drop": True}])
    rig.write_config([DECL[by](1)])
    run = rig.run()
    assert run.rc == 0, run
    assert [e["status"] for e in rig.deletes(pid(1))] == [None, 204]
    assert rig.list()[num(1) if by == "number" else pid(1)]["state"] == final
    assert run.outcome(final, phone_id=pid(1))
    rig.assert_exactly_once()


@pytest.mark.parametrize("by", ["number", "id"])
def test_dropped_connection_is_seen_and_recorded(make_rig, by):
    """Every DELETE on the wire is in the ledger's history, and a lost answer is a retry."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [{"drop": True}])
    rig.write_config([DECL[by](1)])
    run = rig.run()
    assert run.rc == 0, run
    key = num(1) if by == "number" else pid(1)
    assert len(delete_calls(rig, key)) == len(rig.deletes(pid(1))), \
        "DELETEs sent: %d, recorded: %d" % (len(rig.deletes(pid(1))), len(delete_calls(rig, key)))
    ev = run.events(MSG["retrying"], PHONE_ID=pid(1))
    assert len(ev) == 1 and "HTTP_STATUS" not in ev[0], run


@pytest.mark.parametrize("by", ["number", "id"])
def test_applied_then_dropped_is_not_resent(make_rig, by):
    """{"drop":true,"apply":true}: released, but the answer was lost.  The daemon
    must look before re-sending; a second DELETE is a double release."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [{"drop": True, "apply": True}])
    rig.write_config([DECL[by](1)])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.fake.violations == [], "double release: %s" % rig.fake.violations
    assert len(rig.deletes(pid(1))) == 1
    assert rig.list()[num(1) if by == "number" else pid(1)]["state"] == "scheduled"


@pytest.mark.parametrize("answer", [{"status": 502, "apply": True}, {"status": 504, "apply": True, "delay": 0.1},
                                    {"status": 500, "apply": True, "body": "<html>oops</html>",
                                     "content_type": "text/html"}])
@pytest.mark.parametrize("provider,final", [("netelip", "scheduled"), ("custom", "released")])
@pytest.mark.parametrize("by", ["number", "id"])
def test_applied_but_answered_5xx_is_not_resent(make_rig, by, provider, final, answer):
    """The API released the phone but answered an error: the daemon looks (GET or
    list) before re-sending, and finds it released / scheduled."""
    rig = make_rig([phone(1, provider=provider), phone(2, provider=provider)])
    rig.fake.script(pid(1), "DELETE", [answer])
    rig.write_config([DECL[by](1), DECL[by](2)])
    run = rig.run()
    assert run.rc == 0, run
    assert len(rig.deletes(pid(1))) == 1, "DELETE re-sent for a phone already released"
    rig.assert_exactly_once(one_delete=True)
    row = rig.list()[num(1) if by == "number" else pid(1)]
    assert row["state"] == final
    assert run.outcome(final, phone_id=pid(1))
    # The look that found it released came after the DELETE.
    t_delete = rig.deletes(pid(1))[0]["t"]
    looks = [e for e in rig.fake.log if e["method"] == "GET" and e["t"] > t_delete
             and e["phone_id"] in (pid(1), None)]
    assert looks, "no GET after the DELETE whose answer was lost"


def test_get_cut_mid_body_is_retried(make_rig):
    """Half a phone object is not acted upon: the look is retried, then the phone released."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "GET", [{"drop_mid_body": True}])
    rig.write_config([{"id": pid(1)}])
    run = rig.run()
    assert run.rc == 0, run
    gets = [e for e in rig.fake.log if e["method"] == "GET"]
    assert len(gets) >= 2 and gets[0]["scripted"] == {"drop_mid_body": True}
    assert len(rig.deletes(pid(1))) == 1 and rig.deletes(pid(1))[0]["t"] > gets[1]["t"]
    assert rig.list()[pid(1)]["state"] == "scheduled"


@pytest.mark.parametrize("by", ["number", "id"])
def test_applied_then_gone_counts_as_released(make_rig, by):
    rig = make_rig([phone(1, provider="custom")], custom_release="gone")
    rig.fake.script(pid(1), "DELETE", [{"status": 502, "apply": True}])
    rig.write_config([DECL[by](1)])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.fake.phone(pid(1)) is None and rig.fake.release_counts.get(pid(1)) == 1
    rig.assert_exactly_once()
    row = rig.list()[num(1) if by == "number" else pid(1)]
    assert row["state"] == "released", row


def test_custom_gone_after_delete_is_released(make_rig):
    """custom_release=gone: the plain path (204, then the phone is gone) is released."""
    rig = make_rig([phone(1, provider="custom")], custom_release="gone")
    rig.write_config([{"number": num(1)}])
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[num(1)]["state"] == "released"
    rig.fake.clear_log()
    run = rig.run()
    assert run.rc == 0 and rig.deletes() == []
    assert rig.list()[num(1)]["state"] == "released"


def test_last_attempt_applied_is_not_failed(make_rig):
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "DELETE", [503, {"status": 502, "apply": True}])
    rig.write_config([{"id": pid(1)}], retry={"max_attempts": 2})
    run = rig.run()
    assert run.rc == 0, run
    assert rig.fake.phone(pid(1))["scheduled_release_at"], "the fake applied the second DELETE"
    assert len(rig.deletes(pid(1))) == 2
    assert rig.list()[pid(1)]["state"] == "scheduled"
