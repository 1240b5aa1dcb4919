/* SPDX-License-Identifier: MIT */
#pragma once

/* state/: the SQLite ledger, the only record of what was done, and the plan
 * that turns declarations into ledger rows.  Rows are never deleted and the
 * history is append-only; both are enforced by triggers in the schema. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf.h"

#define LEDGER_SCHEMA_VERSION 1

typedef enum PhoneState {
        STATE_PENDING,
        STATE_DEFERRED,
        STATE_IN_FLIGHT,
        STATE_RETRYING,
        STATE_SCHEDULED,
        STATE_RELEASED,
        STATE_FAILED,
        STATE_CANCELLED,
        STATE_UNRESOLVED,
        _STATE_MAX,
        _STATE_INVALID = -EINVAL,
} PhoneState;

const char *state_to_string(PhoneState s);
PhoneState state_from_string(const char *s);

typedef struct Ledger Ledger;

typedef enum LedgerMode {
        LEDGER_READ,    /* read-only; a missing file reads as an empty ledger */
        LEDGER_WRITE,   /* creates and migrates the file */
} LedgerMode;

/* On failure *error (if given) gets a sentence for the operator. */
int ledger_open(const char *path, LedgerMode mode, Ledger **ret, char **error);
Ledger *ledger_close(Ledger *l);
static inline void ledger_closep(Ledger **l) { if (*l) ledger_close(*l); }
const char *ledger_errmsg(Ledger *l);

typedef struct Phone {
        int64_t pk;
        char *key, *id, *number, *reason;
        int64_t not_before;        /* seconds since the epoch, 0 = none */
        PhoneState state;
        unsigned attempts;
        int64_t next_at;           /* usec since the epoch, 0 = none */
        char *provider;
        char *scheduled_release_at;
        char *last_error;
        char *declared_at;         /* FILE:LINE of the declaration */
        int64_t updated_at;        /* usec since the epoch */
} Phone;

void phone_done(Phone *p);

typedef struct History {
        int64_t seq, at;
        const char *kind, *old_state, *new_state, *method, *path, *detail;
        int http_status;           /* 0 = no answer */
        int64_t latency_ms;
} History;

int ledger_counts(Ledger *l, uint64_t counts[static _STATE_MAX]);
/* state < 0: every row.  The callback returns < 0 to stop. */
int ledger_list(Ledger *l, int state, int (*cb)(const Phone *p, void *userdata), void *userdata);
/* By key, id or number; -ENOENT when none matches. */
int ledger_find(Ledger *l, const char *what, Phone *ret);
int ledger_history(Ledger *l, int64_t pk, int (*cb)(const History *h, void *userdata), void *userdata);

/* One step of a phone's life: the API call that happened (if any) and the
 * state it led to, written together in one transaction.  The update only
 * applies if the row is still in `from`; otherwise -ESTALE and nothing is
 * written. */
typedef struct LedgerUpdate {
        int64_t pk;
        PhoneState from, to;
        const char *id;                   /* NULL: keep */
        const char *number;               /* NULL: keep */
        const char *provider;             /* NULL: keep */
        const char *scheduled_release_at; /* NULL: keep */
        int attempts;                     /* < 0: keep */
        int64_t next_at;                  /* < 0: keep */
        const char *error;                /* stored as last_error; NULL: keep */
        const char *detail;               /* for the history */
        /* The call, when method != NULL. */
        const char *method, *path;
        int http_status;
        int64_t latency_ms;
} LedgerUpdate;

int ledger_update(Ledger *l, const LedgerUpdate *u);
/* > 0 when a DELETE for this row may have gone out (one is on record, or
 * the row was in_flight once), 0 when none. */
int ledger_sent_delete(Ledger *l, int64_t pk);
int ledger_state(Ledger *l, int64_t pk, PhoneState *ret);

/* An operator's retry: a failed row back to pending with its attempts reset.
 * -ENOENT: no such phone; -EBUSY: the phone is not failed (*state says what). */
int ledger_retry(Ledger *l, const char *what, PhoneState *state);

/* The ledger's writer holds this lock (a file beside the ledger) for as long
 * as it writes, so the daemon and an offline retirectl never write at once.
 * Returns an fd to close, -EWOULDBLOCK when someone else holds it. */
int ledger_lock(const char *path);

int ledger_meta_get(Ledger *l, const char *name, char **ret);
int ledger_meta_set(Ledger *l, const char *name, const char *value);

/* The rows a pass must look at: every in_flight row (its DELETE's fate is
 * unknown), pending and due retrying rows whose not_before has come, and on a
 * resync the deferred, scheduled and unresolved ones too. */
int ledger_due(Ledger *l, int64_t now, bool resync, int (*cb)(const Phone *p, void *userdata), void *userdata);
/* When the next retry or not_before falls due (usec since the epoch), or
 * -ENOENT when nothing waits for time. */
int ledger_next_due(Ledger *l, int64_t now, int64_t *ret);
/* Rows still waiting for a call: in_flight, retrying, and (with
 * due_pending) pending rows whose not_before has come. */
int ledger_count_unsettled(Ledger *l, int64_t now, bool due_pending, uint64_t *ret);

/* The plan: what the declarations change in the ledger. */
typedef enum ChangeKind {
        CHANGE_ADD,        /* newly declared: a new pending row */
        CHANGE_REDECLARE,  /* cancelled earlier, declared again: pending */
        CHANGE_CANCEL,     /* no longer declared, not released (in_flight too): cancelled */
        CHANGE_UPDATE,     /* reason or not_before changed */
        CHANGE_KEEP,       /* no longer declared but past undoing: a note only */
        _CHANGE_MAX,
} ChangeKind;

typedef struct Change {
        ChangeKind kind;
        int64_t pk;              /* 0 for CHANGE_ADD */
        char *key, *id, *number, *reason, *declared_at;
        int64_t not_before;
        PhoneState from, to;
} Change;

typedef struct Plan {
        Change *changes;
        size_t n;
        size_t count[_CHANGE_MAX];
        size_t new_releases;     /* ADD + REDECLARE */
        bool needs_approval;     /* new_releases > safety.max_new_releases */
        char hash[13];           /* identifies the set of new releases */
} Plan;

const char *change_kind_to_string(ChangeKind k);
int plan_compute(Ledger *l, const Config *c, Plan **ret);
/* The same without CHANGE_KEEP notes. */
int plan_compute_changes(Ledger *l, const Config *c, Plan **ret);
/* Applies the plan in one transaction.  Unless approved, a plan that needs
 * approval applies everything but its new releases. */
int plan_apply(Ledger *l, const Plan *p, bool approved);
/* Changes that alter the ledger (KEEP notes do not). */
size_t plan_changes(const Plan *p);
Plan *plan_free(Plan *p);
static inline void plan_freep(Plan **p) { if (*p) plan_free(*p); }

int64_t now_usec(void);
