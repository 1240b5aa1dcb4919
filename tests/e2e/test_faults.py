"""The fault matrix: each of the three calls (a list page, a GET of one phone, the
DELETE) meets each transport or content fault once, then the API behaves again;
or meets it every time.  The daemon must end in the right state (released once,
or failed after retry.max_attempts, never lost, never released twice), say why in
a log line that names the fault, and exit 0 (never a signal).

test_retries.py and test_bad_answers.py hold the deeper single cases (a 503 on
DELETE, Retry-After: 1 timing, applied-then-5xx, wrong-shape JSON...); this file
is the cross product, kept compact with parametrize.  Retry delays come from the
rig's defaults (base_delay 0.05, max_delay 0.2): only the timeouts (api.timeout
= 1) and the Retry-After waits cost real seconds.
"""

import email.utils
import json
import os
import re
import signal
import socket
import time

import pytest

from conftest import EXIT, MSG, num, phone, pid, stderr_of, wait_for

HTML = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
CALLS = ("list", "get", "delete")
TIMEOUT = 1.0   # api.timeout for every case here: the minimum the config accepts
# ... but for a huge body, which must be refused for its size, and a trickle
# that must be waited for: neither may be cut short by the timeout, and 4 MiB
# or 0.3 s of trickle can take longer than 1 s on a loaded machine.
SLOW_OK_TIMEOUT = 10.0


def timeout_for(fault):
    return SLOW_OK_TIMEOUT if fault in ("huge", "trickle_fast") else TIMEOUT

# Method and script key of each call; the declaration that makes the daemon use it:
# a number is resolved through the list, an id is looked at with one GET.
METHOD = {"list": "GET", "get": "GET", "delete": "DELETE"}


def script_key(call):
    return "list" if call == "list" else pid(1)


def declare(call):
    return [{"number": num(1)}] if call == "list" else [{"id": pid(1)}]


def key_of(call):
    return num(1) if call == "list" else pid(1)


def real_body(rig, call):
    """What the API would really answer to this call, as JSON text."""
    if call == "list":
        return json.dumps({"data": [rig.fake.phone(pid(1))], "has_more": False, "last_id": pid(1)})
    return json.dumps(rig.fake.phone(pid(1)))


def calls_of(rig, call):
    """The calls of this kind the fake got, in the order they arrived (the fake logs
    a call when it answers, so a slow one is logged after a quicker later one)."""
    if call == "list":
        made = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] is None]
    else:
        made = [e for e in rig.fake.log if e["method"] == METHOD[call] and e["phone_id"] == pid(1)]
    return sorted(made, key=lambda e: e["t"])


# name: (answer (a function of rig and call), the reason the log must give, how it ends)
#   "retried": the call failed, was made again, and the phone was released after it.
#   "ignored": a DELETE answered 2xx: the release is recorded whatever the body, not re-sent.
#   "ok":      not a failure at all (a slow answer within api.timeout).
#   "accepted": a DELETE answered 2xx: the API acted; one GET records what it did.
def _json_as_text(rig, call):
    return {"status": 200, "body": real_body(rig, call), "content_type": "text/plain"}


FAULTS = {
    # (Just past api.timeout: the fake logs a request once it answers, and the
    # checks below wait for that.)
    "timeout":        (lambda rig, call: {"delay": TIMEOUT + 0.3}, r"timed out", "retried"),
    "dropped":        (lambda rig, call: {"drop": True}, r"Empty reply from server", "retried"),
    "cut_mid_body":   (lambda rig, call: {"drop_mid_body": True} if call != "delete" else
                       # A 204 has no body to cut: a 200 with a body, cut halfway.
                       {"status": 200, "body": real_body(rig, call), "drop_mid_body": True, "apply": True},
                       r"transfer closed with \d+ bytes remaining", "retried"),
    "http_503":       (lambda rig, call: 503, r"HTTP 503", "retried"),
    "html_502":       (lambda rig, call: {"status": 502, "body": HTML, "content_type": "text/html"},
                       r"HTTP 502", "retried"),
    "429_seconds":    (lambda rig, call: {"status": 429, "retry_after": "1"}, r"HTTP 429", "retried"),
    "429_http_date":  (lambda rig, call: {"status": 429, "retry_after":
                                          email.utils.formatdate(time.time() + 2.5, usegmt=True)},
                       r"HTTP 429", "retried"),
    "429_no_header":  (lambda rig, call: {"status": 429}, r"HTTP 429", "retried"),
    "truncated_json": (lambda rig, call: {"status": 200, "body": real_body(rig, call)[:40]},
                       r"not valid JSON", "retried"),
    "malformed_json": (lambda rig, call: {"status": 200, "body": '{"data": [], "id": 1,, "has_more": }'},
                       r"not valid JSON", "retried"),
    "html_200":       (lambda rig, call: {"status": 200, "body": HTML.replace("502 Bad Gateway", "Maintenance"),
                                          "content_type": "text/html"}, r"not JSON", "retried"),
    "json_as_text":   (_json_as_text, r"not JSON", "retried"),
    "huge":           (lambda rig, call: {"huge": 5_000_000}, r"larger than 4 MiB", "retried"),
    "trickle_slow":   (lambda rig, call: {"trickle": 3}, r"timed out", "retried"),
    "trickle_fast":   (lambda rig, call: {"trickle": 0.3}, None, "ok"),
}

# A DELETE is documented to answer 204.  A 200, whatever its body, is the API
# saying it acted (issue 26): the phone is looked at at once, the look records
# the release (the fake applied it, "apply"), and nothing is sent again.
DELETE_2XX_BODY = {"truncated_json", "malformed_json", "html_200", "json_as_text"}

# Retry-After the daemon must wait at least (seconds; arrival times at the fake
# may be a few ms closer than the daemon's send times).
MIN_GAP = {"429_seconds": 0.95}


def retry_lines(run, call):
    """The lines that tell a call failed and will be made again."""
    if call == "list":
        # A failed page is retried by the listing itself, before any phone's verdict.
        return [l for l in run.lines if l.startswith("retired: Listing phones:") and "failed (" in l]
    return [e["line"] for e in run.events(MSG["retrying"], PHONE_ID=pid(1), OUTCOME="retrying")]


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("call", CALLS)
def test_fault_once_then_released(make_rig, call, fault):
    make_answer, reason, how = FAULTS[fault]
    if call == "delete" and fault in DELETE_2XX_BODY:
        how, reason = "accepted", r"DELETE answered HTTP 200 \(provider netelip\): accepted"
    rig = make_rig([phone(1), phone(2, provider="custom")])
    answer = make_answer(rig, call)
    if how == "accepted":
        answer = dict(answer, apply=True)
    rig.fake.script(script_key(call), METHOD[call], [answer])
    # Phone 2 is declared the same way: a bystander the fault must not hold back.
    decl = declare(call) + ([{"number": num(2)}] if call == "list" else [{"id": pid(2)}])
    rig.write_config(decl, api={"timeout": timeout_for(fault)})
    run = rig.run()

    assert run.rc == 0, run
    rig.assert_exactly_once()
    rows = rig.list()
    assert rows[key_of(call)]["state"] == "scheduled", (rows[key_of(call)], run)
    assert rows[num(2) if call == "list" else pid(2)]["state"] == "released", run
    assert rig.fake.release_counts == {pid(1): 1, pid(2): 1}
    assert run.outcome("scheduled", phone_id=pid(1))

    # A DELETE that was applied (its answer lost, slow or not the API's) is never
    # sent again; one that was not is sent again, after a look found it assigned.
    applied = call == "delete" and (how == "accepted" or fault in ("timeout", "trickle_slow", "cut_mid_body"))
    n_deletes = rig.fake.delete_counts.get(pid(1), 0)
    if call != "delete" or how == "ok" or applied:
        assert n_deletes == 1, "DELETEs of phone 1: %d" % n_deletes
    else:
        assert n_deletes == 2, "DELETEs of phone 1: %d" % n_deletes

    lines = retry_lines(run, call)
    if how in ("ok", "accepted"):
        assert lines == [], run
        # (A fault that is not one is not logged as a warning either.)
        assert not run.events(MSG["retrying"]), run
    if how == "accepted":
        # Recorded from one look right after the DELETE, the answer on record.
        t_delete = rig.deletes(pid(1))[0]["t"]
        assert len([e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] == pid(1) and e["t"] > t_delete]) == 1, \
            rig.fake.log
        hist = rig.show(key_of(call))["history"]
        assert any(re.search(reason, e["detail"] or "") for e in hist), hist
    if how in ("ok", "accepted"):
        return
    assert len(lines) == 1, "expected one line telling the %s failed:\n%s" % (call, run.stderr)
    assert re.search(reason, lines[0]), "the line does not name the fault (%s): %s" % (reason, lines[0])
    if call != "list":
        ev = run.events(MSG["retrying"], PHONE_ID=pid(1))[0]
        assert ev["MESSAGE_ID"] == MSG["retrying"]
        assert "%s /v1/phone/%s" % (METHOD[call], pid(1)) in ev["line"], ev["line"]
        if fault.startswith("429") or fault in ("http_503", "html_502"):
            assert ev["HTTP_STATUS"] == re.search(r"\d{3}", reason).group(0)
        if call == "delete":
            assert ev["ATTEMPT"] == "1"
        # The ledger keeps the reason too, in the phone's history.
        hist = rig.show(key_of(call))["history"]
        steps = [e for e in hist if e["kind"] == "state" and e["to"] == "retrying"]
        assert steps and re.search(reason, steps[0]["detail"] or ""), hist

    # The faulted call was made again (or, for an applied DELETE, the phone looked at).
    made = wait_for(lambda: calls_of(rig, call) if len(calls_of(rig, call)) >= (1 if applied else 2) else None,
                    what="the fake to log the faulted call")
    if applied:
        gets = [e for e in rig.fake.log if e["method"] == "GET" and e["phone_id"] == pid(1)]
        assert len(gets) >= 2, "the DELETE's fate was not looked at: %s" % gets
    else:
        assert len(made) >= 2, made
        assert made[0]["scripted"] == ({"status": answer} if isinstance(answer, int) else answer)
    if fault in MIN_GAP:
        gap = made[1]["t"] - made[0]["t"]
        assert gap >= MIN_GAP[fault], "made again %.3f s after a 429 asking for about 1-2 s" % gap
    if fault == "429_http_date":
        # Not before the date (whole seconds), however late the first call came.
        until = email.utils.parsedate_to_datetime(answer["retry_after"]).timestamp()
        assert made[1]["wall"] >= until - 0.05, "made again %.3f s before the Retry-After date" % (
            until - made[1]["wall"])


# ---------------------------------------------------------------- every time

PERSISTENT = {
    "http_503": (503, r"HTTP 503"),
    "dropped": ({"drop": True}, r"Empty reply from server"),
    "truncated_json": ({"status": 200, "body": '{"data": [{"id": "'}, r"not valid JSON"),
    "huge": ({"huge": 5_000_000}, r"larger than 4 MiB"),
}


@pytest.mark.parametrize("call,fault", [(c, f) for c in ("get", "delete") for f in PERSISTENT])
def test_fault_every_time_ends_failed(make_rig, call, fault):
    answer, reason = PERSISTENT[fault]
    accepted = call == "delete" and fault == "truncated_json"
    if accepted:
        # A DELETE's body is not read: a 200 is the API saying it acted, and a
        # look that shows it still assigned says it did not.
        reason = r"HTTP 200 \(accepted, but still assigned\)"
    rig = make_rig([phone(1)])
    rig.fake.script(script_key(call), METHOD[call], [answer] * 50)
    rig.write_config(declare(call), api={"timeout": timeout_for(fault)}, retry={"max_attempts": 3})
    run = rig.run()

    assert run.rc == EXIT["operator"], run
    row = rig.list()[key_of(call)]
    assert row["state"] == "failed", row
    assert row["attempts"] == 3, row
    assert re.search(reason, row["last_error"]), row["last_error"]
    ev = run.events(MSG["failed"], OUTCOME="failed")
    assert len(ev) == 1, run
    assert re.search(reason, ev[0]["line"]), ev[0]["line"]
    assert "giving up after 3 attempts" in ev[0]["line"] or "still assigned" in ev[0]["line"], ev[0]["line"]
    # Nothing was released: the fake applied nothing (these answers never apply).
    assert rig.fake.release_counts == {} and rig.fake.violations == []
    # Attempt 1 made the phone retrying (one event naming the fault); attempt 3
    # failed it.  A GET's attempt 2 is retrying -> retrying: a plain line.  Each
    # DELETE leaves from in_flight, so each failed one is a retrying event; the
    # last waits for a look, after the settle time, that finds it assigned.
    # An accepted DELETE is not a failed call: the row stays in_flight (no
    # retrying event), each one counted by the look that shows it assigned.
    retrying = run.events(MSG["retrying"], OUTCOME="retrying")
    if accepted:
        assert retrying == [], run
    else:
        assert retrying and re.search(reason, retrying[0]["line"]), run
        assert len(retrying) == (3 if call == "delete" else 1), run
    if call == "get":
        assert len(calls_of(rig, call)) == 3
        assert rig.deletes() == []
    else:
        assert len(calls_of(rig, call)) == 3
        # After the last failed DELETE the phone is looked at once more.
        last = calls_of(rig, call)[-1]["t"]
        assert [e for e in rig.fake.log if e["method"] == "GET" and e["t"] > last]


@pytest.mark.parametrize("fault", list(PERSISTENT))
def test_listing_failing_every_time_is_no_verdict(make_rig, fault):
    """A listing that keeps failing is never charged to the phones (finding 9):
    they keep their state with no attempt counted; the listing is tried again on
    its own budget, and --once gives up (exit 1) saying why, for the next run."""
    answer, reason = PERSISTENT[fault]
    rig = make_rig([phone(1)])
    rig.fake.script("list", "GET", [answer] * 50)
    rig.write_config(declare("list"), api={"timeout": timeout_for(fault)}, retry={"max_attempts": 3})
    run = rig.run()

    assert run.rc == 1, run
    row = rig.list()[key_of("list")]
    assert row["state"] == "pending" and row["attempts"] == 0 and row["last_error"] is None, row
    assert not run.events(MSG["failed"]) and not run.events(MSG["retrying"]), run
    # Three listings, each trying the page three times.
    assert len(calls_of(rig, "list")) == 3 * 3
    assert rig.deletes() == []
    stop = [l for l in run.lines if l.startswith("retired: Stopping:")]
    assert len(stop) == 1 and re.search(reason, stop[0]), run


# ---------------------------------------------------------------- connection refused

@pytest.fixture
def closed_port():
    """A loopback port bound but not listening: every connect is refused, and no
    other process can take the port while the test runs."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("by", ["number", "id"])
def test_connection_refused_fails_then_recovers(make_rig, closed_port, by):
    """Nothing answers.  Phones looked at one by one end failed after
    max_attempts (exit 0, settled), with the reason; phones declared by number
    need the listing, which is no verdict on them: they stay pending, attempts
    0, and --once gives up (exit 1) saying why.  Nothing is lost: once the API
    is back, each is released exactly once (the failed ones after retirectl retry)."""
    rig = make_rig([phone(n, provider="custom" if n == 2 else "netelip") for n in (1, 2)])
    decl = [{"number": num(n)} if by == "number" else {"id": pid(n)} for n in (1, 2)]
    keys = [num(n) if by == "number" else pid(n) for n in (1, 2)]
    rig.write_config(decl, api={"base_url": "http://127.0.0.1:%d" % closed_port, "timeout": TIMEOUT})
    run = rig.run()
    rows = rig.list()
    if by == "id":
        assert run.rc == EXIT["operator"], run
        for k in keys:
            assert rows[k]["state"] == "failed" and rows[k]["attempts"] == 3, rows[k]
            assert re.search(r"[Cc]ouldn't connect|[Cc]onnection refused", rows[k]["last_error"]), rows[k]
        ev = run.events(MSG["failed"], OUTCOME="failed")
        assert len(ev) == 2, run
        assert all("127.0.0.1" in e["line"] and str(closed_port) in e["line"] for e in ev), ev
        assert len(run.events(MSG["retrying"], OUTCOME="retrying")) == 2, run
    else:
        assert run.rc == 1, run
        for k in keys:
            assert rows[k]["state"] == "pending" and rows[k]["attempts"] == 0, rows[k]
        assert not run.events(MSG["failed"]) and not run.events(MSG["retrying"]), run
        stop = [l for l in run.lines if l.startswith("retired: Stopping:")]
        assert len(stop) == 1 and re.search(r"[Cc]ouldn't connect", stop[0]), run
    assert rig.fake.log == []

    # The API is back: an operator retries the failed phones.
    rig.write_config(decl)
    proc = rig.start()
    wait_for(lambda: os.path.exists(rig.control_socket), what="the control socket")
    if by == "id":
        for k in keys:
            assert "pending again" in rig.ctl("retry", k).stdout
    wait_for(lambda: {r["state"] for r in rig.db_rows().values()} == {"scheduled", "released"},
             what="the phones to be released")
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    rig.assert_exactly_once(one_delete=True)
    rows = rig.list()
    assert rows[keys[0]]["state"] == "scheduled" and rows[keys[1]]["state"] == "released"


def test_connection_refused_for_the_delete(make_rig, closed_port):
    """The API goes away between the GET and the DELETE (a reload moves base_url
    to a closed port while the GET is out): the DELETE never reached the API.
    Its row is never failed blind, nor lost: it is looked at again until a look
    can tell, and once the API is back it is released, exactly once."""
    rig = make_rig([phone(1)])
    rig.fake.script(pid(1), "GET", [{"delay": 1.0}])
    # Not about the backoff: short, and attempts enough for a loaded machine,
    # where the checks below may outlast several retries against the closed port.
    retry = {"base_delay": 0.2, "max_delay": 1.0, "max_attempts": 100}
    rig.write_config([{"id": pid(1)}], api={"timeout": 2.0}, retry=retry)
    proc = rig.start()
    # The GET has arrived (the fake holds it 1 s) once its scripted answer is used up.
    wait_for(lambda: (pid(1), "GET") not in rig.fake._scripts, what="the slow GET to arrive")
    rig.write_config([{"id": pid(1)}], api={"base_url": "http://127.0.0.1:%d" % closed_port, "timeout": 2.0},
                     retry=retry)
    proc.send_signal(signal.SIGHUP)

    def refused_delete():
        hist = rig.db_history(pid(1))
        return [h for h in hist if h["kind"] == "call" and h["method"] == "DELETE"]
    deletes = wait_for(refused_delete, what="the refused DELETE on record", timeout=30)
    assert all(h["http_status"] in (None, 0) for h in deletes), deletes
    assert rig.fake.delete_counts == {} and rig.fake.release_counts == {}
    row = rig.db_rows()[pid(1)]
    assert row["state"] == "retrying" and row["sent_at"] > 0, row
    err = stderr_of(proc)
    lines = [l for l in err.splitlines() if "DELETE /v1/phone/%s failed" % pid(1) in l]
    assert lines and re.search(r"[Cc]ouldn't connect|[Cc]onnection refused", lines[0]), err
    assert MSG["retrying"] in lines[0]

    # The API is back.
    rig.write_config([{"id": pid(1)}], api={"timeout": 2.0}, retry=retry)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: rig.db_rows()[pid(1)]["state"] == "scheduled", what="the release", timeout=30)
    proc.terminate()
    assert proc.wait(10) == 0
    rig.assert_exactly_once(one_delete=True)
