#!/usr/bin/python3
"""fake_diga: a stateful fake of the Diga phones API (the subset `retired` uses).

Two ways to use it:
  * CLI:    fake_diga.py --port 0 --port-file F --phones 20000 --latency 0.05 ...
  * module: fake = FakeDiga(make_account(200, seed=1)); url = fake.start(); ...; fake.stop()

Python standard library only (Debian's /usr/bin/python3). README.md next to this
file lists the knobs, the admin endpoints under /_fake/ and the places where the
real API is undocumented and this fake had to pick a behaviour.
"""

import argparse
import bisect
import email.utils
import heapq
import http
import http.server
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

STATUSES = ("reserved", "pending_verification", "assigned", "released", "finished")
GONE_CURSOR = ("value", "400", "empty", "restart")
PAGING = ("both", "cursor")
PROVIDERS = ("netelip", "custom")
KNOBS = ("latency", "error_rate", "rate_limit", "rate_burst", "retry_after_mode",
         "billing_period", "custom_release", "token", "view_only_token", "seed", "date_offset",
         "date_header", "gone_cursor", "paging", "churn")
ANSWER_KEYS = {"status", "body", "content_type", "retry_after", "headers", "drop",
               "drop_mid_body", "trickle", "huge", "delay", "apply", "apply_late", "apply_after",
               "error_code", "message", "gate"}

# Pydantic accepts the hyphenated and the plain 32-hex forms, in any case.
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}(-?)[0-9a-fA-F]{4}\1[0-9a-fA-F]{4}\1"
                      r"[0-9a-fA-F]{4}\1[0-9a-fA-F]{12}$")
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
# Generated accounts are stamped relative to this fixed instant (2024-01-01T00:00:00Z)
# so that the same seed gives byte-identical phones whatever the wall clock says.
_BASE_TS = 1704067200
# date_offset is bounded so that the shifted clock stays inside what an HTTP-date
# (and datetime) can print: a century either way is more than any test needs.
_MAX_DATE_OFFSET = 100 * 366 * 86400

# A gated answer waits at most this long for its test to open the gate.
GATE_TIMEOUT = 60

_STD_ERRORS = {
    400: ("NOT_VALID_FIELD", "Invalid field value in query parameters"),
    401: ("UNAUTHORIZED", "Invalid or missing API key"),
    403: ("FORBIDDEN", "Missing required permissions"),
    404: ("PHONE_NOT_FOUND", "Phone not found"),
    408: ("REQUEST_TIMEOUT", "Request timeout"),
    409: ("CONFLICT", "Conflict"),
    429: ("RATE_LIMIT_EXCEEDED", "Rate limit exceeded, retry later"),
    500: ("INTERNAL_SERVER_ERROR", "An internal server error occurred"),
    502: ("BAD_GATEWAY", "Bad gateway"),
    503: ("SERVICE_UNAVAILABLE", "Service temporarily unavailable"),
    504: ("GATEWAY_TIMEOUT", "Gateway timeout"),
}


# ---------------------------------------------------------------- helpers

def iso(ts):
    """Epoch seconds -> RFC 3339 UTC as pydantic prints it ('...Z', microseconds if any)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_ts(text):
    """RFC 3339 -> epoch seconds; a naive time is taken as UTC. ValueError if malformed."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def norm_uuid(text):
    """Canonical lowercase hyphenated form, or None if `text` is not a UUID."""
    if isinstance(text, str) and _UUID_RE.match(text):
        return str(uuid.UUID(text))
    return None


def _seeded_uuid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _phrase(status):
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Reply:
    """An HTTP answer plus the transport faults to apply while sending it. `date` is
    the Date header: seconds added to the wall clock (the API's date_offset), a string
    sent verbatim, or None for no Date header at all."""
    __slots__ = ("status", "body", "ctype", "headers", "delay", "drop", "drop_mid_body", "trickle",
                 "date", "after", "gate")

    def __init__(self, status, body=b"", ctype="application/json", headers=()):
        self.status, self.body, self.ctype = status, body, ctype
        self.headers = list(headers)
        self.delay, self.drop, self.drop_mid_body, self.trickle = 0.0, False, False, None
        self.date = 0.0
        self.after = None                # the real state change, when it comes after the delay
        self.gate = None                 # a threading.Event the answer waits for (in-process only)


def _json_reply(status, obj, headers=()):
    return Reply(status, json.dumps(obj).encode(), headers=headers)


def _err(status, code, message, headers=()):
    return _json_reply(status, {"status": "error", "error_code": code, "message": message}, headers)


def _verr(where, name, typ, msg, value, ctx=None):
    """One FastAPI/pydantic-v2 validation error item."""
    item = {"type": typ, "loc": [where, name], "msg": msg, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


def _detail(errors):
    return _json_reply(422, {"detail": errors})


def _std_error(status, phone_id=None, code=None, message=None):
    if status == 422:
        return _detail([{"type": "value_error", "loc": ["body"], "input": None,
                         "msg": message or "Scripted validation error"}])
    dcode, dmsg = _STD_ERRORS.get(status, ("ERROR", _phrase(status)))
    if status == 404 and phone_id:
        dmsg = "Phone with id %s not found" % phone_id
    return _err(status, code or dcode, message or dmsg)


def _bearer(header):
    if not header:
        return None
    parts = header.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer" and parts[1].strip():
        return parts[1].strip()
    return None


def _route(method, path):
    """-> (kind, arg). kind: list|get|delete|redirect|404|405|501."""
    if path == "/v1/phone":
        return "redirect", "/v1/phone/"      # FastAPI's redirect_slashes answers 307
    if path == "/v1/phone/":
        return ("list", None) if method == "GET" else ("405", "GET")
    if not path.startswith("/v1/phone/"):
        return "404", None
    parts = path[len("/v1/phone/"):].split("/")
    if len(parts) == 1:
        if parts[0] == "import" and method == "POST":
            return "501", None
        return {"GET": ("get", unquote(parts[0])), "DELETE": ("delete", unquote(parts[0])),
                "PATCH": ("501", None)}.get(method, ("405", "GET, PATCH, DELETE"))
    if len(parts) == 2 and parts[1] == "":
        return "redirect", "/v1/phone/" + parts[0]
    if len(parts) == 2 and parts[1] == "sip-config":
        return ("501", None) if method == "PATCH" else ("405", "PATCH")
    return "404", None


def _parse_list_query(query, paging="both"):
    """Validate GET /v1/phone/ query parameters FastAPI-style: (params, errors)."""
    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}  # last one wins
    if paging == "cursor":
        # An API without offset paging does not know `page`: FastAPI ignores a query
        # parameter it does not declare, whatever its value, so it is never an error.
        q.pop("page", None)
    p = {"limit": 20, "order": "desc", "page": None, "status": None, "after": None, "before": None,
         "inbound_agent_id": None, "outbound_agent_id": None,
         "start_assigned_at": None, "end_assigned_at": None}
    errors = []
    for name, lo, hi in (("limit", 1, 100), ("page", 1, None)):
        if name not in q:
            continue
        v = q[name]
        if not _INT_RE.match(v):
            errors.append(_verr("query", name, "int_parsing",
                                "Input should be a valid integer, unable to parse string as an integer", v))
        elif int(v) < lo:
            errors.append(_verr("query", name, "greater_than_equal",
                                "Input should be greater than or equal to %d" % lo, v, {"ge": lo}))
        elif hi is not None and int(v) > hi:
            errors.append(_verr("query", name, "less_than_equal",
                                "Input should be less than or equal to %d" % hi, v, {"le": hi}))
        else:
            p[name] = int(v)
    for name in ("after", "before", "inbound_agent_id", "outbound_agent_id"):
        if name in q:
            p[name] = norm_uuid(q[name])
            if p[name] is None:
                errors.append(_verr("query", name, "uuid_parsing", "Input should be a valid UUID", q[name]))
    for name in ("start_assigned_at", "end_assigned_at"):
        if name in q:
            try:
                p[name] = parse_ts(q[name])
            except ValueError:
                errors.append(_verr("query", name, "datetime_from_date_parsing",
                                    "Input should be a valid datetime", q[name]))
    if "order" in q:
        if q["order"] in ("asc", "desc"):
            p["order"] = q["order"]
        else:
            errors.append(_verr("query", "order", "literal_error", "Input should be 'asc' or 'desc'",
                                q["order"], {"expected": "'asc' or 'desc'"}))
    if "status" in q:
        if q["status"] in STATUSES:
            p["status"] = q["status"]
        else:
            exp = "'reserved', 'pending_verification', 'assigned', 'released' or 'finished'"
            errors.append(_verr("query", "status", "enum", "Input should be " + exp, q["status"],
                                {"expected": exp}))
    return p, errors


def _keyset(ids, order, after, before, limit, pred):
    """Cursor page over the ascending id list `ids`. Cursors are compared by value,
    so a cursor whose phone has since disappeared still points at the same place."""
    if order == "asc":
        step, i = (1, bisect.bisect_right(ids, after) if after else 0) if before is None \
            else (-1, bisect.bisect_left(ids, before) - 1)
    else:
        step, i = (-1, bisect.bisect_left(ids, after) - 1 if after else len(ids) - 1) if before is None \
            else (1, bisect.bisect_right(ids, before))
    out = []
    while 0 <= i < len(ids) and len(out) <= limit:   # one extra item tells has_more
        if pred is None or pred(ids[i]):
            out.append(ids[i])
        i += step
    has_more = len(out) > limit
    out = out[:limit]
    if before is not None:     # walked away from the cursor: put back in display order
        out.reverse()
    return out, has_more


# ---------------------------------------------------------------- accounts

def _defaults(i, pid):
    return {"id": pid, "nickname": None, "number": "+3491%07d" % i, "telephony_provider": "netelip",
            "status": "assigned", "released_at": None, "scheduled_release_at": None,
            "assigned_at": iso(_BASE_TS + 60 * i), "inbound_agent_id": None, "outbound_agent_id": None,
            "sip_config": None, "checkout_url": None, "reservation_expires_at": None,
            "region_codes": ["MD"], "x_internal": 1}


def make_account(n, seed=1):
    """n deterministic phones: see README ("Generated accounts") for the pattern."""
    ids, extra = random.Random(seed), random.Random("extra-%s" % seed)
    phones = []
    for i in range(n):
        p = _defaults(i, _seeded_uuid(ids))
        status = {7: "reserved", 8: "pending_verification", 9: "released", 10: "finished"}.get(i % 50, "assigned")
        p["status"] = status
        p["nickname"] = "Line %d" % i if i % 4 else None
        # Only numbers bought through Diga go through checkout, so reserved and
        # pending_verification phones are always netelip.
        if i % 3 == 2 and status not in ("reserved", "pending_verification"):
            p["telephony_provider"] = "custom"
            p["sip_config"] = {"termination_uri": "sip.example.com", "username": "trunk%d" % i,
                               "inbound_media_encryption": "allow", "outbound_media_encryption": "allow",
                               "allowed_addresses": None}
            if i % 9 == 8:
                p["number"], p["region_codes"] = "trunk%d@sip.example.com" % i, []
        if status in ("reserved", "pending_verification"):
            p["assigned_at"] = None
        if status == "reserved":
            p["checkout_url"] = "https://checkout.stripe.com/c/pay/cs_test_%032x" % extra.getrandbits(128)
            p["reservation_expires_at"] = iso(_BASE_TS + 60 * i + 900)
        if status == "assigned" and i % 4 == 0:
            p["inbound_agent_id"] = _seeded_uuid(extra)
            if i % 8 == 0:
                p["outbound_agent_id"] = _seeded_uuid(extra)
        if status in ("released", "finished"):
            p["released_at"] = iso(_BASE_TS + 60 * i + 86400)
        phones.append(p)
    return phones


def normalize_phone(d, index=0):
    """Fill defaults into a phone dict and validate it; returns a new dict."""
    if not isinstance(d, dict):
        raise ValueError("phone #%d is not an object" % index)
    pid = d.get("id") or _seeded_uuid(random.Random("account-%d" % index))
    p = _defaults(index, norm_uuid(pid))
    if p["id"] is None:
        raise ValueError("phone #%d: id %r is not a UUID" % (index, pid))
    p.update({k: v for k, v in d.items() if k != "id"})
    if p["status"] not in STATUSES:
        raise ValueError("phone %s: bad status %r" % (p["id"], p["status"]))
    if p["telephony_provider"] not in PROVIDERS:
        raise ValueError("phone %s: bad telephony_provider %r" % (p["id"], p["telephony_provider"]))
    if not isinstance(p["number"], str):
        raise ValueError("phone %s: number must be a string" % p["id"])
    if p["scheduled_release_at"]:
        parse_ts(p["scheduled_release_at"])          # ValueError if malformed
    return p


def load_account(path):
    """A JSON file holding a list of phone dicts (or {"data": [...]}/{"phones": [...]})."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("phones", data.get("data"))
    if not isinstance(data, list):
        raise ValueError("%s: expected a list of phones" % path)
    return [normalize_phone(d, i) for i, d in enumerate(data)]


# ---------------------------------------------------------------- the fake

class FakeDiga:
    """The fake API. All state is guarded by self.lock; phone dicts are never mutated
    in place (a change stores a new dict), so a reader may serialize them unlocked."""

    def __init__(self, phones=None, *, n_phones=100, seed=1, latency=0.0, error_rate=0.0,
                 rate_limit=None, rate_burst=None, retry_after_mode="seconds", billing_period=3600.0,
                 custom_release="released", token="test-token", view_only_token="view-only-token",
                 date_offset=0.0, date_header="real", gone_cursor="value", paging="both",
                 churn=None, log_path=None, host="127.0.0.1", port=0):
        self.lock = threading.Lock()
        self.host, self.port, self.url = host, port, None
        self.phones = {}                              # id -> phone dict (the public fields)
        self._ids = []                                # all ids, ascending: the paging order
        self._by_status = {s: [] for s in STATUSES}   # same, per status, for ?status=
        self._enc = {}                                # id -> cached JSON bytes
        self._sched, self._heap = {}, []              # pending netelip releases: id -> ts, (ts, id) heap
        self._later, self._later_seq = [], itertools.count()   # background releases (apply_after): (ts, seq, id)
        self._clock_offset = 0.0                      # /_fake/advance moves the fake's clock
        self._scripts = {}                            # (id|"list"|"*", METHOD) -> [answers]
        self.violations, self.release_counts, self.delete_counts = [], {}, {}
        self.log, self._log_lock = [], threading.Lock()
        self._log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        self._server = self._thread = None
        self.latency = self.error_rate = 0.0
        self.rate_limit = self.rate_burst = None
        self.configure(seed=seed, latency=latency, error_rate=error_rate, rate_limit=rate_limit,
                       rate_burst=rate_burst, retry_after_mode=retry_after_mode,
                       billing_period=billing_period, custom_release=custom_release,
                       token=token, view_only_token=view_only_token, date_offset=date_offset,
                       date_header=date_header, gone_cursor=gone_cursor, paging=paging, churn=churn)
        self._churn_rng, self._churned = random.Random("churn-%s" % seed), 0
        self.add_phones(make_account(n_phones, seed) if phones is None else phones)

    # ---- public API for in-process tests

    def start(self):
        srv = _Server((self.host, self.port), _Handler)
        srv.fake = self
        self._server, self.port = srv, srv.server_address[1]
        self.url = "http://%s:%d" % (self.host, self.port)
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-diga", daemon=True)
        self._thread.start()
        return self.url

    def stop(self):
        srv, self._server = self._server, None
        if srv:
            srv.shutdown()
            srv.server_close()
            srv.close_connections()
            self._thread.join()
        with self._log_lock:
            if self._log_file:
                self._log_file.close()
                self._log_file = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def configure(self, **knobs):
        """Set knobs (see KNOBS); validates all of them before applying any."""
        new = {}
        for k, v in knobs.items():
            if k not in KNOBS:
                raise ValueError("unknown knob %r" % k)
            if k in ("latency", "billing_period", "error_rate"):
                v = float(v)
                if v < 0 or (k == "error_rate" and v > 1):
                    raise ValueError("bad %s %r" % (k, v))
            elif k == "date_offset":
                v = float(v)
                if not (math.isfinite(v) and abs(v) <= _MAX_DATE_OFFSET):
                    raise ValueError("date_offset must be finite and at most %d seconds" % _MAX_DATE_OFFSET)
            elif k == "date_header":
                # Any other string is sent as the Date value. It must stay one header line
                # that latin-1 can carry, or the fake would break its own framing.
                if not isinstance(v, str) or re.search(r"[\r\n\0]", v):
                    raise ValueError("date_header must be real, none or a one-line string")
                v.encode("latin-1")                   # UnicodeEncodeError is a ValueError
            elif k == "gone_cursor":
                if v == 400 and type(v) is int:       # JSON callers may well send the number
                    v = "400"
                if v not in GONE_CURSOR:
                    raise ValueError("gone_cursor must be one of %s" % ", ".join(GONE_CURSOR))
            elif k == "paging" and v not in PAGING:
                raise ValueError("paging must be both or cursor")
            elif k == "churn":
                # A busy account: before each list request, `add` new assigned phones
                # appear and `remove` phones not in `protect` go (a page boundary moves).
                if v is not None and not (isinstance(v, dict) and set(v) <= {"add", "remove", "protect"} and
                                          all(isinstance(v.get(n, 0), int) and v.get(n, 0) >= 0
                                              for n in ("add", "remove"))):
                    raise ValueError("churn must be null or {add, remove, protect}")
                if v is not None:
                    v = {"add": v.get("add", 0), "remove": v.get("remove", 0),
                         "protect": sorted(norm_uuid(i) for i in v.get("protect", []))}
            elif k == "rate_limit":
                v = float(v) if v else None           # 0/None: no rate limit
                if v is not None and v < 0:
                    raise ValueError("bad rate_limit")
            elif k == "rate_burst":
                v = int(v) if v else None             # None: ceil(rate_limit)
                if v is not None and v < 1:
                    raise ValueError("bad rate_burst")
            elif k == "retry_after_mode" and v not in ("seconds", "date", "none"):
                raise ValueError("retry_after_mode must be seconds, date or none")
            elif k == "custom_release" and v not in ("released", "gone"):
                raise ValueError("custom_release must be released or gone")
            elif k == "token" and not (isinstance(v, str) and v):
                raise ValueError("token must be a non-empty string")
            elif k == "view_only_token" and v is not None and not (isinstance(v, str) and v):
                raise ValueError("view_only_token must be a non-empty string or null")
            new[k] = v
        with self.lock:
            for k, v in new.items():
                setattr(self, k, v)
            if "seed" in new:
                self._rng = random.Random(new["seed"])  # drives error_rate
            if "rate_limit" in new or "rate_burst" in new:
                self._tokens, self._tokens_t = self._burst(), time.monotonic()
            return self.config()

    def config(self):
        return {k: getattr(self, k) for k in KNOBS}

    def script(self, phone_id, method, answers):
        """Replace the scripted answers for (phone_id, method). phone_id: a phone id,
        "list" (GET /v1/phone/) or "*" (any phone id). [] clears the script."""
        key = phone_id if phone_id in ("list", "*") else norm_uuid(phone_id)
        if key is None:
            raise ValueError("script id must be a UUID, 'list' or '*'")
        norm = []
        for a in answers:
            if isinstance(a, int) and not isinstance(a, bool):
                a = {"status": a}
            if not isinstance(a, dict) or not set(a) <= ANSWER_KEYS:
                raise ValueError("bad scripted answer %r" % (a,))
            if "apply_after" in a:
                after = a["apply_after"]
                if isinstance(after, bool) or not isinstance(after, (int, float)) or \
                        not (math.isfinite(after) and after >= 0):
                    raise ValueError("apply_after must be a number of seconds >= 0")
                if method.upper() != "DELETE" or a.get("apply_late"):
                    raise ValueError("apply_after is for a DELETE, and not with apply_late")
            norm.append(dict(a))
        with self.lock:
            if norm:
                self._scripts[(key, method.upper())] = norm
            else:
                self._scripts.pop((key, method.upper()), None)

    def add_phones(self, phones):
        """Insert or replace (by id) phones; missing fields get defaults. Returns them."""
        with self.lock:
            base = len(self.phones)
            added = [normalize_phone(d, base + i) for i, d in enumerate(phones)]
            for p in added:
                self._put(p)
            return added

    def set_agents(self, phone_id, inbound=None, outbound=None):
        """Attach agents to a phone (an id each) or detach them (None), as an operator
        does in the dashboard while the daemon runs. Returns the phone as it is now."""
        for name, v in (("inbound_agent_id", inbound), ("outbound_agent_id", outbound)):
            if v is not None and norm_uuid(v) is None:
                raise ValueError("%s %r is not a UUID" % (name, v))
        with self.lock:
            pid = norm_uuid(phone_id) or phone_id
            p = dict(self.phones[pid])          # KeyError: no such phone
            p["inbound_agent_id"], p["outbound_agent_id"] = inbound, outbound
            self._put(p)
            return p

    def now(self):
        """The fake's clock (epoch seconds): wall time shifted by advance()."""
        return time.time() + self._clock_offset

    def advance(self, seconds):
        with self.lock:
            self._clock_offset += float(seconds)
            now = self.now()
            self._settle(now)
            return now

    def phone(self, phone_id):
        with self.lock:
            self._settle(self.now())
            return self.phones.get(norm_uuid(phone_id) or phone_id)

    def snapshot(self, phones=True):
        with self.lock:
            now = self.now()
            self._settle(now)
            return {"now": now, "clock_offset": self._clock_offset, "config": self.config(),
                    "counts": {s: len(ids) for s, ids in self._by_status.items()},
                    "phones": [self.phones[i] for i in self._ids] if phones else None,
                    "violations": list(self.violations), "release_counts": dict(self.release_counts),
                    "delete_counts": dict(self.delete_counts)}

    def requests(self, phone_id=None, method=None):
        """Log entries, optionally only those for one phone id and/or method."""
        return [e for e in list(self.log) if (phone_id is None or e["phone_id"] == phone_id)
                and (method is None or e["method"] == method)]

    def clear_log(self):
        with self._log_lock:
            self.log.clear()

    # ---- state (self.lock held)

    def _put(self, p):
        pid, old = p["id"], self.phones.get(p["id"])
        if old is None:
            bisect.insort(self._ids, pid)
        elif old["status"] != p["status"]:
            _sorted_remove(self._by_status[old["status"]], pid)
        if old is None or old["status"] != p["status"]:
            bisect.insort(self._by_status[p["status"]], pid)
        self.phones[pid] = p
        self._enc.pop(pid, None)
        if p["status"] == "assigned" and p.get("scheduled_release_at"):
            ts = parse_ts(p["scheduled_release_at"])
            self._sched[pid] = ts
            heapq.heappush(self._heap, (ts, pid))
        else:
            self._sched.pop(pid, None)

    def _drop(self, pid):
        p = self.phones.pop(pid)
        _sorted_remove(self._ids, pid)
        _sorted_remove(self._by_status[p["status"]], pid)
        self._enc.pop(pid, None)
        self._sched.pop(pid, None)

    def _settle(self, now):
        """Complete the background releases (apply_after), then the scheduled netelip
        releases that are due (lazy, O(k log n))."""
        while self._later and self._later[0][0] <= now:
            ts, _, pid = heapq.heappop(self._later)
            p = self.phones.get(pid)
            if p is not None:
                # As the API's worker would, when it gets to it: the real rules
                # then (a phone released meanwhile stays as it is).
                self._release(pid, p, ts)
        while self._heap and self._heap[0][0] <= now:
            ts, pid = heapq.heappop(self._heap)
            if self._sched.get(pid) != ts:
                continue                          # stale: the phone was replaced since
            p = self.phones[pid]
            self._put(dict(p, status="released", released_at=iso(ts)))

    def _encode(self, pid):
        enc = self._enc.get(pid)
        if enc is None:
            enc = self._enc[pid] = json.dumps(self.phones[pid], separators=(",", ":")).encode()
        return enc

    def _burst(self):
        return self.rate_burst or max(1, math.ceil(self.rate_limit or 1))

    def _take_token(self):
        """Token bucket on the real monotonic clock: None if allowed, else seconds to wait."""
        if not self.rate_limit:
            return None
        t = time.monotonic()
        self._tokens = min(self._burst(), self._tokens + (t - self._tokens_t) * self.rate_limit)
        self._tokens_t = t
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self.rate_limit

    def _api_date(self):
        """Reply.date for an API answer. date_offset is the API's own wall clock, which
        is not the fake's clock: advance() moves billing periods, not this."""
        with self.lock:
            if self.date_header == "real":
                return self.date_offset
            return None if self.date_header == "none" else self.date_header

    def _too_many(self, wait):
        headers = []
        if self.retry_after_mode == "seconds":
            headers.append(("Retry-After", str(max(1, math.ceil(wait)))))
        elif self.retry_after_mode == "date":   # an HTTP-date has whole seconds: round up
            # On the same clock as the Date header: a server whose clock is off sends
            # both off by the same amount, and only Retry-After minus Date is reliable.
            headers.append(("Retry-After", email.utils.formatdate(
                math.ceil(time.time() + self.date_offset + wait), usegmt=True)))
        return _err(429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded, retry later", headers)

    # ---- the API (self.lock held)

    def _decide(self, method, path, query, auth, entry):
        """Everything but the latency sleep and the write: returns a Reply."""
        now = self.now()
        self._settle(now)
        wait = self._take_token()
        if wait is not None:
            return self._too_many(wait)
        if self.error_rate and self._rng.random() < self.error_rate:
            return _std_error(self._rng.choice((500, 502, 503)))
        route, arg = _route(method, path)
        if route in ("get", "delete"):
            entry["phone_id"] = norm_uuid(arg) or arg
        if route == "redirect":
            return Reply(307, headers=[("Location", arg + ("?" + query if query else ""))])
        if route == "404":
            return _json_reply(404, {"detail": "Not Found"})
        if route == "405":
            return _json_reply(405, {"detail": "Method Not Allowed"}, [("Allow", arg)])
        if route == "501":
            return _err(501, "NOT_IMPLEMENTED", "This endpoint is not implemented by the fake")
        token = _bearer(auth)
        if token is None or token not in (self.token, self.view_only_token):
            return _err(401, "UNAUTHORIZED", "Invalid or missing API key", [("WWW-Authenticate", "Bearer")])
        entry["auth_ok"] = True
        if route == "delete" and token != self.token:
            return _err(403, "FORBIDDEN", "Missing required permissions")
        pid = params = None
        if route == "list":
            params, errors = _parse_list_query(query, self.paging)
            if errors:
                return _detail(errors)
            if params["after"] and params["before"]:
                return _err(422, "INVALID_PAGINATION_PARAMETERS",
                            "Cannot specify both 'before' and 'after' parameters")
            if params["page"] and (params["after"] or params["before"]):
                return _err(422, "INVALID_PAGINATION_PARAMETERS",
                            "Cannot specify both 'page' and cursor parameters")
        else:
            pid = norm_uuid(arg)
            if pid is None:
                return _detail([_verr("path", "phone_id" if route == "get" else "id", "uuid_parsing",
                                      "Input should be a valid UUID", arg)])
        if route == "delete":
            self.delete_counts[pid] = self.delete_counts.get(pid, 0) + 1
            self._check_double(pid, entry)
        ans = self._next_answer("list" if route == "list" else pid, method)
        if ans is None:
            return self._real(route, pid, params, now)
        entry["scripted"] = ans
        return self._scripted(ans, route, pid, params, now)

    def _check_double(self, pid, entry):
        """A DELETE for a phone already released or scheduled is a client bug, whatever
        the answer turns out to be (409, scripted, or a 404 after a 'gone' release)."""
        p, prior = self.phones.get(pid), self.release_counts.get(pid, 0)
        background = any(x[2] == pid for x in self._later)
        if p is None:
            bad = prior > 0
        else:
            # A release accepted and still at work in the background counts:
            # a second DELETE then is a second release of the same phone.
            bad = p["status"] in ("released", "finished") or background or \
                (p["status"] == "assigned" and bool(p.get("scheduled_release_at")))
        if bad:
            self.violations.append({
                "kind": "double_release", "phone_id": pid, "phone_status": p and p["status"],
                "scheduled_release_at": p and p.get("scheduled_release_at"), "background": background,
                "prior_releases": prior, "t": entry["t"], "wall": entry["wall"]})

    def _next_answer(self, key, method):
        q = self._scripts.get((key, method))
        if not q and key != "list":
            key, q = "*", self._scripts.get(("*", method))
        if not q:
            return None
        ans = q.pop(0)
        if not q:
            del self._scripts[(key, method)]
        return ans

    def _real(self, route, pid, params, now):
        if route == "list":
            return self._list(params)
        p = self.phones.get(pid)
        if p is None:
            return _err(404, "PHONE_NOT_FOUND", "Phone with id %s not found" % pid)
        if route == "get":
            return Reply(200, self._encode(pid))
        return self._release(pid, p, now)

    def _release(self, pid, p, now):
        st = p["status"]
        if st in ("released", "finished"):
            return _err(409, "PHONE_ALREADY_RELEASED", "Phone %s is already %s" % (pid, st))
        if st in ("reserved", "pending_verification"):
            return _err(409, "PHONE_NOT_RELEASABLE", "Phone %s in status %s cannot be released" % (pid, st))
        if p["telephony_provider"] == "netelip":
            if p.get("scheduled_release_at"):
                return _err(409, "RELEASE_ALREADY_SCHEDULED", "Release of phone %s is already scheduled for %s"
                            % (pid, p["scheduled_release_at"]))
            self._put(dict(p, scheduled_release_at=iso(now + self.billing_period)))
        elif self.custom_release == "gone":
            self._drop(pid)
        else:
            self._put(dict(p, status="released", released_at=iso(now)))
        self.release_counts[pid] = self.release_counts.get(pid, 0) + 1
        return Reply(204)

    def _churn(self):
        """The account moves under the listing (self.lock held)."""
        if not self.churn:
            return
        protect = set(self.churn["protect"])
        for _ in range(self.churn["add"]):
            self._churned += 1
            self._put(_defaults(900000 + self._churned, _seeded_uuid(self._churn_rng)))
        for _ in range(self.churn["remove"]):
            ids = [i for i in self._ids if i not in protect]
            if ids:
                self._drop(ids[self._churn_rng.randrange(len(ids))])

    def _list(self, params):
        self._churn()
        ids = self._by_status[params["status"]] if params["status"] else self._ids
        pred = self._filter(params)
        limit, page, total_pages = params["limit"], params["page"], None
        after, before = params["after"], params["before"]
        # The spec does not say what a cursor naming a phone that does not exist (any
        # more) gets. "value" keeps the pages stable; the others are what a real server
        # may do instead, so a client can be tested against each. Existence is about the
        # phones as they are now: a custom phone released "gone" no longer exists.
        cursor = after or before
        gone = self.gone_cursor != "value" and cursor is not None and cursor not in self.phones
        if gone and self.gone_cursor == "400":
            return _err(400, "NOT_VALID_FIELD", "Invalid field value in query parameters")
        if gone and self.gone_cursor == "restart":
            after = before = None
        if page:
            seq = ids if pred is None else [i for i in ids if pred(i)]
            off, n = (page - 1) * limit, len(seq)
            if params["order"] == "asc":
                out = seq[off:off + limit]
            else:
                out = seq[max(0, n - off - limit):max(0, n - off)][::-1]
            has_more, total_pages = off + limit < n, math.ceil(n / limit)
        elif gone and self.gone_cursor == "empty":
            out, has_more = [], False
        else:
            out, has_more = _keyset(ids, params["order"], after, before, limit, pred)
        tail = json.dumps({"first_id": out[0] if out else None, "last_id": out[-1] if out else None,
                           "has_more": has_more, "current_page": page, "total_pages": total_pages},
                          separators=(",", ":"))
        return Reply(200, b'{"data":[' + b",".join(self._encode(i) for i in out) + b"]," + tail[1:].encode())

    def _filter(self, params):
        """Predicate for the rarely used filters (they cost a scan, unlike status)."""
        checks = []
        for k in ("inbound_agent_id", "outbound_agent_id"):
            if params[k]:
                checks.append(lambda p, k=k, v=params[k]: norm_uuid(p.get(k)) == v)
        if params["start_assigned_at"] is not None:
            checks.append(lambda p, v=params["start_assigned_at"]:
                          bool(p.get("assigned_at")) and parse_ts(p["assigned_at"]) >= v)
        if params["end_assigned_at"] is not None:
            checks.append(lambda p, v=params["end_assigned_at"]:
                          bool(p.get("assigned_at")) and parse_ts(p["assigned_at"]) <= v)
        if not checks:
            return None
        return lambda pid: all(c(self.phones[pid]) for c in checks)

    def _scripted(self, ans, route, pid, params, now):
        # Only the real handler changes state. It runs for DELETE when the answer says
        # "apply", or by default when the answer only adds transport faults (delay,
        # trickle, drop_mid_body...) to the real answer. GET/list have no side effects.
        replaces = any(k in ans for k in ("status", "body", "huge")) or ans.get("drop")
        real = None
        late = route == "delete" and ans.get("apply_late") and ans.get("apply", not replaces)
        background = route == "delete" and "apply_after" in ans and ans.get("apply", not replaces)
        if (route != "delete" or ans.get("apply", not replaces)) and not late and not background:
            real = self._real(route, pid, params, now)
        if background:
            # An API that accepts now and releases later: the answer goes at
            # once, the release happens apply_after seconds on (the fake's clock).
            heapq.heappush(self._later, (now + float(ans["apply_after"]), next(self._later_seq), pid))
        if ans.get("drop"):
            r = Reply(None)
            r.drop = True
        elif "huge" in ans:
            n = int(ans["huge"])
            r = Reply(ans.get("status", 200), ('{"x_padding":"%s"}' % ("x" * max(0, n - 16))).encode())
        elif "body" in ans:
            b = ans["body"]
            b = b.encode() if isinstance(b, str) else json.dumps(b).encode()
            r = Reply(ans.get("status", 200), b, ans.get("content_type", "application/json"))
        elif "status" in ans:
            s = int(ans["status"])
            if 200 <= s < 300:
                r = Reply(s, b"" if route == "delete" or s == 204 else real.body)
            else:
                r = _std_error(s, pid, ans.get("error_code"), ans.get("message"))
        else:
            r = real if real is not None else Reply(204)
        if "retry_after" in ans:
            r.headers.append(("Retry-After", str(ans["retry_after"])))
        r.headers.extend((ans.get("headers") or {}).items())
        r.delay = float(ans.get("delay", 0))
        r.gate = ans.get("gate")
        r.drop_mid_body = bool(ans.get("drop_mid_body"))
        r.trickle = ans.get("trickle")
        if late:
            # An API still at work: the release happens at the end of the delay,
            # so a look during the delay sees the phone as it was.
            r.after = lambda: self._real(route, pid, params, self.now())
        return r

    # ---- HTTP plumbing (called by _Handler, no lock held)

    def _api(self, h, t0, url):
        auth = h.headers.get("Authorization")
        entry = {"t": t0, "wall": time.time(), "conn": h.conn_id, "method": h.command, "path": url.path,
                 "query": url.query, "status": None, "phone_id": None, "auth_ok": False,
                 "authorization_header_present": auth is not None, "scripted": None, "t_reply": None}
        with self.lock:
            latency = self.latency
            reply = self._decide(h.command, url.path, url.query, auth, entry)
        if latency + reply.delay > 0:
            time.sleep(latency + reply.delay)    # outside the lock: slow answers overlap
        if reply.gate is not None:
            reply.gate.wait(GATE_TIMEOUT)        # until the test opens it: no guess at a delay
        if reply.after:
            with self.lock:
                reply.after()
        entry["status"] = None if reply.drop else reply.status
        entry["t_reply"] = time.monotonic()
        # Logged before the write, so a client that got its answer always finds it logged.
        line = json.dumps(entry, default=repr) + "\n"   # a gate is no JSON
        with self._log_lock:
            self.log.append(entry)
            if self._log_file:
                self._log_file.write(line)
                self._log_file.flush()
        return reply

    def _admin(self, method, url, body):
        path, q = url.path.rstrip("/"), {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            data = json.loads(body) if body.strip() else {}
            if method == "GET" and path == "/_fake/health":
                return _json_reply(200, {"ok": True, "phones": len(self.phones)})
            if method == "GET" and path == "/_fake/state":
                return _json_reply(200, self.snapshot(phones=q.get("phones", "1") != "0"))
            if method == "GET" and path == "/_fake/log":
                log = list(self.log)
                return _json_reply(200, {"log": log[int(q.get("since", 0)):], "next": len(log)})
            if method == "DELETE" and path == "/_fake/log":
                self.clear_log()
                return _json_reply(200, {"ok": True})
            if method == "POST" and path == "/_fake/script":
                self.script(data["id"], data.get("method", "GET"), data.get("answers", []))
                return _json_reply(200, {"ok": True})
            if method == "POST" and path == "/_fake/config":
                return _json_reply(200, self.configure(**data))
            if method == "POST" and path == "/_fake/advance":
                return _json_reply(200, {"now": self.advance(data.get("seconds", 0))})
            if method == "POST" and path == "/_fake/agents":
                return _json_reply(200, self.set_agents(data["id"], data.get("inbound_agent_id"),
                                                        data.get("outbound_agent_id")))
            if method == "POST" and path == "/_fake/phones":
                phones = data.get("phones") if isinstance(data, dict) else data
                return _json_reply(200, {"added": self.add_phones(phones)})
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            return _json_reply(400, {"error": "%s: %s" % (type(e).__name__, e)})
        return _json_reply(404, {"error": "unknown admin endpoint %s %s" % (method, path)})

    @staticmethod
    def _send(h, r):
        if r.drop:                       # close without a single byte of answer
            h.close_connection = True
            return
        head = ["HTTP/1.1 %d %s" % (r.status, _phrase(r.status))]
        if isinstance(r.date, str):
            head.append("Date: " + r.date)
        elif r.date is not None:
            head.append("Date: " + email.utils.formatdate(time.time() + r.date, usegmt=True))
        head.append("Server: fake-diga")
        body = r.body
        if r.status in (204, 304):       # RFC 9110: no body and no Content-Length
            body = b""
        else:
            head += ["Content-Type: " + r.ctype, "Content-Length: %d" % len(body)]
        head += ["%s: %s" % kv for kv in r.headers]
        if h.close_connection:           # the client asked for Connection: close
            head.append("Connection: close")
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if h.command == "HEAD":
            body = b""
        try:
            if r.drop_mid_body:          # with no body to cut, cut the headers instead
                h.wfile.write(raw_head + body[:len(body) // 2] if body else raw_head[:len(raw_head) // 2])
                h.close_connection = True
            elif r.trickle:
                data = raw_head + body
                for i in range(len(data)):
                    h.wfile.write(data[i:i + 1])
                    time.sleep(float(r.trickle) / len(data))
            else:
                h.wfile.write(raw_head + body)
        except OSError:                  # the client went away: nothing to tell it
            h.close_connection = True


def _sorted_remove(ids, x):
    i = bisect.bisect_left(ids, x)
    if i < len(ids) and ids[i] == x:
        del ids[i]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, *a, **kw):
        self.conn_ids = itertools.count(1)
        self._conns, self._conns_lock = set(), threading.Lock()
        super().__init__(*a, **kw)

    def server_bind(self):
        # HTTPServer.server_bind would reverse-resolve the address; not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self):
        """Wake keep-alive handler threads so stop() leaves no open connection behind."""
        with self._conns_lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"        # keep-alive; every answer has a Content-Length
    server_version, sys_version = "fake-diga", ""
    timeout = 300                        # an idle keep-alive connection is closed after this

    def setup(self):
        super().setup()
        self.conn_id = next(self.server.conn_ids)

    def log_message(self, fmt, *args):   # quiet: the request log is the record
        pass

    def _dispatch(self):
        t0, fake = time.monotonic(), self.server.fake
        url = urlsplit(self.path)
        admin = url.path.startswith("/_fake/")
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise ValueError("chunked request bodies are not supported")
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 <= n <= 64 << 20:
                raise ValueError("bad Content-Length")
            body = self.rfile.read(n) if n else b""
        except ValueError as e:
            self.close_connection = True
            reply = _err(400, "BAD_REQUEST", str(e))
        else:
            try:
                reply = fake._admin(self.command, url, body) if admin else fake._api(self, t0, url)
            except Exception:            # a bug in the fake: say so loudly
                traceback.print_exc()
                reply = _err(500, "FAKE_INTERNAL_ERROR", "fake_diga crashed; see its stderr")
        # Every answer on an API path, even one the API code never saw, carries the
        # API's Date. Admin answers keep the real one, so a harness is never misled.
        if not admin:
            reply.date = fake._api_date()
        fake._send(self, reply)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


# ---------------------------------------------------------------- CLI

class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake of the Diga phones API (tests only).")
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the port here (atomically)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--account", help="JSON file with a list of phones")
    src.add_argument("--phones", type=int, default=100, help="generate N phones (default 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every API answer")
    ap.add_argument("--error-rate", type=float, default=0.0, help="probability of a random 500/502/503")
    ap.add_argument("--rate-limit", type=float, default=None, help="requests per second (token bucket)")
    ap.add_argument("--rate-burst", type=int, default=None, help="bucket size (default ceil(rate))")
    ap.add_argument("--retry-after-mode", choices=("seconds", "date", "none"), default="seconds")
    ap.add_argument("--billing-period", type=float, default=3600.0, help="netelip release delay, seconds")
    ap.add_argument("--custom-release", choices=("released", "gone"), default="released")
    ap.add_argument("--date-offset", type=float, default=0.0,
                    help="seconds added to the wall clock in the API's Date header")
    ap.add_argument("--date-header", default="real",
                    help="real, none (no Date header) or a string sent verbatim as the Date")
    ap.add_argument("--gone-cursor", choices=GONE_CURSOR, default="value",
                    help="what a cursor naming a phone that does not exist gets")
    ap.add_argument("--paging", choices=PAGING, default="both",
                    help="cursor: the API ignores page= and only pages by cursor")
    ap.add_argument("--log", help="append the request log here as JSON lines")
    ap.add_argument("--token", default="test-token")
    ap.add_argument("--view-only-token", default="view-only-token", help="\"\" disables it")
    a = ap.parse_args(argv)

    phones = load_account(a.account) if a.account else make_account(a.phones, a.seed)
    fake = FakeDiga(phones, seed=a.seed, latency=a.latency, error_rate=a.error_rate,
                    rate_limit=a.rate_limit, rate_burst=a.rate_burst, retry_after_mode=a.retry_after_mode,
                    billing_period=a.billing_period, custom_release=a.custom_release, token=a.token,
                    view_only_token=a.view_only_token or None, date_offset=a.date_offset,
                    date_header=a.date_header, gone_cursor=a.gone_cursor,
                    paging=a.paging, log_path=a.log,
                    host=a.host, port=a.port)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        url = fake.start()
        if a.port_file:                  # rename is atomic: a poller never reads half a number
            tmp = "%s.tmp.%d" % (a.port_file, os.getpid())
            with open(tmp, "w") as f:
                f.write("%d\n" % fake.port)
            os.replace(tmp, a.port_file)
        print(url, flush=True)
        threading.Event().wait()         # until a signal raises _Stop
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
