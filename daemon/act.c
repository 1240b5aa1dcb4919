/* SPDX-License-Identifier: MIT */
/* The acts of a pass and their outcomes: a look (GET) or a DELETE goes out
 * through diga.c, its answer becomes an Outcome by reconcile.c's decision,
 * and the outcome is committed to the ledger before anything follows from
 * it.  A DELETE leaves only after its in_flight commit, which holds only if
 * the row still has the declaration it was decided on and is due by both
 * clocks at that moment. */

#include <stdlib.h>

#include "engine-internal.h"
#include "log.h"
#include "macro.h"
#include "messages.h"

static const char *const message_ids[_STATE_MAX] = {
        [STATE_DEFERRED] = MESSAGE_DEFERRED,   [STATE_RETRYING] = MESSAGE_RETRYING,
        [STATE_SCHEDULED] = MESSAGE_SCHEDULED, [STATE_RELEASED] = MESSAGE_RELEASED,
        [STATE_FAILED] = MESSAGE_FAILED,       [STATE_CANCELLED] = MESSAGE_CANCELLED,
        [STATE_UNRESOLVED] = MESSAGE_UNRESOLVED, [STATE_IN_USE] = MESSAGE_IN_USE,
};


static const char *label(const Job *j, char buf[static 256]) {
        const char *n = j->number ? j->number : j->api_number ? j->api_number : j->key;

        /* The name a person knows it by, beside the number (cleaned by api.c: one line). */
        if (!j->nickname)
                return n;
        (void) snprintf(buf, 256, "%.160s (%s)", n, j->nickname);
        return buf;
}

static void log_outcome(Job *j, PhoneState from, unsigned attempts_before, const Outcome *o, const CallResult *call) {
        bool changed = o->to != from;
        char name[256];
        LogFields f = {
                .phone_id = j->id, .phone_number = j->number ? j->number : j->api_number,
                .outcome = o->dry_run ? "dry_run" : state_to_string(o->to),
                .nickname = j->nickname, .inbound_agent = j->inbound_agent, .outbound_agent = j->outbound_agent,
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
                log_event(o->level, message_ids[o->to], &f, "%s %s: %s", label(j, name), state_to_string(o->to),
                          o->detail);
        else
                log_internal(o->level, 0, "%s: %s", label(j, name), o->detail);
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
                .scheduled_release_at = o->scheduled, .nickname = o->nickname,
                .inbound_agent = o->inbound_agent, .outbound_agent = o->outbound_agent,
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
                pause_ledger(e, r);
                return r;
        }
        if (r < 0) {
                log_error_errno(r, "Cannot record %s -> %s for %s in the ledger: %m (%s)",
                                state_to_string(j->state), state_to_string(o->to), j->key, ledger_errmsg(e->ledger));
                pause_ledger(e, r);
                return r;
        }
        return 0;
}

/* The agents this pass's look saw, none included: the in_flight commit
 * checks them again (reconcile_send()). */
static int act_seen_agents(Job *j, const Outcome *o) {
        if (!o->seen)
                return 0;
        j->inbound_agent = mfree(j->inbound_agent);
        j->outbound_agent = mfree(j->outbound_agent);
        if (engine_set_str(&j->inbound_agent, o->inbound_agent) < 0 ||
            engine_set_str(&j->outbound_agent, o->outbound_agent) < 0)
                return -ENOMEM;
        return 0;
}

/* Applies one outcome: the ledger first, then the journal, the job, and
 * what comes next. */
void act_apply(Job *j, const Outcome *o, const CallResult *call, bool check_version) {
        Engine *e = j->e;
        PhoneState from = j->state;
        unsigned attempts_before = j->attempts;
        int r;

        diga_heed(e->diga, o->rate_backoff, o->hold);
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
        if (engine_set_str(&j->id, j->id ? NULL : o->id) < 0 || engine_set_str(&j->api_number, o->api_number) < 0 ||
            engine_set_str(&j->provider, o->provider) < 0 || engine_set_str(&j->last_error, o->error[0] ? o->error : NULL) < 0 ||
            engine_set_str(&j->nickname, o->nickname) < 0 || act_seen_agents(j, o) < 0) {
                log_oom();
                job_finish(j);
                return;
        }
        log_outcome(j, from, attempts_before, o, call);
        if (o->to != from)
                e->stats.outcomes[o->to]++;
        if (o->auth_pause && call)
                pause_auth(e, call->http_status, call->method, call->path, NULL);

        switch (o->next) {
        case NEXT_GET:
                j->look_after = o->look_after;
                if (o->rejected) {
                        free(j->rejected);
                        j->rejected = strdup(o->error);
                }
                act_observe(j, true);
                return;
        case NEXT_DELETE:
                act_delete(j);
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
        int k;

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
                else if ((k = api_parse_phone(e->api, r->body, r->body_len, &p, &why)) < 0)
                        look.reply.error = why ? why : strerror(-k);
                else if (j->id && !streq(p.id, j->id))
                        look.reply.error = "the API answered with another phone";
                else {
                        look.reply.api = true;
                        look.seen = &p;
                }
                if (!look.seen)
                        log_warning("GET %s: unusable answer: %s", r->path, look.reply.error);
        }
        row = job_row(j);
        w = engine_world(e);
        reconcile_look(&row, &look, &w, &o);
        act_apply(j, &o, r, true);
out:
        engine_kick(e);
}

void act_observe(Job *j, bool urgent) {
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
        Row row = job_row(j);
        World w = engine_world(e);
        Outcome o;
        int r;

        if (e->stopping || e->paused || e->held || j->stale)
                return -ECANCELED;
        if (!reconcile_send(&row, &w, &o)) {
                log_info("%s: not sent: %s.", j->key, o.detail);
                return -EAGAIN;
        }
        r = ledger_update(e->ledger, &(LedgerUpdate) {
                .pk = j->pk, .from = j->state, .to = STATE_IN_FLIGHT, .version = j->version, .due_by = w.due_now,
                .sent_at = o.sent_at, .next_at = o.next_at, .attempts = (int) j->attempts,
                .id = j->id, .provider = j->provider, .api_number = j->api_number, .nickname = j->nickname,
                .detail = o.detail,
        });
        if (r == -ESTALE) {
                log_info("%s changed in the ledger since its DELETE was decided (a reload?): not sent.", j->key);
                j->stale = true;
                return r;
        }
        if (r < 0) {
                log_error_errno(r, "Cannot record the DELETE of %s: %m (%s); not sent.", j->key,
                                ledger_errmsg(e->ledger));
                pause_ledger(e, r);
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
        row = job_row(j);
        w = engine_world(e);
        reconcile_delete(&row, &reply, &w, &o);
        act_apply(j, &o, r, false);
out:
        engine_kick(e);
}

void act_delete(Job *j) {
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

