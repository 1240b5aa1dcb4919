"""Tests of the fake Diga API itself: run with /usr/bin/python3 -m pytest -q tests/fake-diga"""

import email.utils
import http.client
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_diga import FakeDiga, load_account, make_account, parse_ts  # noqa: E402

PYTHON = "/usr/bin/python3"
TOKEN, VIEW = "test-token", "view-only-token"
NEVER = "80000000-0000-4000-8000-000000000000"      # sorts mid-account, never a phone's id


class Resp:
    def __init__(self, r):
        self.status, self.headers, self.body = r.status, r.headers, r.read()

    @property
    def json(self):
        return json.loads(self.body)


class Client:
    """One keep-alive connection to the fake."""

    def __init__(self, fake, token=TOKEN):
        self.conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        self.token = token

    def req(self, method, path, token=None, body=None, headers=None):
        h = dict(headers or {})
        tok = self.token if token is None else token
        if tok:
            h["Authorization"] = "Bearer " + tok
        data = None
        if body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        self.conn.request(method, path, body=data, headers=h)
        return Resp(self.conn.getresponse())

    def close(self):
        self.conn.close()


@pytest.fixture
def fake():
    f = FakeDiga(make_account(250, seed=7))
    f.start()
    yield f
    f.stop()


@pytest.fixture
def cli(fake):
    c = Client(fake)
    yield c
    c.close()


def pick(fake, provider=None, status="assigned", n=1):
    """The first n phones (by id) matching provider/status, not scheduled."""
    out = [p["id"] for p in sorted(fake.phones.values(), key=lambda p: p["id"])
           if p["status"] == status and (provider is None or p["telephony_provider"] == provider)
           and not p["scheduled_release_at"]]
    assert len(out) >= n
    return out[0] if n == 1 else out[:n]


def walk(cli, query=""):
    ids, after, pages = [], None, 0
    while True:
        r = cli.req("GET", "/v1/phone/?limit=100" + query + ("&after=" + after if after else ""))
        assert r.status == 200
        d = r.json
        ids += [p["id"] for p in d["data"]]
        pages += 1
        if not d["has_more"]:
            return ids, pages
        assert d["last_id"] == d["data"][-1]["id"]
        after = d["last_id"]


# ---------------------------------------------------------------- accounts

def test_make_account_is_deterministic_and_patterned():
    a, b = make_account(120, seed=5), make_account(120, seed=5)
    assert a == b
    assert make_account(120, seed=6)[0]["id"] != a[0]["id"]
    assert a[0]["number"] == "+34910000000" and a[1]["number"] == "+34910000001"
    assert [p["status"] for p in a[7:11]] == ["reserved", "pending_verification", "released", "finished"]
    assert a[57]["status"] == "reserved" and a[6]["status"] == "assigned"
    assert a[2]["telephony_provider"] == "custom" and a[3]["telephony_provider"] == "netelip"
    assert a[8]["telephony_provider"] == "netelip"       # pending_verification: never custom
    assert a[17]["number"] == "trunk17@sip.example.com"
    assert a[7]["checkout_url"].startswith("https://checkout.stripe.com/")
    assert all(p["id"] == p["id"].lower() and len(p["id"]) == 36 for p in a)
    assert len({p["id"] for p in a}) == 120


def test_load_account_fills_defaults(tmp_path):
    f = tmp_path / "acct.json"
    f.write_text(json.dumps([{"id": "3C90C3CC-0D44-4B50-8888-8DD25736052A", "number": "+34910123456"},
                             {"status": "reserved", "telephony_provider": "netelip"}]))
    phones = load_account(str(f))
    assert phones[0]["id"] == "3c90c3cc-0d44-4b50-8888-8dd25736052a"
    assert phones[0]["status"] == "assigned" and phones[0]["telephony_provider"] == "netelip"
    assert phones[0]["scheduled_release_at"] is None and phones[0]["x_internal"] == 1
    assert phones[1]["status"] == "reserved" and len(phones[1]["id"]) == 36
    f.write_text(json.dumps([{"status": "gone"}]))
    with pytest.raises(ValueError):
        load_account(str(f))


# ---------------------------------------------------------------- list

def test_paging_sees_every_phone_once(fake, cli):
    ids, pages = walk(cli)
    assert pages == 3
    assert len(ids) == 250 and set(ids) == set(fake.phones)
    assert ids == sorted(ids, reverse=True)        # default order desc


def test_churn_moves_the_account_at_each_list_request(fake, cli):
    """A busy account: each list request first adds and removes phones;
    the protected ones stay, GETs and DELETEs do not churn."""
    keep = pick(fake, n=3)
    before = set(fake.phones)
    fake.configure(churn={"add": 5, "remove": 2, "protect": keep})
    r = cli.req("GET", "/v1/phone/?limit=10&page=1&order=asc")
    assert r.status == 200 and r.json["total_pages"] == math.ceil(253 / 10)
    after = set(fake.phones)
    assert len(after - before) == 5 and len(before - after) == 2 and set(keep) <= after
    assert all(fake.phones[i]["status"] == "assigned" for i in after - before)
    assert cli.req("GET", "/v1/phone/" + keep[0]).status == 200
    assert set(fake.phones) == after
    fake.configure(churn=None)
    cli.req("GET", "/v1/phone/?limit=10")
    assert set(fake.phones) == after
    with pytest.raises(ValueError):
        fake.configure(churn={"add": -1})


def test_paging_asc_before_and_page(cli):
    p1 = cli.req("GET", "/v1/phone/?limit=10&order=asc").json
    p2 = cli.req("GET", "/v1/phone/?limit=10&order=asc&after=" + p1["last_id"]).json
    assert p1["has_more"] and p2["data"][0]["id"] > p1["last_id"]
    back = cli.req("GET", "/v1/phone/?limit=10&order=asc&before=" + p2["first_id"]).json
    assert [p["id"] for p in back["data"]] == [p["id"] for p in p1["data"]]
    assert back["has_more"] is False and back["current_page"] is None and back["total_pages"] is None
    desc = [p["id"] for p in cli.req("GET", "/v1/phone/?limit=100").json["data"]]
    pg = cli.req("GET", "/v1/phone/?limit=10&page=2").json
    assert [p["id"] for p in pg["data"]] == desc[10:20]
    assert (pg["current_page"], pg["total_pages"], pg["has_more"]) == (2, 25, True)


def pages(cli, query):
    """Every offset page (page=1..total_pages) of `query`, and the page-1 answer."""
    first = cli.req("GET", "/v1/phone/?page=1" + query).json
    ids, n = [], first["total_pages"]
    for page in range(1, n + 1):
        d = cli.req("GET", "/v1/phone/?page=%d%s" % (page, query)).json
        assert d["current_page"] == page and d["total_pages"] == n
        assert d["has_more"] == (page < n)
        assert (d["first_id"], d["last_id"]) == (d["data"][0]["id"], d["data"][-1]["id"])
        ids += [p["id"] for p in d["data"]]
    return ids, first


def by_value(ids, order, cur, x, limit=10):
    """The page the fake gives when cursor `cur` (after|before) is compared by value."""
    asc = sorted(ids)
    if order == "asc":
        seq = [i for i in asc if i > x] if cur == "after" else [i for i in asc if i < x][-limit:]
        return seq[:limit]
    desc = asc[::-1]
    return [i for i in desc if i < x][:limit] if cur == "after" else [i for i in desc if i > x][-limit:]


def gone_phone(fake, cli):
    """The id of a phone that existed, was released with custom_release=gone and is gone."""
    fake.configure(custom_release="gone")
    pid = pick(fake, "custom", n=60)[-1]                      # not at either end of the list
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 204
    assert pid not in fake.phones and cli.req("GET", "/v1/phone/" + pid).status == 404
    fake.configure(custom_release="released")
    return pid


@pytest.mark.parametrize("cur", ["after", "before"])
@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("which", ["never", "deleted"])
def test_gone_cursor_modes(fake, cli, cur, order, which):
    x = NEVER if which == "never" else gone_phone(fake, cli)
    assert x not in fake.phones
    q = "/v1/phone/?limit=10&order=%s&%s=%s" % (order, cur, x)
    ids = lambda r: [p["id"] for p in r.json["data"]]
    # value (the default): compared by value, as if the phone were still there.
    r = cli.req("GET", q)
    assert r.status == 200 and ids(r) == by_value(fake.phones, order, cur, x) and len(ids(r)) == 10
    r = cli.req("POST", "/_fake/config", body={"gone_cursor": "400"})
    assert r.status == 200 and r.json["gone_cursor"] == "400"
    r = cli.req("GET", q)
    assert r.status == 400 and r.json == {"status": "error", "error_code": "NOT_VALID_FIELD",
                                          "message": "Invalid field value in query parameters"}
    fake.configure(gone_cursor="empty")
    r = cli.req("GET", q)
    assert r.status == 200 and r.json == {"data": [], "first_id": None, "last_id": None,
                                          "has_more": False, "current_page": None, "total_pages": None}
    fake.configure(gone_cursor="restart")
    r = cli.req("GET", q)
    first = cli.req("GET", "/v1/phone/?limit=10&order=" + order)
    assert r.status == 200 and r.body == first.body and first.json["has_more"] is True
    assert ids(r) == sorted(fake.phones, reverse=order == "desc")[:10]
    assert [e["status"] for e in fake.requests(method="GET") if x in e["query"]][-4:] == [200, 400, 200, 200]


@pytest.mark.parametrize("mode", ["value", "400", "empty", "restart"])
def test_gone_cursor_leaves_existing_phones_alone(fake, cli, mode):
    # A released custom phone stays listed, so it is not gone; nor is a phone that the
    # status filter leaves out. Both are compared by value whatever the mode.
    released = pick(fake, "custom", n=60)[-1]
    assert cli.req("DELETE", "/v1/phone/" + released).status == 204
    assert fake.phones[released]["status"] == "released"
    reserved = pick(fake, status="reserved", n=3)[1]
    fake.configure(gone_cursor=mode)
    for order in ("asc", "desc"):
        for cur in ("after", "before"):
            r = cli.req("GET", "/v1/phone/?limit=10&order=%s&%s=%s" % (order, cur, released))
            assert r.status == 200
            assert [p["id"] for p in r.json["data"]] == by_value(fake.phones, order, cur, released)
            r = cli.req("GET", "/v1/phone/?limit=100&status=assigned&order=%s&%s=%s" % (order, cur, reserved))
            assigned = [i for i, p in fake.phones.items() if p["status"] == "assigned"]
            assert [p["id"] for p in r.json["data"]] == by_value(assigned, order, cur, reserved, 100)
    # Re-adding a gone phone makes it exist again.
    x = gone_phone(fake, cli)
    fake.configure(gone_cursor=mode)
    fake.add_phones([{"id": x}])
    assert cli.req("GET", "/v1/phone/?limit=10&after=" + x).json["data"][0]["id"] == \
        by_value(fake.phones, "desc", "after", x)[0]


def test_gone_cursor_config_values(fake, cli):
    assert fake.config()["gone_cursor"] == "value"
    assert cli.req("POST", "/_fake/config", body={"gone_cursor": 400}).json["gone_cursor"] == "400"
    for bad in ("404", "", None, True, "Value"):
        assert cli.req("POST", "/_fake/config", body={"gone_cursor": bad}).status == 400
    assert fake.config()["gone_cursor"] == "400"
    with FakeDiga(make_account(5, 1), gone_cursor="empty") as f:
        c = Client(f)
        d = c.req("GET", "/v1/phone/?after=" + NEVER).json
        assert d["data"] == [] and d["has_more"] is False
        c.close()


@pytest.mark.parametrize("query", ["&limit=7&order=asc", "&limit=7&order=desc", "&limit=7",
                                   "&limit=100&order=asc", "&limit=50", "&limit=5&status=reserved",
                                   "&limit=3&status=reserved&order=asc",
                                   "&limit=2&status=reserved"])
def test_offset_paging_matches_cursor_order(fake, cli, query):
    # A client may mix the two kinds of paging: page N must hold exactly the items
    # that the cursor walk puts at positions (N-1)*limit .. N*limit-1, in both orders.
    by_page, first = pages(cli, query)
    cursor = []
    after = None
    while True:
        d = cli.req("GET", "/v1/phone/?" + query[1:] + ("&after=" + after if after else "")).json
        cursor += [p["id"] for p in d["data"]]
        if not d["has_more"]:
            break
        after = d["last_id"]
    assert by_page == cursor and len(set(by_page)) == len(by_page)
    limit = int(re.search(r"limit=(\d+)", query).group(1))
    st = re.search(r"status=(\w+)", query)
    n = sum(1 for p in fake.phones.values() if st is None or p["status"] == st.group(1))
    assert len(by_page) == n and first["total_pages"] == math.ceil(n / limit)


def test_offset_paging_edges(fake, cli):
    n = len(fake.phones)
    assert cli.req("GET", "/v1/phone/?page=1&limit=100").json["total_pages"] == 3
    assert cli.req("GET", "/v1/phone/?page=1&limit=50").json["total_pages"] == 5    # exact multiple
    assert cli.req("GET", "/v1/phone/?page=1&limit=1").json["total_pages"] == n
    last = cli.req("GET", "/v1/phone/?page=3&limit=100&order=asc").json
    assert len(last["data"]) == 50 and last["has_more"] is False
    assert last["data"][-1]["id"] == max(fake.phones)
    last = cli.req("GET", "/v1/phone/?page=3&limit=100").json         # desc: the smallest ids
    assert len(last["data"]) == 50 and last["data"][-1]["id"] == min(fake.phones)
    for order in ("asc", "desc"):                                      # past the end: empty, 200
        for page in (4, 1000):
            r = cli.req("GET", "/v1/phone/?page=%d&limit=100&order=%s" % (page, order))
            assert r.status == 200 and r.json == {"data": [], "first_id": None, "last_id": None,
                                                  "has_more": False, "current_page": page,
                                                  "total_pages": 3}
    # A filter that matches nothing counts as 0 phones, like an empty account.
    r = cli.req("GET", "/v1/phone/?page=1&inbound_agent_id=00000000-0000-4000-8000-000000000000")
    assert r.json == {"data": [], "first_id": None, "last_id": None, "has_more": False,
                      "current_page": 1, "total_pages": 0}


def test_offset_paging_empty_account():
    with FakeDiga([]) as f:
        c = Client(f)
        for q in ("page=1", "page=1&order=asc", "page=2&limit=5"):
            d = c.req("GET", "/v1/phone/?" + q).json
            assert (d["data"], d["has_more"], d["total_pages"], d["first_id"]) == ([], False, 0, None)
        assert c.req("GET", "/v1/phone/").json["data"] == []
        c.close()


def test_page_with_cursor_is_422(fake, cli):
    pid = min(fake.phones)
    for cur in ("after", "before"):
        r = cli.req("GET", "/v1/phone/?page=1&%s=%s" % (cur, pid))
        assert r.status == 422
        assert r.json == {"status": "error", "error_code": "INVALID_PAGINATION_PARAMETERS",
                          "message": "Cannot specify both 'page' and cursor parameters"}


def test_paging_cursor_ignores_page(fake, cli):
    r = cli.req("POST", "/_fake/config", body={"paging": "cursor"})
    assert r.status == 200 and r.json["paging"] == "cursor"
    mid = sorted(fake.phones)[100]
    for order in ("asc", "desc"):
        base = "/v1/phone/?limit=10&order=" + order
        first = cli.req("GET", base)
        assert first.json["has_more"] is True
        assert (first.json["current_page"], first.json["total_pages"]) == (None, None)
        for page in ("1", "2", "999", "0", "abc", ""):          # accepted, whatever it is
            r = cli.req("GET", base + "&page=" + page)
            assert r.status == 200 and r.body == first.body
        for cur in ("after", "before"):                          # with a cursor: not an error
            plain = cli.req("GET", "%s&%s=%s" % (base, cur, mid))
            r = cli.req("GET", "%s&page=3&%s=%s" % (base, cur, mid))
            assert r.status == 200 and r.body == plain.body and len(r.json["data"]) == 10
            assert (r.json["current_page"], r.json["total_pages"]) == (None, None)
    # The cursor is then the only paging, so gone_cursor applies to it.
    fake.configure(gone_cursor="400")
    assert cli.req("GET", "/v1/phone/?page=1&after=" + NEVER).status == 400
    fake.configure(paging="both")                                # back: page works again
    assert cli.req("GET", "/v1/phone/?page=1&after=" + NEVER).status == 422
    d = cli.req("GET", "/v1/phone/?limit=10&page=2").json
    assert (d["current_page"], d["total_pages"]) == (2, 25)
    assert cli.req("GET", "/v1/phone/?page=abc").status == 422


def test_paging_knob_values():
    with FakeDiga(make_account(30, 1), paging="cursor") as f:
        c = Client(f)
        d = c.req("GET", "/v1/phone/?limit=10&page=3").json
        assert [p["id"] for p in d["data"]] == sorted(f.phones, reverse=True)[:10]
        assert d["has_more"] is True and d["current_page"] is None
        assert c.req("POST", "/_fake/config", body={"paging": "offset"}).status == 400
        assert f.config()["paging"] == "cursor"
        c.close()
    with pytest.raises(ValueError):
        FakeDiga(make_account(1, 1), paging="page")


def test_default_limit_is_20(cli):
    d = cli.req("GET", "/v1/phone/").json
    assert len(d["data"]) == 20 and d["has_more"] is True


@pytest.mark.parametrize("value,typ", [("101", "less_than_equal"), ("0", "greater_than_equal"),
                                       ("abc", "int_parsing"), ("", "int_parsing")])
def test_bad_limit_is_422(cli, value, typ):
    r = cli.req("GET", "/v1/phone/?limit=" + value)
    assert r.status == 422
    (err,) = r.json["detail"]
    assert err["loc"] == ["query", "limit"] and err["type"] == typ and err["msg"]


def test_before_and_after_is_422(fake, cli):
    a, b = sorted(fake.phones)[:2]
    r = cli.req("GET", "/v1/phone/?before=%s&after=%s" % (a, b))
    assert r.status == 422
    assert r.json == {"status": "error", "error_code": "INVALID_PAGINATION_PARAMETERS",
                      "message": "Cannot specify both 'before' and 'after' parameters"}
    r = cli.req("GET", "/v1/phone/?after=not-a-uuid")
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["query", "after"]


def test_cursor_survives_deletion_of_cursor_phone(fake, cli):
    fake.configure(custom_release="gone")
    p1 = cli.req("GET", "/v1/phone/?limit=10").json
    cursor = p1["last_id"]
    expected = cli.req("GET", "/v1/phone/?limit=10&after=" + cursor).json["data"]
    fake.add_phones([dict(fake.phones[cursor], telephony_provider="custom", status="assigned")])
    assert cli.req("DELETE", "/v1/phone/" + cursor).status == 204
    assert cli.req("GET", "/v1/phone/" + cursor).status == 404
    assert cli.req("GET", "/v1/phone/?limit=10&after=" + cursor).json["data"] == expected


def test_status_filter(fake, cli):
    ids, _ = walk(cli, "&status=reserved")
    assert sorted(ids) == sorted(i for i, p in fake.phones.items() if p["status"] == "reserved")
    assert len(ids) == 5
    r = cli.req("GET", "/v1/phone/?status=assigned&limit=100")
    assert r.status == 200 and {p["status"] for p in r.json["data"]} == {"assigned"}
    r = cli.req("GET", "/v1/phone/?status=bogus")
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["query", "status"]


# ---------------------------------------------------------------- get

def test_get_phone(fake, cli):
    pid = pick(fake, "custom")
    r = cli.req("GET", "/v1/phone/" + pid)
    assert r.status == 200 and r.json == fake.phones[pid]
    assert r.json["x_internal"] == 1 and r.json["telephony_provider"] == "custom"
    assert cli.req("GET", "/v1/phone/" + pid.upper()).json["id"] == pid
    missing = "00000000-0000-4000-8000-000000000000"
    r = cli.req("GET", "/v1/phone/" + missing)
    assert r.status == 404 and r.json["error_code"] == "PHONE_NOT_FOUND" and r.json["status"] == "error"
    r = cli.req("GET", "/v1/phone/1234")
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["path", "phone_id"]


def test_routing(cli):
    r = cli.req("GET", "/v1/phone?limit=5")
    assert r.status == 307 and r.headers["Location"] == "/v1/phone/?limit=5"
    r = cli.req("GET", "/v2/nothing")
    assert r.status == 404 and r.json == {"detail": "Not Found"}
    r = cli.req("POST", "/v1/phone/", body={})
    assert r.status == 405 and r.json == {"detail": "Method Not Allowed"} and r.headers["Allow"] == "GET"
    assert cli.req("GET", "/v1/phone/import").status == 422


# ---------------------------------------------------------------- delete

def test_delete_netelip_schedules_then_releases(fake, cli):
    pid = pick(fake, "netelip")
    before = fake.now()
    r = cli.req("DELETE", "/v1/phone/" + pid)
    assert r.status == 204 and r.body == b"" and "Content-Length" not in r.headers
    p = cli.req("GET", "/v1/phone/" + pid).json
    assert p["status"] == "assigned" and p["released_at"] is None
    assert before + 3600 <= parse_ts(p["scheduled_release_at"]) <= fake.now() + 3600
    fake.advance(3599)
    assert cli.req("GET", "/v1/phone/" + pid).json["status"] == "assigned"
    assert cli.req("POST", "/_fake/advance", body={"seconds": 2}).status == 200
    p = cli.req("GET", "/v1/phone/" + pid).json
    assert p["status"] == "released" and p["released_at"] == p["scheduled_release_at"]
    ids, _ = walk(cli, "&status=released")
    assert pid in ids
    assert fake.release_counts == {pid: 1} and fake.violations == []


def test_delete_custom_releases_at_once(fake, cli):
    pid = pick(fake, "custom")
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 204
    p = cli.req("GET", "/v1/phone/" + pid).json
    assert p["status"] == "released" and p["released_at"] is not None
    assert p["scheduled_release_at"] is None


@pytest.mark.parametrize("status", ["reserved", "pending_verification"])
def test_delete_unreleasable_is_409_without_change(fake, cli, status):
    pid = pick(fake, status=status)
    before = fake.phones[pid]
    r = cli.req("DELETE", "/v1/phone/" + pid)
    assert r.status == 409 and r.json["error_code"] == "PHONE_NOT_RELEASABLE"
    assert fake.phones[pid] == before and fake.release_counts == {} and fake.violations == []


def test_double_delete_is_a_violation(fake, cli):
    pid = pick(fake, "netelip")
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 204
    r = cli.req("DELETE", "/v1/phone/" + pid)
    assert r.status == 409 and r.json["error_code"] == "RELEASE_ALREADY_SCHEDULED"
    assert len(fake.violations) == 1
    v = fake.violations[0]
    assert (v["kind"], v["phone_id"], v["prior_releases"], v["phone_status"]) == \
        ("double_release", pid, 1, "assigned")
    released = pick(fake, status="released")
    r = cli.req("DELETE", "/v1/phone/" + released)
    assert r.status == 409 and r.json["error_code"] == "PHONE_ALREADY_RELEASED"
    assert len(fake.violations) == 2 and fake.release_counts == {pid: 1}
    assert fake.delete_counts == {pid: 2, released: 1}
    state = cli.req("GET", "/_fake/state").json
    assert state["release_counts"] == {pid: 1} and len(state["violations"]) == 2
    assert len(state["phones"]) == 250


def test_delete_unknown_and_malformed(cli):
    r = cli.req("DELETE", "/v1/phone/00000000-0000-4000-8000-000000000000")
    assert r.status == 404 and r.json["error_code"] == "PHONE_NOT_FOUND"
    r = cli.req("DELETE", "/v1/phone/nope")
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["path", "id"]


def test_concurrent_deletes_release_once(fake):
    pid, n = pick(fake, "netelip"), 8
    barrier, results = threading.Barrier(n), []

    def go():
        c = Client(fake)
        barrier.wait()
        results.append(c.req("DELETE", "/v1/phone/" + pid).status)
        c.close()
    ts = [threading.Thread(target=go) for _ in range(n)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert sorted(results) == [204] + [409] * (n - 1)
    assert fake.release_counts == {pid: 1} and len(fake.violations) == n - 1


# ---------------------------------------------------------------- auth

def test_auth(fake, cli):
    pid = pick(fake, "netelip")
    r = cli.req("GET", "/v1/phone/", token="")
    assert r.status == 401 and r.json["error_code"] == "UNAUTHORIZED" and r.json["status"] == "error"
    assert cli.req("GET", "/v1/phone/", token="wrong").status == 401
    assert cli.req("GET", "/v1/phone/" + pid, token=VIEW).status == 200
    r = cli.req("DELETE", "/v1/phone/" + pid, token=VIEW)
    assert r.status == 403
    assert r.json == {"status": "error", "error_code": "FORBIDDEN", "message": "Missing required permissions"}
    assert fake.phones[pid]["scheduled_release_at"] is None and fake.release_counts == {}
    assert [(e["auth_ok"], e["authorization_header_present"], e["status"]) for e in fake.log] == \
        [(False, False, 401), (False, True, 401), (True, True, 200), (True, True, 403)]
    assert TOKEN not in json.dumps(fake.log) and VIEW not in json.dumps(fake.log)


# ---------------------------------------------------------------- scripts and faults

def test_scripted_503_then_real(fake, cli):
    pid = pick(fake, "netelip")
    fake.script(pid, "DELETE", [503, 503])
    for _ in range(2):
        r = cli.req("DELETE", "/v1/phone/" + pid)
        assert r.status == 503 and r.json["error_code"] == "SERVICE_UNAVAILABLE"
        assert fake.phones[pid]["scheduled_release_at"] is None
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 204
    assert fake.phones[pid]["scheduled_release_at"] is not None
    assert [e["scripted"] for e in fake.requests(pid)] == [{"status": 503}, {"status": 503}, None]
    assert fake.release_counts == {pid: 1} and fake.violations == []


def test_scripted_apply_and_lies(fake, cli):
    a, b = pick(fake, "netelip", n=2)
    fake.script(a, "DELETE", [{"status": 502, "apply": True}])
    assert cli.req("DELETE", "/v1/phone/" + a).status == 502
    assert fake.phones[a]["scheduled_release_at"] is not None and fake.release_counts == {a: 1}
    fake.script(b, "DELETE", [204])                   # a 204 that did nothing
    assert cli.req("DELETE", "/v1/phone/" + b).status == 204
    assert fake.phones[b]["scheduled_release_at"] is None and b not in fake.release_counts


def test_scripted_over_http_and_list(fake, cli):
    r = cli.req("POST", "/_fake/script", body={"id": "list", "method": "GET",
                                               "answers": [{"status": 429, "retry_after": "2"}]})
    assert r.status == 200
    r = cli.req("GET", "/v1/phone/")
    assert r.status == 429 and r.headers["Retry-After"] == "2" and r.json["error_code"] == "RATE_LIMIT_EXCEEDED"
    assert cli.req("GET", "/v1/phone/").status == 200
    assert cli.req("POST", "/_fake/script", body={"id": "x", "answers": [1]}).status == 400


def test_rate_limit_retry_after_modes(fake, cli):
    fake.configure(rate_limit=0.5, rate_burst=2)       # slow refill: no race with the test
    assert [cli.req("GET", "/v1/phone/?limit=1").status for _ in range(2)] == [200, 200]
    r = cli.req("GET", "/v1/phone/?limit=1")
    assert r.status == 429 and r.headers["Retry-After"] == "2"
    assert r.json == {"status": "error", "error_code": "RATE_LIMIT_EXCEEDED",
                      "message": "Rate limit exceeded, retry later"}
    assert [e["status"] for e in fake.log] == [200, 200, 429]
    fake.configure(retry_after_mode="date", rate_limit=0.5, rate_burst=1)
    assert cli.req("GET", "/v1/phone/?limit=1").status == 200
    r = cli.req("GET", "/v1/phone/?limit=1")
    when = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert r.status == 429 and time.time() + 0.5 <= when <= time.time() + 3
    fake.configure(retry_after_mode="none")
    r = cli.req("GET", "/v1/phone/?limit=1")
    assert r.status == 429 and "Retry-After" not in r.headers
    assert cli.req("GET", "/_fake/health").status == 200     # admin is never limited


def test_drop_connection(fake, cli):
    a, b = pick(fake, "netelip", n=2)
    fake.script(a, "DELETE", [{"drop": True}])
    with pytest.raises(http.client.RemoteDisconnected):
        cli.req("DELETE", "/v1/phone/" + a)
    assert fake.phones[a]["scheduled_release_at"] is None
    fake.script(b, "DELETE", [{"drop": True, "apply": True}])  # done, but the answer is lost
    c2 = Client(fake)
    with pytest.raises(http.client.RemoteDisconnected):
        c2.req("DELETE", "/v1/phone/" + b)
    assert fake.phones[b]["scheduled_release_at"] is not None
    assert [e["status"] for e in fake.requests(method="DELETE")] == [None, None]
    assert Client(fake).req("GET", "/v1/phone/" + a).status == 200


def test_broken_bodies(fake, cli):
    pid = pick(fake)
    fake.script(pid, "GET", [{"drop_mid_body": True}, {"status": 502, "body": "<html>bad gateway</html>",
                                                       "content_type": "text/html"},
                             {"status": 200, "body": '{"trunc'}, {"huge": 100000}, {"trickle": 0.2},
                             {"delay": 0.2}])
    cli.conn.request("GET", "/v1/phone/" + pid, headers={"Authorization": "Bearer " + TOKEN})
    r = cli.conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    cli = Client(fake)
    r = cli.req("GET", "/v1/phone/" + pid)
    assert (r.status, r.headers["Content-Type"], r.body) == (502, "text/html", b"<html>bad gateway</html>")
    r = cli.req("GET", "/v1/phone/" + pid)
    assert r.status == 200 and r.body == b'{"trunc'
    r = cli.req("GET", "/v1/phone/" + pid)
    assert r.status == 200 and len(r.body) == 100000 and len(r.json["x_padding"]) == 100000 - 16
    for _ in range(2):                                       # trickle, then delay
        t = time.monotonic()
        r = cli.req("GET", "/v1/phone/" + pid)
        assert r.status == 200 and r.json["id"] == pid and time.monotonic() - t >= 0.19


def test_error_rate_is_seeded():
    def run():
        with FakeDiga(make_account(5, 1), error_rate=0.5, seed=42) as f:
            c = Client(f)
            out = [c.req("GET", "/v1/phone/").status for _ in range(30)]
            c.close()
            return out
    a = run()
    assert a == run()
    assert set(a) - {200} <= {500, 502, 503} and 200 in a and len(set(a)) > 1


def test_latency_knob(fake, cli):
    cli.req("POST", "/_fake/config", body={"latency": 0.2})
    t = time.monotonic()
    assert cli.req("GET", "/v1/phone/?limit=1").status == 200
    assert time.monotonic() - t >= 0.2
    t = time.monotonic()
    assert cli.req("GET", "/_fake/health").status == 200
    assert time.monotonic() - t < 0.2
    assert cli.req("POST", "/_fake/config", body={"nope": 1}).status == 400


MONTH = 31 * 86400


def http_date(r):
    (value,) = r.headers.get_all("Date")                     # exactly one Date header
    return email.utils.parsedate_to_datetime(value).timestamp()


def near(t, expected, slack=5):
    return abs(t - expected) < slack


def test_date_offset_shifts_every_api_date_only(fake, cli):
    assert near(http_date(cli.req("GET", "/v1/phone/?limit=1")), time.time())   # default: real
    r = cli.req("POST", "/_fake/config", body={"date_offset": -MONTH})
    assert r.status == 200 and r.json["date_offset"] == -MONTH
    pid = pick(fake, "netelip")
    answers = [cli.req("GET", "/v1/phone/?limit=1"), cli.req("GET", "/v1/phone/" + pid),
               cli.req("DELETE", "/v1/phone/" + pid), cli.req("GET", "/v1/phone/", token=""),
               cli.req("GET", "/v1/phone/00000000-0000-4000-8000-000000000000"),
               cli.req("GET", "/v1/phone/?limit=0"), cli.req("GET", "/v1/phone?limit=1"),
               cli.req("GET", "/v2/nothing")]
    assert [r.status for r in answers] == [200, 200, 204, 401, 404, 422, 307, 404]
    for r in answers:
        assert near(http_date(r), time.time() - MONTH)
    for path in ("/_fake/health", "/_fake/state?phones=0", "/_fake/log"):   # admin: the real date
        assert near(http_date(cli.req("GET", path)), time.time())
    assert near(http_date(cli.req("POST", "/_fake/config", body={})), time.time())
    # An API answer that the API code never saw (a chunked body is refused) is shifted too.
    c = Client(fake)
    try:
        c.conn.request("POST", "/v1/phone/", body=iter([b"{}"]), encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass    # the fake may answer and close before the last chunk is written; its answer is read below
    r = Resp(c.conn.getresponse())
    assert r.status == 400 and near(http_date(r), time.time() - MONTH)
    c.close()


def test_date_offset_is_not_the_fakes_clock(fake, cli):
    # date_offset is the API's Date header; advance() is the fake's clock for billing.
    # Neither moves the other, so a test can set them apart.
    fake.configure(date_offset=-MONTH)
    assert near(fake.now(), time.time())
    pid = pick(fake, "netelip")
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 204
    assert near(parse_ts(fake.phones[pid]["scheduled_release_at"]), time.time() + 3600)
    fake.advance(7200)
    r = cli.req("GET", "/v1/phone/" + pid)
    assert r.json["status"] == "released" and near(http_date(r), time.time() - MONTH)
    assert fake.snapshot(phones=False)["clock_offset"] == 7200


def test_date_offset_retry_after_date_on_the_same_clock(fake, cli):
    fake.configure(date_offset=-MONTH, rate_limit=0.5, rate_burst=1, retry_after_mode="date")
    assert cli.req("GET", "/v1/phone/?limit=1").status == 200
    r = cli.req("GET", "/v1/phone/?limit=1")
    when = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert r.status == 429 and 0.5 <= when - http_date(r) <= 3


def test_date_offset_constructor_and_bad_values(cli):
    with FakeDiga(make_account(3, 1), date_offset=3600.5) as f:
        c = Client(f)
        assert near(http_date(c.req("GET", "/v1/phone/")), time.time() + 3600.5)
        c.close()
    for bad in ("abc", None, 1e12, -1e12, [1]):
        assert cli.req("POST", "/_fake/config", body={"date_offset": bad}).status == 400
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            FakeDiga(make_account(1, 1), date_offset=bad)


def test_date_header_none_and_verbatim(fake, cli):
    pid = pick(fake, "netelip")
    r = cli.req("POST", "/_fake/config", body={"date_header": "none"})
    assert r.status == 200 and r.json["date_header"] == "none"
    answers = [cli.req("GET", "/v1/phone/?limit=1"), cli.req("DELETE", "/v1/phone/" + pid),
               cli.req("GET", "/v1/phone/", token=""), cli.req("GET", "/v2/nothing")]
    assert [r.status for r in answers] == [200, 204, 401, 404]
    assert all("Date" not in r.headers for r in answers)
    assert near(http_date(cli.req("GET", "/_fake/health")), time.time())      # admin: real
    fake.configure(date_header="garbage", date_offset=-3600)
    for r in (cli.req("GET", "/v1/phone/?limit=1"), cli.req("GET", "/v1/phone/" + pid)):
        assert r.status == 200 and r.headers.get_all("Date") == ["garbage"]  # offset not applied
    assert near(http_date(cli.req("GET", "/_fake/health")), time.time())
    fake.configure(date_header="")
    assert cli.req("GET", "/v1/phone/?limit=1").headers.get_all("Date") == [""]
    for bad in ("a\r\nX-Injected: 1", "a\nb", "\u20ac", 5, None):
        assert cli.req("POST", "/_fake/config", body={"date_header": bad}).status == 400
    assert fake.config()["date_header"] == ""                 # a refused value changes nothing
    fake.configure(date_header="real")                        # back to the clock, with its offset
    assert near(http_date(cli.req("GET", "/v1/phone/?limit=1")), time.time() - 3600)


def test_date_header_constructor():
    with FakeDiga(make_account(3, 1), date_header="Thu, 01 Jan 1970 00:00:00 GMT") as f:
        c = Client(f)
        r = c.req("GET", "/v1/phone/")
        assert r.status == 200 and r.headers.get_all("Date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
        c.close()


# ---------------------------------------------------------------- log and admin

def test_request_log(fake, cli, tmp_path):
    pid = pick(fake, "netelip")
    cli.req("GET", "/v1/phone/?limit=3&order=asc")
    cli.req("GET", "/_fake/state?phones=0")                  # admin: not logged
    cli.req("DELETE", "/v1/phone/" + pid)
    cli.req("GET", "/v1/phone/" + pid, token="")
    log = fake.log
    assert [(e["method"], e["path"], e["query"], e["status"], e["phone_id"]) for e in log] == [
        ("GET", "/v1/phone/", "limit=3&order=asc", 200, None),
        ("DELETE", "/v1/phone/" + pid, "", 204, pid),
        ("GET", "/v1/phone/" + pid, "", 401, pid)]
    assert log[0]["t"] <= log[1]["t"] <= log[2]["t"] and all(e["t_reply"] >= e["t"] for e in log)
    assert len({e["conn"] for e in log}) == 1                # keep-alive: one connection
    assert all(abs(e["wall"] - time.time()) < 60 for e in log)
    r = cli.req("GET", "/_fake/log?since=1").json
    assert r["next"] == 3 and [e["status"] for e in r["log"]] == [204, 401]
    assert cli.req("DELETE", "/_fake/log").status == 200 and fake.log == []


def test_log_file_and_admin_phones(tmp_path):
    path = tmp_path / "log.jsonl"
    with FakeDiga(make_account(3, 1), log_path=str(path)) as f:
        c = Client(f)
        new = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
        r = c.req("POST", "/_fake/phones", body=[{"id": new, "telephony_provider": "custom",
                                                  "number": "user@sip.example.com"}])
        assert r.status == 200 and r.json["added"][0]["status"] == "assigned"
        assert c.req("GET", "/v1/phone/" + new).json["number"] == "user@sip.example.com"
        assert len(c.req("GET", "/v1/phone/?limit=100").json["data"]) == 4
        c.close()
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert lines == json.loads(json.dumps(f.log)) and len(lines) == 2


def test_many_keepalive_connections(fake):
    errors, n_threads, n_req = [], 16, 10

    def go():
        c = Client(fake)
        for _ in range(n_req):
            r = c.req("GET", "/v1/phone/?limit=5")
            if r.status != 200:
                errors.append(r.status)
        c.close()
    ts = [threading.Thread(target=go) for _ in range(n_threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert errors == []
    per_conn = {}
    for e in fake.log:
        per_conn[e["conn"]] = per_conn.get(e["conn"], 0) + 1
    assert sorted(per_conn.values()) == [n_req] * n_threads


# ---------------------------------------------------------------- CLI

def test_cli_port_file_and_sigterm(tmp_path):
    port_file, log = tmp_path / "port", tmp_path / "log.jsonl"
    p = subprocess.Popen([PYTHON, os.path.join(HERE, "fake_diga.py"), "--port", "0", "--port-file",
                          str(port_file), "--phones", "30", "--seed", "3", "--log", str(log),
                          "--token", "k1"], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([p.stdout], [], [], 10)[0], "fake did not start"
        url = p.stdout.readline().strip()
        port = int(port_file.read_text())
        assert url == "http://127.0.0.1:%d" % port
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/v1/phone/?limit=100", headers={"Authorization": "Bearer k1"})
        d = json.loads(c.getresponse().read())
        assert sorted(x["id"] for x in d["data"]) == sorted(x["id"] for x in make_account(30, 3))
        c.close()
        assert json.loads(log.read_text())["status"] == 200
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0


def test_cli_knob_options(tmp_path):
    # The knobs that have a CLI option reach the fake: /_fake/state shows them, and
    # the answers behave accordingly.
    port_file = tmp_path / "port"
    p = subprocess.Popen([PYTHON, os.path.join(HERE, "fake_diga.py"), "--port-file", str(port_file),
                          "--phones", "5", "--date-offset", "-2678400", "--date-header", "none",
                          "--gone-cursor", "400", "--paging", "cursor"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([p.stdout], [], [], 10)[0], "fake did not start"
        p.stdout.readline()
        c = http.client.HTTPConnection("127.0.0.1", int(port_file.read_text()), timeout=10)
        c.request("GET", "/_fake/state?phones=0")
        config = json.loads(c.getresponse().read())["config"]
        assert (config["date_offset"], config["date_header"]) == (-MONTH, "none")
        assert (config["gone_cursor"], config["paging"]) == ("400", "cursor")
        c.request("GET", "/v1/phone/?page=2&limit=2", headers={"Authorization": "Bearer " + TOKEN})
        d = json.loads(c.getresponse().read())
        assert (len(d["data"]), d["has_more"], d["current_page"], d["total_pages"]) == (2, True, None, None)
        c.request("GET", "/v1/phone/?after=" + NEVER, headers={"Authorization": "Bearer " + TOKEN})
        r = Resp(c.getresponse())
        assert r.status == 400 and r.json["error_code"] == "NOT_VALID_FIELD"
        c.request("GET", "/v1/phone/", headers={"Authorization": "Bearer " + TOKEN})
        r = Resp(c.getresponse())
        assert r.status == 200 and "Date" not in r.headers
        c.request("POST", "/_fake/config", body=b'{"date_header": "real"}')
        assert json.loads(c.getresponse().read())["date_header"] == "real"
        c.request("GET", "/v1/phone/", headers={"Authorization": "Bearer " + TOKEN})
        r = Resp(c.getresponse())
        assert r.status == 200 and near(http_date(r), time.time() - MONTH)
        c.close()
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0


def test_apply_late_releases_at_the_end_of_the_delay(fake):
    """apply_late: during the delay the phone is still assigned; after it, released."""
    import threading
    pid = pick(fake, provider="custom")
    fake.script(pid, "DELETE", [{"delay": 0.6, "apply_late": True}])
    out = {}

    def delete():
        c = Client(fake)
        out["r"] = c.req("DELETE", "/v1/phone/" + pid)
        c.close()
    t = threading.Thread(target=delete)
    t.start()
    deadline = time.monotonic() + 5
    while (pid, "DELETE") in fake._scripts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.phone(pid)["status"] == "assigned"
    t.join(5)
    assert out["r"].status == 204
    assert fake.phone(pid)["status"] == "released"
    assert fake.release_counts == {pid: 1}


def test_a_gated_answer_waits_for_its_gate(fake):
    """gate: the answer is held until the test sets the Event, however long."""
    import threading
    pid = pick(fake, provider="custom")
    gate = threading.Event()
    fake.script(pid, "DELETE", [{"gate": gate}])
    out = {}

    def delete():
        c = Client(fake)
        out["r"] = c.req("DELETE", "/v1/phone/" + pid)
        c.close()
    t = threading.Thread(target=delete)
    t.start()
    t.join(0.5)
    assert t.is_alive() and "r" not in out, "answered before the gate opened"
    gate.set()
    t.join(5)
    assert out["r"].status == 204 and fake.release_counts == {pid: 1}


# A DELETE answered 200 or 202 with each kind of body, the release done all the same.
ACCEPTED_BODIES = {
    "empty": {},
    "json": {"body": {"id": "(the phone)", "status": "released"}},
    "error_json": {"body": {"status": "error", "error_code": "RELEASE_QUEUED", "message": "queued"}},
    "html": {"body": "<html><body>Accepted</body></html>", "content_type": "text/html"},
}


@pytest.mark.parametrize("kind", list(ACCEPTED_BODIES))
@pytest.mark.parametrize("status", [200, 202])
def test_delete_answered_2xx_with_a_body_and_applied(fake, cli, status, kind):
    pid = pick(fake, provider="custom")
    fake.script(pid, "DELETE", [dict(ACCEPTED_BODIES[kind], status=status, apply=True)])
    r = cli.req("DELETE", "/v1/phone/" + pid)
    assert r.status == status
    want = ACCEPTED_BODIES[kind].get("body", "")
    assert r.body == (want.encode() if isinstance(want, str) else json.dumps(want).encode())
    assert r.headers["Content-Type"] == ACCEPTED_BODIES[kind].get("content_type", "application/json")
    assert fake.phone(pid)["status"] == "released" and fake.release_counts == {pid: 1}


@pytest.mark.parametrize("provider,done", [("custom", "released"), ("netelip", "assigned")])
def test_apply_after_releases_in_the_background(fake, cli, provider, done):
    """apply_after: answered at once, released that many seconds later on the fake's clock."""
    pid = pick(fake, provider=provider)
    fake.script(pid, "DELETE", [{"status": 202, "body": {"status": "accepted"}, "apply": True,
                                 "apply_after": 3600}])
    t0 = time.monotonic()
    r = cli.req("DELETE", "/v1/phone/" + pid)
    assert r.status == 202 and r.json == {"status": "accepted"}
    assert time.monotonic() - t0 < 5, "the answer waited for the release"
    p = cli.req("GET", "/v1/phone/" + pid).json
    assert p["status"] == "assigned" and p["scheduled_release_at"] is None and fake.release_counts == {}
    fake.advance(3599)
    assert cli.req("GET", "/v1/phone/" + pid).json["status"] == "assigned"
    assert cli.req("POST", "/_fake/advance", body={"seconds": 2}).status == 200
    p = cli.req("GET", "/v1/phone/" + pid).json
    assert p["status"] == done and fake.release_counts == {pid: 1}
    if provider == "netelip":          # ordered when the worker got to it, from then on
        assert parse_ts(p["scheduled_release_at"]) == pytest.approx(fake.now() - 1 + 3600, abs=5)
    assert fake.violations == [] and fake.delete_counts == {pid: 1}


def test_apply_after_on_the_wall_clock_too(fake, cli):
    pid = pick(fake, provider="custom")
    fake.script(pid, "DELETE", [{"status": 200, "apply": True, "apply_after": 0.3}])
    t0 = time.monotonic()
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 200
    deadline = t0 + 10
    while cli.req("GET", "/v1/phone/" + pid).json["status"] == "assigned":
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.02)
    assert time.monotonic() - t0 >= 0.3 and fake.release_counts == {pid: 1}


def test_a_second_delete_during_a_background_release_is_a_violation(fake, cli):
    pid = pick(fake, provider="custom")
    fake.script(pid, "DELETE", [{"status": 202, "apply": True, "apply_after": 3600}])
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 202
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 204     # the real release, now
    assert len(fake.violations) == 1 and fake.violations[0]["background"] is True
    fake.advance(3601)                 # the worker then finds it released: nothing more
    assert fake.release_counts == {pid: 1} and fake.phone(pid)["status"] == "released"


def test_apply_after_without_apply_or_with_bad_values(fake, cli):
    pid = pick(fake, provider="custom")
    fake.script(pid, "DELETE", [{"status": 202, "apply_after": 1}])   # a 202 that does nothing
    assert cli.req("DELETE", "/v1/phone/" + pid).status == 202
    fake.advance(10)
    assert fake.phone(pid)["status"] == "assigned" and fake.release_counts == {}
    for bad in (-1, "5", True, float("inf")):
        with pytest.raises(ValueError):
            fake.script(pid, "DELETE", [{"apply": True, "apply_after": bad}])
    with pytest.raises(ValueError):
        fake.script(pid, "DELETE", [{"apply": True, "apply_after": 1, "apply_late": True}])
    with pytest.raises(ValueError):
        fake.script(pid, "GET", [{"apply_after": 1}])


def test_agents_attached_and_detached_while_it_runs(fake, cli):
    """Issue 31: a test attaches or detaches a phone's agents; the listing and the GET
    show them as the API document does (an id or null), with the nickname."""
    p = next(x for x in fake.snapshot()["phones"] if x["status"] == "assigned" and x["nickname"]
             and not x["inbound_agent_id"] and not x["outbound_agent_id"])
    agent = "00000000-0000-4000-8000-0000000000a1"
    r = cli.req("POST", "/_fake/agents", body={"id": p["id"], "inbound_agent_id": agent})
    assert r.status == 200 and r.json["inbound_agent_id"] == agent and r.json["outbound_agent_id"] is None
    got = cli.req("GET", "/v1/phone/" + p["id"]).json
    assert (got["inbound_agent_id"], got["outbound_agent_id"], got["nickname"]) == (agent, None, p["nickname"])
    listed = [x for x in cli.req("GET", "/v1/phone/?limit=100&inbound_agent_id=" + agent).json["data"]]
    assert [x["id"] for x in listed] == [p["id"]]
    fake.set_agents(p["id"], outbound=agent.upper())
    got = cli.req("GET", "/v1/phone/" + p["id"]).json
    assert (got["inbound_agent_id"], got["outbound_agent_id"]) == (None, agent.upper())
    fake.set_agents(p["id"])
    got = cli.req("GET", "/v1/phone/" + p["id"]).json
    assert (got["inbound_agent_id"], got["outbound_agent_id"]) == (None, None)
    assert cli.req("POST", "/_fake/agents", body={"id": p["id"], "inbound_agent_id": "agent-7"}).status == 400
    assert cli.req("POST", "/_fake/agents", body={"id": "nope"}).status == 400
