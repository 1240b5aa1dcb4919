/* SPDX-License-Identifier: MIT */
#pragma once

/* Shared between the files of state/ only. */

#include <sqlite3.h>

#include "macro.h"
#include "state.h"

static inline void finalizep(sqlite3_stmt **st) { (void) sqlite3_finalize(*st); }
#define _cleanup_stmt_ _cleanup_(finalizep)


/* Statements asked often enough to keep prepared for the connection's life. */
typedef enum LedgerStmt {
        STMT_KNOWS,
        STMT_LISTED_ADD,
        STMT_LISTED_BY_ID,
        STMT_LISTED_BY_NUMBER,
        STMT_HISTORY_ADD,
        _STMT_MAX,
} LedgerStmt;

/* The statement for `which`, prepared from sql the first time; reset it after use. */
int ledger_cached(Ledger *l, LedgerStmt which, const char *sql, sqlite3_stmt **ret);
/* A row's columns as ledger_phone_from_row() reads them, from a table (or
 * a query) with the columns of phones. */
#define PHONE_COLUMNS \
        "pk, key, id, number, reason, not_before, state, attempts, next_at, provider, " \
        "scheduled_release_at, last_error, declared_at, updated_at, version, sent_at, api_number, hold_until, " \
        "hold_len, CASE WHEN hold_boot_until = 0 THEN 0 WHEN hold_boot IS boot_id() THEN hold_boot_until" \
        " ELSE 9223372036854775807 END, nickname, inbound_agent, outbound_agent, release_in_use"
/* The Phone of a row of PHONE_COLUMNS (and, when asked, its released_at after them). */
int ledger_phone_from_row(sqlite3_stmt *st, Phone *ret);
sqlite3 *ledger_db(Ledger *l);
/* Set by ledger_decls_added(), cleared once the set names the rows (decl.c). */
bool *ledger_decls_unmatched(Ledger *l);
int ledger_exec(Ledger *l, const char *sql);
/* An error sentence for the operator in *error (if given); NULL when even
 * that cannot be had. */
void ledger_set_error(char **error, const char *fmt, ...) _printf_(2, 3);
int ledger_user_version(sqlite3 *db, int *ret);
/* Brings the ledger to LEDGER_SCHEMA_VERSION in one transaction (schema.c);
 * a newer one is refused untouched. */
int ledger_migrate(Ledger *l, const char *path, char **error);
/* BEGIN IMMEDIATE, after taking back a transaction a failed ROLLBACK left open. */
int ledger_begin(Ledger *l);
/* The first column of the first row; -ENOENT when it is NULL.  The _intv
 * form binds n int64_t arguments to ?1...?n. */
int ledger_query_int(Ledger *l, const char *sql, int64_t *ret);
int ledger_query_intv(Ledger *l, const char *sql, int64_t *ret, int n, ...);
int ledger_history_add(Ledger *l, int64_t pk, int64_t at, const char *kind, const char *old_state,
                       const char *new_state, const char *method, const char *path, int http_status,
                       int64_t latency_ms, const char *detail);
/* The declared set's rows matched to the ledger's (temp.decl.phone, and
 * temp.declared by row), for the plan.  After rows were added for it, the
 * set names them only when next read: ledger_decls_added() marks it. */
int ledger_decls_match(Ledger *l);
void ledger_decls_added(Ledger *l);
