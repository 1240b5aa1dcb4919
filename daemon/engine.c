/* SPDX-License-Identifier: MIT */
/* The pass: which rows are due, in what order they are met, and when the
 * next pass comes; the engine's timers and its interface (engine.h).  The
 * acts and their outcomes are act.c's, the match of a listing to the
 * declarations match.c's, the pauses pause.c's, the decisions reconcile.c's.
 *
 * A pass takes the rows that are due and observes them with the fewest
 * calls: the whole account listed first when numbers must be resolved or
 * many rows are due, one GET each otherwise.  Rows whose DELETE may have
 * gone out are always looked at by id, and only once their settle time has
 * come.  Nothing is released while the pass's listing runs.
 *
 * The rows come from the ledger in batches of BATCH, by pk, and the next
 * batch is taken from the event loop only once fewer than BATCH jobs are
 * open: memory does not grow with the ledger, and signals, the control
 * socket and the watchdog are served between batches. */

#include <inttypes.h>
#include <stdlib.h>
#include <sys/random.h>

#include "engine-internal.h"
#include "log.h"
#include "macro.h"
#include "messages.h"

#define BATCH             256u                    /* rows taken from the ledger at a time */
#define CHECK_BATCH       4096u                   /* rows checked against a listing at a time */
#define COUNT_CHUNK       65536u                  /* rows of the ledger counted per turn of the loop */

static void on_answer(Diga *d, const CallResult *r, void *userdata);

usec_t engine_mono_now(Engine *e) {
        uint64_t t;

        if (sd_event_now(e->event, CLOCK_MONOTONIC, &t) < 0)
                return now(CLOCK_MONOTONIC);
        return t;
}

void engine_arm(sd_event_source *s, usec_t when) {
        if (sd_event_source_set_time(s, when) < 0 || sd_event_source_set_enabled(s, SD_EVENT_ONESHOT) < 0)
                log_error("Cannot arm a timer; the engine wakes again at the next event.");
}

void engine_disarm(sd_event_source *s) {
        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

World engine_world(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);

        return (World) {
                .now = t, .due_now = reconcile_due_now(t, e->api_offset, e->offset_known),
                .boot_now = (int64_t) now(CLOCK_BOOTTIME),
                .max_attempts = e->max_attempts, .base_delay = e->base_delay, .max_delay = e->max_delay,
                .settle = e->settle, .jitter = drand48(), .dry_run = e->dry_run,
        };
}

Row job_row(const Job *j) {
        return (Row) {
                .state = j->state, .key = j->key, .id = j->id, .number = j->number, .not_before = j->not_before,
                .hold_boot_until = j->hold_boot_until,
                .attempts = j->attempts, .sent_at = j->sent_at, .look_after = j->look_after,
                .provider = j->provider, .last_error = j->last_error, .rejected = j->rejected,
                .answered = j->delete_status, .inbound_agent = j->inbound_agent, .outbound_agent = j->outbound_agent,
                .release_in_use = j->in_use == IN_USE_RELEASE,
        };
}

/* Marks a job finished (its row waits for nothing more in this pass).  It
 * is freed with its batch, from the loop: callers may still read it. */
void job_finish(Job *j) {
        if (j->finished)
                return;
        j->finished = true;
        j->batch->n_open--;
        j->e->n_open--;
        j->e->n_done++;
        engine_kick(j->e);
}

static void job_done(Job *j) {
        free(j->key);
        free(j->id);
        free(j->number);
        free(j->provider);
        free(j->api_number);
        free(j->last_error);
        free(j->rejected);
        free(j->nickname);
        free(j->inbound_agent);
        free(j->outbound_agent);
}

int engine_set_str(char **p, const char *v) {
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

/* The cause of a failed listing that no GET would get past. */
static bool list_unreachable(int r) {
        return r == -EHOSTUNREACH || r == -EACCES || r == -ECANCELED;
}

static void listing_done(Listing *ls, int r, const char *why, void *userdata) {
        Engine *e = userdata;
        const ListingStats *st = listing_stats(ls);
        char buf[32];

        e->stats.calls += st->calls;
        e->list_r = r;
        if (r >= 0) {
                e->list_failures = 0;
                e->list_error = mfree(e->list_error);
                snprintf(buf, sizeof buf, "%zu", st->listed);
                if (ledger_meta_set(e->ledger, "account_size", buf) < 0)
                        log_warning("Cannot note the account's size in the ledger (%s); the next pass may list "
                                    "needlessly.", ledger_errmsg(e->ledger));
        } else {
                /* No verdict, no attempt: every row the listing was for stays as it is. */
                e->list_failures++;
                free(e->list_error);
                e->list_error = why ? strdup(why) : NULL;
                if (r == -EACCES)
                        pause_auth(e, 401, "GET", "/v1/phone/", why);
                if (r != -ECANCELED && r != -EACCES && !e->stopping) {
                        World w = engine_world(e);
                        usec_t delay = reconcile_backoff(&w, e->list_failures, -1);
                        uint64_t waiting = e->counted[r == -EHOSTUNREACH ? DUE_REST : DUE_BY_NUMBER];

                        /* One line for them all: a million rows are one event. */
                        log_warning("The account could not be listed (%s)%s; %" PRIu64 " %s%s %s without a "
                                    "verdict; listing again in %.1f s.", why ? why : "failed",
                                    r == -EHOSTUNREACH ? ": the API cannot be reached" : "", waiting,
                                    plural(waiting, "phone", "phones"),
                                    r == -EHOSTUNREACH ? "" : " declared by number", plural(waiting, "waits", "wait"),
                                    usec_to_sec((int64_t) delay));
                        engine_arm(e->list_retry, engine_mono_now(e) + delay);
                }
        }
        /* What was decided while the account was listed may leave now. */
        FOREACH_JOB(j, b, e)
                if (j->held && !j->finished)
                        act_delete(j);
        engine_kick(e);
}

static int on_list_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        engine_request_pass(userdata, false);
        return 0;
}

/* ---- passes ---- */

typedef struct Load {
        Engine *e;
        Batch *b;
} Load;

static int add_job(const Phone *p, void *userdata) {
        Load *ld = userdata;
        Engine *e = ld->e;
        Job *j = &ld->b->jobs[ld->b->n];

        *j = (Job) {
                .e = e, .batch = ld->b, .pk = p->pk, .version = p->version, .state = p->state,
                .attempts = p->attempts,
                .not_before = p->not_before, .sent_at = p->sent_at,
                .hold_boot_until = p->hold_boot_until,
                .look_after = p->sent_at ? p->sent_at + (int64_t) e->settle : 0, .in_use = p->in_use,
        };
        if (engine_set_str(&j->key, p->key) < 0 || engine_set_str(&j->id, p->id) < 0 || engine_set_str(&j->number, p->number) < 0 ||
            engine_set_str(&j->provider, p->provider) < 0 || engine_set_str(&j->api_number, p->api_number) < 0 ||
            engine_set_str(&j->last_error, p->last_error) < 0 || engine_set_str(&j->nickname, p->nickname) < 0 ||
            engine_set_str(&j->inbound_agent, p->inbound_agent) < 0 ||
            engine_set_str(&j->outbound_agent, p->outbound_agent) < 0) {
                job_done(j);
                return -ENOMEM;
        }
        ld->b->n++;
        e->after = p->pk;
        return 0;
}

static Batch *batch_free(Batch *b) {
        for (size_t i = 0; i < b->n; i++)
                job_done(&b->jobs[i]);
        free(b);
        return NULL;
}

/* From the loop only: no caller is left holding one of their jobs. */
static void batches_reap(Engine *e) {
        for (Batch **p = &e->batches; *p;) {
                Batch *b = *p;

                if (b->n_open > 0) {
                        p = &b->next;
                        continue;
                }
                *p = b->next;
                (void) batch_free(b);
        }
}

/* Takes the next batch of `set` as jobs: how many rows came (< BATCH: the set is done). */
static int batch_load(Engine *e, DueSet set, Batch **ret) {
        Batch *b;
        int r;

        b = calloc(1, sizeof(Batch) + BATCH * sizeof(Job));
        if (!b)
                return -ENOMEM;
        e->due.set = set;
        r = ledger_due(e->ledger, &e->due, e->after, BATCH, add_job, &(Load) { .e = e, .b = b });
        if (r < 0) {
                (void) batch_free(b);
                return r;
        }
        b->n_open = b->n;
        e->n_open += b->n;
        b->next = e->batches;
        e->batches = b;
        *ret = b;
        return (int) b->n;
}

static void pass_free(Engine *e) {
        while (e->batches) {
                Batch *b = e->batches;
                e->batches = b->next;
                (void) batch_free(b);
        }
        e->n_open = e->n_done = 0;
        e->listing = listing_free(e->listing);
        /* An account's worth of rows, not kept past the pass. */
        if (ledger_listed_clear(e->ledger) < 0)
                log_warning("Cannot empty the listing's table (%s).", ledger_errmsg(e->ledger));
        e->confirming = false;
}

static bool want_listing(Engine *e) {
        return match_wants_listing(e->ledger, e->counted[DUE_BY_ID], e->counted[DUE_BY_NUMBER]);
}

/* ---- a row meets the listing (match.c) ---- */

static int keep_listed(const RemotePhone *p, void *userdata) {
        Engine *e = userdata;

        return match_keep(e->ledger, p, true);
}

static const CallResult list_call = {
        .kind = CALL_LIST, .method = "GET", .path = "/v1/phone/ (the account listed)", .http_status = 200,
};

/* The listing is complete: a row meets the phone it names. */
static void match_job(Engine *e, Job *j) {
        _cleanup_(match_done) Match m = {};
        Row row = job_row(j);
        World w;
        Outcome o;
        int r;

        r = match_row(e->ledger, &row, listing_stats(e->listing), e->confirming, (int64_t) now(CLOCK_REALTIME), &m);
        if (r < 0 && !j->id) {
                log_error_errno(r, "Cannot read the listing back for %s: %m (%s); it waits for the next pass.",
                                j->key, ledger_errmsg(e->ledger));
                job_finish(j);
                return;
        }
        if (r < 0)
                log_error_errno(r, "Cannot read the listing back for %s: %m (%s); looking at it by id.", j->key,
                                ledger_errmsg(e->ledger));
        if (r < 0 || r == MATCH_BY_ID) {
                act_observe(j, false);   /* not listed: ask for it by id to be sure */
                return;
        }
        if (r == MATCH_UNCONFIRMED) {
                /* This row fell due after the check that would have sent the
                 * pass to a listing by cursor: the next pass lists again. */
                e->stats.unconfirmed++;
                e->want_pass = true;
                job_finish(j);
                return;
        }
        w = engine_world(e);
        reconcile_look(&row, &m.look, &w, &o);
        act_apply(j, &o, &list_call, true);
}

static int64_t due_now(Engine *e, int64_t t) {
        return reconcile_due_now(t, e->api_offset, e->offset_known);
}

/* The next wake-up is looked for from the time the last pass took its due
 * rows at, not from now: a row that fell due while that pass ran was not
 * among them, and from now it would look already served, so nothing would
 * wake for it until the resync (seen as a not_before missed by minutes on a
 * loaded machine, whose pass outlasted the wait). */
static void arm_wake(Engine *e) {
        int64_t t = e->due.now, t_due = e->due.due_now, next;
        int r;

        /* No pass yet, or a clock stepped back since: from now. */
        if (t == 0 || t > (int64_t) now(CLOCK_REALTIME)) {
                t = (int64_t) now(CLOCK_REALTIME);
                t_due = due_now(e, t);
        }
        r = ledger_next_due(e->ledger, t, t_due, e->held, &next);
        if (r >= 0)
                engine_arm(e->wake, (usec_t) (next > 0 ? next : 1));
        else
                engine_disarm(e->wake);
        /* Nothing wakes the daemon for a row that falls due then but the resync. */
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Cannot find when the next phone falls due: %m (%s); the next pass waits for "
                                  "the resync.", ledger_errmsg(e->ledger));
        /* A hold ends by the boot-time clock, whatever the wall clock does
         * meanwhile; looked for from the pass's time too. */
        if (!e->held && ledger_next_hold_end(e->ledger, e->hold_from > 0 ? e->hold_from : (int64_t) now(CLOCK_BOOTTIME),
                                             &next) >= 0)
                engine_arm(e->hold_end, (usec_t) next);
        else
                engine_disarm(e->hold_end);
}

/* The next step of the pass (or of its count), from the loop. */
void engine_kick(Engine *e) {
        if ((e->running || e->counting) && e->advance)
                (void) sd_event_source_set_enabled(e->advance, SD_EVENT_ONESHOT);
}

static void pass_begin(Engine *e) {
        uint64_t total;
        World w;
        int r;

        /* Paused by an operator: only the looks at DELETEs that may have gone out. */
        if (e->held)
                e->counted[DUE_BY_ID] = e->counted[DUE_BY_NUMBER] = e->counted[DUE_REST] = 0;
        total = e->counted[DUE_LOOKS] + e->counted[DUE_REST];
        if (total == 0) {
                arm_wake(e);
                return;
        }
        e->running = true;
        e->stats = (PassStats) { .started = engine_mono_now(e) };
        e->step = STEP_LOOKS;
        e->rest = REST_UNSET;
        e->after = 0;
        e->list_r = 0;
        log_info("Pass: %" PRIu64 " %s to look at%s.", total, plural(total, "phone", "phones"),
                 e->due.resync ? " (resync)" : "");

        w = engine_world(e);
        if (e->counted[DUE_REST] > 0 && want_listing(e)) {
                r = listing_new(e->event, e->diga, e->api, &w, keep_listed, listing_done, e, &e->listing);
                if (r < 0) {
                        log_error_errno(r, "Cannot list the account: %m");
                        e->list_r = r;
                } else {
                        e->list_r = 1;
                        e->list_generation = e->generation;
                        listing_start(e->listing);
                }
        }
        engine_kick(e);
        if (e->idle)
                e->idle(e, e->idle_userdata);
}

/* The pass's due rows are counted COUNT_CHUNK rows of the ledger at a
 * time, a chunk per turn of the loop: the count of a million took 0.3 to
 * 0.6 s, with the control socket, the signals and the watchdog waiting.
 * Rows added meanwhile are not counted; the walk takes them all the same. */
static void pass_count(Engine *e) {
        int64_t upto = e->count_after > e->count_end - (int64_t) COUNT_CHUNK ? e->count_end :
                       e->count_after + (int64_t) COUNT_CHUNK;
        int r;

        r = ledger_due_count_range(e->ledger, &e->due, e->count_after, upto, e->counted);
        if (r >= 0 && upto < e->count_end) {
                e->count_after = upto;
                engine_kick(e);
                return;
        }
        e->counting = false;
        if (r < 0) {
                log_error_errno(r, "Cannot count the due phones in the ledger: %m (%s)", ledger_errmsg(e->ledger));
                return;
        }
        pass_begin(e);
}

static void pass_start(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        int r;

        e->due = (DueQuery) { .now = t, .due_now = due_now(e, t), .resync = e->want_resync };
        e->want_pass = e->want_resync = false;
        e->hold_from = (int64_t) now(CLOCK_BOOTTIME);
        memset(e->counted, 0, sizeof e->counted);
        r = ledger_last_pk(e->ledger, &e->count_end);
        if (r < 0) {
                log_error_errno(r, "Cannot count the due phones in the ledger: %m (%s)", ledger_errmsg(e->ledger));
                return;
        }
        e->count_after = 0;
        e->counting = true;
        pass_count(e);
}

/* The loop was told to exit (by the idle callback): start nothing more. */
static bool exiting(Engine *e) {
        int code;

        return sd_event_get_exit_code(e->event, &code) != -ENODATA;
}

static void pass_end(Engine *e) {
        usec_t dt = engine_mono_now(e) - e->stats.started;

        if (e->stats.unconfirmed > 0)
                log_info("%zu %s fell due after the listing was checked and %s not in it: the next pass lists "
                         "again.", e->stats.unconfirmed, plural(e->stats.unconfirmed, "number", "numbers"),
                         plural(e->stats.unconfirmed, "was", "were"));
        log_event(LOG_INFO, MESSAGE_PASS_SUMMARY, NULL,
                  "Pass done in %.1f s: %u calls; %u released, %u scheduled, %u deferred, %u retrying, "
                  "%u failed, %u unresolved, %u in use.", usec_to_sec((int64_t) dt), e->stats.calls,
                  e->stats.outcomes[STATE_RELEASED], e->stats.outcomes[STATE_SCHEDULED],
                  e->stats.outcomes[STATE_DEFERRED], e->stats.outcomes[STATE_RETRYING],
                  e->stats.outcomes[STATE_FAILED], e->stats.outcomes[STATE_UNRESOLVED],
                  e->stats.outcomes[STATE_IN_USE]);
        e->running = false;
        pass_free(e);
        /* Stopping, no wake is wanted; and finding the next one reads every
         * pending row, 0.3 s of a stop in a million-row ledger. */
        if (!e->stopping)
                arm_wake(e);
        /* Told at every pass end, also when the next pass is already wanted: a
         * retry timer that fires during a pass must not keep --once from
         * seeing that it is stuck. */
        if (e->idle)
                e->idle(e, e->idle_userdata);
        if (e->want_pass && !e->stopping && !e->paused && !exiting(e)) {
                pass_start(e);
                if (!e->running && !e->counting && e->idle)
                        e->idle(e, e->idle_userdata);
        }
}

typedef struct Check {
        Engine *e;
        unsigned n;
} Check;

static int check_number(const Phone *p, void *userdata) {
        Check *c = userdata;
        int r;

        c->n++;
        c->e->after = p->pk;
        r = ledger_listed_find(c->e->ledger, NULL, p->number, NULL, NULL);
        /* -EEXIST: stop reading, one absent number is enough. */
        return r < 0 ? r : r > 0 ? 0 : -EEXIST;
}

/* Every due number must be in a listing by page before any row meets it;
 * one that is not sends the whole pass to a listing by cursor.  1: more
 * to check, 0: done. */
static int step_check(Engine *e) {
        Check c = { .e = e };
        int r;

        if (!e->listing || e->list_r != 0 || e->confirming || !listing_stats(e->listing)->pages)
                return 0;
        e->due.set = DUE_BY_NUMBER;
        r = ledger_due(e->ledger, &e->due, e->after, CHECK_BATCH, check_number, &c);
        if (r == -EEXIST) {
                /* (The phones the listing kept go with its restart.) */
                e->confirming = true;
                e->list_r = 1;
                log_info("Listing phones: a declared number was not in the listing by page; listing the account "
                         "by cursor to be sure.");
                listing_start_by_cursor(e->listing);
                return 0;
        }
        if (r < 0) {
                /* Unchecked, the listing is no verdict on numbers. */
                log_error_errno(r, "Cannot read the due phones from the ledger: %m (%s)", ledger_errmsg(e->ledger));
                e->list_r = r;
                return 0;
        }
        return c.n == CHECK_BATCH;
}

/* How the rest of the rows are met, once the listing has ended. */
static Rest rest_mode(Engine *e) {
        if (e->held)
                return REST_NONE;
        if (!e->listing && e->list_r == 0)
                return REST_GET;
        if (e->list_r == 0)
                return REST_MATCH;
        return list_unreachable(e->list_r) ? REST_NONE : REST_BY_ID;
}

static int step_rest(Engine *e) {
        Batch *b;
        int r;

        if (e->rest == REST_UNSET)
                e->rest = rest_mode(e);
        if (e->rest == REST_MATCH && e->generation != e->list_generation) {
                /* A row declared after its phone's page was read would not
                 * find it there: the listing is no verdict on numbers now. */
                log_info("The declarations changed since the account was listed: the phones declared by number "
                         "wait for the next pass's listing; those by id are looked at by id.");
                e->want_pass = true;
                e->rest = REST_BY_ID;
        }
        if (e->rest == REST_NONE)
                return 0;
        r = batch_load(e, e->rest == REST_BY_ID ? DUE_BY_ID : DUE_REST, &b);
        if (r < 0) {
                log_error_errno(r, "Cannot read the due phones from the ledger: %m (%s)", ledger_errmsg(e->ledger));
                return 0;
        }
        for (size_t i = 0; i < b->n; i++)
                if (e->rest == REST_MATCH)
                        match_job(e, &b->jobs[i]);
                else
                        act_observe(&b->jobs[i], false);
        return r == (int) BATCH;
}

/* A DELETE whose answer was lost is looked at first, always by id. */
static int step_looks(Engine *e) {
        Batch *b;
        int r;

        r = batch_load(e, DUE_LOOKS, &b);
        if (r < 0) {
                log_error_errno(r, "Cannot read the due phones from the ledger: %m (%s)", ledger_errmsg(e->ledger));
                return 0;
        }
        for (size_t i = 0; i < b->n; i++)
                act_observe(&b->jobs[i], true);
        return r == (int) BATCH;
}

/* One batch per turn of the loop, and only while fewer than a batch of
 * jobs are open; the pass ends once nothing of it is left. */
static int on_advance(sd_event_source *s, void *userdata) {
        Engine *e = userdata;
        int r;

        batches_reap(e);
        if (e->counting) {
                if (e->stopping || e->paused || exiting(e)) {
                        e->counting = false;
                        e->want_pass = true;    /* not done: after the pause */
                } else
                        pass_count(e);
                if (!e->running && !e->counting && e->idle)
                        e->idle(e, e->idle_userdata);
                return 0;
        }
        if (!e->running)
                return 0;
        while (e->step != STEP_END) {
                if (e->stopping || e->paused) {
                        e->step = STEP_END;
                        break;
                }
                if (e->step != STEP_LOOKS && e->list_r == 1)
                        return 0;       /* listing_done() kicks */
                if (e->n_open >= BATCH)
                        return 0;       /* job_finish() kicks */
                switch (e->step) {
                case STEP_LOOKS:
                        r = step_looks(e);
                        break;
                case STEP_CHECK:
                        r = step_check(e);
                        break;
                default:
                        r = step_rest(e);
                        break;
                }
                if (r > 0) {
                        engine_kick(e);
                        return 0;
                }
                e->step++;
                e->after = 0;
        }
        if (e->n_open > 0 || e->list_r == 1 || (e->listing && listing_running(e->listing)) ||
            diga_in_flight(e->diga) > 0 || diga_queued(e->diga) > 0)
                return 0;
        pass_end(e);
        return 0;
}

void engine_request_pass(Engine *e, bool resync) {
        e->want_pass = true;
        e->want_resync = e->want_resync || resync;
        if (e->running || e->counting || e->stopping || e->paused || exiting(e))
                return;
        pass_start(e);
        if (!e->running && !e->counting && e->idle)
                e->idle(e, e->idle_userdata);
}

void engine_declarations_changed(Engine *e) {
        size_t dropped = 0;

        e->generation++;
        FOREACH_JOB(j, b, e) {
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
        engine_kick(e);
}

static int on_wake(sd_event_source *s, uint64_t usec, void *userdata) {
        engine_request_pass(userdata, false);
        return 0;
}

static int on_resync(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        engine_arm(s, usec + e->resync_interval);
        engine_request_pass(e, true);
        return 0;
}

static int on_unpause(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        pause_end(e);
        engine_request_pass(e, false);
        return 0;
}

static void on_answer(Diga *d, const CallResult *r, void *userdata) {
        note_api_clock(userdata, r);
        engine_kick(userdata);    /* the pass may end once no call is out */
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
                r = sd_event_add_time(ev, &e->hold_end, CLOCK_BOOTTIME, UINT64_MAX, USEC_PER_MSEC, on_wake, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->list_retry, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_list_retry, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->unpause, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_SEC, on_unpause, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->resync, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_SEC, on_resync, e);
        /* Below every other source: a batch waits for the answers and signals at hand. */
        if (r >= 0)
                r = sd_event_add_defer(ev, &e->advance, on_advance, e);
        if (r >= 0)
                r = sd_event_source_set_priority(e->advance, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_event_source_set_enabled(e->advance, SD_EVENT_OFF);
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
        (void) sd_event_source_disable_unref(e->hold_end);
        (void) sd_event_source_disable_unref(e->list_retry);
        (void) sd_event_source_disable_unref(e->unpause);
        (void) sd_event_source_disable_unref(e->resync);
        (void) sd_event_source_disable_unref(e->advance);
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
        e->auth_retry = sec_to_usec(c->auth_retry);
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
        engine_arm(e->resync, engine_mono_now(e) + e->resync_interval);
        /* A new config may carry a new key: try again at once. */
        e->list_failures = 0;
        pause_end(e);
        return 0;
}

bool engine_stop(Engine *e) {
        e->stopping = true;
        engine_disarm(e->wake);
        engine_disarm(e->hold_end);
        engine_disarm(e->resync);
        engine_disarm(e->list_retry);
        if (e->listing)
                listing_stop(e->listing, "stopping");
        diga_drop_queued(e->diga);
        FOREACH_JOB(j, b, e)
                if (j->held)
                        job_finish(j);
        engine_kick(e);
        return !engine_busy(e);
}

bool engine_busy(Engine *e) {
        return e->running || e->counting || (e->diga && diga_in_flight(e->diga) > 0);
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

        if (e->running || e->counting)
                return false;
        /* Retries waiting for their time are not settled; not_before waits
         * are, and so is everything a dry run has looked at. */
        return ledger_count_unsettled(e->ledger, due_now(e, t), !e->dry_run, e->max_attempts, &n, NULL) >= 0 && n == 0;
}

const char *engine_stuck(Engine *e) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        uint64_t n, stuck;

        if (e->running || e->counting)
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
        size_t total;
        usec_t dt;

        if (!e->running)
                return false;
        dt = engine_mono_now(e) - e->stats.started;
        /* Counted at the start; rows that fell due since come on top. */
        total = (size_t) (e->counted[DUE_LOOKS] + e->counted[DUE_REST]);
        if (total < e->n_done + e->n_open)
                total = e->n_done + e->n_open;
        *ret = (EngineProgress) {
                .done = e->n_done, .total = total,
                .started = (int64_t) now(CLOCK_REALTIME) - (int64_t) dt,
                .rate = dt > 0 ? (double) e->n_done * USEC_PER_SEC / (double) dt : 0,
        };
        ret->eta = ret->rate > 0 ? (double) (total - e->n_done) / ret->rate : -1;
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
        if (ledger_count_held(e->ledger, t, &held, &first) >= 0 && held > 0) {
                (void) rfc3339_format(first, at);
                snprintf(hold, sizeof hold, "%" PRIu64 " held (safety.hold), the first may go from %s; ", held, at);
        }
        if (e->skewed)
                snprintf(skew, sizeof skew, "API clock %.0f s %s ours; ", usec_to_sec(e->api_offset < 0 ? -e->api_offset : e->api_offset),
                         e->api_offset < 0 ? "behind" : "ahead of");
        snprintf(buf, size, "%s%s%s%s%s%s%" PRIu64 " pending, %" PRIu64 " in flight, %" PRIu64 " retrying, %" PRIu64
                 " scheduled, %" PRIu64 " released, %" PRIu64 " failed, %" PRIu64 " deferred, %" PRIu64 " unresolved, %"
                 PRIu64 " in use",
                 e->paused ? "PAUSED (" : "", e->paused ? strna(e->pause_reason) : "", e->paused ? "): " : "", skew,
                 progress, hold,
                 c[STATE_PENDING], c[STATE_IN_FLIGHT], c[STATE_RETRYING], c[STATE_SCHEDULED],
                 c[STATE_RELEASED], c[STATE_FAILED], c[STATE_DEFERRED], c[STATE_UNRESOLVED], c[STATE_IN_USE]);
        return 0;
}
