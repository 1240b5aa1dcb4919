/* SPDX-License-Identifier: MIT */
/* The declared set in the ledger's TEMP tables: filled as the files are
 * read, one declaration at a time, so that memory never holds more than
 * one file's tree; what several entries declare twice is merged here, by
 * SQL over indexes, and what they declare differently is reported. */

#include <inttypes.h>

#include "internal.h"

/* The whole load is one savepoint: a load that does not finish rolls back
 * to the set in force, as if it had never begun.  A declaration names its
 * file by a number in temp.decl_file: a path in each of a million rows
 * made the table, and every walk of it, a third larger. */
#define DECL_COLUMNS \
        "seq INTEGER PRIMARY KEY, key TEXT NOT NULL, id TEXT, number TEXT, reason TEXT," \
        " not_before INTEGER NOT NULL, file INTEGER NOT NULL, line INTEGER NOT NULL, phone INTEGER," \
        " release_in_use INTEGER NOT NULL"
#define DECL_FILE_COLUMNS "fid INTEGER PRIMARY KEY, path TEXT NOT NULL"
static const char begin_sql[] =
        "SAVEPOINT decl_load;"
        "DROP TABLE IF EXISTS temp.decl_old;"
        "DROP TABLE IF EXISTS temp.decl_file_old;"
        "CREATE TEMP TABLE IF NOT EXISTS decl (" DECL_COLUMNS ");"
        "CREATE TEMP TABLE IF NOT EXISTS decl_file (" DECL_FILE_COLUMNS ");"
        "ALTER TABLE temp.decl RENAME TO decl_old;"
        "ALTER TABLE temp.decl_file RENAME TO decl_file_old;"
        "CREATE TEMP TABLE decl (" DECL_COLUMNS ");"
        "CREATE TEMP TABLE decl_file (" DECL_FILE_COLUMNS ");"
        "CREATE TEMP TABLE decl_fix (seq INTEGER PRIMARY KEY, id TEXT, number TEXT, reason TEXT, not_before INTEGER);"
        "CREATE TEMP TABLE decl_drop (seq INTEGER PRIMARY KEY);"
        /* One row per declaration that others were merged into: how many
         * entries it stands for and where the first few of the others are,
         * so that a phone pasted 10,000 times is said once, in a line. */
        "CREATE TEMP TABLE decl_dup (seq INTEGER PRIMARY KEY, copies INTEGER NOT NULL, also1 TEXT, also2 TEXT)";

/* The places named besides the first, per phone declared more than once
 * (the columns also1, also2), and the phones named, per load. */
#define DUP_ALSO   2
#define DUP_SHOWN  5

/* The rows a plan added are named by the set when it is next read (a
 * plan, a reload, a restore, a count), not at the start that added them:
 * a million lookups by key, a second of a first start, for a set most
 * daemons read again only at a reload.  Until then, nothing reads it. */
void ledger_decls_added(Ledger *l) {
        *ledger_decls_unmatched(l) = true;
}

static int decls_settle(Ledger *l) {
        int r;

        if (!*ledger_decls_unmatched(l))
                return 0;
        r = ledger_exec(l, "UPDATE temp.decl SET phone = (SELECT pk FROM phones WHERE key = decl.key)"
                        " WHERE phone IS NULL;"
                        "INSERT OR IGNORE INTO temp.declared SELECT phone, seq FROM temp.decl"
                        " WHERE phone IS NOT NULL ORDER BY seq");
        if (r >= 0)
                *ledger_decls_unmatched(l) = false;
        return r;
}

static int load_begin(void *userdata, const Config *c) {
        DeclLoad *dl = userdata;
        sqlite3_stmt *st = NULL;
        int r, rc;

        if (!dl->ledger) {
                r = dl->open(dl->userdata, c, &dl->ledger);
                if (r < 0)
                        return r;
        }
        /* The set in force is set aside whole, to be restored if this load fails. */
        r = decls_settle(dl->ledger);
        if (r >= 0)
                r = ledger_exec(dl->ledger, begin_sql);
        if (r < 0) {
                (void) ledger_exec(dl->ledger, "ROLLBACK TO decl_load; RELEASE decl_load");
                return r;
        }
        dl->loading = true;
        dl->in_use = c->in_use;
        /* Most declarations name their row by key: matched as they go in. */
        rc = sqlite3_prepare_v3(ledger_db(dl->ledger),
                                "INSERT INTO temp.decl (key, id, number, reason, not_before, file, line, phone, release_in_use)"
                                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT pk FROM phones WHERE key = ?1), ?8)",
                                -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        dl->insert = st;
        rc = sqlite3_prepare_v3(ledger_db(dl->ledger), "INSERT INTO temp.decl_file (path) VALUES (?1)", -1,
                                SQLITE_PREPARE_PERSISTENT, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        dl->insert_file = st;
        return 0;
}

/* The files come one after the other: a new path is a new file. */
static int file_id(DeclLoad *dl, const char *path) {
        sqlite3_stmt *st = dl->insert_file;
        int rc;

        if (dl->file && streq(dl->file, path))
                return 0;
        dl->file = mfree(dl->file);
        (void) sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        (void) sqlite3_reset(st);
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        dl->fid = sqlite3_last_insert_rowid(ledger_db(dl->ledger));
        dl->file = strdup(path);
        return dl->file ? 0 : -ENOMEM;
}

static int load_add(void *userdata, const Decl *d) {
        DeclLoad *dl = userdata;
        sqlite3_stmt *st = dl->insert;
        int rc, r;

        r = file_id(dl, d->file);
        if (r < 0)
                return r;
        (void) sqlite3_bind_text(st, 1, d->key, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 2, d->id, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 3, d->number, -1, SQLITE_STATIC);
        (void) sqlite3_bind_text(st, 4, d->reason, -1, SQLITE_STATIC);
        (void) sqlite3_bind_int64(st, 5, d->not_before);
        (void) sqlite3_bind_int64(st, 6, dl->fid);
        (void) sqlite3_bind_int(st, 7, (int) d->line);
        /* What is done with it in use, as the declaration says, or else
         * safety.in_use: the row holds it, so a change of either is a
         * change of the row the plan sees (and the hold covers). */
        (void) sqlite3_bind_int(st, 8, (d->in_use != IN_USE_UNSET ? d->in_use : dl->in_use) == IN_USE_RELEASE);
        rc = sqlite3_step(st);
        (void) sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* The first entry of a group of entries that declare one number (or id),
 * with what the later ones add to it: their fields, how many entries the
 * group stands for, and where the first few of the others are. */
typedef struct Group {
        int64_t seq, not_before, copies;
        char *value, *id, *number, *reason, *at, *also[DUP_ALSO], *in_use;
        bool changed;
} Group;

static void group_done(Group *g) {
        free(g->value);
        free(g->id);
        free(g->number);
        free(g->reason);
        free(g->at);
        free(g->in_use);
        for (size_t i = 0; i < DUP_ALSO; i++)
                free(g->also[i]);
        *g = (Group) {};
}

/* The statements of a merge by one field: st walks the groups, fix, drop
 * and dup record what the walk found, for merge_apply(). */
typedef struct Merge {
        sqlite3_stmt *st, *fix, *drop, *dup;
        Group g;
} Merge;

static void merge_done(Merge *m) {
        (void) sqlite3_finalize(m->st);
        (void) sqlite3_finalize(m->fix);
        (void) sqlite3_finalize(m->drop);
        (void) sqlite3_finalize(m->dup);
        group_done(&m->g);
        *m = (Merge) {};
}

static const char *text(sqlite3_stmt *st, int i) {
        return (const char *) sqlite3_column_text(st, i);
}

static int dup_or_null(const char *s, char **ret) {
        *ret = NULL;
        return s && !(*ret = strdup(s)) ? -ENOMEM : 0;
}

/* One field may be given by one entry and left out by another; given by
 * both, it must agree. */
static int merge_field(char **into, const char *v, bool *changed, bool *ok) {
        if (!v)
                return 0;
        if (*into) {
                *ok = *ok && streq(*into, v);
                return 0;
        }
        *changed = true;
        return dup_or_null(v, into);
}

static int group_flush(Merge *m) {
        Group *g = &m->g;
        int rc = SQLITE_DONE;

        if (g->value && g->changed) {
                (void) sqlite3_bind_int64(m->fix, 1, g->seq);
                (void) sqlite3_bind_text(m->fix, 2, g->id, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(m->fix, 3, g->number, -1, SQLITE_STATIC);
                (void) sqlite3_bind_text(m->fix, 4, g->reason, -1, SQLITE_STATIC);
                (void) sqlite3_bind_int64(m->fix, 5, g->not_before);
                rc = sqlite3_step(m->fix);
                (void) sqlite3_reset(m->fix);
        }
        if (rc == SQLITE_DONE && g->value && g->copies > 1) {
                (void) sqlite3_bind_int64(m->dup, 1, g->seq);
                (void) sqlite3_bind_int64(m->dup, 2, g->copies);
                for (int i = 0; i < DUP_ALSO; i++)
                        (void) sqlite3_bind_text(m->dup, 3 + i, g->also[i], -1, SQLITE_STATIC);
                rc = sqlite3_step(m->dup);
                (void) sqlite3_reset(m->dup);
        }
        group_done(g);
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* A place where the group is declared again, kept if it is among the
 * first few: memory and the TEMP file stay the same for 2 copies or for a
 * million. */
static int group_also(Group *g, const char *at) {
        for (size_t i = 0; at && i < DUP_ALSO; i++)
                if (!g->also[i])
                        return dup_or_null(at, &g->also[i]);
        return 0;
}

/* Columns 8 on of st: how many entries the row stands for already (it may
 * be what the merge by number made of several), and where the others are. */
static int group_start(Group *g, sqlite3_stmt *st) {
        g->seq = sqlite3_column_int64(st, 0);
        g->not_before = sqlite3_column_int64(st, 4);
        g->copies = sqlite3_column_int64(st, 8);
        if (dup_or_null(text(st, 7), &g->value) < 0 || dup_or_null(text(st, 1), &g->id) < 0 ||
            dup_or_null(text(st, 2), &g->number) < 0 || dup_or_null(text(st, 3), &g->reason) < 0 ||
            dup_or_null(text(st, 11), &g->in_use) < 0 ||
            asprintf_or_null(&g->at, "%s:%d", text(st, 5), sqlite3_column_int(st, 6)) < 0)
                return -ENOMEM;
        for (int i = 0; i < DUP_ALSO; i++)
                if (group_also(g, text(st, 9 + i)) < 0)
                        return -ENOMEM;
        return 0;
}

/* A later row of the group: its entries count, its places come after the
 * group's (the first few of a group merged by number, then by id, are
 * the first few of each part, not always of the whole: places all the same). */
static int group_count(Group *g, sqlite3_stmt *st) {
        _cleanup_free_ char *at = NULL;

        g->copies += sqlite3_column_int64(st, 8);
        if (g->also[DUP_ALSO - 1])
                return 0;       /* the few are kept: the rest is a count */
        if (asprintf_or_null(&at, "%s:%d", text(st, 5), sqlite3_column_int(st, 6)) < 0 || group_also(g, at) < 0)
                return -ENOMEM;
        for (int i = 0; i < DUP_ALSO; i++)
                if (group_also(g, text(st, 9 + i)) < 0)
                        return -ENOMEM;
        return 0;
}

/* The statements of a merge by field: the rows of every group of more
 * than one entry, in order (through a TEMP index on field, created here
 * and dropped by merge_apply()), with what each stands for already, and
 * the three that record a fix, a drop or a count. */
static int merge_prepare(Ledger *l, const char *field, Merge *m) {
        _cleanup_free_ char *sql = NULL;
        sqlite3 *db = ledger_db(l);
        int rc, r;

        if (asprintf_or_null(&sql, "CREATE INDEX temp.decl_%1$s ON decl (%1$s, seq) WHERE %1$s IS NOT NULL", field) < 0)
                return -ENOMEM;
        r = ledger_exec(l, sql);
        if (r < 0)
                return r;
        sql = mfree(sql);
        if (asprintf_or_null(&sql, "SELECT seq, id, number, reason, not_before,"
                             " (SELECT path FROM decl_file WHERE fid = decl.file), line, %1$s,"
                             " coalesce(dup.copies, 1), dup.also1, dup.also2, release_in_use"
                             " FROM decl LEFT JOIN decl_dup dup USING (seq)"
                             " WHERE %1$s IN (SELECT %1$s FROM decl WHERE %1$s IS NOT NULL"
                             "  GROUP BY %1$s HAVING count(*) > 1)"
                             " ORDER BY %1$s, seq", field) < 0)
                return -ENOMEM;
        rc = sqlite3_prepare_v2(db, sql, -1, &m->st, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO temp.decl_fix VALUES (?1, ?2, ?3, ?4, ?5)", -1,
                                        &m->fix, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO temp.decl_drop VALUES (?1)", -1, &m->drop, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO temp.decl_dup VALUES (?1, ?2, ?3, ?4)", -1,
                                        &m->dup, NULL);
        return rc == SQLITE_OK ? 0 : sqlite_to_errno(rc);
}

/* One row of st: the first of a group starts it (flushing the one before);
 * a later one is merged into it, or reported, and is dropped either way.
 * Returns 1 if the row conflicts with its group, else 0. */
static int merge_row(Merge *m, ConfDiag *d) {
        sqlite3_stmt *st = m->st;
        Group *g = &m->g;
        const char *value = text(st, 7);
        int64_t nb = sqlite3_column_int64(st, 4);
        bool ok = true;
        int conflict = 0, rc, r;

        if (!value)
                return -ENOMEM;
        if (!g->value || !streq(g->value, value)) {
                r = group_flush(m);
                if (r >= 0)
                        r = group_start(g, st);
                return r < 0 ? r : 0;
        }
        if (group_count(g, st) < 0)
                return -ENOMEM;
        if (merge_field(&g->id, text(st, 1), &g->changed, &ok) < 0 ||
            merge_field(&g->number, text(st, 2), &g->changed, &ok) < 0 ||
            merge_field(&g->reason, text(st, 3), &g->changed, &ok) < 0)
                return -ENOMEM;
        ok = ok && (!g->not_before || !nb || g->not_before == nb);
        /* in_use as it applies (the declaration's, or safety.in_use): one
         * entry that says "release" and one that says nothing while the
         * setting refuses do not agree. */
        ok = ok && streq(g->in_use ? g->in_use : "", text(st, 11) ? text(st, 11) : "");
        if (!ok) {
                conf_diag_add(d, text(st, 5), (unsigned) sqlite3_column_int(st, 6),
                              "%s is declared again with different fields (first at %s)", value, g->at);
                conflict = 1;
        } else if (!g->not_before && nb) {
                g->not_before = nb;
                g->changed = true;
        }
        (void) sqlite3_bind_int64(m->drop, 1, sqlite3_column_int64(st, 0));
        rc = sqlite3_step(m->drop);
        (void) sqlite3_reset(m->drop);
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        return conflict;
}

/* The fixes and drops recorded, made to temp.decl. */
static int merge_apply(Ledger *l, const char *field) {
        _cleanup_free_ char *sql = NULL;
        int r;

        /* A merged entry may have gained an id: its key, and the row it
         * names, are then the id's. */
        r = ledger_exec(l, "UPDATE temp.decl SET id = f.id, number = f.number, reason = f.reason,"
                        "  not_before = f.not_before, key = coalesce(f.id, f.number),"
                        "  phone = (SELECT pk FROM phones WHERE key = coalesce(f.id, f.number))"
                        " FROM temp.decl_fix f WHERE decl.seq = f.seq;"
                        "DELETE FROM temp.decl WHERE seq IN (SELECT seq FROM temp.decl_drop);"
                        /* counted in the row it was merged into */
                        "DELETE FROM temp.decl_dup WHERE seq IN (SELECT seq FROM temp.decl_drop);"
                        "DELETE FROM temp.decl_fix; DELETE FROM temp.decl_drop");
        if (r < 0)
                return r;
        /* Of no use past the merge, and a fifth of the TEMP file at a million. */
        if (asprintf_or_null(&sql, "DROP INDEX temp.decl_%s", field) < 0)
                return -ENOMEM;
        return ledger_exec(l, sql);
}

/* Every group of entries sharing one number (field "number") or one id:
 * the later ones are merged into the first, or reported.  Returns the
 * number of conflicts. */
static int merge_by(Ledger *l, const char *field, ConfDiag *d) {
        _cleanup_(merge_done) Merge m = {};
        int conflicts = 0, rc, r;

        r = merge_prepare(l, field, &m);
        if (r < 0)
                return r;
        while ((rc = sqlite3_step(m.st)) == SQLITE_ROW) {
                r = merge_row(&m, d);
                if (r < 0)
                        return r;
                conflicts += r;
        }
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        r = group_flush(&m);
        if (r < 0)
                return r;
        (void) sqlite3_finalize(TAKE_PTR(m.st));
        r = merge_apply(l, field);
        return r < 0 ? r : conflicts;
}

/* One warning per phone declared more than once, for the first few such
 * phones, and one with how many more: a list pasted twice is 100,000
 * phones declared twice, and the operator needs to hear of it once. */
static int report_copies(Ledger *l, ConfDiag *w) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int64_t phones, shown = 0;
        int rc, r;

        r = ledger_query_int(l, "SELECT count(*) FROM temp.decl_dup", &phones);
        if (r < 0 || phones == 0)
                return r;
        rc = sqlite3_prepare_v2(ledger_db(l), "SELECT f.path, d.line, d.key, dup.copies, dup.also1, dup.also2"
                                " FROM temp.decl_dup dup JOIN temp.decl d USING (seq)"
                                " JOIN temp.decl_file f ON f.fid = d.file ORDER BY seq LIMIT ?1", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        (void) sqlite3_bind_int(st, 1, DUP_SHOWN);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const char *also1 = text(st, 4), *also2 = text(st, 5);
                int64_t copies = sqlite3_column_int64(st, 3), more = copies - 1 - !!also1 - !!also2;
                char tail[64] = "";

                if (!text(st, 0) || !text(st, 2) || !also1)
                        return -ENOMEM;
                if (more > 0)
                        snprintf(tail, sizeof tail, " and %" PRId64 " more %s", more, more == 1 ? "place" : "places");
                conf_diag_add(w, text(st, 0), (unsigned) sqlite3_column_int(st, 1),
                              "%s is declared %" PRId64 " times, also at %s%s%s%s: one phone, one release",
                              text(st, 2), copies, also1, !also2 ? "" : more > 0 ? ", " : " and ", strempty(also2),
                              tail);
                shown++;
        }
        if (rc != SQLITE_DONE)
                return sqlite_to_errno(rc);
        if (phones > shown)
                conf_diag_add(w, NULL, 0, "%" PRId64 " more %s declared more than once, each one release",
                              phones - shown, phones - shown == 1 ? "phone is" : "phones are");
        return 0;
}

static int load_finish(void *userdata, ConfDiag *d, ConfDiag *warnings, bool rejected, size_t *ret_n) {
        DeclLoad *dl = userdata;
        Ledger *l = dl->ledger;
        int64_t n;
        int r, conflicts;

        (void) sqlite3_finalize(dl->insert);
        (void) sqlite3_finalize(dl->insert_file);
        dl->insert = dl->insert_file = NULL;
        dl->file = mfree(dl->file);
        /* By number first, then by id over what that merged: an entry with
         * both joins the two groups. */
        conflicts = r = merge_by(l, "number", d);
        if (r >= 0 && conflicts == 0)
                conflicts = r = merge_by(l, "id", d);
        /* Refused: decl_load_done() brings the set in force back. */
        if (r < 0 || conflicts > 0 || rejected)
                return r;
        r = report_copies(l, warnings);
        if (r < 0)
                return r;
        r = ledger_query_int(l, "SELECT count(*) FROM temp.decl", &n);
        if (r < 0)
                return r;
        r = ledger_exec(l, "DROP TABLE temp.decl_fix; DROP TABLE temp.decl_drop; DROP TABLE temp.decl_dup;"
                        " RELEASE decl_load");
        if (r < 0)
                return r;
        dl->loading = false;
        *ret_n = (size_t) n;
        return conflicts;
}

DeclSink decl_load_sink(DeclLoad *dl) {
        return (DeclSink) { .begin = load_begin, .add = load_add, .finish = load_finish, .userdata = dl };
}

void decl_load_done(DeclLoad *dl) {
        (void) sqlite3_finalize(dl->insert);
        (void) sqlite3_finalize(dl->insert_file);
        dl->insert = dl->insert_file = NULL;
        dl->file = mfree(dl->file);
        if (dl->loading)
                (void) ledger_exec(dl->ledger, "ROLLBACK TO decl_load; RELEASE decl_load");
        dl->loading = false;
}

int ledger_decls_keep(Ledger *l) {
        int r = ledger_exec(l, "DROP TABLE IF EXISTS temp.decl_old; DROP TABLE IF EXISTS temp.decl_file_old");

        /* A large set leaves a large cache behind; an idle daemon should be small. */
        (void) sqlite3_db_release_memory(ledger_db(l));
        return r;
}

/* Which rows the set names, by row: built in declaration order, the first
 * declaration naming a row is the one kept.  A rowid table, so that a walk
 * through the ledger meets it in the same order, with no sort. */
static const char declared_sql[] =
        "DROP TABLE IF EXISTS temp.declared;"
        "CREATE TEMP TABLE declared (pk INTEGER PRIMARY KEY, seq INTEGER NOT NULL);"
        "INSERT OR IGNORE INTO temp.declared SELECT phone, seq FROM temp.decl WHERE phone IS NOT NULL ORDER BY seq";

int ledger_decls_match(Ledger *l) {
        int r;

        /* What a plan added is matched by key first, as at a load. */
        r = decls_settle(l);
        if (r < 0)
                return r;

        /* A declaration names a row by its key (matched as it went in), or
         * by the id or number the row was declared or resolved with.  The
         * EXISTS probes come first: most declarations that no key matched
         * name no row at all, and a probe costs less than a subquery. */
        r = ledger_exec(l, "UPDATE temp.decl AS x SET phone = coalesce("
                        "  (SELECT max(pk) FROM phones p WHERE x.id IS NOT NULL AND p.id = x.id),"
                        "  (SELECT max(pk) FROM phones p WHERE x.number IS NOT NULL AND p.number = x.number"
                        /* a number reused under another id is another phone */
                        "    AND (x.id IS NULL OR p.id IS NULL OR p.id = x.id)))"
                        " WHERE x.phone IS NULL"
                        "  AND (x.id IS NOT NULL AND EXISTS (SELECT 1 FROM phones p WHERE p.id = x.id)"
                        "   OR x.number IS NOT NULL AND EXISTS (SELECT 1 FROM phones p WHERE p.number = x.number"
                        "    AND (x.id IS NULL OR p.id IS NULL OR p.id = x.id)))");
        return r < 0 ? r : ledger_exec(l, declared_sql);
}

int ledger_decls_restore(Ledger *l) {
        /* The set in force was settled before it was set aside (load_begin()). */
        int r = ledger_exec(l, "SAVEPOINT decl_restore;"
                            "DROP TABLE IF EXISTS temp.decl;"
                            "DROP TABLE IF EXISTS temp.decl_file;"
                            "ALTER TABLE temp.decl_old RENAME TO decl;"
                            "ALTER TABLE temp.decl_file_old RENAME TO decl_file;"
                            "RELEASE decl_restore");
        if (r < 0)
                return r;
        *ledger_decls_unmatched(l) = false;
        return ledger_exec(l, declared_sql);
}

int ledger_decls_foreach(Ledger *l, int (*cb)(const Decl *d, void *userdata), void *userdata) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        int rc, r;

        rc = sqlite3_prepare_v2(ledger_db(l), "SELECT key, id, number, reason, not_before, f.path, line, release_in_use"
                                " FROM temp.decl JOIN temp.decl_file f ON f.fid = decl.file ORDER BY seq", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                Decl d = {
                        .key = text(st, 0), .id = text(st, 1), .number = text(st, 2), .reason = text(st, 3),
                        .not_before = sqlite3_column_int64(st, 4), .file = text(st, 5),
                        .line = (unsigned) sqlite3_column_int(st, 6), .in_use = sqlite3_column_int(st, 7) ? IN_USE_RELEASE : IN_USE_REFUSE,
                };
                if (!d.key || !d.file)
                        return -ENOMEM;
                r = cb(&d, userdata);
                if (r < 0)
                        return r;
        }
        return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

int ledger_decls_needing_operator(Ledger *l, uint64_t *ret) {
        int64_t n;
        int r;

        r = decls_settle(l);
        if (r < 0)
                return r;

        r = ledger_query_int(l, "SELECT count(*) FROM phones p WHERE p.state IN ('failed', 'unresolved', 'in_use')"
                             " AND p.pk IN (SELECT pk FROM temp.declared)", &n);
        if (r < 0)
                return r;
        *ret = (uint64_t) n;
        return 0;
}
