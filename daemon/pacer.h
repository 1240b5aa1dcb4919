/* SPDX-License-Identifier: MIT */
#pragma once

/* How fast calls may leave (pacer.c): a token bucket with a concurrency
 * limit, a hold for Retry-After and a backoff for 429; no I/O, no clock of
 * its own (the caller passes CLOCK_MONOTONIC). */

#include <stdbool.h>

#include "macro.h"

typedef struct Pacer {
        double rate, factor, tokens;
        unsigned burst, concurrency, in_flight;
        usec_t refilled, hold_until;      /* CLOCK_MONOTONIC */
} Pacer;

void pacer_init(Pacer *p, double rate, unsigned burst, unsigned concurrency, usec_t now);
void pacer_configure(Pacer *p, double rate, unsigned burst, unsigned concurrency);
/* 0 when a call may leave at `now`, else when to ask again (USEC_INFINITY:
 * when a call in flight ends). */
usec_t pacer_wait(Pacer *p, usec_t now);
void pacer_take(Pacer *p, usec_t now);   /* a call leaves */
void pacer_done(Pacer *p);               /* a call ended */
void pacer_hold(Pacer *p, usec_t until); /* Retry-After: nothing leaves before */
void pacer_backoff(Pacer *p, usec_t now);/* a 429: slow down */
