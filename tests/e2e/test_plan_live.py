"""`retirectl plan --live`: what the next pass would do with each declared phone,
against the account as the API lists it now, writing nothing.

Every run here checks what must hold whatever the preview says: only GETs reach
the API (never a DELETE), and the ledger is as it was (no file made where there
was none; bytes, time and WAL unchanged where there was one).
"""

import hashlib
import json
import os
import re
import subprocess
import time

from conftest import EXIT, MSG, RETIRECTL, RUN_TIMEOUT, child_env, num, phone, pid, wait_for

LATER = "2030-01-01T00:00:00Z"
LATER_EPOCH = 1893456000


def live(rig, *args, rc=None):
    """retirectl plan --live (--json parsed); only GETs reach the API."""
    before = len(rig.fake.log)
    p = rig.ctl("plan", "--live", *args, check=False)
    if rc is not None:
        assert p.returncode == rc, "rc=%d\n%s\n%s" % (p.returncode, p.stdout, p.stderr)
    sent = rig.fake.log[before:]
    assert {e["method"] for e in sent} <= {"GET"}, sent
    return p


def live_json(rig, rc=None):
    p = live(rig, "--json", rc=rc)
    return {o["key"]: o for o in json.loads(p.stdout)}, p


def ledger_print(rig):
    """What the ledger holds: the file's bytes and mtime, and the WAL's bytes (a
    missing WAL is an empty one: SQLite makes an empty one for any reader of a
    WAL ledger, as for every read command; the -shm index is the readers' and
    writers' shared memory, which a reader marks by design)."""
    with open(rig.ledger, "rb") as f:
        main = (hashlib.sha256(f.read()).hexdigest(), os.stat(rig.ledger).st_mtime_ns)
    wal = b""
    if os.path.exists(rig.ledger + "-wal"):
        with open(rig.ledger + "-wal", "rb") as f:
            wal = f.read()
    return main, hashlib.sha256(wal).hexdigest()


def test_every_verdict_against_the_account_with_no_ledger(make_rig):
    """Each `would` from the account as it is, before any daemon ran: no ledger is
    made, the declarations are seen as the daemon would apply them (hold 0 here),
    and a number the listing by page lacks is called absent only once a listing
    by cursor agrees."""
    rig = make_rig([phone(1, provider="custom"), phone(2), phone(3, status="reserved"),
                    phone(4, status="released"), phone(5, scheduled_release_at=LATER),
                    phone(6), phone(7, number=num(6)), phone(8), phone(9)])
    rig.write_config([{"number": num(1)}, {"number": num(2)}, {"number": num(3)}, {"number": num(4)},
                      {"id": pid(5)}, {"number": num(6)}, {"id": pid(8), "number": num(88)},
                      {"number": num(99)}, {"number": num(9), "not_before": LATER}])
    rows, p = live_json(rig, rc=2)
    would = {k: (o["would"], o["then"]) for k, o in rows.items()}
    assert would == {
        num(1): ("release", None), num(2): ("order", None), num(3): ("defer", None), num(4): ("none", None),
        pid(5): ("none", None), num(6): ("refuse", None), pid(8): ("refuse", None), num(99): ("refuse", None),
        num(9): ("wait", "order")}, rows
    assert rows[num(9)]["until"] == LATER
    assert "2 live phones carry this number" in rows[num(6)]["why"]
    assert "disagree" in rows[pid(8)]["why"] or "has it as %s" % num(8) in rows[pid(8)]["why"]
    assert "not in the account" in rows[num(99)]["why"]
    assert "ordered" in rows[pid(5)]["why"]
    assert rows[num(1)]["id"] == pid(1) and rows[num(1)]["number"] == num(1) and rows[num(1)]["change"] == "add"
    assert not os.path.exists(rig.ledger)
    # By page first (one page here), then the account again by cursor for num(99).
    lists = [e["query"] for e in rig.fake.log if e["phone_id"] is None]
    assert lists[0].startswith("page=1&") and "page=" not in lists[-1], lists

    p = live(rig, rc=2)
    lines = p.stdout.splitlines()
    assert [l.split()[0] for l in lines[:-1]] == ["release", "order", "defer", "refuse", "refuse", "refuse", "wait"]
    assert lines[-1].startswith("Live plan: 1 to release, 1 to order, 1 waiting, 1 deferred, 3 refused, "
                                "2 with nothing to do"), lines[-1]
    assert rig.deletes() == [] and not os.path.exists(rig.ledger)


def test_a_declaration_not_applied_yet_waits_its_hold_from_when_it_is(make_rig):
    """New declarations under safety.hold: the daemon would hold each from when it
    applies it, so each waits that long from now, and says what comes then."""
    rig = make_rig([phone(1, provider="custom"), phone(2), phone(3, status="reserved")])
    rig.write_config([{"number": num(n)} for n in (1, 2, 3)], safety={"hold": 600})
    t0 = time.time()
    rows, _ = live_json(rig, rc=0)
    assert {k: (o["would"], o["then"]) for k, o in rows.items()} == {
        num(1): ("wait", "release"), num(2): ("wait", "order"), num(3): ("wait", "defer")}, rows
    for o in rows.values():
        until = time.mktime(time.strptime(o["until"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert t0 + 599 <= until <= time.time() + 602, o
        assert "safety.hold" in o["why"]
    assert not os.path.exists(rig.ledger)


def test_rows_on_record_beside_a_running_daemon_and_the_ledger_untouched(make_rig):
    """Rows already in the ledger are seen with their state and their hold's
    honest end.  A preview reads the ledger without a lock and changes nothing in
    it, also while the daemon (its only writer) runs; a pause on record holds
    every release."""
    rig = make_rig([phone(1, provider="custom"), phone(2, provider="custom"), phone(3), phone(4, status="reserved"),
                    phone(5), phone(6, number=num(5))])
    rig.write_config([{"number": num(n)} for n in (1, 4, 5)])
    assert rig.run().rc == EXIT["operator"]             # num(5): two live phones, failed
    rig.fake.add_phones([phone(4)])                     # verified since: assigned now
    rig.write_config([{"number": num(n)} for n in (1, 2, 3, 4, 5)], safety={"hold": 600})
    before = ledger_print(rig)
    rows, _ = live_json(rig, rc=2)
    assert (rows[num(1)]["would"], rows[num(1)]["state"]) == ("none", "released")
    assert (rows[num(5)]["would"], rows[num(5)]["state"]) == ("none", "failed")
    assert "left to an operator ('retirectl retry %s')" % num(5) in rows[num(5)]["why"]
    assert rows[num(2)]["would"] == rows[num(3)]["would"] == "wait"
    # Deferred on record, on hold no more: the daemon's start looks again (a resync), and orders it.
    assert (rows[num(4)]["would"], rows[num(4)]["state"]) == ("order", "deferred"), rows[num(4)]
    assert ledger_print(rig) == before

    d = rig.start()
    wait_for(lambda: rig.db_rows().get(num(4), {}).get("state") == "scheduled", what="the daemon ordering num(4)")
    assert rig.db_rows()[num(3)]["hold_len"] == 600
    held = rig.list()[num(3)]["held_until"]
    rows, _ = live_json(rig, rc=0)
    assert (rows[num(3)]["would"], rows[num(3)]["until"], rows[num(3)]["then"]) == ("wait", held, "order")
    assert rows[num(3)]["change"] is None              # on record, as the daemon applied it
    assert d.poll() is None
    d.kill()
    d.wait(5)

    rig.write_config([{"number": num(n)} for n in (1, 2, 3, 4, 5)])
    rig.ctl("pause", "OPS-1 looking first")             # no daemon: into the ledger, under its lock
    before = ledger_print(rig)
    p = live(rig, rc=0)
    assert "PAUSED by uid" in p.stdout and "OPS-1 looking first" in p.stdout, p.stdout
    assert re.search(r"^wait +%s.*paused" % re.escape(num(2)), p.stdout, re.M), p.stdout
    assert ledger_print(rig) == before
    assert [e["phone_id"] for e in rig.deletes()] == [pid(1), pid(4)]   # the daemon's, and no other


def test_the_blast_radius_guard_holds_and_names_the_preview(make_rig):
    """More new releases than safety.max_new_releases: none is applied, so each
    waits for the approval; the preview says what approving would release, and
    the guard's messages point to it."""
    rig = make_rig([phone(1, provider="custom"), phone(2), phone(3)])
    rig.write_config([{"number": num(n)} for n in (1, 2, 3)], safety={"max_new_releases": 2})
    rows, _ = live_json(rig, rc=0)
    assert {o["would"] for o in rows.values()} == {"wait"} and all(o["until"] is None for o in rows.values())
    assert rows[num(1)]["then"] == "release" and "blast-radius" in rows[num(1)]["why"]
    p = live(rig, rc=0)
    plan_hash = re.search(r"^Plan ([0-9a-f]{12}) needs approval", p.stdout, re.M).group(1)
    assert "('retirectl approve %s'), it would release 1 and order 2" % plan_hash in p.stdout, p.stdout
    assert "retirectl plan --live" in rig.ctl("plan", check=False).stdout
    run = rig.run()
    assert "retirectl plan --live" in run.events(MSG["approval_needed"])[0]["line"]


def test_exit_codes_and_clear_errors(make_rig):
    """0 when nothing would be released or ordered, 2 when something would, 1 on
    an error, said in one line: an API that cannot be reached, a key others may
    read, a config that does not load."""
    rig = make_rig([phone(1, status="released"), phone(2, status="reserved"), phone(3, provider="custom")])
    # Named by id, and fewer than a listing's worth: a GET each, as the daemon would.
    rig.write_config([{"id": pid(1)}, {"id": pid(2)}, {"id": pid(98)}])
    rows, _ = live_json(rig, rc=0)
    assert {k: o["would"] for k, o in rows.items()} == {pid(1): "none", pid(2): "defer", pid(98): "refuse"}
    assert "not in the account (HTTP 404)" in rows[pid(98)]["why"]
    assert sorted(e["phone_id"] for e in rig.fake.log) == sorted([pid(1), pid(2), pid(98)])
    # A GET that fails is asked again on the retry budget; one that keeps failing is no verdict.
    rig.fake.script(pid(2), "GET", [503])
    assert live_json(rig, rc=0)[0][pid(2)]["would"] == "defer"
    rig.fake.script(pid(2), "GET", [503, 503, 503])
    p = live(rig, rc=1)
    assert "cannot see the account at %s: HTTP 503" % rig.fake.url in p.stderr and p.stdout == "", p.stderr

    rig.write_config([{"id": pid(3)}], safety={"dry_run": True})
    rows, _ = live_json(rig, rc=0)
    assert rows[pid(3)]["would"] == "none" and "dry_run" in rows[pid(3)]["why"], rows
    # At an operator's shell: the key where the unit's LoadCredential= takes it, beside the config.
    rig.write_config([{"id": pid(3)}], api={"token_file": ""})
    p = live(rig, rc=1)
    assert "cannot use the API key in %s/api-token: No such file" % rig.dir in p.stderr, p.stderr
    with open(os.path.join(rig.dir, "api-token"), "w") as f:
        f.write("test-token\n")
    os.chmod(os.path.join(rig.dir, "api-token"), 0o600)
    assert live(rig, rc=2).stdout.startswith("release  %s" % pid(3))

    rig.write_config([{"number": num(1)}], api={"base_url": "http://127.0.0.1:9"})
    p = live(rig, rc=1)
    assert "the API at http://127.0.0.1:9 cannot be reached" in p.stderr and p.stdout == "", p.stderr

    rig.write_config([{"number": num(1)}])
    rig.set_token("test-token", mode=0o644)
    p = live(rig, rc=1)
    assert "cannot use the API key in %s: group or others may access it" % rig.token_file in p.stderr, p.stderr
    rig.set_token("wrong-token")
    p = live(rig, rc=1)
    assert "refused the key" in p.stderr, p.stderr

    rig.set_token("test-token")
    p = rig.ctl("status", "--live", check=False)
    assert p.returncode == 1 and "--live does not work with status, only with plan" in p.stderr, p.stderr
    rig.write_config([{"number": "not a number"}])
    p = live(rig, rc=1)
    assert "retired.conf:" in p.stderr and p.stdout == ""
    assert rig.fake.requests(method="DELETE") == [] and not os.path.exists(rig.ledger)


def test_at_most_half_the_pace(make_rig):
    """The preview's calls leave at pace.rate / 2 (the burst as configured): a
    daemon running beside it keeps the other half.  Judged, as in
    test_pacing.py, from when each call left by retirectl's own clock (its debug
    log), which the machine's load does not move; no call arrived before it was
    counted as sent."""
    rig = make_rig([phone(n) for n in range(1, 1001)])
    rate, burst = 20.0, 2
    rig.write_config([{"number": num(500)}], pace={"rate": rate, "burst": burst, "concurrency": 4})
    p = subprocess.run([RETIRECTL, "-c", rig.config_path, "plan", "--live"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=RUN_TIMEOUT,
                       env=dict(child_env(), RETIRED_LOG_LEVEL="debug"))
    assert p.returncode == 2 and p.stdout.startswith("order    %s" % num(500)), p
    sent = sorted(float(t) for t in re.findall(r"^retirectl: start GET \S+ at ([0-9.]+)", p.stderr, re.M))
    arrived = sorted(e["t"] for e in rig.fake.log)
    assert len(sent) == len(arrived) >= 11, (sent, arrived)    # ten pages, and the last once more
    for i in range(len(sent)):
        for j in range(i + 1, len(sent)):
            assert j - i + 1 <= burst + rate / 2 * (sent[j] - sent[i]) + 0.001, (i, j, sent[j] - sent[i])
    assert all(a >= s - 0.000002 for s, a in zip(sent, arrived))
