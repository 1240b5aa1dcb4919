/* SPDX-License-Identifier: MIT */
/* Fault injection, as SQLite and curl test themselves: this binary is
 * linked with -Wl,--wrap for the SQLite calls below (see the Makefile), so
 * every call the code under test makes goes through fault_now(), which
 * fails the Nth one with a chosen code.  Each loop fails the 1st, 2nd, ...
 * call of one operation in turn until the operation runs through, and after
 * every failure checks that the error was reported, that the ledger is
 * whole and as it was, and that retrying with no fault succeeds. */

#include "unit.h"

#include <inttypes.h>
#include <malloc.h>
#include <sqlite3.h>

#include "api.h"
#include "internal.h"   /* ledger_db(), to read the file as it is */
#include "macro.h"
#include "sqlite-faults.h"

/* ---- the faults ---------------------------------------------------------- */

/* The codes each loop fails with, and what the caller must be told. */
static const struct { int code; int error; } codes[] = {
        { SQLITE_NOMEM, -ENOMEM },
        { SQLITE_IOERR_WRITE, -EIO },
        { SQLITE_FULL, -ENOSPC },
        { SQLITE_INTERRUPT, -EINTR },
        { SQLITE_BUSY, -EBUSY },
};

/* The run's result, with where the fault was when it is not the one wanted. */
static void fault_reported(int r, int want) {
        if (r != want)
                print_message("  call %u (%s) failed, and the caller said %d\n", fault.fail_at, fault.sql, r);
        assert_int_equal(r, want);
}

/* ---- parsing a page ------------------------------------------------------ */

#define PHONE(i) "{\"id\":\"00000000-05e7-4bed-8000-00000000000" #i "\",\"number\":\"+3491000000" #i "\"," \
                 "\"status\":\"assigned\",\"telephony_provider\":\"netelip\",\"scheduled_release_at\":null}"

static const char page[] = "{\"data\":[" PHONE(1) "," PHONE(2) "," PHONE(3) "," PHONE(4) "," PHONE(5) "],"
                           "\"has_more\":false}";
static const char phone[] = PHONE(1);

/* Each of the API's parsers and api_new() with its Nth call failed, every
 * code and every N in turn: the fault, not the body, is reported, with its
 * errno, and nothing is handed out.  A fault anywhere in a page fails it
 * whole: a page cut short would make the phones after the cut look absent
 * from the account. */
static int parse_once(Api *api, int what, size_t *ret_n) {
        _cleanup_free_ char *why = NULL;
        PhonePage p = {};
        RemotePhone ph = {};
        int r;

        if (what == 0) {
                r = api_parse_page(api, page, sizeof page - 1, &p, &why);
                *ret_n = p.n;
                assert_true(r >= 0 || !p.phones);
                phone_page_done(&p);
        } else {
                r = api_parse_phone(api, phone, sizeof phone - 1, &ph, &why);
                *ret_n = ph.id[0] != 0;
                remote_phone_done(&ph);
        }
        /* *why is for a bad body only. */
        assert_true(r == 0 || !why);
        return r;
}

static void test_parse(void **state) {
        static const char *const names[] = { "api_parse_page", "api_parse_phone" };
        static const size_t want[] = { 5, 1 };
        Api *api = NULL;

        assert_int_equal(api_new(&api), 0);
        for (int what = 0; what < 2; what++) {
                unsigned points = 0;

                for (size_t c = 0; c < ELEMENTSOF(codes); c++)
                        for (unsigned n = 1;; n++) {
                                size_t got;
                                int r;

                                fault_arm(n, codes[c].code);
                                r = parse_once(api, what, &got);
                                if (!fault_disarm()) {
                                        assert_int_equal(r, 0);
                                        assert_int_equal(got, want[what]);
                                        points = n - 1;
                                        break;
                                }
                                fault_reported(r, codes[c].error);
                                assert_int_equal(got, 0);
                                /* Retried with no fault, the same Api reads it whole. */
                                assert_int_equal(parse_once(api, what, &got), 0);
                                assert_int_equal(got, want[what]);
                        }
                print_message("  %s: %u calls failed in turn, with each code\n", names[what], points);
        }
        api_free(api);
}

static void test_api_new(void **state) {
        unsigned points = 0;

        for (size_t c = 0; c < ELEMENTSOF(codes); c++)
                for (unsigned n = 1;; n++) {
                        Api *api = NULL;
                        int r;

                        fault_arm(n, codes[c].code);
                        r = api_new(&api);
                        if (!fault_disarm()) {
                                assert_int_equal(r, 0);
                                api_free(api);
                                points = n - 1;
                                break;
                        }
                        fault_reported(r, codes[c].error);
                        assert_null(api);
                }
        print_message("  api_new: %u calls failed in turn, with each code\n", points);
}

/* ---- the ledger: its invariants ---------------------------------------- */

#define ROWS 64

typedef struct Fixture {
        char *dir, *conf, *path;
        Ledger *l;
        Plan *plan;
        unsigned next;                  /* the row the next try takes, from 1 */
        Phone phone;                    /* that row, as the engine holds it */
        int64_t history;                /* its history lines before the try */
        Outcome outcome;                /* what the engine decided for it */
        RemotePhone seen;               /* what the look it decided on saw */
        const char *method;             /* and the call, if any */
        int status;
        bool in_flight[ROWS + 1];       /* by pk: left in_flight by an operation that succeeded */
} Fixture;

/* On tmpfs when there is one: the ledger fsyncs at every commit. */
static char *fast_tmpdir(void) {
        char tmpl[] = "/dev/shm/retired-faults-XXXXXX";
        char *d;

        if (!mkdtemp(tmpl))
                return tmpdir_new();
        d = strdup(tmpl);
        assert_non_null(d);
        return d;
}

static void fixture_open(Fixture *f) {
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
}

/* A ledger of its own: empty, or a copy of the file `from`. */
static Fixture *fixture_new(const char *from) {
        Fixture *f = calloc(1, sizeof(Fixture));

        assert_non_null(f);
        f->dir = fast_tmpdir();
        f->conf = path_join(f->dir, "retired.conf");
        f->path = path_join(f->dir, "ledger.db");
        if (from) {
                _cleanup_free_ char *data = NULL;
                size_t size;
                FILE *out;

                data = read_all(from, &size);
                out = fopen(f->path, "we");
                assert_non_null(out);
                assert_int_equal(fwrite(data, 1, size, out), size);
                assert_int_equal(fclose(out), 0);
        }
        fixture_open(f);
        f->next = 1;
        return f;
}

static void fixture_free(Fixture *f) {
        if (!f)
                return;
        plan_free(f->plan);
        phone_done(&f->phone);
        ledger_close(f->l);
        free(f->conf);
        free(f->path);
        tmpdir_remove(f->dir);
        free(f);
}

static char *query_text(Ledger *l, const char *sql) {
        sqlite3_stmt *st;
        char *v = NULL;

        assert_int_equal(sqlite3_prepare_v2(ledger_db(l), sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        if (sqlite3_column_text(st, 0))
                v = strdup((const char *) sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        assert_non_null(v);
        return v;
}

/* Everything the file records, times and all. */
static char *snapshot(Ledger *l) {
        return query_text(l, "SELECT (SELECT json_group_array(json_array(pk, key, id, number, reason, not_before,"
                          " state, attempts, next_at, provider, scheduled_release_at, last_error, declared_at,"
                          " created_at, updated_at, version, sent_at, api_number, hold_until))"
                          " FROM (SELECT * FROM phones ORDER BY pk))"
                          " || (SELECT json_group_array(json_array(seq, phone, at, kind, old_state, new_state, method,"
                          " path, http_status, latency_ms, detail)) FROM (SELECT * FROM history ORDER BY seq))"
                          " || (SELECT json_group_array(json_array(name, value)) FROM (SELECT * FROM meta ORDER BY name))");
}

static void check(Fixture *f) {
        _cleanup_free_ char *ok = query_text(f->l, "PRAGMA integrity_check");
        _cleanup_free_ char *unrecorded = query_text(f->l,
                "SELECT count(*) FROM phones p WHERE state IS NOT (SELECT h.new_state FROM history h"
                " WHERE h.phone = p.pk AND h.kind = 'state' ORDER BY h.seq DESC LIMIT 1)");
        size_t want = 0, n = 0;
        sqlite3_stmt *st;

        assert_string_equal(ok, "ok");
        /* A failure takes its transaction back whole: none is left open. */
        assert_true(sqlite3_get_autocommit(ledger_db(f->l)));
        /* Every row is in the state its last history line led to. */
        assert_string_equal(unrecorded, "0");
        /* The in_flight rows are the ones an operation that reported success
         * left so, each with the time its DELETE left: a pass looks at such
         * a row (DUE_LOOKS) before anything is sent again. */
        assert_int_equal(sqlite3_prepare_v2(ledger_db(f->l), "SELECT pk, sent_at FROM phones WHERE state = 'in_flight'",
                                            -1, &st, NULL), SQLITE_OK);
        while (sqlite3_step(st) == SQLITE_ROW) {
                int64_t pk = sqlite3_column_int64(st, 0);

                assert_true(pk > 0 && pk <= ROWS && f->in_flight[pk]);
                assert_true(sqlite3_column_int64(st, 1) > 0);
                n++;
        }
        sqlite3_finalize(st);
        for (size_t i = 0; i <= ROWS; i++)
                want += f->in_flight[i];
        assert_int_equal(n, want);
}

/* ---- the ledger: the loop ------------------------------------------------ */

typedef struct Op {
        const char *name;
        /* Readies the fixture for a try: a fresh row, or a fresh ledger. */
        void (*prepare)(Fixture **f);
        int (*run)(Fixture *f);
        /* After a run that succeeded: what it did is there. */
        void (*done)(Fixture *f);
        /* After a run that failed, what else must hold; may be NULL. */
        void (*failed)(Fixture *f);
        /* Call n fails with one code, the codes in rotation, rather than
         * with each: for the loops that build a fresh ledger per try. */
        bool rotate;
} Op;

static void fault_loop(Fixture **f, const Op *op) {
        size_t rounds = op->rotate ? 1 : ELEMENTSOF(codes);
        unsigned points = 0;

        for (size_t round = 0; round < rounds; round++)
                for (unsigned n = 1;; n++) {
                        _cleanup_free_ char *before = NULL, *after = NULL;
                        size_t c = op->rotate ? (n - 1) % ELEMENTSOF(codes) : round;
                        int r;

                        op->prepare(f);
                        before = snapshot((*f)->l);
                        fault_arm(n, codes[c].code);
                        r = op->run(*f);
                        if (!fault_disarm()) {
                                assert_int_equal(r, 0);
                                op->done(*f);
                                check(*f);
                                points = n - 1;
                                break;
                        }
                        /* Reported, and nothing written. */
                        fault_reported(r, codes[c].error);
                        check(*f);
                        after = snapshot((*f)->l);
                        assert_string_equal(after, before);
                        if (op->failed)
                                op->failed(*f);
                        /* Retried with no fault, it goes through. */
                        assert_int_equal(op->run(*f), 0);
                        op->done(*f);
                        check(*f);
                }
        print_message("  %s: %u calls failed in turn, %s\n", op->name, points,
                      op->rotate ? "the codes in rotation" : "with each code");
}

/* ---- applying a plan ------------------------------------------------------ */

#define NUM(i) "+3491000000" #i
#define LAST(i) "{ number = \"" NUM(i) "\"; }"
#define DECL(i) LAST(i) ", "
#define SAFETY "safety: { hold = 0.0; max_new_releases = 1000; };\n"

static Config *load(Fixture *f, const char *text, int *ret) {
        DeclLoad dl = { .ledger = f->l };
        DeclSink sink = decl_load_sink(&dl);
        ConfDiag d = {};
        Config *c = NULL;

        write_file(f->conf, text);
        *ret = config_load(f->conf, &sink, &c, &d);
        decl_load_done(&dl);
        for (size_t i = 0; i < d.n; i++)
                print_message("  config: %s\n", d.lines[i]);
        conf_diag_done(&d);
        if (*ret < 0)
                c = config_free(c);
        return c;
}

/* A reload as the daemon makes it (retired.c): the declarations loaded
 * into the ledger's TEMP tables, the plan computed and applied, and the set
 * in force brought back when that fails.  The cleanup after success
 * (ledger_decls_keep(), plan_free()) may fail unheard, so it is left to
 * reload_done(). */
static int plan_to(Fixture *f, const char *text) {
        _cleanup_(config_freep) Config *c = NULL;
        int r;

        f->plan = plan_free(f->plan);
        c = load(f, text, &r);
        if (r < 0)
                return r;
        r = plan_compute_changes(f->l, c, &f->plan);
        if (r >= 0)
                r = plan_apply(f->l, f->plan, false);
        if (r < 0)
                assert_int_equal(ledger_decls_restore(f->l), 0);
        return r;
}

static void reload_done(Fixture *f) {
        f->plan = plan_free(f->plan);
        assert_int_equal(ledger_decls_keep(f->l), 0);
}

static void sync_to(Fixture *f, const char *text) {
        assert_int_equal(plan_to(f, text), 0);
        reload_done(f);
}

static int64_t pk_of(Fixture *f, const char *what) {
        Phone p;
        int64_t pk;

        assert_int_equal(ledger_find(f->l, what, &p), 0);
        pk = p.pk;
        phone_done(&p);
        return pk;
}

static PhoneState state_of(Fixture *f, const char *what) {
        Phone p;
        PhoneState s;

        assert_int_equal(ledger_find(f->l, what, &p), 0);
        s = p.state;
        phone_done(&p);
        return s;
}

static void move(Fixture *f, const char *what, PhoneState from, PhoneState to) {
        int64_t pk = pk_of(f, what);

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = pk, .from = from, .to = to, .attempts = -1, .next_at = -1,
                .sent_at = to == STATE_IN_FLIGHT ? (int64_t) now(CLOCK_REALTIME) : 0 }), 0);
        f->in_flight[pk] = to == STATE_IN_FLIGHT;
}

/* Declared 1-5, 8 and 9, then 2 and 9 in flight, then 8 and 9 (whose DELETE
 * is out) no longer declared: the plan to 3-9 adds 6 and 7, cancels 1 and 2
 * (in flight), changes the reason of 4, declares 8 again (pending) and 9
 * (in_flight: its DELETE is looked at first). */
static const char plan_text[] = SAFETY "releases = (" DECL(3) DECL(5) DECL(6) DECL(7) DECL(8) DECL(9)
                                "{ number = \"" NUM(4) "\"; reason = \"changed\"; } );\n";

static const char base_text[] = SAFETY "releases = (" DECL(1) DECL(2) DECL(3) DECL(4) LAST(5) ");\n";

/* The ledger each try starts from is built once, then copied: a fresh one
 * per try cost most of the loop. */
static Fixture *base;

static void reload_prepare(Fixture **f) {
        if (!base) {
                base = fixture_new(NULL);
                sync_to(base, SAFETY "releases = (" DECL(1) DECL(2) DECL(3) DECL(4) DECL(5) DECL(8) LAST(9) ");\n");
                move(base, NUM(2), STATE_PENDING, STATE_IN_FLIGHT);
                move(base, NUM(9), STATE_PENDING, STATE_IN_FLIGHT);
                sync_to(base, base_text);
                base->in_flight[pk_of(base, NUM(9))] = false;
                /* Closing the last connection folds the WAL into the file. */
                base->l = ledger_close(base->l);
        }
        fixture_free(*f);
        *f = fixture_new(base->path);
        memcpy((*f)->in_flight, base->in_flight, sizeof base->in_flight);
        /* The declarations in force, as a daemon that started on them has. */
        sync_to(*f, base_text);
}

static void plan_prepare(Fixture **f) {
        _cleanup_(config_freep) Config *c = NULL;
        int r;

        reload_prepare(f);
        c = load(*f, plan_text, &r);
        assert_int_equal(r, 0);
        assert_int_equal(plan_compute_changes((*f)->l, c, &(*f)->plan), 0);
        assert_int_equal(plan_changes((*f)->plan), 7);
}

static int plan_run(Fixture *f) {
        return plan_apply(f->l, f->plan, false);
}

static int reload_run(Fixture *f) {
        return plan_to(f, plan_text);
}

static void plan_done(Fixture *f) {
        static const struct { const char *number; PhoneState s; } want[] = {
                { NUM(1), STATE_CANCELLED }, { NUM(2), STATE_CANCELLED }, { NUM(3), STATE_PENDING },
                { NUM(4), STATE_PENDING }, { NUM(5), STATE_PENDING }, { NUM(6), STATE_PENDING },
                { NUM(7), STATE_PENDING }, { NUM(8), STATE_PENDING }, { NUM(9), STATE_IN_FLIGHT },
        };
        Phone p;

        for (size_t i = 0; i < ELEMENTSOF(want); i++)
                assert_int_equal(state_of(f, want[i].number), want[i].s);
        assert_int_equal(ledger_find(f->l, NUM(4), &p), 0);
        assert_string_equal(p.reason, "changed");
        phone_done(&p);
        f->in_flight[pk_of(f, NUM(2))] = false;
        f->in_flight[pk_of(f, NUM(9))] = true;
}

static void reload_applied(Fixture *f) {
        plan_done(f);
        reload_done(f);
}

static int count_decl(const Decl *d, void *userdata) {
        ++*(size_t *) userdata;
        return 0;
}

/* A reload that failed keeps the declared set in force (1-5). */
static void reload_failed(Fixture *f) {
        size_t n = 0;

        assert_int_equal(ledger_decls_foreach(f->l, count_decl, &n), 0);
        assert_int_equal(n, 5);
}

static void test_plan_apply(void **state) {
        Fixture *f = NULL;

        fault_loop(&f, &(Op) { "plan_apply", plan_prepare, plan_run, plan_done, NULL, true });
        fixture_free(f);
        fixture_free(base);
        base = NULL;
}

/* A reload as the daemon makes it: the declarations loaded into the ledger's
 * TEMP tables, the plan computed, then applied. */
static void test_reload(void **state) {
        Fixture *f = NULL;

        fault_loop(&f, &(Op) { "reload (load, plan, apply)", reload_prepare, reload_run, reload_applied,
                               reload_failed, true });
        fixture_free(f);
        fixture_free(base);
        base = NULL;
}

/* ---- loading declarations that merge -------------------------------------- */

/* Two phones each declared twice, the later entry adding to the first: both
 * groups are merged (decl.c's fix and drop statements), 5 and 7 go in as
 * they are. */
static const char merge_text[] = "releases = (" DECL(3) DECL(5) "{ number = \"" NUM(3) "\"; reason = \"three\"; }, "
                                 DECL(6) DECL(7) "{ number = \"" NUM(6) "\"; reason = \"six\";"
                                 " not_before = \"2026-12-31T23:00:00Z\"; } );\n";

/* The declared set, "KEY:REASON:NOT_BEFORE KEY:..." in declaration order. */
static int print_decl(const Decl *d, void *userdata) {
        fprintf(userdata, "%s:%s:%" PRId64 " ", d->key, strempty(d->reason), d->not_before);
        return 0;
}

static char *declared(Fixture *f) {
        char *text = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&text, &size);

        assert_non_null(m);
        assert_int_equal(ledger_decls_foreach(f->l, print_decl, m), 0);
        assert_int_equal(fclose(m), 0);
        return text;
}

/* Only the TEMP tables change: a fresh ledger once, then the set 1-5 in
 * force before each try (still a load per try: the codes in rotation). */
static void merge_prepare(Fixture **f) {
        _cleanup_(config_freep) Config *c = NULL;
        int r;

        if (!*f)
                *f = fixture_new(NULL);
        c = load(*f, base_text, &r);
        assert_int_equal(r, 0);
        assert_int_equal(ledger_decls_keep((*f)->l), 0);
}

static int merge_run(Fixture *f) {
        _cleanup_(config_freep) Config *c = NULL;
        int r;

        c = load(f, merge_text, &r);
        /* 3 and 6 are each declared twice: said once each (decl.c's counts). */
        assert_true(r < 0 || (c->n_decls == 4 && c->warnings.n == 2));
        return r;
}

static void merge_done(Fixture *f) {
        _cleanup_free_ char *set = declared(f);

        assert_string_equal(set, NUM(3) ":three:0 " NUM(5) "::0 " NUM(6) ":six:1798758000 " NUM(7) "::0 ");
        assert_int_equal(ledger_decls_keep(f->l), 0);
}

/* A load that failed brings the set in force back, whole. */
static void merge_failed(Fixture *f) {
        _cleanup_free_ char *set = declared(f);

        assert_string_equal(set, NUM(1) "::0 " NUM(2) "::0 " NUM(3) "::0 " NUM(4) "::0 " NUM(5) "::0 ");
}

/* Loading declarations into the ledger's TEMP tables, duplicates merged
 * there: any of its calls failing fails the load with the fault's error,
 * and the set in force is the one before, not a half-merged one. */
static void test_loading_declarations_that_merge(void **state) {
        Fixture *f = NULL;

        fault_loop(&f, &(Op) { "loading declarations that merge", merge_prepare, merge_run, merge_done,
                               merge_failed, true });
        fixture_free(f);
}

/* ---- the in_flight commit, and recording an outcome ---------------------- */

/* Each try takes a row of its own, in the state the operation starts from,
 * on a connection opened anew (the statements it keeps prepared too). */
#define ID_FMT "00000000-0000-4000-8000-%012u"

static int64_t history_of(Fixture *f, int64_t pk) {
        _cleanup_free_ char *sql = NULL, *n = NULL;

        assert_true(asprintf(&sql, "SELECT count(*) FROM history WHERE phone = %" PRId64, pk) >= 0);
        n = query_text(f->l, sql);
        return strtoll(n, NULL, 10);
}

static void reread(Fixture *f) {
        _cleanup_free_ char *key = strdup(f->phone.key);

        assert_non_null(key);
        phone_done(&f->phone);
        assert_int_equal(ledger_find(f->l, key, &f->phone), 0);
        f->history = history_of(f, f->phone.pk);
}

static void take_row(Fixture **f) {
        char id[UUID_STRING_LEN + 1];

        if (!*f) {
                _cleanup_free_ char *text = NULL;
                size_t size = 0;
                FILE *m = open_memstream(&text, &size);

                assert_non_null(m);
                fputs(SAFETY "releases = (", m);
                for (unsigned i = 1; i <= ROWS; i++)
                        fprintf(m, "%s{ id = \"" ID_FMT "\"; }", i > 1 ? ", " : "", i);
                fputs(");\n", m);
                assert_int_equal(fclose(m), 0);
                *f = fixture_new(NULL);
                sync_to(*f, text);
        } else {
                ledger_close((*f)->l);
                fixture_open(*f);
        }
        assert_true((*f)->next <= ROWS);
        snprintf(id, sizeof id, ID_FMT, (*f)->next++);
        phone_done(&(*f)->phone);
        assert_int_equal(ledger_find((*f)->l, id, &(*f)->phone), 0);
        (*f)->history = history_of(*f, (*f)->phone.pk);
}

static World world_now(void) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);

        return (World) { .now = t, .due_now = t, .max_attempts = 5, .base_delay = USEC_PER_SEC,
                         .max_delay = 60 * USEC_PER_SEC, .jitter = 0.5 };
}

static Row row_of(const Phone *p) {
        return (Row) {
                .state = p->state, .key = p->key, .id = p->id, .number = p->number,
                .not_before = p->not_before > p->hold_until ? p->not_before : p->hold_until,
                .attempts = p->attempts, .sent_at = p->sent_at, .look_after = p->sent_at,
                .provider = p->provider, .last_error = p->last_error,
        };
}

/* As the engine's delete_start(): right before the DELETE leaves, the row
 * goes in_flight with the time it leaves. */
static int send_run(Fixture *f) {
        const Phone *p = &f->phone;
        Row row = row_of(p);
        World w = world_now();
        Outcome o;

        assert_true(reconcile_send(&row, &w, &o));
        return ledger_update(f->l, &(LedgerUpdate) {
                .pk = p->pk, .from = p->state, .to = STATE_IN_FLIGHT, .version = p->version, .due_by = w.due_now,
                .sent_at = o.sent_at, .next_at = o.next_at, .attempts = (int) p->attempts,
                .id = p->id, .provider = p->provider, .api_number = p->api_number, .detail = o.detail,
        });
}

static void send_done(Fixture *f) {
        reread(f);
        assert_int_equal(f->phone.state, STATE_IN_FLIGHT);
        assert_true(f->phone.sent_at > 0);
        f->in_flight[f->phone.pk] = true;
}

static void test_in_flight_commit(void **state) {
        Fixture *f = NULL;

        fault_loop(&f, &(Op) { "in_flight commit (ledger_update)", take_row, send_run, send_done, NULL, false });
        fixture_free(f);
}

/* As the engine's commit(): the call and the step it led to, together. */
static int record_run(Fixture *f) {
        const Phone *p = &f->phone;
        const Outcome *o = &f->outcome;

        return ledger_update(f->l, &(LedgerUpdate) {
                .pk = p->pk, .from = p->state, .to = o->to, .version = p->version,
                .sent_at = o->sent_at, .clear_sent = o->clear_sent,
                .id = o->id, .api_number = o->api_number, .provider = o->provider,
                .scheduled_release_at = o->scheduled, .attempts = (int) o->attempts, .next_at = o->next_at,
                .error = o->error[0] ? o->error : NULL, .detail = o->detail,
                .method = f->method, .path = "/v1/phone/id", .http_status = f->status, .latency_ms = 20,
        });
}

static void record_done(Fixture *f) {
        PhoneState from = f->phone.state;
        int64_t lines = f->history;

        reread(f);
        assert_int_equal(f->phone.state, f->outcome.to);
        assert_int_equal(f->history, lines + 1 + (f->outcome.to != from));
        f->in_flight[f->phone.pk] = f->outcome.to == STATE_IN_FLIGHT;
}

/* A row whose DELETE is out, and an answer about it. */
static void in_flight_row(Fixture **f) {
        take_row(f);
        assert_int_equal(send_run(*f), 0);
        send_done(*f);
}

static void answer_prepare(Fixture **f, const char *provider, int status, PhoneState to) {
        Fixture *x;
        Row row;
        World w = world_now();

        in_flight_row(f);
        x = *f;
        /* As a listing or a look saw it. */
        x->phone.provider = strdup(provider);
        assert_non_null(x->phone.provider);
        row = row_of(&x->phone);
        reconcile_delete(&row, &(Reply) { .kind = CALL_DELETE, .status = status, .asked_at = w.now }, &w,
                         &x->outcome);
        assert_true(x->outcome.write);
        assert_int_equal(x->outcome.to, to);
        x->method = "DELETE";
        x->status = status;
}

static void answer_204_custom(Fixture **f) {
        answer_prepare(f, "custom", 204, STATE_RELEASED);
}

static void answer_204_netelip(Fixture **f) {
        answer_prepare(f, "netelip", 204, STATE_SCHEDULED);
}

static void answer_503(Fixture **f) {
        answer_prepare(f, "netelip", 503, STATE_RETRYING);
}

/* The look after a DELETE: the phone is released. */
static void look_released(Fixture **f) {
        Fixture *x;
        Row row;
        World w = world_now();

        in_flight_row(f);
        x = *f;
        x->seen = (RemotePhone) { .status = REMOTE_RELEASED, .status_name = (char *) "released" };
        snprintf(x->seen.id, sizeof x->seen.id, "%s", x->phone.id);
        row = row_of(&x->phone);
        reconcile_look(&row, &(Look) { .seen = &x->seen, .reply = { .kind = CALL_GET, .status = 200, .api = true,
                                                                     .asked_at = w.now } }, &w, &x->outcome);
        assert_true(x->outcome.write);
        assert_int_equal(x->outcome.to, STATE_RELEASED);
        x->method = "GET";
        x->status = 200;
}

static void test_recording_an_outcome(void **state) {
        static const Op ops[] = {
                { "DELETE answered 204, custom: released", answer_204_custom, record_run, record_done, NULL, false },
                { "DELETE answered 204, netelip: scheduled", answer_204_netelip, record_run, record_done, NULL, false },
                { "DELETE answered 503: retrying", answer_503, record_run, record_done, NULL, false },
                { "look (GET 200) at a released phone: released", look_released, record_run, record_done, NULL,
                  false },
        };

        for (size_t i = 0; i < ELEMENTSOF(ops); i++) {
                Fixture *f = NULL;

                fault_loop(&f, &ops[i]);
                fixture_free(f);
        }
}

/* An operator's retry: a failed row pending again. */
static void failed_row(Fixture **f) {
        take_row(f);
        assert_int_equal(ledger_update((*f)->l, &(LedgerUpdate) {
                .pk = (*f)->phone.pk, .from = STATE_PENDING, .to = STATE_FAILED, .attempts = -1, .next_at = -1 }), 0);
        reread(*f);
}

static int retry_run(Fixture *f) {
        _cleanup_free_ char *message = NULL;

        return ledger_retry(f->l, f->phone.key, &message);
}

static void retry_done(Fixture *f) {
        int64_t lines = f->history;

        reread(f);
        assert_int_equal(f->phone.state, STATE_PENDING);
        assert_int_equal(f->history, lines + 1);
}

static void test_operator_retry(void **state) {
        Fixture *f = NULL;

        fault_loop(&f, &(Op) { "ledger_retry", failed_row, retry_run, retry_done, NULL, false });
        fixture_free(f);
}

/* ---- reading the ledger ----------------------------------------------------- */

/* Each read prints what it found to `out`; a read that stops early prints
 * less, so an error taken for the end of a walk shows as a short answer. */
static int print_phone(const Phone *p, void *userdata) {
        fprintf(userdata, "%s %s|", p->key, state_to_string(p->state));
        return 0;
}

static int print_history(const History *h, void *userdata) {
        fprintf(userdata, "%s %s|", h->kind, strempty(h->new_state));
        return 0;
}

static int print_step(const AuditStep *a, void *userdata) {
        fprintf(userdata, "%s %s %u|", a->key, a->time, a->attempt);
        return 0;
}

static int print_listed(const ListedPhone *p, void *userdata) {
        fprintf(userdata, "%s %s|", p->id, strempty(p->status));
        return 0;
}

static int print_declared(const Decl *d, void *userdata) {
        fprintf(userdata, "%s %s:%u|", d->key, d->file, d->line);
        return 0;
}

static int read_counts(Ledger *l, FILE *out) {
        uint64_t counts[_STATE_MAX];
        int r = ledger_counts(l, counts);

        for (int s = 0; r >= 0 && s < _STATE_MAX; s++)
                fprintf(out, "%" PRIu64 " ", counts[s]);
        return r;
}

static int read_list(Ledger *l, FILE *out) {
        return ledger_list(l, -1, print_phone, out);
}

static int read_due(Ledger *l, FILE *out) {
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        DueQuery q = { .set = DUE_REST, .now = t, .due_now = t, .resync = true };
        uint64_t n[_DUE_MAX];
        int r = ledger_due(l, &q, 0, 100, print_phone, out);

        if (r >= 0)
                r = ledger_due_count(l, &q, n);
        if (r >= 0)
                fprintf(out, "%" PRIu64 " %" PRIu64, n[DUE_LOOKS], n[DUE_REST]);
        return r;
}

static int read_find(Ledger *l, FILE *out) {
        _cleanup_(phone_done) Phone p = {};
        int r = ledger_find(l, NUM(2), &p);

        if (r >= 0)
                print_phone(&p, out);
        return r;
}

static int read_state(Ledger *l, FILE *out) {
        PhoneState s;
        int64_t version;
        int r = ledger_state(l, 2, &s, &version);

        if (r >= 0)
                fprintf(out, "%s %" PRId64, state_to_string(s), version);
        return r;
}

static int read_history(Ledger *l, FILE *out) {
        uint64_t steps;
        int64_t last;
        int r = ledger_history(l, 2, print_history, out);

        if (r >= 0)
                r = ledger_history_stats(l, &steps, &last);
        if (r >= 0)
                fprintf(out, "%" PRIu64 " %d", steps, last > 0);
        return r;
}

static int read_audit(Ledger *l, FILE *out) {
        return ledger_audit(l, &(AuditFilter) { .state = -1, .json = true }, print_step, out);
}

static int read_pause(Ledger *l, FILE *out) {
        _cleanup_(pause_done) Pause p = {};
        int r = ledger_pause_get(l, &p);

        if (r >= 0)
                fprintf(out, "%d %" PRIu32 " %s", p.on, p.uid, strempty(p.reason));
        return r;
}

static int read_counters(Ledger *l, FILE *out) {
        int64_t t = (int64_t) now(CLOCK_REALTIME), next;
        uint64_t held, unsettled, stuck, operator;
        int64_t first;
        int r;

        r = ledger_next_due(l, t, t, false, &next);
        if (r >= 0)
                r = ledger_count_held(l, t, &held, &first);
        if (r >= 0)
                r = ledger_count_unsettled(l, t, true, 5, &unsettled, &stuck);
        if (r >= 0)
                r = ledger_decls_needing_operator(l, &operator);
        if (r >= 0)
                fprintf(out, "%d %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64, next > 0, held, unsettled, stuck,
                        operator);
        return r;
}

static int read_listed(Ledger *l, FILE *out) {
        int r = ledger_listed_find(l, NULL, NUM(1), print_listed, out);

        if (r >= 0)
                r = ledger_listed_find(l, "00000000-0000-4000-8000-000000000002", NULL, print_listed, out);
        if (r >= 0)
                r = ledger_knows_phone(l, "00000000-0000-4000-8000-000000000009", NUM(3));
        if (r >= 0)
                fprintf(out, "%d", r);
        return r;
}

static int read_declared(Ledger *l, FILE *out) {
        return ledger_decls_foreach(l, print_declared, out);
}

/* A listing keeps each phone some row names in a TEMP table of the ledger's
 * connection, and the pass finds it there: on a connection opened anew
 * (its statements prepared anew), a failed call fails the keeping or the
 * finding with the fault's error, never a count of none, which would make
 * the phone look absent from the account. */
static void listed_prepare(Fixture **f) {
        if (!*f)
                *f = fixture_new(NULL);
        else {
                ledger_close((*f)->l);
                fixture_open(*f);
        }
        assert_int_equal(ledger_listed_clear((*f)->l), 0);
}

static int listed_run(Fixture *f) {
        int r;

        r = ledger_listed_add(f->l, &(ListedPhone) { .id = "00000000-0000-4000-8000-000000000001", .number = NUM(1),
                                                     .status = "assigned" });
        if (r >= 0)
                r = ledger_listed_find(f->l, "00000000-0000-4000-8000-000000000001", NULL, NULL, NULL);
        if (r >= 0)
                r = ledger_listed_find(f->l, NULL, NUM(1), NULL, NULL);
        return r < 0 ? r : r == 1 ? 0 : -EUCLEAN;
}

static void listed_done(Fixture *f) {
        assert_int_equal(ledger_listed_find(f->l, NULL, NUM(1), NULL, NULL), 1);
}

static void test_keeping_and_finding_a_listed_phone(void **state) {
        Fixture *f = NULL;

        fault_loop(&f, &(Op) { "keeping and finding a listed phone", listed_prepare, listed_run, listed_done,
                               NULL, false });
        fixture_free(f);
}

/* Every read the daemon and retirectl make, with each of its calls failed
 * in turn, with each code: the fault is reported with its errno, never
 * taken for the end of a walk or for "none" (a short answer would count
 * rows as absent), and the read then gives the whole answer again. */
static void test_reads(void **state) {
        static const struct { const char *name; int (*read)(Ledger *l, FILE *out); } reads[] = {
                { "ledger_counts", read_counts },
                { "ledger_list", read_list },
                { "ledger_due, ledger_due_count", read_due },
                { "ledger_find", read_find },
                { "ledger_state", read_state },
                { "ledger_history, ledger_history_stats", read_history },
                { "ledger_audit", read_audit },
                { "ledger_pause_get", read_pause },
                { "the pass's counters", read_counters },
                { "ledger_listed_find, ledger_knows_phone", read_listed },
                { "ledger_decls_foreach", read_declared },
        };
        _cleanup_free_ char *later = NULL;
        Fixture *f = fixture_new(NULL);

        /* Rows in several states, with history, a pause, a listing kept,
         * and the declarations in force. */
        assert_true(asprintf(&later, SAFETY "releases = (" DECL(1) DECL(2) DECL(3)
                             "{ number = \"" NUM(4) "\"; not_before = \"2999-01-01T00:00:00Z\"; } );\n") >= 0);
        sync_to(f, later);
        move(f, NUM(2), STATE_PENDING, STATE_IN_FLIGHT);
        move(f, NUM(3), STATE_PENDING, STATE_FAILED);
        assert_int_equal(ledger_pause_set(f->l, 1000, 1, "OPS-1"), 0);
        assert_int_equal(ledger_listed_clear(f->l), 0);
        assert_int_equal(ledger_listed_add(f->l, &(ListedPhone) { .id = "00000000-0000-4000-8000-000000000001",
                                                                 .number = NUM(1), .status = "assigned" }), 0);
        assert_int_equal(ledger_listed_add(f->l, &(ListedPhone) { .id = "00000000-0000-4000-8000-000000000002",
                                                                 .number = NUM(2), .status = "reserved" }), 0);

        for (size_t i = 0; i < ELEMENTSOF(reads); i++) {
                _cleanup_free_ char *whole = NULL;
                unsigned points = 0;
                size_t size;
                FILE *m;

                m = open_memstream(&whole, &size);
                assert_non_null(m);
                assert_int_equal(reads[i].read(f->l, m), reads[i].read == read_listed ? 1 : 0);
                assert_int_equal(fclose(m), 0);
                assert_true(size > 0);

                for (size_t c = 0; c < ELEMENTSOF(codes); c++)
                        for (unsigned n = 1;; n++) {
                                _cleanup_free_ char *got = NULL;
                                int r;

                                m = open_memstream(&got, &size);
                                assert_non_null(m);
                                fault_arm(n, codes[c].code);
                                r = reads[i].read(f->l, m);
                                if (!fault_disarm()) {
                                        assert_int_equal(fclose(m), 0);
                                        assert_true(r >= 0);
                                        assert_string_equal(got, whole);
                                        points = n - 1;
                                        break;
                                }
                                fault_reported(r, codes[c].error);
                                assert_int_equal(fclose(m), 0);
                                got = mfree(got);
                                /* Nothing was left half-done: the read goes through whole. */
                                m = open_memstream(&got, &size);
                                assert_non_null(m);
                                assert_true(reads[i].read(f->l, m) >= 0);
                                assert_int_equal(fclose(m), 0);
                                assert_string_equal(got, whole);
                        }
                print_message("  %s: %u calls failed in turn, with each code\n", reads[i].name, points);
        }
        check(f);
        fixture_free(f);
}

/* ---- opening the ledger ---------------------------------------------------- */

/* Creating a ledger, and opening one made before: a fault fails the open
 * with a sentence for the operator, and the next open with no fault finds
 * (or makes) the ledger whole, at the current version: an existing one in
 * WAL mode, a new one with a rollback journal until ledger_settle(). */
static void test_ledger_open(void **state) {
        for (int existing = 0; existing < 2; existing++) {
                unsigned n;

                for (n = 1;; n++) {
                        _cleanup_free_ char *dir = fast_tmpdir(), *path = path_join(dir, "ledger.db");
                        _cleanup_free_ char *error = NULL, *version = NULL, *mode = NULL, *ok = NULL;
                        size_t c = (n - 1) % ELEMENTSOF(codes);
                        Ledger *l = NULL;
                        bool hit;
                        int r;

                        if (existing) {
                                assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
                                l = ledger_close(l);
                        }
                        fault_arm(n, codes[c].code);
                        r = ledger_open(path, LEDGER_WRITE, &l, &error);
                        hit = fault_disarm();
                        if (hit) {
                                fault_reported(r, codes[c].error);
                                assert_null(l);
                                assert_non_null(error);
                                assert_int_equal(ledger_open(path, LEDGER_WRITE, &l, NULL), 0);
                        } else
                                assert_int_equal(r, 0);
                        version = query_text(l, "PRAGMA user_version");
                        mode = query_text(l, "PRAGMA journal_mode");
                        ok = query_text(l, "PRAGMA integrity_check");
                        assert_int_equal(atoi(version), LEDGER_SCHEMA_VERSION);
                        /* A new file has a rollback journal until it is kept. */
                        assert_string_equal(mode, existing ? "wal" : "delete");
                        assert_string_equal(ok, "ok");
                        assert_int_equal(ledger_settle(l), 0);
                        free(mode);
                        mode = query_text(l, "PRAGMA journal_mode");
                        assert_string_equal(mode, "wal");
                        ledger_close(l);
                        tmpdir_remove(TAKE_PTR(dir));
                        if (!hit)
                                break;
                }
                print_message("  ledger_open, %s: %u calls failed in turn, the codes in rotation\n",
                              existing ? "existing" : "new", n - 1);
        }
}

int main(void) {
        /* Each try opens a fresh ledger whose caches come and go: glibc would
         * give the heap back to the kernel and take it again every time,
         * which took half the run.  (ASan's allocator ignores this.) */
        (void) mallopt(M_TRIM_THRESHOLD, 64 << 20);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse),
                cmocka_unit_test(test_api_new),
                cmocka_unit_test(test_ledger_open),
                cmocka_unit_test(test_plan_apply),
                cmocka_unit_test(test_reload),
                cmocka_unit_test(test_loading_declarations_that_merge),
                cmocka_unit_test(test_in_flight_commit),
                cmocka_unit_test(test_recording_an_outcome),
                cmocka_unit_test(test_operator_retry),
                cmocka_unit_test(test_keeping_and_finding_a_listed_phone),
                cmocka_unit_test(test_reads),
        };

        return cmocka_run_group_tests_name("test-faults", tests, NULL, NULL);
}
