/* SPDX-License-Identifier: MIT */
/* Reconciliation: scheduling and I/O; the decisions are reconcile.c's.
 *
 * A pass takes the rows that are due and observes them with the fewest
 * calls: the whole account listed first when numbers must be resolved or
 * many rows are due, one GET each otherwise.  Rows whose DELETE may have
 * gone out are always looked at by id, and only once their settle time has
 * come.  Nothing is released while the pass's listing runs.  Each answer
 * becomes an Outcome that is committed to the ledger before the next step;
 * a DELETE goes out only after its in_flight commit, which succeeds only if
 * the row still has the declaration the DELETE was decided on and is due by
 * both clocks at that moment. */

#include <inttypes.h>
#include <stdlib.h>
#include <sys/random.h>

#include "daemon.h"
#include "log.h"
#include "macro.h"
#include "messages.h"

#define AUTH_PAUSE_USEC   (15 * USEC_PER_MINUTE)  /* until a reload, or this long */
#define LEDGER_RETRY_USEC USEC_PER_MINUTE
#define CARRIER_IDS_MAX   8                       /* ids named in an ambiguity's detail */

typedef struct Job {
        Engine *e;
        int64_t pk, version;
        char *key, *id, *number, *provider, *api_number, *last_error;
        PhoneState state;            /* as committed in the ledger */
        unsigned attempts;
        int64_t not_before, sent_at, look_after;
        char *rejected;              /* why the API refused this pass's DELETE, pending a look */
        int delete_status;           /* the last DELETE's HTTP status in this pass, 0: none */
        Call *call;                  /* queued or out, or NULL */
        bool deleting;               /* call is the DELETE */
        bool held;                   /* a DELETE decided while the listing runs: it waits */
        bool listed;                 /* observed through the listing */
        bool confirm;                /* its number was not in a listing by page: a cursor listing tells */
        bool stale;                  /* the declaration changed: act on nothing */
        bool finished;
} Job;

typedef struct PassStats {
        unsigned calls, outcomes[_STATE_MAX];
        usec_t started;
} PassStats;

struct Engine {
        sd_event *event;
        Ledger *ledger;
        Diga *diga;
        Api *api;
        Listing *listing;
        sd_event_source *wake, *resync, *list_retry, *unpause;

        /* From the config, copied so a reload never pulls it from under a pass. */
        unsigned max_attempts;
        usec_t base_delay, max_delay, settle, resync_interval;
        bool dry_run;

        bool running, want_pass, want_resync, stopping, paused;
        char *pause_reason;
        bool held;                   /* an operator's pause: no DELETE leaves */
        bool confirming;             /* the listing running is the cursor's confirmation */
        Job *jobs;
        size_t n_jobs, n_open;
        Job **by_id, **by_number;    /* the rows the listing is for */
        size_t n_by_id, n_by_number;
        PassStats stats;

        unsigned list_failures;      /* listings failed in a row */
        char *list_error;

        /* The second clock: the API's Date minus ours, from the last answer. */
        int64_t api_offset;
        bool offset_known, skewed;

        EngineIdle idle;
        void *idle_userdata;
};

static void pass_maybe_end(Engine *e);
static void observe(Job *j, bool urgent);
static void queue_delete(Job *j);
static void ledger_pause(Engine *e, int error);

static const char *const message_ids[_STATE_MAX] = {
        [STATE_DEFERRED] = MESSAGE_DEFERRED,   [STATE_RETRYING] = MESSAGE_RETRYING,
        [STATE_SCHEDULED] = MESSAGE_SCHEDULED, [STATE_RELEASED] = MESSAGE_RELEASED,
        [STATE_FAILED] = MESSAGE_FAILED,       [STATE_CANCELLED] = MESSAGE_CANCELLED,
        [STATE_UNRESOLVED] = MESSAGE_UNRESOLVED,
};

static usec_t mono_now(Engine *e) {
        uint64_t t;

        if (sd_event_now(e->event, CLOCK_MONOTONIC, &t) < 0)
                return now(CLOCK_MONOTONIC);
        return t;
}

static void arm(sd_event_source *s, usec_t when) {
        if (sd_event_source_set_time(s, when) < 0 || sd_event_source_set_enabled(s, SD_EVENT_ONESHOT) < 0)
                log_error("Cannot arm a timer; the engine wakes again at the next event.");
}

static void disarm(sd_event_source *s) {
        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

static World world(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);

        return (World) {
                .now = t, .due_now = reconcile_due_now(t, e->api_offset, e->offset_known),
                .max_attempts = e->max_attempts, .base_delay = e->base_delay, .max_delay = e->max_delay,
                .settle = e->settle, .jitter = drand48(), .dry_run = e->dry_run,
        };
}

static Row row_of(const Job *j) {
        return (Row) {
                .state = j->state, .key = j->key, .id = j->id, .number = j->number, .not_before = j->not_before,
                .attempts = j->attempts, .sent_at = j->sent_at, .look_after = j->look_after,
                .provider = j->provider, .last_error = j->last_error, .rejected = j->rejected,
        };
}

/* Marks a job finished (its row waits for nothing more in this pass). */
static void job_finish(Job *j) {
        if (j->finished)
                return;
        j->finished = true;
        j->e->n_open--;
}

static void job_done(Job *j) {
        free(j->key);
        free(j->id);
        free(j->number);
        free(j->provider);
        free(j->api_number);
        free(j->last_error);
        free(j->rejected);
}

static int set_str(char **p, const char *v) {
        char *n;

        if (!v || (*p && streq(*p, v)))
                return 0;
        n = strdup(v);
        if (!n)
                return -ENOMEM;
        free(*p);
        *p = n;
        return 0;
}

/* ---- the second clock ---- */

static void on_answer(Diga *d, const CallResult *r, void *userdata);

static void note_api_clock(Engine *e, const CallResult *r) {
        int64_t offset;
        bool skewed;

        if (r->api_date <= 0)
                return;
        /* An HTTP date has whole seconds: the API's time is within the second after it. */
        offset = r->api_date + (int64_t) USEC_PER_SEC / 2 - r->answered_at;
        e->api_offset = offset;
        e->offset_known = true;
        skewed = offset > (int64_t) CLOCK_SKEW_MAX || offset < -(int64_t) CLOCK_SKEW_MAX;
        if (skewed && !e->skewed)
                log_event(LOG_WARNING, MESSAGE_CLOCK_SKEW, NULL,
                          "The API's clock is %.0f s %s ours: a phone with not_before is released only once both "
                          "clocks say its time has come.", usec_to_sec(offset < 0 ? -offset : offset),
                          offset < 0 ? "behind" : "ahead of");
        else if (!skewed && e->skewed)
                log_notice("The API's clock agrees with ours again (%.0f s apart).", usec_to_sec(offset));
        e->skewed = skewed;
}

/* ---- pauses ---- */

/* Stops every call: nothing queued goes out, the pass ends once the calls
 * already out are back, and a new one starts when the pause does (a reload,
 * or `usec` from now). */
static void pause_calls(Engine *e, usec_t usec, char *reason) {
        if (e->paused) {
                free(reason);
                return;
        }
        e->paused = true;
        free(e->pause_reason);
        e->pause_reason = reason;
        diga_set_paused(e->diga, true);
        if (e->listing)
                listing_stop(e->listing, "calls are paused");
        diga_drop_queued(e->diga);
        arm(e->unpause, mono_now(e) + usec);
}

static void auth_pause(Engine *e, int status, const char *method, const char *path, const char *msg) {
        char *reason = NULL;

        if (e->paused)
                return;
        (void) asprintf_or_null(&reason, "the API answered %d to %s %s%s%s: the key is wrong or lacks %s",
                                status, method, path, msg ? ": " : "", msg ? msg : "",
                                status == 401 ? "validity" : "the phones.view/phones.delete permission");
        log_event(LOG_CRIT, MESSAGE_AUTH_PAUSED, &(LogFields) { .http_status = status },
                  "Paused all calls: %s. Fix the key, then reload (or wait %llu minutes).",
                  reason ? reason : "authentication failed", (unsigned long long) (AUTH_PAUSE_USEC / USEC_PER_MINUTE));
        pause_calls(e, AUTH_PAUSE_USEC, reason);
}

/* A step that cannot be recorded must not be followed by the next one: stop
 * calling until the ledger takes writes again. */
static void ledger_pause(Engine *e, int error) {
        char *reason = NULL;

        if (e->paused)
                return;
        (void) asprintf_or_null(&reason, "the ledger cannot be written: %s (%s)", strerror(-error),
                                ledger_errmsg(e->ledger));
        log_crit("Paused all calls: %s. Trying again in %llu s.", reason ? reason : "ledger write failed",
                 (unsigned long long) (LEDGER_RETRY_USEC / USEC_PER_SEC));
        pause_calls(e, LEDGER_RETRY_USEC, reason);
}

static void resume(Engine *e) {
        if (!e->paused)
                return;
        e->paused = false;
        disarm(e->unpause);
        log_notice("Resuming calls.");
        diga_set_paused(e->diga, false);
}

/* ---- applying an outcome ---- */

static const char *label(const Job *j) {
        return j->number ? j->number : j->api_number ? j->api_number : j->key;
}

static void log_outcome(Job *j, PhoneState from, unsigned attempts_before, const Outcome *o, const CallResult *call) {
        bool changed = o->to != from;
        LogFields f = {
                .phone_id = j->id, .phone_number = j->number ? j->number : j->api_number,
                .outcome = o->dry_run ? "dry_run" : state_to_string(o->to),
                .http_status = call && !call->not_sent ? call->http_status : 0,
        };

        if (o->level <= 0)
                return;
        /* ATTEMPT: which DELETE this was (the failures before it, plus this one). */
        if (call && call->kind == CALL_DELETE && !call->not_sent)
                f.attempt = attempts_before + 1;
        /* Failed after a last look: the DELETE that failed is the story, not the look. */
        if (o->to == STATE_FAILED && call && call->kind != CALL_DELETE) {
                if (j->delete_status > 0)
                        f.http_status = j->delete_status;
                f.attempt = o->attempts;
        }
        if (o->dry_run)
                log_event(o->level, MESSAGE_DRY_RUN, &f, "%s", o->detail);
        else if (changed && message_ids[o->to])
                log_event(o->level, message_ids[o->to], &f, "%s %s: %s", label(j), state_to_string(o->to), o->detail);
        else
                log_internal(o->level, 0, "%s: %s", label(j), o->detail);
}

/* Commits an outcome.  check_version: it was decided on the declaration,
 * which must still be the one in the ledger.  (An answer to a DELETE is
 * recorded whatever the declaration became: the DELETE happened.) */
static int commit(Job *j, const Outcome *o, const CallResult *call, bool check_version) {
        Engine *e = j->e;
        PhoneState now_state;
        int64_t now_version;
        int r;

        LedgerUpdate u = {
                .pk = j->pk, .from = j->state, .to = o->to,
                .version = check_version ? j->version : 0,
                .sent_at = o->sent_at, .clear_sent = o->clear_sent,
                .id = o->id, .api_number = o->api_number, .provider = o->provider,
                .scheduled_release_at = o->scheduled,
                .attempts = (int) o->attempts, .next_at = o->next_at,
                .error = o->error[0] ? o->error : NULL, .detail = o->detail,
        };
        if (call && !call->not_sent) {
                u.method = call->method;
                u.path = call->path;
                u.http_status = call->http_status;
                u.latency_ms = call->latency_ms;
        }
        r = ledger_update(e->ledger, &u);
        if (r == -ESTALE && (o->to == STATE_RELEASED || o->to == STATE_SCHEDULED) &&
            ledger_state(e->ledger, j->pk, &now_state, &now_version) >= 0 && now_state != j->state) {
                /* A reload moved the row (say, cancelled it) while the call was
                 * out: what the API did is still the truth, and goes on record. */
                u.from = now_state;
                u.version = 0;
                r = ledger_update(e->ledger, &u);
                if (r >= 0)
                        j->state = now_state;
        }
        if (r == -ESTALE) {
                log_info("%s changed in the ledger meanwhile; leaving it as it is now (it is looked at again).", j->key);
                j->stale = true;
                return r;
        }
        if (r == -EPERM) {
                /* The ledger refused a step the record may not take: a bug here,
                 * caught there.  Nothing is lost; the row stays as it was, and
                 * calls pause rather than meet it again at once. */
                log_error("Refused to record %s -> %s for %s: %s.", state_to_string(j->state), state_to_string(o->to),
                          j->key, ledger_errmsg(e->ledger));
                ledger_pause(e, r);
                return r;
        }
        if (r < 0) {
                log_error_errno(r, "Cannot record %s -> %s for %s in the ledger: %m (%s)",
                                state_to_string(j->state), state_to_string(o->to), j->key, ledger_errmsg(e->ledger));
                ledger_pause(e, r);
                return r;
        }
        return 0;
}

/* Applies one outcome: the ledger first, then the journal, the job, and
 * what comes next. */
static void apply(Job *j, const Outcome *o, const CallResult *call, bool check_version) {
        Engine *e = j->e;
        PhoneState from = j->state;
        unsigned attempts_before = j->attempts;
        int r;

        if (o->rate_backoff)
                diga_rate_backoff(e->diga);
        if (o->hold > 0)
                diga_hold(e->diga, mono_now(e) + (usec_t) o->hold * USEC_PER_SEC);
        if (o->write) {
                r = commit(j, o, call, check_version);
                if (r < 0) {
                        job_finish(j);
                        return;
                }
                from = j->state;
                j->state = o->to;
                j->attempts = o->attempts;
                if (o->sent_at > 0) {
                        j->sent_at = o->sent_at;
                        j->look_after = o->sent_at + (int64_t) e->settle;
                }
                if (o->clear_sent)
                        j->sent_at = j->look_after = 0;
        }
        /* What the look found (an id for a number, the provider) goes into
         * the ledger with the next step: the in_flight commit, at the latest. */
        if (set_str(&j->id, j->id ? NULL : o->id) < 0 || set_str(&j->api_number, o->api_number) < 0 ||
            set_str(&j->provider, o->provider) < 0 || set_str(&j->last_error, o->error[0] ? o->error : NULL) < 0) {
                log_oom();
                job_finish(j);
                return;
        }
        log_outcome(j, from, attempts_before, o, call);
        if (o->to != from)
                e->stats.outcomes[o->to]++;
        if (o->auth_pause && call)
                auth_pause(e, call->http_status, call->method, call->path, NULL);

        switch (o->next) {
        case NEXT_GET:
                j->look_after = o->look_after;
                if (o->rejected) {
                        free(j->rejected);
                        j->rejected = strdup(o->error);
                }
                observe(j, true);
                return;
        case NEXT_DELETE:
                queue_delete(j);
                return;
        case NEXT_NONE:
                break;
        }
        job_finish(j);
}

/* ---- looks ---- */

static Reply reply_of(Engine *e, const CallResult *r, char **msg) {
        Reply reply = {
                .kind = r->kind, .status = r->http_status, .retry_after = r->retry_after, .error = r->error,
                .asked_at = r->asked_at, .unsent = r->unsent,
        };

        if (r->http_status != 200) {
                reply.api = r->json && api_error_body(e->api, r->body, r->body_len, msg);
                reply.message = *msg;
        }
        return reply;
}

static void on_get(Diga *d, const CallResult *r, void *userdata) {
        Job *j = userdata;
        Engine *e = j->e;
        _cleanup_(remote_phone_done) RemotePhone p = {};
        _cleanup_free_ char *why = NULL, *msg = NULL;
        Look look = {};
        Row row;
        World w;
        Outcome o;

        j->call = NULL;
        if (r->not_sent) {
                job_finish(j);
                goto out;
        }
        e->stats.calls++;
        look.reply = reply_of(e, r, &msg);
        if (r->http_status == 200) {
                if (!r->json)
                        look.reply.error = "not JSON";
                else if (api_parse_phone(e->api, r->body, r->body_len, &p, &why) < 0)
                        look.reply.error = why ? why : "malformed";
                else if (j->id && !streq(p.id, j->id))
                        look.reply.error = "the API answered with another phone";
                else {
                        look.reply.api = true;
                        look.seen = &p;
                }
                if (!look.seen)
                        log_warning("GET %s: malformed answer: %s", r->path, look.reply.error);
        }
        row = row_of(j);
        w = world(e);
        reconcile_look(&row, &look, &w, &o);
        apply(j, &o, r, true);
out:
        pass_maybe_end(e);
}

static void observe(Job *j, bool urgent) {
        Engine *e = j->e;
        int r;

        if (e->stopping || e->paused || j->stale || !j->id) {
                job_finish(j);
                return;
        }
        j->deleting = false;
        r = diga_call(e->diga, &(CallSpec) { .kind = CALL_GET, .id = j->id, .urgent = urgent, .done = on_get,
                                             .userdata = j }, &j->call);
        if (r < 0) {
                log_error_errno(r, "Cannot look at %s: %m", j->key);
                job_finish(j);
        }
}

/* ---- the DELETE ---- */

/* Right before the DELETE leaves: the ledger decides, at this moment, whether
 * it may.  The row must still be where the decision found it, with the same
 * declaration, due by both clocks. */
static int delete_start(void *userdata) {
        Job *j = userdata;
        Engine *e = j->e;
        Row row = row_of(j);
        World w = world(e);
        Outcome o;
        int r;

        if (e->stopping || e->paused || e->held || j->stale)
                return -ECANCELED;
        if (!reconcile_send(&row, &w, &o)) {
                log_info("%s: not sent: not due yet by the API's clock (not_before, safety.hold).", j->key);
                return -EAGAIN;
        }
        r = ledger_update(e->ledger, &(LedgerUpdate) {
                .pk = j->pk, .from = j->state, .to = STATE_IN_FLIGHT, .version = j->version, .due_by = w.due_now,
                .sent_at = o.sent_at, .next_at = o.next_at, .attempts = (int) j->attempts,
                .id = j->id, .provider = j->provider, .api_number = j->api_number, .detail = o.detail,
        });
        if (r == -ESTALE) {
                log_info("%s changed in the ledger since its DELETE was decided (a reload?): not sent.", j->key);
                j->stale = true;
                return r;
        }
        if (r < 0) {
                log_error_errno(r, "Cannot record the DELETE of %s: %m (%s); not sent.", j->key,
                                ledger_errmsg(e->ledger));
                ledger_pause(e, r);
                return r;
        }
        j->state = STATE_IN_FLIGHT;
        j->sent_at = o.sent_at;
        j->look_after = o.sent_at + (int64_t) e->settle;
        return 0;
}

static void on_delete(Diga *d, const CallResult *r, void *userdata) {
        Job *j = userdata;
        Engine *e = j->e;
        _cleanup_free_ char *msg = NULL;
        Reply reply;
        Row row;
        World w;
        Outcome o;

        j->call = NULL;
        if (r->not_sent) {
                /* Never on the wire.  If its in_flight commit was made, the row
                 * stays in_flight and is looked at after the settle time. */
                job_finish(j);
                goto out;
        }
        e->stats.calls++;
        j->delete_status = r->http_status;
        reply = reply_of(e, r, &msg);
        row = row_of(j);
        w = world(e);
        reconcile_delete(&row, &reply, &w, &o);
        apply(j, &o, r, false);
out:
        pass_maybe_end(e);
}

static void queue_delete(Job *j) {
        Engine *e = j->e;
        int r;

        if (e->stopping || e->paused || j->stale) {
                job_finish(j);
                return;
        }
        /* Nothing leaves while the account is being listed. */
        if (e->listing && listing_running(e->listing)) {
                j->held = true;
                return;
        }
        j->held = false;
        j->deleting = true;
        r = diga_call(e->diga, &(CallSpec) { .kind = CALL_DELETE, .id = j->id, .start = delete_start,
                                             .done = on_delete, .userdata = j }, &j->call);
        if (r < 0) {
                log_error_errno(r, "Cannot queue the release of %s: %m", j->key);
                job_finish(j);
        }
}

/* ---- the listing ---- */

static int cmp_job_id(const void *a, const void *b) {
        return strcmp((*(Job *const *) a)->id, (*(Job *const *) b)->id);
}

static int cmp_job_number(const void *a, const void *b) {
        return strcmp((*(Job *const *) a)->number, (*(Job *const *) b)->number);
}

static Job *find_job(Job **v, size_t n, const char *s, bool by_id) {
        Job key = { .id = (char *) s, .number = (char *) s }, *kp = &key, **f;

        if (n == 0)
                return NULL;
        f = bsearch(&kp, v, n, sizeof(Job *), by_id ? cmp_job_id : cmp_job_number);
        return f ? *f : NULL;
}

/* Only the phones some row may want are kept: the rest are only counted. */
static bool listing_want(const RemotePhone *p, void *userdata) {
        Engine *e = userdata;

        return find_job(e->by_id, e->n_by_id, p->id, true) || find_job(e->by_number, e->n_by_number, p->number, false);
}

static int cmp_phone_ptr_id(const void *a, const void *b) {
        return strcmp((*(const RemotePhone *const *) a)->id, (*(const RemotePhone *const *) b)->id);
}

static int cmp_phone_ptr_number(const void *a, const void *b) {
        return strcmp((*(const RemotePhone *const *) a)->number, (*(const RemotePhone *const *) b)->number);
}

/* The listing's account, by id and by number. */
typedef struct Seen {
        const RemotePhone **by_id, **by_number;
        size_t n;
} Seen;

static const RemotePhone *seen_by_id(const Seen *s, const char *id) {
        RemotePhone key = {}, *kp = &key;
        const RemotePhone **f;

        memcpy(key.id, id, sizeof key.id);
        f = s->n ? bsearch(&kp, s->by_id, s->n, sizeof(RemotePhone *), cmp_phone_ptr_id) : NULL;
        return f ? *f : NULL;
}

/* The phones carrying a number: [*first, *first + count). */
static size_t seen_by_number(const Seen *s, const char *number, size_t *first) {
        size_t lo = 0, hi = s->n, n = 0;

        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (strcmp(s->by_number[mid]->number, number) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *first = lo;
        while (lo + n < s->n && streq(s->by_number[lo + n]->number, number))
                n++;
        return n;
}

/* A number-declared row: which phone it means.  A number can come back
 * after release under a new id: the live phone counts, a released one only
 * if nothing live has the number; two live ones are a question for an operator. */
static void match_number(Engine *e, Job *j, const Seen *s, const ListingStats *st, const CallResult *call) {
        char ids[CARRIER_IDS_MAX * (UUID_STRING_LEN + 2) + 8] = "";
        const RemotePhone *live = NULL, *gone = NULL;
        size_t first, n = seen_by_number(s, j->number, &first);
        unsigned carriers = 0;
        Look look = {
                .reply = { .kind = CALL_LIST, .status = 200, .api = true, .asked_at = (int64_t) now(CLOCK_REALTIME) },
                .listed = st->listed, .unreadable = st->unreadable,
        };
        Row row = row_of(j);
        World w = world(e);
        Outcome o;

        for (size_t i = first; i < first + n; i++) {
                const RemotePhone *p = s->by_number[i];
                if (!remote_is_live(p)) {
                        gone = gone ? gone : p;
                        continue;
                }
                live = live ? live : p;
                if (carriers++ < CARRIER_IDS_MAX) {
                        if (ids[0])
                                strcat(ids, ", ");
                        strcat(ids, p->id);
                } else if (carriers == CARRIER_IDS_MAX + 1)
                        strcat(ids, ", ...");
        }
        look.seen = live ? live : gone;
        look.not_listed = !look.seen;
        if (look.not_listed && st->pages && !e->confirming) {
                /* Offset pages can miss a phone when two changes undo each
                 * other's shift; the cursor cannot.  Absent only if it agrees. */
                j->confirm = j->listed = true;
                return;
        }
        look.carriers = carriers;
        look.carrier_ids = ids;
        reconcile_look(&row, &look, &w, &o);
        apply(j, &o, call, true);
}

/* The listing is complete: each row it was for meets the phone it names. */
static void match_all(Engine *e, Listing *ls) {
        const ListingStats *st = listing_stats(ls);
        _cleanup_free_ const RemotePhone **by_id = NULL, **by_number = NULL;
        const RemotePhone *phones;
        CallResult call = { .kind = CALL_LIST, .method = "GET", .path = "/v1/phone/ (the account listed)",
                            .http_status = 200 };
        Seen s;
        size_t n;

        phones = listing_phones(ls, &n);
        by_id = calloc(n + 1, sizeof(RemotePhone *));
        by_number = calloc(n + 1, sizeof(RemotePhone *));
        if (!by_id || !by_number) {
                log_oom();
                for (size_t i = 0; i < e->n_jobs; i++)
                        if (e->jobs[i].listed)
                                job_finish(&e->jobs[i]);
                return;
        }
        for (size_t i = 0; i < n; i++)
                by_id[i] = by_number[i] = &phones[i];
        qsort(by_id, n, sizeof(RemotePhone *), cmp_phone_ptr_id);
        qsort(by_number, n, sizeof(RemotePhone *), cmp_phone_ptr_number);
        s = (Seen) { .by_id = by_id, .by_number = by_number, .n = n };

        for (size_t i = 0; i < e->n_jobs; i++) {
                Job *j = &e->jobs[i];
                const RemotePhone *p;
                Look look = { .reply = { .kind = CALL_LIST, .status = 200, .api = true,
                                         .asked_at = (int64_t) now(CLOCK_REALTIME) } };
                Row row;
                World w;
                Outcome o;

                if (!j->listed || j->finished)
                        continue;
                j->listed = false;
                if (j->stale) {
                        job_finish(j);
                        continue;
                }
                if (!j->id) {
                        match_number(e, j, &s, st, &call);
                        continue;
                }
                p = seen_by_id(&s, j->id);
                if (!p) {
                        observe(j, false);   /* not listed: ask for it by id to be sure */
                        continue;
                }
                look.seen = p;
                row = row_of(j);
                w = world(e);
                reconcile_look(&row, &look, &w, &o);
                apply(j, &o, &call, true);
        }
}

/* Numbers a listing by page did not find: listed again by cursor before
 * any is called absent.  DELETEs decided meanwhile wait for it too. */
static bool confirm_by_cursor(Engine *e, Listing *ls) {
        size_t n = 0;

        if (e->confirming || e->stopping)
                return false;
        for (size_t i = 0; i < e->n_jobs; i++)
                if (e->jobs[i].confirm && !e->jobs[i].finished)
                        n++;
        if (n == 0)
                return false;
        e->confirming = true;
        log_info("Listing phones: %zu %s not in the listing by page; listing the account by cursor to be sure.", n,
                 plural(n, "number was", "numbers were"));
        listing_start_by_cursor(ls);
        return true;
}

static void listing_done(Listing *ls, int r, const char *why, void *userdata) {
        Engine *e = userdata;
        const ListingStats *st = listing_stats(ls);
        char buf[32];

        e->stats.calls += st->calls;
        if (r >= 0) {
                e->list_failures = 0;
                e->list_error = mfree(e->list_error);
                snprintf(buf, sizeof buf, "%zu", st->listed);
                if (ledger_meta_set(e->ledger, "account_size", buf) < 0)
                        log_warning("Cannot note the account's size in the ledger (%s); the next pass may list "
                                    "needlessly.", ledger_errmsg(e->ledger));
                match_all(e, ls);
                if (confirm_by_cursor(e, ls))
                        return;
        } else {
                /* No verdict, no attempt: every row the listing was for stays as it is. */
                e->list_failures++;
                free(e->list_error);
                e->list_error = why ? strdup(why) : NULL;
                if (r == -EACCES)
                        auth_pause(e, 401, "GET", "/v1/phone/", why);
                /* A row that names its phone by id needs no listing: it is looked at by id. */
                for (size_t i = 0; i < e->n_jobs; i++) {
                        Job *j = &e->jobs[i];

                        if (!j->listed || j->finished)
                                continue;
                        j->listed = false;
                        if (j->id && r != -ECANCELED && r != -EACCES)
                                observe(j, false);
                        else
                                job_finish(j);
                }
                if (r != -ECANCELED && r != -EACCES && !e->stopping) {
                        World w = world(e);
                        usec_t delay = reconcile_backoff(&w, e->list_failures, -1);

                        log_warning("The account could not be listed (%s); %zu %s declared by number %s "
                                    "without a verdict; listing again in %.1f s.", why ? why : "failed",
                                    e->n_by_number, plural(e->n_by_number, "phone", "phones"),
                                    plural(e->n_by_number, "waits", "wait"), usec_to_sec((int64_t) delay));
                        arm(e->list_retry, mono_now(e) + delay);
                }
        }
        /* What was decided while the account was listed may leave now. */
        for (size_t i = 0; i < e->n_jobs; i++)
                if (e->jobs[i].held && !e->jobs[i].finished)
                        queue_delete(&e->jobs[i]);
        pass_maybe_end(e);
}

static int on_list_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        engine_request_pass(userdata, false);
        return 0;
}

/* ---- passes ---- */

static int add_job(const Phone *p, void *userdata) {
        Engine *e = userdata;
        Job *j;

        if (e->n_jobs % 256 == 0) {
                Job *a = reallocarray(e->jobs, e->n_jobs + 256, sizeof(Job));
                if (!a)
                        return -ENOMEM;
                e->jobs = a;
        }
        j = &e->jobs[e->n_jobs];
        *j = (Job) {
                .e = e, .pk = p->pk, .version = p->version, .state = p->state, .attempts = p->attempts,
                /* Held or not yet declared due: the same wait for the decisions. */
                .not_before = p->hold_until > p->not_before ? p->hold_until : p->not_before, .sent_at = p->sent_at,
                .look_after = p->sent_at ? p->sent_at + (int64_t) e->settle : 0,
        };
        if (set_str(&j->key, p->key) < 0 || set_str(&j->id, p->id) < 0 || set_str(&j->number, p->number) < 0 ||
            set_str(&j->provider, p->provider) < 0 || set_str(&j->api_number, p->api_number) < 0 ||
            set_str(&j->last_error, p->last_error) < 0) {
                job_done(j);
                return -ENOMEM;
        }
        e->n_jobs++;
        return 0;
}

static void pass_free(Engine *e) {
        for (size_t i = 0; i < e->n_jobs; i++)
                job_done(&e->jobs[i]);
        e->jobs = mfree(e->jobs);
        e->by_id = mfree(e->by_id);
        e->by_number = mfree(e->by_number);
        e->n_jobs = e->n_open = e->n_by_id = e->n_by_number = 0;
        e->listing = listing_free(e->listing);
        e->confirming = false;
}

/* A row whose DELETE may have gone out is looked at by id, never through a listing. */
static bool needs_own_look(const Job *j) {
        return j->sent_at != 0 || j->state == STATE_IN_FLIGHT;
}

/* Fewer calls wins: a GET per due phone, or the pages of the whole account
 * (whose size the last listing left in the ledger). */
static bool want_listing(Engine *e) {
        _cleanup_free_ char *v = NULL;
        size_t pages;

        if (e->n_by_number > 0)
                return true;
        if (ledger_meta_get(e->ledger, "account_size", &v) < 0)
                return e->n_by_id > 10;
        pages = (size_t) strtoull(v, NULL, 10) / API_PAGE_LIMIT + 1;
        return e->n_by_id > pages;
}

static int64_t due_now(Engine *e, int64_t t) {
        return reconcile_due_now(t, e->api_offset, e->offset_known);
}

static void arm_wake(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME), next;

        if (ledger_next_due(e->ledger, t, due_now(e, t), e->held, &next) < 0) {
                disarm(e->wake);
                return;
        }
        arm(e->wake, (usec_t) (next > 0 ? next : 1));
}

static void pass_start(Engine *e) {
        bool resync = e->want_resync;
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        World w;
        int r;

        e->want_pass = e->want_resync = false;
        e->stats = (PassStats) { .started = mono_now(e) };
        r = ledger_due(e->ledger, t, due_now(e, t), resync, e->held, add_job, e);
        if (r < 0) {
                log_error_errno(r, "Cannot read the due phones from the ledger: %m (%s)", ledger_errmsg(e->ledger));
                pass_free(e);
                return;
        }
        if (e->n_jobs == 0) {
                pass_free(e);
                arm_wake(e);
                return;
        }
        e->running = true;
        e->n_open = e->n_jobs;
        e->by_id = calloc(e->n_jobs, sizeof(Job *));
        e->by_number = calloc(e->n_jobs, sizeof(Job *));
        if (!e->by_id || !e->by_number) {
                log_oom();
                for (size_t i = 0; i < e->n_jobs; i++)
                        job_finish(&e->jobs[i]);
                pass_maybe_end(e);
                return;
        }
        for (size_t i = 0; i < e->n_jobs; i++) {
                Job *j = &e->jobs[i];
                if (needs_own_look(j))
                        continue;
                if (j->id)
                        e->by_id[e->n_by_id++] = j;
                else
                        e->by_number[e->n_by_number++] = j;
        }
        qsort(e->by_id, e->n_by_id, sizeof(Job *), cmp_job_id);
        qsort(e->by_number, e->n_by_number, sizeof(Job *), cmp_job_number);
        log_info("Pass: %zu %s to look at%s.", e->n_jobs, plural(e->n_jobs, "phone", "phones"),
                 resync ? " (resync)" : "");

        w = world(e);
        if (want_listing(e)) {
                r = listing_new(e->event, e->diga, e->api, &w, listing_want, listing_done, e, &e->listing);
                if (r < 0) {
                        log_error_errno(r, "Cannot list the account: %m");
                        for (size_t i = 0; i < e->n_jobs; i++)
                                if (!needs_own_look(&e->jobs[i]))
                                        job_finish(&e->jobs[i]);
                } else {
                        for (size_t i = 0; i < e->n_jobs; i++)
                                e->jobs[i].listed = !needs_own_look(&e->jobs[i]);
                }
        }
        /* A DELETE whose answer was lost is looked at first, always by id. */
        for (size_t i = 0; i < e->n_jobs; i++)
                if (needs_own_look(&e->jobs[i]))
                        observe(&e->jobs[i], true);
        if (e->listing)
                listing_start(e->listing);
        else
                for (size_t i = 0; i < e->n_jobs; i++)
                        if (!needs_own_look(&e->jobs[i]) && !e->jobs[i].finished)
                                observe(&e->jobs[i], false);
        pass_maybe_end(e);
}

/* The loop was told to exit (by the idle callback): start nothing more. */
static bool exiting(Engine *e) {
        int code;

        return sd_event_get_exit_code(e->event, &code) != -ENODATA;
}

static void pass_maybe_end(Engine *e) {
        usec_t dt;

        if (!e->running || e->n_open > 0 || (e->listing && listing_running(e->listing)) ||
            diga_in_flight(e->diga) > 0 || diga_queued(e->diga) > 0)
                return;
        dt = mono_now(e) - e->stats.started;
        log_event(LOG_INFO, MESSAGE_PASS_SUMMARY, NULL,
                  "Pass done in %.1f s: %u calls; %u released, %u scheduled, %u deferred, %u retrying, "
                  "%u failed, %u unresolved.", usec_to_sec((int64_t) dt), e->stats.calls,
                  e->stats.outcomes[STATE_RELEASED], e->stats.outcomes[STATE_SCHEDULED],
                  e->stats.outcomes[STATE_DEFERRED], e->stats.outcomes[STATE_RETRYING],
                  e->stats.outcomes[STATE_FAILED], e->stats.outcomes[STATE_UNRESOLVED]);
        e->running = false;
        pass_free(e);
        arm_wake(e);
        /* Told at every pass end, also when the next pass is already wanted: a
         * retry timer that fires during a pass must not keep --once from
         * seeing that it is stuck. */
        if (e->idle)
                e->idle(e, e->idle_userdata);
        if (e->want_pass && !e->stopping && !e->paused && !exiting(e)) {
                pass_start(e);
                if (!e->running && e->idle)
                        e->idle(e, e->idle_userdata);
        }
}

void engine_request_pass(Engine *e, bool resync) {
        e->want_pass = true;
        e->want_resync = e->want_resync || resync;
        if (e->running || e->stopping || e->paused || exiting(e))
                return;
        pass_start(e);
        if (!e->running && e->idle)
                e->idle(e, e->idle_userdata);
}

void engine_declarations_changed(Engine *e) {
        size_t dropped = 0;

        for (size_t i = 0; i < e->n_jobs; i++) {
                Job *j = &e->jobs[i];
                PhoneState state;
                int64_t version;

                if (j->finished || j->stale)
                        continue;
                if (ledger_state(e->ledger, j->pk, &state, &version) >= 0 && state == j->state &&
                    version == j->version)
                        continue;
                /* Decided on a declaration that is no more: nothing of it leaves. */
                j->stale = true;
                if (j->held) {
                        j->held = false;
                        job_finish(j);
                        dropped++;
                } else if (j->call && j->deleting && diga_cancel(e->diga, j->call))
                        dropped++;      /* (one already out is answered and recorded as usual) */
        }
        if (dropped > 0)
                log_info("Reload: %zu queued releases dropped; their rows are looked at again with the new declarations.",
                         dropped);
        pass_maybe_end(e);
}

static int on_wake(sd_event_source *s, uint64_t usec, void *userdata) {
        engine_request_pass(userdata, false);
        return 0;
}

static int on_resync(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        arm(s, usec + e->resync_interval);
        engine_request_pass(e, true);
        return 0;
}

static int on_unpause(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        resume(e);
        engine_request_pass(e, false);
        return 0;
}

static void on_answer(Diga *d, const CallResult *r, void *userdata) {
        note_api_clock(userdata, r);
}

int engine_new(sd_event *ev, Ledger *l, Engine **ret) {
        Engine *e;
        unsigned short seed[3];
        int r;

        e = calloc(1, sizeof(Engine));
        if (!e)
                return -ENOMEM;
        e->event = sd_event_ref(ev);
        e->ledger = l;
        if (getrandom(seed, sizeof seed, 0) == sizeof seed)
                (void) seed48(seed);
        r = api_new(&e->api);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->wake, CLOCK_REALTIME, UINT64_MAX, USEC_PER_MSEC, on_wake, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->list_retry, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_list_retry, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->unpause, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_SEC, on_unpause, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->resync, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_SEC, on_resync, e);
        if (r < 0) {
                engine_free(e);
                return r;
        }
        *ret = e;
        return 0;
}

Engine *engine_free(Engine *e) {
        if (!e)
                return NULL;
        e->stopping = true;
        e->idle = NULL;
        if (e->listing)
                listing_stop(e->listing, "stopping");
        if (e->diga)
                diga_drop_queued(e->diga);
        pass_free(e);
        diga_free(e->diga);
        api_free(e->api);
        (void) sd_event_source_disable_unref(e->wake);
        (void) sd_event_source_disable_unref(e->list_retry);
        (void) sd_event_source_disable_unref(e->unpause);
        (void) sd_event_source_disable_unref(e->resync);
        sd_event_unref(e->event);
        free(e->pause_reason);
        free(e->list_error);
        free(e);
        return NULL;
}

int engine_set_config(Engine *e, const Config *c, const char *token) {
        int r;

        e->max_attempts = c->max_attempts;
        e->base_delay = sec_to_usec(c->base_delay);
        e->max_delay = sec_to_usec(c->max_delay);
        e->settle = sec_to_usec(c->settle_time);
        e->dry_run = c->dry_run;
        e->resync_interval = sec_to_usec(c->resync_interval);
        if (e->diga)
                r = diga_set_config(e->diga, c, token);
        else {
                r = diga_new(e->event, c, token, &e->diga);
                if (r >= 0)
                        diga_on_answer(e->diga, on_answer, e);
        }
        if (r < 0)
                return r;
        arm(e->resync, mono_now(e) + e->resync_interval);
        /* A new config may carry a new key: try again at once. */
        e->list_failures = 0;
        resume(e);
        return 0;
}

bool engine_stop(Engine *e) {
        e->stopping = true;
        disarm(e->wake);
        disarm(e->resync);
        disarm(e->list_retry);
        if (e->listing)
                listing_stop(e->listing, "stopping");
        diga_drop_queued(e->diga);
        for (size_t i = 0; i < e->n_jobs; i++)
                if (e->jobs[i].held)
                        job_finish(&e->jobs[i]);
        pass_maybe_end(e);
        return !engine_busy(e);
}

bool engine_busy(Engine *e) {
        return e->running || (e->diga && diga_in_flight(e->diga) > 0);
}

void engine_on_idle(Engine *e, EngineIdle cb, void *userdata) {
        e->idle = cb;
        e->idle_userdata = userdata;
}

void engine_hold(Engine *e, bool on) {
        if (e->held == on)
                return;
        e->held = on;
        /* Held: queued DELETEs are refused as they reach the wire.  Let go:
         * what waited goes now. */
        if (!on)
                engine_request_pass(e, false);
        else
                arm_wake(e);
}

const char *engine_paused(Engine *e) {
        return e->paused ? (e->pause_reason ? e->pause_reason : "paused") : NULL;
}

bool engine_settled(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        uint64_t n;

        if (e->running)
                return false;
        /* Retries waiting for their time are not settled; not_before waits
         * are, and so is everything a dry run has looked at. */
        return ledger_count_unsettled(e->ledger, due_now(e, t), !e->dry_run, e->max_attempts, &n, NULL) >= 0 && n == 0;
}

const char *engine_stuck(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        uint64_t n, stuck;

        if (e->running)
                return NULL;
        /* Only once nothing else waits for a call (retries, DELETEs out). */
        if (ledger_count_unsettled(e->ledger, due_now(e, t), false, e->max_attempts, &n, &stuck) < 0 || n > 0)
                return NULL;
        if (e->list_failures >= e->max_attempts)
                return e->list_error ? e->list_error : "the account cannot be listed";
        if (stuck > 0 && ledger_count_unsettled(e->ledger, due_now(e, t), !e->dry_run, e->max_attempts, &n, NULL) >= 0 &&
            n == 0)
                return "phones whose DELETE may have gone out cannot be looked at";
        return NULL;
}

bool engine_progress(Engine *e, EngineProgress *ret) {
        usec_t dt;

        if (!e->running)
                return false;
        dt = mono_now(e) - e->stats.started;
        *ret = (EngineProgress) {
                .done = e->n_jobs - e->n_open, .total = e->n_jobs,
                .started = (int64_t) now(CLOCK_REALTIME) - (int64_t) dt,
                .rate = dt > 0 ? (double) (e->n_jobs - e->n_open) * USEC_PER_SEC / (double) dt : 0,
        };
        ret->eta = ret->rate > 0 ? (double) e->n_open / ret->rate : -1;
        return true;
}

int engine_status(Engine *e, char *buf, size_t size) {
        uint64_t c[_STATE_MAX], held = 0;
        int64_t first = 0, t = (int64_t) now(CLOCK_REALTIME);
        char skew[96] = "", progress[128] = "", hold[96] = "", at[21] = "?";
        EngineProgress pr;
        int r = ledger_counts(e->ledger, c);

        if (r < 0)
                return r;
        if (engine_progress(e, &pr)) {
                (void) rfc3339_format(pr.started / (int64_t) USEC_PER_SEC, at);
                if (pr.eta >= 0)
                        snprintf(progress, sizeof progress, "pass since %s: %zu/%zu at %.1f/s, ETA %.0f s; ", at,
                                 pr.done, pr.total, pr.rate, pr.eta);
                else
                        snprintf(progress, sizeof progress, "pass since %s: %zu/%zu; ", at, pr.done, pr.total);
        }
        if (ledger_count_held(e->ledger, due_now(e, t), &held, &first) >= 0 && held > 0) {
                (void) rfc3339_format(first, at);
                snprintf(hold, sizeof hold, "%" PRIu64 " held (safety.hold), the first may go from %s; ", held, at);
        }
        if (e->skewed)
                snprintf(skew, sizeof skew, "API clock %.0f s %s ours; ", usec_to_sec(e->api_offset < 0 ? -e->api_offset : e->api_offset),
                         e->api_offset < 0 ? "behind" : "ahead of");
        snprintf(buf, size, "%s%s%s%s%s%s%" PRIu64 " pending, %" PRIu64 " in flight, %" PRIu64 " retrying, %" PRIu64
                 " scheduled, %" PRIu64 " released, %" PRIu64 " failed, %" PRIu64 " deferred, %" PRIu64 " unresolved",
                 e->paused ? "PAUSED (" : "", e->paused ? strna(e->pause_reason) : "", e->paused ? "): " : "", skew,
                 progress, hold,
                 c[STATE_PENDING], c[STATE_IN_FLIGHT], c[STATE_RETRYING], c[STATE_SCHEDULED],
                 c[STATE_RELEASED], c[STATE_FAILED], c[STATE_DEFERRED], c[STATE_UNRESOLVED]);
        return 0;
}
