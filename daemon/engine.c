/* SPDX-License-Identifier: MIT */
/* Reconciliation.  A pass takes the rows that are due, observes them with
 * the fewest calls (list pages when numbers must be resolved or many rows
 * are due, one GET each otherwise), and acts on what it sees.  Every step
 * is committed to the ledger before the next one starts; a DELETE goes out
 * only after its row is committed in_flight, and an in_flight row is always
 * observed again, never re-sent blindly. */

#include <curl/curl.h>
#include <inttypes.h>
#include <math.h>
#include <sys/random.h>

#include "daemon.h"
#include "log.h"
#include "macro.h"
#include "messages.h"

#define AUTH_PAUSE_USEC  (15 * 60 * 1000000ULL)  /* until a reload, or this long */
#define LEDGER_RETRY_USEC (60 * 1000000ULL)
#define RETRY_AFTER_MAX  3600                   /* seconds we honour at most */

typedef struct Job {
        Engine *e;
        int64_t pk;
        char *key, *id, *number, *provider;
        PhoneState state;            /* as committed in the ledger */
        unsigned attempts;
        char *rejected;              /* why the API refused a DELETE, pending a fresh look */
        int rejected_status;         /* the HTTP status of that DELETE */
        RemotePhone candidate;       /* a released phone with our number, if nothing better turns up */
        RemotePhone live;            /* a SIP identifier's live phone, held until the listing ends */
        unsigned n_live;             /* how many live phones carry that identifier */
        bool matched, done;
} Job;

typedef struct PassStats {
        unsigned calls, outcomes[_STATE_MAX];
        uint64_t started;
} PassStats;

struct Engine {
        sd_event *event;
        Ledger *ledger;
        Diga *diga;
        Api *api;
        sd_event_source *wake, *resync, *list_retry, *unpause;

        /* From the config, copied so a reload never pulls it from under a pass. */
        unsigned max_attempts;
        double base_delay, max_delay, resync_interval;
        bool dry_run;

        bool running, want_pass, want_resync, stopping, paused;
        char *pause_reason;
        Job *jobs;
        size_t n_jobs, n_open;
        Job **by_id, **by_number;
        size_t n_by_id, n_by_number;
        bool listing;
        char cursor[UUID_STRING_LEN + 1];
        unsigned page_attempts;
        size_t listed;
        PassStats stats;

        EngineIdle idle;
        void *idle_userdata;
};

static void pass_maybe_end(Engine *e);
static void observe(Job *j, bool urgent);
static void ledger_pause(Engine *e, int error);

static const char *const message_ids[_STATE_MAX] = {
        [STATE_DEFERRED] = MESSAGE_DEFERRED,   [STATE_RETRYING] = MESSAGE_RETRYING,
        [STATE_SCHEDULED] = MESSAGE_SCHEDULED, [STATE_RELEASED] = MESSAGE_RELEASED,
        [STATE_FAILED] = MESSAGE_FAILED,       [STATE_CANCELLED] = MESSAGE_CANCELLED,
        [STATE_UNRESOLVED] = MESSAGE_UNRESOLVED,
};

static uint64_t mono_now(Engine *e) {
        uint64_t t;
        sd_event_now(e->event, CLOCK_MONOTONIC, &t);
        return t;
}

static void job_done(Job *j) {
        if (j->done)
                return;
        j->done = true;
        j->e->n_open--;
}

static void job_free(Job *j) {
        free(j->key);
        free(j->id);
        free(j->number);
        free(j->provider);
        free(j->rejected);
        remote_phone_done(&j->candidate);
        remote_phone_done(&j->live);
}

/* Commits one step of a phone's life and tells the journal about it. */
static int transition(Job *j, PhoneState to, const CallResult *call, const char *id, const char *provider,
                      const char *scheduled, const char *error, int64_t next_at, const char *fmt, ...)
        _printf_(9, 10);
static int transition(Job *j, PhoneState to, const CallResult *call, const char *id, const char *provider,
                      const char *scheduled, const char *error, int64_t next_at, const char *fmt, ...) {
        Engine *e = j->e;
        _cleanup_free_ char *detail = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        if (vasprintf(&detail, fmt, ap) < 0)
                detail = NULL;
        va_end(ap);

        /* attempts counts failed calls; callers count them in the job first. */
        LedgerUpdate u = {
                .pk = j->pk, .from = j->state, .to = to,
                .id = id, .number = j->number, .provider = provider, .scheduled_release_at = scheduled,
                .attempts = (int) j->attempts, .next_at = next_at, .error = error, .detail = detail,
        };
        if (call && !call->not_sent) {
                u.method = call->method;
                u.path = call->path;
                u.http_status = call->http_status;
                u.latency_ms = call->latency_ms;
        }
        r = ledger_update(e->ledger, &u);
        /* A reload cancelled the row while its DELETE was out: what the API
         * did is still the truth, and goes on record over the cancellation. */
        if (r == -ESTALE && (to == STATE_RELEASED || to == STATE_SCHEDULED) &&
            ledger_state(e->ledger, j->pk, &u.from) >= 0 && u.from == STATE_CANCELLED) {
                j->state = STATE_CANCELLED;
                r = ledger_update(e->ledger, &u);
        }
        if (r == -ESTALE) {
                /* A reload moved the row on (say, cancelled it): its plan wins. */
                log_info("%s changed in the ledger meanwhile; leaving it as it is now.", j->key);
                job_done(j);
                return r;
        }
        if (r < 0) {
                log_error_errno(r, "Cannot record %s -> %s for %s in the ledger: %m (%s)",
                                state_to_string(j->state), state_to_string(to), j->key, ledger_errmsg(e->ledger));
                ledger_pause(e, r);
                return r;
        }
        if (id && !j->id)
                j->id = strdup(id);
        if (to != j->state && message_ids[to]) {
                /* ATTEMPT: which DELETE this was (failures so far, plus this one if it worked). */
                LogFields f = {
                        .phone_id = j->id, .phone_number = j->number, .outcome = state_to_string(to),
                        .http_status = call && !call->not_sent ? call->http_status : 0,
                        .attempt = call && call->kind == CALL_DELETE && !call->not_sent ?
                                   j->attempts + (to == STATE_RETRYING || to == STATE_FAILED ? 0 : 1) : 0,
                };
                /* Failed after a last look: the DELETE that failed is the story, not the look. */
                if (to == STATE_FAILED && j->rejected && j->rejected_status >= 0) {
                        f.http_status = j->rejected_status;
                        f.attempt = j->attempts;
                }
                log_event(to == STATE_FAILED ? LOG_ERR : to == STATE_RETRYING ? LOG_WARNING : LOG_NOTICE,
                          message_ids[to], &f, "%s %s: %s", j->number ? j->number : j->key,
                          state_to_string(to), detail ? detail : "");
        }
        if (to != j->state)
                e->stats.outcomes[to]++;
        j->state = to;
        return 0;
}

/* Full jitter: uniformly random in [0, min(max, base * 2^attempt)]. */
static int64_t backoff_usec(Engine *e, unsigned attempt, int64_t retry_after) {
        double cap = fmin(e->max_delay, e->base_delay * ldexp(1.0, (int) fmin(attempt, 60)));
        double delay = cap * drand48();

        if (retry_after > 0)
                delay = fmax(delay, (double) (retry_after < RETRY_AFTER_MAX ? retry_after : RETRY_AFTER_MAX));
        return (int64_t) (delay * 1e6);
}

static bool transient(const CallResult *r) {
        return r->http_status == 0 || r->http_status == 408 || r->http_status == 429 || r->http_status >= 500;
}

/* Stops every call: nothing queued goes out, the pass ends once the calls
 * already out are back, and a new one starts when the pause does (a reload,
 * or `usec` from now). */
static void pause_calls(Engine *e, uint64_t usec, char *reason) {
        if (e->paused) {
                free(reason);
                return;
        }
        e->paused = true;
        free(e->pause_reason);
        e->pause_reason = reason;
        diga_set_paused(e->diga, true);
        diga_drop_queued(e->diga);
        sd_event_source_set_time(e->unpause, mono_now(e) + usec);
        sd_event_source_set_enabled(e->unpause, SD_EVENT_ONESHOT);
}

static void auth_pause(Engine *e, const CallResult *r) {
        _cleanup_free_ char *msg = api_error_message(e->api, r->body, r->body_len);
        char *reason = NULL;

        if (e->paused)
                return;
        if (asprintf(&reason, "the API answered %d to %s %s%s%s: the key is wrong or lacks %s",
                     r->http_status, r->method, r->path, msg ? ": " : "", msg ? msg : "",
                     r->http_status == 401 ? "validity" : "the phones.view/phones.delete permission") < 0)
                reason = NULL;
        log_event(LOG_CRIT, MESSAGE_AUTH_PAUSED, &(LogFields) { .http_status = r->http_status },
                  "Paused all calls: %s. Fix the key, then reload (or wait %llu minutes).",
                  reason ? reason : "authentication failed", (unsigned long long) (AUTH_PAUSE_USEC / 60000000));
        pause_calls(e, AUTH_PAUSE_USEC, reason);
}

/* A step that cannot be recorded must not be followed by the next one: stop
 * calling until the ledger takes writes again. */
static void ledger_pause(Engine *e, int error) {
        char *reason = NULL;

        if (e->paused)
                return;
        if (asprintf(&reason, "the ledger cannot be written: %s (%s)", strerror(-error),
                     ledger_errmsg(e->ledger)) < 0)
                reason = NULL;
        log_crit("Paused all calls: %s. Trying again in %llu s.", reason ? reason : "ledger write failed",
                 (unsigned long long) (LEDGER_RETRY_USEC / 1000000));
        pause_calls(e, LEDGER_RETRY_USEC, reason);
}

static void resume(Engine *e) {
        if (!e->paused)
                return;
        e->paused = false;
        sd_event_source_set_enabled(e->unpause, SD_EVENT_OFF);
        log_notice("Resuming calls.");
        diga_set_paused(e->diga, false);
}

/* A call that may succeed later: count it, wait, or give up. */
static void retry_later(Job *j, const CallResult *r, const char *why) {
        Engine *e = j->e;
        int64_t next;

        if (r->http_status == 429)
                diga_rate_backoff(e->diga);
        if (r->retry_after > 0)
                diga_hold(e->diga, mono_now(e) + (uint64_t) (r->retry_after < RETRY_AFTER_MAX ? r->retry_after : RETRY_AFTER_MAX) * 1000000);

        /* Rows only being confirmed (scheduled, deferred, unresolved) wait for
         * the next resync; a failed look changes nothing about them. */
        if (j->state != STATE_PENDING && j->state != STATE_RETRYING && j->state != STATE_IN_FLIGHT) {
                log_warning("Could not confirm %s (%s); will look again at the next resync.", j->key, why);
                job_done(j);
                return;
        }
        j->attempts++;
        if (j->attempts >= e->max_attempts && !j->rejected && j->id &&
            (r->kind == CALL_DELETE || ledger_sent_delete(e->ledger, j->pk) > 0)) {
                /* The last DELETE may have worked all the same: look once
                 * more before calling it failed. */
                if (asprintf(&j->rejected, "giving up after %u attempts: %s", j->attempts, why) < 0)
                        j->rejected = NULL;
                j->rejected_status = r->http_status;
                if (transition(j, j->state, r, NULL, NULL, NULL, why, -1, "%s; looking once more",
                               j->rejected ? j->rejected : why) >= 0) {
                        observe(j, true);
                        return;
                }
        } else if (j->attempts >= e->max_attempts)
                transition(j, STATE_FAILED, r, NULL, NULL, NULL, why, 0,
                           "giving up after %u attempts: %s", j->attempts, why);
        else {
                next = now_usec() + backoff_usec(e, j->attempts, r->retry_after);
                transition(j, STATE_RETRYING, r, NULL, NULL, NULL, why, next,
                           "%s %s failed (%s); next attempt in %.1f s", r->method, r->path, why,
                           (double) (next - now_usec()) / 1e6);
        }
        job_done(j);
}

static const char *describe(const CallResult *r, char *buf, size_t size) {
        if (r->http_status == 0)
                snprintf(buf, size, "%s", r->error ? r->error : "no answer");
        else
                snprintf(buf, size, "HTTP %d", r->http_status);
        return buf;
}

static int delete_start(void *userdata) {
        Job *j = userdata;

        if (j->e->stopping || j->e->paused)
                return -ECANCELED;
        return transition(j, STATE_IN_FLIGHT, NULL, j->id, j->provider, NULL, NULL, -1, "DELETE sent");
}

static void on_delete(Diga *d, const CallResult *r, void *userdata) {
        Job *j = userdata;
        Engine *e = j->e;
        char buf[CURL_ERROR_SIZE + 64];
        _cleanup_free_ char *msg = NULL;

        if (r->not_sent) {
                /* Never on the wire: the row is where it was (or back to pending). */
                if (j->state == STATE_IN_FLIGHT)
                        transition(j, STATE_PENDING, r, NULL, NULL, NULL, NULL, -1, "DELETE not sent (%s)", r->error);
                job_done(j);
                goto out;
        }
        e->stats.calls++;
        if (j->state != STATE_IN_FLIGHT) {
                job_done(j);
                goto out;
        }
        if (r->http_status >= 200 && r->http_status < 300) {
                if (j->provider && streq(j->provider, "netelip"))
                        transition(j, STATE_SCHEDULED, r, NULL, NULL, NULL, NULL, 0,
                                   "release ordered (netelip: takes effect at the end of the billing period)");
                else if (j->provider && streq(j->provider, "custom"))
                        transition(j, STATE_RELEASED, r, NULL, NULL, NULL, NULL, 0, "released");
                else {
                        /* An unknown provider: see what the release did. */
                        free(j->rejected);
                        j->rejected = strdup("the DELETE succeeded but the phone still looks assigned");
                        j->rejected_status = r->http_status;
                        observe(j, true);
                        goto out;
                }
        } else if (r->http_status == 404)
                transition(j, STATE_RELEASED, r, NULL, NULL, NULL, NULL, 0, "already gone (HTTP 404)");
        else if (r->http_status == 401 || r->http_status == 403) {
                /* Not done by the API: back to pending, the attempt not counted. */
                transition(j, STATE_PENDING, r, NULL, NULL, NULL, NULL, -1, "DELETE refused (HTTP %d)", r->http_status);
                auth_pause(e, r);
        } else if (transient(r)) {
                retry_later(j, r, describe(r, buf, sizeof buf));
                goto out;
        } else {
                /* Refused for a reason we do not know: look before deciding. */
                msg = api_error_message(e->api, r->body, r->body_len);
                free(j->rejected);
                if (asprintf(&j->rejected, "DELETE answered HTTP %d%s%s", r->http_status,
                             msg ? ": " : "", msg ? msg : "") < 0)
                        j->rejected = NULL;
                j->rejected_status = r->http_status;
                j->attempts++;
                transition(j, STATE_IN_FLIGHT, r, NULL, NULL, NULL, NULL, -1, "%s", j->rejected ? j->rejected : "refused");
                observe(j, true);
                goto out;
        }
        job_done(j);
out:
        pass_maybe_end(e);
}

/* Acts on what the API says about one of our phones. */
static void decide(Job *j, const RemotePhone *p, const CallResult *r) {
        Engine *e = j->e;
        int q;

        j->matched = true;
        if (j->state == STATE_CANCELLED) {
                /* Cancelled after its DELETE may have gone out: record what it did, never act. */
                if (p->status == REMOTE_RELEASED || p->status == REMOTE_FINISHED)
                        transition(j, STATE_RELEASED, r, p->id, p->provider, NULL, NULL, 0,
                                   "%s at the API after all (cancelled too late)", p->status_name);
                else if (p->status == REMOTE_ASSIGNED && p->scheduled_release_at)
                        transition(j, STATE_SCHEDULED, r, p->id, p->provider, p->scheduled_release_at, NULL, 0,
                                   "release ordered after all (cancelled too late), effective %s",
                                   p->scheduled_release_at);
                job_done(j);
                return;
        }
        if (j->number && p->number && !streq(j->number, p->number)) {
                transition(j, STATE_FAILED, r, NULL, NULL, NULL, "declared id and number disagree", 0,
                           "declared id %s, but the API has it as %s: nothing released", p->id, p->number);
                job_done(j);
                return;
        }
        free(j->provider);
        j->provider = p->provider ? strdup(p->provider) : NULL;
        /* A phone declared by id gets its number from the API, for the journal and the ledger. */
        if (!j->number && p->number)
                j->number = strdup(p->number);
        if (!j->id)
                j->id = strdup(p->id);
        switch (p->status) {
        case REMOTE_RESERVED:
        case REMOTE_PENDING_VERIFICATION:
                transition(j, STATE_DEFERRED, r, p->id, p->provider, NULL, NULL, 0,
                           "%s: cannot be released yet; will look again at the next resync", p->status_name);
                break;
        case REMOTE_RELEASED:
        case REMOTE_FINISHED:
                transition(j, STATE_RELEASED, r, p->id, p->provider, NULL, NULL, 0, "%s at the API", p->status_name);
                break;
        case REMOTE_UNKNOWN:
                transition(j, STATE_DEFERRED, r, p->id, p->provider, NULL, "unknown status", 0,
                           "status \"%s\" is unknown to this retired: not released", p->status_name);
                break;
        case REMOTE_ASSIGNED:
                if (p->scheduled_release_at)
                        transition(j, STATE_SCHEDULED, r, p->id, p->provider, p->scheduled_release_at, NULL, 0,
                                   "release ordered, effective %s", p->scheduled_release_at);
                else if (j->rejected)
                        transition(j, STATE_FAILED, r, p->id, p->provider, NULL, j->rejected, 0,
                                   "%s; the phone is still assigned: needs an operator", j->rejected);
                else if (e->dry_run) {
                        /* dry_run: the row keeps its state; only the journal hears of it. */
                        transition(j, j->state, r, p->id, p->provider, NULL, NULL, -1, "observed");
                        log_event(LOG_NOTICE, MESSAGE_DRY_RUN,
                                  &(LogFields) { .phone_id = p->id, .phone_number = j->number ? j->number : p->number,
                                                 .outcome = "dry_run" },
                                  "dry run: would release %s (%s, %s)", j->number ? j->number : p->number, p->id,
                                  p->provider ? p->provider : "unknown provider");
                } else {
                        /* A GET is one of this phone's calls: on record.  The id
                         * and provider go in with in_flight, right before the DELETE. */
                        if (r && r->kind == CALL_GET &&
                            transition(j, j->state, r, p->id, p->provider, NULL, NULL, -1, "observed assigned") < 0)
                                break;
                        if (e->paused || e->stopping)
                                break;  /* a page that came back after the pause: act on nothing */
                        q = diga_call(e->diga, CALL_DELETE, p->id, false, delete_start, on_delete, j);
                        if (q < 0)
                                log_error_errno(q, "Cannot queue the release of %s: %m", j->key);
                        else
                                return;  /* on_delete finishes the job */
                }
                break;
        }
        job_done(j);
}

static void on_get(Diga *d, const CallResult *r, void *userdata) {
        Job *j = userdata;
        Engine *e = j->e;
        _cleanup_free_ char *why = NULL, *msg = NULL;
        RemotePhone p = {};
        char buf[CURL_ERROR_SIZE + 64];

        if (r->not_sent) {
                job_done(j);
                goto out;
        }
        e->stats.calls++;
        if (r->http_status == 200 && r->json && api_parse_phone(e->api, r->body, r->body_len, &p, &why) >= 0) {
                if (j->id && !streq(p.id, j->id))
                        retry_later(j, r, "the API answered with another phone");
                else
                        decide(j, &p, r);
                remote_phone_done(&p);
        } else if (r->http_status == 200) {
                snprintf(buf, sizeof buf, "malformed answer: %s", why ? why : r->json ? "bad JSON" : "not JSON");
                log_warning("GET %s: %s", r->path, buf);
                retry_later(j, r, buf);
        } else if (r->http_status == 404) {
                /* Gone after a DELETE of ours (maybe one whose answer was lost):
                 * released.  Never asked to go: not in the account. */
                if (j->state == STATE_IN_FLIGHT || ledger_sent_delete(e->ledger, j->pk) > 0)
                        transition(j, STATE_RELEASED, r, NULL, NULL, NULL, NULL, 0, "gone after the DELETE (HTTP 404)");
                else
                        transition(j, STATE_UNRESOLVED, r, NULL, NULL, NULL, "not in the account", 0,
                                   "id %s is not in the account (HTTP 404)", j->id);
                job_done(j);
        } else if (r->http_status == 401 || r->http_status == 403) {
                transition(j, j->state, r, NULL, NULL, NULL, NULL, -1, "GET refused");
                auth_pause(e, r);
                job_done(j);
        } else if (transient(r))
                retry_later(j, r, describe(r, buf, sizeof buf));
        else {
                msg = api_error_message(e->api, r->body, r->body_len);
                snprintf(buf, sizeof buf, "GET answered HTTP %d%s%s", r->http_status, msg ? ": " : "", msg ? msg : "");
                transition(j, j->state == STATE_IN_FLIGHT || j->state == STATE_PENDING || j->state == STATE_RETRYING ?
                           STATE_FAILED : j->state, r, NULL, NULL, NULL, buf, 0, "%s", buf);
                job_done(j);
        }
out:
        pass_maybe_end(e);
}

static void observe(Job *j, bool urgent) {
        int r;

        if (j->e->stopping || j->e->paused) {
                job_done(j);
                return;
        }
        r = diga_call(j->e->diga, CALL_GET, j->id, urgent, NULL, on_get, j);
        if (r < 0) {
                log_error_errno(r, "Cannot look at %s: %m", j->key);
                job_done(j);
        }
}

static int cmp_job_id(const void *a, const void *b) {
        return strcmp((*(Job *const *) a)->id, (*(Job *const *) b)->id);
}

static int cmp_job_number(const void *a, const void *b) {
        return strcmp((*(Job *const *) a)->number, (*(Job *const *) b)->number);
}

static Job *find(Job **v, size_t n, const char *s, bool by_id) {
        Job key = { .id = (char *) s, .number = (char *) s }, *kp = &key, **f;

        f = bsearch(&kp, v, n, sizeof(Job *), by_id ? cmp_job_id : cmp_job_number);
        return f ? *f : NULL;
}

static void remote_phone_copy(RemotePhone *to, const RemotePhone *p) {
        *to = *p;
        to->number = strdup(p->number);
        to->status_name = strdup(p->status_name);
        to->provider = p->provider ? strdup(p->provider) : NULL;
        to->scheduled_release_at = p->scheduled_release_at ? strdup(p->scheduled_release_at) : NULL;
}

static void match_listed(Engine *e, const RemotePhone *p, const CallResult *r) {
        Job *j = find(e->by_id, e->n_by_id, p->id, true);

        if (j) {
                if (!j->matched && !j->done)
                        decide(j, p, r);
                return;
        }
        j = find(e->by_number, e->n_by_number, p->number, false);
        if (!j || j->matched || j->done)
                return;
        /* A number can come back after release under a new id: the live phone
         * counts, a released one only if nothing live has that number. */
        if (p->status == REMOTE_RELEASED || p->status == REMOTE_FINISHED) {
                if (!j->candidate.number)
                        remote_phone_copy(&j->candidate, p);
                return;
        }
        /* A phone number is live on one phone at a time, so it is acted on
         * as soon as it is seen.  A SIP identifier is any text an import
         * gave, and two imports may share one: it waits for the whole list,
         * and two live phones with it are a question for an operator. */
        if (strchr(j->number, '@')) {
                if (j->n_live++ == 0)
                        remote_phone_copy(&j->live, p);
                return;
        }
        decide(j, p, r);
}

static void list_next(Engine *e);

static void listing_done(Engine *e, const CallResult *r, const char *failure) {
        char buf[32];

        e->listing = false;
        if (!failure) {
                snprintf(buf, sizeof buf, "%zu", e->listed);
                ledger_meta_set(e->ledger, "account_size", buf);
        }
        for (size_t i = 0; i < e->n_jobs; i++) {
                Job *j = &e->jobs[i];

                if (j->matched || j->done || j->state == STATE_IN_FLIGHT)
                        continue;
                if (failure)
                        retry_later(j, r, failure);
                else if (j->n_live > 1) {
                        transition(j, STATE_FAILED, r, NULL, NULL, NULL, "ambiguous SIP identifier", 0,
                                   "%u live phones carry this identifier: nothing released; declare the "
                                   "one meant by id", j->n_live);
                        job_done(j);
                } else if (j->n_live == 1)
                        decide(j, &j->live, r);
                else if (j->candidate.number)
                        decide(j, &j->candidate, r);
                else if (j->id)
                        observe(j, false);   /* not listed: ask for it by id to be sure */
                else {
                        transition(j, STATE_UNRESOLVED, r, NULL, NULL, NULL, "not in the account", 0,
                                   "number is not in the account (%zu phones listed)", e->listed);
                        job_done(j);
                }
        }
}

/* The listing stops without a verdict on the phones it did not reach:
 * they keep their state, and no attempt is counted against them. */
static void listing_abandon(Engine *e) {
        e->listing = false;
        sd_event_source_set_enabled(e->list_retry, SD_EVENT_OFF);
        for (size_t i = 0; i < e->n_jobs; i++) {
                Job *j = &e->jobs[i];
                if (!j->matched && j->state != STATE_IN_FLIGHT)
                        job_done(j);
        }
}

static void on_page(Diga *d, const CallResult *r, void *userdata) {
        Engine *e = userdata;
        _cleanup_free_ char *why = NULL;
        PhonePage page = {};
        char buf[CURL_ERROR_SIZE + 64];

        if (r->not_sent) {
                listing_abandon(e);
                goto out;
        }
        e->stats.calls++;
        if (r->http_status == 200 && r->json && api_parse_page(e->api, r->body, r->body_len, &page, &why) >= 0) {
                e->listed += page.n;
                for (size_t i = 0; i < page.n; i++)
                        match_listed(e, &page.phones[i], r);
                e->page_attempts = 0;
                if (page.has_more && streq(page.last_id, e->cursor)) {
                        /* A cursor that does not move would be followed forever. */
                        log_error("Listing phones: the API repeats the cursor %s; stopping the listing.", e->cursor);
                        listing_done(e, r, "the API's list cursor does not move");
                } else if (page.has_more) {
                        memcpy(e->cursor, page.last_id, sizeof e->cursor);
                        list_next(e);
                } else
                        listing_done(e, r, NULL);
                phone_page_done(&page);
                goto out;
        }
        if (r->http_status == 401 || r->http_status == 403) {
                auth_pause(e, r);
                listing_abandon(e);
                goto out;
        }
        if (r->http_status == 200)
                snprintf(buf, sizeof buf, "malformed list page: %s", why ? why : r->json ? "bad JSON" : "not JSON");
        else
                describe(r, buf, sizeof buf);
        if (r->http_status == 429)
                diga_rate_backoff(e->diga);
        if ((transient(r) || r->http_status == 200) && ++e->page_attempts < e->max_attempts) {
                uint64_t delay = (uint64_t) backoff_usec(e, e->page_attempts, r->retry_after);
                log_warning("Listing phones: %s %s failed (%s); again in %.1f s.", r->method, r->path, buf, (double) delay / 1e6);
                sd_event_source_set_time(e->list_retry, mono_now(e) + delay);
                sd_event_source_set_enabled(e->list_retry, SD_EVENT_ONESHOT);
                goto out;
        }
        log_error("Listing phones failed: %s %s: %s.", r->method, r->path, buf);
        listing_done(e, r, buf);
out:
        pass_maybe_end(e);
}

static void list_next(Engine *e) {
        int r;

        if (e->stopping || e->paused) {
                listing_abandon(e);
                return;
        }
        r = diga_call(e->diga, CALL_LIST, e->cursor[0] ? e->cursor : NULL, true, NULL, on_page, e);
        if (r < 0) {
                log_error_errno(r, "Cannot list phones: %m");
                listing_done(e, &(CallResult) { .kind = CALL_LIST, .not_sent = true, .retry_after = -1 },
                             "cannot list phones");
        }
}

static int on_list_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        if (e->paused || e->stopping) {
                listing_abandon(e);
                pass_maybe_end(e);
        } else
                list_next(e);
        return 0;
}

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
                .e = e, .pk = p->pk, .state = p->state, .attempts = p->attempts,
                .key = strdup(p->key),
                .id = p->id ? strdup(p->id) : NULL,
                .number = p->number ? strdup(p->number) : NULL,
                .provider = p->provider ? strdup(p->provider) : NULL,
        };
        if (!j->key || (p->id && !j->id) || (p->number && !j->number) || (p->provider && !j->provider)) {
                job_free(j);
                return -ENOMEM;
        }
        e->n_jobs++;
        return 0;
}

static void pass_free(Engine *e) {
        for (size_t i = 0; i < e->n_jobs; i++)
                job_free(&e->jobs[i]);
        free(e->jobs);
        free(e->by_id);
        free(e->by_number);
        e->jobs = NULL;
        e->by_id = e->by_number = NULL;
        e->n_jobs = e->n_open = e->n_by_id = e->n_by_number = 0;
}

/* Fewer calls wins: a GET per due phone, or the pages of the whole account
 * (whose size the last listing left in the ledger). */
static bool want_listing(Engine *e) {
        _cleanup_free_ char *v = NULL;
        size_t to_observe = 0, pages;

        if (e->n_by_number > 0)
                return true;
        for (size_t i = 0; i < e->n_jobs; i++)
                to_observe += e->jobs[i].state != STATE_IN_FLIGHT;
        if (ledger_meta_get(e->ledger, "account_size", &v) < 0)
                return to_observe > 10;
        pages = (size_t) strtoull(v, NULL, 10) / API_PAGE_LIMIT + 1;
        return to_observe > pages;
}

static void arm_wake(Engine *e) {
        int64_t next;

        if (ledger_next_due(e->ledger, now_usec(), &next) < 0) {
                sd_event_source_set_enabled(e->wake, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_time(e->wake, (uint64_t) (next > 0 ? next : 1));
        sd_event_source_set_enabled(e->wake, SD_EVENT_ONESHOT);
}

static void pass_start(Engine *e) {
        bool resync = e->want_resync;
        int r;

        e->want_pass = e->want_resync = false;
        e->stats = (PassStats) { .started = mono_now(e) };
        r = ledger_due(e->ledger, now_usec(), resync, add_job, e);
        if (r < 0) {
                log_error_errno(r, "Cannot read the due phones from the ledger: %m (%s)", ledger_errmsg(e->ledger));
                pass_free(e);
                return;
        }
        if (e->n_jobs == 0) {
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
                        job_done(&e->jobs[i]);
                pass_maybe_end(e);
                return;
        }
        for (size_t i = 0; i < e->n_jobs; i++) {
                Job *j = &e->jobs[i];
                if (j->state == STATE_IN_FLIGHT)
                        continue;
                if (j->id)
                        e->by_id[e->n_by_id++] = j;
                else
                        e->by_number[e->n_by_number++] = j;
        }
        qsort(e->by_id, e->n_by_id, sizeof(Job *), cmp_job_id);
        qsort(e->by_number, e->n_by_number, sizeof(Job *), cmp_job_number);
        log_info("Pass: %zu phones to look at%s.", e->n_jobs, resync ? " (resync)" : "");

        /* A DELETE whose answer was lost is looked at first, always by id. */
        for (size_t i = 0; i < e->n_jobs; i++)
                if (e->jobs[i].state == STATE_IN_FLIGHT)
                        observe(&e->jobs[i], true);
        if (want_listing(e)) {
                e->listing = true;
                e->listed = 0;
                e->page_attempts = 0;
                e->cursor[0] = 0;
                list_next(e);
        } else
                for (size_t i = 0; i < e->n_jobs; i++)
                        if (e->jobs[i].state != STATE_IN_FLIGHT)
                                observe(&e->jobs[i], false);
        pass_maybe_end(e);
}

static void pass_maybe_end(Engine *e) {
        uint64_t dt;

        if (!e->running || e->n_open > 0 || e->listing || diga_in_flight(e->diga) > 0 || diga_queued(e->diga) > 0)
                return;
        dt = mono_now(e) - e->stats.started;
        log_event(LOG_INFO, MESSAGE_PASS_SUMMARY, NULL,
                  "Pass done in %.1f s: %u calls; %u released, %u scheduled, %u deferred, %u retrying, "
                  "%u failed, %u unresolved.", (double) dt / 1e6, e->stats.calls,
                  e->stats.outcomes[STATE_RELEASED], e->stats.outcomes[STATE_SCHEDULED],
                  e->stats.outcomes[STATE_DEFERRED], e->stats.outcomes[STATE_RETRYING],
                  e->stats.outcomes[STATE_FAILED], e->stats.outcomes[STATE_UNRESOLVED]);
        e->running = false;
        pass_free(e);
        arm_wake(e);
        if (e->want_pass && !e->stopping && !e->paused) {
                pass_start(e);
                if (e->running)
                        return;
        }
        if (e->idle)
                e->idle(e, e->idle_userdata);
}

void engine_request_pass(Engine *e, bool resync) {
        e->want_pass = true;
        e->want_resync = e->want_resync || resync;
        if (e->running || e->stopping || e->paused)
                return;
        pass_start(e);
        if (!e->running && e->idle)
                e->idle(e, e->idle_userdata);
}

static int on_wake(sd_event_source *s, uint64_t usec, void *userdata) {
        engine_request_pass(userdata, false);
        return 0;
}

static int on_resync(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        sd_event_source_set_time(s, usec + (uint64_t) (e->resync_interval * 1e6));
        engine_request_pass(e, true);
        return 0;
}

static int on_unpause(sd_event_source *s, uint64_t usec, void *userdata) {
        Engine *e = userdata;

        resume(e);
        engine_request_pass(e, false);
        return 0;
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
                seed48(seed);
        r = api_new(&e->api);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->wake, CLOCK_REALTIME, UINT64_MAX, 1000, on_wake, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->list_retry, CLOCK_MONOTONIC, UINT64_MAX, 1000, on_list_retry, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->unpause, CLOCK_MONOTONIC, UINT64_MAX, 1000000, on_unpause, e);
        if (r >= 0)
                r = sd_event_add_time(ev, &e->resync, CLOCK_MONOTONIC, UINT64_MAX, 1000000, on_resync, e);
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
        if (e->diga)
                diga_drop_queued(e->diga);
        diga_free(e->diga);
        pass_free(e);
        api_free(e->api);
        sd_event_source_disable_unref(e->wake);
        sd_event_source_disable_unref(e->list_retry);
        sd_event_source_disable_unref(e->unpause);
        sd_event_source_disable_unref(e->resync);
        sd_event_unref(e->event);
        free(e->pause_reason);
        free(e);
        return NULL;
}

int engine_set_config(Engine *e, const Config *c, const char *token) {
        uint64_t now = mono_now(e);
        int r;

        e->max_attempts = c->max_attempts;
        e->base_delay = c->base_delay;
        e->max_delay = c->max_delay;
        e->dry_run = c->dry_run;
        e->resync_interval = c->resync_interval;
        if (e->diga)
                r = diga_set_config(e->diga, c, token);
        else
                r = diga_new(e->event, c, token, &e->diga);
        if (r < 0)
                return r;
        sd_event_source_set_time(e->resync, now + (uint64_t) (c->resync_interval * 1e6));
        sd_event_source_set_enabled(e->resync, SD_EVENT_ON);
        /* A new config may carry a new key: try again at once. */
        resume(e);
        return 0;
}

bool engine_stop(Engine *e) {
        e->stopping = true;
        sd_event_source_set_enabled(e->wake, SD_EVENT_OFF);
        sd_event_source_set_enabled(e->resync, SD_EVENT_OFF);
        diga_drop_queued(e->diga);
        /* A listing waiting on its retry timer has no call out to end it. */
        if (e->listing && sd_event_source_get_enabled(e->list_retry, NULL) > 0)
                listing_abandon(e);
        sd_event_source_set_enabled(e->list_retry, SD_EVENT_OFF);
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

const char *engine_paused(Engine *e) {
        return e->paused ? (e->pause_reason ? e->pause_reason : "paused") : NULL;
}

bool engine_settled(Engine *e) {
        uint64_t n;

        if (e->running)
                return false;
        /* Retries waiting for their time are not settled; not_before waits
         * are, and so is everything a dry run has looked at. */
        return ledger_count_unsettled(e->ledger, now_usec(), !e->dry_run, &n) >= 0 && n == 0;
}

int engine_status(Engine *e, char *buf, size_t size) {
        uint64_t c[_STATE_MAX];
        int r = ledger_counts(e->ledger, c);

        if (r < 0)
                return r;
        snprintf(buf, size, "%s%s%s%" PRIu64 " pending, %" PRIu64 " in flight, %" PRIu64 " retrying, %" PRIu64
                 " scheduled, %" PRIu64 " released, %" PRIu64 " failed, %" PRIu64 " deferred, %" PRIu64 " unresolved",
                 e->paused ? "PAUSED (" : "", e->paused ? strna(e->pause_reason) : "", e->paused ? "): " : "",
                 c[STATE_PENDING], c[STATE_IN_FLIGHT], c[STATE_RETRYING], c[STATE_SCHEDULED],
                 c[STATE_RELEASED], c[STATE_FAILED], c[STATE_DEFERRED], c[STATE_UNRESOLVED]);
        return 0;
}
