"""Phones in use (issue 31): a phone an agent answers or places calls on is not
released unless its declaration or safety.in_use says "release"; detached, it
goes by itself; every view shows it, and the phone's nickname."""

import csv
import io
import json

from conftest import EXIT, MSG, num, phone, pid, stderr_of, wait_for

AGENT_IN = "00000000-0000-4000-8000-0000000000a1"
AGENT_OUT = "00000000-0000-4000-8000-0000000000b2"


def test_in_use_is_kept_and_shown_everywhere(make_rig):
    rig = make_rig([phone(1, nickname="Madrid shop", inbound_agent_id=AGENT_IN),
                    phone(2, outbound_agent_id=AGENT_OUT.upper(), provider="custom"),
                    phone(3, nickname='Line\nbreak, "quoted"\x1b[2J'),
                    phone(4, provider="custom", inbound_agent_id=AGENT_IN, outbound_agent_id=AGENT_OUT),
                    phone(5, inbound_agent_id=AGENT_IN)])
    rig.write_config([{"number": num(1)}, {"id": pid(2)}, {"number": num(3)},
                      {"number": num(4), "in_use": "release"}, {"number": num(5), "in_use": "refuse"}])

    # plan --live, before anything: refuse with the agents in why, or release.
    live = {o["key"]: o for o in json.loads(rig.ctl("plan", "--live", "--json", check=False).stdout)}
    assert live[num(1)]["would"] == "refuse" and AGENT_IN in live[num(1)]["why"], live[num(1)]
    assert live[num(1)]["nickname"] == "Madrid shop"
    assert live[pid(2)]["would"] == "refuse" and ("outbound agent " + AGENT_OUT) in live[pid(2)]["why"]
    assert live[num(4)]["would"] == "release" and AGENT_OUT in live[num(4)]["why"], live[num(4)]

    run = rig.run()
    # Phones in use need an operator: --once says so.
    assert run.rc == EXIT["operator"], run
    assert sorted(e["phone_id"] for e in rig.deletes()) == [pid(3), pid(4)]
    rows = rig.list()
    assert {k: rows[k]["state"] for k in rows} == {num(1): "in_use", pid(2): "in_use", num(3): "scheduled",
                                                   num(4): "released", num(5): "in_use"}

    # One warning per phone, its own MESSAGE_ID, the agents as fields, the nickname.
    ev = run.events(MSG["in_use"])
    assert sorted(e["PHONE_ID"] for e in ev) == sorted([pid(1), pid(2), pid(5)]), run
    one = run.outcome("in_use", number=num(1))
    assert one["INBOUND_AGENT_ID"] == AGENT_IN and "OUTBOUND_AGENT_ID" not in one
    assert "PHONE_NICKNAME=Madrid shop" in one["line"] and ("retirectl show " + num(1)) in one["line"]
    assert run.outcome("in_use", phone_id=pid(2))["OUTBOUND_AGENT_ID"] == AGENT_OUT
    # The API's text never starts a line of its own, nor reaches one raw.
    assert not any(line.startswith("break") for line in run.lines) and "\x1b" not in run.stderr

    shown = rig.show(num(1))
    assert (shown["nickname"], shown["in_use"], shown["inbound_agent_id"], shown["outbound_agent_id"]) == \
        ("Madrid shop", "refuse", AGENT_IN, None)
    assert rig.show(num(4))["in_use"] == "release" and rig.show(num(4))["inbound_agent_id"] is None
    text = rig.ctl("show", num(1), probe=True).stdout
    assert "nickname:     Madrid shop" in text and ("agents:       inbound " + AGENT_IN) in text and "if in use:    refuse" in text
    in_use = rig.ctl("list", "--state", "in_use", probe=True).stdout.splitlines()[1:]
    assert sorted(line.split()[0] for line in in_use) == sorted([num(1), pid(2), num(5)])
    assert rig.status()["counts"]["in_use"] == 3
    assert 'retired_phones{state="in_use"} 3' in rig.ctl("status", "--openmetrics", probe=True).stdout

    # The export: a nickname column and field; the API's text never breaks a row.
    out = rig.ctl("history", "--csv", probe=True).stdout
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert {r["nickname"] for r in rows if r["key"] == num(1)} == {"Madrid shop"}
    assert {r["nickname"] for r in rows if r["key"] == num(3)} == {'Line?break, "quoted"?[2J'}
    steps = json.loads(rig.ctl("history", "--json", probe=True).stdout)
    assert {s["nickname"] for s in steps if s["key"] == num(1)} == {"Madrid shop"}

    # A second run: still in use, nothing new said, nothing sent.
    again = rig.run()
    assert again.rc == EXIT["operator"] and run.events(MSG["in_use"]) and not again.events(MSG["in_use"]), again
    assert sorted(e["phone_id"] for e in rig.deletes()) == [pid(3), pid(4)]


def test_detached_it_goes_and_released_when_said(make_rig):
    """The daemon runs: a phone an agent is on waits in_use; the agent moves away
    and the phone goes at the next pass (a resync here), its hold long over; one
    declared in_use = "release" goes once its hold is over, agent and all."""
    rig = make_rig([phone(1, nickname="Support ES", inbound_agent_id=AGENT_IN, provider="custom"),
                    phone(2, outbound_agent_id=AGENT_OUT, provider="custom")])
    rig.write_config([{"number": num(1)}, {"number": num(2), "in_use": "release"}],
                     safety={"hold": 1}, extra="resync_interval = 1;")
    proc = rig.start()
    wait_for(lambda: rig.db_rows().get(num(1), {}).get("state") == "in_use", what="phone 1 kept in use")
    wait_for(lambda: rig.db_rows().get(num(2), {}).get("state") == "released", what="phone 2 released as said")
    assert rig.deletes(pid(1)) == []
    assert rig.db_rows()[num(1)]["inbound_agent"] == AGENT_IN

    rig.fake.set_agents(pid(1))
    wait_for(lambda: rig.db_rows()[num(1)]["state"] == "released", what="phone 1 released once detached")
    row = rig.db_rows()[num(1)]
    assert (row["inbound_agent"], row["outbound_agent"], row["nickname"]) == (None, None, "Support ES")
    assert "no agent on it any more" in stderr_of(proc)
    proc.terminate()
    assert proc.wait(10) == 0
    rig.assert_exactly_once(one_delete=True)


def test_an_agent_attached_again_is_caught_at_the_next_pass(make_rig):
    """retirectl retry looks at an in_use row now; attached again before, it stays."""
    rig = make_rig([phone(1, inbound_agent_id=AGENT_IN)])
    rig.write_config([{"number": num(1)}])
    assert rig.run().rc == EXIT["operator"]
    assert rig.ctl("retry", num(1)).returncode == 0
    assert rig.list()[num(1)]["state"] == "pending"
    run = rig.run()
    assert run.rc == EXIT["operator"] and len(run.events(MSG["in_use"])) == 1, run
    assert rig.deletes() == []
    rig.fake.set_agents(pid(1))
    run = rig.run()
    assert run.rc == EXIT["settled"], run
    assert rig.list()[num(1)]["state"] == "scheduled"
    assert len(rig.deletes()) == 1
