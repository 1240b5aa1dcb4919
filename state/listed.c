/* SPDX-License-Identifier: MIT */
/* What a listing kept: the account's phones some row names, in a TEMP
 * table of the ledger's connection (an unlinked file, with the bounded
 * cache of the declarations' tables), so that an account of a million
 * phones is not held in the heap.  Emptied when a listing starts again;
 * read back by id or by number while the pass meets its rows. */

#include "internal.h"

int ledger_listed_clear(Ledger *l) {
        /* No WHERE: SQLite empties the table without reading it. */
        return ledger_exec(l, "CREATE TEMP TABLE IF NOT EXISTS listed ("
                           "  seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, number TEXT, status TEXT,"
                           "  provider TEXT, scheduled_release_at TEXT, inbound_agent TEXT, outbound_agent TEXT,"
                           "  nickname TEXT);"
                           "CREATE INDEX IF NOT EXISTS temp.listed_number ON listed(number);"
                           "DELETE FROM temp.listed;");
}

int ledger_listed_add(Ledger *l, const ListedPhone *p) {
        sqlite3_stmt *st = NULL;
        int rc, r;

        r = ledger_cached(l, STMT_LISTED_ADD, "INSERT OR REPLACE INTO temp.listed"
                          " (id, number, status, provider, scheduled_release_at, inbound_agent, outbound_agent, nickname)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", &st);
        if (r < 0)
                return r;
        (void) sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, p->number, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 3, p->status, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 4, p->provider, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 5, p->scheduled_release_at, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 6, p->inbound_agent, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 7, p->outbound_agent, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 8, p->nickname, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        (void) sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

#define LISTED_COLUMNS \
        "id, number, status, provider, scheduled_release_at, inbound_agent, outbound_agent, nickname"

static const char *col(sqlite3_stmt *st, int i) {
        return (const char *) sqlite3_column_text(st, i);
}

int ledger_listed_find(Ledger *l, const char *id, const char *number,
                       int (*cb)(const ListedPhone *p, void *userdata), void *userdata) {
        sqlite3_stmt *st = NULL;
        int rc, r, n = 0;

        if (id)
                r = ledger_cached(l, STMT_LISTED_BY_ID, "SELECT " LISTED_COLUMNS
                                  " FROM temp.listed WHERE id = ?1", &st);
        else
                r = ledger_cached(l, STMT_LISTED_BY_NUMBER, "SELECT " LISTED_COLUMNS
                                  " FROM temp.listed WHERE number = ?1 ORDER BY seq", &st);
        if (r < 0)
                return r;
        (void) sqlite3_bind_text(st, 1, id ? id : number, -1, SQLITE_STATIC);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                ListedPhone p = { .id = col(st, 0), .number = col(st, 1), .status = col(st, 2),
                                  .provider = col(st, 3), .scheduled_release_at = col(st, 4),
                                  .inbound_agent = col(st, 5), .outbound_agent = col(st, 6), .nickname = col(st, 7) };

                n++;
                if (!cb)
                        continue;
                r = cb(&p, userdata);
                if (r < 0) {
                        (void) sqlite3_reset(st);
                        return r;
                }
        }
        (void) sqlite3_reset(st);
        return rc == SQLITE_DONE ? n : sqlite_to_errno(rc);
}
