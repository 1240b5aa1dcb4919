/* SPDX-License-Identifier: MIT */
/* The history: every step of every row, appended and never changed (the
 * schema's triggers refuse it), read back for show, for the audit export
 * in sequence order, and for how the clock ran. */

#include <inttypes.h>
#include <stdarg.h>

#include "internal.h"

int ledger_history(Ledger *l, int64_t pk, int (*cb)(const History *h, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc, r;

        rc = sqlite3_prepare_v2(ledger_db(l),
                                "SELECT seq, at, kind, old_state, new_state, method, path, http_status, "
                                "latency_ms, detail FROM history WHERE phone = ? ORDER BY seq", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, pk);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                History h = {
                        .seq = sqlite3_column_int64(st, 0),
                        .at = sqlite3_column_int64(st, 1),
                        .kind = (const char *) sqlite3_column_text(st, 2),
                        .old_state = (const char *) sqlite3_column_text(st, 3),
                        .new_state = (const char *) sqlite3_column_text(st, 4),
                        .method = (const char *) sqlite3_column_text(st, 5),
                        .path = (const char *) sqlite3_column_text(st, 6),
                        .http_status = sqlite3_column_int(st, 7),
                        .latency_ms = sqlite3_column_int64(st, 8),
                        .detail = (const char *) sqlite3_column_text(st, 9),
                };
                r = cb(&h, userdata);
                if (r < 0)
                        return r;
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* CROSS JOIN keeps the history the outer loop: its rows come in seq order
 * straight from the table, never gathered into a sorter, and after_seq is a
 * range of its rowid, so an export from a cursor reads only what is new.
 * The attempt is counted on the index of a phone's history, per row; the
 * step before, for clock_back, is found by rowid, per row.
 *
 * seq is a cursor that cannot miss: SQLite has one writer at a time and
 * AUTOINCREMENT never hands out a number again, so every read sees a prefix
 * of the sequence, and a step recorded later has a greater seq, whatever the
 * wall clock said when it was recorded. */
int ledger_audit(Ledger *l, const AuditFilter *f, int (*cb)(const AuditStep *s, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc, r;

        /* A cursor the history never reached was not taken from this
         * ledger (or the ledger is an older copy of it): an export from it
         * would be empty today and skip steps later, without a word. */
        if (f->after_seq > 0) {
                int64_t reached;

                r = ledger_query_intv(l, "SELECT EXISTS (SELECT 1 FROM history WHERE seq >= ?)", &reached, 1, f->after_seq);
                if (r < 0)
                        return r;
                if (!reached)
                        return -ERANGE;
        }

        rc = sqlite3_prepare_v2(ledger_db(l),
                                "SELECT s.*, CASE WHEN ?4 THEN json_object('seq', seq, 'time', time, 'key', key,"
                                "  'id', id, 'number', number, 'kind', kind, 'from', old_state, 'to', new_state,"
                                "  'method', method, 'path', path, 'http_status', http_status,"
                                "  'latency_ms', latency_ms, 'attempt', attempt, 'reason', reason, 'detail', detail,"
                                "  'nickname', nickname,"
                                "  'clock_back', json(CASE WHEN clock_back THEN 'true' ELSE 'false' END)) END"
                                " FROM (SELECT h.seq, h.at, h.kind, h.old_state, h.new_state, h.method, h.path,"
                                "  h.http_status, h.latency_ms, h.detail, p.key, p.id,"
                                "  coalesce(p.number, p.api_number) AS number,"
                                "  strftime('%Y-%m-%dT%H:%M:%fZ', h.at / 1000 / 1000.0, 'unixepoch') AS time,"
                                "  (SELECT count(*) FROM history d WHERE d.phone = h.phone AND d.seq <= h.seq"
                                "   AND d.method = 'DELETE') AS attempt, p.reason,"
                                "  coalesce(h.at < (SELECT b.at FROM history b WHERE b.seq < h.seq"
                                "   ORDER BY b.seq DESC LIMIT 1), 0) AS clock_back, p.nickname"
                                "  FROM history h CROSS JOIN phones p ON p.pk = h.phone"
                                "  WHERE (?1 <= 0 OR h.at >= ?1) AND (?2 <= 0 OR h.at < ?2)"
                                "  AND (?3 IS NULL OR h.new_state = ?3) AND h.seq > ?5"
                                "  ORDER BY h.seq) s", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, f->since);
        (void) sqlite3_bind_int64(st, 2, f->until);
        if (f->state >= 0)
                (void) sqlite3_bind_text(st, 3, state_to_string(f->state), -1, SQLITE_STATIC);
        (void) sqlite3_bind_int(st, 4, f->json);
        (void) sqlite3_bind_int64(st, 5, f->after_seq > 0 ? f->after_seq : 0);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                AuditStep a = {
                        .h = {
                                .seq = sqlite3_column_int64(st, 0),
                                .at = sqlite3_column_int64(st, 1),
                                .kind = (const char *) sqlite3_column_text(st, 2),
                                .old_state = (const char *) sqlite3_column_text(st, 3),
                                .new_state = (const char *) sqlite3_column_text(st, 4),
                                .method = (const char *) sqlite3_column_text(st, 5),
                                .path = (const char *) sqlite3_column_text(st, 6),
                                .http_status = sqlite3_column_int(st, 7),
                                .latency_ms = sqlite3_column_int64(st, 8),
                                .detail = (const char *) sqlite3_column_text(st, 9),
                        },
                        .key = (const char *) sqlite3_column_text(st, 10),
                        .id = (const char *) sqlite3_column_text(st, 11),
                        .number = (const char *) sqlite3_column_text(st, 12),
                        .time = (const char *) sqlite3_column_text(st, 13),
                        .attempt = (unsigned) sqlite3_column_int(st, 14),
                        .reason = (const char *) sqlite3_column_text(st, 15),
                        .clock_back = sqlite3_column_int(st, 16) != 0,
                        .nickname = (const char *) sqlite3_column_text(st, 17),
                        .json = (const char *) sqlite3_column_text(st, 18),
                };
                /* NOT NULL columns read as NULL only when SQLite ran out of memory;
                 * a time does when a hand-edited row holds one past year 9999. */
                if (!a.h.kind || !a.key || (f->json && !a.json))
                        return -ENOMEM;
                if (!a.time)
                        return sqlite3_errcode(ledger_db(l)) == SQLITE_NOMEM ? -ENOMEM : -EBADMSG;
                r = cb(&a, userdata);
                if (r < 0)
                        return r;
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int ledger_history_stats(Ledger *l, uint64_t *ret_steps, int64_t *ret_last_at) {
        int64_t n, at;
        int r;

        r = ledger_query_intv(l, "SELECT count(*) FROM history", &n, 0);
        if (r < 0)
                return r;
        r = ledger_query_intv(l, "SELECT (SELECT at FROM history ORDER BY seq DESC LIMIT 1)", &at, 0);
        if (r == -ENOENT)
                at = 0;
        else if (r < 0)
                return r;
        *ret_steps = (uint64_t) n;
        *ret_last_at = at;
        return 0;
}

int ledger_history_add(Ledger *l, int64_t pk, int64_t at, const char *kind, const char *old_state,
                       const char *new_state, const char *method, const char *path, int http_status,
                       int64_t latency_ms, const char *detail) {
        sqlite3_stmt *st = NULL;
        int rc, r;

        /* One per step of every row: a plan that adds a million rows
         * writes a million, and would parse this a million times. */
        r = ledger_cached(l, STMT_HISTORY_ADD,
                          "INSERT INTO history (phone, at, kind, old_state, new_state, method, path, "
                          "http_status, latency_ms, detail) VALUES (?,?,?,?,?,?,?,?,?,?)", &st);
        if (r < 0)
                return r;
        (void) sqlite3_clear_bindings(st);
        (void) sqlite3_bind_int64(st, 1, pk);
        (void) sqlite3_bind_int64(st, 2, at);
        (void) sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 4, old_state, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 5, new_state, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 6, method, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 7, path, -1, SQLITE_STATIC);
        if (http_status > 0)
                (void) sqlite3_bind_int(st, 8, http_status);
        if (method)
                (void) sqlite3_bind_int64(st, 9, latency_ms);
        (void) sqlite3_bind_text(st, 10, detail, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        (void) sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int ledger_last_recorded(Ledger *l, int64_t *ret) {
        return ledger_query_intv(l, "SELECT coalesce((SELECT at FROM history ORDER BY seq DESC LIMIT 1), 0)", ret, 0);
}
