/* SPDX-License-Identifier: MIT */
#pragma once

/* A scripted Diga client for unit tests: the diga_* functions of daemon.h,
 * linked in place of daemon/diga.c.  Nothing goes on a wire.  A call the
 * code under test makes waits in the stub until the test answers it
 * (stub_diga_answer()), and its callbacks then run at once, from the test,
 * as the real client runs them from the event loop: the answer hook
 * (diga_on_answer) first, then the call's own.  So the test decides the
 * order of every answer, and a run is the same every time.
 *
 * What the real client does and the stub keeps: a queued call starts (its
 * start hook runs) only when it leaves, and never while paused; an urgent
 * call goes before the queue; diga_cancel() ends a queued call with a
 * not_sent result and leaves one already out alone; diga_forget() drops a
 * queued call and silences one out (its answer reaches the answer hook
 * only); diga_drop_queued() ends every queued call not_sent; an id that is
 * not a UUID, or a kind that does not take what it is given, is -EINVAL.
 * What it leaves to the test: the pace, holds and back-offs are recorded,
 * not obeyed. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diga.h"

/* A call the code under test asked for.  The test reads it; the stub owns
 * it and frees it once it is answered, cancelled, dropped or forgotten. */
struct Call {
        Diga *d;
        unsigned seq;                      /* the nth diga_call() of this Diga, from 1 */
        CallKind kind;
        char id[UUID_STRING_LEN + 1];      /* the phone, or LIST's cursor; "" when none */
        unsigned page;                     /* LIST: page=N, 0: none */
        bool urgent;
        bool started;                      /* its start hook ran: it is out */
        CallStart start;
        CallDone done;                     /* NULL once forgotten while out */
        void *userdata;
        int64_t asked_at;                  /* CLOCK_REALTIME, when it started */
        Call *next;
};

/* What the API says to a call.  Zero is "no answer at all" with status 0:
 * fill in what the case needs. */
typedef struct StubAnswer {
        int status;                /* HTTP status; 0: no answer (see error) */
        const char *body;          /* NULL: none */
        bool json;                 /* Content-Type: application/json */
        int64_t retry_after;       /* seconds; 0: no Retry-After */
        int64_t api_date;          /* usec, the Date header; 0: none */
        const char *error;         /* the transport's words when status is 0 */
        bool unsent;               /* status 0, and not a byte left */
} StubAnswer;

typedef struct StubDigaStats {
        unsigned calls;            /* diga_call() that queued a call */
        unsigned answered, not_sent, forgotten;
        unsigned holds, backoffs, configs;
        usec_t held_until;         /* the latest diga_hold(), CLOCK_MONOTONIC; 0: none */
        bool paused;
} StubDigaStats;

/* The last Diga diga_new() made (the engine makes its own), or NULL. */
Diga *stub_diga_last(void);
const StubDigaStats *stub_diga_stats(Diga *d);

/* Calls the stub still holds that someone waits for: queued ones and ones
 * out whose callback is still wanted. */
size_t stub_diga_pending(Diga *d);
/* Calls out whose callback was forgotten: their answer goes to the answer
 * hook only. */
size_t stub_diga_silenced(Diga *d);
/* The next call to answer: the oldest one out, else the head of the queue
 * (paused or not); NULL when none is pending.  Forgotten calls are skipped. */
Call *stub_diga_next(Diga *d);
/* The ith pending call in that order (from 0), or NULL. */
Call *stub_diga_pending_call(Diga *d, size_t i);

/* Starts queued calls as the pacer would with no limit: every one, in queue
 * order, until the queue is empty or paused.  diga_call() starts its call
 * at once too while autostart is on (the real client does when the pacer
 * allows). */
void stub_diga_start_all(Diga *d);
/* Starts one queued call, out of turn if need be: false when its start hook
 * refused (the call then ended not_sent, and is freed). */
bool stub_diga_start(Diga *d, Call *c);
void stub_diga_set_autostart(Diga *d, bool on);

/* Answers a pending call (starting it first when it is queued: a start hook
 * that refuses ends it not_sent instead, and false is returned).  The call
 * is freed. */
bool stub_diga_answer(Diga *d, Call *c, const StubAnswer *a);
/* The same with a JSON body and no header. */
bool stub_diga_answer_json(Diga *d, Call *c, int status, const char *body);
/* Answers a call out whose callback was forgotten (its answer hook runs). */
void stub_diga_answer_silenced(Diga *d, const StubAnswer *a);

/* The nth diga_call() from now (from 1) returns `error` and queues nothing. */
void stub_diga_fail_call(Diga *d, unsigned nth, int error);
