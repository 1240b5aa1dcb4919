/* SPDX-License-Identifier: MIT */
/* The decisions, one function per kind of event, and nothing but decisions:
 * see reconcile.h.  The rules, in short:
 *
 * - Released stays released; scheduled only becomes released.  What the API
 *   shows later never rewrites the record of an ordered release.
 * - An answer that is not clearly the API's (no answer, a 5xx, a 404 from
 *   a proxy) leaves a DELETE's effect unknown: the phone is looked at no
 *   sooner than api.settle_time after the DELETE left, and only a look from
 *   then on may find it still releasable.
 * - A 2xx, whatever its body, is the API saying it acted: the phone is
 *   looked at at once and what it shows is recorded; one it still shows
 *   assigned (an API at work in the background) is looked at again at the
 *   settle time, never sent again before.
 * - A look or an answer that cannot be trusted is never a verdict: it is
 *   tried again, and counted as an attempt only for phones waiting to act.
 * - A phone is released only when its row, its declaration and both clocks
 *   agree at the moment the DELETE leaves (reconcile_send). */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

#include "reconcile.h"

static const char *const status_names[_REMOTE_STATUS_MAX] = {
        [REMOTE_RESERVED] = "reserved",
        [REMOTE_PENDING_VERIFICATION] = "pending_verification",
        [REMOTE_ASSIGNED] = "assigned",
        [REMOTE_RELEASED] = "released",
        [REMOTE_FINISHED] = "finished",
};

RemoteStatus remote_status_from_string(const char *s) {
        for (size_t i = 0; s && i < ELEMENTSOF(status_names); i++)
                if (status_names[i] && streq(s, status_names[i]))
                        return (RemoteStatus) i;
        return REMOTE_UNKNOWN;
}

bool remote_is_live(const RemotePhone *p) {
        return p->status != REMOTE_RELEASED && p->status != REMOTE_FINISHED;
}

void remote_phone_done(RemotePhone *p) {
        free(p->number);
        free(p->status_name);
        free(p->provider);
        free(p->scheduled_release_at);
        free(p->inbound_agent);
        free(p->outbound_agent);
        free(p->nickname);
        *p = (RemotePhone) {};
}

static int dup_or_null(const char *s, char **ret) {
        *ret = NULL;
        if (!s)
                return 0;
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

int remote_phone_copy(RemotePhone *to, const RemotePhone *p) {
        RemotePhone c = { .status = p->status };

        memcpy(c.id, p->id, sizeof c.id);
        if (dup_or_null(p->number, &c.number) < 0 || dup_or_null(p->status_name, &c.status_name) < 0 ||
            dup_or_null(p->provider, &c.provider) < 0 ||
            dup_or_null(p->scheduled_release_at, &c.scheduled_release_at) < 0 ||
            dup_or_null(p->inbound_agent, &c.inbound_agent) < 0 || dup_or_null(p->outbound_agent, &c.outbound_agent) < 0 ||
            dup_or_null(p->nickname, &c.nickname) < 0) {
                remote_phone_done(&c);
                return -ENOMEM;
        }
        *to = c;
        return 0;
}

const char *call_kind_to_string(CallKind k) {
        return k == CALL_DELETE ? "DELETE" : "GET";
}

static void say(char buf[static OUTCOME_TEXT], const char *fmt, ...) _printf_(2, 3);
static void say(char buf[static OUTCOME_TEXT], const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(buf, OUTCOME_TEXT, fmt, ap);
        va_end(ap);
}

/* "HTTP 409: PHONE_ALREADY_RELEASED: ...", "HTTP 404 (not the API's answer)",
 * or the transport's own words. */
static const char *describe(const Reply *r, char buf[static OUTCOME_TEXT]) {
        if (r->status == 0)
                say(buf, "%s", r->error ? r->error : "no answer");
        else if (r->message)
                say(buf, "HTTP %d: %s", r->status, r->message);
        else if (r->error)
                say(buf, "HTTP %d (%s)", r->status, r->error);
        else if (!r->api && r->status >= 300)
                say(buf, "HTTP %d (not the API's answer)", r->status);
        else
                say(buf, "HTTP %d", r->status);
        return buf;
}

/* Worth asking again: nothing was decided on the other side, or we cannot
 * know that it was. */
static bool transient(const Reply *r) {
        return r->status == 0 || r->status == 408 || r->status == 429 || r->status >= 500;
}

static bool auth_refused(const Reply *r) {
        return r->status == 401 || r->status == 403;
}

usec_t reconcile_backoff(const World *w, unsigned attempt, int64_t retry_after) {
        double cap = fmin((double) w->max_delay, (double) w->base_delay * ldexp(1.0, (int) (attempt < 60 ? attempt : 60)));
        double delay = cap * fmin(fmax(w->jitter, 0.0), 1.0);

        if (retry_after > 0)
                delay = fmax(delay, (double) (retry_after < RETRY_AFTER_MAX ? retry_after : RETRY_AFTER_MAX) *
                                    (double) USEC_PER_SEC);
        return (usec_t) delay;
}

int64_t reconcile_due_now(int64_t local, int64_t api_offset, bool offset_known) {
        if (!offset_known || (api_offset <= (int64_t) CLOCK_SKEW_MAX && api_offset >= -(int64_t) CLOCK_SKEW_MAX))
                return local;
        return api_offset < 0 ? local + api_offset : local;
}

/* Not yet: not_before by both clocks (the date the operator wrote), or the
 * hold by the boot-time clock (a duration, which no clock step shortens). */
static const char *not_due(const Row *row, const World *w) {
        if (row->hold_boot_until > w->boot_now)
                return "still within its safety.hold";
        if (row->not_before > 0 && row->not_before * (int64_t) USEC_PER_SEC > w->due_now)
                return "not due yet by the API's clock (not_before)";
        return NULL;
}

static void start(const Row *row, const World *w, Outcome *o) {
        *o = (Outcome) { .to = row->state, .attempts = row->attempts, .next_at = -1 };
}

static void effects_of(const Reply *r, Outcome *o) {
        if (r->status == 429)
                o->rate_backoff = true;
        if (r->retry_after > 0)
                o->hold = r->retry_after < RETRY_AFTER_MAX ? r->retry_after : RETRY_AFTER_MAX;
}

/* A phone whose DELETE may have gone out and whose look came too early, or
 * failed: it is not failed, only looked at again. */
static bool waits_for_a_look(const Row *row) {
        return row->sent_at != 0;
}

/* The 2xx this pass's DELETE was answered with, 0 for any other answer:
 * the API took the release on, and the look is to see what it did. */
static int accepted_with(const Row *row) {
        return row->answered >= 200 && row->answered <= 299 ? row->answered : 0;
}

static void fields_of(const RemotePhone *p, const Row *row, Outcome *o) {
        if (!row->id)
                o->id = p->id;
        o->api_number = p->number;
        o->provider = p->provider;
        o->seen = true;
        o->nickname = p->nickname;
        o->inbound_agent = p->inbound_agent;
        o->outbound_agent = p->outbound_agent;
}

static bool streq_null(const char *a, const char *b) {
        return a == b || (a && b && streq(a, b));
}

/* "inbound agent ID, outbound agent ID": for the journal and `why`. */
static const char *agents(const char *in, const char *out, char buf[static OUTCOME_TEXT]) {
        say(buf, "%s%s%s%s%s", in ? "inbound agent " : "", in ? in : "", in && out ? ", " : "",
            out ? "outbound agent " : "", out ? out : "");
        return buf;
}

/* ---- looks ---- */

/* A look that told nothing about the phone. */
static void look_failed(const Row *row, const Look *look, const World *w, Outcome *o) {
        const Reply *r = &look->reply;
        char why[OUTCOME_TEXT];
        usec_t delay;

        (void) describe(r, why);
        effects_of(r, o);
        switch (row->state) {
        case STATE_PENDING:
        case STATE_RETRYING:
        case STATE_IN_FLIGHT:
                break;
        case STATE_CANCELLED:
                /* Its DELETE may have gone out: keep looking, the looks counted. */
                o->write = true;
                o->attempts = row->attempts + 1;
                o->next_at = w->now + (int64_t) reconcile_backoff(w, o->attempts, r->retry_after);
                o->level = LOG_WARNING;
                say(o->error, "%s", why);
                say(o->detail, "could not look at %s (%s); its DELETE may have gone out before the cancellation: "
                    "looking again in %.1f s", row->key, why, usec_to_sec(o->next_at - w->now));
                return;
        default:
                /* Only being confirmed: a failed look changes nothing. */
                o->level = LOG_WARNING;
                say(o->detail, "could not confirm %s (%s); will look again at the next resync", row->key, why);
                return;
        }

        o->write = true;
        o->attempts = row->attempts + 1;
        say(o->error, "%s", why);
        /* An answer the API gave on purpose (400, 422...) will not change by
         * asking again: an operator must see it.  Not for a phone whose
         * DELETE may have gone out: only a look can end that. */
        if (!transient(r) && r->api && !(r->status == 200) && !waits_for_a_look(row)) {
                o->to = STATE_FAILED;
                o->next_at = 0;
                o->level = LOG_ERR;
                say(o->detail, "GET answered %s", why);
                return;
        }
        if (waits_for_a_look(row) && o->attempts >= w->max_attempts) {
                /* Never failed blind: the DELETE may have released it. */
                o->to = STATE_RETRYING;
                o->next_at = w->now + (int64_t) w->max_delay;
                o->level = LOG_ERR;
                say(o->detail, "cannot tell what its DELETE did: %u looks failed (%s); looking again in %.0f s",
                    o->attempts, why, usec_to_sec((int64_t) w->max_delay));
                return;
        }
        if (o->attempts >= w->max_attempts) {
                o->to = STATE_FAILED;
                o->next_at = 0;
                o->level = LOG_ERR;
                say(o->detail, "giving up after %u attempts: %s", o->attempts, why);
                return;
        }
        delay = reconcile_backoff(w, o->attempts, r->retry_after);
        o->to = STATE_RETRYING;
        o->next_at = w->now + (int64_t) delay;
        o->level = LOG_WARNING;
        say(o->detail, "GET /v1/phone/%s failed (%s); next attempt in %.1f s", row->id ? row->id : "", why,
            usec_to_sec((int64_t) delay));
}

/* No such phone, by the API's own word. */
static void look_gone(const Row *row, const Look *look, const World *w, Outcome *o) {
        o->write = true;
        if (row->state == STATE_SCHEDULED || waits_for_a_look(row)) {
                o->to = STATE_RELEASED;
                o->next_at = 0;
                o->level = LOG_NOTICE;
                say(o->detail, "gone after the DELETE (HTTP 404)");
                return;
        }
        if (row->state == STATE_UNRESOLVED) {
                o->write = false;
                return;
        }
        o->to = STATE_UNRESOLVED;
        o->next_at = 0;
        o->level = LOG_WARNING;
        say(o->error, "not in the account");
        say(o->detail, "id %s is not in the account (HTTP 404)", row->id ? row->id : "?");
}

static void look_not_listed(const Row *row, const Look *look, const World *w, Outcome *o) {
        if (row->state == STATE_UNRESOLVED)
                return;
        o->write = true;
        o->to = STATE_UNRESOLVED;
        o->next_at = 0;
        o->level = LOG_WARNING;
        say(o->error, "not in the account");
        if (look->unreadable > 0)
                say(o->detail, "number is not in the account (%zu %s listed; %zu more could not be read)",
                    look->listed, plural(look->listed, "phone", "phones"), look->unreadable);
        else
                say(o->detail, "number is not in the account (%zu %s listed)", look->listed,
                    plural(look->listed, "phone", "phones"));
}

/* A row whose release was ordered: only its completion is news. */
static void look_scheduled(const Row *row, const RemotePhone *p, const World *w, Outcome *o) {
        if (!remote_is_live(p)) {
                o->write = true;
                o->to = STATE_RELEASED;
                o->level = LOG_NOTICE;
                say(o->detail, "%s at the API: the ordered release took effect", p->status_name);
                return;
        }
        if (p->status == REMOTE_ASSIGNED && p->scheduled_release_at)
                return;
        o->write = true;
        o->level = LOG_WARNING;
        say(o->error, "the API no longer shows the release ordered");
        say(o->detail, "the API shows it %s%s%s; a release was ordered (HTTP 204 on record), so the record "
            "stays scheduled: look at the phone in the Diga console", p->status_name,
            p->scheduled_release_at ? " with a release at " : " with no release ordered",
            p->scheduled_release_at ? p->scheduled_release_at : "");
}

/* Cancelled after its DELETE may have gone out: record what it did, never act. */
static void look_cancelled(const Row *row, const Look *look, const World *w, Outcome *o) {
        const RemotePhone *p = look->seen;

        if (!waits_for_a_look(row))
                return;
        o->write = true;
        fields_of(p, row, o);
        if (!remote_is_live(p)) {
                o->to = STATE_RELEASED;
                o->level = LOG_NOTICE;
                say(o->detail, "%s at the API after all (cancelled too late)", p->status_name);
        } else if (p->status == REMOTE_ASSIGNED && p->scheduled_release_at) {
                o->to = STATE_SCHEDULED;
                o->scheduled = p->scheduled_release_at;
                o->level = LOG_NOTICE;
                say(o->detail, "release ordered after all (cancelled too late), effective %s", p->scheduled_release_at);
        } else if (p->status == REMOTE_UNKNOWN) {
                o->next_at = w->now + (int64_t) w->max_delay;
                o->level = LOG_WARNING;
                say(o->detail, "status \"%s\" is unknown to this retired; looking again later", p->status_name);
        } else if (look->reply.asked_at < row->look_after) {
                o->next_at = row->look_after;
                say(o->detail, "looked at before its DELETE could settle; looking again at the settle time");
        } else {
                o->clear_sent = true;
                o->level = LOG_INFO;
                say(o->detail, "%s: the DELETE sent before the cancellation released nothing", p->status_name);
        }
}

/* No phone in the answer: refused, gone by the API's word, or no answer. */
static void look_unseen(const Row *row, const Look *look, const World *w, Outcome *o) {
        const Reply *r = &look->reply;

        if (auth_refused(r)) {
                o->auth_pause = true;
                o->write = true;
                say(o->detail, "GET refused (HTTP %d)", r->status);
                return;
        }
        if (r->status == 404 && r->api) {
                look_gone(row, look, w, o);
                return;
        }
        look_failed(row, look, w, o);
}

/* The steps below run in turn on a phone the look saw, for a row that is
 * pending, retrying, in_flight, deferred or unresolved; each returns true
 * once it has decided, and the order is the rule: facts first. */

/* A release the API shows is recorded, whoever did it. */
static bool look_released_or_ordered(const Row *row, const Look *look, const World *w, Outcome *o) {
        const RemotePhone *p = look->seen;

        if (!remote_is_live(p)) {
                o->write = true;
                o->to = STATE_RELEASED;
                o->next_at = 0;
                o->level = LOG_NOTICE;
                if (waits_for_a_look(row))
                        say(o->detail, "%s at the API: the DELETE took effect", p->status_name);
                else
                        say(o->detail, "%s at the API", p->status_name);
                return true;
        }
        if (p->status == REMOTE_ASSIGNED && p->scheduled_release_at) {
                o->write = true;
                o->to = STATE_SCHEDULED;
                o->scheduled = p->scheduled_release_at;
                o->next_at = 0;
                o->level = LOG_NOTICE;
                say(o->detail, "release ordered, effective %s", p->scheduled_release_at);
                return true;
        }
        return false;
}

/* Still live.  Whether a DELETE of ours did nothing is known only once it
 * had time to: before that, a look proves nothing. */
static bool look_too_early(const Row *row, const Look *look, const World *w, Outcome *o) {
        if (!waits_for_a_look(row) || look->reply.asked_at >= row->look_after)
                return false;
        o->write = true;
        o->next_at = row->look_after;
        if (accepted_with(row)) {
                /* Not yet done, or done in the background: the settle time tells. */
                o->level = LOG_NOTICE;
                say(o->error, "HTTP %d (accepted, but still %s)", accepted_with(row), look->seen->status_name);
                say(o->detail, "HTTP %d: accepted, looking again at the settle time (in %.1f s): the API still "
                    "shows it %s, and it is sent again only if it is still assigned then", accepted_with(row),
                    usec_to_sec(o->next_at - w->now), look->seen->status_name);
                return true;
        }
        o->level = LOG_INFO;
        say(o->detail, "still %s, but its DELETE may not have settled yet: looking again at the settle time",
            look->seen->status_name);
        return true;
}

/* More than one live phone carries the number: nothing is released. */
static bool look_ambiguous(const Row *row, const Look *look, const World *w, Outcome *o) {
        if (look->carriers > 1) {
                /* No phone was meant more than another: none of their fields is the row's. */
                o->id = o->api_number = o->provider = NULL;
                o->write = true;
                o->to = STATE_FAILED;
                o->next_at = 0;
                o->level = LOG_ERR;
                say(o->error, "ambiguous: %u live phones carry this number", look->carriers);
                say(o->detail, "%u live phones carry this number (%s): nothing released; declare the one meant by id",
                    look->carriers, look->carrier_ids ? look->carrier_ids : "");
                return true;
        }
        return false;
}

/* The phone with the declared id has another number: not the phone meant. */
static bool look_number_disagrees(const Row *row, const RemotePhone *p, const World *w, Outcome *o) {
        if (row->number && p->number && !streq(row->number, p->number)) {
                o->write = true;
                o->to = STATE_FAILED;
                o->next_at = 0;
                o->level = LOG_ERR;
                say(o->error, "declared id and number disagree");
                say(o->detail, "declared id %s, but the API has it as %s: nothing released", p->id, p->number);
                return true;
        }
        return false;
}

/* Live, but in no status a DELETE can release: deferred to the next resync. */
static bool look_not_releasable(const Row *row, const Look *look, const World *w, Outcome *o) {
        const RemotePhone *p = look->seen;

        switch (p->status) {
        case REMOTE_RESERVED:
        case REMOTE_PENDING_VERIFICATION:
                if (row->state == STATE_DEFERRED && !o->clear_sent)
                        return true;
                o->write = true;
                o->to = STATE_DEFERRED;
                o->next_at = 0;
                o->level = LOG_NOTICE;
                say(o->detail, "%s: cannot be released yet; will look again at the next resync", p->status_name);
                return true;
        case REMOTE_UNKNOWN:
                o->clear_sent = false;   /* an unknown status proves nothing */
                if (row->state == STATE_DEFERRED)
                        return true;
                o->write = true;
                o->to = STATE_DEFERRED;
                o->next_at = 0;
                o->level = LOG_NOTICE;
                say(o->error, "unknown status");
                say(o->detail, "status \"%s\" is unknown to this retired: not released", p->status_name);
                return true;
        default:
                return false;
        }
}

/* An agent answers or places calls on it: a live line, not released
 * unless its declaration or safety.in_use says "release" (issue 31).
 * Recorded in_use whether or not it is due yet: the operator sees it now.
 * A row in_use whose phone shows no agent any more is pending again, and
 * goes on under the ordinary rules (its hold is the declaration's). */
static bool look_in_use(const Row *row, const RemotePhone *p, const World *w, Outcome *o) {
        char who[OUTCOME_TEXT];

        if (!remote_in_use(p) || row->release_in_use) {
                if (row->state == STATE_IN_USE) {
                        o->write = true;
                        o->to = STATE_PENDING;
                        o->next_at = 0;
                        o->level = LOG_NOTICE;
                        say(o->detail, remote_in_use(p) ? "in use, and in_use = \"release\" now says it may go" :
                            "no agent on it any more: it goes under the ordinary rules");
                }
                return false;
        }
        (void) agents(p->inbound_agent, p->outbound_agent, who);
        o->next_at = 0;
        if (row->state == STATE_IN_USE && !o->clear_sent && streq_null(row->inbound_agent, p->inbound_agent) &&
            streq_null(row->outbound_agent, p->outbound_agent))
                return true;     /* still in use by the same agents: nothing new to say */
        o->write = true;
        o->to = STATE_IN_USE;
        o->level = row->state == STATE_IN_USE ? LOG_NOTICE : LOG_WARNING;
        say(o->error, "in use (%s)", who);
        say(o->detail, "in use (%s): not released while an agent is on it; move the agent to another number, or "
            "declare in_use = \"release\"; see retirectl show %s", who, row->key);
        return true;
}

/* Assigned, nothing ordered: failed, held, or on to its DELETE. */
static void look_assigned(const Row *row, const Look *look, const World *w, Outcome *o) {
        const RemotePhone *p = look->seen;
        const Reply *r = &look->reply;

        if (row->rejected) {
                o->write = true;
                o->to = STATE_FAILED;
                o->next_at = 0;
                o->level = LOG_ERR;
                say(o->error, "%s", row->rejected);
                say(o->detail, "%s; the phone is still assigned: needs an operator", row->rejected);
                return;
        }
        if (o->clear_sent && o->attempts >= w->max_attempts) {
                o->write = true;
                o->to = STATE_FAILED;
                o->next_at = 0;
                o->level = LOG_ERR;
                say(o->detail, "giving up after %u attempts%s%s; the phone is still assigned", o->attempts,
                    row->last_error ? ": " : "", row->last_error ? row->last_error : "");
                return;
        }
        if (not_due(row, w)) {
                /* Due by our clock, not by the API's or the boot's: wait for all. */
                o->write = o->write || r->kind == CALL_GET || o->clear_sent;
                if (o->to == row->state)
                        say(o->detail, "assigned; %s", not_due(row, w));
                return;
        }
        if (w->dry_run) {
                char who[OUTCOME_TEXT] = "";

                o->write = true;
                o->dry_run = true;
                /* What the real run would warn of, the dry run says: whose
                 * live line it would cut. */
                o->level = remote_in_use(p) ? LOG_WARNING : LOG_NOTICE;
                if (remote_in_use(p))
                        (void) agents(p->inbound_agent, p->outbound_agent, who);
                say(o->detail, "dry run: would release %s (%s, %s)%s%s%s", row->number ? row->number : p->number, p->id,
                    p->provider ? p->provider : "unknown provider", *who ? ", in use (" : "", who,
                    *who ? "), as in_use = \"release\" says" : "");
                return;
        }
        /* A GET is one of this phone's calls: on record.  (A list page is
         * not; the id and provider go in with the in_flight commit, which
         * also moves sent_at on: nothing to clear until then.) */
        o->write = o->write || r->kind == CALL_GET;
        o->clear_sent = false;
        o->next = NEXT_DELETE;
        if (remote_in_use(p)) {
                char who[OUTCOME_TEXT];

                o->level = LOG_WARNING;
                say(o->detail, "observed assigned and in use (%s): released, as in_use = \"release\" says",
                    agents(p->inbound_agent, p->outbound_agent, who));
        } else if (!o->write || o->to == row->state)
                say(o->detail, "observed assigned");
}

/* A phone the look saw, for a row still to be decided on. */
static void look_seen(const Row *row, const Look *look, const World *w, Outcome *o) {
        fields_of(look->seen, row, o);
        if (look_released_or_ordered(row, look, w, o))
                return;
        /* A DELETE accepted that the phone does not show (yet) counts as an
         * attempt: an API that accepts every DELETE and never acts ends
         * failed after retry.max_attempts, like one that errs. */
        if (accepted_with(row))
                o->attempts = row->attempts + 1;
        if (look_too_early(row, look, w, o))
                return;
        /* From here on the look settles what a DELETE of ours did, unless a
         * step below says it proves nothing. */
        o->clear_sent = waits_for_a_look(row);
        if (look_ambiguous(row, look, w, o) || look_number_disagrees(row, look->seen, w, o) ||
            look_not_releasable(row, look, w, o) || look_in_use(row, look->seen, w, o))
                return;
        look_assigned(row, look, w, o);
}

void reconcile_look(const Row *row, const Look *look, const World *w, Outcome *o) {
        start(row, w, o);
        if (row->state == STATE_RELEASED || row->state == STATE_FAILED)
                return;         /* past deciding: never looked at, never changed */

        if (look->not_listed)
                look_not_listed(row, look, w, o);
        else if (!look->seen)
                look_unseen(row, look, w, o);
        else if (row->state == STATE_SCHEDULED)
                look_scheduled(row, look->seen, w, o);
        else if (row->state == STATE_CANCELLED)
                look_cancelled(row, look, w, o);
        else
                look_seen(row, look, w, o);
}

/* ---- the DELETE ---- */

bool reconcile_send(const Row *row, const World *w, Outcome *o) {
        char who[OUTCOME_TEXT];

        start(row, w, o);
        if (not_due(row, w)) {
                say(o->detail, "%s", not_due(row, w));
                return false;
        }
        /* The look that decided it is checked again with the settings of
         * this moment: a reload may have said "refuse" since. */
        if ((row->inbound_agent || row->outbound_agent) && !row->release_in_use) {
                say(o->detail, "in use (%s)", agents(row->inbound_agent, row->outbound_agent, who));
                return false;
        }
        o->write = true;
        o->to = STATE_IN_FLIGHT;
        o->sent_at = w->now;
        /* Looked at no sooner than the settle time if its answer is lost. */
        o->next_at = w->now + (int64_t) w->settle;
        say(o->detail, "DELETE sent");
        return true;
}

/* What a DELETE's answer says.  The first row that matches decides, read
 * top to bottom as tests/reconcile/delete.txt reads; an answer no row names
 * leaves the DELETE's effect unknown.  Only the documented 204 of a provider
 * we know is recorded as it stands; any other 2xx (whatever its body, the
 * API's error JSON included: the status is the API's word, the body not
 * read) is a release the API took on, looked at at once.  A 404 that is not
 * the API's own is not taken on trust. */
typedef enum Said {
        SAID_UNKNOWN,                /* a look after the settle time (or the backoff) settles it */
        SAID_ORDERED,                /* netelip orders the release for the end of the billing period */
        SAID_RELEASED,               /* custom releases at once */
        SAID_ACCEPTED,               /* any other 2xx: the API acted; look at once at what it did */
        SAID_GONE,                   /* the phone is not there: released before, by us or anyone */
        SAID_AUTH,                   /* the key is refused: every call pauses */
        SAID_NOTHING_DONE,           /* the API's 408/429: it did nothing, try again after the backoff */
        SAID_REFUSED,                /* another 4xx of the API's: look before deciding */
} Said;

#define ANY -1
static const struct {
        int status_min, status_max;
        int api;                     /* the body is the API's own: 1, 0, or ANY */
        const char *provider;        /* NULL: any */
        Said said;
} delete_answers[] = {
        { 204, 204, ANY, "netelip", SAID_ORDERED },
        { 204, 204, ANY, "custom",  SAID_RELEASED },
        { 200, 299, ANY, NULL,      SAID_ACCEPTED },
        { 404, 404, 1,   NULL,      SAID_GONE },
        { 401, 401, ANY, NULL,      SAID_AUTH },
        { 403, 403, ANY, NULL,      SAID_AUTH },
        { 408, 408, 1,   NULL,      SAID_NOTHING_DONE },
        { 429, 429, 1,   NULL,      SAID_NOTHING_DONE },
        { 400, 499, 1,   NULL,      SAID_REFUSED },
};
#undef ANY

static Said said_of(const Row *row, const Reply *r) {
        for (const __typeof__(delete_answers[0]) *a = delete_answers; a < delete_answers + ELEMENTSOF(delete_answers); a++)
                if (r->status >= a->status_min && r->status <= a->status_max &&
                    (a->api < 0 || a->api == (int) r->api) &&
                    (!a->provider || (row->provider && streq(row->provider, a->provider))))
                        return a->said;
        return SAID_UNKNOWN;
}

/* Not done, or not known to be: a later attempt, or the look that must
 * come first when the DELETE may have worked all the same. */
static void delete_again(const Row *row, const Reply *r, Said said, const char *why, const World *w, Outcome *o) {
        effects_of(r, o);
        o->attempts = row->attempts + 1;
        o->to = STATE_RETRYING;
        o->level = LOG_WARNING;
        say(o->error, "%s", why);
        o->next_at = w->now + (int64_t) reconcile_backoff(w, o->attempts, r->retry_after);
        /* (The row keeps its sent_at all the same: a look, not this, settles it.) */
        if (said == SAID_UNKNOWN && !r->unsent && o->next_at < row->look_after)
                o->next_at = row->look_after;
        if (o->attempts >= w->max_attempts)
                say(o->detail, "DELETE /v1/phone/%s failed (%s); giving up after %u attempts once a look shows the "
                    "phone still assigned (in %.1f s)", row->id, why, o->attempts, usec_to_sec(o->next_at - w->now));
        else if (o->next_at == row->look_after)
                say(o->detail, "DELETE /v1/phone/%s failed (%s); it may have worked all the same: looking at the "
                    "phone in %.1f s, and sending again only if it is still assigned", row->id, why,
                    usec_to_sec(o->next_at - w->now));
        else
                say(o->detail, "DELETE /v1/phone/%s failed (%s); next attempt in %.1f s", row->id, why,
                    usec_to_sec(o->next_at - w->now));
}

void reconcile_delete(const Row *row, const Reply *r, const World *w, Outcome *o) {
        Said said = said_of(row, r);
        char why[OUTCOME_TEXT];

        start(row, w, o);
        o->write = true;
        (void) describe(r, why);

        switch (said) {
        case SAID_ORDERED:
                o->to = STATE_SCHEDULED;
                o->level = LOG_NOTICE;
                o->next_at = 0;
                say(o->detail, "release ordered (netelip: takes effect at the end of the billing period)");
                return;
        case SAID_RELEASED:
        case SAID_GONE:
                o->to = STATE_RELEASED;
                o->level = LOG_NOTICE;
                o->next_at = 0;
                say(o->detail, said == SAID_GONE ? "already gone (HTTP 404)" : "released");
                return;
        case SAID_ACCEPTED:
                /* What it did shows at once, unless it works in the background:
                 * then only a look from the settle time on may say it did
                 * nothing and send it again (look_too_early). */
                o->next = NEXT_GET;
                o->look_after = row->look_after;
                o->next_at = 0;
                o->level = LOG_INFO;
                say(o->detail, "DELETE answered %s (provider %s): accepted; looking at the phone now", why,
                    row->provider ? row->provider : "unknown");
                return;
        case SAID_AUTH:
                /* Not done, if the API said so; a look ends it once calls resume. */
                o->auth_pause = true;
                o->next_at = r->api ? w->now : row->look_after;
                say(o->detail, "DELETE refused (%s)", why);
                return;
        case SAID_REFUSED:
                /* Refused for a reason we do not know: look before deciding. */
                effects_of(r, o);
                o->attempts = row->attempts + 1;
                o->next = NEXT_GET;
                o->look_after = w->now;
                o->rejected = true;
                o->next_at = w->now;
                say(o->error, "DELETE answered %s", why);
                say(o->detail, "DELETE answered %s; looking at the phone", why);
                return;
        case SAID_NOTHING_DONE:
        case SAID_UNKNOWN:
                delete_again(row, r, said, why, w, o);
                return;
        }
}

/* ---- the listing ---- */

void reconcile_page(const Reply *r, unsigned attempts, const World *w, PageOutcome *o) {
        char why[OUTCOME_TEXT];

        *o = (PageOutcome) {};
        if (r->status == 200 && r->api) {
                o->verdict = PAGE_OK;
                return;
        }
        (void) describe(r, why);
        if (auth_refused(r)) {
                o->verdict = PAGE_AUTH;
                say(o->detail, "%s", why);
                return;
        }
        o->rate_backoff = r->status == 429;
        if (r->retry_after > 0)
                o->hold = r->retry_after < RETRY_AFTER_MAX ? r->retry_after : RETRY_AFTER_MAX;
        /* A malformed 200 is the API (or what stands in front of it) having
         * a bad moment, like a 5xx. */
        if ((transient(r) || r->status == 200 || !r->api) && attempts + 1 < w->max_attempts) {
                o->verdict = PAGE_RETRY;
                o->delay = reconcile_backoff(w, attempts + 1, r->retry_after);
                say(o->detail, "%s", why);
                return;
        }
        o->verdict = PAGE_GIVE_UP;
        say(o->detail, "%s", why);
}
