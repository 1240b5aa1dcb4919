/* SPDX-License-Identifier: MIT */
/* The ledger: one SQLite file in WAL mode with synchronous=FULL, so that a
 * committed row survives a crash or power loss.  The schema carries its
 * version in PRAGMA user_version and refuses files from a newer retired.
 * The rules that keep the record honest live in the schema as triggers, so
 * that every writer (the daemon, retirectl, the sqlite3 shell) obeys them. */

#include <sqlite3.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <systemd/sd-id128.h>
#include <time.h>

#include "internal.h"

struct Ledger {
        sqlite3 *db;
        LedgerMode mode;
        int lock_fd;        /* a writer's flock on the file; -1 for readers */
        sqlite3_stmt *cached[_STMT_MAX];   /* asked once per listed phone, or per row of a pass */
        bool (*progress)(void *userdata);
        void *progress_userdata;
        char boot_id[SD_ID128_STRING_MAX];   /* boot_id() in SQL */
};

static const char *const state_names[_STATE_MAX] = {
        [STATE_PENDING] = "pending",       [STATE_DEFERRED] = "deferred",
        [STATE_IN_FLIGHT] = "in_flight",   [STATE_RETRYING] = "retrying",
        [STATE_SCHEDULED] = "scheduled",   [STATE_RELEASED] = "released",
        [STATE_FAILED] = "failed",         [STATE_CANCELLED] = "cancelled",
        [STATE_UNRESOLVED] = "unresolved", [STATE_IN_USE] = "in_use",
};

const char *state_to_string(PhoneState s) {
        return s >= 0 && s < _STATE_MAX ? state_names[s] : NULL;
}

PhoneState state_from_string(const char *s) {
        for (int i = 0; s && i < _STATE_MAX; i++)
                if (streq(s, state_names[i]))
                        return (PhoneState) i;
        return _STATE_INVALID;
}

/* An error sentence for the operator; NULL when even that cannot be had. */
static void set_error(char **error, const char *fmt, ...) _printf_(2, 3);
static void set_error(char **error, const char *fmt, ...) {
        va_list ap;

        if (!error || *error)
                return;
        va_start(ap, fmt);
        if (vasprintf(error, fmt, ap) < 0)
                *error = NULL;
        va_end(ap);
}

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
};

/* SQLite cannot ALTER a CHECK.  A rebuild of phones copies every row of a
 * ledger of years, and its DROP is refused under foreign_keys (history
 * points at it); widening the IN list (every row that passed the old CHECK
 * passes the new) is the change SQLite documents for writable_schema, made
 * in the migration's transaction, the schema's version bumped. */
static int widen_states(Ledger *l) {
        int64_t v;
        char sql[64];
        int r, k;

        r = ledger_query_int(l, "PRAGMA schema_version", &v);
        if (r < 0)
                return r;
        r = ledger_exec(l, "PRAGMA writable_schema = ON;"
                        "UPDATE sqlite_schema SET sql = replace(sql, '''cancelled'',''unresolved''))',"
                        " '''cancelled'',''unresolved'',''in_use''))') WHERE type = 'table' AND name = 'phones'");
        if (r >= 0 && sqlite3_changes(l->db) != 1)
                r = -EBADMSG;
        snprintf(sql, sizeof sql, "PRAGMA schema_version = %" PRIi64, v + 1);
        if (r >= 0)
                r = ledger_exec(l, sql);
        /* Off (and read anew) whatever happened: a failure to is one. */
        k = ledger_exec(l, "PRAGMA writable_schema = RESET");
        return r < 0 ? r : k;
}

/* Work a migration needs besides its SQL, done before it. */
static int (*const migration_steps[LEDGER_SCHEMA_VERSION])(Ledger *l) = {
        [4] = widen_states,
};

int sqlite_to_errno(int rc) {
        /* Only these: SQLITE_OK has extended codes too (SQLITE_OK_SYMLINK),
         * and an answer no caller expects is no success. */
        if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE)
                return 0;
        switch (rc & 0xff) {
        case SQLITE_BUSY: case SQLITE_LOCKED: return -EBUSY;
        case SQLITE_NOMEM: return -ENOMEM;
        case SQLITE_READONLY: case SQLITE_PERM: case SQLITE_AUTH: return -EACCES;
        case SQLITE_FULL: return -ENOSPC;
        case SQLITE_INTERRUPT: return -EINTR;
        case SQLITE_CANTOPEN: return -ENOENT;
        case SQLITE_CORRUPT: case SQLITE_NOTADB: return -EBADMSG;
        /* A trigger's RAISE: a step the record may not take. */
        case SQLITE_CONSTRAINT: return rc == SQLITE_CONSTRAINT_TRIGGER ? -EPERM : -EEXIST;
        default: return -EIO;
        }
}

int sqlite_row_errno(int rc) {
        return rc == SQLITE_DONE ? -ENODATA : sqlite_to_errno(rc);
}

int ledger_exec(Ledger *l, const char *sql) {
        return sqlite_to_errno(sqlite3_exec(l->db, sql, NULL, NULL, NULL));
}

static int user_version(sqlite3 *db, int *ret) {
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
                *ret = sqlite3_column_int(st, 0);
        (void) sqlite3_finalize(st);
        return rc == SQLITE_ROW ? 0 : sqlite_row_errno(rc);
}

static int migrate(Ledger *l, const char *path, char **error) {
        int v, r;

        r = ledger_exec(l, "BEGIN IMMEDIATE");
        if (r < 0) {
                set_error(error, "%s: %s%s", path, sqlite3_errmsg(l->db),
                          r == -EBUSY ? " (another program holds the ledger's write lock)" : "");
                return r;
        }
        r = user_version(l->db, &v);
        if (r < 0)
                goto fail;
        if (v > LEDGER_SCHEMA_VERSION) {
                set_error(error, "%s: ledger schema version %d is newer than this retired understands (%d); "
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
        set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
        (void) ledger_exec(l, "ROLLBACK");
        return r;
}

/* One writer per file, however it is named: flock() locks the inode, so a
 * second writer through a hard link or a symlink meets the same lock.  (It is
 * not the POSIX lock SQLite uses, so the two never interfere; the fd stays
 * open until after SQLite's own are closed, see ledger_close().) */
static int lock_file(Ledger *l, const char *path, char **error) {
        int fd;

        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0) {
                set_error(error, "%s: cannot open the ledger: %m", path);
                return negative_errno();
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                int r = negative_errno();

                (void) close(fd);
                if (r == -EWOULDBLOCK)
                        set_error(error, "%s is in use by another writer (a running retired, or retirectl "
                                  "writing it); a ledger has one writer at a time", path);
                else
                        set_error(error, "%s: cannot lock the ledger: %s", path, strerror(-r));
                return r;
        }
        l->lock_fd = fd;
        return 0;
}

/* boot_id() and boot_usec(), for the hold (migration 4): the boot-time
 * clock counts the real time a hold lasts, and means something only in the
 * boot it was read in. */
static void sql_boot_id(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
        sqlite3_result_text(ctx, sqlite3_user_data(ctx), -1, SQLITE_STATIC);
}

static void sql_boot_usec(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
        sqlite3_result_int64(ctx, (int64_t) now(CLOCK_BOOTTIME));
}

static int add_boot_functions(Ledger *l) {
        sd_id128_t boot;
        int rc;

        /* Without the kernel's boot id, this process's own random one: every
         * hold then starts again at the next start, which is only longer. */
        if (sd_id128_get_boot(&boot) < 0 && sd_id128_randomize(&boot) < 0)
                return -EIO;
        (void) sd_id128_to_string(boot, l->boot_id);
        rc = sqlite3_create_function(l->db, "boot_id", 0, SQLITE_UTF8, l->boot_id, sql_boot_id, NULL, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_create_function(l->db, "boot_usec", 0, SQLITE_UTF8, NULL, sql_boot_usec, NULL, NULL);
        return sqlite_to_errno(rc);
}

/* The connection, and the settings that every mode needs.  *ret_in_memory
 * says whether it is the empty in-memory ledger that stands for an absent
 * file in a read. */
static int open_db(Ledger *l, const char *path, bool *ret_in_memory, char **error) {
        const char *open_path = path;
        struct stat st;
        int flags, rc, r;

        if (l->mode == LEDGER_READ) {
                /* A read must never create the file: an absent ledger is an
                 * empty one, so show it as such from memory. */
                if (stat(path, &st) < 0 && errno == ENOENT) {
                        open_path = ":memory:";
                        flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
                } else
                        flags = SQLITE_OPEN_READONLY;
        } else
                flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
        *ret_in_memory = open_path != path;

        /* One thread uses a connection (libcurl's threads never touch it):
         * no mutex on every call. */
        rc = sqlite3_open_v2(open_path, &l->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK) {
                set_error(error, "%s: cannot open ledger: %s", path,
                          l->db ? sqlite3_errmsg(l->db) : sqlite3_errstr(rc));
                return sqlite_to_errno(rc);
        }
        (void) sqlite3_extended_result_codes(l->db, 1);
        /* Set before switching to WAL: the switch itself may need to wait. */
        (void) sqlite3_busy_timeout(l->db, 5000);
        r = add_boot_functions(l);
        if (r < 0) {
                set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        /* The declared set and the plan are TEMP tables: in an unlinked
         * file (in the unit's private /var/tmp), of which a bounded cache
         * is in memory, so a million declarations cost no more memory
         * than ten. */
        r = ledger_exec(l, "PRAGMA temp_store = FILE; PRAGMA temp.cache_size = -4096");
        if (r < 0) {
                set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        return 0;
}

/* A ledger this connection may write: the file in LEDGER_WRITE, or the
 * in-memory one of a read.  It is brought to the current schema. */
static int prepare_writable(Ledger *l, const char *path, char **error) {
        int r, v;

        /* A ledger from a newer retired is refused before anything,
         * the switch to WAL included, touches it: so is one whose
         * version cannot be read. */
        r = user_version(l->db, &v);
        if (r < 0) {
                set_error(error, "%s: cannot read ledger: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        if (v > LEDGER_SCHEMA_VERSION) {
                set_error(error, "%s: ledger schema version %d is newer than this retired understands (%d); "
                          "refusing to touch it", path, v, LEDGER_SCHEMA_VERSION);
                return -EPROTO;
        }
        if (l->mode == LEDGER_WRITE && sqlite3_db_readonly(l->db, "main") == 1) {
                set_error(error, "%s: the ledger is read-only for this user", path);
                return -EACCES;
        }
        if (l->mode == LEDGER_WRITE) {
                r = ledger_exec(l, "PRAGMA journal_mode = WAL");
                if (r >= 0)
                        r = ledger_exec(l, "PRAGMA synchronous = FULL");
                if (r >= 0)
                        r = ledger_exec(l, "PRAGMA foreign_keys = ON");
                if (r < 0) {
                        set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
                        return r;
                }
        }
        return migrate(l, path, error);
}

/* A ledger file opened read-only: it cannot be migrated here, so it must
 * already be at the current schema. */
static int check_readable(Ledger *l, const char *path, char **error) {
        int r, v;

        r = user_version(l->db, &v);
        if (r < 0) {
                set_error(error, "%s: cannot read ledger: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        if (v > LEDGER_SCHEMA_VERSION) {
                set_error(error, "%s: ledger schema version %d is newer than this retirectl understands (%d)",
                          path, v, LEDGER_SCHEMA_VERSION);
                return -EPROTO;
        }
        if (v != LEDGER_SCHEMA_VERSION) {
                set_error(error, "%s: ledger schema version %d needs migrating to %d; start retired once",
                          path, v, LEDGER_SCHEMA_VERSION);
                return -EPROTO;
        }
        return 0;
}

int ledger_open(const char *path, LedgerMode mode, Ledger **ret, char **error) {
        _cleanup_(ledger_closep) Ledger *l = NULL;
        bool in_memory;
        int r;

        l = calloc(1, sizeof(Ledger));
        if (!l)
                return -ENOMEM;
        l->mode = mode;
        l->lock_fd = -1;
        if (mode == LEDGER_WRITE) {
                r = lock_file(l, path, error);
                if (r < 0)
                        return r;
        }
        r = open_db(l, path, &in_memory, error);
        if (r < 0)
                return r;
        if (in_memory || mode == LEDGER_WRITE)
                r = prepare_writable(l, path, error);
        else
                r = check_readable(l, path, error);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(l);
        return 0;
}

Ledger *ledger_close(Ledger *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < _STMT_MAX; i++)
                (void) sqlite3_finalize(l->cached[i]);
        (void) sqlite3_close_v2(l->db);
        /* Only now: closing any fd of the file drops this process's POSIX
         * locks on it, SQLite's included. */
        if (l->lock_fd >= 0)
                (void) close(l->lock_fd);
        free(l);
        return NULL;
}

static int on_progress(void *userdata) {
        Ledger *l = userdata;

        return l->progress(l->progress_userdata);
}

void ledger_on_progress(Ledger *l, bool (*cb)(void *userdata), void *userdata) {
        l->progress = cb;
        l->progress_userdata = userdata;
        /* About a millisecond of work between calls. */
        sqlite3_progress_handler(l->db, cb ? 100000 : 0, cb ? on_progress : NULL, l);
}

const char *ledger_errmsg(Ledger *l) {
        return sqlite3_errmsg(l->db);
}

sqlite3 *ledger_db(Ledger *l) {
        return l->db;
}

static char *col_strdup(sqlite3_stmt *st, int i) {
        const unsigned char *s = sqlite3_column_text(st, i);
        return s ? strdup((const char *) s) : NULL;
}

void phone_done(Phone *p) {
        free(p->key);
        free(p->id);
        free(p->number);
        free(p->api_number);
        free(p->reason);
        free(p->provider);
        free(p->scheduled_release_at);
        free(p->last_error);
        free(p->declared_at);
        free(p->nickname);
        free(p->inbound_agent);
        free(p->outbound_agent);
        *p = (Phone) {};
}

int64_t phone_held_until(const Phone *p, int64_t now_usec, int64_t boot_usec) {
        int64_t left;

        if (p->hold_boot_until == 0)
                return 0;
        /* Stamped in another boot: it starts again, whole, at the next start. */
        left = p->hold_boot_until == INT64_MAX ? p->hold_len * (int64_t) USEC_PER_SEC :
               p->hold_boot_until > boot_usec ? p->hold_boot_until - boot_usec : 0;
        return left > 0 ? (now_usec + left + (int64_t) USEC_PER_SEC - 1) / (int64_t) USEC_PER_SEC : 0;
}

/* For the operator's views: when the row became released, from the history
 * (one step at most leads there: a released row stays released). */
#define PHONE_COLUMNS_RELEASED_AT \
        PHONE_COLUMNS ", (SELECT min(h.at) FROM history h WHERE h.phone = phones.pk AND h.new_state = 'released')"

int ledger_phone_from_row(sqlite3_stmt *st, Phone *ret) {
        Phone p = {
                .pk = sqlite3_column_int64(st, 0),
                .key = col_strdup(st, 1),
                .id = col_strdup(st, 2),
                .number = col_strdup(st, 3),
                .reason = col_strdup(st, 4),
                .not_before = sqlite3_column_int64(st, 5),
                .state = state_from_string((const char *) sqlite3_column_text(st, 6)),
                .attempts = (unsigned) sqlite3_column_int(st, 7),
                .next_at = sqlite3_column_int64(st, 8),
                .provider = col_strdup(st, 9),
                .scheduled_release_at = col_strdup(st, 10),
                .last_error = col_strdup(st, 11),
                .declared_at = col_strdup(st, 12),
                .updated_at = sqlite3_column_int64(st, 13),
                .version = sqlite3_column_int64(st, 14),
                .sent_at = sqlite3_column_int64(st, 15),
                .api_number = col_strdup(st, 16),
                .hold_until = sqlite3_column_int64(st, 17),
                .hold_len = sqlite3_column_int64(st, 18),
                .hold_boot_until = sqlite3_column_int64(st, 19),
                .released_at = sqlite3_column_count(st) > 24 ? sqlite3_column_int64(st, 24) : 0,
                .in_use = sqlite3_column_int(st, 23) ? IN_USE_RELEASE : IN_USE_REFUSE,
                .nickname = col_strdup(st, 20),
                .inbound_agent = col_strdup(st, 21),
                .outbound_agent = col_strdup(st, 22),
        };
        if (!p.key || (sqlite3_column_type(st, 2) != SQLITE_NULL && !p.id) ||
            (sqlite3_column_type(st, 3) != SQLITE_NULL && !p.number) ||
            (sqlite3_column_type(st, 4) != SQLITE_NULL && !p.reason) ||
            (sqlite3_column_type(st, 9) != SQLITE_NULL && !p.provider) ||
            (sqlite3_column_type(st, 10) != SQLITE_NULL && !p.scheduled_release_at) ||
            (sqlite3_column_type(st, 11) != SQLITE_NULL && !p.last_error) ||
            (sqlite3_column_type(st, 12) != SQLITE_NULL && !p.declared_at) ||
            (sqlite3_column_type(st, 16) != SQLITE_NULL && !p.api_number) ||
            (sqlite3_column_type(st, 20) != SQLITE_NULL && !p.nickname) ||
            (sqlite3_column_type(st, 21) != SQLITE_NULL && !p.inbound_agent) ||
            (sqlite3_column_type(st, 22) != SQLITE_NULL && !p.outbound_agent)) {
                phone_done(&p);
                return -ENOMEM;
        }
        /* The CHECK constraint keeps states valid; a file edited by hand may not. */
        if (p.state < 0) {
                phone_done(&p);
                return -EBADMSG;
        }
        *ret = p;
        return 0;
}

int ledger_counts(Ledger *l, uint64_t counts[static _STATE_MAX]) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        memset(counts, 0, sizeof(uint64_t) * _STATE_MAX);
        rc = sqlite3_prepare_v2(l->db, "SELECT state, count(*) FROM phones GROUP BY state", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                PhoneState s = state_from_string((const char *) sqlite3_column_text(st, 0));
                if (s < 0)
                        return -EBADMSG;
                counts[s] = (uint64_t) sqlite3_column_int64(st, 1);
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

static int each_phone(sqlite3_stmt *st, int (*cb)(const Phone *p, void *userdata), void *userdata) {
        int rc, r;

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                Phone p;
                r = ledger_phone_from_row(st, &p);
                if (r < 0)
                        return r;
                r = cb(&p, userdata);
                phone_done(&p);
                if (r < 0)
                        return r;
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* A query with integer parameters and one integer answer; -ENOENT when the
 * answer is NULL. */
int ledger_query_intv(Ledger *l, const char *sql, int64_t *ret, int n, ...) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        va_list ap;
        int rc;

        rc = sqlite3_prepare_v2(l->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        va_start(ap, n);
        for (int i = 1; i <= n; i++)
                (void) sqlite3_bind_int64(st, i, va_arg(ap, int64_t));
        va_end(ap);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return sqlite_row_errno(rc);
        if (sqlite3_column_type(st, 0) == SQLITE_NULL)
                return -ENOENT;
        *ret = sqlite3_column_int64(st, 0);
        return 0;
}

int ledger_query_int(Ledger *l, const char *sql, int64_t *ret) {
        return ledger_query_intv(l, sql, ret, 0);
}

int ledger_list(Ledger *l, int state, int (*cb)(const Phone *p, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(l->db, "SELECT " PHONE_COLUMNS_RELEASED_AT " FROM phones WHERE ?1 IS NULL OR state = ?1 ORDER BY pk",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        if (state >= 0)
                (void) sqlite3_bind_text(st, 1, state_to_string(state), -1, SQLITE_STATIC);
        return each_phone(st, cb, userdata);
}

/* A hold not over by the boot-time clock: stamped in another boot, it has
 * not been started again in this one yet (ledger_holds_restart()). */
#define HELD_BY_BOOT \
        "(hold_boot_until != 0 AND (hold_boot IS NOT boot_id() OR hold_boot_until > boot_usec()))"

/* When the boot-time hold ends, in seconds on our clock ?1 (usec): in
 * another boot, it starts again from the next start. */
#define HOLD_END_WALL \
        "CASE WHEN hold_boot_until = 0 THEN 0" \
        " WHEN hold_boot IS boot_id() THEN (?1 + max(hold_boot_until - boot_usec(), 0) + 999999) / 1000000" \
        " ELSE (?1 + 999999) / 1000000 + hold_len END"

/* ?1 our clock, ?2 resync, ?3 the due clock (usec). */
#define DUE_WHERE \
        "((sent_at != 0 AND state IN ('in_flight', 'cancelled') AND next_at <= ?1) OR state = 'in_use'" \
        " OR (not_before <= ?3 / 1000000 AND NOT " HELD_BY_BOOT " AND" \
        "  (state = 'pending' OR (state = 'retrying' AND next_at <= ?1)" \
        "   OR (?2 AND state IN ('deferred', 'scheduled', 'unresolved')))))"

static const char *const due_sets[_DUE_MAX] = {
        [DUE_LOOKS] = "sent_at != 0",
        [DUE_BY_ID] = "sent_at = 0 AND id IS NOT NULL",
        [DUE_BY_NUMBER] = "sent_at = 0 AND id IS NULL",
        [DUE_REST] = "sent_at = 0",
};

int ledger_due(Ledger *l, const DueQuery *q, int64_t after, unsigned limit,
               int (*cb)(const Phone *p, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        char sql[1024];
        int rc;

        if (q->set < 0 || q->set >= _DUE_MAX)
                return -EINVAL;
        /* By pk from `after` on: the rowid is the index, a batch costs what it reads. */
        snprintf(sql, sizeof sql, "SELECT " PHONE_COLUMNS " FROM phones WHERE pk > ?4 AND %s AND " DUE_WHERE
                 " ORDER BY pk LIMIT ?5", due_sets[q->set]);
        rc = sqlite3_prepare_v2(l->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, q->now);
        (void) sqlite3_bind_int(st, 2, q->resync);
        (void) sqlite3_bind_int64(st, 3, q->due_now);
        (void) sqlite3_bind_int64(st, 4, after);
        (void) sqlite3_bind_int64(st, 5, limit);
        return each_phone(st, cb, userdata);
}

int ledger_due_count(Ledger *l, const DueQuery *q, uint64_t ret[static _DUE_MAX]) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(l->db, "SELECT count(*) FILTER (WHERE sent_at != 0),"
                                " count(*) FILTER (WHERE sent_at = 0 AND id IS NOT NULL),"
                                " count(*) FILTER (WHERE sent_at = 0 AND id IS NULL)"
                                " FROM phones WHERE " DUE_WHERE, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, q->now);
        (void) sqlite3_bind_int(st, 2, q->resync);
        (void) sqlite3_bind_int64(st, 3, q->due_now);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return sqlite_row_errno(rc);
        ret[DUE_LOOKS] = (uint64_t) sqlite3_column_int64(st, 0);
        ret[DUE_BY_ID] = (uint64_t) sqlite3_column_int64(st, 1);
        ret[DUE_BY_NUMBER] = (uint64_t) sqlite3_column_int64(st, 2);
        ret[DUE_REST] = ret[DUE_BY_ID] + ret[DUE_BY_NUMBER];
        return 0;
}

int ledger_cached(Ledger *l, LedgerStmt which, const char *sql, sqlite3_stmt **ret) {
        int rc;

        if (!l->cached[which]) {
                rc = sqlite3_prepare_v3(l->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &l->cached[which], NULL);
                if (rc != SQLITE_OK)
                        return sqlite_to_errno(rc);
        }
        *ret = l->cached[which];
        return 0;
}

int ledger_knows_phone(Ledger *l, const char *id, const char *number) {
        sqlite3_stmt *st = NULL;
        int rc, r;

        r = ledger_cached(l, STMT_KNOWS, "SELECT EXISTS (SELECT 1 FROM phones WHERE id = ?1)"
                          " OR EXISTS (SELECT 1 FROM phones WHERE number = ?2)", &st);
        if (r < 0)
                return r;
        (void) sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, number, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        r = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : sqlite_row_errno(rc);
        (void) sqlite3_reset(st);
        return r;
}

int ledger_next_due(Ledger *l, int64_t now, int64_t due_now, bool looks_only, int64_t *ret) {
        /* not_before is on the due clock; ?2 turns it into ours.  A row held
         * by the boot-time clock wakes by ledger_next_hold_end() instead. */
        return ledger_query_intv(l, "SELECT min(t) FROM ("
                         " SELECT max(next_at, not_before * 1000000 + ?2) AS t FROM phones WHERE state = 'retrying'"
                         "  AND (NOT ?3 OR sent_at != 0) AND NOT " HELD_BY_BOOT
                         " UNION ALL SELECT next_at FROM phones WHERE sent_at != 0 AND state IN ('in_flight', 'cancelled')"
                         " UNION ALL SELECT not_before * 1000000 + ?2 FROM phones WHERE state = 'pending' AND NOT ?3"
                         "  AND not_before * 1000000 > ?1 - ?2)", ret, 3, now, now - due_now, (int64_t) looks_only);
}

int ledger_next_hold_end(Ledger *l, int64_t after, int64_t *ret) {
        return ledger_query_intv(l, "SELECT min(hold_boot_until) FROM phones INDEXED BY phones_boot_held"
                         " WHERE hold_boot_until != 0 AND state IN ('pending', 'retrying') AND sent_at = 0"
                         " AND hold_boot IS boot_id() AND hold_boot_until > ?1", ret, 1, after);
}

int ledger_holds_restart(Ledger *l, uint64_t *ret) {
        int r;

        r = ledger_exec(l, "UPDATE phones INDEXED BY phones_boot_held"
                        " SET hold_boot = boot_id(), hold_boot_until = boot_usec() + hold_len * 1000000"
                        " WHERE hold_boot_until != 0 AND state IN ('pending', 'retrying') AND sent_at = 0"
                        " AND hold_boot IS NOT boot_id()");
        if (r < 0)
                return r;
        *ret = (uint64_t) sqlite3_changes(l->db);
        return 0;
}

int ledger_count_held(Ledger *l, int64_t now, uint64_t *ret, int64_t *ret_first) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        /* Held by the hold rather than by its not_before: the hold ends
         * later.  The status asks once a second during a pass: the partial
         * index keeps that to the rows held. */
        rc = sqlite3_prepare_v2(l->db, "SELECT count(*), coalesce(min(e), 0) FROM ("
                                " SELECT not_before, " HOLD_END_WALL " AS e FROM phones INDEXED BY phones_boot_held"
                                " WHERE hold_boot_until != 0 AND state IN ('pending', 'retrying') AND sent_at = 0"
                                " AND " HELD_BY_BOOT ") WHERE e >= not_before", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, now);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return sqlite_row_errno(rc);
        *ret = (uint64_t) sqlite3_column_int64(st, 0);
        *ret_first = sqlite3_column_int64(st, 1);
        return 0;
}

int ledger_count_unsettled(Ledger *l, int64_t due_now, bool due_pending, unsigned max_attempts,
                           uint64_t *ret, uint64_t *ret_stuck) {
        int64_t v, stuck;
        int r;

        r = ledger_query_intv(l, "SELECT count(*) FROM phones WHERE (state = 'in_flight')"
                      " OR (state IN ('retrying', 'cancelled') AND sent_at != 0 AND attempts <= ?3)"
                      " OR (state = 'retrying' AND sent_at = 0)"
                      " OR (?2 AND state = 'pending' AND not_before <= ?1 / 1000000 AND NOT " HELD_BY_BOOT ")",
                      &v, 3, due_now, (int64_t) due_pending, (int64_t) max_attempts);
        if (r < 0)
                return r;
        r = ledger_query_intv(l, "SELECT count(*) FROM phones WHERE state IN ('retrying', 'cancelled') AND sent_at != 0"
                      " AND attempts > ?1", &stuck, 1, (int64_t) max_attempts);
        if (r < 0)
                return r;
        *ret = (uint64_t) v;
        if (ret_stuck)
                *ret_stuck = (uint64_t) stuck;
        return 0;
}

int ledger_find(Ledger *l, const char *what, Phone *ret) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        _cleanup_free_ char *norm = NULL;
        char id[UUID_STRING_LEN + 1];
        int rc;

        /* An id pasted in capitals finds its row, kept in lowercase. */
        if (uuid_canonical(what, id))
                what = id;
        /* "+34 910 123 456" finds the row of "+34910123456". */
        if (number_normalize(what, &norm) < 0)
                norm = NULL;
        rc = sqlite3_prepare_v2(l->db, "SELECT " PHONE_COLUMNS_RELEASED_AT " FROM phones WHERE key = ?1 OR id = ?1"
                                " OR coalesce(number, api_number) IN (?1, ?2)"
                                " ORDER BY key = ?1 DESC, pk DESC LIMIT 1", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_text(st, 1, what, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, norm, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return sqlite_to_errno(rc);
        return ledger_phone_from_row(st, ret);
}

int ledger_begin(Ledger *l) {
        /* No write of ours starts inside another: a transaction still open
         * here is one a failed ROLLBACK left, nothing of it committed, and
         * it would fail every later write until a restart. */
        if (!sqlite3_get_autocommit(l->db))
                (void) ledger_exec(l, "ROLLBACK");
        return ledger_exec(l, "BEGIN IMMEDIATE");
}

int ledger_update(Ledger *l, const LedgerUpdate *u) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        int rc, r;

        r = ledger_begin(l);
        if (r < 0)
                return r;
        if (u->method) {
                r = ledger_history_add(l, u->pk, t, "call", NULL, NULL, u->method, u->path,
                                       u->http_status, u->latency_ms, u->to == u->from ? u->detail : NULL);
                if (r < 0)
                        goto fail;
        }
        /* A released row keeps no error: what failed before no longer needs
         * an operator, and the history still tells it. */
        rc = sqlite3_prepare_v2(l->db,
                                "UPDATE phones SET state = ?3, id = coalesce(?4, id), provider = coalesce(?5, provider),"
                                " scheduled_release_at = coalesce(?6, scheduled_release_at),"
                                " attempts = CASE WHEN ?7 >= 0 THEN ?7 ELSE attempts END,"
                                " next_at = CASE WHEN ?8 >= 0 THEN ?8 ELSE next_at END,"
                                " last_error = CASE WHEN ?3 = 'released' THEN NULL ELSE coalesce(?9, last_error) END,"
                                " updated_at = ?10,"
                                " api_number = coalesce(?11, api_number),"
                                " sent_at = CASE WHEN ?14 > 0 THEN ?14 WHEN ?15 THEN 0 ELSE sent_at END,"
                                /* Its DELETE leaves: the hold is over for good. */
                                " hold_boot_until = CASE WHEN ?13 > 0 THEN 0 ELSE hold_boot_until END,"
                                " nickname = coalesce(?16, nickname),"
                                /* The agents of a phone in use, while it is: no longer once it is not. */
                                " inbound_agent = CASE WHEN ?3 != 'in_use' THEN NULL WHEN ?17 IS NULL AND ?18 IS NULL"
                                "   THEN inbound_agent ELSE ?17 END,"
                                " outbound_agent = CASE WHEN ?3 != 'in_use' THEN NULL WHEN ?17 IS NULL AND ?18 IS NULL"
                                "   THEN outbound_agent ELSE ?18 END"
                                " WHERE pk = ?1 AND state = ?2 AND (?12 <= 0 OR version = ?12)"
                                " AND (?13 <= 0 OR (not_before * 1000000 <= ?13 AND NOT " HELD_BY_BOOT "))", -1, &st, NULL);
        if (rc != SQLITE_OK) {
                r = sqlite_to_errno(rc);
                goto fail;
        }
        (void) sqlite3_bind_int64(st, 1, u->pk);
        (void) sqlite3_bind_text(st, 2, state_to_string(u->from), -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 3, state_to_string(u->to), -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 4, u->id, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 5, u->provider, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 6, u->scheduled_release_at, -1, SQLITE_STATIC);
        (void) sqlite3_bind_int(st, 7, u->attempts);
        (void) sqlite3_bind_int64(st, 8, u->next_at);
        (void) sqlite3_bind_text(st, 9, u->error, -1, SQLITE_STATIC);
        (void) sqlite3_bind_int64(st, 10, t);
        (void) sqlite3_bind_text(st, 11, u->api_number, -1, SQLITE_STATIC);
        (void) sqlite3_bind_int64(st, 12, u->version);
        (void) sqlite3_bind_int64(st, 13, u->due_by);
        (void) sqlite3_bind_int64(st, 14, u->sent_at);
        (void) sqlite3_bind_int(st, 15, u->clear_sent);
        (void) sqlite3_bind_text(st, 16, u->nickname, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 17, u->inbound_agent, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 18, u->outbound_agent, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
                r = sqlite_to_errno(rc);
                goto fail;
        }
        if (sqlite3_changes(l->db) != 1) {
                r = -ESTALE;
                goto fail;
        }
        if (u->to != u->from) {
                r = ledger_history_add(l, u->pk, t, "state", state_to_string(u->from),
                                       state_to_string(u->to), NULL, NULL, 0, 0, u->detail);
                if (r < 0)
                        goto fail;
        }
        r = ledger_exec(l, "COMMIT");
        if (r >= 0)
                return 0;
fail:
        (void) ledger_exec(l, "ROLLBACK");
        return r;
}

int ledger_state(Ledger *l, int64_t pk, PhoneState *ret_state, int64_t *ret_version) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        PhoneState s;
        int rc;

        rc = sqlite3_prepare_v2(l->db, "SELECT state, version FROM phones WHERE pk = ?", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, pk);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return sqlite_to_errno(rc);
        s = state_from_string((const char *) sqlite3_column_text(st, 0));
        if (s < 0)
                return -EBADMSG;
        if (ret_state)
                *ret_state = s;
        if (ret_version)
                *ret_version = sqlite3_column_int64(st, 1);
        return 0;
}

int ledger_meta_get(Ledger *l, const char *name, char **ret) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(l->db, "SELECT value FROM meta WHERE name = ?", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return sqlite_to_errno(rc);
        *ret = col_strdup(st, 0);
        return *ret ? 0 : -ENOMEM;
}

int ledger_meta_set(Ledger *l, const char *name, const char *value) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(l->db, "INSERT INTO meta (name, value) VALUES (?1, ?2) "
                                "ON CONFLICT (name) DO UPDATE SET value = ?2", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int ledger_retry(Ledger *l, const char *what, char **message) {
        _cleanup_(phone_done) Phone p = {};
        int r;

        *message = NULL;
        r = ledger_find(l, what, &p);
        if (r == -ENOENT) {
                set_error(message, "no phone %s in the ledger", what);
                return r;
        }
        if (r < 0) {
                set_error(message, "cannot read the ledger: %s", ledger_errmsg(l));
                return r;
        }
        /* An in_use row, pending again, is looked at now: released under
         * the ordinary rules if no agent is on it any more, else in_use again. */
        if (p.state != STATE_FAILED && p.state != STATE_IN_USE) {
                set_error(message, "%s is %s, not failed or in_use", what, state_to_string(p.state));
                return -EBUSY;
        }
        r = ledger_update(l, &(LedgerUpdate) {
                .pk = p.pk, .from = p.state, .to = STATE_PENDING, .attempts = 0, .next_at = 0,
                .detail = "retry requested by an operator",
        });
        if (r == -ESTALE)
                set_error(message, "%s changed meanwhile; look again with 'retirectl show'", what);
        else if (r < 0)
                set_error(message, "cannot write the ledger: %s", ledger_errmsg(l));
        else
                set_error(message, "%s is pending again", what);
        return r;
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

        rc = sqlite3_prepare_v2(l->db, "DELETE FROM meta WHERE name = 'pause'", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        rc = sqlite3_step(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}
