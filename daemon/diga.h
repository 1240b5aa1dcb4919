/* SPDX-License-Identifier: MIT */
#pragma once

/* The Diga client (diga.c): HTTP calls through libcurl inside sd-event,
 * each paced (pacer.h) and answered to a callback with what came back. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "forward.h"
#include "macro.h"
#include "reconcile.h"

typedef struct CallResult {
        CallKind kind;
        bool not_sent;            /* dropped, cancelled, or refused by the start hook */
        int http_status;          /* 0: no answer (see error) */
        const char *error;        /* transport error text, or NULL */
        const char *body;
        size_t body_len;
        bool json;                /* Content-Type is application/json */
        bool unsent;              /* no answer, and not a byte of the request left (no connection) */
        int64_t retry_after;      /* seconds, or -1 when none */
        int64_t api_date;         /* usec: the API's Date header, 0 when none or unreadable */
        int64_t asked_at;         /* usec, CLOCK_REALTIME: when the request left */
        int64_t answered_at;      /* usec, CLOCK_REALTIME */
        int64_t latency_ms;
        const char *method, *path;
} CallResult;

typedef void (*CallDone)(Diga *d, const CallResult *r, void *userdata);
/* Runs right before the call goes out; < 0 keeps it from going. */
typedef int (*CallStart)(void *userdata);

typedef struct CallSpec {
        CallKind kind;
        const char *id;           /* GET, DELETE: the phone; LIST: the cursor (after=), or NULL */
        unsigned page;            /* LIST: page=N (from 1), 0: none */
        bool urgent;              /* before the queue */
        CallStart start;
        CallDone done;
        void *userdata;
} CallSpec;

int diga_new(sd_event *e, const Config *c, const char *token, Diga **ret);
Diga *diga_free(Diga *d);
/* Queues a call; *ret (if given) is its handle until `done` runs. */
int diga_call(Diga *d, const CallSpec *spec, Call **ret);
/* A call still queued ends at once with a not_sent result (true); one
 * already out goes on (false), and its answer comes as usual. */
bool diga_cancel(Diga *d, Call *c);
/* The call is forgotten: its callback never runs, whether it was queued or
 * out.  Never for a DELETE: its answer must be recorded. */
void diga_forget(Diga *d, Call *c);
/* Called with every answer, before its own callback (the API's clock is read there). */
void diga_on_answer(Diga *d, CallDone cb, void *userdata);
/* Ends every call not yet started, each with a not_sent result. */
void diga_drop_queued(Diga *d);
void diga_hold(Diga *d, usec_t until);       /* CLOCK_MONOTONIC */
void diga_set_paused(Diga *d, bool paused);
void diga_rate_backoff(Diga *d);
/* What an answer asks of every call: a 429's slower pace, a Retry-After's
 * hold (seconds from now, CLOCK_MONOTONIC; 0: none). */
static inline void diga_heed(Diga *d, bool rate_backoff, int64_t hold) {
        if (rate_backoff)
                diga_rate_backoff(d);
        if (hold > 0)
                diga_hold(d, now(CLOCK_MONOTONIC) + (usec_t) hold * USEC_PER_SEC);
}
/* Calls out whose answer is awaited (forgotten ones do not count). */
unsigned diga_in_flight(Diga *d);
size_t diga_queued(Diga *d);
int diga_set_config(Diga *d, const Config *c, const char *token);
