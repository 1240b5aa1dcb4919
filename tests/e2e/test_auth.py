"""401/403 pause all work instead of burning through the queue: --once exits 1,
nothing is released, no phone is failed and no attempt is counted."""

import pytest

from conftest import EXIT, MSG, VIEW_ONLY_TOKEN, num, phone, pid, stderr_of, wait_for

# A key refused: the whole run stops at once (a few tenths of a second); a run
# that does not stop within this is a hang, even on a machine at a quarter of
# its speed.
AUTH_TIMEOUT = 10

def check_paused(rig, run, status, keys):
    assert run.rc == EXIT["setup"], run
    ev = run.events(MSG["auth_paused"])
    assert len(ev) == 1 and ev[0]["HTTP_STATUS"] == str(status), run
    assert rig.deletes() == [] or all(e["status"] == status for e in rig.deletes())
    rows = rig.list()
    for k in keys:
        # A refused DELETE leaves its row in_flight: a look decides once calls resume.
        refused = any(e["status"] == status for e in rig.deletes(rows[k]["id"])) if rows[k]["id"] else False
        assert rows[k]["state"] == ("in_flight" if refused else "pending") and rows[k]["attempts"] == 0, rows[k]
        assert rows[k]["last_error"] is None
    assert not run.events(MSG["failed"])
    assert all(p["scheduled_release_at"] is None and p["status"] == "assigned" for p in rig.fake.phones.values())


def test_wrong_token_one_phone(make_rig):
    rig = make_rig([phone(1)])
    rig.set_token("not-the-key")
    rig.write_config([{"id": pid(1)}])
    run = rig.run(timeout=AUTH_TIMEOUT)
    check_paused(rig, run, 401, [pid(1)])
    assert rig.deletes() == []
    assert [e["status"] for e in rig.fake.log] == [401]
    assert "not-the-key" not in run.stderr


@pytest.mark.parametrize("by", ["number", "id"])
def test_wrong_token_many_phones(make_rig, by):
    rig = make_rig([phone(n) for n in range(1, 6)])
    rig.set_token("not-the-key")
    rig.write_config([{"number": num(n)} if by == "number" else {"id": pid(n)} for n in range(1, 6)])
    run = rig.run(timeout=AUTH_TIMEOUT)
    check_paused(rig, run, 401, [num(n) if by == "number" else pid(n) for n in range(1, 6)])
    assert rig.deletes() == []


def test_view_only_token_one_phone(make_rig):
    rig = make_rig([phone(1)])
    rig.set_token(VIEW_ONLY_TOKEN)
    rig.write_config([{"number": num(1)}])
    run = rig.run(timeout=AUTH_TIMEOUT)
    check_paused(rig, run, 403, [num(1)])
    assert [e["status"] for e in rig.deletes()] == [403]
    # The refused DELETE is on record, and the row stays in_flight: it is
    # looked at (GET) before anything is sent again.
    hist = rig.show(num(1))["history"]
    assert any(e["method"] == "DELETE" and e["http_status"] == 403 for e in hist)
    assert [(e["from"], e["to"]) for e in hist if e["kind"] == "state"][-1:] == [("pending", "in_flight")]


def test_view_only_token_many_phones(make_rig):
    rig = make_rig([phone(n) for n in range(1, 9)])
    rig.set_token(VIEW_ONLY_TOKEN)
    rig.write_config([{"number": num(n)} for n in range(1, 9)], pace={"concurrency": 2})
    run = rig.run(timeout=AUTH_TIMEOUT)
    check_paused(rig, run, 403, [num(n) for n in range(1, 9)])
    # Paused at the first refusal: not one DELETE per phone.
    assert len(rig.deletes()) <= 2


def test_good_token_after_a_refused_one(make_rig):
    """The paused run left nothing behind that blocks a run with the right key."""
    rig = make_rig([phone(1)])
    rig.set_token(VIEW_ONLY_TOKEN)
    rig.write_config([{"id": pid(1)}])
    assert rig.run(timeout=AUTH_TIMEOUT).rc == EXIT["setup"]
    rig.set_token("test-token")
    run = rig.run()
    assert run.rc == 0, run
    assert rig.list()[pid(1)]["state"] == "scheduled"
    assert [e["status"] for e in rig.deletes()] == [403, 204]
    # Between the two DELETEs, a look.
    log = [(e["method"], e["status"]) for e in rig.fake.log if e["phone_id"] == pid(1)]
    assert log[log.index(("DELETE", 403)) + 1] == ("GET", 200), log


def test_a_reload_with_the_right_key_resumes_a_paused_daemon(make_rig):
    """A running daemon paused by a 401 resumes at the reload that brings the
    right key (it does not wait out the pause), and releases the phone once."""
    rig = make_rig([phone(1)])
    rig.set_token("not-the-key")
    rig.write_config([{"id": pid(1)}])
    proc = rig.start()
    wait_for(lambda: MSG["auth_paused"] in stderr_of(proc), what="the pause", timeout=AUTH_TIMEOUT)
    assert rig.db_rows()[pid(1)]["state"] == "pending"
    rig.set_token("test-token")
    reply = rig.ctl("reload")
    assert "reloaded" in reply.stdout, reply
    wait_for(lambda: rig.db_rows()[pid(1)]["state"] == "scheduled", what="the release", timeout=20)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    assert "Resuming calls." in stderr_of(proc)
    assert [e["status"] for e in rig.deletes()] == [204]
    rig.assert_exactly_once(one_delete=True)


def test_a_paused_daemon_tries_the_key_again_after_auth_retry(make_rig):
    """A key refused for lack of a permission: once the permission is granted
    in the dashboard, a running daemon goes on by itself after api.auth_retry,
    without a reload, and the phone whose DELETE was refused is looked at
    before it is sent again, then released once."""
    rig = make_rig([phone(1)])
    rig.set_token(VIEW_ONLY_TOKEN)
    rig.write_config([{"id": pid(1)}], api={"auth_retry": 1.0})
    proc = rig.start()
    wait_for(lambda: MSG["auth_paused"] in stderr_of(proc), what="the pause", timeout=AUTH_TIMEOUT)
    assert "it is tried again in 1 s" in stderr_of(proc)
    rig.fake.configure(token=VIEW_ONLY_TOKEN, view_only_token=None)   # the key may delete now
    wait_for(lambda: rig.db_rows()[pid(1)]["state"] == "scheduled", what="the release", timeout=20)
    proc.terminate()
    assert proc.wait(10) == 0, stderr_of(proc)
    assert "Resuming calls." in stderr_of(proc)
    assert [e["status"] for e in rig.deletes()] == [403, 204]
    log = [(e["method"], e["status"]) for e in rig.fake.log if e["phone_id"] == pid(1)]
    assert log[log.index(("DELETE", 403)) + 1] == ("GET", 200), log
    rig.assert_exactly_once()
