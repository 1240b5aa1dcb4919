/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/: the Diga client (api.c parses bodies, diga.c talks HTTP through
 * libcurl's multi interface inside sd-event, paced), the reconciler
 * (engine.c) and the main loop (retired.c). */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "conf.h"
#include "state.h"

#define API_MAX_BODY   (4u << 20)   /* bytes of one answer we accept */
#define API_PAGE_LIMIT 100
#define TOKEN_MAX      4096

/* ---- api.c: what the API's bodies mean ---- */

typedef enum RemoteStatus {
        REMOTE_RESERVED,
        REMOTE_PENDING_VERIFICATION,
        REMOTE_ASSIGNED,
        REMOTE_RELEASED,
        REMOTE_FINISHED,
        REMOTE_UNKNOWN,
} RemoteStatus;

typedef struct RemotePhone {
        char id[UUID_STRING_LEN + 1];
        char *number;                 /* normalised when it looks like a number */
        RemoteStatus status;
        char *status_name;            /* as the API wrote it */
        char *provider;               /* "netelip", "custom", or what the API said */
        char *scheduled_release_at;   /* NULL when not set */
} RemotePhone;

typedef struct PhonePage {
        RemotePhone *phones;
        size_t n;
        bool has_more;
        char last_id[UUID_STRING_LEN + 1];
} PhonePage;

typedef struct Api Api;   /* a private SQLite connection used for its JSON functions */

int api_new(Api **ret);
Api *api_free(Api *a);
void remote_phone_done(RemotePhone *p);
void phone_page_done(PhonePage *p);
/* 0, or -EBADMSG with *why saying what is wrong with the body. */
int api_parse_phone(Api *a, const char *body, size_t len, RemotePhone *ret, char **why);
int api_parse_page(Api *a, const char *body, size_t len, PhonePage *ret, char **why);
/* The API's own words from an error body, or NULL. */
char *api_error_message(Api *a, const char *body, size_t len);

/* ---- diga.c: HTTP calls, paced ---- */

typedef enum CallKind { CALL_LIST, CALL_GET, CALL_DELETE } CallKind;

typedef struct CallResult {
        CallKind kind;
        bool not_sent;            /* dropped or refused by the start hook */
        int http_status;          /* 0: no answer (see error) */
        const char *error;        /* transport error text, or NULL */
        const char *body;
        size_t body_len;
        bool json;                /* Content-Type is application/json */
        int64_t retry_after;      /* seconds, or -1 when none */
        int64_t latency_ms;
        const char *method, *path;
} CallResult;

typedef struct Diga Diga;
typedef void (*CallDone)(Diga *d, const CallResult *r, void *userdata);
/* Runs right before the call goes out; < 0 keeps it from going. */
typedef int (*CallStart)(void *userdata);

int diga_new(sd_event *e, const Config *c, const char *token, Diga **ret);
Diga *diga_free(Diga *d);
/* Queues a call; arg is the phone id, or the list cursor (may be NULL).
 * Urgent calls go before the queue (list pages, which gate everything). */
int diga_call(Diga *d, CallKind kind, const char *arg, bool urgent, CallStart start, CallDone done,
              void *userdata);
/* Ends every call not yet started, each with a not_sent result. */
void diga_drop_queued(Diga *d);
void diga_hold(Diga *d, uint64_t until_usec);      /* CLOCK_MONOTONIC */
void diga_set_paused(Diga *d, bool paused);
void diga_rate_backoff(Diga *d);
unsigned diga_in_flight(Diga *d);
size_t diga_queued(Diga *d);
int diga_set_config(Diga *d, const Config *c, const char *token);

/* The API key: from api.token_file or $CREDENTIALS_DIRECTORY/api-token. */
int token_load(const Config *c, char **ret, char **where);

/* ---- engine.c: reconciliation ---- */

typedef struct Engine Engine;

typedef void (*EngineIdle)(Engine *e, void *userdata);

int engine_new(sd_event *ev, Ledger *l, Engine **ret);
Engine *engine_free(Engine *e);
/* Takes the config (and its token); a changed config replaces the old one. */
int engine_set_config(Engine *e, const Config *c, const char *token);
/* Asks for a pass: now if nothing runs, else right after the running one. */
void engine_request_pass(Engine *e, bool resync);
/* Starts no new call; returns true when nothing is in flight. */
bool engine_stop(Engine *e);
bool engine_busy(Engine *e);
/* Called whenever the engine settles: no pass running, nothing in flight. */
void engine_on_idle(Engine *e, EngineIdle cb, void *userdata);
/* Settled means every phone waits for nothing but time or an operator. */
bool engine_settled(Engine *e);
/* Why calls are paused (a refused key, an unwritable ledger), or NULL. */
const char *engine_paused(Engine *e);
int engine_status(Engine *e, char *buf, size_t size);

/* ---- control.c: the operator's socket ---- */

#define CONTROL_MAX_LINE 512
#define CONTROL_MAX_VERB 15
#define CONTROL_MAX_ARG  256

typedef struct Control Control;
/* Returns >= 0 (reply "ok TEXT") or < 0 (reply "error TEXT"); *text may be set. */
typedef int (*ControlHandler)(void *userdata, const char *verb, const char *arg, char **text);

int control_open(sd_event *e, const char *path, ControlHandler h, void *userdata, Control **ret);
Control *control_free(Control *c);
/* Splits "verb [arg]\n"; -EBADMSG or -E2BIG for anything else. */
int control_parse(const char *line, size_t len, char verb[static CONTROL_MAX_VERB + 1],
                  char arg[static CONTROL_MAX_ARG + 1]);
