/* SPDX-License-Identifier: MIT */
/* The ledger's schema: each version's migration, applied in one
 * transaction at open.  A version's SQL only ever adds: a file written by
 * any earlier retired is brought forward, never rebuilt. */

#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>

#include "internal.h"

/* migrations[i] takes a ledger from version i to i + 1. */
static const char *const migrations[LEDGER_SCHEMA_VERSION] = {
        "CREATE TABLE phones ("
        "  pk INTEGER PRIMARY KEY,"
        "  key TEXT NOT NULL UNIQUE,"
        "  id TEXT, number TEXT, reason TEXT,"
        "  not_before INTEGER NOT NULL DEFAULT 0,"
        "  state TEXT NOT NULL CHECK (state IN ('pending','deferred','in_flight','retrying',"
        "    'scheduled','released','failed','cancelled','unresolved')),"
        "  attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),"
        "  next_at INTEGER NOT NULL DEFAULT 0,"
        "  provider TEXT, scheduled_release_at TEXT, last_error TEXT, declared_at TEXT,"
        "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
        "CREATE INDEX phones_id ON phones(id);"
        "CREATE INDEX phones_number ON phones(number);"
        "CREATE INDEX phones_state ON phones(state, next_at);"
        "CREATE TABLE history ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  phone INTEGER NOT NULL REFERENCES phones(pk),"
        "  at INTEGER NOT NULL,"
        "  kind TEXT NOT NULL CHECK (kind IN ('state','call')),"
        "  old_state TEXT, new_state TEXT, method TEXT, path TEXT,"
        "  http_status INTEGER, latency_ms INTEGER, detail TEXT);"
        "CREATE INDEX history_phone ON history(phone, seq);"
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
        /* What was done must stay on record, whatever writes to the file. */
        "CREATE TRIGGER history_no_update BEFORE UPDATE ON history"
        "  BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;"
        "CREATE TRIGGER history_no_delete BEFORE DELETE ON history"
        "  BEGIN SELECT RAISE(ABORT, 'history is append-only'); END;"
        "CREATE TRIGGER phones_no_delete BEFORE DELETE ON phones"
        "  BEGIN SELECT RAISE(ABORT, 'ledger rows are never deleted'); END;",

        /* 2: the declaration's version (a DELETE leaves only for the
         * declaration it was decided on), when the last DELETE left while no
         * look has settled what it did, the API's number apart from the
         * declared one, and the record of irreversible acts moving only
         * forward.  A row caught in flight, or with a DELETE on record that
         * no look followed, may have been released. */
        "ALTER TABLE phones ADD COLUMN version INTEGER NOT NULL DEFAULT 1;"
        "ALTER TABLE phones ADD COLUMN sent_at INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE phones ADD COLUMN api_number TEXT;"
        "UPDATE phones SET sent_at = coalesce((SELECT max(h.at) FROM history h WHERE h.phone = pk"
        "    AND (h.method = 'DELETE' OR h.new_state = 'in_flight')), updated_at)"
        "  WHERE state = 'in_flight' OR (state IN ('cancelled', 'retrying') AND EXISTS (SELECT 1 FROM history h"
        "    WHERE h.phone = pk AND (h.method = 'DELETE' OR h.new_state = 'in_flight')));"
        "CREATE TRIGGER phones_forward BEFORE UPDATE ON phones BEGIN"
        "  SELECT RAISE(ABORT, 'a released phone stays released')"
        "    WHERE OLD.state = 'released' AND NEW.state != 'released';"
        "  SELECT RAISE(ABORT, 'a scheduled release can only become released')"
        "    WHERE OLD.state = 'scheduled' AND NEW.state NOT IN ('scheduled', 'released');"
        "  SELECT RAISE(ABORT, 'an in_flight row needs the time its DELETE left')"
        "    WHERE NEW.state = 'in_flight' AND NEW.sent_at = 0;"
        "  SELECT RAISE(ABORT, 'the time a DELETE left only moves forward')"
        "    WHERE NEW.sent_at != 0 AND NEW.sent_at < OLD.sent_at;"
        "  SELECT RAISE(ABORT, 'a DELETE of this phone may have gone out: it is failed, unresolved or pending"
        " only after a look at the phone')"
        "    WHERE OLD.sent_at != 0 AND NEW.sent_at != 0 AND NEW.state IN ('failed', 'unresolved', 'pending');"
        "  SELECT RAISE(ABORT, 'only a look at the phone (GET) settles what its DELETE did')"
        "    WHERE OLD.sent_at != 0 AND NEW.sent_at = 0 AND NOT EXISTS (SELECT 1 FROM history h"
        "      WHERE h.phone = NEW.pk AND h.kind = 'call' AND h.method = 'GET' AND h.at > OLD.sent_at);"
        "END;",

        /* 3: the hold (safety.hold): a release a start or reload adds or
         * changes may go no sooner than hold_until, seconds on the same
         * clocks as not_before; due_at is when a row may go at all.
         * And a released phone has no error left to act on; an error from
         * before its release only misled the reader.  (The history keeps it:
         * it is append-only.)  The audit export counts each step's DELETEs
         * and finds each release through two small partial indexes, so that
         * a phone looked at for years costs no more per step than any other. */
        "UPDATE phones SET last_error = NULL WHERE state = 'released' AND last_error IS NOT NULL;"
        "CREATE INDEX history_deletes ON history(phone, seq) WHERE method = 'DELETE';"
        "CREATE INDEX history_released ON history(phone) WHERE new_state = 'released';"
        "ALTER TABLE phones ADD COLUMN hold_until INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE phones ADD COLUMN due_at INTEGER GENERATED ALWAYS AS (max(not_before, hold_until)) VIRTUAL;"
        /* The status counts the held rows once a second during a pass. */
        "CREATE INDEX phones_held ON phones(hold_until) WHERE state = 'pending' AND hold_until != 0;",

        /* 4: the hold measured as a duration.  The wall clock is stepped
         * (a clock a day slow at boot, put right by NTP), and hold_until,
         * stamped on it, could then be over at once, or last a day; so a
         * hold runs on CLOCK_BOOTTIME, which only moves forward and counts
         * suspend: hold_boot_until in the boot hold_boot names, hold_len
         * seconds long, to start it again after a reboot (that boot's clock
         * says nothing here).  hold_until only tells the date, and due_at,
         * which held by it, goes: a row may go from not_before.  A hold from
         * before is kept for what is left of it by the wall clock, from now. */
        "ALTER TABLE phones ADD COLUMN hold_boot TEXT;"
        "ALTER TABLE phones ADD COLUMN hold_boot_until INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE phones ADD COLUMN hold_len INTEGER NOT NULL DEFAULT 0;"
        "UPDATE phones SET hold_len = hold_until - CAST(strftime('%s', 'now') AS INTEGER), hold_boot = boot_id(),"
        "  hold_boot_until = boot_usec() + (hold_until - CAST(strftime('%s', 'now') AS INTEGER)) * 1000000"
        "  WHERE state IN ('pending', 'retrying') AND sent_at = 0"
        "  AND hold_until > CAST(strftime('%s', 'now') AS INTEGER);"
        "CREATE INDEX phones_boot_held ON phones(hold_boot_until)"
        "  WHERE hold_boot_until != 0 AND state IN ('pending', 'retrying');"
        "ALTER TABLE phones DROP COLUMN due_at;",

        /* 5: phones in use (issue 31).  A phone an agent is on waits in the
         * state in_use (in the CHECK by widen_states() first), with the
         * agents the API showed, kept only while it waits; the nickname as
         * last seen on every row, NICKNAME_MAX bytes at most. */
        "ALTER TABLE phones ADD COLUMN nickname TEXT"
        "  CHECK (nickname IS NULL OR length(CAST(nickname AS BLOB)) <= 64);"
        "ALTER TABLE phones ADD COLUMN inbound_agent TEXT;"
        "ALTER TABLE phones ADD COLUMN outbound_agent TEXT;"
        /* Whatever moves a row out of in_use (a pass, the plan, an
         * operator's retry, a hand) takes its agents with it. */
        "CREATE TRIGGER phones_agents_while_in_use AFTER UPDATE OF state, inbound_agent, outbound_agent ON phones"
        "  WHEN NEW.state != 'in_use' AND (NEW.inbound_agent IS NOT NULL OR NEW.outbound_agent IS NOT NULL)"
        "  BEGIN UPDATE phones SET inbound_agent = NULL, outbound_agent = NULL WHERE pk = NEW.pk; END;"
        /* What its declaration (or else safety.in_use) says of a phone in
         * use, as the plan last applied it: 1 "release", 0 "refuse" (what a
         * row from before says).  0 and 1 take no byte of a row but their type. */
        "ALTER TABLE phones ADD COLUMN release_in_use INTEGER NOT NULL DEFAULT 0 CHECK (release_in_use IN (0, 1));",

        /* 6: the CHECK on the state, rewritten by states_as_ors().  And two
         * small indexes, of rows a million-row ledger holds few of, each
         * found by a read of every row before, with the loop stopped: the
         * rows whose DELETE went out, in pk order, which a pass walks first
         * (0.6 s at each pass's start); the pending rows with a date, of
         * which the next is when to wake (0.3 s at each pass's end). */
        "CREATE INDEX phones_sent ON phones(pk) WHERE sent_at != 0;"
        "CREATE INDEX phones_dated ON phones(not_before) WHERE state = 'pending' AND not_before != 0;",
};

/* SQLite cannot ALTER a CHECK.  A rebuild of phones copies every row of a
 * ledger of years, and its DROP is refused under foreign_keys (history
 * points at it); a CHECK that every row passing the old one passes is the
 * change SQLite documents for writable_schema, made in the migration's
 * transaction, the schema's version bumped.  Only the text this retired
 * wrote is replaced: a CHECK edited by hand is left as it is. */
static int rewrite_phones_check(Ledger *l, const char *from, const char *to) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int64_t v;
        char sql[64];
        int r, k, rc;

        r = ledger_query_int(l, "PRAGMA schema_version", &v);
        if (r < 0)
                return r;
        r = ledger_exec(l, "PRAGMA writable_schema = ON");
        if (r >= 0) {
                rc = sqlite3_prepare_v2(ledger_db(l), "UPDATE sqlite_schema SET sql = replace(sql, ?1, ?2)"
                                        " WHERE type = 'table' AND name = 'phones'", -1, &st, NULL);
                if (rc == SQLITE_OK) {
                        (void) sqlite3_bind_text(st, 1, from, -1, SQLITE_STATIC);
                        (void) sqlite3_bind_text(st, 2, to, -1, SQLITE_STATIC);
                        rc = sqlite3_step(st);
                }
                r = rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
        }
        if (r >= 0 && sqlite3_changes(ledger_db(l)) != 1)
                r = -EBADMSG;
        snprintf(sql, sizeof sql, "PRAGMA schema_version = %" PRIi64, v + 1);
        if (r >= 0)
                r = ledger_exec(l, sql);
        /* Off (and read anew) whatever happened: a failure to is one. */
        k = ledger_exec(l, "PRAGMA writable_schema = RESET");
        return r < 0 ? r : k;
}

/* 5: in_use among the states. */
static int widen_states(Ledger *l) {
        return rewrite_phones_check(l, "'cancelled','unresolved'))", "'cancelled','unresolved','in_use'))");
}

#define STATES_IN_LIST "CHECK (state IN ('pending','deferred','in_flight','retrying',    'scheduled','released'," \
        "'failed','cancelled','unresolved','in_use'))"
#define STATES_OR_CHAIN "CHECK (state = 'pending' OR state = 'deferred' OR state = 'in_flight'" \
        " OR state = 'retrying' OR state = 'scheduled' OR state = 'released' OR state = 'failed'" \
        " OR state = 'cancelled' OR state = 'unresolved' OR state = 'in_use')"

/* 6: the same states, as a chain of ORs.  SQLite 3.40 evaluates an IN list
 * in a CHECK by building a table of it for each row written: 0.9 s of a
 * first start's 3 s of writing a million rows, and a cost on every change
 * of state after. */
static int states_as_ors(Ledger *l) {
        return rewrite_phones_check(l, STATES_IN_LIST, STATES_OR_CHAIN);
}

/* Work a migration needs besides its SQL, done before it. */
static int (*const migration_steps[LEDGER_SCHEMA_VERSION])(Ledger *l) = {
        [4] = widen_states,
        [5] = states_as_ors,
};

int ledger_migrate(Ledger *l, const char *path, char **error) {
        int v, r;

        r = ledger_exec(l, "BEGIN IMMEDIATE");
        if (r < 0) {
                ledger_set_error(error, "%s: %s%s", path, sqlite3_errmsg(ledger_db(l)),
                          r == -EBUSY ? " (another program holds the ledger's write lock)" : "");
                return r;
        }
        r = ledger_user_version(ledger_db(l), &v);
        if (r < 0)
                goto fail;
        if (v > LEDGER_SCHEMA_VERSION) {
                ledger_set_error(error, "%s: ledger schema version %d is newer than this retired understands (%d); "
                          "refusing to touch it", path, v, LEDGER_SCHEMA_VERSION);
                r = -EPROTO;
                goto fail;
        }
        for (; v < LEDGER_SCHEMA_VERSION; v++) {
                char pragma[64];

                r = migration_steps[v] ? migration_steps[v](l) : 0;
                if (r >= 0)
                        r = ledger_exec(l, migrations[v]);
                if (r < 0)
                        goto fail;
                snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
                r = ledger_exec(l, pragma);
                if (r < 0)
                        goto fail;
        }
        r = ledger_exec(l, "COMMIT");
        if (r >= 0)
                return 0;
fail:
        ledger_set_error(error, "%s: %s", path, sqlite3_errmsg(ledger_db(l)));
        (void) ledger_exec(l, "ROLLBACK");
        return r;
}
