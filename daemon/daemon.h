/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/: the Diga client (api.c reads bodies, diga.c talks HTTP through
 * libcurl's multi interface inside sd-event, pacer.c paces every call),
 * the listing of the account (listing.c), the decisions (reconcile.c, see
 * reconcile.h), the reconciler that applies them (engine.c), the control
 * socket (control.c) and the main loop (retired.c). */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "control.h"
#include "reconcile.h"
#include "state.h"

/* retired's exit codes (retired(8)), for batch jobs that run --once. */
#define EXIT_SETTLED   0   /* every declared phone released, scheduled or waiting for its time */
#define EXIT_STOPPED   1   /* stopped before that (API unreachable, paused): run again later */
#define EXIT_OPERATOR  2   /* some phones need an operator: failed or unresolved */
#define EXIT_SETUP     3   /* a config, ledger or key error: nothing was done */

#define API_MAX_BODY   (4u << 20)   /* bytes of one answer we accept */
#define API_PAGE_LIMIT 100          /* phones per list page */
#define TOKEN_MAX      4096

/* ---- api.c: what the API's bodies say ---- */

typedef struct PhonePage {
        RemotePhone *phones;
        size_t n;
        bool has_more;
        char last_id[UUID_STRING_LEN + 1];
        int64_t current_page, total_pages;   /* -1: not given (a cursor page) */
        char **skipped;              /* "ID: why" of each phone that could not be read */
        size_t n_skipped;
} PhonePage;

typedef struct Api Api;   /* a private SQLite connection used for its JSON functions */

int api_new(Api **ret);
Api *api_free(Api *a);
void phone_page_done(PhonePage *p);
/* 0, or -EBADMSG with *why saying what is wrong with the body, or another
 * -errno when SQLite failed (not the body's fault; *why stays NULL).  A page
 * whose frame is right keeps the phones it can read; the others go to
 * `skipped`.  A page is whole or an error: never cut short. */
int api_parse_phone(Api *a, const char *body, size_t len, RemotePhone *ret, char **why);
int api_parse_page(Api *a, const char *body, size_t len, PhonePage *ret, char **why);
/* Whether the body is the API's own error JSON ({"error_code","message"} or
 * FastAPI's {"detail"}); *message (if given) gets its words, short, or NULL. */
bool api_error_body(Api *a, const char *body, size_t len, char **message);

/* ---- pacer.c: how fast calls may leave ---- */

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

/* ---- diga.c: HTTP calls, paced ---- */

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

typedef struct Diga Diga;
typedef struct Call Call;
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
/* Calls out whose answer is awaited (forgotten ones do not count). */
unsigned diga_in_flight(Diga *d);
size_t diga_queued(Diga *d);
int diga_set_config(Diga *d, const Config *c, const char *token);

/* The API key: from api.token_file or $CREDENTIALS_DIRECTORY/api-token. */
int token_load(const Config *c, char **ret, char **where);
/* The first bytes of the key's SHA-256, in hex: names the key in the
 * journal without telling anything of use about it. */
#define TOKEN_FINGERPRINT_LEN 16
int token_fingerprint(const char *token, char buf[static TOKEN_FINGERPRINT_LEN + 1]);

/* ---- listing.c: the whole account, before anything is acted on ---- */

typedef struct Listing Listing;
/* Each phone listed, for the caller to keep or only count; NULL: forget the
 * phones given so far (the listing starts again, or failed).  < 0 stops
 * the listing. */
typedef int (*ListingKeep)(const RemotePhone *p, void *userdata);
/* The listing ended: 0, complete; < 0, it failed or was stopped (why says
 * what), and nothing it saw may be taken as a verdict: -EHOSTUNREACH, the
 * API did not answer at all; -EACCES, it refused the key; -ECANCELED,
 * stopped. */
typedef void (*ListingDone)(Listing *ls, int r, const char *why, void *userdata);

typedef struct ListingStats {
        size_t listed;            /* phones in the account */
        size_t unreadable;        /* phones skipped because they could not be read */
        unsigned calls;           /* list calls made */
        unsigned restarts;        /* times the account changed under the listing */
        bool pages;               /* listed by page (concurrently), not by cursor */
} ListingStats;

int listing_new(sd_event *e, Diga *d, Api *api, const World *w, ListingKeep keep, ListingDone done,
                void *userdata, Listing **ret);
Listing *listing_free(Listing *ls);
void listing_start(Listing *ls);
/* Starts again (also from its done callback), following the cursor only. */
void listing_start_by_cursor(Listing *ls);
/* Stops at once: calls queued are dropped, answers still out are ignored. */
void listing_stop(Listing *ls, const char *why);
bool listing_running(Listing *ls);
const ListingStats *listing_stats(Listing *ls);

/* ---- engine.c: reconciliation ---- */

typedef struct Engine Engine;

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

/* ---- control.c: the operator's socket ---- */

typedef struct Control Control;
/* Returns >= 0 (reply "ok TEXT") or < 0 (reply "error TEXT"); *text may be set. */
typedef int (*ControlHandler)(void *userdata, uint32_t uid, const char *verb, const char *arg, char **text);

int control_open(sd_event *e, const char *path, ControlHandler h, void *userdata, Control **ret);
Control *control_free(Control *c);
