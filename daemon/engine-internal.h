/* SPDX-License-Identifier: MIT */
/* The engine's rooms share its state: the pass (engine.c), the acts and
 * their outcomes (act.c) and the pauses (pause.c).  The match of a listing
 * to the rows (match.h) needs none of it.  Not an interface: engine.h is. */
#pragma once

#include "api.h"
#include "diga.h"
#include "engine.h"
#include "listing.h"
#include "match.h"
#include "reconcile.h"

typedef struct Batch Batch;

typedef struct Job {
        Engine *e;
        Batch *batch;
        int64_t pk, version;
        char *key, *id, *number, *provider, *api_number, *last_error;
        PhoneState state;            /* as committed in the ledger */
        unsigned attempts;
        int64_t not_before, sent_at, look_after;
        int64_t hold_boot_until;     /* usec, CLOCK_BOOTTIME (Row) */
        char *rejected;              /* why the API refused this pass's DELETE, pending a look */
        char *nickname;              /* as last seen */
        char *inbound_agent, *outbound_agent;   /* as this pass's look saw them (Row) */
        InUse in_use;                /* the row's: refuse or release while an agent is on it */
        int delete_status;           /* the last DELETE's HTTP status in this pass, 0: none */
        Call *call;                  /* queued or out, or NULL */
        bool deleting;               /* call is the DELETE */
        bool held;                   /* a DELETE decided while the listing runs: it waits */
        bool stale;                  /* the declaration changed: act on nothing */
        bool finished;
} Job;

/* Jobs taken from the ledger together; freed (from the loop) once all are finished. */
struct Batch {
        Batch *next;
        size_t n, n_open;
        Job jobs[];
};

#define FOREACH_JOB(j, b, e) \
        for (Batch *b = (e)->batches; b; b = b->next) \
                for (Job *j = b->jobs; j < b->jobs + b->n; j++)

typedef struct PassStats {
        unsigned calls, outcomes[_STATE_MAX];
        size_t unconfirmed;          /* numbers absent from a listing by page, due after its check */
        usec_t started;
} PassStats;

typedef enum Step {
        STEP_LOOKS,                  /* rows whose DELETE may have gone out, by id, while the listing runs */
        STEP_CHECK,                  /* each due number in the listing by page, or a cursor listing confirms */
        STEP_REST,                   /* the other rows: matched against the listing, or looked at by id */
        STEP_END,
} Step;

typedef enum Rest {
        REST_UNSET,
        REST_GET,                    /* no listing: a GET each */
        REST_MATCH,                  /* the listing is complete: each row meets the phone it names */
        REST_BY_ID,                  /* no listing to believe: rows by id get a GET, those by number wait */
        REST_NONE,                   /* the API cannot be reached, or refuses the key: every row waits */
} Rest;

struct Engine {
        sd_event *event;
        Ledger *ledger;
        Diga *diga;
        Api *api;
        Listing *listing;
        sd_event_source *wake, *hold_end, *resync, *list_retry, *unpause;

        /* From the config, copied so a reload never pulls it from under a pass. */
        unsigned max_attempts;
        usec_t base_delay, max_delay, settle, resync_interval, auth_retry;
        bool dry_run;

        bool running, want_pass, want_resync, stopping, paused;
        char *pause_reason;
        bool held;                   /* an operator's pause: no DELETE leaves */
        bool confirming;             /* the listing running is the cursor's confirmation */

        /* The pass: its due rows a set and a batch at a time. */
        DueQuery due;
        int64_t hold_from;           /* usec, CLOCK_BOOTTIME: when the pass took its due rows */
        uint64_t counted[_DUE_MAX];  /* due at the pass's start */
        bool counting;               /* the pass's count runs, a chunk a turn (advance) */
        int64_t count_after, count_end;   /* counted up to this pk, of those up to that one */
        Step step;
        Rest rest;
        int64_t after;               /* the last pk this step took */
        Batch *batches;
        size_t n_open, n_done;
        sd_event_source *advance;    /* the next batch, from the loop */
        int list_r;                  /* how the listing ended; 1 while none has */
        unsigned generation;         /* bumped by each reload */
        unsigned list_generation;    /* when the listing started */
        PassStats stats;

        unsigned list_failures;      /* listings failed in a row */
        char *list_error;

        /* The second clock: the API's Date minus ours, from the last answer. */
        int64_t api_offset;
        bool offset_known, skewed;

        EngineIdle idle;
        void *idle_userdata;
};


/* engine.c: the pass, its jobs and timers */
usec_t engine_mono_now(Engine *e);
void engine_arm(sd_event_source *s, usec_t when);
void engine_disarm(sd_event_source *s);
World engine_world(Engine *e);
Row job_row(const Job *j);
void job_finish(Job *j);
int engine_set_str(char **p, const char *v);
void engine_kick(Engine *e);

/* act.c: a look or a DELETE, and what its answer becomes */
void act_observe(Job *j, bool urgent);
void act_delete(Job *j);
void act_apply(Job *j, const Outcome *o, const CallResult *call, bool check_version);

/* pause.c: every call stopped, and started again */
void pause_auth(Engine *e, int status, const char *method, const char *path, const char *msg);
void pause_ledger(Engine *e, int error);
void pause_end(Engine *e);
