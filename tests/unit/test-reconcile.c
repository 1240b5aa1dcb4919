/* SPDX-License-Identifier: MIT */
/* The decision table: every case in the tests/reconcile/ files is one test of
 * daemon/reconcile.c.  A case is a block of lines:
 *
 *   case: a name
 *   row: state=pending id=ID number=+34910000001 attempts=1 sent_at=900 ...
 *   world: now=1000 due_now=1000 settle=300 max_attempts=3 dry_run=1 ...
 *   look: phone status=assigned provider=netelip scheduled=2027-01-01T00:00:00Z
 *   look: answer status=503 api=0 retry_after=2
 *   look: not_listed listed=100 unreadable=1
 *   delete: status=204
 *   send:
 *   page: status=429 attempts=0
 *   expect: to=scheduled write=1 next=none detail~"release ordered"
 *
 * Times are seconds ("now", "now+300", "sent+300" and, on the boot-time
 * clock, "boot+20" work too; a hold_boot of "other" is one stamped in
 * another boot); `to=row`
 * expects the row's own state.  A value
 * written a|b|c makes one case per alternative (several such fields make
 * their cross product), so a row of the table can cover every state or
 * every answer of a class.  Only the fields `expect:` names are checked;
 * `field~"text"` checks that the text is contained. */

#include "unit.h"

#include <glob.h>
#include <syslog.h>

#include "macro.h"
#include "reconcile.h"

#define ID   "3c90c3cc-0d44-4b50-8888-8dd25736052a"
#define MAX_TOKENS 24

typedef struct Token {
        char key[24], value[160];
} Token;

typedef struct Line {
        char kind[16];            /* row, world, look, delete, send, page, expect */
        char sub[16];             /* look: phone, answer, not_listed */
        Token t[MAX_TOKENS];
        size_t n;
} Line;

typedef struct Case {
        char name[512];
        char where[300];          /* FILE:LINE */
        Line lines[7];
        size_t n;
} Case;

static Case *cases;
static size_t n_cases, cap_cases;

/* ---- parsing ---- */

static void parse_tokens(const char *s, Line *l, const char *where) {
        while (*s) {
                Token *t;
                size_t k = 0, v = 0;

                while (*s == ' ' || *s == '\t')
                        s++;
                if (!*s || *s == '\n')
                        break;
                if (l->n >= MAX_TOKENS)
                        fail_msg("%s: too many fields", where);
                t = &l->t[l->n++];
                while (*s && *s != '=' && *s != '~' && *s != ' ' && *s != '\n' && k < sizeof t->key - 2)
                        t->key[k++] = *s++;
                if (*s == '~')
                        t->key[k++] = *s++;      /* "detail~": contains */
                t->key[k] = 0;
                if (*s == '=')
                        s++;
                if (*s == '"') {
                        s++;
                        while (*s && *s != '"' && v < sizeof t->value - 1)
                                t->value[v++] = *s++;
                        if (*s != '"')
                                fail_msg("%s: unterminated quote", where);
                        s++;
                } else
                        while (*s && *s != ' ' && *s != '\n' && v < sizeof t->value - 1)
                                t->value[v++] = *s++;
                t->value[v] = 0;
        }
}

static void add_case(Case *c) {
        if (c->n == 0)
                return;
        if (n_cases == cap_cases) {
                cap_cases = cap_cases ? cap_cases * 2 : 256;
                cases = realloc(cases, cap_cases * sizeof(Case));
                assert_non_null(cases);
        }
        cases[n_cases++] = *c;
}

/* One case per combination of the a|b|c alternatives. */
static void expand(const Case *c) {
        for (size_t i = 0; i < c->n; i++)
                for (size_t j = 0; j < c->lines[i].n; j++) {
                        const char *v = c->lines[i].t[j].value, *bar = strchr(v, '|');
                        const char *start = v;

                        if (!bar || streq(c->lines[i].kind, "expect"))
                                continue;
                        for (;;) {
                                Case e = *c;
                                size_t len = bar ? (size_t) (bar - start) : strlen(start);
                                char alt[160];

                                snprintf(alt, sizeof alt, "%.*s", (int) len, start);
                                snprintf(e.lines[i].t[j].value, sizeof e.lines[i].t[j].value, "%s", alt);
                                snprintf(e.name, sizeof e.name, "%.300s [%s=%s]", c->name, c->lines[i].t[j].key, alt);
                                expand(&e);
                                if (!bar)
                                        return;
                                start = bar + 1;
                                bar = strchr(start, '|');
                        }
                }
        add_case((Case *) c);
}

static void load(const char *path) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        char buf[4096];
        unsigned lineno = 0;
        Case c = {};

        assert_non_null(f);
        while (fgets(buf, sizeof buf, f)) {
                char *colon, where[300];
                Line *l;

                lineno++;
                snprintf(where, sizeof where, "%s:%u", path, lineno);
                buf[strcspn(buf, "\n")] = 0;
                if (buf[0] == '#' || buf[0] == 0)
                        continue;
                colon = strchr(buf, ':');
                if (!colon)
                        fail_msg("%s: expected 'kind: fields'", where);
                *colon = 0;
                if (streq(buf, "case")) {
                        expand(&c);
                        c = (Case) {};
                        snprintf(c.name, sizeof c.name, "%s", colon + 1 + strspn(colon + 1, " "));
                        snprintf(c.where, sizeof c.where, "%s", where);
                        continue;
                }
                if (c.n >= ELEMENTSOF(c.lines))
                        fail_msg("%s: too many lines in one case", where);
                l = &c.lines[c.n++];
                snprintf(l->kind, sizeof l->kind, "%.15s", buf);
                if (streq(buf, "look")) {
                        const char *s = colon + 1 + strspn(colon + 1, " ");
                        size_t k = strcspn(s, " ");
                        snprintf(l->sub, sizeof l->sub, "%.*s", (int) k, s);
                        parse_tokens(s + k, l, where);
                } else
                        parse_tokens(colon + 1, l, where);
        }
        expand(&c);
}

/* ---- values ---- */

typedef struct Ctx {
        const Case *c;
        int64_t now, sent, boot;
} Ctx;

static const char *get(const Line *l, const char *key) {
        for (size_t i = 0; l && i < l->n; i++)
                if (streq(l->t[i].key, key))
                        return l->t[i].value;
        return NULL;
}

static const Line *line(const Case *c, const char *kind) {
        for (size_t i = 0; i < c->n; i++)
                if (streq(c->lines[i].kind, kind))
                        return &c->lines[i];
        return NULL;
}

/* Seconds, "now", "now+N", "sent+N" -> usec. */
static int64_t usec_of(const Ctx *x, const char *v) {
        int64_t base = 0;
        double d;

        if (strncmp(v, "now", 3) == 0) {
                base = x->now;
                v += 3;
        } else if (strncmp(v, "sent", 4) == 0) {
                base = x->sent;
                v += 4;
        } else if (strncmp(v, "boot", 4) == 0) {
                base = x->boot;
                v += 4;
        } else if (streq(v, "other"))
                return INT64_MAX;   /* a hold stamped in another boot */
        if (!*v)
                return base;
        d = strtod(v, NULL);
        return base + (int64_t) (d * (double) USEC_PER_SEC);
}

static int64_t time_or(const Ctx *x, const Line *l, const char *key, int64_t dflt) {
        const char *v = get(l, key);
        return v ? usec_of(x, v) : dflt;
}

static long num_or(const Line *l, const char *key, long dflt) {
        const char *v = get(l, key);
        return v ? strtol(v, NULL, 10) : dflt;
}

static const char *str_or(const Line *l, const char *key, const char *dflt) {
        const char *v = get(l, key);
        if (v && streq(v, "null"))
                return NULL;
        return v ? v : dflt;
}

static PhoneState state_of(const Case *c, const char *v) {
        PhoneState s = state_from_string(v);
        if (s < 0)
                fail_msg("%s (%s): unknown state '%s'", c->where, c->name, v);
        return s;
}

static const char *next_name(Next n) {
        return n == NEXT_GET ? "get" : n == NEXT_DELETE ? "delete" : "none";
}

static const char *level_name(int level) {
        switch (level) {
        case 0: return "none";
        case LOG_ERR: return "err";
        case LOG_WARNING: return "warning";
        case LOG_NOTICE: return "notice";
        case LOG_INFO: return "info";
        default: return "other";
        }
}

static const char *verdict_name(PageVerdict v) {
        static const char *const n[] = { [PAGE_OK] = "ok", [PAGE_RETRY] = "retry", [PAGE_GIVE_UP] = "give_up",
                                         [PAGE_AUTH] = "auth" };
        return n[v];
}

/* ---- one case ---- */

static bool check(const Case *c, const char *key, const char *want, const char *got) {
        bool contains = key[strlen(key) - 1] == '~';
        bool ok = contains ? (got && strstr(got, want)) : streq(want, got ? got : "null");

        if (!ok)
                print_error("%s: %s: %s%s \"%s\", got \"%s\"\n", c->where, c->name, key, contains ? "" : " is not",
                            want, got ? got : "null");
        return ok;
}

static void run_case(void **state) {
        const Case *c = *state;
        const Line *lr = line(c, "row"), *lw = line(c, "world"), *lx = line(c, "expect"), *ll = line(c, "look"),
                   *ld = line(c, "delete"), *ls = line(c, "send"), *lp = line(c, "page");
        Ctx x = { .c = c };
        char got[64];
        bool ok = true, sent_ok = false;
        RemotePhone phone = {};
        Outcome o = {};
        PageOutcome po = {};
        World w;
        Row row;

        if (!lx)
                fail_msg("%s (%s): no expect: line", c->where, c->name);
        x.now = time_or(&x, lw, "now", 1800000000 * (int64_t) USEC_PER_SEC);   /* 2027-01-15 */
        x.boot = time_or(&x, lw, "boot_now", 3600 * (int64_t) USEC_PER_SEC);   /* an hour after boot */
        w = (World) {
                .now = x.now, .due_now = time_or(&x, lw, "due_now", x.now), .boot_now = x.boot,
                .max_attempts = (unsigned) num_or(lw, "max_attempts", 3),
                .base_delay = (usec_t) time_or(&x, lw, "base_delay", (int64_t) USEC_PER_SEC),
                .max_delay = (usec_t) time_or(&x, lw, "max_delay", 60 * (int64_t) USEC_PER_SEC),
                .settle = (usec_t) time_or(&x, lw, "settle", 300 * (int64_t) USEC_PER_SEC),
                .jitter = get(lw, "jitter") ? strtod(get(lw, "jitter"), NULL) : 0.5,
                .dry_run = num_or(lw, "dry_run", 0) != 0,
        };
        x.sent = time_or(&x, lr, "sent_at", 0);
        row = (Row) {
                .state = lr ? state_of(c, str_or(lr, "state", "pending")) : STATE_PENDING,
                .key = str_or(lr, "key", "k"), .id = str_or(lr, "id", ID), .number = str_or(lr, "number", NULL),
                .not_before = time_or(&x, lr, "not_before", 0) / (int64_t) USEC_PER_SEC,
                .hold_boot_until = time_or(&x, lr, "hold_boot", 0),
                .attempts = (unsigned) num_or(lr, "attempts", 0), .sent_at = x.sent,
                .look_after = time_or(&x, lr, "look_after", x.sent ? x.sent + (int64_t) w.settle : 0),
                .provider = str_or(lr, "provider", NULL), .last_error = str_or(lr, "last_error", NULL),
                .rejected = str_or(lr, "rejected", NULL), .answered = (int) num_or(lr, "answered", 0),
                .inbound_agent = str_or(lr, "inbound", NULL), .outbound_agent = str_or(lr, "outbound", NULL),
                .release_in_use = streq(str_or(lr, "in_use", "refuse"), "release"),
        };

        if (ll) {
                const char *sub = ll->sub;
                Look look = { .reply = {
                        .kind = CALL_GET, .status = (int) num_or(ll, "status", 200),
                        .api = num_or(ll, "api", streq(sub, "phone") || streq(sub, "not_listed")) != 0,
                        .retry_after = num_or(ll, "retry_after", -1), .error = str_or(ll, "error", NULL),
                        .message = str_or(ll, "message", NULL), .asked_at = time_or(&x, ll, "asked_at", x.now),
                } };

                if (streq(str_or(ll, "via", "get"), "list"))
                        look.reply.kind = CALL_LIST;
                if (streq(sub, "phone")) {
                        snprintf(phone.id, sizeof phone.id, "%s", str_or(ll, "id", row.id ? row.id : ID));
                        phone.number = (char *) str_or(ll, "number", "+34910000001");
                        phone.status_name = (char *) str_or(ll, "status_name", str_or(ll, "phone", "assigned"));
                        phone.status = remote_status_from_string(phone.status_name);
                        phone.provider = (char *) str_or(ll, "provider", "netelip");
                        phone.scheduled_release_at = (char *) str_or(ll, "scheduled", NULL);
                        phone.inbound_agent = (char *) str_or(ll, "inbound", NULL);
                        phone.outbound_agent = (char *) str_or(ll, "outbound", NULL);
                        phone.nickname = (char *) str_or(ll, "nickname", NULL);
                        look.seen = &phone;
                        look.carriers = (unsigned) num_or(ll, "carriers", 1);
                        look.carrier_ids = str_or(ll, "carrier_ids", NULL);
                } else if (streq(sub, "not_listed")) {
                        look.not_listed = true;
                        look.listed = (size_t) num_or(ll, "listed", 100);
                        look.unreadable = (size_t) num_or(ll, "unreadable", 0);
                } else if (!streq(sub, "answer"))
                        fail_msg("%s (%s): look: phone, answer or not_listed", c->where, c->name);
                reconcile_look(&row, &look, &w, &o);
        } else if (ld) {
                Reply r = {
                        .kind = CALL_DELETE, .status = (int) num_or(ld, "status", 204), .api = num_or(ld, "api", 0) != 0,
                        .retry_after = num_or(ld, "retry_after", -1), .error = str_or(ld, "error", NULL),
                        .message = str_or(ld, "message", NULL), .asked_at = time_or(&x, ld, "asked_at", x.sent),
                        .unsent = num_or(ld, "unsent", 0) != 0,
                };
                reconcile_delete(&row, &r, &w, &o);
        } else if (ls) {
                sent_ok = reconcile_send(&row, &w, &o);
        } else if (lp) {
                Reply r = {
                        .kind = CALL_LIST, .status = (int) num_or(lp, "status", 200), .api = num_or(lp, "api", 0) != 0,
                        .retry_after = num_or(lp, "retry_after", -1), .error = str_or(lp, "error", NULL),
                        .asked_at = x.now,
                };
                reconcile_page(&r, (unsigned) num_or(lp, "attempts", 0), &w, &po);
        } else
                fail_msg("%s (%s): no look:, delete:, send: or page: line", c->where, c->name);

        for (size_t i = 0; i < lx->n; i++) {
                const char *k = lx->t[i].key, *want = lx->t[i].value;
                char base[32];
                const char *v = NULL;

                snprintf(base, sizeof base, "%.*s", (int) strcspn(k, "~"), k);
#define B(b) ((b) ? "1" : "0")
#define N(fmt, val) (snprintf(got, sizeof got, fmt, val), got)
                if (streq(base, "to"))
                        v = state_to_string(o.to);
                else if (streq(base, "write"))
                        v = B(o.write);
                else if (streq(base, "attempts"))
                        v = N("%u", o.attempts);
                else if (streq(base, "next_at"))
                        v = o.next_at < 0 ? "keep" : N("%lld", (long long) o.next_at);
                else if (streq(base, "sent_at"))
                        v = N("%lld", (long long) o.sent_at);
                else if (streq(base, "clear_sent"))
                        v = B(o.clear_sent);
                else if (streq(base, "next"))
                        v = next_name(o.next);
                else if (streq(base, "look_after"))
                        v = N("%lld", (long long) o.look_after);
                else if (streq(base, "rejected"))
                        v = B(o.rejected);
                else if (streq(base, "auth_pause"))
                        v = B(o.auth_pause);
                else if (streq(base, "rate_backoff"))
                        v = B(lp ? po.rate_backoff : o.rate_backoff);
                else if (streq(base, "hold"))
                        v = N("%lld", (long long) (lp ? po.hold : o.hold));
                else if (streq(base, "dry_run"))
                        v = B(o.dry_run);
                else if (streq(base, "level"))
                        v = level_name(o.level);
                else if (streq(base, "detail"))
                        v = lp ? po.detail : o.detail;
                else if (streq(base, "error"))
                        v = o.error;
                else if (streq(base, "id"))
                        v = o.id;
                else if (streq(base, "provider"))
                        v = o.provider;
                else if (streq(base, "scheduled"))
                        v = o.scheduled;
                else if (streq(base, "api_number"))
                        v = o.api_number;
                else if (streq(base, "inbound"))
                        v = o.inbound_agent;
                else if (streq(base, "outbound"))
                        v = o.outbound_agent;
                else if (streq(base, "nickname"))
                        v = o.nickname;
                else if (streq(base, "seen"))
                        v = B(o.seen);
                else if (streq(base, "sent"))
                        v = B(sent_ok);
                else if (streq(base, "verdict"))
                        v = verdict_name(po.verdict);
                else if (streq(base, "delay"))
                        v = N("%lld", (long long) po.delay);
                else
                        fail_msg("%s (%s): unknown expect field '%s'", c->where, c->name, k);
#undef N
#undef B
                /* Expected times are written like the inputs: as seconds, or now+N. */
                if (streq(base, "to") && streq(want, "row"))
                        want = state_to_string(row.state);     /* no change of state */
                if ((streq(base, "next_at") || streq(base, "sent_at") || streq(base, "look_after") || streq(base, "delay"))
                    && !streq(want, "keep")) {
                        char w2[64];
                        snprintf(w2, sizeof w2, "%lld", (long long) usec_of(&x, want));
                        ok = check(c, k, w2, v) && ok;
                } else
                        ok = check(c, k, want, v) && ok;
        }
        if (!ok)
                fail_msg("%s: %s: the outcome differs (detail: \"%s\")", c->where, c->name, lp ? po.detail : o.detail);
}

int main(void) {
        glob_t g;
        struct CMUnitTest *tests;
        int r;

        if (glob("tests/reconcile/*.txt", 0, NULL, &g) != 0) {
                fprintf(stderr, "test-reconcile: no tests/reconcile/*.txt (run from the top folder)\n");
                return 1;
        }
        for (size_t i = 0; i < g.gl_pathc; i++)
                load(g.gl_pathv[i]);
        globfree(&g);
        tests = calloc(n_cases, sizeof(struct CMUnitTest));
        assert_non_null(tests);
        for (size_t i = 0; i < n_cases; i++)
                tests[i] = (struct CMUnitTest) { .name = cases[i].name, .test_func = run_case,
                                                 .initial_state = &cases[i] };
        r = _cmocka_run_group_tests("test-reconcile", tests, n_cases, NULL, NULL);
        free(tests);
        free(cases);
        return r;
}
