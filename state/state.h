/* SPDX-License-Identifier: MIT */
#pragma once

/* state/: the SQLite ledger, the only record of what was done, and the plan
 * that turns declarations into ledger rows.  Rows are never deleted, the
 * history is append-only, and the record of an irreversible act only moves
 * forward; triggers in the schema enforce all three for every writer. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf.h"
#include "macro.h"             /* usec_t */

#define LEDGER_SCHEMA_VERSION 6

/* Bytes of a phone's nickname kept (the API's text, cut with a visible
 * mark, NICKNAME_CUT, by daemon/api.c). */
#define NICKNAME_MAX 64
#define NICKNAME_CUT "\u2026"

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
        STATE_IN_USE,            /* an agent answers or places calls on it: not released unless said */
        _STATE_MAX,
        _STATE_INVALID = -EINVAL,
} PhoneState;

const char *state_to_string(PhoneState s);
PhoneState state_from_string(const char *s);

/* -errno for an SQLite result code; 0 for SQLITE_OK, SQLITE_ROW and
 * SQLITE_DONE.  Public: daemon/api.c reads JSON with SQLite too. */
int sqlite_to_errno(int rc);
/* The same for a step that must give a row: none (SQLITE_DONE) is -ENODATA. */
int sqlite_row_errno(int rc);

typedef struct Ledger Ledger;

typedef enum LedgerMode {
        LEDGER_READ,    /* read-only; a missing file reads as an empty ledger */
        LEDGER_WRITE,   /* creates and migrates the file */
} LedgerMode;

/* On failure *error (if given) gets a sentence for the operator.  A writer
 * holds an exclusive lock on the file itself (flock, so every name of it,
 * hard links and symlinks included, is the same ledger) until it closes it:
 * -EWOULDBLOCK when another writer has it. */
int ledger_open(const char *path, LedgerMode mode, Ledger **ret, char **error);
Ledger *ledger_close(Ledger *l);
/* The WAL is cut back to this many bytes after a checkpoint (a string, for
 * the PRAGMA); readers wait this long for a writer. */
#define LEDGER_WAL_LIMIT "67108864"
#define LEDGER_BUSY_MS 5000
/* A writer's open that made the file: it has a rollback journal (one large
 * first transaction is written once) until ledger_settle(). */
bool ledger_created(const Ledger *l);
/* Closes the ledger; one ledger_created() says this open made is removed
 * too, with its journal: a start that failed leaves no file behind. */
Ledger *ledger_discard(Ledger *l);
/* After a large commit (a start's or reload's plan) and each pass: a new
 * ledger keeps its file (ledger_created() is false from now) and goes to
 * WAL, and the WAL is checkpointed and truncated to nothing.  Waits for no
 * reader: -EBUSY while one holds the file, and the next settle tries again. */
int ledger_settle(Ledger *l);
static inline void ledger_closep(Ledger **l) { if (*l) ledger_close(*l); }
const char *ledger_errmsg(Ledger *l);
/* cb is called every few thousand steps of SQLite's work on the connection,
 * whatever the statement: long work (a million declarations loaded,
 * planned, applied) can show that it goes on.  A cb that returns true
 * stops the statement, which fails with -EINTR (and takes the transaction
 * it is in back whole); only the caller knows when that is safe.  NULL
 * stops the calls. */
void ledger_on_progress(Ledger *l, bool (*cb)(void *userdata), void *userdata);

typedef struct Phone {
        int64_t pk;
        char *key, *id, *number, *reason;   /* number: as declared, or NULL */
        int64_t not_before;        /* seconds since the epoch, 0 = none */
        PhoneState state;
        unsigned attempts;
        int64_t next_at;           /* usec since the epoch, 0 = none */
        int64_t version;           /* of the declaration; every plan change bumps it */
        int64_t sent_at;           /* usec: when a DELETE left whose effect no look has settled; 0 = none */
        char *api_number;          /* the number as the API gave it */
        int64_t hold_until;        /* seconds: the hold's end as the wall clock said when it began
                                    * (the date only: hold_boot_until decides), 0 = none */
        int64_t hold_len;          /* seconds the hold lasts, to start it again after a reboot */
        int64_t hold_boot_until;   /* usec, CLOCK_BOOTTIME: held until then too; 0 = none,
                                    * INT64_MAX: stamped in another boot, not started again yet */
        char *provider;
        char *scheduled_release_at;
        char *last_error;
        char *declared_at;         /* FILE:LINE of the declaration */
        int64_t updated_at;        /* usec since the epoch */
        int64_t released_at;       /* usec: its step into released, from the history; 0 = none.
                                    * Filled by ledger_list() and ledger_find() only. */
        char *nickname;            /* as the API last showed it (cleaned, <= NICKNAME_MAX bytes), or NULL */
        char *inbound_agent, *outbound_agent;   /* while in_use only: the agents the API showed */
        InUse in_use;              /* what is done with it in use: its declaration's, else safety.in_use */
} Phone;

void phone_done(Phone *p);
/* When its hold ends by the boot-time clock, in seconds on our clock
 * (now_usec on CLOCK_REALTIME, boot_usec on CLOCK_BOOTTIME); 0: not held. */
int64_t phone_held_until(const Phone *p, int64_t now_usec, int64_t boot_usec);

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

/* The audit export: every step of the history, oldest first, with the phone
 * it belongs to.  Rows are handed out as SQLite steps through them, so a
 * history of any length takes no more memory than one row. */
typedef struct AuditFilter {
        int64_t since, until;      /* usec: steps at or after since and before until; 0 = open */
        int64_t after_seq;         /* > 0: only steps numbered after it; -ERANGE when the history
                                    * holds no step numbered that or later */
        int state;                 /* >= 0: only steps into this state */
        bool json;                 /* fill AuditStep.json */
} AuditFilter;

typedef struct AuditStep {
        History h;
        const char *time;          /* h.at in RFC 3339, UTC, to the millisecond */
        const char *key, *id, *number;   /* number: as declared, else as the API gave it */
        const char *reason;        /* the phone's declared reason (as declared now), for the audit trail */
        const char *nickname;      /* the phone's nickname as last seen, or NULL */
        unsigned attempt;          /* DELETEs of this phone on record up to and including this step */
        bool clock_back;           /* h.at is earlier than the step numbered before it, exported or not */
        const char *json;          /* the step as one JSON object, with AuditFilter.json */
} AuditStep;

int ledger_audit(Ledger *l, const AuditFilter *f, int (*cb)(const AuditStep *s, void *userdata), void *userdata);
/* How many steps the history holds, and when the last one was recorded
 * (usec, 0 = none). */
int ledger_history_stats(Ledger *l, uint64_t *ret_steps, int64_t *ret_last_at);

/* One step of a phone's life: the API call that happened (if any) and the
 * state it led to, written together in one transaction.  The update only
 * applies if the row is still in `from` (and, with `version`, still has the
 * declaration the step was decided on); otherwise -ESTALE and nothing is
 * written.  A step the record may not take (a released phone back to
 * anything, a scheduled one to anything but released, a phone whose DELETE
 * may have gone out to failed, unresolved or pending without a look) is
 * refused with -EPERM and ledger_errmsg() says why. */
typedef struct LedgerUpdate {
        int64_t pk;
        PhoneState from, to;
        int64_t version;                  /* > 0: only if the declaration is still this one */
        int64_t due_by;                   /* > 0: only if not_before has come by this time (usec) */
        int64_t sent_at;                  /* > 0: a DELETE leaves now, at this time (usec) */
        bool clear_sent;                  /* this step's look (a GET) settled the last DELETE */
        const char *id;                   /* NULL: keep */
        const char *api_number;           /* NULL: keep */
        const char *provider;             /* NULL: keep */
        const char *scheduled_release_at; /* NULL: keep */
        const char *nickname;             /* NULL: keep */
        /* Kept only in a step into (or within) in_use, which names at least
         * one; any other step clears them. */
        const char *inbound_agent, *outbound_agent;
        int attempts;                     /* < 0: keep */
        int64_t next_at;                  /* < 0: keep */
        const char *error;                /* stored as last_error; NULL: keep; a step into released clears it */
        const char *detail;               /* for the history */
        /* The call, when method != NULL. */
        const char *method, *path;
        int http_status;
        int64_t latency_ms;
} LedgerUpdate;

int ledger_update(Ledger *l, const LedgerUpdate *u);
/* The row's state and declaration version as the ledger has them now. */
int ledger_state(Ledger *l, int64_t pk, PhoneState *ret_state, int64_t *ret_version);

/* An operator's retry: a failed row back to pending with its attempts reset.
 * 0, or -ENOENT (no such phone), -EBUSY (not failed), another -errno; *message
 * gets a sentence for the operator either way. */
int ledger_retry(Ledger *l, const char *what, char **message);

int ledger_meta_get(Ledger *l, const char *name, char **ret);
int ledger_meta_set(Ledger *l, const char *name, const char *value);

/* An operator's pause (retirectl pause): no DELETE leaves while it is on.
 * Kept in the ledger, so it outlives restarts and reboots. */
typedef struct Pause {
        bool on;
        uint32_t uid;              /* who paused: the peer's uid */
        int64_t at;                /* usec since the epoch */
        char *reason;              /* NULL when none was given */
} Pause;

#define PAUSE_MAX_REASON 256

void pause_done(Pause *p);
/* -EBADMSG when the ledger's record of it cannot be read: treated as paused. */
int ledger_pause_get(Ledger *l, Pause *ret);
int ledger_pause_set(Ledger *l, uint32_t uid, int64_t at, const char *reason);
int ledger_pause_clear(Ledger *l);

/* The rows a pass must look at: in_flight rows and cancelled ones whose
 * DELETE may have gone out, once their next_at has come (the settle time
 * after the DELETE left); pending and due retrying rows whose not_before has
 * come; and on a resync the deferred, scheduled and unresolved ones too.
 * `now` is our clock (for next_at), `due_now` the one not_before is held
 * against (both clocks, see reconcile_due_now()); both usec since the epoch.
 * A row may go once not_before (by both clocks) and its hold (by the
 * boot-time clock) have come.
 *
 * A pass takes them by set, in batches: up to `limit` rows with a pk above
 * `after`, in pk order. */
typedef enum DueSet {
        DUE_LOOKS,         /* its DELETE may have gone out: looked at by id, never through a listing */
        DUE_BY_ID,         /* the rest, naming their phone by id */
        DUE_BY_NUMBER,     /* the rest, naming it by number only */
        DUE_REST,          /* both */
        _DUE_MAX,
} DueSet;

typedef struct DueQuery {
        int64_t now, due_now;
        bool resync;
        DueSet set;
} DueQuery;

int ledger_due(Ledger *l, const DueQuery *q, int64_t after, unsigned limit,
               int (*cb)(const Phone *p, void *userdata), void *userdata);
/* How many are due in each set (q->set is ignored); the _range form adds
 * those with after < pk <= upto to ret, a part of a large ledger at a time. */
int ledger_due_count(Ledger *l, const DueQuery *q, uint64_t ret[static _DUE_MAX]);
int ledger_due_count_range(Ledger *l, const DueQuery *q, int64_t after, int64_t upto, uint64_t ret[static _DUE_MAX]);
/* The largest pk, 0 for an empty ledger: rows are never deleted, so every
 * row there is now has a pk up to it. */
int ledger_last_pk(Ledger *l, int64_t *ret);
/* 1 when some row has this id or this number, else 0: which phones of a
 * listing are worth keeping. */
int ledger_knows_phone(Ledger *l, const char *id, const char *number);

/* What a listing kept (state/listed.c): the phones some row names, in a
 * TEMP table of the connection, not in the heap.  The strings are the
 * API's, as parsed; a callback's are valid during the call only. */
typedef struct ListedPhone {
        const char *id, *number, *status, *provider, *scheduled_release_at;
        const char *inbound_agent, *outbound_agent, *nickname;
} ListedPhone;

/* Forgets every phone kept (a listing starts, or starts again). */
int ledger_listed_clear(Ledger *l);
int ledger_listed_add(Ledger *l, const ListedPhone *p);
/* The phone with this id (id given), or the phones with this number in the
 * order listed; cb may be NULL.  How many, or -errno. */
int ledger_listed_find(Ledger *l, const char *id, const char *number,
                       int (*cb)(const ListedPhone *p, void *userdata), void *userdata);
/* When, on our clock, the next retry, look or not_before falls due (usec since
 * the epoch), or -ENOENT when nothing waits for time. */
int ledger_next_due(Ledger *l, int64_t now, int64_t due_now, bool looks_only, int64_t *ret);
/* Rows whose hold (safety.hold) has not ended by the boot-time clock and
 * ends after their not_before, and the end of the first one (seconds on
 * our clock, `now` in usec). */
int ledger_count_held(Ledger *l, int64_t now, uint64_t *ret, int64_t *ret_first);
/* When the first hold that ends after `after` ends, by the boot-time clock
 * (usec, CLOCK_BOOTTIME), or -ENOENT. */
int ledger_next_hold_end(Ledger *l, int64_t after, int64_t *ret);
/* Starts again every hold stamped in another boot (that boot's clock says
 * nothing here): the whole hold, from now.  Called at each start; *ret:
 * how many. */
int ledger_holds_restart(Ledger *l, uint64_t *ret);
/* The time of the last step on record (usec, as our clock read it then), 0
 * when none. */
int ledger_last_recorded(Ledger *l, int64_t *ret);
/* Rows still waiting for a call: in_flight, retrying, cancelled ones whose
 * DELETE may have gone out, and (with due_pending) pending rows whose
 * not_before has come.  Rows whose DELETE may have gone out and whose looks
 * kept failing past max_attempts are counted apart, in *ret_stuck: only a
 * working API (or an operator) ends them. */
int ledger_count_unsettled(Ledger *l, int64_t due_now, bool due_pending, unsigned max_attempts,
                           uint64_t *ret, uint64_t *ret_stuck);

/* The declared set: what config_load() reads goes, through the sink below,
 * into a TEMP table of the ledger's connection (an unlinked file, never
 * more than a bounded cache of it in memory), where SQLite merges what is
 * declared twice and the plan diffs it against the ledger.  Loading a new
 * set moves the one in force aside: ledger_decls_keep() drops it once the
 * new one is applied, ledger_decls_restore() brings it back when the new
 * one is refused. */
typedef struct DeclLoad {
        Ledger *ledger;          /* to load into; NULL: open() gives it at begin */
        int (*open)(void *userdata, const Config *c, Ledger **ret);
        void *userdata;
        void *insert;            /* private: the prepared INSERTs */
        void *insert_file;
        char *file;              /* private: the file being read, and its number */
        int64_t fid;
        bool loading;            /* private: a load is under way */
        InUse in_use;            /* private: safety.in_use, for the declarations that say nothing */
} DeclLoad;

DeclSink decl_load_sink(DeclLoad *dl);
/* Ends a load that did not finish (the set in force comes back), frees the rest. */
void decl_load_done(DeclLoad *dl);
int ledger_decls_keep(Ledger *l);
int ledger_decls_restore(Ledger *l);
/* The declared set, in the order declared (after merging). */
int ledger_decls_foreach(Ledger *l, int (*cb)(const Decl *d, void *userdata), void *userdata);
/* Declared phones whose rows are failed, unresolved or in_use: an operator's work. */
int ledger_decls_needing_operator(Ledger *l, uint64_t *ret);

/* The plan: what the declarations change in the ledger. */
typedef enum ChangeKind {
        CHANGE_ADD,        /* newly declared: a new pending row */
        CHANGE_REDECLARE,  /* cancelled earlier, declared again: pending (in_flight
                            * when a DELETE of it may have gone out: looked at first);
                            * or in_use, now to be released though in use: pending */
        CHANGE_CANCEL,     /* no longer declared, not released (in_flight too): cancelled */
        CHANGE_UPDATE,     /* reason or not_before changed */
        CHANGE_KEEP,       /* no longer declared but past undoing: a note only */
        _CHANGE_MAX,
} ChangeKind;

typedef struct Change {
        ChangeKind kind;
        int64_t pk;              /* 0 for CHANGE_ADD */
        const char *key, *id, *number;
        const char *reason;      /* as declared; NULL for CHANGE_CANCEL and CHANGE_KEEP */
        const char *declared_at; /* FILE:LINE; for CHANGE_CANCEL and CHANGE_KEEP the row's, maybe NULL */
        int64_t not_before;
        InUse in_use;            /* refuse or release, as it will apply; IN_USE_UNSET for CHANGE_CANCEL and CHANGE_KEEP */
        PhoneState from, to;
} Change;

/* The changes themselves are in the ledger connection's TEMP tables (the
 * changes to rows in temp.plan, the adds as the declarations that name no
 * row), so a plan of a million changes costs no more memory than one of
 * ten; one plan per connection at a time, used before the declared set
 * changes. */
typedef struct Plan {
        Ledger *ledger;
        size_t n;
        size_t count[_CHANGE_MAX];
        size_t new_releases;     /* ADD + REDECLARE */
        bool needs_approval;     /* new_releases > safety.max_new_releases */
        int64_t hold;            /* seconds (safety.hold) what is added or changed waits once applied */
        char hash[13];           /* identifies the set of new releases */
        /* Where plan_apply() spent its time, usec on CLOCK_MONOTONIC: the
         * rows added, their history, the declared set told which rows it
         * names, the other changes, the commit. */
        usec_t took_rows, took_history, took_changes, took_commit;
} Plan;

const char *change_kind_to_string(ChangeKind k);
/* The diff of the declared set (ledger_decls_*) against the ledger. */
int plan_compute(Ledger *l, const Config *c, Plan **ret);
/* The same without CHANGE_KEEP notes. */
int plan_compute_changes(Ledger *l, const Config *c, Plan **ret);
/* The changes in order (kind, then declaration order for new rows, ledger
 * order for the others), of one kind (or all, kind < 0), at most limit;
 * each Change lives for its call only.  The callback returns < 0 to stop. */
int plan_foreach(const Plan *p, int kind, size_t limit, int (*cb)(const Change *c, void *userdata), void *userdata);
/* Each declared phone's row as applying the plan (approved) would leave it,
 * in declaration order, once each (with the first declaration naming it):
 * pk 0 for a row the plan adds.  change: its ChangeKind (CHANGE_ADD,
 * CHANGE_REDECLARE or CHANGE_UPDATE), or -1 when the plan leaves it as it
 * is.  Rows no longer declared are not among them.  What plan_apply()
 * writes and what this shows are written with the same SQL. */
int plan_foreach_row(const Plan *p, int (*cb)(const Phone *row, int change, void *userdata), void *userdata);
/* Applies the plan in one transaction.  Unless approved, a plan that needs
 * approval applies everything but its new releases.  Every change bumps the
 * row's declaration version, so a DELETE decided on the old one never leaves. */
int plan_apply(Ledger *l, Plan *p, bool approved);
/* An operator's approval of the plan the guard holds, if it is still the
 * one with this hash: 0 once applied; -ENOENT (none waits), -ESTALE (another
 * plan waits), another -errno.  *message gets a sentence for the operator;
 * *ret_count (if given) the new releases applied. */
int plan_approve(Ledger *l, const Config *c, const char *hash, char **message, size_t *ret_count);
/* Changes that alter the ledger (KEEP notes do not). */
size_t plan_changes(const Plan *p);
Plan *plan_free(Plan *p);
static inline void plan_freep(Plan **p) { if (*p) plan_free(*p); }
