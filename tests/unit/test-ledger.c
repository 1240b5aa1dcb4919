/* SPDX-License-Identifier: MIT */
/* The ledger: file format, refusal of newer files, append-only history,
 * atomic updates, and lookups. */

#include "unit.h"

#include <inttypes.h>

#include <sqlite3.h>

#include "macro.h"
#include "internal.h"   /* ledger_db(), to write rows and read pragmas directly */

#define UUID_A "3c90c3cc-0d44-4b50-8888-8dd25736052a"
#define UUID_B "00000000-0000-0000-0000-0000000000b0"
#define UUID_C "00000000-0000-0000-0000-0000000000c0"

/* ---- helpers ------------------------------------------------------------ */

typedef struct Fixture {
        char *dir, *path;
        Ledger *l;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        char *error = NULL;

        assert_non_null(f);
        f->dir = tmpdir_new();
        f->path = path_join(f->dir, "ledger.db");
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, &error), 0);
        assert_null(error);
        /* As the daemon leaves it once a start applied its plan: in WAL. */
        assert_int_equal(ledger_settle(f->l), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        ledger_close(f->l);
        free(f->path);
        tmpdir_remove(f->dir);
        free(f);
        return 0;
}

/* A row as the plan would create it, written directly so that these tests
 * do not depend on state/plan.c. */
static int64_t add_phone(Ledger *l, const char *key, const char *id, const char *number, PhoneState s) {
        sqlite3_stmt *st;

        assert_int_equal(sqlite3_prepare_v2(ledger_db(l),
                                            "INSERT INTO phones (key, id, number, state, created_at, updated_at)"
                                            " VALUES (?, ?, ?, ?, 1, 1)", -1, &st, NULL), SQLITE_OK);
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, number, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, state_to_string(s), -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
        return sqlite3_last_insert_rowid(ledger_db(l));
}

/* One value from a query on its own connection to the file. */
static char *query_text(const char *path, const char *sql) {
        sqlite3 *db;
        sqlite3_stmt *st;
        char *v = NULL;

        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
                v = strdup((const char *) sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        sqlite3_close(db);
        return v;
}

static int query_int(const char *path, const char *sql) {
        char *v = query_text(path, sql);
        int n;

        assert_non_null(v);
        n = atoi(v);
        free(v);
        return n;
}

static void set_user_version(const char *path, int v) {
        char sql[64];
        sqlite3 *db;

        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
}

/* The phones table's SQL with one text replaced, as a migration through
 * writable_schema does it (on the writer's connection). */
static void replace_in_phones_sql(Ledger *l, const char *from, const char *to) {
        sqlite3 *db = ledger_db(l);
        sqlite3_stmt *st;
        char sql[64];
        int v;

        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA schema_version", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        v = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        assert_int_equal(sqlite3_exec(db, "PRAGMA writable_schema = ON", NULL, NULL, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "UPDATE sqlite_schema SET sql = replace(sql, ?1, ?2) WHERE name = 'phones'",
                                            -1, &st, NULL), SQLITE_OK);
        (void) sqlite3_bind_text(st, 1, from, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, to, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
        snprintf(sql, sizeof sql, "PRAGMA schema_version = %d", v + 1);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, "PRAGMA writable_schema = OFF", NULL, NULL, NULL), SQLITE_OK);
}

#define STATES_IN "CHECK (state IN ('pending','deferred','in_flight','retrying',    'scheduled','released'," \
        "'failed','cancelled','unresolved','in_use'))"
#define STATES_OR "CHECK (state = 'pending' OR state = 'deferred' OR state = 'in_flight'" \
        " OR state = 'retrying' OR state = 'scheduled' OR state = 'released' OR state = 'failed'" \
        " OR state = 'cancelled' OR state = 'unresolved' OR state = 'in_use')"

/* The file as a version 5 retired left it: the states as an IN list. */
static void undo_version_6(Ledger *l) {
        assert_int_equal(sqlite3_exec(ledger_db(l), "DROP INDEX phones_sent; DROP INDEX phones_dated", NULL, NULL, NULL),
                         SQLITE_OK);
        replace_in_phones_sql(l, STATES_OR, STATES_IN);
}

/* What version 5 added, taken away again: the file is as a version 4
 * retired left it, its CHECK on the state without in_use. */
static void undo_version_5(Ledger *l) {
        undo_version_6(l);
        assert_int_equal(sqlite3_exec(ledger_db(l), "DROP TRIGGER phones_agents_while_in_use;"
                                      "ALTER TABLE phones DROP COLUMN nickname;"
                                      "ALTER TABLE phones DROP COLUMN inbound_agent;"
                                      "ALTER TABLE phones DROP COLUMN outbound_agent;"
                                      "ALTER TABLE phones DROP COLUMN release_in_use", NULL, NULL, NULL), SQLITE_OK);
        replace_in_phones_sql(l, ",'in_use'))", "))");
}

typedef struct HistRow {
        int64_t seq, at, latency_ms;
        char *kind, *old_state, *new_state, *method, *path, *detail;
        int http_status;
} HistRow;

typedef struct Hist {
        HistRow row[16];
        size_t n;
} Hist;

static char *dup_or_null(const char *s) {
        return s ? strdup(s) : NULL;
}

static int collect_history(const History *h, void *userdata) {
        Hist *hs = userdata;

        assert_true(hs->n < ELEMENTSOF(hs->row));
        hs->row[hs->n++] = (HistRow) {
                .seq = h->seq, .at = h->at, .latency_ms = h->latency_ms, .http_status = h->http_status,
                .kind = dup_or_null(h->kind), .old_state = dup_or_null(h->old_state),
                .new_state = dup_or_null(h->new_state), .method = dup_or_null(h->method),
                .path = dup_or_null(h->path), .detail = dup_or_null(h->detail),
        };
        return 0;
}

static void hist_done(Hist *hs) {
        for (size_t i = 0; i < hs->n; i++) {
                HistRow *r = &hs->row[i];
                free(r->kind), free(r->old_state), free(r->new_state);
                free(r->method), free(r->path), free(r->detail);
        }
        hs->n = 0;
}

static size_t history_count(Ledger *l, int64_t pk) {
        Hist hs = {};
        size_t n;

        assert_int_equal(ledger_history(l, pk, collect_history, &hs), 0);
        n = hs.n;
        hist_done(&hs);
        return n;
}

static PhoneState state_of(Ledger *l, const char *key) {
        Phone p;
        PhoneState s;

        assert_int_equal(ledger_find(l, key, &p), 0);
        s = p.state;
        phone_done(&p);
        return s;
}

/* ---- the file ----------------------------------------------------------- */

static char *journal_mode(Ledger *l) {
        sqlite3_stmt *st;
        char *mode;

        assert_int_equal(sqlite3_prepare_v2(ledger_db(l), "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        mode = strdup((const char *) sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        return mode;
}

/* A new ledger is filled by one large first transaction with a rollback
 * journal (no WAL as large as the file beside it), and is in WAL mode
 * once settled; an existing one is opened in WAL mode. */
static void test_a_new_ledger_has_a_rollback_journal_until_settled(void **state) {
        _cleanup_free_ char *dir = tmpdir_new(), *path = path_join(dir, "ledger.db");
        _cleanup_free_ char *m1 = NULL, *m2 = NULL, *m3 = NULL;
        Ledger *l = NULL;

        (void) state;
        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
        assert_true(ledger_created(l));
        m1 = journal_mode(l);
        assert_string_equal(m1, "delete");
        assert_int_equal(ledger_settle(l), 0);
        assert_false(ledger_created(l));
        m2 = journal_mode(l);
        assert_string_equal(m2, "wal");
        l = ledger_close(l);
        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
        assert_false(ledger_created(l));
        m3 = journal_mode(l);
        assert_string_equal(m3, "wal");
        ledger_close(l);
        tmpdir_remove(TAKE_PTR(dir));
}

/* A start that fails leaves no ledger it made, and never takes one away
 * that it did not make, or that a start kept. */
static void test_discard_removes_only_a_file_this_open_made(void **state) {
        _cleanup_free_ char *dir = tmpdir_new(), *path = path_join(dir, "ledger.db");
        _cleanup_free_ char *wal = NULL;
        Ledger *l = NULL;

        (void) state;
        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
        add_phone(l, "k1", NULL, "+34910000001", STATE_PENDING);
        l = ledger_discard(l);
        assert_null(l);
        assert_false(file_exists(path));
        assert_int_equal(asprintf(&wal, "%s-journal", path) >= 0, 1);
        assert_false(file_exists(wal));

        /* Kept by a settle: stays. */
        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
        assert_int_equal(ledger_settle(l), 0);
        l = ledger_discard(l);
        assert_true(file_exists(path));

        /* Opened, not made: stays, with its rows. */
        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
        add_phone(l, "k2", NULL, "+34910000002", STATE_PENDING);
        l = ledger_discard(l);
        assert_true(file_exists(path));
        assert_int_equal(query_int(path, "SELECT count(*) FROM phones"), 1);
        tmpdir_remove(TAKE_PTR(dir));
}

static void test_create_makes_a_wal_file_at_the_current_version(void **state) {
        Fixture *f = *state;
        char *mode, *tables;

        assert_true(file_exists(f->path));
        /* synchronous is per connection: ask the ledger's own. */
        {
                sqlite3_stmt *st;
                assert_int_equal(sqlite3_prepare_v2(ledger_db(f->l), "PRAGMA synchronous", -1, &st, NULL), SQLITE_OK);
                assert_int_equal(sqlite3_step(st), SQLITE_ROW);
                assert_int_equal(sqlite3_column_int(st, 0), 2);   /* FULL */
                sqlite3_finalize(st);
        }
        f->l = ledger_close(f->l);

        mode = query_text(f->path, "PRAGMA journal_mode");
        assert_string_equal(mode, "wal");
        free(mode);
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        tables = query_text(f->path, "SELECT group_concat(name, ',') FROM "
                          "(SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name)");
        assert_string_equal(tables, "history,meta,phones,sqlite_sequence");
        free(tables);
}

static void test_reopen_keeps_data(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        Phone p;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_PENDING, .to = STATE_RETRYING, .attempts = 2, .next_at = -1,
                .error = "HTTP 503", .detail = "transient" }), 0);
        assert_int_equal(ledger_meta_set(f->l, "approved", "0123456789ab"), 0);
        f->l = ledger_close(f->l);

        for (int mode = LEDGER_READ; mode <= LEDGER_WRITE; mode++) {
                char *v = NULL;

                assert_int_equal(ledger_open(f->path, (LedgerMode) mode, &f->l, NULL), 0);
                assert_int_equal(ledger_find(f->l, "+34910000001", &p), 0);
                assert_int_equal(p.pk, pk);
                assert_int_equal(p.state, STATE_RETRYING);
                assert_int_equal(p.attempts, 2);
                assert_string_equal(p.last_error, "HTTP 503");
                phone_done(&p);
                assert_int_equal(history_count(f->l, pk), 1);
                assert_int_equal(ledger_meta_get(f->l, "approved", &v), 0);
                assert_string_equal(v, "0123456789ab");
                free(v);
                f->l = ledger_close(f->l);
        }
}

static void test_read_of_missing_file_is_empty_and_creates_nothing(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "ledger.db"), *deep = path_join(dir, "no/such/ledger.db");
        uint64_t counts[_STATE_MAX];
        char *error = NULL;
        Ledger *l = NULL;
        Phone p;

        assert_int_equal(ledger_open(path, LEDGER_READ, &l, &error), 0);
        assert_null(error);
        assert_int_equal(ledger_counts(l, counts), 0);
        for (int s = 0; s < _STATE_MAX; s++)
                assert_int_equal(counts[s], 0);
        assert_int_equal(ledger_find(l, "+34910000001", &p), -ENOENT);
        assert_int_equal(history_count(l, 1), 0);
        ledger_close(l);

        /* Not even in a folder that does not exist. */
        assert_int_equal(ledger_open(deep, LEDGER_READ, &l, &error), 0);
        ledger_close(l);

        assert_false(file_exists(path));
        assert_int_equal(count_entries(dir), 0);
        free(deep);
        free(path);
        tmpdir_remove(dir);
}

static void test_newer_schema_is_refused_by_both_modes(void **state) {
        Fixture *f = *state;
        char want[64];

        add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        f->l = ledger_close(f->l);
        set_user_version(f->path, LEDGER_SCHEMA_VERSION + 1);
        snprintf(want, sizeof want, "schema version %d", LEDGER_SCHEMA_VERSION + 1);

        for (int mode = LEDGER_READ; mode <= LEDGER_WRITE; mode++) {
                char *error = NULL;
                Ledger *l = NULL;
                int r = ledger_open(f->path, (LedgerMode) mode, &l, &error);

                assert_int_equal(r, -EPROTO);
                assert_null(l);
                assert_non_null(error);
                /* The operator is told which file and which version. */
                if (!strstr(error, f->path) || !strstr(error, want))
                        print_message("  mode %d: %s\n", mode, error);
                assert_non_null(strstr(error, f->path));
                assert_non_null(strstr(error, want));
                /* Newer, not older: "start retired once" would not help. */
                assert_non_null(strstr(error, " is newer than this retire"));
                free(error);
        }
        /* Refusing did not migrate or rewrite anything. */
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION + 1);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM phones"), 1);
}

/* Regression: ledger_open(LEDGER_WRITE) used to switch the file to WAL before
 * reading user_version, so a file it refused as "newer than this retired
 * understands; refusing to touch it" had in fact been rewritten.  Made here
 * with sqlite3's default rollback journal, as any other program would. */
static void test_refused_file_is_left_untouched(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "ledger.db"), *before, *after, *error = NULL;
        size_t n_before, n_after;
        Ledger *l = NULL;
        sqlite3 *db;
        bool same;
        int r;

        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        {
                char sql[96];
                snprintf(sql, sizeof sql, "CREATE TABLE phones (x); PRAGMA user_version = %d", LEDGER_SCHEMA_VERSION + 1);
                assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        }
        sqlite3_close(db);
        before = read_all(path, &n_before);

        r = ledger_open(path, LEDGER_WRITE, &l, &error);
        ledger_close(l);
        free(error);
        after = read_all(path, &n_after);
        same = n_before == n_after && memcmp(before, after, n_before) == 0;
        if (!same) {
                char *mode = query_text(path, "PRAGMA journal_mode");
                print_message("  the file changed; its journal mode is now %s\n", strna(mode));
                free(mode);
        }
        free(before);
        free(after);
        free(path);
        tmpdir_remove(dir);

        assert_int_equal(r, -EPROTO);
        assert_true(same);
}

/* A file that is not SQLite at all (a mistyped path, say the config): both
 * modes refuse it, naming it, and leave it as it was, with nothing beside it. */
static void test_a_file_that_is_not_a_ledger_is_refused_untouched(void **state) {
        static const char text[] = "pace: { rate = 2.0; };\nreleases = ( { number = \"+34 910 000 001\"; } );\n";
        char *dir = tmpdir_new(), *path = write_in(dir, "retired.conf", text);

        for (int mode = LEDGER_READ; mode <= LEDGER_WRITE; mode++) {
                char *error = NULL, *after, *want;
                Ledger *l = NULL;

                assert_int_equal(ledger_open(path, (LedgerMode) mode, &l, &error), -EBADMSG);
                assert_null(l);
                assert_true(asprintf(&want, "%s: ", path) >= 0);
                if (!error || strncmp(error, want, strlen(want)) != 0 || !strstr(error, ": file is not a database"))
                        print_message("  mode %d: %s\n", mode, strna(error));
                assert_true(strncmp(error, want, strlen(want)) == 0);
                assert_non_null(strstr(error, ": file is not a database"));
                free(want);
                free(error);
                after = read_all(path, NULL);
                assert_string_equal(after, text);
                free(after);
                assert_int_equal(count_entries(dir), 1);
        }
        free(path);
        tmpdir_remove(dir);
}

/* Only a ledger that is not there reads as empty: a path that cannot name a
 * file (under a regular file) is an error for a reader too, and the writer
 * says what the system said. */
static void test_a_path_under_a_file_is_an_error(void **state) {
        char *dir = tmpdir_new(), *file = write_in(dir, "plain", "x"), *path = path_join(file, "ledger.db");
        char *error = NULL, *want;
        Ledger *l = NULL;

        assert_int_equal(ledger_open(path, LEDGER_READ, &l, &error), -ENOENT);
        assert_null(l);
        assert_true(asprintf(&want, "%s: cannot open ledger: ", path) >= 0);
        assert_non_null(error);
        assert_true(strncmp(error, want, strlen(want)) == 0);
        free(want);
        error = mfree(error);

        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, &error), -ENOTDIR);
        assert_null(l);
        assert_true(asprintf(&want, "%s: cannot open the ledger: Not a directory", path) >= 0);
        assert_string_equal(error, want);
        free(want);
        free(error);
        assert_int_equal(count_entries(dir), 1);
        free(path);
        free(file);
        tmpdir_remove(dir);
}

static void test_older_schema_needs_the_daemon(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "ledger.db"), *error = NULL;
        sqlite3 *db;
        Ledger *l = NULL;

        /* A SQLite file at version 0: retirectl (read) must not migrate it. */
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, "CREATE TABLE t (x)", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        assert_int_equal(ledger_open(path, LEDGER_READ, &l, &error), -EPROTO);
        assert_non_null(error);
        assert_non_null(strstr(error, "needs migrating"));
        free(error);
        error = NULL;
        assert_int_equal(query_int(path, "PRAGMA user_version"), 0);

        /* The daemon (write) migrates it. */
        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, &error), 0);
        ledger_close(l);
        assert_int_equal(query_int(path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        free(path);
        tmpdir_remove(dir);
}

/* ---- append-only -------------------------------------------------------- */

static void test_history_and_rows_cannot_be_removed(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        char *msg = NULL;
        sqlite3 *db;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = -1, .sent_at = 10,
                .method = "DELETE", .path = "/v1/phone/" UUID_A, .http_status = 204 }), 0);
        assert_int_equal(history_count(f->l, pk), 2);

        /* Whatever opens the file: the rules are in the schema. */
        assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
        assert_int_not_equal(sqlite3_exec(db, "UPDATE history SET detail = 'rewritten'", NULL, NULL, &msg), SQLITE_OK);
        assert_non_null(strstr(msg, "history is append-only"));
        sqlite3_free(msg);
        assert_int_not_equal(sqlite3_exec(db, "DELETE FROM history", NULL, NULL, &msg), SQLITE_OK);
        assert_non_null(strstr(msg, "history is append-only"));
        sqlite3_free(msg);
        assert_int_not_equal(sqlite3_exec(db, "DELETE FROM phones", NULL, NULL, &msg), SQLITE_OK);
        assert_non_null(strstr(msg, "ledger rows are never deleted"));
        sqlite3_free(msg);
        sqlite3_close(db);

        assert_int_equal(history_count(f->l, pk), 2);
        assert_int_equal(state_of(f->l, "+34910000001"), STATE_IN_FLIGHT);
}

/* ---- ledger_update ------------------------------------------------------ */

static void test_update_from_wrong_state_is_stale_and_writes_nothing(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        Phone p;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_RETRYING, .to = STATE_IN_FLIGHT, .id = UUID_A, .attempts = 5,
                .next_at = 99, .error = "boom", .detail = "should not be recorded",
                .method = "DELETE", .path = "/v1/phone/" UUID_A, .http_status = 204, .latency_ms = 80 }),
                -ESTALE);

        assert_int_equal(ledger_find(f->l, "+34910000001", &p), 0);
        assert_int_equal(p.state, STATE_PENDING);
        assert_null(p.id);
        assert_int_equal(p.attempts, 0);
        assert_int_equal(p.next_at, 0);
        assert_null(p.last_error);
        assert_int_equal(p.updated_at, 1);
        phone_done(&p);
        /* Not even the call row. */
        assert_int_equal(history_count(f->l, pk), 0);

        /* A pk that does not exist is stale too. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk + 100, .from = STATE_PENDING, .to = STATE_CANCELLED, .attempts = -1, .next_at = -1 }),
                -ESTALE);
        assert_int_equal(history_count(f->l, pk + 100), 0);
        /* And the ledger still takes writes: no transaction was left open. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_PENDING, .to = STATE_CANCELLED, .attempts = -1, .next_at = -1 }), 0);
        assert_int_equal(state_of(f->l, "+34910000001"), STATE_CANCELLED);
}

static void test_update_records_call_and_state_together(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        int64_t before = (int64_t) now(CLOCK_REALTIME);
        Hist hs = {};
        Phone p;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_PENDING, .to = STATE_SCHEDULED, .id = UUID_A, .provider = "netelip",
                .scheduled_release_at = "2026-12-31T23:59:59Z", .attempts = 1, .next_at = 1234567,
                .error = "none yet", .detail = "release ordered",
                .method = "DELETE", .path = "/v1/phone/" UUID_A, .http_status = 204, .latency_ms = 120 }), 0);

        assert_int_equal(ledger_history(f->l, pk, collect_history, &hs), 0);
        assert_int_equal(hs.n, 2);
        /* The call... */
        assert_string_equal(hs.row[0].kind, "call");
        assert_string_equal(hs.row[0].method, "DELETE");
        assert_string_equal(hs.row[0].path, "/v1/phone/" UUID_A);
        assert_int_equal(hs.row[0].http_status, 204);
        assert_int_equal(hs.row[0].latency_ms, 120);
        assert_null(hs.row[0].old_state);
        /* ...then the state it led to, at the same instant. */
        assert_string_equal(hs.row[1].kind, "state");
        assert_string_equal(hs.row[1].old_state, "pending");
        assert_string_equal(hs.row[1].new_state, "scheduled");
        assert_string_equal(hs.row[1].detail, "release ordered");
        assert_null(hs.row[1].method);
        assert_true(hs.row[0].seq < hs.row[1].seq);
        assert_int_equal(hs.row[0].at, hs.row[1].at);
        assert_true(hs.row[0].at >= before);
        hist_done(&hs);

        assert_int_equal(ledger_find(f->l, "+34910000001", &p), 0);
        assert_int_equal(p.state, STATE_SCHEDULED);
        assert_string_equal(p.id, UUID_A);
        assert_string_equal(p.provider, "netelip");
        assert_string_equal(p.scheduled_release_at, "2026-12-31T23:59:59Z");
        assert_int_equal(p.attempts, 1);
        assert_int_equal(p.next_at, 1234567);
        assert_string_equal(p.last_error, "none yet");
        assert_true(p.updated_at >= before);
        phone_done(&p);

        /* NULL and negative fields keep what is there. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_SCHEDULED, .to = STATE_RELEASED, .attempts = -1, .next_at = -1,
                .detail = "gone" }), 0);
        assert_int_equal(ledger_find(f->l, UUID_A, &p), 0);
        assert_int_equal(p.state, STATE_RELEASED);
        assert_string_equal(p.id, UUID_A);
        assert_string_equal(p.provider, "netelip");
        assert_string_equal(p.scheduled_release_at, "2026-12-31T23:59:59Z");
        assert_int_equal(p.attempts, 1);
        assert_int_equal(p.next_at, 1234567);
        /* All but the error: a released row has none left (see below). */
        assert_null(p.last_error);
        phone_done(&p);
        /* No call: a single state row. */
        assert_int_equal(history_count(f->l, pk), 3);
}

static void test_update_in_the_same_state_records_the_call_only(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_RETRYING);
        Hist hs = {};

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_RETRYING, .to = STATE_RETRYING, .attempts = 3, .next_at = 5000000,
                .error = "HTTP 503", .detail = "service unavailable",
                .method = "GET", .path = "/v1/phone/", .http_status = 503, .latency_ms = 7 }), 0);
        assert_int_equal(ledger_history(f->l, pk, collect_history, &hs), 0);
        assert_int_equal(hs.n, 1);
        assert_string_equal(hs.row[0].kind, "call");
        assert_string_equal(hs.row[0].method, "GET");
        assert_int_equal(hs.row[0].http_status, 503);
        assert_string_equal(hs.row[0].detail, "service unavailable");
        hist_done(&hs);
}

/* ---- lookups ------------------------------------------------------------ */

static void test_find_by_key_id_and_written_number(void **state) {
        Fixture *f = *state;
        int64_t a = add_phone(f->l, "+34910000001", UUID_A, "+34910000001", STATE_PENDING);
        int64_t b = add_phone(f->l, UUID_B, UUID_B, NULL, STATE_PENDING);
        int64_t c = add_phone(f->l, "alice@pbx.example.com", NULL, "alice@pbx.example.com", STATE_PENDING);
        /* Declared by number, and later someone declared another phone by id
         * that happens to carry the same number: the key match wins. */
        int64_t d = add_phone(f->l, "+34910000002", NULL, "+34910000002", STATE_CANCELLED);
        add_phone(f->l, UUID_C, UUID_C, "+34910000002", STATE_PENDING);
        static const char *const missing[] = { "+34 910 000 999", "nonsense", "", UUID_A "0" };
        const struct { const char *what; int64_t pk; } t[] = {
                { "+34910000001",          a },   /* key */
                { UUID_A,                  a },   /* resolved id */
                { "+34 910 000 001",       a },   /* the number as people write it */
                { "(+34) 910-000-001",     a },
                { UUID_B,                  b },
                { "alice@pbx.example.com", c },
                { "+34910000002",          d },
        };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                Phone p;
                assert_int_equal(ledger_find(f->l, t[i].what, &p), 0);
                if (p.pk != t[i].pk)
                        print_message("  \"%s\": found pk %lld\n", t[i].what, (long long) p.pk);
                assert_int_equal(p.pk, t[i].pk);
                phone_done(&p);
        }
        for (size_t i = 0; i < ELEMENTSOF(missing); i++) {
                Phone p;
                assert_int_equal(ledger_find(f->l, missing[i], &p), -ENOENT);
        }
}

static int count_phone(const Phone *p, void *userdata) {
        int64_t *pks = userdata;
        pks[++pks[0]] = p->pk;
        return 0;
}

static int stop_at_first(const Phone *p, void *userdata) {
        ++*(int *) userdata;
        return -ECANCELED;
}

static void test_counts_and_list(void **state) {
        Fixture *f = *state;
        uint64_t counts[_STATE_MAX];
        int64_t pks[8] = {}, p1, p2;
        int calls = 0;

        p1 = add_phone(f->l, "111", NULL, "111", STATE_PENDING);
        add_phone(f->l, "222", NULL, "222", STATE_RELEASED);
        p2 = add_phone(f->l, "333", NULL, "333", STATE_PENDING);
        add_phone(f->l, "444", NULL, "444", STATE_FAILED);

        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_PENDING], 2);
        assert_int_equal(counts[STATE_RELEASED], 1);
        assert_int_equal(counts[STATE_FAILED], 1);
        assert_int_equal(counts[STATE_CANCELLED], 0);

        assert_int_equal(ledger_list(f->l, STATE_PENDING, count_phone, pks), 0);
        assert_int_equal(pks[0], 2);
        assert_int_equal(pks[1], p1);
        assert_int_equal(pks[2], p2);
        memset(pks, 0, sizeof pks);
        assert_int_equal(ledger_list(f->l, -1, count_phone, pks), 0);
        assert_int_equal(pks[0], 4);
        /* The callback can stop the walk; its error comes back. */
        assert_int_equal(ledger_list(f->l, -1, stop_at_first, &calls), -ECANCELED);
        assert_int_equal(calls, 1);
}

/* The counts are kept from one ask to the next only while phones is as
 * it was: a change on this connection (kept or taken back), or one another
 * connection committed, is counted anew. */
static void test_counts_follow_every_change(void **state) {
        Fixture *f = *state;
        uint64_t counts[_STATE_MAX];
        int64_t pk = add_phone(f->l, "111", NULL, "111", STATE_PENDING);
        sqlite3 *other;

        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_PENDING], 1);
        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_PENDING], 1);

        /* This connection's change. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_FAILED,
                                                              .attempts = -1, .next_at = -1, .error = "HTTP 403" }), 0);
        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_PENDING], 0);
        assert_int_equal(counts[STATE_FAILED], 1);

        /* Counted inside a transaction, which is then taken back. */
        assert_int_equal(ledger_exec(f->l, "BEGIN; UPDATE phones SET state = 'cancelled'"), 0);
        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_CANCELLED], 1);
        assert_int_equal(ledger_exec(f->l, "ROLLBACK"), 0);
        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_CANCELLED], 0);
        assert_int_equal(counts[STATE_FAILED], 1);

        /* Another connection's, committed. */
        assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
        assert_int_equal(sqlite3_exec(other, "UPDATE phones SET state = 'cancelled'", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(other);
        assert_int_equal(ledger_counts(f->l, counts), 0);
        assert_int_equal(counts[STATE_CANCELLED], 1);
        assert_int_equal(counts[STATE_FAILED], 0);
}

/* A state no retired writes (put there by a program that set the CHECK
 * constraints aside) is refused by every read of the row, never taken for
 * some state. */
static void test_a_row_in_an_unknown_state_is_refused(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING), pks[8] = {};
        uint64_t counts[_STATE_MAX], due[_DUE_MAX];
        DueQuery q = { .set = DUE_REST, .now = 1, .due_now = 1 };
        PhoneState s = STATE_FAILED;
        int64_t version = 0;
        Phone p;

        assert_int_equal(ledger_state(f->l, pk, &s, &version), 0);
        assert_int_equal(s, STATE_PENDING);
        assert_int_equal(version, 1);
        assert_int_equal(ledger_state(f->l, pk, NULL, NULL), 0);
        assert_int_equal(ledger_state(f->l, pk + 1, &s, NULL), -ENOENT);
        assert_int_equal(ledger_due_count(f->l, &q, due), 0);
        assert_int_equal(due[DUE_REST], 1);

        assert_int_equal(sqlite3_exec(ledger_db(f->l), "PRAGMA ignore_check_constraints = ON;"
                                      " UPDATE phones SET state = 'done' WHERE key = '+34910000001';"
                                      " PRAGMA ignore_check_constraints = OFF", NULL, NULL, NULL), SQLITE_OK);

        s = STATE_FAILED;
        assert_int_equal(ledger_state(f->l, pk, &s, NULL), -EBADMSG);
        assert_int_equal(s, STATE_FAILED);
        assert_int_equal(ledger_find(f->l, "+34910000001", &p), -EBADMSG);
        assert_int_equal(ledger_list(f->l, -1, count_phone, pks), -EBADMSG);
        assert_int_equal(pks[0], 0);
        assert_int_equal(ledger_counts(f->l, counts), -EBADMSG);
        /* Due for nothing: the walk of a pass never meets it... */
        q.set = DUE_REST;
        assert_int_equal(ledger_due(f->l, &q, 0, 10, count_phone, pks), 0);
        assert_int_equal(pks[0], 0);
        /* ...and a set no pass has is refused. */
        q.set = _DUE_MAX;
        assert_int_equal(ledger_due(f->l, &q, 0, 10, count_phone, pks), -EINVAL);
}

static int count_vm_steps(unsigned type, void *userdata, void *p, void *x) {
        (void) x;
        if (type == SQLITE_TRACE_PROFILE)
                *(int *) userdata += sqlite3_stmt_status(p, SQLITE_STMTSTATUS_VM_STEP, 0);
        return 0;
}

/* A pass takes its rows a batch at a time, each set walked by pk, and
 * counts them a part of the ledger at a time.  A batch reads about as many
 * rows as it takes, and a part its rows, whatever the ledger holds: SQLite
 * would rather gather every due row through the state index and sort them
 * (at a million rows, 0.6 s with the loop stopped, for each batch), and
 * for the rows whose DELETE went out, of which there are few, it read
 * every row to find them. */
static void test_a_batch_reads_about_the_rows_it_takes(void **state) {
        Fixture *f = *state;
        DueQuery q = { .now = 1000 * 1000000LL, .due_now = 1000 * 1000000LL };

        assert_int_equal(ledger_exec(f->l, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)"
                                     " INSERT INTO phones (key, id, number, state, created_at, updated_at)"
                                     " SELECT 'k' || i, CASE WHEN i % 2 THEN 'id' || i END, 'n' || i, 'pending', 1, 1 FROM n"), 0);
        assert_int_equal(ledger_exec(f->l, "UPDATE phones SET state = 'in_flight', sent_at = 5 WHERE key = 'k4000'"), 0);
        for (int set = 0; set < _DUE_MAX; set++) {
                int64_t pks[16] = {};
                int steps = 0;

                q.set = (DueSet) set;
                (void) sqlite3_trace_v2(ledger_db(f->l), SQLITE_TRACE_PROFILE, count_vm_steps, &steps);
                assert_int_equal(ledger_due(f->l, &q, 0, set == DUE_LOOKS ? 10 : 5, count_phone, pks), 0);
                (void) sqlite3_trace_v2(ledger_db(f->l), 0, NULL, NULL);
                assert_int_equal(pks[0], set == DUE_LOOKS ? 1 : 5);
                assert_in_range(steps, 1, 1000);
        }
        /* And a pass's count, a part of the ledger at a time, reads that part. */
        for (int64_t after = 0; after < 5000; after += 1000) {
                uint64_t counted[_DUE_MAX] = {};
                int steps = 0;

                (void) sqlite3_trace_v2(ledger_db(f->l), SQLITE_TRACE_PROFILE, count_vm_steps, &steps);
                assert_int_equal(ledger_due_count_range(f->l, &q, after, after + 10, counted), 0);
                (void) sqlite3_trace_v2(ledger_db(f->l), 0, NULL, NULL);
                assert_int_equal(counted[DUE_LOOKS] + counted[DUE_REST], 10);
                assert_in_range(steps, 1, 1000);
        }
}

/* When the next row falls due, among thousands of pending rows of which
 * a few wait for a date: found among those few (at a million rows, every
 * pending row was read, 0.3 s with the loop stopped at each pass's end). */
static void test_the_next_due_is_found_among_the_dated_rows(void **state) {
        Fixture *f = *state;
        int64_t t = 1000 * 1000000LL, next = 0;
        int steps = 0;

        assert_int_equal(ledger_exec(f->l, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)"
                                     " INSERT INTO phones (key, number, state, not_before, created_at, updated_at)"
                                     " SELECT 'k' || i, 'n' || i, 'pending', CASE i WHEN 10 THEN 3000 WHEN 4000 THEN 2000"
                                     "  WHEN 20 THEN 1000 WHEN 30 THEN 999 ELSE 0 END, 1, 1 FROM n"), 0);
        (void) sqlite3_trace_v2(ledger_db(f->l), SQLITE_TRACE_PROFILE, count_vm_steps, &steps);
        assert_int_equal(ledger_next_due(f->l, t, t, false, &next), 0);
        (void) sqlite3_trace_v2(ledger_db(f->l), 0, NULL, NULL);
        /* Not the ones due now (1000, 999): the next one, 2000 s. */
        assert_int_equal(next, 2000 * 1000000LL);
        assert_in_range(steps, 1, 1000);
        /* On a due clock 500 s behind ours, 999 s is not due yet, and comes
         * at our 1499 s. */
        assert_int_equal(ledger_next_due(f->l, t, t - 500 * 1000000LL, false, &next), 0);
        assert_int_equal(next, 1499 * 1000000LL);
        assert_int_equal(ledger_next_due(f->l, t, t, true, &next), -ENOENT);
}

/* Which rows a pass takes, in which set, and that batches by pk add up to
 * one walk.  (now = due_now = 1000 s; a row's next_at in usec.) */
static void test_due_rows_by_set_and_batch(void **state) {
        static const struct {
                const char *key, *id, *number;
                PhoneState state;
                int64_t sent_at, next_at;
                int set;                /* -1: not due */
        } rows[] = {
                { "a", UUID_A, NULL,  STATE_PENDING,   0, 0,                  DUE_BY_ID },
                { "b", NULL,   "222", STATE_PENDING,   0, 0,                  DUE_BY_NUMBER },
                { "c", UUID_B, "333", STATE_IN_FLIGHT, 5, 0,                  DUE_LOOKS },
                { "d", NULL,   "444", STATE_RELEASED,  0, 0,                  -1 },
                { "e", UUID_C, NULL,  STATE_RETRYING,  0, 2000 * 1000000LL,   -1 },   /* not yet */
                { "f", NULL,   "666", STATE_CANCELLED, 7, 0,                  DUE_LOOKS },
                { "g", NULL,   "777", STATE_CANCELLED, 0, 0,                  -1 },
                { "h", NULL,   "888", STATE_RETRYING,  0, 10,                 DUE_BY_NUMBER },
                { "i", NULL,   "999", STATE_IN_FLIGHT, 9, 2000 * 1000000LL,   -1 },   /* settling */
        };
        Fixture *f = *state;
        int64_t pk[ELEMENTSOF(rows)];
        uint64_t counted[_DUE_MAX];
        DueQuery q = { .now = 1000 * 1000000LL, .due_now = 1000 * 1000000LL };

        for (size_t i = 0; i < ELEMENTSOF(rows); i++) {
                sqlite3_stmt *st;

                pk[i] = add_phone(f->l, rows[i].key, rows[i].id, rows[i].number, STATE_PENDING);
                assert_int_equal(sqlite3_prepare_v2(ledger_db(f->l), "UPDATE phones SET state = ?2, sent_at = ?3,"
                                                    " next_at = ?4 WHERE pk = ?1", -1, &st, NULL), SQLITE_OK);
                sqlite3_bind_int64(st, 1, pk[i]);
                sqlite3_bind_text(st, 2, state_to_string(rows[i].state), -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, 3, rows[i].sent_at);
                sqlite3_bind_int64(st, 4, rows[i].next_at);
                assert_int_equal(sqlite3_step(st), SQLITE_DONE);
                sqlite3_finalize(st);
        }
        for (int set = 0; set < _DUE_MAX; set++) {
                int64_t want[ELEMENTSOF(rows) + 1] = {}, all[ELEMENTSOF(rows) + 1] = {}, after = 0;

                for (size_t i = 0; i < ELEMENTSOF(rows); i++)
                        if (rows[i].set == set || (set == DUE_REST && (rows[i].set == DUE_BY_ID || rows[i].set == DUE_BY_NUMBER)))
                                want[++want[0]] = pk[i];
                q.set = (DueSet) set;
                /* One row at a time from the last pk on: the same rows as one walk. */
                for (;;) {
                        int64_t one[2] = {};

                        assert_int_equal(ledger_due(f->l, &q, after, 1, count_phone, one), 0);
                        if (one[0] == 0)
                                break;
                        all[++all[0]] = after = one[1];
                }
                assert_int_equal(all[0], want[0]);
                for (int64_t i = 1; i <= want[0]; i++)
                        assert_int_equal(all[i], want[i]);
        }
        assert_int_equal(ledger_due_count(f->l, &q, counted), 0);
        assert_int_equal(counted[DUE_LOOKS], 2);
        assert_int_equal(counted[DUE_BY_ID], 1);
        assert_int_equal(counted[DUE_BY_NUMBER], 2);
        assert_int_equal(counted[DUE_REST], 3);
        /* A resync also takes the rows that wait for nothing but a look. */
        q.resync = true;
        assert_int_equal(ledger_due_count(f->l, &q, counted), 0);
        assert_int_equal(counted[DUE_REST], 3);
        /* What a listing keeps: phones some row names, by id or by number. */
        assert_int_equal(ledger_knows_phone(f->l, UUID_C, "+34910000000"), 1);
        assert_int_equal(ledger_knows_phone(f->l, "00000000-0000-0000-0000-0000000000d0", "444"), 1);
        assert_int_equal(ledger_knows_phone(f->l, "00000000-0000-0000-0000-0000000000d0", "555"), 0);
}

static int listed_ids(const ListedPhone *p, void *userdata) {
        char *ids = userdata;

        strcat(ids, p->id);
        strcat(ids, p->status ? p->status : "(null)");
        strcat(ids, ";");
        return 0;
}

static int listed_stop(const ListedPhone *p, void *userdata) {
        strcpy(userdata, p->id);
        return -ECANCELED;
}

/* What a listing kept: read back by id and by number (in the order listed),
 * the same id listed again replaces itself, and a restart forgets it all. */
static void test_listed_phones_by_id_and_number(void **state) {
        Fixture *f = *state;
        char ids[256] = "";

        assert_int_equal(ledger_listed_clear(f->l), 0);
        assert_int_equal(ledger_listed_add(f->l, &(ListedPhone) { .id = UUID_B, .number = "+1", .status = "released" }), 0);
        assert_int_equal(ledger_listed_add(f->l, &(ListedPhone) { .id = UUID_C, .number = "+2", .status = "assigned" }), 0);
        assert_int_equal(ledger_listed_add(f->l, &(ListedPhone) { .id = UUID_A, .number = "+1", .status = "assigned",
                                                                 .provider = "netelip" }), 0);
        assert_int_equal(ledger_listed_find(f->l, NULL, "+1", listed_ids, ids), 2);
        assert_string_equal(ids, UUID_B "released;" UUID_A "assigned;");
        ids[0] = 0;
        assert_int_equal(ledger_listed_add(f->l, &(ListedPhone) { .id = UUID_C, .number = "+2", .status = "reserved" }), 0);
        assert_int_equal(ledger_listed_find(f->l, UUID_C, NULL, listed_ids, ids), 1);
        assert_string_equal(ids, UUID_C "reserved;");
        assert_int_equal(ledger_listed_find(f->l, NULL, "+3", NULL, NULL), 0);
        /* Counted without a callback; a callback's error stops the walk and
         * comes back, and the next find starts afresh. */
        assert_int_equal(ledger_listed_find(f->l, NULL, "+1", NULL, NULL), 2);
        assert_int_equal(ledger_listed_find(f->l, NULL, "+1", listed_stop, ids), -ECANCELED);
        assert_string_equal(ids, UUID_B);
        assert_int_equal(ledger_listed_find(f->l, NULL, "+1", NULL, NULL), 2);
        assert_int_equal(ledger_listed_clear(f->l), 0);
        assert_int_equal(ledger_listed_find(f->l, UUID_A, NULL, NULL, NULL), 0);
        assert_int_equal(ledger_listed_find(f->l, NULL, "+1", NULL, NULL), 0);
}

static void test_meta(void **state) {
        Fixture *f = *state;
        char *v = NULL;

        assert_int_equal(ledger_meta_get(f->l, "approved", &v), -ENOENT);
        assert_int_equal(ledger_meta_set(f->l, "approved", "aaaa"), 0);
        assert_int_equal(ledger_meta_set(f->l, "approved", "bbbb"), 0);
        assert_int_equal(ledger_meta_get(f->l, "approved", &v), 0);
        assert_string_equal(v, "bbbb");
        free(v);
}

/* ---- the record only moves forward -------------------------------------- */

/* A step refused by the schema: -EPERM, the reason in ledger_errmsg(), and
 * nothing written (the row and its history as they were). */
static void assert_refused(Ledger *l, const LedgerUpdate *u, const char *why) {
        size_t before = history_count(l, u->pk);

        assert_int_equal(ledger_update(l, u), -EPERM);
        assert_non_null(strstr(ledger_errmsg(l), why));
        assert_int_equal(history_count(l, u->pk), before);
}

static void test_released_stays_released(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_RELEASED);

        for (PhoneState to = 0; to < _STATE_MAX; to++)
                if (to != STATE_RELEASED)
                        assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RELEASED, .to = to,
                                       .attempts = -1, .next_at = -1, .sent_at = 5 }, "released phone stays released");
        assert_int_equal(state_of(f->l, "k"), STATE_RELEASED);
        /* Calls may still go on record. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RELEASED, .to = STATE_RELEASED,
                         .attempts = -1, .next_at = -1, .method = "GET", .path = "/v1/phone/" UUID_A,
                         .http_status = 200 }), 0);
}

static void test_scheduled_only_becomes_released(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_SCHEDULED);

        for (PhoneState to = 0; to < _STATE_MAX; to++)
                if (to != STATE_SCHEDULED && to != STATE_RELEASED)
                        assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_SCHEDULED, .to = to,
                                       .attempts = -1, .next_at = -1, .sent_at = 5 },
                                       "scheduled release can only become released");
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_SCHEDULED,
                         .to = STATE_RELEASED, .attempts = -1, .next_at = -1 }), 0);
}

static void test_in_flight_needs_the_time_its_delete_left(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_PENDING);
        Phone p;

        assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT,
                       .attempts = -1, .next_at = -1 }, "needs the time its DELETE left");
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING,
                         .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = 99, .sent_at = 50 }), 0);
        assert_int_equal(ledger_find(f->l, "k", &p), 0);
        assert_int_equal(p.sent_at, 50);
        assert_int_equal(p.next_at, 99);
        phone_done(&p);
        /* A later DELETE moves it on, never back. */
        assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_IN_FLIGHT, .to = STATE_IN_FLIGHT,
                       .attempts = -1, .next_at = -1, .sent_at = 40 }, "only moves forward");
}

/* A row whose DELETE may have gone out is failed, unresolved or pending
 * only after a look (a GET recorded in the same step, after the DELETE left)
 * settled it; a look alone does not clear it unless the step says so. */
static void test_delete_out_needs_a_look_before_failed_unresolved_or_pending(void **state) {
        Fixture *f = *state;
        static const PhoneState targets[] = { STATE_FAILED, STATE_UNRESOLVED, STATE_PENDING };
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_PENDING);
        int64_t sent = (int64_t) now(CLOCK_REALTIME);
        Phone p;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING,
                         .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = -1, .sent_at = sent }), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_IN_FLIGHT,
                         .to = STATE_RETRYING, .attempts = 1, .next_at = -1, .method = "DELETE",
                         .path = "/v1/phone/" UUID_A, .http_status = 503 }), 0);
        for (size_t i = 0; i < ELEMENTSOF(targets); i++) {
                /* Neither straight... */
                assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RETRYING, .to = targets[i],
                               .attempts = -1, .next_at = -1 }, "may have gone out");
                /* ...nor by clearing it without a look... */
                assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RETRYING, .to = targets[i],
                               .attempts = -1, .next_at = -1, .clear_sent = true }, "only a look at the phone");
                /* ...nor with a look that is only a call of another kind. */
                assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RETRYING, .to = targets[i],
                               .attempts = -1, .next_at = -1, .clear_sent = true, .method = "DELETE",
                               .path = "/v1/phone/" UUID_A, .http_status = 409 }, "only a look at the phone");
                /* A look that does not settle it keeps it where it is. */
                assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RETRYING, .to = targets[i],
                               .attempts = -1, .next_at = -1, .method = "GET", .path = "/v1/phone/" UUID_A,
                               .http_status = 200 }, "may have gone out");
        }
        /* Cancelled and back to pending through a reload: refused the same. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_RETRYING,
                         .to = STATE_CANCELLED, .attempts = -1, .next_at = -1 }), 0);
        assert_refused(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_CANCELLED, .to = STATE_PENDING,
                       .attempts = -1, .next_at = -1 }, "may have gone out");
        /* A look that settles it. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_CANCELLED,
                         .to = STATE_CANCELLED, .attempts = -1, .next_at = -1, .clear_sent = true,
                         .method = "GET", .path = "/v1/phone/" UUID_A, .http_status = 200 }), 0);
        assert_int_equal(ledger_find(f->l, "k", &p), 0);
        assert_int_equal(p.sent_at, 0);
        phone_done(&p);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_CANCELLED,
                         .to = STATE_PENDING, .attempts = -1, .next_at = -1 }), 0);
}

/* The rules hold for any writer of the file, not only for ledger_update(). */
static void test_forward_rules_hold_for_any_writer(void **state) {
        Fixture *f = *state;
        char *msg = NULL;
        sqlite3 *db;

        add_phone(f->l, "r", UUID_A, NULL, STATE_RELEASED);
        add_phone(f->l, "s", UUID_B, NULL, STATE_SCHEDULED);
        assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
        assert_int_not_equal(sqlite3_exec(db, "UPDATE phones SET state = 'pending' WHERE key = 'r'", NULL, NULL, &msg),
                             SQLITE_OK);
        assert_non_null(strstr(msg, "released phone stays released"));
        sqlite3_free(msg);
        assert_int_not_equal(sqlite3_exec(db, "UPDATE phones SET state = 'failed' WHERE key = 's'", NULL, NULL, &msg),
                             SQLITE_OK);
        assert_non_null(strstr(msg, "scheduled release can only become released"));
        sqlite3_free(msg);
        sqlite3_close(db);
        assert_int_equal(state_of(f->l, "r"), STATE_RELEASED);
        assert_int_equal(state_of(f->l, "s"), STATE_SCHEDULED);
}

/* The in_flight commit checks the declaration and the time at that moment. */
static void test_update_checks_version_and_due_time(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_PENDING);
        sqlite3 *db = ledger_db(f->l);
        PhoneState s;
        int64_t v;

        assert_int_equal(sqlite3_exec(db, "UPDATE phones SET version = 3, not_before = 2000 WHERE key = 'k'",
                                      NULL, NULL, NULL), SQLITE_OK);
        assert_int_equal(ledger_state(f->l, pk, &s, &v), 0);
        assert_int_equal(v, 3);
        /* Decided on version 2: stale. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT,
                         .version = 2, .attempts = -1, .next_at = -1, .sent_at = 1 }), -ESTALE);
        /* Not due yet by the time given (not_before is 2000 s). */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT,
                         .version = 3, .due_by = 1999 * (int64_t) USEC_PER_SEC, .attempts = -1, .next_at = -1,
                         .sent_at = 1 }), -ESTALE);
        assert_int_equal(state_of(f->l, "k"), STATE_PENDING);
        assert_int_equal(history_count(f->l, pk), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT,
                         .version = 3, .due_by = 2000 * (int64_t) USEC_PER_SEC, .attempts = -1, .next_at = -1,
                         .sent_at = 1 }), 0);
}

/* ---- the hold on the boot-time clock (schema 4) -------------------------- */

static int64_t boot_usec(void) {
        return (int64_t) now(CLOCK_BOOTTIME);
}

static void hold_row(Ledger *l, const char *key, int64_t hold_until, const char *boot, int64_t boot_until, int64_t len) {
        sqlite3_stmt *st;

        assert_int_equal(sqlite3_prepare_v2(ledger_db(l), "UPDATE phones SET hold_until = ?2,"
                                            " hold_boot = coalesce(?3, boot_id()), hold_boot_until = ?4, hold_len = ?5"
                                            " WHERE key = ?1", -1, &st, NULL), SQLITE_OK);
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, hold_until);
        sqlite3_bind_text(st, 3, boot, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, boot_until);
        sqlite3_bind_int64(st, 5, len);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
}

static int count_due(Ledger *l, int64_t t) {
        uint64_t n[_DUE_MAX] = {};

        assert_int_equal(ledger_due_count(l, &(DueQuery) { .now = t, .due_now = t }, n), 0);
        return (int) (n[DUE_LOOKS] + n[DUE_REST]);
}

/* A row declared while the clock was a day slow: its hold_until is a day
 * in the past once the clock is right, but its hold by the boot-time clock
 * is not over, and it is neither due, nor counted settled, nor let through
 * at the in_flight commit; the engine wakes at the hold's end. */
static void test_a_hold_is_kept_by_the_boot_clock_when_the_wall_clock_says_over(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_PENDING);
        int64_t t = (int64_t) now(CLOCK_REALTIME), end = boot_usec() + 20 * (int64_t) USEC_PER_SEC, next = 0, first = 0;
        uint64_t held = 0, unsettled = 0;

        hold_row(f->l, "k", t / (int64_t) USEC_PER_SEC - 86400 + 20, NULL, end, 20);
        assert_int_equal(count_due(f->l, t), 0);
        assert_int_equal(ledger_count_unsettled(f->l, t, true, 3, &unsettled, NULL), 0);
        assert_int_equal(unsettled, 0);
        assert_int_equal(ledger_count_held(f->l, t, &held, &first), 0);
        assert_int_equal(held, 1);
        assert_true(first >= t / (int64_t) USEC_PER_SEC + 19 && first <= t / (int64_t) USEC_PER_SEC + 21);
        assert_int_equal(ledger_next_hold_end(f->l, boot_usec(), &next), 0);
        assert_int_equal(next, end);
        assert_int_equal(ledger_next_due(f->l, t, t, false, &next), -ENOENT);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT,
                         .version = 1, .due_by = t, .attempts = -1, .next_at = -1, .sent_at = t }), -ESTALE);
        assert_int_equal(state_of(f->l, "k"), STATE_PENDING);

        /* Over by the boot-time clock: due, and its DELETE may leave. */
        hold_row(f->l, "k", t / (int64_t) USEC_PER_SEC - 86400 + 20, NULL, boot_usec() - 1, 20);
        assert_int_equal(count_due(f->l, t), 1);
        assert_int_equal(ledger_next_hold_end(f->l, boot_usec(), &next), -ENOENT);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT,
                         .version = 1, .due_by = t, .attempts = -1, .next_at = -1, .sent_at = t }), 0);
        assert_int_equal(query_int(f->path, "SELECT hold_boot_until FROM phones WHERE key = 'k'"), 0);
}

/* A clock a day fast at the declaration, put right since: hold_until is a
 * day ahead, but the hold is a duration, over when the boot-time clock says
 * so.  Not a day's wait. */
static void test_a_hold_is_not_lengthened_by_the_wall_clock(void **state) {
        Fixture *f = *state;
        int64_t t = (int64_t) now(CLOCK_REALTIME);

        add_phone(f->l, "k", UUID_A, NULL, STATE_PENDING);
        hold_row(f->l, "k", t / (int64_t) USEC_PER_SEC + 86400, NULL, boot_usec() - 1, 20);
        assert_int_equal(count_due(f->l, t), 1);
}

/* A hold stamped in another boot says nothing about this one: held until
 * started again, then held for its whole length from now; a row whose
 * DELETE left, or that is past deciding, is not held again. */
static void test_holds_of_another_boot_start_again_whole(void **state) {
        Fixture *f = *state;
        int64_t t = (int64_t) now(CLOCK_REALTIME), before, next = 0;
        uint64_t n = 0;
        Phone p = {};

        add_phone(f->l, "other", UUID_A, NULL, STATE_PENDING);
        add_phone(f->l, "this", UUID_B, NULL, STATE_PENDING);
        add_phone(f->l, "gone", "9f4b1a0e-6a42-4c1e-9a47-3f3c2b1d0e01", NULL, STATE_RELEASED);
        hold_row(f->l, "other", 1, "0123456789abcdef0123456789abcdef", 5, 30);
        hold_row(f->l, "this", 1, NULL, boot_usec() + 7 * (int64_t) USEC_PER_SEC, 30);
        hold_row(f->l, "gone", 1, "0123456789abcdef0123456789abcdef", 5, 30);
        assert_int_equal(count_due(f->l, t), 0);
        assert_int_equal(ledger_find(f->l, "other", &p), 0);
        assert_true(p.hold_boot_until == INT64_MAX);
        phone_done(&p);

        before = boot_usec();
        assert_int_equal(ledger_holds_restart(f->l, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ledger_find(f->l, "other", &p), 0);
        assert_true(p.hold_boot_until >= before + 30 * (int64_t) USEC_PER_SEC &&
                    p.hold_boot_until <= boot_usec() + 30 * (int64_t) USEC_PER_SEC);
        phone_done(&p);
        assert_int_equal(ledger_next_hold_end(f->l, boot_usec(), &next), 0);
        assert_true(next < before + 8 * (int64_t) USEC_PER_SEC);   /* "this", untouched */
        assert_int_equal(ledger_holds_restart(f->l, &n), 0);
        assert_int_equal(n, 0);
        assert_int_equal(query_int(f->path, "SELECT hold_boot_until FROM phones WHERE key = 'gone'"), 5);
}

/* A version 3 file with a row still in its hold: kept held for what is left
 * of it by the wall clock, from now, on the boot-time clock. */
static void test_migration_to_version_4_keeps_the_holds_running(void **state) {
        Fixture *f = *state;
        int64_t t = (int64_t) now(CLOCK_REALTIME) / (int64_t) USEC_PER_SEC, before;
        Phone p = {};

        add_phone(f->l, "held", UUID_A, NULL, STATE_PENDING);
        add_phone(f->l, "over", UUID_B, NULL, STATE_PENDING);
        undo_version_5(f->l);
        assert_int_equal(ledger_exec(f->l, "DROP INDEX phones_boot_held; ALTER TABLE phones DROP COLUMN hold_boot;"
                                     " ALTER TABLE phones DROP COLUMN hold_boot_until; ALTER TABLE phones DROP COLUMN hold_len;"
                                     " ALTER TABLE phones ADD COLUMN due_at INTEGER GENERATED ALWAYS AS"
                                     " (max(not_before, hold_until)) VIRTUAL"), 0);
        char sql[160];
        snprintf(sql, sizeof sql, "UPDATE phones SET hold_until = CASE key WHEN 'held' THEN %" PRId64 " ELSE %" PRId64 " END",
                 t + 100, t - 100);
        assert_int_equal(ledger_exec(f->l, sql), 0);
        f->l = ledger_close(f->l);
        set_user_version(f->path, 3);

        before = boot_usec();
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        assert_int_equal(ledger_find(f->l, "held", &p), 0);
        assert_true(p.hold_len >= 99 && p.hold_len <= 100);
        assert_true(p.hold_boot_until >= before + 98 * (int64_t) USEC_PER_SEC &&
                    p.hold_boot_until <= boot_usec() + 100 * (int64_t) USEC_PER_SEC);
        phone_done(&p);
        assert_int_equal(ledger_find(f->l, "over", &p), 0);
        assert_int_equal(p.hold_boot_until, 0);
        phone_done(&p);
}

/* A ROLLBACK that failed leaves a transaction open, with changes never
 * committed: the next write takes it back and goes on, rather than fail
 * every write until a restart. */
static void test_a_transaction_left_open_does_not_lock_the_ledger(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "k", UUID_A, NULL, STATE_PENDING);
        char *reason;

        assert_int_equal(ledger_exec(f->l, "BEGIN IMMEDIATE; UPDATE phones SET reason = 'half' WHERE key = 'k'"), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) { .pk = pk, .from = STATE_PENDING, .to = STATE_RETRYING,
                         .attempts = 1, .next_at = -1 }), 0);
        assert_int_equal(state_of(f->l, "k"), STATE_RETRYING);
        reason = query_text(f->path, "SELECT reason FROM phones WHERE key = 'k'");
        assert_null(reason);
        assert_int_equal(history_count(f->l, pk), 1);
}

/* ---- one writer per file ------------------------------------------------ */

static void test_one_writer_per_file_by_any_name(void **state) {
        Fixture *f = *state;
        char *hard = path_join(f->dir, "hard.db"), *sym = path_join(f->dir, "sym.db"), *error = NULL;
        Ledger *l = NULL;

        assert_int_equal(link(f->path, hard), 0);
        assert_int_equal(symlink(f->path, sym), 0);
        /* The same path, a hard link, a symlink: all the one ledger the fixture holds. */
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &l, &error), -EWOULDBLOCK);
        assert_non_null(strstr(error, "in use by another writer"));
        free(error), error = NULL;
        assert_int_equal(ledger_open(hard, LEDGER_WRITE, &l, &error), -EWOULDBLOCK);
        free(error), error = NULL;
        assert_int_equal(ledger_open(sym, LEDGER_WRITE, &l, &error), -EWOULDBLOCK);
        free(error), error = NULL;
        /* Readers are not writers.  (Through a symlink: SQLite finds the WAL
         * beside the real file; a hard link has none beside it.) */
        assert_int_equal(ledger_open(sym, LEDGER_READ, &l, &error), 0);
        ledger_close(l);
        /* Once the writer is gone, another may come, by any name. */
        f->l = ledger_close(f->l);
        assert_int_equal(ledger_open(sym, LEDGER_WRITE, &f->l, &error), 0);
        assert_null(error);
        free(hard);
        free(sym);
}

/* ---- migration ---------------------------------------------------------- */

/* A version 1 file, as retired 0.1 left it: an in_flight row, a cancelled one
 * whose DELETE went out, a retrying one after a failed DELETE, a pending one. */
static void test_migration_from_version_1_marks_deletes_that_may_be_out(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "ledger.db"), *error = NULL;
        Ledger *l = NULL;
        sqlite3 *db;
        Phone p;

        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db,
                "CREATE TABLE phones (pk INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, id TEXT, number TEXT,"
                " reason TEXT, not_before INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,"
                " attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL DEFAULT 0, provider TEXT,"
                " scheduled_release_at TEXT, last_error TEXT, declared_at TEXT, created_at INTEGER NOT NULL,"
                " updated_at INTEGER NOT NULL);"
                "CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, phone INTEGER NOT NULL, at INTEGER NOT NULL,"
                " kind TEXT NOT NULL, old_state TEXT, new_state TEXT, method TEXT, path TEXT, http_status INTEGER,"
                " latency_ms INTEGER, detail TEXT);"
                "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "INSERT INTO phones (pk, key, id, state, created_at, updated_at) VALUES"
                " (1, 'f', '" UUID_A "', 'in_flight', 1, 100), (2, 'c', '" UUID_B "', 'cancelled', 1, 200),"
                " (3, 'r', '" UUID_C "', 'retrying', 1, 300), (4, 'p', NULL, 'pending', 1, 400);"
                "INSERT INTO history (phone, at, kind, old_state, new_state) VALUES (1, 90, 'state', 'pending', 'in_flight'),"
                " (2, 150, 'state', 'pending', 'in_flight'), (2, 200, 'state', 'in_flight', 'cancelled');"
                "INSERT INTO history (phone, at, kind, method, path, http_status) VALUES"
                " (3, 250, 'call', 'DELETE', '/v1/phone/" UUID_C "', 503);"
                "PRAGMA user_version = 1;", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);

        assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, &error), 0);
        assert_int_equal(query_int(path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        assert_int_equal(ledger_find(l, "f", &p), 0);
        assert_int_equal(p.sent_at, 90);
        assert_int_equal(p.version, 1);
        phone_done(&p);
        assert_int_equal(ledger_find(l, "c", &p), 0);
        assert_int_equal(p.sent_at, 150);
        phone_done(&p);
        assert_int_equal(ledger_find(l, "r", &p), 0);
        assert_int_equal(p.sent_at, 250);
        phone_done(&p);
        assert_int_equal(ledger_find(l, "p", &p), 0);
        assert_int_equal(p.sent_at, 0);
        phone_done(&p);
        /* And the new rules apply to the old rows. */
        assert_refused(l, &(LedgerUpdate) { .pk = 3, .from = STATE_RETRYING, .to = STATE_FAILED, .attempts = -1,
                       .next_at = -1 }, "may have gone out");
        ledger_close(l);
        free(path);
        tmpdir_remove(dir);
}

/* A version 4 file: version 5 lets a row be in_use, keeps every row, its
 * pk and its history, the triggers and the indexes, and the CHECKs that
 * come with it hold: an unknown state is still refused, agents are kept
 * only while in use, a nickname is at most NICKNAME_MAX bytes. */
static void test_migration_to_version_5_adds_in_use(void **state) {
        Fixture *f = *state;
        int64_t a = add_phone(f->l, "a", UUID_A, NULL, STATE_RELEASED), b;
        Phone p = {};

        b = add_phone(f->l, "b", UUID_B, NULL, STATE_PENDING);
        assert_int_equal(ledger_history_add(f->l, a, 5, "state", "in_flight", "released", NULL, NULL, 0, 0, "gone"), 0);
        undo_version_5(f->l);
        assert_int_not_equal(ledger_exec(f->l, "UPDATE phones SET state = 'in_use' WHERE key = 'b'"), 0);
        f->l = ledger_close(f->l);
        set_user_version(f->path, 4);

        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
        assert_int_equal(query_int(f->path, "SELECT pk FROM phones WHERE key = 'b'"), (int) b);
        assert_int_equal(history_count(f->l, a), 1);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM sqlite_schema WHERE type IN ('trigger', 'index')"
                                   " AND name IN ('phones_forward', 'phones_no_delete', 'history_no_update',"
                                   " 'phones_boot_held', 'phones_state', 'phones_agents_while_in_use')"), 6);

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = b, .from = STATE_PENDING, .to = STATE_IN_USE, .attempts = -1, .next_at = -1,
                .inbound_agent = UUID_C, .nickname = "Madrid shop", .detail = "in use",
        }), 0);
        assert_int_equal(ledger_find(f->l, "b", &p), 0);
        assert_int_equal(p.state, STATE_IN_USE);
        assert_string_equal(p.inbound_agent, UUID_C);
        assert_null(p.outbound_agent);
        assert_string_equal(p.nickname, "Madrid shop");
        phone_done(&p);
        /* Out of in_use, the agents go; the nickname stays. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = b, .from = STATE_IN_USE, .to = STATE_PENDING, .attempts = -1, .next_at = -1, .detail = "free",
        }), 0);
        assert_int_equal(ledger_find(f->l, "b", &p), 0);
        assert_null(p.inbound_agent);
        assert_string_equal(p.nickname, "Madrid shop");
        phone_done(&p);

        assert_int_not_equal(ledger_exec(f->l, "UPDATE phones SET state = 'in_use2' WHERE key = 'b'"), 0);
        assert_int_equal(ledger_exec(f->l, "UPDATE phones SET inbound_agent = 'x' WHERE key = 'b'"), 0);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM phones WHERE inbound_agent IS NOT NULL"), 0);
        assert_int_not_equal(ledger_exec(f->l, "UPDATE phones SET nickname = printf('%.65c', 'x') WHERE key = 'b'"), 0);
        assert_int_not_equal(ledger_exec(f->l, "DELETE FROM phones WHERE key = 'b'"), 0);
        assert_int_not_equal(ledger_exec(f->l, "UPDATE phones SET state = 'pending' WHERE key = 'a'"), 0);
}

/* A version 5 file: version 6 writes the CHECK on the state as ORs,
 * which a row is written through without SQLite building the IN list's
 * table for it.  The same states pass, any other is refused, and the rows
 * are as they were. */
static void test_migration_to_version_6_keeps_the_states(void **state) {
        Fixture *f = *state;
        int64_t b = add_phone(f->l, "b", UUID_B, NULL, STATE_PENDING);

        undo_version_6(f->l);
        f->l = ledger_close(f->l);
        set_user_version(f->path, 5);
        assert_int_equal(query_int(f->path, "SELECT instr(sql, 'state IN (') > 0 FROM sqlite_schema WHERE name = 'phones'"), 1);

        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        assert_int_equal(query_int(f->path, "SELECT instr(sql, 'state IN (') FROM sqlite_schema WHERE name = 'phones'"), 0);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
        assert_int_equal(query_int(f->path, "SELECT pk FROM phones WHERE key = 'b'"), (int) b);
        for (PhoneState s = 0; s < _STATE_MAX; s++) {
                char sql[128];

                snprintf(sql, sizeof sql, "INSERT INTO phones (key, state, created_at, updated_at) VALUES ('s%d', '%s', 1, 1)",
                         (int) s, state_to_string(s));
                assert_int_equal(ledger_exec(f->l, sql), 0);
        }
        assert_int_not_equal(ledger_exec(f->l, "INSERT INTO phones (key, state, created_at, updated_at)"
                                         " VALUES ('x', 'gone', 1, 1)"), 0);
        assert_int_not_equal(ledger_exec(f->l, "UPDATE phones SET state = 'Pending' WHERE key = 'b'"), 0);
}

/* A version 5 file whose CHECK is not the text retired wrote (edited by
 * hand): the migration leaves it as it is, rather than guess at an
 * equivalent, and the file opens. */
static void test_migration_to_version_6_leaves_a_check_it_did_not_write(void **state) {
        Fixture *f = *state;

        add_phone(f->l, "b", UUID_B, NULL, STATE_PENDING);
        undo_version_6(f->l);
        replace_in_phones_sql(f->l, "'in_flight','retrying',    'scheduled'", "'in_flight','retrying','scheduled'");
        f->l = ledger_close(f->l);
        set_user_version(f->path, 5);

        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        assert_int_equal(query_int(f->path, "SELECT instr(sql, '''retrying'',''scheduled''') > 0"
                                   " FROM sqlite_schema WHERE name = 'phones'"), 1);
        assert_int_not_equal(ledger_exec(f->l, "UPDATE phones SET state = 'gone'"), 0);
}

/* A version 2 file holding a released row with the error of an earlier
 * failed call: version 3 drops the error and leaves the history as it was. */
static void test_migration_to_version_3_drops_the_errors_of_released_rows(void **state) {
        Fixture *f = *state;
        int64_t released = add_phone(f->l, "+34910000001", UUID_A, "+34910000001", STATE_RELEASED);
        char *v;

        add_phone(f->l, "+34910000002", UUID_B, "+34910000002", STATE_FAILED);
        assert_int_equal(ledger_exec(f->l, "UPDATE phones SET last_error = 'HTTP 503'"), 0);
        assert_int_equal(ledger_history_add(f->l, released, 5, "call", NULL, NULL, "DELETE", "/v1/phone/" UUID_A,
                                            503, 10, "HTTP 503"), 0);
        assert_int_equal(ledger_history_add(f->l, released, 6, "state", "retrying", "released", NULL, NULL, 0, 0,
                                            "gone"), 0);
        /* What versions 3, 4 and 5 added, gone: a version 2 file. */
        undo_version_5(f->l);
        assert_int_equal(ledger_exec(f->l, "DROP INDEX phones_boot_held; ALTER TABLE phones DROP COLUMN hold_boot;"
                                     " ALTER TABLE phones DROP COLUMN hold_boot_until; ALTER TABLE phones DROP COLUMN hold_len;"
                                     " DROP INDEX history_deletes; DROP INDEX history_released; DROP INDEX phones_held;"
                                     " ALTER TABLE phones DROP COLUMN hold_until"), 0);
        f->l = ledger_close(f->l);
        set_user_version(f->path, 2);

        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(query_int(f->path, "PRAGMA user_version"), LEDGER_SCHEMA_VERSION);
        v = query_text(f->path, "SELECT last_error FROM phones WHERE key = '+34910000001'");
        assert_null(v);
        v = query_text(f->path, "SELECT last_error FROM phones WHERE key = '+34910000002'");
        assert_string_equal(v, "HTTP 503");
        free(v);
        assert_int_equal(history_count(f->l, released), 2);
        v = query_text(f->path, "SELECT group_concat(detail, '|') FROM history");
        assert_string_equal(v, "HTTP 503|gone");
        free(v);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                                   " AND name IN ('history_deletes', 'history_released')"), 2);
}

/* ---- what the operator sees --------------------------------------------- */

static void test_released_drops_its_error(void **state) {
        Fixture *f = *state;
        int64_t pk = add_phone(f->l, "+34910000001", UUID_A, "+34910000001", STATE_PENDING);
        Hist hs = {};
        Phone p;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_PENDING, .to = STATE_RETRYING, .attempts = 1, .next_at = 5,
                .error = "HTTP 503 Service Unavailable", .detail = "will retry",
                .method = "GET", .path = "/v1/phone/" UUID_A, .http_status = 503 }), 0);
        assert_int_equal(ledger_find(f->l, UUID_A, &p), 0);
        assert_string_equal(p.last_error, "HTTP 503 Service Unavailable");
        phone_done(&p);

        /* Even an error given with the step into released is not kept. */
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = STATE_RETRYING, .to = STATE_RELEASED, .attempts = -1, .next_at = -1,
                .error = "stale", .detail = "gone",
                .method = "GET", .path = "/v1/phone/" UUID_A, .http_status = 200 }), 0);
        assert_int_equal(ledger_find(f->l, UUID_A, &p), 0);
        assert_int_equal(p.state, STATE_RELEASED);
        assert_null(p.last_error);
        phone_done(&p);

        /* The history still tells what failed. */
        assert_int_equal(ledger_history(f->l, pk, collect_history, &hs), 0);
        assert_int_equal(hs.n, 4);
        assert_int_equal(hs.row[0].http_status, 503);
        assert_string_equal(hs.row[1].new_state, "retrying");
        assert_string_equal(hs.row[1].detail, "will retry");
        hist_done(&hs);
}

typedef struct Phones {
        int64_t pk[4], released_at[4];
        size_t n;
} Phones;

static int collect_released_at(const Phone *p, void *userdata) {
        Phones *ps = userdata;

        assert_true(ps->n < ELEMENTSOF(ps->pk));
        ps->pk[ps->n] = p->pk;
        ps->released_at[ps->n++] = p->released_at;
        return 0;
}

static void test_released_at_is_the_step_into_released(void **state) {
        Fixture *f = *state;
        int64_t a = add_phone(f->l, "+34910000001", UUID_A, "+34910000001", STATE_PENDING);
        int64_t b = add_phone(f->l, "+34910000002", UUID_B, "+34910000002", STATE_PENDING);
        Phones ps = {};
        Hist hs = {};
        Phone p;

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = a, .from = STATE_PENDING, .to = STATE_RELEASED, .attempts = -1, .next_at = -1,
                .method = "DELETE", .path = "/v1/phone/" UUID_A, .http_status = 204, .detail = "released" }), 0);
        assert_int_equal(ledger_history(f->l, a, collect_history, &hs), 0);
        assert_int_equal(hs.n, 2);

        assert_int_equal(ledger_find(f->l, UUID_A, &p), 0);
        assert_true(p.released_at > 0);
        assert_int_equal(p.released_at, hs.row[1].at);
        phone_done(&p);
        assert_int_equal(ledger_find(f->l, UUID_B, &p), 0);
        assert_int_equal(p.released_at, 0);
        phone_done(&p);

        assert_int_equal(ledger_list(f->l, -1, collect_released_at, &ps), 0);
        assert_int_equal(ps.n, 2);
        assert_int_equal(ps.pk[0], a);
        assert_int_equal(ps.released_at[0], hs.row[1].at);
        assert_int_equal(ps.pk[1], b);
        assert_int_equal(ps.released_at[1], 0);
        hist_done(&hs);
}

typedef struct Audit {
        struct {
                int64_t seq, at;
                char *time, *key, *number, *kind, *new_state, *method, *detail, *reason, *json;
                int http_status;
                unsigned attempt;
                bool clock_back;
        } row[16];
        size_t n;
} Audit;

static int collect_audit(const AuditStep *a, void *userdata) {
        Audit *au = userdata;

        assert_true(au->n < ELEMENTSOF(au->row));
        au->row[au->n].seq = a->h.seq;
        au->row[au->n].at = a->h.at;
        au->row[au->n].time = dup_or_null(a->time);
        au->row[au->n].key = dup_or_null(a->key);
        au->row[au->n].number = dup_or_null(a->number);
        au->row[au->n].kind = dup_or_null(a->h.kind);
        au->row[au->n].new_state = dup_or_null(a->h.new_state);
        au->row[au->n].method = dup_or_null(a->h.method);
        au->row[au->n].detail = dup_or_null(a->h.detail);
        au->row[au->n].reason = dup_or_null(a->reason);
        au->row[au->n].json = dup_or_null(a->json);
        au->row[au->n].http_status = a->h.http_status;
        au->row[au->n].attempt = a->attempt;
        au->row[au->n].clock_back = a->clock_back;
        au->n++;
        return 0;
}

static void audit_done(Audit *au) {
        for (size_t i = 0; i < au->n; i++) {
                free(au->row[i].time), free(au->row[i].key), free(au->row[i].number), free(au->row[i].kind);
                free(au->row[i].new_state), free(au->row[i].method), free(au->row[i].detail), free(au->row[i].json);
                free(au->row[i].reason);
        }
        au->n = 0;
}

/* Every step of every phone in order, with the phone it belongs to and the
 * DELETEs on record up to it. */
static void test_audit_gives_every_step_with_its_phone_and_attempt(void **state) {
        Fixture *f = *state;
        int64_t a = add_phone(f->l, "+34910000001", UUID_A, "+34910000001", STATE_PENDING);
        int64_t b = add_phone(f->l, UUID_B, UUID_B, NULL, STATE_PENDING);
        Audit au = {};

        assert_int_equal(ledger_exec(f->l, "UPDATE phones SET reason = 'OPS-1' WHERE key = '+34910000001'"), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = a, .from = STATE_PENDING, .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = -1, .sent_at = 10,
                .detail = "DELETE leaves" }), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = a, .from = STATE_IN_FLIGHT, .to = STATE_RETRYING, .attempts = 1, .next_at = -1,
                .error = "HTTP 429", .detail = "throttled",
                .method = "DELETE", .path = "/v1/phone/" UUID_A, .http_status = 429 }), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = b, .from = STATE_PENDING, .to = STATE_DEFERRED, .attempts = -1, .next_at = -1,
                .api_number = "+34910000002", .detail = "reserved",
                .method = "GET", .path = "/v1/phone/" UUID_B, .http_status = 200 }), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = a, .from = STATE_RETRYING, .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = -1, .sent_at = 20,
                .detail = "DELETE leaves" }), 0);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = a, .from = STATE_IN_FLIGHT, .to = STATE_RELEASED, .attempts = -1, .next_at = -1,
                .detail = "say \"bye\"\nnow",
                .method = "DELETE", .path = "/v1/phone/" UUID_A, .http_status = 204 }), 0);

        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = -1 }, collect_audit, &au), 0);
        assert_int_equal(au.n, 8);
        for (size_t i = 1; i < au.n; i++)
                assert_true(au.row[i - 1].seq < au.row[i].seq);
        /* a: in_flight (no DELETE yet), the 429 and its retrying (the first), */
        assert_string_equal(au.row[0].key, "+34910000001");
        assert_string_equal(au.row[0].new_state, "in_flight");
        assert_int_equal(au.row[0].attempt, 0);
        assert_string_equal(au.row[1].method, "DELETE");
        assert_int_equal(au.row[1].http_status, 429);
        assert_int_equal(au.row[1].attempt, 1);
        assert_string_equal(au.row[2].new_state, "retrying");
        assert_int_equal(au.row[2].attempt, 1);
        /* b, known by its id, numbered as the API gave it; a look is no attempt, */
        assert_string_equal(au.row[3].key, UUID_B);
        assert_string_equal(au.row[3].number, "+34910000002");
        assert_string_equal(au.row[3].method, "GET");
        assert_null(au.row[3].reason);
        assert_int_equal(au.row[3].attempt, 0);
        assert_string_equal(au.row[4].new_state, "deferred");
        /* a again: in_flight, the 204 and released (the second). */
        assert_string_equal(au.row[5].new_state, "in_flight");
        assert_int_equal(au.row[5].attempt, 1);
        assert_int_equal(au.row[6].http_status, 204);
        assert_int_equal(au.row[6].attempt, 2);
        assert_string_equal(au.row[7].new_state, "released");
        assert_string_equal(au.row[7].number, "+34910000001");
        assert_string_equal(au.row[7].reason, "OPS-1");
        assert_string_equal(au.row[7].detail, "say \"bye\"\nnow");
        assert_int_equal(au.row[7].attempt, 2);
        assert_null(au.row[7].json);
        audit_done(&au);

        /* One state, as JSON that SQLite escaped. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = STATE_RELEASED, .json = true },
                                      collect_audit, &au), 0);
        assert_int_equal(au.n, 1);
        assert_non_null(strstr(au.row[0].json, "\"key\":\"+34910000001\""));
        assert_non_null(strstr(au.row[0].json, "\"from\":\"in_flight\",\"to\":\"released\""));
        assert_non_null(strstr(au.row[0].json, "\"attempt\":2"));
        assert_non_null(strstr(au.row[0].json, "\"reason\":\"OPS-1\",\"detail\":\"say \\\"bye\\\"\\nnow\""));
        assert_non_null(strstr(au.row[0].json, "\"http_status\":null"));
        audit_done(&au);
}

static int stop_audit(const AuditStep *a, void *userdata) {
        ++*(int *) userdata;
        return -ECANCELED;
}

static int stop_history(const History *h, void *userdata) {
        ++*(int *) userdata;
        return -ECANCELED;
}

static void test_audit_by_time(void **state) {
        Fixture *f = *state;
        int calls = 0;
        int64_t a = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        uint64_t steps;
        int64_t last;
        Audit au = {};

        assert_int_equal(ledger_history_stats(f->l, &steps, &last), 0);
        assert_int_equal(steps, 0);
        assert_int_equal(last, 0);
        /* 1 s, 2.5 s and 3 s after the epoch. */
        for (int64_t t = 1; t <= 3; t++)
                assert_int_equal(ledger_history_add(f->l, a, t == 2 ? 2500000 : t * 1000000, "state", NULL, "pending",
                                                    NULL, NULL, 0, 0, NULL), 0);

        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .since = 2000000, .state = -1 }, collect_audit, &au), 0);
        assert_int_equal(au.n, 2);
        assert_string_equal(au.row[0].time, "1970-01-01T00:00:02.500Z");
        assert_string_equal(au.row[1].time, "1970-01-01T00:00:03.000Z");
        audit_done(&au);
        /* until is not included: consecutive exports do not overlap. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .until = 3000000, .state = -1 }, collect_audit, &au), 0);
        assert_int_equal(au.n, 2);
        assert_int_equal(au.row[0].at, 1000000);
        assert_int_equal(au.row[1].at, 2500000);
        audit_done(&au);
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .since = 2000000, .until = 3000000, .state = -1 },
                                      collect_audit, &au), 0);
        assert_int_equal(au.n, 1);
        assert_int_equal(au.row[0].at, 2500000);
        audit_done(&au);
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = STATE_FAILED }, collect_audit, &au), 0);
        assert_int_equal(au.n, 0);
        /* The callback can stop either walk; its error comes back. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = -1 }, stop_audit, &calls), -ECANCELED);
        assert_int_equal(calls, 1);
        assert_int_equal(ledger_history(f->l, a, stop_history, &calls), -ECANCELED);
        assert_int_equal(calls, 2);

        assert_int_equal(ledger_history_stats(f->l, &steps, &last), 0);
        assert_int_equal(steps, 3);
        assert_int_equal(last, 3000000);
}

/* A cursor on the sequence: what was recorded after it, whatever the wall
 * clock said, each step recorded earlier than the one before it flagged
 * (against the step before it in the ledger, exported or not). */
static void test_audit_after_seq_and_the_clock_stepping_back(void **state) {
        Fixture *f = *state;
        int64_t a = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        /* 1 s, 3 s, back to 2 s, 2.5 s, the same 2.5 s, 4 s after the epoch. */
        static const int64_t at[] = { 1000000, 3000000, 2000000, 2500000, 2500000, 4000000 };
        static const bool back[] = { false, false, true, false, false, false };
        int64_t seq[ELEMENTSOF(at)];
        Audit au = {};

        for (size_t i = 0; i < ELEMENTSOF(at); i++) {
                assert_int_equal(ledger_history_add(f->l, a, at[i], "state", NULL, i == 3 ? "released" : "pending",
                                                    NULL, NULL, 0, 0, NULL), 0);
                seq[i] = sqlite3_last_insert_rowid(ledger_db(f->l));
        }

        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = -1 }, collect_audit, &au), 0);
        assert_int_equal(au.n, ELEMENTSOF(at));
        for (size_t i = 0; i < au.n; i++) {
                assert_int_equal(au.row[i].seq, seq[i]);
                /* at as recorded, the step back too */
                assert_int_equal(au.row[i].at, at[i]);
                assert_int_equal(au.row[i].clock_back, back[i]);
        }
        audit_done(&au);

        /* After the second step: the rest, in order; the first of them flagged
         * against the step before it, which this export leaves out. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .after_seq = seq[1], .state = -1, .json = true },
                                      collect_audit, &au), 0);
        assert_int_equal(au.n, 4);
        for (size_t i = 0; i < au.n; i++)
                assert_int_equal(au.row[i].seq, seq[i + 2]);
        assert_true(au.row[0].clock_back);
        assert_non_null(strstr(au.row[0].json, "\"clock_back\":true}"));
        assert_false(au.row[1].clock_back);
        assert_non_null(strstr(au.row[1].json, "\"clock_back\":false}"));
        audit_done(&au);

        /* With a state: the steps into it after the cursor. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .after_seq = seq[2], .state = STATE_RELEASED },
                                      collect_audit, &au), 0);
        assert_int_equal(au.n, 1);
        assert_int_equal(au.row[0].seq, seq[3]);
        audit_done(&au);
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .after_seq = seq[3], .state = STATE_RELEASED },
                                      collect_audit, &au), 0);
        assert_int_equal(au.n, 0);

        /* The last step: nothing new, which is no error; one past it was
         * never reached by this history. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .after_seq = seq[5], .state = -1 }, collect_audit, &au), 0);
        assert_int_equal(au.n, 0);
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .after_seq = seq[5] + 1, .state = -1 },
                                      collect_audit, &au), -ERANGE);
        assert_int_equal(au.n, 0);
}

/* A step whose time no RFC 3339 string can hold (a hand-edited row in
 * year 10000) stops the export with an error, after the steps before it:
 * an audit trail is never printed with a hole or a made-up time. */
static void test_audit_refuses_a_time_it_cannot_write(void **state) {
        Fixture *f = *state;
        int64_t a = add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_PENDING);
        Audit au = {};

        assert_int_equal(ledger_history_add(f->l, a, 1000000, "state", NULL, "pending", NULL, NULL, 0, 0, NULL), 0);
        /* 10000-01-01T00:00:00Z */
        assert_int_equal(ledger_history_add(f->l, a, 253402300800LL * 1000000, "state", "pending", "failed",
                                            NULL, NULL, 0, 0, NULL), 0);
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = -1 }, collect_audit, &au), -EBADMSG);
        assert_int_equal(au.n, 1);
        assert_string_equal(au.row[0].time, "1970-01-01T00:00:01.000Z");
        audit_done(&au);
        /* The filter that leaves it out reads the rest. */
        assert_int_equal(ledger_audit(f->l, &(AuditFilter) { .state = STATE_PENDING }, collect_audit, &au), 0);
        assert_int_equal(au.n, 1);
        audit_done(&au);
}

/* ---- a stop during long work --------------------------------------------- */

static bool stop_now(void *userdata) {
        ++*(unsigned *) userdata;
        return true;
}

/* retired's stop cuts a long load or plan short through the progress
 * callback: the statement fails with -EINTR and takes back what it began;
 * with the callback gone, the same work goes through. */
static void test_progress_callback_interrupts_and_takes_back(void **state) {
        static const char sql[] = "INSERT INTO meta (name, value) SELECT 'sum', sum(x) FROM (WITH RECURSIVE"
                                  " c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) SELECT x FROM c)";
        Fixture *f = *state;
        unsigned calls = 0;
        char *v = NULL;

        ledger_on_progress(f->l, stop_now, &calls);
        assert_int_equal(ledger_exec(f->l, sql), -EINTR);
        assert_int_equal(calls, 1);
        assert_int_equal(ledger_meta_get(f->l, "sum", &v), -ENOENT);

        ledger_on_progress(f->l, NULL, NULL);
        assert_int_equal(ledger_exec(f->l, sql), 0);
        assert_int_equal(calls, 1);
        assert_int_equal(ledger_meta_get(f->l, "sum", &v), 0);
        assert_string_equal(v, "20000100000");
        free(v);
}

/* ---- retry -------------------------------------------------------------- */

static void test_retry_says_what_it_did(void **state) {
        Fixture *f = *state;
        char *msg = NULL;

        add_phone(f->l, "+34910000001", NULL, "+34910000001", STATE_FAILED);
        add_phone(f->l, "+34910000002", NULL, "+34910000002", STATE_RELEASED);
        assert_int_equal(ledger_retry(f->l, "+34 910 000 001", &msg), 0);
        assert_string_equal(msg, "+34 910 000 001 is pending again");
        free(msg);
        assert_int_equal(state_of(f->l, "+34910000001"), STATE_PENDING);
        assert_int_equal(ledger_retry(f->l, "+34910000002", &msg), -EBUSY);
        assert_string_equal(msg, "+34910000002 is released, not failed or in_use");
        free(msg);
        /* An in_use row is looked at now: pending again, its agents gone with the state. */
        add_phone(f->l, "+34910000003", NULL, "+34910000003", STATE_IN_USE);
        assert_int_equal(ledger_exec(f->l, "UPDATE phones SET inbound_agent = 'a' WHERE key = '+34910000003'"), 0);
        assert_int_equal(ledger_retry(f->l, "+34910000003", &msg), 0);
        free(msg);
        assert_int_equal(state_of(f->l, "+34910000003"), STATE_PENDING);
        assert_int_equal(query_int(f->path, "SELECT count(*) FROM phones WHERE inbound_agent IS NOT NULL"), 0);
        assert_int_equal(ledger_retry(f->l, "nope", &msg), -ENOENT);
        assert_string_equal(msg, "no phone nope in the ledger");
        free(msg);
}

/* An operator may paste an id in capitals, as a dashboard shows it: it
 * names the row kept in lowercase, for show and for retry alike. */
static void test_find_and_retry_take_an_id_in_capitals(void **state) {
        static const char lower[] = "3c90c3cc-0d44-4b50-8888-8dd25736052a", upper[] = "3C90C3CC-0D44-4B50-8888-8DD25736052A";
        Fixture *f = *state;
        char *msg = NULL;
        int64_t by_id, by_number;
        Phone p;

        by_id = add_phone(f->l, lower, lower, NULL, STATE_FAILED);
        /* Declared by number, resolved to its id by the API. */
        by_number = add_phone(f->l, "+34910000001", "0000000a-000b-400c-8d0e-00000000000f", "+34910000001",
                              STATE_RELEASED);
        assert_int_equal(ledger_find(f->l, upper, &p), 0);
        assert_int_equal(p.pk, by_id);
        phone_done(&p);
        assert_int_equal(ledger_find(f->l, "0000000A-000B-400C-8D0E-00000000000F", &p), 0);
        assert_int_equal(p.pk, by_number);
        phone_done(&p);
        assert_int_equal(ledger_retry(f->l, upper, &msg), 0);
        free(msg);
        assert_int_equal(state_of(f->l, lower), STATE_PENDING);
}

static void test_state_names(void **state) {
        static const char *const names[_STATE_MAX] = {
                "pending", "deferred", "in_flight", "retrying", "scheduled",
                "released", "failed", "cancelled", "unresolved", "in_use",
        };

        for (int s = 0; s < _STATE_MAX; s++) {
                assert_string_equal(state_to_string((PhoneState) s), names[s]);
                assert_int_equal(state_from_string(names[s]), s);
        }
        assert_null(state_to_string(_STATE_MAX));
        assert_null(state_to_string(_STATE_INVALID));
        assert_int_equal(state_from_string("Pending"), _STATE_INVALID);
        assert_int_equal(state_from_string(NULL), _STATE_INVALID);
}

/* An operator's pause: who, when and why survive a reopen; a record that
 * cannot be read reads as paused (-EBADMSG, on); resume clears it. */
static void test_pause_is_kept_and_read_back(void **state) {
        Fixture *f = *state;
        Pause p = {};
        char *long_reason;

        assert_int_equal(ledger_pause_get(f->l, &p), 0);
        assert_false(p.on);
        assert_int_equal(ledger_pause_set(f->l, 1000, 1764583200000000, "change freeze, OPS-9"), 0);
        ledger_close(f->l);
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(ledger_pause_get(f->l, &p), 0);
        assert_true(p.on);
        assert_int_equal(p.uid, 1000);
        assert_int_equal(p.at, 1764583200000000);
        assert_string_equal(p.reason, "change freeze, OPS-9");
        pause_done(&p);

        assert_int_equal(ledger_pause_set(f->l, 0, 1, NULL), 0);
        assert_int_equal(ledger_pause_get(f->l, &p), 0);
        assert_true(p.on);
        assert_null(p.reason);
        pause_done(&p);

        long_reason = calloc(1, PAUSE_MAX_REASON + 2);
        assert_non_null(long_reason);
        memset(long_reason, 'x', PAUSE_MAX_REASON + 1);
        assert_int_equal(ledger_pause_set(f->l, 0, 1, long_reason), -E2BIG);
        free(long_reason);

        /* Not a pause record, a uid past 32 bits, a time past int64_t: each
         * reads as paused, with the error. */
        {
                static const char *const bad[] = {
                        "not a pause", "1000", "4294967296 1 x", "1 9223372036854775808 x", "",
                };

                for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                        assert_int_equal(ledger_meta_set(f->l, "pause", bad[i]), 0);
                        p = (Pause) {};
                        assert_int_equal(ledger_pause_get(f->l, &p), -EBADMSG);
                        assert_true(p.on);
                        pause_done(&p);
                }
        }

        assert_int_equal(ledger_pause_clear(f->l), 0);
        assert_int_equal(ledger_pause_get(f->l, &p), 0);
        assert_false(p.on);
}

/* Success is SQLITE_OK, SQLITE_ROW and SQLITE_DONE, nothing else: an
 * extended code whose low byte is 0 once passed for SQLITE_OK.  Extended
 * codes (extended_result_codes is on) read as their primary. */
static void test_sqlite_codes_to_errno(void **state) {
        assert_int_equal(sqlite_to_errno(SQLITE_OK), 0);
        assert_int_equal(sqlite_to_errno(SQLITE_ROW), 0);
        assert_int_equal(sqlite_to_errno(SQLITE_DONE), 0);
        assert_int_equal(sqlite_to_errno(SQLITE_OK_SYMLINK), -EIO);
        assert_int_equal(sqlite_to_errno(SQLITE_OK_LOAD_PERMANENTLY), -EIO);
        assert_int_equal(sqlite_to_errno(0x7f00), -EIO);
        assert_int_equal(sqlite_to_errno(SQLITE_NOMEM), -ENOMEM);
        assert_int_equal(sqlite_to_errno(SQLITE_IOERR_WRITE), -EIO);
        assert_int_equal(sqlite_to_errno(SQLITE_FULL), -ENOSPC);
        assert_int_equal(sqlite_to_errno(SQLITE_INTERRUPT), -EINTR);
        assert_int_equal(sqlite_to_errno(SQLITE_BUSY_SNAPSHOT), -EBUSY);
        assert_int_equal(sqlite_to_errno(SQLITE_CONSTRAINT_TRIGGER), -EPERM);
        assert_int_equal(sqlite_to_errno(SQLITE_CONSTRAINT_UNIQUE), -EEXIST);
        assert_int_equal(sqlite_to_errno(SQLITE_LOCKED_SHAREDCACHE), -EBUSY);
        assert_int_equal(sqlite_to_errno(SQLITE_READONLY_DBMOVED), -EACCES);
        assert_int_equal(sqlite_to_errno(SQLITE_PERM), -EACCES);
        assert_int_equal(sqlite_to_errno(SQLITE_AUTH), -EACCES);
        assert_int_equal(sqlite_to_errno(SQLITE_CANTOPEN_ISDIR), -ENOENT);
        assert_int_equal(sqlite_to_errno(SQLITE_CORRUPT_INDEX), -EBADMSG);
        assert_int_equal(sqlite_to_errno(SQLITE_NOTADB), -EBADMSG);
        /* A step that must give a row and gives none failed too. */
        assert_int_equal(sqlite_row_errno(SQLITE_DONE), -ENODATA);
        assert_int_equal(sqlite_row_errno(SQLITE_NOMEM), -ENOMEM);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_create_makes_a_wal_file_at_the_current_version),
                cmocka_unit_test(test_a_new_ledger_has_a_rollback_journal_until_settled),
                cmocka_unit_test(test_discard_removes_only_a_file_this_open_made),
                T(test_pause_is_kept_and_read_back),
                T(test_reopen_keeps_data),
                cmocka_unit_test(test_read_of_missing_file_is_empty_and_creates_nothing),
                T(test_newer_schema_is_refused_by_both_modes),
                cmocka_unit_test(test_refused_file_is_left_untouched),
                cmocka_unit_test(test_older_schema_needs_the_daemon),
                cmocka_unit_test(test_a_file_that_is_not_a_ledger_is_refused_untouched),
                cmocka_unit_test(test_a_path_under_a_file_is_an_error),
                T(test_history_and_rows_cannot_be_removed),
                T(test_update_from_wrong_state_is_stale_and_writes_nothing),
                T(test_update_records_call_and_state_together),
                T(test_update_in_the_same_state_records_the_call_only),
                T(test_find_by_key_id_and_written_number),
                T(test_counts_and_list),
                T(test_counts_follow_every_change),
                T(test_a_batch_reads_about_the_rows_it_takes),
                T(test_the_next_due_is_found_among_the_dated_rows),
                T(test_a_row_in_an_unknown_state_is_refused),
                T(test_due_rows_by_set_and_batch),
                T(test_listed_phones_by_id_and_number),
                T(test_meta),
                T(test_released_stays_released),
                T(test_scheduled_only_becomes_released),
                T(test_in_flight_needs_the_time_its_delete_left),
                T(test_delete_out_needs_a_look_before_failed_unresolved_or_pending),
                T(test_forward_rules_hold_for_any_writer),
                T(test_update_checks_version_and_due_time),
                T(test_one_writer_per_file_by_any_name),
                cmocka_unit_test(test_migration_from_version_1_marks_deletes_that_may_be_out),
                cmocka_unit_test_setup_teardown(test_migration_to_version_5_adds_in_use, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_to_version_6_keeps_the_states, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_to_version_6_leaves_a_check_it_did_not_write, setup, teardown),
                T(test_migration_to_version_3_drops_the_errors_of_released_rows),
                T(test_released_drops_its_error),
                T(test_released_at_is_the_step_into_released),
                T(test_audit_gives_every_step_with_its_phone_and_attempt),
                T(test_audit_by_time),
                T(test_audit_after_seq_and_the_clock_stepping_back),
                T(test_audit_refuses_a_time_it_cannot_write),
                T(test_progress_callback_interrupts_and_takes_back),
                T(test_retry_says_what_it_did),
                T(test_find_and_retry_take_an_id_in_capitals),
                cmocka_unit_test_setup_teardown(test_a_hold_is_kept_by_the_boot_clock_when_the_wall_clock_says_over,
                                                setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_hold_is_not_lengthened_by_the_wall_clock, setup, teardown),
                cmocka_unit_test_setup_teardown(test_holds_of_another_boot_start_again_whole, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_to_version_4_keeps_the_holds_running, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_transaction_left_open_does_not_lock_the_ledger, setup, teardown),
                cmocka_unit_test(test_state_names),
                cmocka_unit_test(test_sqlite_codes_to_errno),
        };

        return cmocka_run_group_tests_name("test-ledger", tests, NULL, NULL);
}
