/* SPDX-License-Identifier: MIT */
/* Pauses of every call: an answer refusing the key (until a reload, or
 * api.auth_retry), a ledger that takes no write (LEDGER_RETRY_USEC).  An
 * operator's pause is another thing: engine_hold() keeps DELETEs back. */

#include "engine-internal.h"
#include "log.h"
#include "macro.h"
#include "messages.h"

#define LEDGER_RETRY_USEC USEC_PER_MINUTE

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
        engine_arm(e->unpause, engine_mono_now(e) + usec);
}

void pause_auth(Engine *e, int status, const char *method, const char *path, const char *msg) {
        char *reason = NULL;

        if (e->paused)
                return;
        (void) asprintf_or_null(&reason, "the API answered %d to %s %s%s%s: the key is wrong or lacks %s",
                                status, method, path, msg ? ": " : "", msg ? msg : "",
                                status == 401 ? "validity" : "the phones.view/phones.delete permission");
        log_event(LOG_CRIT, MESSAGE_AUTH_PAUSED, &(LogFields) { .http_status = status },
                  "Paused all calls: %s. Fix the key and restart; it is tried again in %llu s.",
                  reason ? reason : "authentication failed", (unsigned long long) (e->auth_retry / USEC_PER_SEC));
        pause_calls(e, e->auth_retry, reason);
}

/* A step that cannot be recorded must not be followed by the next one: stop
 * calling until the ledger takes writes again. */
void pause_ledger(Engine *e, int error) {
        char *reason = NULL;

        if (e->paused)
                return;
        (void) asprintf_or_null(&reason, "the ledger cannot be written: %s (%s)", strerror(-error),
                                ledger_errmsg(e->ledger));
        log_crit("Paused all calls: %s. Trying again in %llu s.", reason ? reason : "ledger write failed",
                 (unsigned long long) (LEDGER_RETRY_USEC / USEC_PER_SEC));
        pause_calls(e, LEDGER_RETRY_USEC, reason);
}

void pause_end(Engine *e) {
        if (!e->paused)
                return;
        e->paused = false;
        engine_disarm(e->unpause);
        log_notice("Resuming calls.");
        diga_set_paused(e->diga, false);
}

