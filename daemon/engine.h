/* SPDX-License-Identifier: MIT */
#pragma once

/* The reconciler (engine.c and its rooms: act.c, match.c, pause.c): passes
 * over the ledger's rows, the calls they need, and their outcomes recorded. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "forward.h"
#include "state.h"

typedef void (*EngineIdle)(Engine *e, void *userdata);

int engine_new(sd_event *ev, Ledger *l, Engine **ret);
Engine *engine_free(Engine *e);
/* Takes the config (and its token); a changed config replaces the old one. */
int engine_set_config(Engine *e, const Config *c, const char *token);
/* The declarations changed in the ledger: what was decided on the old ones
 * is dropped before it can leave. */
void engine_declarations_changed(Engine *e);
/* Asks for a pass: now if nothing runs, else right after the running one. */
void engine_request_pass(Engine *e, bool resync);
/* Starts no new call; returns true when nothing is in flight (else the
 * idle callback tells when the pass has ended). */
bool engine_stop(Engine *e);
bool engine_busy(Engine *e);
/* Called whenever a pass starts, and whenever the engine settles (no pass
 * running, nothing in flight); engine_busy() tells which. */
void engine_on_idle(Engine *e, EngineIdle cb, void *userdata);
/* Settled means every phone waits for nothing but time or an operator. */
bool engine_settled(Engine *e);
/* Why the engine cannot finish by itself (the account cannot be listed,
 * DELETEs whose effect no look can tell), or NULL.  --once gives up on it. */
const char *engine_stuck(Engine *e);
/* An operator's pause: while on, no DELETE leaves (one decided before is
 * refused at the wire) and a pass looks only at phones whose DELETE may
 * have gone out. */
void engine_hold(Engine *e, bool on);
/* Why calls are paused (a refused key, an unwritable ledger), or NULL. */
const char *engine_paused(Engine *e);
typedef struct EngineProgress {
        size_t done, total;          /* phones of this pass */
        int64_t started;             /* usec, CLOCK_REALTIME */
        double rate;                 /* phones per second so far */
        double eta;                  /* seconds to go at that rate; < 0: unknown */
} EngineProgress;
/* false when no pass runs. */
bool engine_progress(Engine *e, EngineProgress *ret);
int engine_status(Engine *e, char *buf, size_t size);
