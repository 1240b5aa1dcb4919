/* SPDX-License-Identifier: MIT */
/* The plan: declarations diffed against the ledger.  The declarations go
 * into a TEMP table so that SQLite does the matching with indexes; that
 * works on a read-only connection too, so `retirectl plan` never writes. */

#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "internal.h"

static const char *const change_names[_CHANGE_MAX] = {
        [CHANGE_ADD] = "add", [CHANGE_REDECLARE] = "redeclare", [CHANGE_CANCEL] = "cancel",
        [CHANGE_UPDATE] = "update", [CHANGE_KEEP] = "keep",
};

const char *change_kind_to_string(ChangeKind k) {
        return k < _CHANGE_MAX ? change_names[k] : NULL;
}

Plan *plan_free(Plan *p) {
        if (!p)
                return NULL;
        if (p->ledger) {
                (void) ledger_exec(p->ledger, "DROP TABLE IF EXISTS temp.plan");
                (void) sqlite3_db_release_memory(ledger_db(p->ledger));
        }
        free(p);
        return NULL;
}

size_t plan_changes(const Plan *p) {
        return p->n - p->count[CHANGE_KEEP];
}

/* temp.plan holds what each change to a row is (kind, the row, the
 * declaration, the state it is in and goes to), not copies of their
 * fields: those are read from the row and the declaration when the change
 * is shown or applied.  Keyed by kind and row, so that each kind is read
 * in ledger order by a range of its key, and counted with no sort.  An add
 * names no row: the adds are the declarations that name none, read from
 * temp.decl itself, not copied. */
static const char plan_sql[] =
        "DROP TABLE IF EXISTS temp.plan;"
        "CREATE TEMP TABLE plan (kind INTEGER NOT NULL, pk INTEGER NOT NULL, seq INTEGER, from_state TEXT, to_state TEXT,"
        "  PRIMARY KEY (kind, pk)) WITHOUT ROWID;"
        /* Every declared row, with the first declaration that names it. */
        "INSERT INTO temp.plan SELECT kind, pk, seq, state, CASE kind"
        /* Declared again while a DELETE of it may be out: what that DELETE
         * did is found out first, as for any row in flight. */
        "   WHEN 1 THEN CASE WHEN sent_at != 0 THEN 'in_flight' ELSE 'pending' END"
        /* A failed phone declared anew (another id or number): decided afresh. */
        "   ELSE CASE WHEN state = 'failed' AND renamed THEN 'pending' ELSE state END END"
        " FROM (SELECT p.pk AS pk, d.seq AS seq, p.state AS state, p.sent_at AS sent_at,"
        "   p.number IS NOT d.number OR (d.id IS NOT NULL AND p.id IS NOT d.id) AS renamed,"
        "   CASE WHEN p.state = 'cancelled' THEN 1"
        /* A phone kept because an agent is on it, now to be released all the
         * same: a new release, as much as a new declaration (counted by
         * safety.max_new_releases, held for approval, a new hold). */
        "        WHEN p.state = 'in_use' AND d.release_in_use THEN 1"
        /* A corrected, added or dropped number, or an added id, must reach
         * the row, or the daemon would go on acting on what was first
         * declared.  (A number-declared row's resolved id is not declared.) */
        "        WHEN p.state IN ('pending','deferred','retrying','unresolved','failed','in_use')"
        "         AND (p.reason IS NOT d.reason OR p.not_before != d.not_before OR p.number IS NOT d.number"
        "              OR (d.id IS NOT NULL AND p.id IS NOT d.id) OR p.release_in_use != d.release_in_use) THEN 3 END AS kind"
        "  FROM temp.declared m JOIN phones p ON p.pk = m.pk JOIN temp.decl d ON d.seq = m.seq)"
        " WHERE kind IS NOT NULL;"
        /* Every row no longer declared, found by its state alone (an index
         * that holds it): a ledger of years is not read row by row.  An
         * in_flight row is cancelled too: whatever its DELETE did, the
         * daemon must not send another.  A cancelled row whose DELETE may
         * have gone out is looked at on resync and recorded as released or
         * scheduled if it was. */
        "INSERT INTO temp.plan SELECT CASE WHEN state IN ('released','scheduled','failed') THEN 4 ELSE 2 END, pk,"
        "  NULL, state, CASE WHEN state IN ('released','scheduled','failed') THEN state ELSE 'cancelled' END"
        " FROM phones WHERE state IN ('pending','deferred','retrying','unresolved','in_flight','in_use','released',"
        "  'scheduled','failed')"
        "  AND (@notes OR state NOT IN ('released','scheduled','failed'))"
        "  AND pk NOT IN (SELECT pk FROM temp.declared)";

static uint64_t fnv1a(const char *s) {
        uint64_t h = 0xcbf29ce484222325ULL;

        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= 0x100000001b3ULL;
        }
        return h;
}

/* The hash names the set of new releases, whatever order they were
 * declared in: moving a declaration to another file is not a new plan.
 * A sum of each key's hash is the same in any order, with no sort of a
 * million keys.  The adds are counted on the way. */
static int plan_hash(Ledger *l, uint64_t *h, size_t *ret_adds) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        uint64_t sum = 0, n = 0;
        size_t adds = 0;
        int rc;

        rc = sqlite3_prepare_v2(ledger_db(l), "SELECT 0, key FROM temp.decl WHERE phone IS NULL"
                                " UNION ALL SELECT 1, p.key FROM temp.plan JOIN phones p ON p.pk = plan.pk WHERE plan.kind = 1",
                                -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const char *key = (const char *) sqlite3_column_text(st, 1);
                if (!key)
                        return -EBADMSG;
                sum += fnv1a(key);
                n++;
                adds += sqlite3_column_int(st, 0) == 0;
        }
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        /* Mixed with the count, so that no set hashes like the empty one. */
        *h = (sum ^ (n * 0x9e3779b97f4a7c15ULL)) * 0x100000001b3ULL;
        *ret_adds = adds;
        return 0;
}

static int run_plan_sql(Ledger *l, bool notes) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        const char *tail = plan_sql;
        int rc;

        /* Several statements, one with a parameter. */
        while (tail && *tail) {
                rc = sqlite3_prepare_v2(ledger_db(l), tail, -1, &st, &tail);
                if (rc != SQLITE_OK)
                        return sqlite_to_errno(rc);
                if (!st)
                        break;
                if (sqlite3_bind_parameter_count(st) > 0)
                        (void) sqlite3_bind_int(st, sqlite3_bind_parameter_index(st, "@notes"), notes);
                rc = sqlite3_step(st);
                (void) sqlite3_finalize(TAKE_PTR(st));
                if (rc != SQLITE_DONE)
                        return sqlite_to_errno(rc);
        }
        return 0;
}

static int compute(Ledger *l, const Config *c, bool notes, Plan **ret) {
        _cleanup_(plan_freep) Plan *p = NULL;
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        uint64_t h = 0;
        int rc, r;

        p = calloc(1, sizeof(Plan));
        if (!p)
                return -ENOMEM;
        r = ledger_decls_match(l);
        if (r < 0)
                return r;
        p->ledger = l;
        r = run_plan_sql(l, notes);
        if (r < 0)
                return r;
        rc = sqlite3_prepare_v2(ledger_db(l), "SELECT kind, count(*) FROM temp.plan GROUP BY kind", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                int k = sqlite3_column_int(st, 0);
                int64_t n = sqlite3_column_int64(st, 1);

                if (k <= CHANGE_ADD || k >= _CHANGE_MAX)
                        return -EBADMSG;
                p->count[k] = (size_t) n;
                p->n += (size_t) n;
        }
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        r = plan_hash(l, &h, &p->count[CHANGE_ADD]);
        if (r < 0)
                return r;
        p->n += p->count[CHANGE_ADD];
        p->new_releases = p->count[CHANGE_ADD] + p->count[CHANGE_REDECLARE];
        snprintf(p->hash, sizeof p->hash, "%012" PRIx64, h >> 16);
        p->needs_approval = p->new_releases > c->max_new_releases;
        p->hold = (int64_t) c->hold + (c->hold > (double) (int64_t) c->hold);
        *ret = TAKE_PTR(p);
        return 0;
}

int plan_compute(Ledger *l, const Config *c, Plan **ret) {
        return compute(l, c, true, ret);
}

/* The daemon has no use for the notes, and a ledger of years of releases
 * would make one per row. */
int plan_compute_changes(Ledger *l, const Config *c, Plan **ret) {
        return compute(l, c, false, ret);
}

/* A new or changed row shows what is declared, and where (the file and
 * the line, joined in C: in SQL that costs a string per row); a cancelled
 * or kept one what the ledger has, but its reason, which nothing shows.
 * One query per shape of change, so that each joins only the tables it
 * reads from. */
#define CHANGE_FROM_DECL \
        "d.key, d.id, d.number, d.reason, d.not_before, f.path"
#define CHANGE_FROM_ROW \
        "p.key, p.id, coalesce(p.number, p.api_number), NULL, p.not_before, p.declared_at"
#define CHANGE_OF_KIND " WHERE plan.kind = ?1 ORDER BY plan.pk LIMIT ?2"
static const char *const change_sql[_CHANGE_MAX] = {
        /* In declaration order.  (?1 is bound, and not needed.) */
        [CHANGE_ADD] = "SELECT 0, NULL, " CHANGE_FROM_DECL ", NULL, 'pending', d.line, d.release_in_use"
                       " FROM temp.decl d JOIN temp.decl_file f ON f.fid = d.file"
                       " WHERE d.phone IS NULL ORDER BY d.seq LIMIT ?2",
        [CHANGE_REDECLARE] = "SELECT plan.kind, plan.pk, p.key, d.id, d.number, d.reason, d.not_before,"
                             " f.path, plan.from_state, plan.to_state, d.line, d.release_in_use"
                             " FROM temp.plan JOIN phones p ON p.pk = plan.pk JOIN temp.decl d ON d.seq = plan.seq"
                             " JOIN temp.decl_file f ON f.fid = d.file"
                             CHANGE_OF_KIND,
        [CHANGE_CANCEL] = "SELECT plan.kind, plan.pk, " CHANGE_FROM_ROW ", plan.from_state, plan.to_state, NULL, NULL"
                          " FROM temp.plan JOIN phones p ON p.pk = plan.pk" CHANGE_OF_KIND,
};

static const char *change_query(ChangeKind k) {
        /* An update shows what is declared, as a redeclaration does; a
         * kept row what the ledger has, as a cancelled one does. */
        return change_sql[k == CHANGE_UPDATE ? CHANGE_REDECLARE : k == CHANGE_KEEP ? CHANGE_CANCEL : k];
}

/* FILE:LINE into at, which holds any path a file could be opened by.  By
 * hand: snprintf() takes ten times as long, 0.07 s of a plan that adds
 * 500,000, and the plan's time is a target (issue 12). */
static const char *file_line(char at[static PATH_MAX + 16], const char *file, int64_t line) {
        size_t n = file ? strlen(file) : 0;
        char digits[20], *d = digits + sizeof digits;
        uint64_t v = line > 0 ? (uint64_t) line : 0;

        if (!file || n >= PATH_MAX)
                return NULL;
        do
                *--d = (char) ('0' + v % 10);
        while (v /= 10);
        memcpy(at, file, n);
        at[n] = ':';
        memcpy(at + n + 1, d, (size_t) (digits + sizeof digits - d));
        at[n + 1 + (digits + sizeof digits - d)] = 0;
        return at;
}

static Change change_of(sqlite3_stmt *st, char at[static PATH_MAX + 16]) {
        const char *from = (const char *) sqlite3_column_text(st, 8), *to = (const char *) sqlite3_column_text(st, 9);
        const char *where = (const char *) sqlite3_column_text(st, 7);

        return (Change) {
                .kind = (ChangeKind) sqlite3_column_int(st, 0),
                .pk = sqlite3_column_int64(st, 1),
                .key = (const char *) sqlite3_column_text(st, 2),
                .id = (const char *) sqlite3_column_text(st, 3),
                .number = (const char *) sqlite3_column_text(st, 4),
                .reason = (const char *) sqlite3_column_text(st, 5),
                .not_before = sqlite3_column_int64(st, 6),
                .in_use = sqlite3_column_type(st, 11) == SQLITE_NULL ? IN_USE_UNSET :
                          sqlite3_column_int(st, 11) ? IN_USE_RELEASE : IN_USE_REFUSE,
                .declared_at = sqlite3_column_type(st, 10) == SQLITE_NULL ? where :
                               file_line(at, where, sqlite3_column_int64(st, 10)),
                .from = from ? state_from_string(from) : _STATE_INVALID,
                .to = to ? state_from_string(to) : _STATE_INVALID,
        };
}

static bool change_valid(const Change *c) {
        return c->kind < _CHANGE_MAX && c->key && c->to >= 0 && (c->kind == CHANGE_ADD || c->from >= 0) &&
               (c->declared_at || c->kind == CHANGE_CANCEL || c->kind == CHANGE_KEEP);
}

/* The changes of one kind: the adds in declaration order, the others in
 * ledger order. */
static int foreach_kind(Ledger *l, ChangeKind k, int64_t limit, int (*cb)(const Change *c, void *userdata),
                        void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        char at[PATH_MAX + 16];
        int rc, r;

        rc = sqlite3_prepare_v2(ledger_db(l), change_query(k), -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int(st, 1, (int) k);
        (void) sqlite3_bind_int64(st, 2, limit);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                Change c = change_of(st, at);

                if (!change_valid(&c))
                        return -EBADMSG;
                r = cb(&c, userdata);
                if (r < 0)
                        return r;
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int plan_foreach(const Plan *p, int kind, size_t limit, int (*cb)(const Change *c, void *userdata), void *userdata) {
        int r;

        for (int k = kind < 0 ? 0 : kind; k < (kind < 0 ? _CHANGE_MAX : kind + 1); k++) {
                r = foreach_kind(p->ledger, (ChangeKind) k, limit > INT64_MAX ? -1 : (int64_t) limit, cb, userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int step_one(sqlite3 *db, sqlite3_stmt *st) {
        int rc = sqlite3_step(st);
        (void) sqlite3_reset(st);
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        /* The row moved on since the plan was made: the plan is stale. */
        return sqlite3_changes(db) == 1 ? 0 : -ESTALE;
}

typedef struct Apply {
        Ledger *ledger;
        sqlite3_stmt *const *st;
        int64_t t, hold_until;      /* usec; seconds by the wall clock */
        int64_t hold;               /* seconds */
} Apply;

static int apply_one(const Change *c, void *userdata) {
        const Apply *a = userdata;
        Ledger *l = a->ledger;
        sqlite3 *db = ledger_db(l);
        sqlite3_stmt *s = a->st[c->kind];
        int64_t t = a->t, hold_until = a->hold_until;
        int64_t pk = c->pk;
        const char *detail;
        int r;

        /* A redeclaration, an update or a cancel (the adds are apply_adds()'s,
         * a kept row is a note): plan_apply() walks only the kinds it has a
         * statement for. */
        (void) sqlite3_clear_bindings(s);
        (void) sqlite3_bind_int64(s, 1, c->pk);
        (void) sqlite3_bind_text(s, 2, state_to_string(c->from), -1, SQLITE_STATIC);
        (void) sqlite3_bind_int64(s, 7, t);
        if (c->kind != CHANGE_CANCEL) {
                (void) sqlite3_bind_text(s, 3, state_to_string(c->to), -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(s, 4, c->reason, -1, SQLITE_STATIC);
                (void) sqlite3_bind_int64(s, 5, c->not_before);
                (void) sqlite3_bind_text(s, 6, c->declared_at, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(s, 8, c->number, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(s, 9, c->id, -1, SQLITE_STATIC);
                (void) sqlite3_bind_int64(s, 10, hold_until);
                (void) sqlite3_bind_int64(s, 11, a->hold);
                (void) sqlite3_bind_int(s, 12, c->in_use == IN_USE_RELEASE);
        }
        r = step_one(db, s);
        if (r < 0)
                return r;
        detail = c->kind == CHANGE_CANCEL ? "no longer declared" :
                 c->kind == CHANGE_UPDATE ? "declaration changed" : c->declared_at;
        return ledger_history_add(l, pk, t, "state", state_to_string(c->from), state_to_string(c->to),
                                  NULL, NULL, 0, 0, detail);
}

/* What a declaration (its not_before NB, id ID and number NUMBER, and the
 * hold HOLD in seconds: SQL expressions) makes of a row, in terms of the
 * row's columns as they are: plan_apply()'s UPDATEs write it, and
 * plan_foreach_row() shows it, with the same words.
 *
 * A new number without an id drops the id resolved from the old one,
 * unless a DELETE of that id may be out: that is settled by id first. */
#define ID_AFTER(ID, NUMBER) \
        "CASE WHEN " ID " IS NOT NULL THEN " ID " WHEN " NUMBER " IS NOT NULL AND number IS NOT " NUMBER \
        " AND sent_at = 0 THEN NULL ELSE id END"
/* What the DELETE acts on changed, or what it may do: a phone in use is
 * now released too (in_use to "release"; to "refuse" takes nothing away
 * from safety, and holds nothing). */
#define TARGET_CHANGED_BY(NB, ID, NUMBER, IN_USE) \
        "(not_before != " NB " OR number IS NOT " NUMBER " OR (" ID " IS NOT NULL AND id IS NOT " ID ")" \
        " OR (" IN_USE " AND NOT release_in_use))"
/* The hold on the boot-time clock, which no clock step moves: the wall
 * clock's hold_until only says the date, or holds longer. */
#define HOLD_BOOT_NEW_OF(HOLD) "CASE WHEN " HOLD " > 0 THEN boot_usec() + " HOLD " * 1000000 ELSE 0 END"
/* An update's hold: a new one when the target changed, never shorter than
 * the one running. */
#define HOLD_BOOT_UNTIL_UPDATED(CHANGED, HOLD) \
        "CASE WHEN " CHANGED " AND " HOLD " > 0 THEN max(" HOLD_BOOT_NEW_OF(HOLD) "," \
        "  CASE WHEN hold_boot IS boot_id() THEN hold_boot_until ELSE 0 END) ELSE hold_boot_until END"
#define HOLD_LEN_UPDATED(CHANGED, HOLD) "CASE WHEN " CHANGED " AND " HOLD " > 0 THEN max(hold_len, " HOLD ") ELSE hold_len END"
#define HOLD_BOOT_UPDATED(CHANGED, HOLD) "CASE WHEN " CHANGED " AND " HOLD " > 0 THEN boot_id() ELSE hold_boot END"

/* In an UPDATE, a column is its old value. */
#define ID_NUMBER_SET " id = " ID_AFTER("?9", "?8") ", number = ?8, release_in_use = ?12, version = version + 1"
#define TARGET_CHANGED TARGET_CHANGED_BY("?5", "?9", "?8", "?12")
#define HOLD_BOOT_NEW HOLD_BOOT_NEW_OF("?11")

/* The adds, all at once: a first start adds a million rows, and a
 * statement a row (and its history line) from C took three times as long.
 * The new rows are the ones after the largest pk before (rows are never
 * deleted, so pks only grow), each with its history line. */
static int apply_adds(Ledger *l, Plan *p, int64_t t, int64_t hold_until) {
        static const char add_sql[] =
                "INSERT INTO phones (key, id, number, reason, not_before, declared_at, state,"
                " created_at, updated_at, hold_until, hold_boot, hold_boot_until, hold_len, release_in_use)"
                " SELECT d.key, d.id, d.number, d.reason, d.not_before, f.path || ':' || d.line, 'pending', ?7, ?7, ?10,"
                "  CASE WHEN ?11 > 0 THEN boot_id() END, " HOLD_BOOT_NEW ", ?11, d.release_in_use"
                " FROM temp.decl d JOIN temp.decl_file f ON f.fid = d.file WHERE d.phone IS NULL ORDER BY d.seq";
        static const char history_sql[] =
                "INSERT INTO history (phone, at, kind, new_state, detail)"
                " SELECT pk, ?7, 'state', 'pending', declared_at FROM phones WHERE pk > ?1 ORDER BY pk";
        _cleanup_stmt_ sqlite3_stmt *add = NULL, *history = NULL;
        sqlite3 *db = ledger_db(l);
        int64_t before;
        usec_t t0, t1, t2;
        int rc, r;

        r = ledger_last_pk(l, &before);
        if (r < 0)
                return r;
        rc = sqlite3_prepare_v2(db, add_sql, -1, &add, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(db, history_sql, -1, &history, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(add, 7, t);
        (void) sqlite3_bind_int64(add, 10, hold_until);
        (void) sqlite3_bind_int64(add, 11, p->hold);
        t0 = now(CLOCK_MONOTONIC);
        rc = sqlite3_step(add);
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        /* Each one a declaration that named no row when the plan was made. */
        if ((size_t) sqlite3_changes64(db) != p->count[CHANGE_ADD])
                return -ESTALE;
        t1 = now(CLOCK_MONOTONIC);
        (void) sqlite3_bind_int64(history, 1, before);
        (void) sqlite3_bind_int64(history, 7, t);
        rc = sqlite3_step(history);
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        t2 = now(CLOCK_MONOTONIC);
        /* The declared set names them when next read (decl.c): if this
         * transaction is taken back, it finds no row by their keys. */
        ledger_decls_added(l);
        p->took_rows = t1 - t0;
        p->took_history = t2 - t1;
        return 0;
}

int plan_apply(Ledger *l, Plan *p, bool approved) {
        static const char *const sql[_CHANGE_MAX] = {
                [CHANGE_REDECLARE] = "UPDATE phones SET state = ?3, attempts = 0, next_at = 0, reason = ?4,"
                                     " not_before = ?5, declared_at = ?6, updated_at = ?7, hold_until = ?10,"
                                     " hold_boot = CASE WHEN ?11 > 0 THEN boot_id() END,"
                                     " hold_boot_until = " HOLD_BOOT_NEW ", hold_len = ?11,"
                                     ID_NUMBER_SET " WHERE pk = ?1 AND state = ?2",
                /* A new reason alone changes nothing the DELETE acts on: no new
                 * hold.  A new one never shortens the one running. */
                [CHANGE_UPDATE] = "UPDATE phones SET reason = ?4, not_before = ?5, declared_at = ?6, updated_at = ?7,"
                                  " state = ?3, attempts = CASE WHEN ?3 = state THEN attempts ELSE 0 END,"
                                  " next_at = CASE WHEN ?3 = state THEN next_at ELSE 0 END,"
                                  " hold_until = CASE WHEN " TARGET_CHANGED " THEN max(hold_until, ?10) ELSE hold_until END,"
                                  " hold_boot_until = " HOLD_BOOT_UNTIL_UPDATED(TARGET_CHANGED, "?11") ","
                                  " hold_len = " HOLD_LEN_UPDATED(TARGET_CHANGED, "?11") ","
                                  " hold_boot = " HOLD_BOOT_UPDATED(TARGET_CHANGED, "?11") ","
                                  ID_NUMBER_SET " WHERE pk = ?1 AND state = ?2",
                /* A DELETE of it may be out: what it did is looked at now. */
                [CHANGE_CANCEL] = "UPDATE phones SET state = 'cancelled', updated_at = ?7, version = version + 1,"
                                  " next_at = CASE WHEN sent_at != 0 THEN 0 ELSE next_at END"
                                  " WHERE pk = ?1 AND state = ?2",
        };
        sqlite3_stmt *st[_CHANGE_MAX] = {};
        bool hold = p->needs_approval && !approved;
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        /* Whole seconds, rounded up: the hold is never shorter than asked. */
        int64_t hold_until = p->hold > 0 ? (t + (int64_t) USEC_PER_SEC - 1) / (int64_t) USEC_PER_SEC + p->hold : 0;
        usec_t t0;
        int r, rc;

        if (plan_changes(p) == 0)
                return 0;
        r = ledger_begin(l);
        if (r < 0)
                return r;
        for (size_t k = 0; k < _CHANGE_MAX; k++) {
                if (!sql[k])
                        continue;
                rc = sqlite3_prepare_v2(ledger_db(l), sql[k], -1, &st[k], NULL);
                if (rc != SQLITE_OK) {
                        r = sqlite_to_errno(rc);
                        goto finish;
                }
        }
        /* temp.plan, or for the adds temp.decl, drives each walk while
         * phones is written: phones is only looked up in it, by pk, so the
         * writing does not disturb the reading.  Held, what adds or
         * declares again waits. */
        if (p->count[CHANGE_ADD] > 0 && !hold)
                r = apply_adds(l, p, t, hold_until);
        t0 = now(CLOCK_MONOTONIC);
        for (int k = 0; k < _CHANGE_MAX && r >= 0; k++)
                if (sql[k] && !(hold && k == CHANGE_REDECLARE))
                        r = foreach_kind(l, (ChangeKind) k, -1, apply_one,
                                         &(Apply) { .ledger = l, .st = st, .t = t, .hold_until = hold_until,
                                                    .hold = p->hold });
        p->took_changes = now(CLOCK_MONOTONIC) - t0;
finish:
        for (size_t k = 0; k < _CHANGE_MAX; k++)
                (void) sqlite3_finalize(st[k]);
        t0 = now(CLOCK_MONOTONIC);
        if (r >= 0)
                r = ledger_exec(l, "COMMIT");
        if (r < 0)
                (void) ledger_exec(l, "ROLLBACK");
        p->took_commit = now(CLOCK_MONOTONIC) - t0;
        return r;
}

/* Each declared row as plan_apply() (approved) would leave it: the row of
 * the first declaration naming it, with what a redeclaration (1) or an
 * update (3) writes, or the row an add writes (no pk).  ?1 is the hold. */
static const char rows_sql[] =
        "WITH x AS (SELECT d.seq AS d_seq, d.key AS d_key, d.id AS d_id, d.number AS d_number,"
        "  d.reason AS d_reason, d.not_before AS d_nb, f.path || ':' || d.line AS d_at,"
        "  plan.kind AS change, plan.to_state AS to_state,"
        "  p.pk AS pk, p.key AS key, p.id AS id, p.number AS number, p.reason AS reason, p.not_before AS not_before,"
        "  p.state AS state, p.attempts AS attempts, p.next_at AS next_at, p.provider AS provider,"
        "  p.scheduled_release_at AS scheduled_release_at, p.last_error AS last_error, p.declared_at AS declared_at,"
        "  p.updated_at AS updated_at, p.version AS version, p.sent_at AS sent_at, p.api_number AS api_number,"
        "  p.hold_until AS hold_until, p.hold_len AS hold_len, p.hold_boot AS hold_boot,"
        "  p.hold_boot_until AS hold_boot_until, p.nickname AS nickname, p.inbound_agent AS inbound_agent,"
        "  p.outbound_agent AS outbound_agent, p.release_in_use AS release_in_use,"
        "  d.release_in_use AS d_in_use"
        " FROM temp.decl d JOIN temp.decl_file f ON f.fid = d.file"
        " LEFT JOIN phones p ON p.pk = d.phone"
        " LEFT JOIN temp.plan ON plan.kind IN (1, 3) AND plan.pk = d.phone"
        " WHERE d.phone IS NULL OR d.seq = (SELECT m.seq FROM temp.declared m WHERE m.pk = d.phone)),"
        /* (new: an add or a redeclaration, the whole declaration and a new hold) */
        " y AS (SELECT d_seq, CASE WHEN pk IS NULL THEN 0 ELSE change END AS change,"
        "  coalesce(pk, 0) AS pk, coalesce(key, d_key) AS key,"
        "  CASE WHEN pk IS NULL THEN d_id WHEN change IS NULL THEN id ELSE " ID_AFTER("d_id", "d_number") " END AS id,"
        "  CASE WHEN change IS NULL AND pk IS NOT NULL THEN number ELSE d_number END AS number,"
        "  CASE WHEN change IS NULL AND pk IS NOT NULL THEN reason ELSE d_reason END AS reason,"
        "  CASE WHEN change IS NULL AND pk IS NOT NULL THEN not_before ELSE d_nb END AS not_before,"
        "  CASE WHEN change IS NULL AND pk IS NOT NULL THEN declared_at ELSE d_at END AS declared_at,"
        "  CASE WHEN pk IS NULL THEN 'pending' WHEN change IS NULL THEN state ELSE to_state END AS state,"
        "  CASE WHEN pk IS NULL OR change = 1 OR to_state != state THEN 0 ELSE attempts END AS attempts,"
        "  CASE WHEN pk IS NULL OR change = 1 OR to_state != state THEN 0 ELSE next_at END AS next_at,"
        "  provider, scheduled_release_at, last_error, coalesce(updated_at, 0) AS updated_at,"
        "  coalesce(version, 0) AS version, coalesce(sent_at, 0) AS sent_at, api_number,"
        "  coalesce(hold_until, 0) AS hold_until,"
        "  CASE WHEN pk IS NULL OR change = 1 THEN ?1 WHEN change = 3 THEN "
        HOLD_LEN_UPDATED(TARGET_CHANGED_BY("d_nb", "d_id", "d_number", "d_in_use"), "?1") " ELSE hold_len END AS hold_len,"
        "  CASE WHEN pk IS NULL OR change = 1 THEN CASE WHEN ?1 > 0 THEN boot_id() END WHEN change = 3 THEN "
        HOLD_BOOT_UPDATED(TARGET_CHANGED_BY("d_nb", "d_id", "d_number", "d_in_use"), "?1") " ELSE hold_boot END AS hold_boot,"
        "  CASE WHEN pk IS NULL OR change = 1 THEN " HOLD_BOOT_NEW_OF("?1") " WHEN change = 3 THEN "
        HOLD_BOOT_UNTIL_UPDATED(TARGET_CHANGED_BY("d_nb", "d_id", "d_number", "d_in_use"), "?1")
        "  ELSE hold_boot_until END AS hold_boot_until, nickname, inbound_agent, outbound_agent,"
        "  CASE WHEN change IS NULL AND pk IS NOT NULL THEN release_in_use ELSE d_in_use END AS release_in_use"
        " FROM x)"
        " SELECT " PHONE_COLUMNS ", 0, change FROM y ORDER BY d_seq";

int plan_foreach_row(const Plan *p, int (*cb)(const Phone *row, int change, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc, r;

        rc = sqlite3_prepare_v2(ledger_db(p->ledger), rows_sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int64(st, 1, p->hold);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                _cleanup_(phone_done) Phone row = {};
                int change = sqlite3_column_type(st, 25) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 25);

                r = ledger_phone_from_row(st, &row);
                if (r < 0)
                        return r;
                r = cb(&row, change, userdata);
                if (r < 0)
                        return r;
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int plan_approve(Ledger *l, const Config *c, const char *hash, char **message, size_t *ret_count) {
        _cleanup_(plan_freep) Plan *p = NULL;
        int r;

        *message = NULL;
        r = plan_compute_changes(l, c, &p);
        if (r < 0) {
                (void) asprintf_or_null(message, "cannot compute the plan: %s", ledger_errmsg(l));
                return r;
        }
        if (!p->needs_approval) {
                (void) asprintf_or_null(message, "no plan waits for approval");
                return -ENOENT;
        }
        /* What was reviewed is what is applied, or nothing. */
        if (!streq(p->hash, hash)) {
                (void) asprintf_or_null(message, "the plan waiting is %s, not %s: review it with 'retirectl plan'",
                                        p->hash, hash);
                return -ESTALE;
        }
        r = plan_apply(l, p, true);
        if (r < 0) {
                (void) asprintf_or_null(message, "cannot apply the plan: %s", ledger_errmsg(l));
                return r;
        }
        if (ret_count)
                *ret_count = p->new_releases;
        (void) asprintf_or_null(message, "approved plan %s: %zu new releases", p->hash, p->new_releases);
        return 0;
}
