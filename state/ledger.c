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
        char *path;         /* a writer's, for ledger_discard() */
        bool created;       /* this open made the file, and no start has kept it yet */
        bool decls_unmatched;   /* rows were added that temp.decl does not name yet */
        /* ledger_counts()' last answer, good while neither this connection
         * (phones_gen) nor another (data_version) has changed phones since. */
        uint64_t phones_gen;
        bool counted;
        uint64_t counted_gen;
        int64_t counted_version;
        uint64_t counts[_STATE_MAX];
        sqlite3_stmt *cached[_STMT_MAX];   /* asked once per listed phone, or per row of a pass */
        bool (*progress)(void *userdata);
        void *progress_userdata;
        char boot_id[SD_ID128_STRING_MAX];   /* boot_id() in SQL */
};

/* Any row of phones changed, even in a statement or a transaction taken
 * back later: a count from before may be wrong, and is made again. */
static void on_row_changed(void *userdata, int op, const char *db, const char *table, sqlite3_int64 rowid) {
        Ledger *l = userdata;

        (void) op;
        (void) rowid;
        if (streq(db, "main") && streq(table, "phones"))
                l->phones_gen++;
}

static void on_rollback(void *userdata) {
        Ledger *l = userdata;

        l->phones_gen++;
}

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
void ledger_set_error(char **error, const char *fmt, ...) {
        va_list ap;

        if (!error || *error)
                return;
        va_start(ap, fmt);
        if (vasprintf(error, fmt, ap) < 0)
                *error = NULL;
        va_end(ap);
}

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

int ledger_user_version(sqlite3 *db, int *ret) {
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

/* One writer per file, however it is named: flock() locks the inode, so a
 * second writer through a hard link or a symlink meets the same lock.  (It is
 * not the POSIX lock SQLite uses, so the two never interfere; the fd stays
 * open until after SQLite's own are closed, see ledger_close().) */
static int lock_file(Ledger *l, const char *path, char **error) {
        int fd;

        /* Made here, it may go again (ledger_discard()): a start that
         * fails leaves no ledger behind, and no other file is ever taken. */
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
        l->created = fd >= 0;
        if (fd < 0 && errno == EEXIST)
                fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                ledger_set_error(error, "%s: cannot open the ledger: %m", path);
                return negative_errno();
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                int r = negative_errno();

                (void) close(fd);
                if (r == -EWOULDBLOCK)
                        ledger_set_error(error, "%s is in use by another writer (a running retired, or retirectl "
                                  "writing it); a ledger has one writer at a time", path);
                else
                        ledger_set_error(error, "%s: cannot lock the ledger: %s", path, strerror(-r));
                return r;
        }
        l->lock_fd = fd;
        l->path = strdup(path);
        return l->path ? 0 : -ENOMEM;
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
                ledger_set_error(error, "%s: cannot open ledger: %s", path,
                          l->db ? sqlite3_errmsg(l->db) : sqlite3_errstr(rc));
                return sqlite_to_errno(rc);
        }
        (void) sqlite3_extended_result_codes(l->db, 1);
        (void) sqlite3_update_hook(l->db, on_row_changed, l);
        (void) sqlite3_rollback_hook(l->db, on_rollback, l);
        /* Set before switching to WAL: the switch itself may need to wait. */
        (void) sqlite3_busy_timeout(l->db, LEDGER_BUSY_MS);
        r = add_boot_functions(l);
        if (r < 0) {
                ledger_set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        /* The declared set and the plan are TEMP tables: in an unlinked
         * file (in the unit's private /var/tmp), of which a bounded cache
         * is in memory, so a million declarations cost no more memory
         * than ten. */
        r = ledger_exec(l, "PRAGMA temp_store = FILE; PRAGMA temp.cache_size = -4096");
        if (r < 0) {
                ledger_set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
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
        r = ledger_user_version(l->db, &v);
        if (r < 0) {
                ledger_set_error(error, "%s: cannot read ledger: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        if (v > LEDGER_SCHEMA_VERSION) {
                ledger_set_error(error, "%s: ledger schema version %d is newer than this retired understands (%d); "
                          "refusing to touch it", path, v, LEDGER_SCHEMA_VERSION);
                return -EPROTO;
        }
        if (l->mode == LEDGER_WRITE && sqlite3_db_readonly(l->db, "main") == 1) {
                ledger_set_error(error, "%s: the ledger is read-only for this user", path);
                return -EACCES;
        }
        if (l->mode == LEDGER_WRITE) {
                /* A new file is filled by one transaction (a first start of
                 * a million declarations) with a rollback journal: in WAL
                 * mode it would be written twice, the WAL as large as the
                 * file until the checkpoint.  A new file's journal only
                 * holds its few first pages.  ledger_settle() then goes
                 * to WAL, which lets readers in beside the writer.  The WAL
                 * is given back down to 64 MiB after a large commit. */
                r = ledger_exec(l, l->created ? "PRAGMA journal_mode = DELETE" : "PRAGMA journal_mode = WAL");
                if (r >= 0)
                        r = ledger_exec(l, "PRAGMA journal_size_limit = " LEDGER_WAL_LIMIT);
                if (r >= 0)
                        r = ledger_exec(l, "PRAGMA synchronous = FULL");
                if (r >= 0)
                        r = ledger_exec(l, "PRAGMA foreign_keys = ON");
                if (r < 0) {
                        ledger_set_error(error, "%s: %s", path, sqlite3_errmsg(l->db));
                        return r;
                }
        }
        return ledger_migrate(l, path, error);
}

/* A ledger file opened read-only: it cannot be migrated here, so it must
 * already be at the current schema. */
static int check_readable(Ledger *l, const char *path, char **error) {
        int r, v;

        r = ledger_user_version(l->db, &v);
        if (r < 0) {
                ledger_set_error(error, "%s: cannot read ledger: %s", path, sqlite3_errmsg(l->db));
                return r;
        }
        if (v > LEDGER_SCHEMA_VERSION) {
                ledger_set_error(error, "%s: ledger schema version %d is newer than this retirectl understands (%d)",
                          path, v, LEDGER_SCHEMA_VERSION);
                return -EPROTO;
        }
        if (v != LEDGER_SCHEMA_VERSION) {
                ledger_set_error(error, "%s: ledger schema version %d needs migrating to %d; start retired once",
                          path, v, LEDGER_SCHEMA_VERSION);
                return -EPROTO;
        }
        return 0;
}

/* An open that fails takes back the file it made. */
static void ledger_discardp(Ledger **l) {
        (void) ledger_discard(*l);
}

int ledger_open(const char *path, LedgerMode mode, Ledger **ret, char **error) {
        _cleanup_(ledger_discardp) Ledger *l = NULL;
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

/* Every statement and the connection; the lock stays. */
static void close_db(Ledger *l) {
        for (size_t i = 0; i < _STMT_MAX; i++)
                l->cached[i] = (sqlite3_finalize(l->cached[i]), NULL);
        (void) sqlite3_close_v2(l->db);
        l->db = NULL;
}

Ledger *ledger_close(Ledger *l) {
        if (!l)
                return NULL;
        close_db(l);
        /* Only now: closing any fd of the file drops this process's POSIX
         * locks on it, SQLite's included. */
        if (l->lock_fd >= 0)
                (void) close(l->lock_fd);
        free(l->path);
        free(l);
        return NULL;
}

bool ledger_created(const Ledger *l) {
        return l->created;
}

Ledger *ledger_discard(Ledger *l) {
        static const char *const sides[] = { "-journal", "-wal", "-shm", "" };
        struct stat a, b;

        if (!l || !l->created)
                return ledger_close(l);
        /* While the lock is held, no other writer can have taken the file;
         * and it must still be the file this open made, not one put in
         * its place since. */
        if (fstat(l->lock_fd, &a) < 0 || stat(l->path, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
                return ledger_close(l);
        close_db(l);
        for (size_t i = 0; i < ELEMENTSOF(sides); i++) {
                _cleanup_free_ char *side = NULL;

                if (asprintf_or_null(&side, "%s%s", l->path, sides[i]) >= 0)
                        (void) unlink(side);
        }
        return ledger_close(l);
}

int ledger_settle(Ledger *l) {
        int rc, r = 0;

        if (l->mode != LEDGER_WRITE)
                return 0;
        l->created = false;
        /* Neither waits: a reader that holds the file now is met again at
         * the next settle (and journal_size_limit bounds the WAL at its next
         * reset meanwhile). */
        (void) sqlite3_busy_timeout(l->db, 0);
        if (!sqlite3_db_readonly(l->db, "main")) {
                _cleanup_stmt_ sqlite3_stmt *st = NULL;

                rc = sqlite3_prepare_v2(l->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
                if (rc == SQLITE_OK)
                        rc = sqlite3_step(st);
                if (rc == SQLITE_ROW && !streq_ptr((const char *) sqlite3_column_text(st, 0), "wal"))
                        rc = SQLITE_BUSY;
                r = rc == SQLITE_ROW ? 0 : sqlite_to_errno(rc);
        }
        if (r >= 0) {
                rc = sqlite3_wal_checkpoint_v2(l->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
                r = sqlite_to_errno(rc);
        }
        (void) sqlite3_busy_timeout(l->db, LEDGER_BUSY_MS);
        return r;
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

bool *ledger_decls_unmatched(Ledger *l) {
        return &l->decls_unmatched;
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

/* The status counts every row, once a second during a pass and at each
 * `retirectl status`: 50 to 90 ms at a million rows, with the loop stopped.
 * Most of those asks come while nothing changed (a pass waiting for its
 * time, or for the API), and get the last answer. */
int ledger_counts(Ledger *l, uint64_t counts[static _STATE_MAX]) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int64_t version;
        uint64_t gen = l->phones_gen;
        int rc, r;

        r = ledger_query_int(l, "PRAGMA data_version", &version);
        if (r < 0)
                return r;
        if (l->counted && l->counted_gen == gen && l->counted_version == version) {
                memcpy(counts, l->counts, sizeof(uint64_t) * _STATE_MAX);
                return 0;
        }
        l->counted = false;
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
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        memcpy(l->counts, counts, sizeof(uint64_t) * _STATE_MAX);
        l->counted_gen = gen;
        l->counted_version = version;
        l->counted = true;
        return 0;
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

/* Each set walked by pk, a batch reading about the rows it takes.  Left to
 * itself, SQLite gathers every due row through phones_state and sorts them,
 * for each batch; the rows whose DELETE went out (few) have their own index,
 * and so have the rows with no id. */
static const char *const due_sets[_DUE_MAX] = {
        [DUE_LOOKS] = "phones INDEXED BY phones_sent WHERE sent_at != 0",
        [DUE_BY_ID] = "phones NOT INDEXED WHERE sent_at = 0 AND id IS NOT NULL",
        [DUE_BY_NUMBER] = "phones INDEXED BY phones_id WHERE sent_at = 0 AND id IS NULL",
        [DUE_REST] = "phones NOT INDEXED WHERE sent_at = 0",
};

int ledger_due(Ledger *l, const DueQuery *q, int64_t after, unsigned limit,
               int (*cb)(const Phone *p, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        char sql[1024];
        int rc;

        if (q->set < 0 || q->set >= _DUE_MAX)
                return -EINVAL;
        /* By pk from `after` on: the rowid is the index, a batch costs what it reads. */
        snprintf(sql, sizeof sql, "SELECT " PHONE_COLUMNS " FROM %s AND pk > ?4 AND " DUE_WHERE
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

int ledger_due_count_range(Ledger *l, const DueQuery *q, int64_t after, int64_t upto, uint64_t ret[static _DUE_MAX]) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(l->db, "SELECT count(*) FILTER (WHERE sent_at != 0),"
                                " count(*) FILTER (WHERE sent_at = 0 AND id IS NOT NULL),"
                                " count(*) FILTER (WHERE sent_at = 0 AND id IS NULL)"
                                " FROM phones NOT INDEXED WHERE pk > ?4 AND pk <= ?5 AND " DUE_WHERE, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, q->now);
        (void) sqlite3_bind_int(st, 2, q->resync);
        (void) sqlite3_bind_int64(st, 3, q->due_now);
        (void) sqlite3_bind_int64(st, 4, after);
        (void) sqlite3_bind_int64(st, 5, upto);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return sqlite_row_errno(rc);
        ret[DUE_LOOKS] += (uint64_t) sqlite3_column_int64(st, 0);
        ret[DUE_BY_ID] += (uint64_t) sqlite3_column_int64(st, 1);
        ret[DUE_BY_NUMBER] += (uint64_t) sqlite3_column_int64(st, 2);
        ret[DUE_REST] = ret[DUE_BY_ID] + ret[DUE_BY_NUMBER];
        return 0;
}

int ledger_due_count(Ledger *l, const DueQuery *q, uint64_t ret[static _DUE_MAX]) {
        memset(ret, 0, sizeof(uint64_t) * _DUE_MAX);
        return ledger_due_count_range(l, q, INT64_MIN, INT64_MAX, ret);
}

int ledger_last_pk(Ledger *l, int64_t *ret) {
        return ledger_query_intv(l, "SELECT coalesce(max(pk), 0) FROM phones", ret, 0);
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
                         /* not_before != 0 and the bound on it (implied: ?1 - ?2 is a time) let
                          * the smallest come from phones_dated, not from every pending row. */
                         " UNION ALL SELECT min(not_before) * 1000000 + ?2 FROM phones INDEXED BY phones_dated"
                         "  WHERE state = 'pending' AND NOT ?3"
                         "  AND not_before != 0 AND not_before >= (?1 - ?2) / 1000000"
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
        /* By key, then by id or declared number (the latest row), through
         * their indexes; only then by the number the API gave, which is not
         * indexed: that reads every row, a second at a million. */
        static const char *const sql[] = {
                "SELECT " PHONE_COLUMNS_RELEASED_AT " FROM phones WHERE key = ?1",
                "SELECT " PHONE_COLUMNS_RELEASED_AT " FROM phones WHERE id = ?1 OR number IN (?1, ?2)"
                " ORDER BY pk DESC LIMIT 1",
                "SELECT " PHONE_COLUMNS_RELEASED_AT " FROM phones WHERE number IS NULL AND api_number IN (?1, ?2)"
                " ORDER BY pk DESC LIMIT 1",
        };

        for (size_t i = 0; i < ELEMENTSOF(sql); i++) {
                st = (sqlite3_finalize(st), NULL);
                rc = sqlite3_prepare_v2(l->db, sql[i], -1, &st, NULL);
                if (rc != SQLITE_OK)
                        return sqlite_to_errno(rc);
                (void) sqlite3_bind_text(st, 1, what, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(st, 2, norm, -1, SQLITE_STATIC);
                rc = sqlite3_step(st);
                if (rc != SQLITE_DONE)
                        break;
        }
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

int ledger_retry(Ledger *l, const char *what, char **message) {
        _cleanup_(phone_done) Phone p = {};
        int r;

        *message = NULL;
        r = ledger_find(l, what, &p);
        if (r == -ENOENT) {
                ledger_set_error(message, "no phone %s in the ledger", what);
                return r;
        }
        if (r < 0) {
                ledger_set_error(message, "cannot read the ledger: %s", ledger_errmsg(l));
                return r;
        }
        /* An in_use row, pending again, is looked at now: released under
         * the ordinary rules if no agent is on it any more, else in_use again. */
        if (p.state != STATE_FAILED && p.state != STATE_IN_USE) {
                ledger_set_error(message, "%s is %s, not failed or in_use", what, state_to_string(p.state));
                return -EBUSY;
        }
        r = ledger_update(l, &(LedgerUpdate) {
                .pk = p.pk, .from = p.state, .to = STATE_PENDING, .attempts = 0, .next_at = 0,
                .detail = "retry requested by an operator",
        });
        if (r == -ESTALE)
                ledger_set_error(message, "%s changed meanwhile; look again with 'retirectl show'", what);
        else if (r < 0)
                ledger_set_error(message, "cannot write the ledger: %s", ledger_errmsg(l));
        else
                ledger_set_error(message, "%s is pending again", what);
        return r;
}
