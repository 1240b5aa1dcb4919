/* SPDX-License-Identifier: MIT */
/* retirectl plan --live: what the next pass would do with each declared
 * phone, against the account as the API shows it now, writing nothing.
 *
 * The rows are the declarations as the config says now, as applying them
 * would leave them (plan_foreach_row(): a declaration the daemon has not
 * applied yet is seen with the hold it would start).  The account is
 * listed by the daemon's own rules (listing.c: by page or by cursor, an
 * account that moves noticed, a number a listing by page lacks confirmed
 * by cursor), or, when that is fewer calls, each row is asked for by id;
 * each row meets its phone as in the daemon's pass (match.c), and
 * reconcile_look() decides, once whatever the row waits for is over.
 *
 * Nothing acts on a decision.  The ledger is opened read-only (no lock, so
 * beside a running daemon; a missing one reads as empty and is not made),
 * what the listing keeps goes to the connection's TEMP tables, the client
 * is only ever asked for GETs, and at half of pace.rate (the burst and the
 * concurrency are the config's): beside a daemon's pass, which does not
 * know of it, the API sees at most 1.5 times pace.rate. */

#include <inttypes.h>
#include <libgen.h>
#include <stdlib.h>

#include "api.h"
#include "diga.h"
#include "listing.h"
#include "log.h"
#include "macro.h"
#include "match.h"
#include "reconcile.h"
#include "retirectl.h"
#include "token.h"

typedef enum Would {
        WOULD_RELEASE,
        WOULD_ORDER,             /* netelip: the release takes effect at the end of the billing period */
        WOULD_WAIT,              /* a hold, not_before, a retry's time, an approval or a pause */
        WOULD_DEFER,             /* not releasable yet (reserved, pending verification) */
        WOULD_NONE,
        WOULD_REFUSE,            /* not in the account, two live phones with the number, id and number disagree,
                                  * an agent on it (in use) */
        _WOULD_MAX,
} Would;

static const char *const would_names[_WOULD_MAX] = {
        [WOULD_RELEASE] = "release", [WOULD_ORDER] = "order", [WOULD_WAIT] = "wait",
        [WOULD_DEFER] = "defer", [WOULD_NONE] = "none", [WOULD_REFUSE] = "refuse",
};

/* A row named by an id the listing lacks (or every row, when GETs are
 * fewer calls than a listing): what one GET of it showed. */
typedef struct Get {
        struct Live *live;
        size_t index;            /* the row's place among the declared ones */
        char id[UUID_STRING_LEN + 1];
        Call *call;
        sd_event_source *retry;
        unsigned attempts;
        bool done;
        RemotePhone seen;
        bool has_seen;
        int status;              /* without a phone: the API's own 4xx (a 404: not in the account) */
        char *message;
} Get;

typedef struct Live {
        Config *config;
        Ledger *ledger;
        Plan *plan;
        Pause pause;
        bool paused;
        sd_event *event;
        Api *api;
        Diga *diga;
        Listing *listing;
        World world;             /* the retry budget, settle_time, dry_run */
        int64_t now, boot_now;   /* usec: when the rows are decided */
        int64_t api_offset;      /* the API's clock minus ours, from its Date header */
        bool offset_known;
        unsigned calls;

        uint64_t by_id, by_number;   /* rows to look at */
        bool listed, list_done, confirmed;
        int list_r;
        char *list_why;

        Get *gets;
        size_t n_gets, gets_left, next_get;
        bool gets_done;
        int error;               /* a GET that failed for good */
        char *error_why;

        size_t index;            /* the row at hand, in declaration order */
        bool json;
        size_t n_shown, count[_WOULD_MAX], approving[_WOULD_MAX];
} Live;

typedef struct Verdict {
        Would would, then;       /* then: what comes once a wait is over */
        int64_t until;           /* seconds; with WOULD_WAIT, 0: until an operator acts */
        const char *id, *number;
        const char *nickname;    /* as the look saw it, else as on record */
        char why[OUTCOME_TEXT * 2];
} Verdict;

static void live_done(Live *v) {
        v->listing = listing_free(v->listing);
        for (size_t i = 0; i < v->n_gets; i++) {
                (void) sd_event_source_disable_unref(v->gets[i].retry);
                remote_phone_done(&v->gets[i].seen);
                free(v->gets[i].message);
        }
        free(v->gets);
        v->diga = diga_free(v->diga);
        v->api = api_free(v->api);
        v->event = sd_event_unref(v->event);
        pause_done(&v->pause);
        v->plan = plan_free(v->plan);
        v->ledger = ledger_close(v->ledger);
        v->config = config_free(v->config);
        free(v->list_why);
        free(v->error_why);
}

/* ---- the rows ---- */

/* Rows past deciding, or waiting for an operator: no pass looks at them. */
static bool needs_look(const Phone *p) {
        return p->state != STATE_RELEASED && p->state != STATE_SCHEDULED && p->state != STATE_FAILED &&
               p->state != STATE_CANCELLED;
}

static Row row_of(const Live *v, const Phone *p) {
        return (Row) {
                .state = p->state, .key = p->key, .id = p->id, .number = p->number, .not_before = p->not_before,
                .hold_boot_until = p->hold_boot_until, .attempts = p->attempts, .sent_at = p->sent_at,
                .look_after = p->sent_at ? p->sent_at + (int64_t) v->world.settle : 0,
                .provider = p->provider, .last_error = p->last_error,
                .inbound_agent = p->inbound_agent, .outbound_agent = p->outbound_agent,
                .release_in_use = p->in_use == IN_USE_RELEASE,
        };
}

static int count_row(const Phone *p, int change, void *userdata) {
        Live *v = userdata;

        if (needs_look(p))
                (*(p->id ? &v->by_id : &v->by_number))++;
        return 0;
}

/* When the daemon would next act on the row (seconds on our clock), and
 * why it waits till then; 0: it does not wait.  The ledger's own rule
 * (ledger_due()): a hold by the boot-time clock, not_before by both
 * clocks, a retry's or a look's next_at. */
static int64_t wait_until(const Live *v, const Phone *p, const char **why) {
        int64_t until = 0, t, due = reconcile_due_now(v->now, v->api_offset, v->offset_known);

        t = phone_held_until(p, v->now, v->boot_now);
        if (t > until) {
                until = t;
                *why = "within its safety.hold";
        }
        /* The due clock behind ours: not_before comes later on ours. */
        t = p->not_before + (v->now - due + (int64_t) USEC_PER_SEC - 1) / (int64_t) USEC_PER_SEC;
        if (p->not_before > 0 && p->not_before * (int64_t) USEC_PER_SEC > due && t > until) {
                until = t;
                *why = "not due before its not_before";
        }
        t = (p->next_at + (int64_t) USEC_PER_SEC - 1) / (int64_t) USEC_PER_SEC;
        if ((p->state == STATE_RETRYING || p->state == STATE_IN_FLIGHT) && p->next_at > v->now && t > until) {
                until = t;
                *why = p->sent_at ? "its last DELETE may have gone out: looked at once it had time to settle" :
                                    "retrying: not before its next attempt";
        }
        return until;
}

static Would would_of(const Outcome *o, const RemotePhone *seen) {
        if (o->next == NEXT_DELETE)
                return seen && seen->provider && streq(seen->provider, "netelip") ? WOULD_ORDER : WOULD_RELEASE;
        if (o->dry_run)
                return WOULD_NONE;
        switch (o->to) {
        case STATE_DEFERRED:
                return WOULD_DEFER;
        case STATE_FAILED:
        case STATE_UNRESOLVED:
        case STATE_IN_USE:
                return WOULD_REFUSE;
        default:
                return WOULD_NONE;
        }
}

static void why_of(const Outcome *o, const Look *l, Would would, char *buf, size_t size) {
        const RemotePhone *p = l->seen;

        if ((would == WOULD_ORDER || would == WOULD_RELEASE) && remote_in_use(p))
                /* The detail names the agents whose calls the DELETE cuts. */
                snprintf(buf, size, "%s: a DELETE %s", o->detail,
                         would == WOULD_ORDER ? "orders its release for the end of the billing period" : "releases it");
        else if (would == WOULD_ORDER)
                snprintf(buf, size, "assigned, netelip: a DELETE orders its release for the end of the billing period");
        else if (would == WOULD_RELEASE)
                snprintf(buf, size, "assigned%s%s: a DELETE releases it", p->provider ? ", " : "",
                         p->provider ? p->provider : "");
        else if (o->dry_run)
                snprintf(buf, size, "safety.dry_run: %s", o->detail);
        else if (o->detail[0])
                snprintf(buf, size, "%s", o->detail);
        else if (p)
                snprintf(buf, size, "%s at the API, as on record", strna(p->status_name));
        else
                snprintf(buf, size, "not in the account, as on record");
}

/* What the row meets once whatever it waits for is over: the world then,
 * with the phone as it is now. */
static void decide(const Live *v, const Phone *p, int change, const Look *look, Verdict *ret) {
        const char *wait = NULL;
        int64_t until = wait_until(v, p, &wait);
        int64_t at = until * (int64_t) USEC_PER_SEC > v->now ? until * (int64_t) USEC_PER_SEC : v->now;
        bool approval = v->plan->needs_approval && (change == CHANGE_ADD || change == CHANGE_REDECLARE);
        World w = v->world;
        Row row = row_of(v, p);
        Look l = *look;
        Outcome o;
        char then[OUTCOME_TEXT + 64];

        w.now = at;
        w.due_now = reconcile_due_now(at, v->api_offset, v->offset_known);
        w.boot_now = v->boot_now + (at - v->now);
        /* Stamped in another boot: it starts again, whole, at the next start. */
        if (row.hold_boot_until == INT64_MAX)
                row.hold_boot_until = v->boot_now + p->hold_len * (int64_t) USEC_PER_SEC;
        l.reply.asked_at = at;
        reconcile_look(&row, &l, &w, &o);
        ret->then = would_of(&o, l.seen);
        why_of(&o, &l, ret->then, then, sizeof then);
        ret->id = p->id ? p->id : l.seen ? l.seen->id : NULL;
        ret->number = p->number ? p->number : p->api_number ? p->api_number : l.seen ? l.seen->number : NULL;
        ret->nickname = l.seen && l.seen->nickname ? l.seen->nickname : p->nickname;
        ret->would = WOULD_WAIT;
        ret->until = 0;
        if (approval)
                snprintf(ret->why, sizeof ret->why, "held by the blast-radius guard until plan %s is approved "
                         "(then its safety.hold); then %s: %s", v->plan->hash, would_names[ret->then], then);
        else if (v->paused && (!p->sent_at || ret->then == WOULD_RELEASE || ret->then == WOULD_ORDER))
                /* Only a DELETE that may have gone out is looked at, and no DELETE leaves. */
                snprintf(ret->why, sizeof ret->why, "paused: nothing is released until 'retirectl resume'; then %s: %s",
                         would_names[ret->then], then);
        else if (until * (int64_t) USEC_PER_SEC > v->now && o.to != STATE_IN_USE) {
                ret->until = until;
                snprintf(ret->why, sizeof ret->why, "%s; then %s: %s", wait, would_names[ret->then], then);
        } else {
                ret->would = ret->then;
                /* A pass looks at these on a resync only (ledger_due()): the
                 * daemon's start and its reloads are resyncs, and its timer. */
                snprintf(ret->why, sizeof ret->why, "%s%s", p->state == STATE_DEFERRED || p->state == STATE_UNRESOLVED ?
                         "looked at again at the daemon's start, a reload or a resync: " : "", then);
        }
}

/* Released, ordered or failed: no pass looks at it. */
static void settled(const Phone *p, Verdict *ret) {
        *ret = (Verdict) { .would = WOULD_NONE, .then = WOULD_NONE, .id = p->id,
                           .number = p->number ? p->number : p->api_number, .nickname = p->nickname };
        if (p->state == STATE_RELEASED)
                snprintf(ret->why, sizeof ret->why, "released");
        else if (p->state == STATE_SCHEDULED)
                snprintf(ret->why, sizeof ret->why, "release ordered, effective %s", strna(p->scheduled_release_at));
        else
                snprintf(ret->why, sizeof ret->why, "%s%s%s: left to an operator ('retirectl retry %s')",
                         state_to_string(p->state), p->last_error ? ": " : "", strempty(p->last_error), p->key);
}

/* ---- the listing, and the GETs ---- */

static void on_answer(Diga *d, const CallResult *r, void *userdata) {
        Live *v = userdata;

        v->calls++;
        /* An HTTP date has whole seconds: the API's time is within the second after it. */
        if (r->api_date > 0) {
                v->api_offset = r->api_date + (int64_t) USEC_PER_SEC / 2 - r->answered_at;
                v->offset_known = true;
        }
}

/* Every phone listed is kept: the rows not applied yet have no ledger row
 * to name them by. */
static int keep(const RemotePhone *p, void *userdata) {
        Live *v = userdata;

        return match_keep(v->ledger, p, false);
}

static void on_listed(Listing *ls, int r, const char *why, void *userdata) {
        Live *v = userdata;

        v->list_done = true;
        v->list_r = r;
        free(v->list_why);
        v->list_why = why ? strdup(why) : NULL;
}

static int run_until(Live *v, const bool *done) {
        int r;

        while (!*done) {
                r = sd_event_run(v->event, UINT64_MAX);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int list(Live *v, bool by_cursor) {
        int r;

        if (!v->listing) {
                r = listing_new(v->event, v->diga, v->api, &v->world, keep, on_listed, v, &v->listing);
                if (r < 0)
                        return r;
        }
        v->listed = true;
        v->list_done = false;
        if (by_cursor)
                listing_start_by_cursor(v->listing);
        else
                listing_start(v->listing);
        r = run_until(v, &v->list_done);
        if (r < 0)
                return r;
        if (v->list_r < 0) {
                v->error = v->list_r;
                free(v->error_why);
                v->error_why = strdup(strna(v->list_why));
        }
        return v->list_r;
}

static void get_failed(Live *v, int r, const char *why) {
        if (v->error == 0) {
                v->error = r;
                v->error_why = strdup(why);
        }
        v->gets_left = 0;
        v->gets_done = true;
}

static void get_request(Live *v, Get *g);

static int on_get_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Get *g = userdata;

        g->retry = sd_event_source_disable_unref(g->retry);
        get_request(g->live, g);
        return 0;
}

/* An answer that tells nothing yet: again on the listing's budget, or the
 * preview has no verdict for the row and stops. */
static void get_again(Live *v, Get *g, const Reply *reply) {
        World w = v->world;
        PageOutcome o;
        int r;

        w.jitter = drand48();
        reconcile_page(reply, g->attempts, &w, &o);
        diga_heed(v->diga, o.rate_backoff, o.hold);
        if (o.verdict == PAGE_AUTH) {
                get_failed(v, -EACCES, o.detail);
                return;
        }
        if (o.verdict != PAGE_RETRY) {
                get_failed(v, reply->status == 0 ? -EHOSTUNREACH : -EIO, o.detail);
                return;
        }
        g->attempts++;
        r = sd_event_add_time_relative(v->event, &g->retry, CLOCK_MONOTONIC, o.delay, USEC_PER_MSEC, on_get_retry, g);
        if (r < 0)
                get_failed(v, r, "cannot arm a timer");
}

static void on_get(Diga *d, const CallResult *r, void *userdata) {
        Get *g = userdata;
        Live *v = g->live;
        _cleanup_free_ char *why = NULL, *msg = NULL;
        Reply reply = { .kind = CALL_GET, .status = r->http_status, .retry_after = r->retry_after, .error = r->error,
                        .asked_at = r->asked_at, .unsent = r->unsent };
        int k;

        g->call = NULL;
        if (r->not_sent) {
                get_failed(v, -ECANCELED, "a GET was not sent");
                return;
        }
        if (r->http_status == 200 && !r->json)
                reply.error = "not JSON";
        else if (r->http_status == 200 && (k = api_parse_phone(v->api, r->body, r->body_len, &g->seen, &why)) < 0)
                reply.error = why ? why : strerror(-k);
        else if (r->http_status == 200 && !streq(g->seen.id, g->id))
                reply.error = "the API answered with another phone";
        else if (r->http_status == 200)
                reply.api = g->has_seen = true;
        else {
                reply.api = r->json && api_error_body(v->api, r->body, r->body_len, &msg);
                reply.message = msg;
        }
        if (!g->has_seen)
                remote_phone_done(&g->seen);
        /* The API's own word, which asking again will not change (a 404:
         * not in the account): reconcile_look() reads it as the daemon's
         * GET would.  Anything else is asked again, or no verdict. */
        if (g->has_seen || (reply.api && reply.status >= 400 && reply.status < 500 && reply.status != 401 &&
                            reply.status != 403 && reply.status != 408 && reply.status != 429)) {
                g->status = reply.status;
                g->message = TAKE_PTR(msg);
                g->done = true;
                if (v->gets_left > 0 && --v->gets_left == 0)
                        v->gets_done = true;
                return;
        }
        get_again(v, g, &reply);
}

static void get_request(Live *v, Get *g) {
        int r;

        if (v->error != 0)
                return;
        r = diga_call(v->diga, &(CallSpec) { .kind = CALL_GET, .id = g->id, .done = on_get, .userdata = g },
                      &g->call);
        if (r < 0)
                get_failed(v, r, "cannot look at a phone");
}

static int get_add(Live *v, size_t index, const char *id) {
        Get *n;

        if (!uuid_is_valid(id))
                return -EINVAL;
        n = reallocarray(v->gets, v->n_gets + 1, sizeof(Get));
        if (!n)
                return -ENOMEM;
        v->gets = n;
        v->gets[v->n_gets] = (Get) { .live = v, .index = index };
        snprintf(v->gets[v->n_gets].id, sizeof v->gets[v->n_gets].id, "%s", id);
        v->n_gets++;
        return 0;
}

/* The rows the listing cannot tell about, each to a GET; -EAGAIN when a
 * number is missing from a listing by page, which only the cursor may
 * call absent. */
static int gather(const Phone *p, int change, void *userdata) {
        Live *v = userdata;
        _cleanup_(match_done) Match m = {};
        size_t i = v->index++;
        Row row = row_of(v, p);
        int r;

        if (!needs_look(p))
                return 0;
        if (v->listed) {
                r = match_row(v->ledger, &row, listing_stats(v->listing), v->confirmed, v->now, &m);
                if (r < 0 || r == MATCH_LOOK)
                        return r < 0 ? r : 0;
                if (r == MATCH_UNCONFIRMED)
                        return -EAGAIN;
        }
        return row.id ? get_add(v, i, row.id) : 0;
}

static int observe(Live *v) {
        int r;

        if (v->by_id + v->by_number == 0)
                return 0;
        if (match_wants_listing(v->ledger, v->by_id, v->by_number)) {
                r = list(v, false);
                if (r < 0)
                        return r;
        }
        for (;;) {
                v->index = v->n_gets = 0;
                r = plan_foreach_row(v->plan, gather, v);
                if (r != -EAGAIN)
                        break;
                /* As the daemon's pass does: the whole account again, by cursor. */
                v->confirmed = true;
                r = list(v, true);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        v->gets_left = v->n_gets;
        v->gets_done = v->n_gets == 0;
        for (size_t i = 0; i < v->n_gets; i++)
                get_request(v, &v->gets[i]);
        r = run_until(v, &v->gets_done);
        return r < 0 ? r : v->error;
}

/* ---- what is shown ---- */

static void print_json(const Live *v, const Phone *p, int change, const Verdict *d) {
        printf("%s\n {\"key\": ", v->n_shown ? "," : "");
        json_str(p->key);
        printf(", \"id\": ");
        json_str(d->id);
        printf(", \"number\": ");
        json_str(d->number);
        printf(", \"state\": ");
        json_str(state_to_string(p->state));
        printf(", \"change\": ");
        json_str(change >= 0 ? change_kind_to_string((ChangeKind) change) : NULL);
        printf(", \"would\": ");
        json_str(would_names[d->would]);
        printf(", \"until\": ");
        json_time(d->would == WOULD_WAIT ? d->until : 0);
        printf(", \"then\": ");
        json_str(d->would == WOULD_WAIT ? would_names[d->then] : NULL);
        printf(", \"why\": ");
        json_str(d->why);
        printf(", \"nickname\": ");
        json_str(d->nickname);
        putchar('}');
}

static void print_line(const Phone *p, const Verdict *d) {
        char buf[21];

        printf("%-8s %s", would_names[d->would], p->key);
        if (d->number && !streq(d->number, p->key))
                printf(" number=%s", d->number);
        if (d->id && !streq(d->id, p->key))
                printf(" id=%s", d->id);
        if (d->nickname)
                printf(" (%s)", d->nickname);
        if (d->would == WOULD_WAIT && d->until > 0)
                printf(" until %s", time_str(d->until, buf));
        printf(": %s\n", d->why);
}

/* The row meets what was seen of its phone: the GET's answer, or the listing. */
static int look_of(Live *v, size_t i, const Row *row, Match *m, Look *ret) {
        int r;

        if (v->next_get < v->n_gets && v->gets[v->next_get].index == i) {
                const Get *g = &v->gets[v->next_get++];

                *ret = (Look) { .seen = g->has_seen ? &g->seen : NULL,
                                .reply = { .kind = CALL_GET, .status = g->has_seen ? 200 : g->status, .api = true,
                                           .message = g->message } };
                return 0;
        }
        if (!v->listed)
                return -ENODATA;
        r = match_row(v->ledger, row, listing_stats(v->listing), v->confirmed, v->now, m);
        if (r < 0)
                return r;
        /* The listing is the one gather() read: it said the same then. */
        if (r != MATCH_LOOK)
                return -ESTALE;
        *ret = m->look;
        return 0;
}

static int show(const Phone *p, int change, void *userdata) {
        Live *v = userdata;
        _cleanup_(match_done) Match m = {};
        size_t i = v->index++;
        Row row = row_of(v, p);
        Look look;
        Verdict d;
        int r;

        if (!needs_look(p))
                settled(p, &d);
        else {
                r = look_of(v, i, &row, &m, &look);
                if (r < 0)
                        return r;
                decide(v, p, change, &look, &d);
        }
        v->count[d.would]++;
        if (v->plan->needs_approval && (change == CHANGE_ADD || change == CHANGE_REDECLARE))
                v->approving[d.then]++;
        if (v->json)
                print_json(v, p, change, &d);
        else if (d.would != WOULD_NONE)
                print_line(p, &d);
        v->n_shown++;
        return 0;
}

static void summary(const Live *v) {
        const ListingStats *st = v->listed ? listing_stats(v->listing) : NULL;
        char at[21];

        printf("Live plan: %zu to release, %zu to order, %zu waiting, %zu deferred, %zu refused, "
               "%zu with nothing to do", v->count[WOULD_RELEASE], v->count[WOULD_ORDER], v->count[WOULD_WAIT],
               v->count[WOULD_DEFER], v->count[WOULD_REFUSE], v->count[WOULD_NONE]);
        if (st)
                printf(" (%zu phones listed by %s", st->listed, st->pages ? "page" : "cursor");
        else
                printf(" (no listing");
        printf("; %u %s at %.4g/s, half of pace.rate).\n", v->calls, plural(v->calls, "call", "calls"),
               v->config->rate / 2);
        if (v->plan->needs_approval)
                printf("Plan %s needs approval: %zu new releases exceed safety.max_new_releases = %u. Approved "
                       "('retirectl approve %s'), it would release %zu and order %zu once their safety.hold is over.\n",
                       v->plan->hash, v->plan->new_releases, v->config->max_new_releases, v->plan->hash,
                       v->approving[WOULD_RELEASE], v->approving[WOULD_ORDER]);
        if (v->paused)
                printf("PAUSED by uid %" PRIu32 " since %s%s%s%s: nothing is released until 'retirectl resume'.\n",
                       v->pause.uid, time_str(v->pause.at / (int64_t) USEC_PER_SEC, at), v->pause.reason ? " (" : "",
                       strempty(v->pause.reason), v->pause.reason ? ")" : "");
}

/* ---- the verb ---- */

/* The API key as the daemon reads it; at an operator's shell (no
 * $CREDENTIALS_DIRECTORY), from where the unit's LoadCredential= takes it:
 * api-token beside the main config. */
static int live_token(const Config *c, char **ret) {
        _cleanup_free_ char *where = NULL, *dir = NULL, *beside = NULL;
        const char *why;
        Config alt;
        int r;

        r = token_load(c, ret, &where);
        if (r == -ENOKEY) {
                dir = strdup(c->path);
                if (!dir || asprintf_or_null(&beside, "%s/api-token", dirname(dir)) < 0)
                        return log_oom();
                alt = *c;
                alt.token_file = beside;
                where = mfree(where);
                r = token_load(&alt, ret, &where);
        }
        if (r >= 0)
                return 0;
        why = r == -EPERM ? "group or others may access it; chmod 0600 it" :
              r == -ENODATA ? "it is empty" :
              r == -EBADMSG ? "it holds characters a key cannot have" :
              r == -EFBIG ? "it is too large to be a key" : strerror(-r);
        fprintf(stderr, "retirectl: cannot use the API key in %s: %s\n", strna(where), why);
        return r;
}

static int setup(Live *v, const char *token) {
        const Config *c = v->config;
        /* Half the budget: a running daemon keeps the other half. */
        Config half = *c;
        int r;

        half.rate = c->rate / 2;
        v->world = (World) {
                .max_attempts = c->max_attempts, .base_delay = sec_to_usec(c->base_delay),
                .max_delay = sec_to_usec(c->max_delay), .settle = sec_to_usec(c->settle_time), .dry_run = c->dry_run,
        };
        srand48((long) now(CLOCK_MONOTONIC));
        r = sd_event_new(&v->event);
        if (r >= 0)
                r = api_new(&v->api);
        if (r >= 0)
                r = diga_new(v->event, &half, token, &v->diga);
        if (r < 0) {
                fprintf(stderr, "retirectl: cannot set up the API client: %s\n", strerror(-r));
                return r;
        }
        diga_on_answer(v->diga, on_answer, v);
        return 0;
}

static int observe_failed(const Live *v, int r) {
        const char *why = v->error_why ? v->error_why : strerror(-r);

        if (r == -EHOSTUNREACH)
                fprintf(stderr, "retirectl: the API at %s cannot be reached: %s\n", v->config->base_url, why);
        else if (r == -EACCES)
                fprintf(stderr, "retirectl: the API at %s refused the key: %s\n", v->config->base_url, why);
        else
                fprintf(stderr, "retirectl: cannot see the account at %s: %s\n", v->config->base_url, why);
        fprintf(stderr, "retirectl: nothing was decided: no live plan\n");
        return EXIT_ERROR;
}

int verb_plan_live(bool json) {
        _cleanup_(live_done) Live v = { .json = json };
        _cleanup_(erase_and_freep) char *token = NULL;
        int r;

        log_setup("retirectl");
        if (load_declarations(&v.ledger, &v.config) < 0)
                return EXIT_ERROR;
        r = plan_compute_changes(v.ledger, v.config, &v.plan);
        if (r >= 0)
                r = plan_foreach_row(v.plan, count_row, &v);
        if (r < 0) {
                fprintf(stderr, "retirectl: cannot compute the plan: %s (%s)\n", strerror(-r), ledger_errmsg(v.ledger));
                return EXIT_ERROR;
        }
        r = ledger_pause_get(v.ledger, &v.pause);
        if (r < 0 && r != -EBADMSG) {
                fprintf(stderr, "retirectl: cannot read the pause record: %s\n", ledger_errmsg(v.ledger));
                return EXIT_ERROR;
        }
        v.paused = v.pause.on || r == -EBADMSG;     /* unreadable: as the daemon reads it, paused */
        if (live_token(v.config, &token) < 0 || setup(&v, token) < 0)
                return EXIT_ERROR;
        v.now = (int64_t) now(CLOCK_REALTIME);
        r = observe(&v);
        if (r < 0)
                return observe_failed(&v, r);

        v.now = (int64_t) now(CLOCK_REALTIME);
        v.boot_now = (int64_t) now(CLOCK_BOOTTIME);
        v.index = 0;
        if (v.json)
                putchar('[');
        r = plan_foreach_row(v.plan, show, &v);
        if (v.json)
                printf("%s]\n", v.n_shown ? "\n" : "");
        if (r < 0) {
                fprintf(stderr, "retirectl: cannot read the plan back: %s (%s)\n", strerror(-r), ledger_errmsg(v.ledger));
                return EXIT_ERROR;
        }
        if (!v.json)
                summary(&v);
        return v.count[WOULD_RELEASE] + v.count[WOULD_ORDER] > 0 ? EXIT_CHANGES : EXIT_OK;
}
