/* SPDX-License-Identifier: MIT */
/* The pacer every call goes through: a token bucket (rate, burst) and a cap
 * on calls in flight.  It only does arithmetic on the times it is given, so
 * the HTTP client asks it and it never looks at a clock itself. */

#include <math.h>

#include "pacer.h"

/* After a 429 the rate is cut (pacer_backoff) and climbs back linearly, a
 * twentieth of the way per second, so a throttled API is not hit at full
 * speed again at once. */
#define RECOVERY_PER_SEC 0.05
#define FACTOR_MIN       (1.0 / 64)

void pacer_init(Pacer *p, double rate, unsigned burst, unsigned concurrency, usec_t now) {
        *p = (Pacer) { .factor = 1.0, .tokens = burst, .refilled = now };
        pacer_configure(p, rate, burst, concurrency);
}

void pacer_configure(Pacer *p, double rate, unsigned burst, unsigned concurrency) {
        p->rate = rate;
        p->burst = burst;
        p->concurrency = concurrency;
        p->tokens = fmin(p->tokens, (double) burst);
}

static void refill(Pacer *p, usec_t now) {
        double dt = now > p->refilled ? usec_to_sec((int64_t) (now - p->refilled)) : 0;

        p->refilled = now > p->refilled ? now : p->refilled;
        p->tokens = fmin((double) p->burst, p->tokens + dt * p->rate * p->factor);
        p->factor = fmin(1.0, p->factor + dt * RECOVERY_PER_SEC);
}

usec_t pacer_wait(Pacer *p, usec_t now) {
        if (p->in_flight >= p->concurrency)
                return USEC_INFINITY;       /* a call ending frees a place */
        if (now < p->hold_until)
                return p->hold_until;
        refill(p, now);
        if (p->tokens >= 1.0)
                return 0;
        return now + (usec_t) ceil((1.0 - p->tokens) / (p->rate * p->factor) * (double) USEC_PER_SEC);
}

void pacer_take(Pacer *p, usec_t now) {
        refill(p, now);
        p->tokens -= 1.0;
        p->in_flight++;
}

void pacer_done(Pacer *p) {
        if (p->in_flight > 0)
                p->in_flight--;
}

void pacer_hold(Pacer *p, usec_t until) {
        if (until > p->hold_until)
                p->hold_until = until;
}

void pacer_backoff(Pacer *p, usec_t now) {
        refill(p, now);
        p->factor = fmax(p->factor / 2, FACTOR_MIN);
}
