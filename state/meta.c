/* SPDX-License-Identifier: MIT */
/* The ledger's meta table: named values kept with the record, among them
 * an operator's pause, which outlives restarts. */

#include <inttypes.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int ledger_meta_get(Ledger *l, const char *name, char **ret) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(ledger_db(l), "SELECT value FROM meta WHERE name = ?", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return sqlite_to_errno(rc);
        const char *v = (const char *) sqlite3_column_text(st, 0);
        *ret = v ? strdup(v) : NULL;
        return *ret ? 0 : -ENOMEM;
}

int ledger_meta_set(Ledger *l, const char *name, const char *value) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(ledger_db(l), "INSERT INTO meta (name, value) VALUES (?1, ?2) "
                                "ON CONFLICT (name) DO UPDATE SET value = ?2", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

void pause_done(Pause *p) {
        free(p->reason);
        *p = (Pause) {};
}

/* One meta row, "UID AT REASON": a pause is one write, whole or not at all. */
int ledger_pause_get(Ledger *l, Pause *ret) {
        _cleanup_free_ char *v = NULL;
        unsigned long long uid, at;
        int n = 0, r;

        *ret = (Pause) {};
        r = ledger_meta_get(l, "pause", &v);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        ret->on = true;
        if (sscanf(v, "%llu %llu %n", &uid, &at, &n) != 2 || n == 0 || uid > UINT32_MAX || at > INT64_MAX)
                return -EBADMSG;
        ret->uid = (uint32_t) uid;
        ret->at = (int64_t) at;
        if (v[n]) {
                ret->reason = strdup(v + n);
                if (!ret->reason)
                        return -ENOMEM;
        }
        return 0;
}

int ledger_pause_set(Ledger *l, uint32_t uid, int64_t at, const char *reason) {
        _cleanup_free_ char *v = NULL;

        if (reason && strlen(reason) > PAUSE_MAX_REASON)
                return -E2BIG;
        if (asprintf_or_null(&v, "%" PRIu32 " %" PRId64 " %s", uid, at, reason ? reason : "") < 0)
                return -ENOMEM;
        return ledger_meta_set(l, "pause", v);
}

int ledger_pause_clear(Ledger *l) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(ledger_db(l), "DELETE FROM meta WHERE name = 'pause'", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}
