/* SPDX-License-Identifier: MIT */
/* The wrapped SQLite calls of test-faults and test-engine (sqlite-faults.h). */

#include <sqlite3.h>
#include <stdio.h>

#include "sqlite-faults.h"

Fault fault;

void fault_arm(unsigned n, int code) {
        fault = (Fault) { .armed = true, .fail_at = n, .code = code };
}

bool fault_disarm(void) {
        fault.armed = false;
        return fault.hit;
}

/* A ROLLBACK fails too: the transaction it leaves open is taken back by
 * the next write (ledger_begin()). */
static bool fault_now(const char *sql) {
        if (!fault.armed || ++fault.calls != fault.fail_at)
                return false;
        fault.hit = true;
        snprintf(fault.sql, sizeof fault.sql, "%s", sql ? sql : "?");
        return true;
}

int __real_sqlite3_step(sqlite3_stmt *st);
int __wrap_sqlite3_step(sqlite3_stmt *st);
int __wrap_sqlite3_step(sqlite3_stmt *st) {
        return fault_now(sqlite3_sql(st)) ? fault.code : __real_sqlite3_step(st);
}

typedef int (*ExecCb)(void *, int, char **, char **);
int __real_sqlite3_exec(sqlite3 *db, const char *sql, ExecCb cb, void *userdata, char **error);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, ExecCb cb, void *userdata, char **error);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, ExecCb cb, void *userdata, char **error) {
        if (!fault_now(sql))
                return __real_sqlite3_exec(db, sql, cb, userdata, error);
        if (error)
                *error = NULL;
        return fault.code;
}

int __real_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **ret, const char **tail);
int __wrap_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **ret, const char **tail);
int __wrap_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **ret, const char **tail) {
        if (!fault_now(sql))
                return __real_sqlite3_prepare_v2(db, sql, n, ret, tail);
        *ret = NULL;
        return fault.code;
}

int __real_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **ret,
                              const char **tail);
int __wrap_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **ret,
                              const char **tail);
int __wrap_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **ret,
                              const char **tail) {
        if (!fault_now(sql))
                return __real_sqlite3_prepare_v3(db, sql, n, flags, ret, tail);
        *ret = NULL;
        return fault.code;
}
