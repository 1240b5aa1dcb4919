/* SPDX-License-Identifier: MIT */
/* The plan: declarations diffed against the ledger.  The declarations go
 * into a TEMP table so that SQLite does the matching with indexes; that
 * works on a read-only connection too, so `retirectl plan` never writes. */

#include <inttypes.h>

#include "internal.h"

static const char *const change_names[_CHANGE_MAX] = {
        [CHANGE_ADD] = "add", [CHANGE_REDECLARE] = "redeclare", [CHANGE_CANCEL] = "cancel",
        [CHANGE_UPDATE] = "update", [CHANGE_KEEP] = "keep",
};

const char *change_kind_to_string(ChangeKind k) {
        return k < _CHANGE_MAX ? change_names[k] : NULL;
}

static void change_done(Change *c) {
        free(c->key);
        free(c->id);
        free(c->number);
        free(c->reason);
        free(c->declared_at);
}

Plan *plan_free(Plan *p) {
        if (!p)
                return NULL;
        for (size_t i = 0; i < p->n; i++)
                change_done(&p->changes[i]);
        free(p->changes);
        free(p);
        return NULL;
}

size_t plan_changes(const Plan *p) {
        return p->n - p->count[CHANGE_KEEP];
}

static int load_decls(Ledger *l, const Config *c) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        sqlite3 *db = ledger_db(l);
        int rc, r;

        r = ledger_exec(l, "DROP TABLE IF EXISTS temp.decl;"
                        "CREATE TEMP TABLE decl (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, id TEXT,"
                        "  number TEXT, reason TEXT, not_before INTEGER NOT NULL, declared_at TEXT,"
                        "  phone INTEGER)");
        if (r < 0)
                return r;
        /* Most declarations name their row by key: match those as they go in. */
        rc = sqlite3_prepare_v2(db, "INSERT INTO temp.decl (key, id, number, reason, not_before, declared_at, phone)"
                                " VALUES (?1, ?2, ?3, ?4, ?5, ?6 || ':' || ?7,"
                                " (SELECT pk FROM phones WHERE key = ?1))", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        r = ledger_exec(l, "SAVEPOINT decl");
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_decls; i++) {
                const Decl *d = &c->decls[i];

                (void) sqlite3_bind_text(st, 1, d->key, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(st, 2, d->id, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(st, 3, d->number, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(st, 4, d->reason, -1, SQLITE_STATIC);
                (void) sqlite3_bind_int64(st, 5, d->not_before);
                (void) sqlite3_bind_text(st, 6, d->file, -1, SQLITE_STATIC);
                (void) sqlite3_bind_int(st, 7, (int) d->line);
                rc = sqlite3_step(st);
                (void) sqlite3_reset(st);
                if (rc != SQLITE_DONE) {
                        (void) ledger_exec(l, "ROLLBACK TO decl; RELEASE decl");
                        return sqlite_to_errno(rc);
                }
        }
        /* A declaration names a row by its key, or by the id or number the
         * row was declared or resolved with. */
        r = ledger_exec(l, "UPDATE temp.decl SET phone = coalesce("
                        "  (SELECT max(pk) FROM phones p WHERE decl.id IS NOT NULL AND p.id = decl.id),"
                        "  (SELECT max(pk) FROM phones p WHERE decl.number IS NOT NULL AND p.number = decl.number"
                        /* a number reused under another id is another phone */
                        "    AND (decl.id IS NULL OR p.id IS NULL OR p.id = decl.id)))"
                        " WHERE phone IS NULL;"
                        "CREATE INDEX temp.decl_phone ON decl (phone);"
                        "RELEASE decl");
        if (r < 0)
                (void) ledger_exec(l, "ROLLBACK TO decl; RELEASE decl");
        return r;
}

static int push(Plan *p, size_t *cap, Change *c) {
        if (p->n == *cap) {
                size_t n = *cap ? *cap * 2 : 64;
                Change *a = reallocarray(p->changes, n, sizeof(Change));
                if (!a)
                        return -ENOMEM;
                p->changes = a;
                *cap = n;
        }
        p->changes[p->n++] = *c;
        p->count[c->kind]++;
        return 0;
}

static char *col(sqlite3_stmt *st, int i) {
        const unsigned char *s = sqlite3_column_text(st, i);
        return s ? strdup((const char *) s) : NULL;
}

/* One query yields every change, in a stable order: kind, then declaration
 * order for new rows and ledger order for existing ones. */
static const char plan_sql[] =
        "SELECT 0, NULL, d.key, d.id, d.number, d.reason, d.not_before, d.declared_at, NULL, 0, 0"
        "  FROM temp.decl d WHERE d.phone IS NULL"
        " UNION ALL "
        "SELECT 1, p.pk, p.key, d.id, d.number, d.reason, d.not_before, d.declared_at, p.state, p.sent_at, 0"
        "  FROM phones p JOIN temp.decl d ON d.seq = (SELECT min(seq) FROM temp.decl WHERE phone = p.pk)"
        "  WHERE p.state = 'cancelled'"
        " UNION ALL "
        /* An in_flight row is cancelled too: whatever its DELETE did, the
         * daemon must not send another.  A cancelled row whose DELETE may
         * have gone out is looked at on resync and recorded as released or
         * scheduled if it was. */
        "SELECT 2, p.pk, p.key, p.id, coalesce(p.number, p.api_number), p.reason, p.not_before, p.declared_at,"
        "  p.state, p.sent_at, 0"
        "  FROM phones p WHERE p.state IN ('pending','deferred','retrying','unresolved','in_flight')"
        "  AND NOT EXISTS (SELECT 1 FROM temp.decl WHERE phone = p.pk)"
        " UNION ALL "
        /* A corrected, added or dropped number, or an added id, must reach
         * the row, or the daemon would go on acting on what was first
         * declared.  (A number-declared row's resolved id is not declared.) */
        "SELECT 3, p.pk, p.key, d.id, d.number, d.reason, d.not_before, d.declared_at, p.state, p.sent_at,"
        "  p.number IS NOT d.number OR (d.id IS NOT NULL AND p.id IS NOT d.id)"
        "  FROM phones p JOIN temp.decl d ON d.seq = (SELECT min(seq) FROM temp.decl WHERE phone = p.pk)"
        "  WHERE p.state IN ('pending','deferred','retrying','unresolved','failed')"
        "  AND (p.reason IS NOT d.reason OR p.not_before != d.not_before"
        "       OR p.number IS NOT d.number"
        "       OR (d.id IS NOT NULL AND p.id IS NOT d.id))"
        " UNION ALL "
        "SELECT 4, p.pk, p.key, p.id, coalesce(p.number, p.api_number), p.reason, p.not_before, p.declared_at,"
        "  p.state, p.sent_at, 0"
        "  FROM phones p WHERE ?1 AND p.state IN ('released','scheduled','failed')"
        "  AND NOT EXISTS (SELECT 1 FROM temp.decl WHERE phone = p.pk)"
        " ORDER BY 1, 2";

static void hash_add(uint64_t *h, const char *s) {
        for (; *s; s++) {
                *h ^= (unsigned char) *s;
                *h *= 0x100000001b3ULL;
        }
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The hash names the set of new releases, whatever order they were
 * declared in: moving a declaration to another file is not a new plan. */
static int plan_hash(const Plan *p, uint64_t *h) {
        _cleanup_free_ char **keys = calloc(p->new_releases + 1, sizeof(char *));
        size_t n = 0;

        if (!keys)
                return -ENOMEM;
        for (size_t i = 0; i < p->n; i++)
                if (p->changes[i].kind == CHANGE_ADD || p->changes[i].kind == CHANGE_REDECLARE)
                        keys[n++] = p->changes[i].key;
        qsort(keys, n, sizeof(char *), cmp_str);
        for (size_t i = 0; i < n; i++) {
                hash_add(h, keys[i]);
                hash_add(h, "\n");
        }
        return 0;
}

static int compute(Ledger *l, const Config *c, bool notes, Plan **ret) {
        _cleanup_(plan_freep) Plan *p = NULL;
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        uint64_t h = 0xcbf29ce484222325ULL;
        size_t cap = 0;
        int rc, r;

        p = calloc(1, sizeof(Plan));
        if (!p)
                return -ENOMEM;
        r = load_decls(l, c);
        if (r < 0)
                return r;
        rc = sqlite3_prepare_v2(ledger_db(l), plan_sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int(st, 1, notes);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                ChangeKind k = (ChangeKind) sqlite3_column_int(st, 0);
                const char *from = (const char *) sqlite3_column_text(st, 8);
                Change ch = {
                        .kind = k,
                        .pk = sqlite3_column_int64(st, 1),
                        .key = col(st, 2), .id = col(st, 3), .number = col(st, 4),
                        .reason = col(st, 5), .not_before = sqlite3_column_int64(st, 6),
                        .declared_at = col(st, 7),
                        .from = from ? state_from_string(from) : _STATE_INVALID,
                };

                /* Declared again while a DELETE of it may be out: what that
                 * DELETE did is found out first, as for any row in flight. */
                ch.to = k == CHANGE_REDECLARE && sqlite3_column_int64(st, 9) != 0 ? STATE_IN_FLIGHT :
                        k == CHANGE_ADD || k == CHANGE_REDECLARE ? STATE_PENDING :
                        k == CHANGE_CANCEL ? STATE_CANCELLED :
                        /* A failed phone declared anew (another id or number): decided afresh. */
                        k == CHANGE_UPDATE && ch.from == STATE_FAILED && sqlite3_column_int(st, 10) ? STATE_PENDING :
                        ch.from;
                if (!ch.key || (from && ch.from < 0)) {
                        change_done(&ch);
                        return ch.key ? -EBADMSG : -ENOMEM;
                }
                if (k == CHANGE_ADD || k == CHANGE_REDECLARE)
                        p->new_releases++;
                r = push(p, &cap, &ch);
                if (r < 0) {
                        change_done(&ch);
                        return r;
                }
        }
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        /* The declarations' copy is not needed past this point: give its
         * memory back, a long-running daemon should not keep it. */
        (void) sqlite3_finalize(TAKE_PTR(st));
        (void) ledger_exec(l, "DROP TABLE IF EXISTS temp.decl");
        (void) sqlite3_db_release_memory(ledger_db(l));
        r = plan_hash(p, &h);
        if (r < 0)
                return r;
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

static int step_one(sqlite3 *db, sqlite3_stmt *st) {
        int rc = sqlite3_step(st);
        (void) sqlite3_reset(st);
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        /* The row moved on since the plan was made: the plan is stale. */
        return sqlite3_changes(db) == 1 ? 0 : -ESTALE;
}

static int apply_one(Ledger *l, sqlite3_stmt *const *st, const Change *c, int64_t t, int64_t hold_until) {
        sqlite3 *db = ledger_db(l);
        sqlite3_stmt *s = st[c->kind];
        int64_t pk = c->pk;
        const char *detail;
        int r;

        if (!s)
                return 0;       /* KEEP: a note, nothing to write */
        (void) sqlite3_clear_bindings(s);
        switch (c->kind) {
        case CHANGE_ADD:
                (void) sqlite3_bind_text(s, 1, c->key, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(s, 2, c->id, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(s, 3, c->number, -1, SQLITE_STATIC);
                break;
        case CHANGE_REDECLARE:
        case CHANGE_UPDATE:
        case CHANGE_CANCEL:
                (void) sqlite3_bind_int64(s, 1, c->pk);
                (void) sqlite3_bind_text(s, 2, state_to_string(c->from), -1, SQLITE_STATIC);
                if (c->kind != CHANGE_CANCEL)
                        (void) sqlite3_bind_text(s, 3, state_to_string(c->to), -1, SQLITE_STATIC);
                break;
        default:
                return 0;
        }
        if (c->kind != CHANGE_CANCEL) {
                (void) sqlite3_bind_text(s, 4, c->reason, -1, SQLITE_STATIC);
                (void) sqlite3_bind_int64(s, 5, c->not_before);
                (void) sqlite3_bind_text(s, 6, c->declared_at, -1, SQLITE_STATIC);
        }
        if (c->kind == CHANGE_REDECLARE || c->kind == CHANGE_UPDATE) {
                (void) sqlite3_bind_text(s, 8, c->number, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(s, 9, c->id, -1, SQLITE_STATIC);
        }
        (void) sqlite3_bind_int64(s, 7, t);
        if (c->kind != CHANGE_CANCEL)
                (void) sqlite3_bind_int64(s, 10, hold_until);
        r = step_one(db, s);
        if (r < 0)
                return r;
        if (c->kind == CHANGE_ADD)
                pk = sqlite3_last_insert_rowid(db);
        detail = c->kind == CHANGE_CANCEL ? "no longer declared" :
                 c->kind == CHANGE_UPDATE ? "declaration changed" : c->declared_at;
        return ledger_history_add(l, pk, t, "state",
                                  c->kind == CHANGE_ADD ? NULL : state_to_string(c->from),
                                  state_to_string(c->to), NULL, NULL, 0, 0, detail);
}

/* A new number without an id drops the id resolved from the old one,
 * unless a DELETE of that id may be out: that is settled by id first. */
#define ID_NUMBER_SET \
        " id = CASE WHEN ?9 IS NOT NULL THEN ?9 WHEN ?8 IS NOT NULL AND number IS NOT ?8 AND sent_at = 0" \
        "  THEN NULL ELSE id END," \
        " number = ?8, version = version + 1"

int plan_apply(Ledger *l, const Plan *p, bool approved) {
        static const char *const sql[_CHANGE_MAX] = {
                [CHANGE_ADD] = "INSERT INTO phones (key, id, number, reason, not_before, declared_at, state,"
                               " created_at, updated_at, hold_until)"
                               " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?10)",
                [CHANGE_REDECLARE] = "UPDATE phones SET state = ?3, attempts = 0, next_at = 0, reason = ?4,"
                                     " not_before = ?5, declared_at = ?6, updated_at = ?7, hold_until = ?10,"
                                     ID_NUMBER_SET " WHERE pk = ?1 AND state = ?2",
                /* A new reason alone changes nothing the DELETE acts on: no new hold. */
                [CHANGE_UPDATE] = "UPDATE phones SET reason = ?4, not_before = ?5, declared_at = ?6, updated_at = ?7,"
                                  " state = ?3, attempts = CASE WHEN ?3 = state THEN attempts ELSE 0 END,"
                                  " next_at = CASE WHEN ?3 = state THEN next_at ELSE 0 END,"
                                  " hold_until = CASE WHEN not_before != ?5 OR number IS NOT ?8"
                                  "  OR (?9 IS NOT NULL AND id IS NOT ?9) THEN max(hold_until, ?10) ELSE hold_until END,"
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
        int r, rc;

        if (plan_changes(p) == 0)
                return 0;
        r = ledger_exec(l, "BEGIN IMMEDIATE");
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
        for (size_t i = 0; i < p->n && r >= 0; i++) {
                const Change *c = &p->changes[i];
                if (hold && (c->kind == CHANGE_ADD || c->kind == CHANGE_REDECLARE))
                        continue;
                r = apply_one(l, st, c, t, hold_until);
        }
finish:
        for (size_t k = 0; k < _CHANGE_MAX; k++)
                (void) sqlite3_finalize(st[k]);
        if (r >= 0)
                r = ledger_exec(l, "COMMIT");
        if (r < 0)
                (void) ledger_exec(l, "ROLLBACK");
        return r;
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
