/* SPDX-License-Identifier: MIT */
/* The engine (daemon/engine.c, act.c, match.c, pause.c) against a scripted
 * Diga client (stub-diga.h) and a real ledger in a temporary folder.  A
 * small model of the API answers every call the engine makes, and keeps
 * count of what each phone was sent, so that each test can say what the
 * operator would see: the state of each row, its history, and that no phone
 * was sent a DELETE twice.
 *
 * This binary is linked with -Wl,--wrap for SQLite's step, exec and prepare
 * (see the Makefile), as test-faults is: the fault loop fails each SQLite
 * call of a whole pass in turn. */

#include "unit.h"

#include <inttypes.h>
#include <sqlite3.h>

#include "api.h"
#include "diga.h"
#include "engine.h"
#include "internal.h"   /* ledger_db(), ledger_exec(): to read the file as it is, and to refuse a step */
#include "log.h"
#include "macro.h"
#include "sqlite-faults.h"
#include "stub-diga.h"

/* ---- the faults (sqlite-faults.c, as in test-faults.c) -------------------- */

static const int fault_codes[] = { SQLITE_IOERR_WRITE, SQLITE_FULL, SQLITE_BUSY, SQLITE_NOMEM, SQLITE_INTERRUPT };

/* Out of memory: the strdup() of the code under test (linked with
 * --wrap=strdup) fails at the fail_at-th call once armed. */
static struct {
        bool armed, hit;
        unsigned fail_at, calls;
} oom;

char *__real_strdup(const char *s);
char *__wrap_strdup(const char *s);
char *__wrap_strdup(const char *s) {
        if (oom.armed && ++oom.calls == oom.fail_at) {
                oom.hit = true;
                errno = ENOMEM;
                return NULL;
        }
        return __real_strdup(s);
}

/* ---- the API: a model account the stub's calls are answered from -------- */

#define MAX_PHONES 4200

typedef struct ApiPhone {
        char id[UUID_STRING_LEN + 1];
        char number[32];
        const char *status;        /* "assigned", "released", ... */
        const char *provider;      /* "custom": a DELETE releases at once */
        int get_status;            /* != 0: every GET of it is answered so, with no body */
        const char *answer_id;     /* set: a GET of it is answered with this id (another phone's) */
        unsigned gets, deletes;
} ApiPhone;

typedef struct Account {
        ApiPhone *phones;
        size_t n;
        int64_t clock_offset;      /* usec: the API's clock (its Date header) minus ours */
        unsigned lists, gets, deletes;
} Account;

#define ID_FMT "00000000-0000-4000-8000-%012u"
#define NUM_FMT "+3491%07u"

static ApiPhone *account_add(Account *a, unsigned i, const char *status) {
        ApiPhone *p;

        assert_true(a->n < MAX_PHONES);
        p = &a->phones[a->n++];
        *p = (ApiPhone) { .status = status, .provider = "custom" };
        snprintf(p->id, sizeof p->id, ID_FMT, i);
        snprintf(p->number, sizeof p->number, NUM_FMT, i);
        return p;
}

static ApiPhone *account_find(Account *a, const char *id) {
        for (size_t i = 0; i < a->n; i++)
                if (streq(a->phones[i].id, id))
                        return &a->phones[i];
        return NULL;
}

static void phone_json(FILE *f, const ApiPhone *p, const char *id) {
        fprintf(f, "{\"id\":\"%s\",\"number\":\"%s\",\"status\":\"%s\",\"telephony_provider\":\"%s\","
                "\"scheduled_release_at\":null}", id ? id : p->id, p->number, p->status, p->provider);
}

/* The page a list call asks for: pages of API_PAGE_LIMIT, by number or
 * after a cursor. */
static char *list_body(Account *a, const Call *c) {
        size_t first = 0, size = 0, last;
        char *body = NULL;
        FILE *f = open_memstream(&body, &size);

        assert_non_null(f);
        if (c->page > 0)
                first = (size_t) (c->page - 1) * API_PAGE_LIMIT;
        else if (c->id[0]) {
                ApiPhone *p = account_find(a, c->id);

                assert_non_null(p);
                first = (size_t) (p - a->phones) + 1;
        }
        last = first + API_PAGE_LIMIT < a->n ? first + API_PAGE_LIMIT : a->n;
        fputs("{\"data\":[", f);
        for (size_t i = first; i < last; i++) {
                if (i > first)
                        fputc(',', f);
                phone_json(f, &a->phones[i], NULL);
        }
        fprintf(f, "],\"has_more\":%s", last < a->n ? "true" : "false");
        if (c->page > 0)
                fprintf(f, ",\"current_page\":%u,\"total_pages\":%zu", c->page,
                        a->n == 0 ? 1 : (a->n + API_PAGE_LIMIT - 1) / API_PAGE_LIMIT);
        fputc('}', f);
        assert_int_equal(fclose(f), 0);
        return body;
}

/* Answers one call as the API would. */
static void account_answer(Account *a, Diga *d, Call *c) {
        _cleanup_free_ char *body = NULL;
        size_t size = 0;
        ApiPhone *p;
        FILE *f;

        switch (c->kind) {
        case CALL_LIST:
                a->lists++;
                body = list_body(a, c);
                assert_true(stub_diga_answer_json(d, c, 200, body));
                return;
        case CALL_GET:
                a->gets++;
                p = account_find(a, c->id);
                if (!p) {
                        assert_true(stub_diga_answer_json(d, c, 404, "{\"detail\":\"Not Found\"}"));
                        return;
                }
                p->gets++;
                if (p->get_status != 0) {
                        assert_true(stub_diga_answer(d, c, &(StubAnswer) { .status = p->get_status }));
                        return;
                }
                f = open_memstream(&body, &size);
                assert_non_null(f);
                phone_json(f, p, p->answer_id);
                assert_int_equal(fclose(f), 0);
                assert_true(stub_diga_answer(d, c, &(StubAnswer) {
                        .status = 200, .body = body, .json = true,
                        .api_date = (int64_t) now(CLOCK_REALTIME) + a->clock_offset }));
                return;
        case CALL_DELETE:
                /* The API sees a DELETE only once its start hook let it leave. */
                if (!c->started && !stub_diga_start(d, c))
                        return;
                a->deletes++;
                p = account_find(a, c->id);
                assert_non_null(p);
                p->deletes++;
                if (streq(p->status, "assigned")) {
                        p->status = "released";
                        assert_true(stub_diga_answer(d, c, &(StubAnswer) { .status = 204 }));
                } else
                        assert_true(stub_diga_answer_json(d, c, 404, "{\"detail\":\"Not Found\"}"));
                return;
        default:
                fail();
        }
}

/* ---- the ledger, the declarations and the engine ------------------------- */

typedef struct Fixture {
        char *dir, *conf, *path;
        Ledger *l;
        Config *c;
        sd_event *event;
        Engine *e;
        Diga *d;
        Account api;
} Fixture;

/* Short waits everywhere: a retry in a millisecond, a look right after a
 * DELETE whose answer was lost, no hold. */
static const char settings[] =
        "api: { base_url = \"http://127.0.0.1:9\"; settle_time = 0.0; };\n"
        "retry: { max_attempts = 3; base_delay = 0.001; max_delay = 0.001; };\n"
        "safety: { hold = 0.0; max_new_releases = 100000; };\n";

/* On tmpfs when there is one: the ledger fsyncs at every commit. */
static char *fast_tmpdir(void) {
        char tmpl[] = "/dev/shm/retired-engine-XXXXXX";
        char *d;

        if (!mkdtemp(tmpl))
                return tmpdir_new();
        d = strdup(tmpl);
        assert_non_null(d);
        return d;
}

static Fixture *fixture_new(void) {
        Fixture *f = calloc(1, sizeof(Fixture));

        assert_non_null(f);
        f->dir = fast_tmpdir();
        f->conf = path_join(f->dir, "retired.conf");
        f->path = path_join(f->dir, "ledger.db");
        f->api.phones = calloc(MAX_PHONES, sizeof(ApiPhone));
        assert_non_null(f->api.phones);
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        assert_int_equal(sd_event_new(&f->event), 0);
        return f;
}

static void engine_down(Fixture *f) {
        f->e = engine_free(f->e);
        f->d = NULL;
}

static void fixture_free(Fixture *f) {
        if (!f)
                return;
        engine_down(f);
        sd_event_unref(f->event);
        config_free(f->c);
        ledger_close(f->l);
        free(f->api.phones);
        free(f->conf);
        free(f->path);
        tmpdir_remove(f->dir);
        free(f);
}

static int setup(void **state) {
        *state = fixture_new();
        return 0;
}

static int teardown(void **state) {
        fixture_free(*state);
        return 0;
}

/* The declarations `releases` (the inside of the list) in force, as a
 * daemon's start applies them (retired.c). */
static void declare(Fixture *f, const char *releases) {
        _cleanup_free_ char *text = NULL;
        DeclLoad dl = { .ledger = f->l };
        DeclSink sink = decl_load_sink(&dl);
        ConfDiag d = {};
        Plan *plan = NULL;

        assert_true(asprintf(&text, "%sreleases = (%s);\n", settings, releases) >= 0);
        write_file(f->conf, text);
        f->c = config_free(f->c);
        assert_int_equal(config_load(f->conf, &sink, &f->c, &d), 0);
        decl_load_done(&dl);
        conf_diag_done(&d);
        assert_int_equal(plan_compute_changes(f->l, f->c, &plan), 0);
        assert_int_equal(plan_apply(f->l, plan, false), 0);
        plan_free(plan);
        assert_int_equal(ledger_decls_keep(f->l), 0);
}

/* "{ id = ... }, ..." for phones first..first+n-1 of the model account. */
static char *releases_by(const char *what, unsigned first, unsigned n) {
        char *text = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&text, &size);

        assert_non_null(m);
        for (unsigned i = first; i < first + n; i++) {
                fprintf(m, "%s{ %s = \"", i > first ? ", " : "", what);
                fprintf(m, streq(what, "id") ? ID_FMT : NUM_FMT, i);
                fputs("\"; }", m);
        }
        assert_int_equal(fclose(m), 0);
        return text;
}

static void engine_up(Fixture *f) {
        assert_int_equal(engine_new(f->event, f->l, &f->e), 0);
        assert_int_equal(engine_set_config(f->e, f->c, "token"), 0);
        f->d = stub_diga_last();
        assert_non_null(f->d);
}

/* Runs the loop and answers every call the engine makes, until the pass
 * is over (settled: until no phone waits for anything but time or an
 * operator, passes after it included). */
#define DRIVE_CALLS 1000     /* calls one drive answers at most: more is an engine that does not stop */

static void drive(Fixture *f, bool settled) {
        usec_t deadline = now(CLOCK_MONOTONIC) + 20 * USEC_PER_SEC;
        unsigned calls = 0;

        for (;;) {
                Call *c;

                if (now(CLOCK_MONOTONIC) >= deadline || calls > DRIVE_CALLS)
                        fail_msg("the engine did not settle (%u calls): %s", calls, strna(engine_paused(f->e)));
                if (sd_event_run(f->event, 0) > 0)
                        continue;
                c = stub_diga_next(f->d);
                if (c && (c->started || !stub_diga_stats(f->d)->paused)) {
                        account_answer(&f->api, f->d, c);
                        calls++;
                        continue;
                }
                if (!engine_busy(f->e) && (!settled || engine_settled(f->e)))
                        return;
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
        }
}

static void run_pass(Fixture *f) {
        engine_request_pass(f->e, false);
        drive(f, false);
}

static Phone find(Fixture *f, const char *what) {
        Phone p;

        assert_int_equal(ledger_find(f->l, what, &p), 0);
        return p;
}

static PhoneState state_of(Fixture *f, const char *what) {
        Phone p = find(f, what);
        PhoneState s = p.state;

        phone_done(&p);
        return s;
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

static int64_t query_int(Ledger *l, const char *sql) {
        _cleanup_free_ char *v = query_text(l, sql);

        return strtoll(v, NULL, 10);
}

/* Whatever happened, the file is whole, no transaction is left open, and
 * every row is in the state its last history line led to. */
static void check_ledger(Fixture *f) {
        _cleanup_free_ char *ok = query_text(f->l, "PRAGMA integrity_check");

        assert_string_equal(ok, "ok");
        assert_true(sqlite3_get_autocommit(ledger_db(f->l)));
        assert_int_equal(query_int(f->l,
                "SELECT count(*) FROM phones p WHERE state IS NOT (SELECT h.new_state FROM history h"
                " WHERE h.phone = p.pk AND h.kind = 'state' ORDER BY h.seq DESC LIMIT 1)"), 0);
}

/* Phone i's id and number, as the model account has them. */
typedef struct Name {
        char s[40];
} Name;

static Name id_of(unsigned i) {
        Name n;

        snprintf(n.s, sizeof n.s, ID_FMT, i);
        return n;
}

static Name number_of(unsigned i) {
        Name n;

        snprintf(n.s, sizeof n.s, NUM_FMT, i);
        return n;
}

static void declare_by(Fixture *f, const char *what, unsigned first, unsigned n) {
        _cleanup_free_ char *text = releases_by(what, first, n);

        declare(f, text);
}

/* ---- a pass ---------------------------------------------------------------- */

static void test_a_phone_declared_by_id_is_looked_at_then_released_once(void **state) {
        Fixture *f = *state;

        account_add(&f->api, 1, "assigned");
        declare_by(f, "id", 1, 1);
        engine_up(f);
        run_pass(f);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.lists, 0);
        assert_int_equal(f->api.phones[0].gets, 1);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_null(engine_paused(f->e));
        assert_true(engine_settled(f->e));
        check_ledger(f);
}

/* Numbers are found in a listing of the account: no GET, one DELETE each. */
static void test_numbers_are_matched_against_a_listing_of_the_account(void **state) {
        Fixture *f = *state;

        for (unsigned i = 1; i <= 250; i++)
                account_add(&f->api, i, "assigned");
        declare_by(f, "number", 10, 3);
        engine_up(f);
        run_pass(f);
        for (unsigned i = 10; i < 13; i++) {
                assert_int_equal(state_of(f, number_of(i).s), STATE_RELEASED);
                assert_int_equal(f->api.phones[i - 1].deletes, 1);
        }
        /* Three pages, the last twice; no look. */
        assert_int_equal(f->api.lists, 4);
        assert_int_equal(f->api.gets, 0);
        assert_int_equal(f->api.deletes, 3);
        check_ledger(f);
}

/* A step the ledger refuses (its triggers guard what the record may do;
 * here a test trigger stands for a bug they would catch): calls pause,
 * the row stays as the ledger last took it, and once calls go again the
 * phone is looked at, never sent a second DELETE. */
static void test_a_step_the_ledger_refuses_pauses_calls_and_nothing_is_sent_again(void **state) {
        Fixture *f = *state;
        Phone p;

        account_add(&f->api, 1, "assigned");
        declare_by(f, "id", 1, 1);
        assert_int_equal(ledger_exec(f->l, "CREATE TEMP TRIGGER refuse BEFORE UPDATE OF state ON main.phones"
                                           " WHEN NEW.state = 'released'"
                                           " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"), 0);
        engine_up(f);
        run_pass(f);

        assert_non_null(engine_paused(f->e));
        assert_non_null(strstr(engine_paused(f->e), "ledger"));
        assert_true(stub_diga_stats(f->d)->paused);
        p = find(f, id_of(1).s);
        assert_int_equal(p.state, STATE_IN_FLIGHT);
        assert_true(p.sent_at > 0);
        phone_done(&p);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_int_equal(f->api.phones[0].gets, 1);
        check_ledger(f);

        /* The cause fixed and calls going again (a reload resumes them). */
        assert_int_equal(ledger_exec(f->l, "DROP TRIGGER temp.refuse"), 0);
        assert_int_equal(engine_set_config(f->e, f->c, "token"), 0);
        assert_null(engine_paused(f->e));
        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_int_equal(f->api.phones[0].gets, 2);
        check_ledger(f);
}

/* Rows 1 to 65,535 long released; phones 1 to 3 declared, their rows
 * 65,536 (the last of the first part a pass counts) to 65,538; the engine up. */
static void three_past_a_part(Fixture *f) {
        assert_int_equal(ledger_exec(f->l, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 65535)"
                                     " INSERT INTO phones (key, state, created_at, updated_at)"
                                     " SELECT 'old' || i, 'released', 1, 1 FROM n"), 0);
        for (unsigned i = 1; i <= 3; i++)
                account_add(&f->api, i, "assigned");
        declare_by(f, "id", 1, 3);
        engine_up(f);
}

static void note_pass_total(Engine *e, void *userdata) {
        EngineProgress p;

        if (engine_progress(e, &p) && *(size_t *) userdata == 0)
                *(size_t *) userdata = p.total;
}

/* A pass counts its due rows 65,536 rows of the ledger at a time, the loop
 * turning in between (a million rows took 0.3 to 0.6 s in one go, the
 * control socket waiting): on a ledger of more than one part, the pass has
 * not begun when engine_request_pass() returns.  The count, across the
 * parts' edge, is every due row, and the pass releases each once. */
static void test_a_large_count_lets_the_loop_turn(void **state) {
        Fixture *f = *state;
        EngineProgress p;
        size_t total = 0;

        three_past_a_part(f);
        engine_on_idle(f->e, note_pass_total, &total);

        engine_request_pass(f->e, false);
        assert_true(engine_busy(f->e));
        assert_false(engine_progress(f->e, &p));
        drive(f, true);
        assert_int_equal(total, 3);
        for (unsigned i = 1; i <= 3; i++) {
                assert_int_equal(state_of(f, id_of(i).s), STATE_RELEASED);
                assert_int_equal(f->api.phones[i - 1].deletes, 1);
        }
}

/* A stop while a pass counts its rows: the count ends at the next turn of
 * the loop, the pass never begins, nothing is asked of the API, and the
 * engine is idle for the daemon to exit. */
static void test_a_stop_during_the_count_begins_no_pass(void **state) {
        Fixture *f = *state;
        EngineProgress p;
        size_t total = 0;

        three_past_a_part(f);
        engine_on_idle(f->e, note_pass_total, &total);

        engine_request_pass(f->e, false);
        assert_true(engine_busy(f->e));
        assert_false(engine_stop(f->e));
        while (sd_event_run(f->event, 0) > 0)
                ;
        assert_false(engine_busy(f->e));
        assert_false(engine_progress(f->e, &p));
        assert_int_equal(total, 0);
        assert_null(stub_diga_next(f->d));
        for (unsigned i = 1; i <= 3; i++)
                assert_int_equal(state_of(f, id_of(i).s), STATE_PENDING);
}

/* Phone 1, assigned (by `provider`), declared by id, and the engine up. */
static void one_by_id(Fixture *f, const char *provider) {
        account_add(&f->api, 1, "assigned")->provider = provider;
        declare_by(f, "id", 1, 1);
        engine_up(f);
}

/* Runs the loop until a call is asked for, and returns it. */
static Call *asked(Fixture *f) {
        usec_t deadline = now(CLOCK_MONOTONIC) + 5 * USEC_PER_SEC;

        while (!stub_diga_next(f->d) && now(CLOCK_MONOTONIC) < deadline)
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
        assert_non_null(stub_diga_next(f->d));
        return stub_diga_next(f->d);
}

/* A 204 from a provider retired does not know says the API took the
 * DELETE, not what it did: a look decides. */
static void test_a_204_for_an_unknown_provider_is_followed_by_a_look(void **state) {
        Fixture *f = *state;

        one_by_id(f, "acme");
        run_pass(f);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_int_equal(f->api.phones[0].gets, 2);
        check_ledger(f);
}

/* A GET of one phone answered with another's record (a proxy's cache, a
 * mixed-up backend) is no look at the phone asked about: nothing is
 * decided on it, and no DELETE leaves. */
static void test_a_look_answered_with_another_phone_decides_nothing(void **state) {
        Fixture *f = *state;
        ApiPhone *p = account_add(&f->api, 1, "assigned");

        p->answer_id = "00000000-0000-4000-8000-000000000999";
        declare_by(f, "id", 1, 1);
        engine_up(f);
        run_pass(f);
        assert_true(f->api.phones[0].gets >= 1);
        assert_int_equal(f->api.phones[0].deletes, 0);
        assert_int_not_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_not_equal(state_of(f, id_of(1).s), STATE_IN_FLIGHT);
        check_ledger(f);
}

/* A call the client cannot make (out of memory) charges the phone
 * nothing: no attempt, no state, no pause; a later pass (the resync, a
 * reload) makes it. */
static void test_a_call_the_client_cannot_make_charges_the_phone_nothing(void **state) {
        Fixture *f = *state;
        Phone p;

        one_by_id(f, "custom");
        /* The GET of the first pass, then the DELETE of the next. */
        stub_diga_fail_call(f->d, 1, -ENOMEM);
        run_pass(f);
        assert_int_equal(f->api.gets, 0);
        stub_diga_fail_call(f->d, 2, -ENOMEM);
        run_pass(f);
        assert_int_equal(f->api.gets, 1);
        assert_int_equal(f->api.deletes, 0);
        assert_int_equal(state_of(f, id_of(1).s), STATE_PENDING);
        assert_null(engine_paused(f->e));
        run_pass(f);

        p = find(f, id_of(1).s);
        assert_int_equal(p.state, STATE_RELEASED);
        assert_int_equal(p.attempts, 0);
        phone_done(&p);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_int_equal(query_int(f->l, "SELECT count(*) FROM history WHERE new_state IN ('retrying', 'failed')"), 0);
        assert_null(engine_paused(f->e));
        check_ledger(f);
}

/* The pending call of `kind` for phone i, or NULL. */
static Call *pending_for(Fixture *f, CallKind kind, unsigned i) {
        Name id = id_of(i);
        Call *c;

        for (size_t k = 0; (c = stub_diga_pending_call(f->d, k)); k++)
                if (c->kind == kind && streq(c->id, id.s))
                        return c;
        return NULL;
}

/* Runs the loop until the engine asks for that call, and returns it. */
static Call *asked_for(Fixture *f, CallKind kind, unsigned i) {
        usec_t deadline = now(CLOCK_MONOTONIC) + 5 * USEC_PER_SEC;

        while (!pending_for(f, kind, i) && now(CLOCK_MONOTONIC) < deadline)
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
        assert_non_null(pending_for(f, kind, i));
        return pending_for(f, kind, i);
}

/* As a DELETE whose answer was lost before a crash. */
static void to_in_flight(Fixture *f, const char *what) {
        Phone p = find(f, what);

        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = p.pk, .from = p.state, .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = 0,
                .sent_at = (int64_t) now(CLOCK_REALTIME) - (int64_t) USEC_PER_SEC, .method = "DELETE",
                .path = "/v1/phone/", .detail = "the answer was lost" }), 0);
        phone_done(&p);
}

/* engine_stop() starts no new call: a look answered after it queues no
 * DELETE, and a DELETE answered after it is recorded, its row left in_flight
 * for a look at the next start, which sends nothing twice. */
static void test_stopping_starts_no_new_call_and_records_what_was_out(void **state) {
        Fixture *f = *state;
        EngineProgress pr;
        Phone p;

        account_add(&f->api, 1, "assigned");
        account_add(&f->api, 2, "assigned")->provider = "acme";
        declare_by(f, "id", 1, 2);
        engine_up(f);
        engine_request_pass(f->e, false);
        (void) asked(f);
        stub_diga_start_all(f->d);
        account_answer(&f->api, f->d, pending_for(f, CALL_GET, 2));
        assert_true(stub_diga_start(f->d, pending_for(f, CALL_DELETE, 2)));

        /* While the pass runs: neither settled nor stuck. */
        assert_true(engine_busy(f->e));
        assert_false(engine_settled(f->e));
        assert_null(engine_stuck(f->e));
        assert_true(engine_progress(f->e, &pr));
        assert_int_equal(pr.total, 2);

        assert_false(engine_stop(f->e));
        account_answer(&f->api, f->d, pending_for(f, CALL_GET, 1));
        account_answer(&f->api, f->d, pending_for(f, CALL_DELETE, 2));
        while (sd_event_run(f->event, 0) > 0)
                ;
        assert_false(engine_busy(f->e));
        assert_int_equal(stub_diga_pending(f->d), 0);
        assert_int_equal(state_of(f, id_of(1).s), STATE_PENDING);
        assert_int_equal(f->api.phones[0].deletes, 0);
        p = find(f, id_of(2).s);
        assert_int_equal(p.state, STATE_IN_FLIGHT);
        assert_true(p.sent_at > 0);
        phone_done(&p);
        assert_int_equal(query_int(f->l, "SELECT count(*) FROM history WHERE method = 'DELETE' AND http_status = 204"), 1);
        check_ledger(f);

        /* The next start. */
        engine_down(f);
        engine_up(f);
        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(state_of(f, id_of(2).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_int_equal(f->api.phones[1].deletes, 1);
        check_ledger(f);
}

/* A row whose declaration changed after its DELETE was decided, with the
 * engine not told (a reload that did not reach it): the ledger's version
 * check at the in_flight commit keeps the DELETE from leaving.  That is no
 * ledger failure: calls do not pause, and the next pass decides anew. */
static void test_a_delete_decided_on_a_declaration_changed_since_does_not_leave(void **state) {
        _cleanup_free_ char *changed = NULL;
        Fixture *f = *state;
        Call *c;

        one_by_id(f, "custom");
        engine_request_pass(f->e, false);
        account_answer(&f->api, f->d, asked(f));
        c = pending_for(f, CALL_DELETE, 1);
        assert_non_null(c);

        assert_true(asprintf(&changed, "{ id = \"%s\"; reason = \"changed\"; }", id_of(1).s) >= 0);
        declare(f, changed);
        assert_false(stub_diga_start(f->d, c));
        assert_int_equal(f->api.deletes, 0);
        assert_null(engine_paused(f->e));
        assert_int_equal(state_of(f, id_of(1).s), STATE_PENDING);

        /* As a reload does: the engine told, then a pass. */
        engine_declarations_changed(f->e);
        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
        check_ledger(f);
}

/* An operator's pause (engine_hold): a pass looks only at the phones whose
 * DELETE may have gone out; the rest wait, and go once it is let go. */
static void test_an_operators_pause_looks_only_at_deletes_that_may_have_gone_out(void **state) {
        Fixture *f = *state;

        account_add(&f->api, 1, "assigned");
        account_add(&f->api, 2, "released");
        declare_by(f, "id", 1, 2);
        to_in_flight(f, id_of(2).s);
        engine_up(f);
        engine_hold(f->e, true);
        engine_hold(f->e, true);
        run_pass(f);
        assert_int_equal(state_of(f, id_of(2).s), STATE_RELEASED);
        assert_int_equal(state_of(f, id_of(1).s), STATE_PENDING);
        assert_int_equal(f->api.phones[0].gets, 0);
        assert_int_equal(f->api.deletes, 0);

        engine_hold(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
        check_ledger(f);
}

/* As retired --once: stops once the engine settles stuck. */
static void stop_when_stuck(Engine *e, void *userdata) {
        if (!engine_busy(e) && engine_stuck(e))
                (void) engine_stop(e);
}

/* A phone whose DELETE may have gone out, and whose looks keep failing:
 * never failed (it may be gone), never sent again, the DELETE kept on
 * record; once its looks are spent, the engine says why it cannot finish
 * (--once gives up on it). */
static void test_a_delete_that_cannot_be_looked_at_leaves_the_engine_stuck_and_says_why(void **state) {
        Fixture *f = *state;
        usec_t deadline = now(CLOCK_MONOTONIC) + 10 * USEC_PER_SEC;
        unsigned attempts;
        int64_t sent_at;
        PhoneState was;
        Phone p;

        account_add(&f->api, 1, "assigned")->get_status = 503;
        declare_by(f, "id", 1, 1);
        to_in_flight(f, id_of(1).s);
        engine_up(f);
        engine_on_idle(f->e, stop_when_stuck, NULL);
        engine_request_pass(f->e, false);
        while (!engine_stuck(f->e) && now(CLOCK_MONOTONIC) < deadline) {
                drive(f, false);
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
        }
        assert_non_null(engine_stuck(f->e));
        assert_non_null(strstr(engine_stuck(f->e), "DELETE may have gone out"));
        p = find(f, id_of(1).s);
        was = p.state;
        sent_at = p.sent_at;
        attempts = p.attempts;
        phone_done(&p);
        /* Retrying, its DELETE still on record as maybe out: a look comes first. */
        assert_int_equal(was, STATE_RETRYING);
        assert_true(sent_at > 0);
        /* Past retry.max_attempts (3), one look each.  (They would go on,
         * spaced by the back-off: only a working API ends them.) */
        assert_int_equal(attempts, 4);
        assert_int_equal(f->api.phones[0].gets, 4);
        assert_int_equal(f->api.deletes, 0);
        check_ledger(f);
}

/* The API's Date header far from our clock shows in the status, and goes
 * once they agree again. */
static void test_the_status_tells_while_the_apis_clock_is_off(void **state) {
        _cleanup_free_ char *both = releases_by("id", 1, 2);
        Fixture *f = *state;
        char buf[512];

        f->api.clock_offset = 600 * (int64_t) USEC_PER_SEC;
        one_by_id(f, "custom");
        run_pass(f);
        assert_int_equal(engine_status(f->e, buf, sizeof buf), 0);
        assert_non_null(strstr(buf, "API clock"));
        assert_non_null(strstr(buf, "ahead of ours"));

        f->api.clock_offset = 0;
        account_add(&f->api, 2, "assigned");
        declare(f, both);
        engine_declarations_changed(f->e);
        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(engine_status(f->e, buf, sizeof buf), 0);
        assert_null(strstr(buf, "API clock"));
        assert_int_equal(state_of(f, id_of(2).s), STATE_RELEASED);
}

/* Stopped while the account is listed: the pass ends without waiting for
 * the list call's answer, no listing is tried again, and nothing is decided
 * from the listing that did not end. */
static void test_stopping_during_a_listing_ends_it_at_once(void **state) {
        Fixture *f = *state;

        account_add(&f->api, 1, "assigned");
        declare_by(f, "number", 1, 1);
        engine_up(f);
        engine_request_pass(f->e, false);
        assert_int_equal(asked(f)->kind, CALL_LIST);
        stub_diga_start_all(f->d);
        (void) engine_stop(f->e);
        for (int i = 0; i < 10 && engine_busy(f->e); i++)
                assert_true(sd_event_run(f->event, 0) >= 0);
        assert_false(engine_busy(f->e));
        for (int i = 0; i < 10; i++)
                assert_true(sd_event_run(f->event, USEC_PER_MSEC) >= 0);
        assert_int_equal(stub_diga_pending(f->d), 0);
        assert_int_equal(stub_diga_silenced(f->d), 1);
        assert_int_equal(state_of(f, number_of(1).s), STATE_PENDING);

        /* Freed, not stopped, mid-listing: nothing is left behind (ASan says). */
        engine_down(f);
        engine_up(f);
        engine_request_pass(f->e, false);
        assert_int_equal(asked(f)->kind, CALL_LIST);
        engine_down(f);
        assert_int_equal(state_of(f, number_of(1).s), STATE_PENDING);
}

/* Nothing leaves while the account is listed: a DELETE decided meanwhile
 * (a look at a DELETE that did not take) waits for the listing's end. */
static void test_a_delete_decided_while_the_account_is_listed_waits_for_the_listing(void **state) {
        Fixture *f = *state;
        char releases[160];

        account_add(&f->api, 1, "assigned");
        account_add(&f->api, 2, "assigned");
        snprintf(releases, sizeof releases, "{ id = \"%s\"; }, { number = \"%s\"; }", id_of(1).s, number_of(2).s);
        declare(f, releases);
        to_in_flight(f, id_of(1).s);
        engine_up(f);
        engine_request_pass(f->e, false);
        /* The look at 1 (its DELETE did not take): it may be sent again... */
        account_answer(&f->api, f->d, asked_for(f, CALL_GET, 1));
        while (sd_event_run(f->event, 0) > 0)
                ;
        /* ...once the account is listed. */
        assert_null(pending_for(f, CALL_DELETE, 1));
        assert_int_equal(stub_diga_next(f->d)->kind, CALL_LIST);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(state_of(f, number_of(2).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
        assert_int_equal(f->api.phones[1].deletes, 1);
        check_ledger(f);
}

/* A stop while such a DELETE waits: it never leaves. */
static void test_a_stop_drops_a_delete_that_waited_for_the_listing(void **state) {
        Fixture *f = *state;
        char releases[160];

        account_add(&f->api, 1, "assigned");
        snprintf(releases, sizeof releases, "{ id = \"%s\"; }, { number = \"%s\"; }", id_of(1).s, number_of(2).s);
        declare(f, releases);
        to_in_flight(f, id_of(1).s);
        engine_up(f);
        engine_request_pass(f->e, false);
        account_answer(&f->api, f->d, asked_for(f, CALL_GET, 1));
        assert_null(pending_for(f, CALL_DELETE, 1));
        (void) engine_stop(f->e);
        for (int i = 0; i < 10 && engine_busy(f->e); i++)
                assert_true(sd_event_run(f->event, 0) >= 0);
        assert_false(engine_busy(f->e));
        assert_int_equal(stub_diga_pending(f->d), 0);
        assert_int_equal(f->api.deletes, 0);
        assert_int_equal(state_of(f, id_of(1).s), STATE_IN_FLIGHT);
        check_ledger(f);
}

/* A key refused to the listing pauses every call: nothing more is asked,
 * not even by a pass asked for, until a reload. */
static void test_a_key_refused_to_the_listing_pauses_every_call(void **state) {
        Fixture *f = *state;
        char buf[512];

        account_add(&f->api, 1, "assigned");
        declare_by(f, "number", 1, 1);
        engine_up(f);
        engine_request_pass(f->e, false);
        assert_true(stub_diga_answer_json(f->d, asked(f), 401, "{\"detail\":\"Not authenticated\"}"));
        drive(f, false);
        assert_non_null(engine_paused(f->e));
        assert_non_null(strstr(engine_paused(f->e), "401"));
        assert_int_equal(engine_status(f->e, buf, sizeof buf), 0);
        assert_true(strncmp(buf, "PAUSED", 6) == 0);
        engine_request_pass(f->e, false);
        drive(f, false);
        assert_int_equal(stub_diga_stats(f->d)->calls, 1);
        assert_int_equal(state_of(f, number_of(1).s), STATE_PENDING);

        /* A reload (a new key) lets calls go again. */
        assert_int_equal(engine_set_config(f->e, f->c, "token"), 0);
        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, number_of(1).s), STATE_RELEASED);
}

/* A refused key pauses calls mid-pass: what is answered after it starts
 * nothing new (no DELETE, no look), and is recorded; calls resumed, every
 * phone goes, none sent a DELETE twice. */
static void test_answers_after_a_refused_key_start_nothing_new(void **state) {
        Fixture *f = *state;

        account_add(&f->api, 1, "assigned");
        account_add(&f->api, 2, "assigned")->provider = "acme";
        account_add(&f->api, 3, "assigned")->get_status = 401;
        declare_by(f, "id", 1, 3);
        engine_up(f);
        engine_request_pass(f->e, false);
        (void) asked(f);
        stub_diga_start_all(f->d);
        account_answer(&f->api, f->d, pending_for(f, CALL_GET, 2));
        assert_true(stub_diga_start(f->d, pending_for(f, CALL_DELETE, 2)));
        account_answer(&f->api, f->d, pending_for(f, CALL_GET, 3));
        assert_non_null(engine_paused(f->e));
        /* A look answered: no DELETE.  A DELETE answered (204, a provider
         * not known): recorded, and no look. */
        account_answer(&f->api, f->d, pending_for(f, CALL_GET, 1));
        account_answer(&f->api, f->d, pending_for(f, CALL_DELETE, 2));
        drive(f, false);
        assert_int_equal(stub_diga_pending(f->d), 0);
        assert_int_equal(f->api.deletes, 1);
        assert_int_equal(f->api.gets, 3);
        assert_int_equal(state_of(f, id_of(1).s), STATE_PENDING);
        assert_int_equal(state_of(f, id_of(2).s), STATE_IN_FLIGHT);
        check_ledger(f);

        f->api.phones[2].get_status = 0;
        assert_int_equal(engine_set_config(f->e, f->c, "token"), 0);
        engine_request_pass(f->e, false);
        drive(f, true);
        for (unsigned i = 1; i <= 3; i++) {
                assert_int_equal(state_of(f, id_of(i).s), STATE_RELEASED);
                assert_int_equal(f->api.phones[i - 1].deletes, 1);
        }
        check_ledger(f);
}

/* A DELETE of unknown effect (a 204 from a provider not known) answered
 * after a reload cancelled its row: nothing follows in this pass (no look
 * on a declaration that is no more); the row stays cancelled with its
 * DELETE on record as maybe out, and the next pass's look settles it. */
static void test_a_delete_answered_after_its_row_was_cancelled_is_settled_by_a_later_look(void **state) {
        Fixture *f = *state;
        Phone p;

        one_by_id(f, "acme");
        engine_request_pass(f->e, false);
        account_answer(&f->api, f->d, asked(f));
        assert_true(stub_diga_start(f->d, pending_for(f, CALL_DELETE, 1)));
        declare(f, "");
        engine_declarations_changed(f->e);
        account_answer(&f->api, f->d, pending_for(f, CALL_DELETE, 1));
        assert_int_equal(stub_diga_pending(f->d), 0);
        assert_null(engine_paused(f->e));
        p = find(f, id_of(1).s);
        assert_int_equal(p.state, STATE_CANCELLED);
        assert_true(p.sent_at > 0);
        phone_done(&p);

        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].gets, 2);
        assert_int_equal(f->api.phones[0].deletes, 1);
        check_ledger(f);
}

/* A look answered after a reload changed its row's declaration records
 * nothing, not even a release it saw: the next pass looks again, on the
 * declaration in force. */
static void test_a_look_answered_after_a_reload_changed_its_row_records_nothing(void **state) {
        _cleanup_free_ char *changed = NULL;
        Fixture *f = *state;
        Call *c;

        account_add(&f->api, 1, "released");
        declare_by(f, "id", 1, 1);
        engine_up(f);
        engine_request_pass(f->e, false);
        c = asked(f);
        assert_int_equal(c->kind, CALL_GET);
        assert_true(asprintf(&changed, "{ id = \"%s\"; reason = \"changed\"; }", id_of(1).s) >= 0);
        declare(f, changed);
        engine_declarations_changed(f->e);
        account_answer(&f->api, f->d, c);
        assert_int_equal(state_of(f, id_of(1).s), STATE_PENDING);
        assert_int_equal(query_int(f->l, "SELECT count(*) FROM history WHERE method = 'GET'"), 0);
        assert_null(engine_paused(f->e));

        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].gets, 2);
        check_ledger(f);
}

/* Reading the ledger fails: the engine says neither settled nor stuck (an
 * error is no reason for --once to stop, let alone to call it done), and
 * its status is an error, or leaves out what it could not count. */
static void test_a_ledger_that_cannot_be_read_is_neither_settled_nor_stuck(void **state) {
        Fixture *f = *state;
        Engine *bare = NULL;
        char buf[512];

        /* (An engine never configured is freed as well.) */
        assert_int_equal(engine_new(f->event, f->l, &bare), 0);
        bare = engine_free(bare);

        one_by_id(f, "custom");
        run_pass(f);
        assert_true(engine_settled(f->e));
        /* Each SQLite call of each in turn. */
        for (unsigned n = 1;; n++) {
                bool settled;

                fault_arm(n, SQLITE_IOERR_READ);
                settled = engine_settled(f->e);
                if (!fault_disarm()) {
                        assert_true(settled);
                        break;
                }
                assert_false(settled);
        }
        for (unsigned n = 1;; n++) {
                const char *stuck;

                fault_arm(n, SQLITE_IOERR_READ);
                stuck = engine_stuck(f->e);
                if (!fault_disarm())
                        break;
                assert_null(stuck);
        }
        for (unsigned n = 1;; n++) {
                int r;

                fault_arm(n, SQLITE_IOERR_READ);
                r = engine_status(f->e, buf, sizeof buf);
                if (!fault_disarm()) {
                        assert_int_equal(r, 0);
                        break;
                }
                assert_true(r < 0 || strstr(buf, "1 released"));
        }
        assert_non_null(strstr(buf, "1 released"));
        assert_true(engine_settled(f->e));
}

/* A reload that cannot read a row back cannot show its declaration is the
 * same: the DELETE queued for it is dropped, and the next pass decides. */
static void test_a_reload_that_cannot_read_a_row_drops_its_queued_delete(void **state) {
        Fixture *f = *state;

        one_by_id(f, "custom");
        engine_request_pass(f->e, false);
        account_answer(&f->api, f->d, asked(f));
        assert_non_null(pending_for(f, CALL_DELETE, 1));
        fault_arm(1, SQLITE_BUSY);
        engine_declarations_changed(f->e);
        assert_true(fault_disarm());
        assert_null(pending_for(f, CALL_DELETE, 1));
        assert_int_equal(stub_diga_stats(f->d)->not_sent, 1);
        assert_null(engine_paused(f->e));
        engine_request_pass(f->e, false);
        drive(f, true);
        assert_int_equal(state_of(f, id_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.phones[0].deletes, 1);
}

/* A DELETE answered after a reload cancelled its row: what the API did
 * goes on record from the state the row is in now (act.c commit's stale
 * retry), custom (released) and netelip (scheduled), each SQLite call of
 * recording it failing in turn.  A fault leaves the row cancelled with its
 * DELETE on record as maybe out (or a look settles it), never pending nor
 * failed; a restart with no fault looks, and records it released, with no
 * second DELETE. */
static void test_a_delete_answered_after_its_row_was_cancelled_goes_on_record_whatever_fails(void **state) {
        static const struct { const char *provider; PhoneState to; } cases[] = {
                { "custom", STATE_RELEASED }, { "netelip", STATE_SCHEDULED },
        };

        for (size_t k = 0; k < ELEMENTSOF(cases); k++)
                for (unsigned n = 1;; n++) {
                        Fixture *f = fixture_new();
                        Phone p;
                        bool hit;

                        one_by_id(f, cases[k].provider);
                        engine_request_pass(f->e, false);
                        account_answer(&f->api, f->d, asked(f));
                        assert_true(stub_diga_start(f->d, pending_for(f, CALL_DELETE, 1)));
                        declare(f, "");
                        assert_int_equal(state_of(f, id_of(1).s), STATE_CANCELLED);
                        engine_declarations_changed(f->e);

                        fault_arm(n, fault_codes[(n - 1) % ELEMENTSOF(fault_codes)]);
                        account_answer(&f->api, f->d, pending_for(f, CALL_DELETE, 1));
                        hit = fault_disarm();
                        drive(f, false);
                        check_ledger(f);
                        p = find(f, id_of(1).s);
                        if (!hit) {
                                assert_int_equal(p.state, cases[k].to);
                                phone_done(&p);
                                fixture_free(f);
                                break;
                        }
                        /* (Released: a later pass's look found it so.) */
                        assert_true(p.state == STATE_CANCELLED || p.state == cases[k].to || p.state == STATE_RELEASED);
                        assert_true(p.state != STATE_CANCELLED || p.sent_at > 0);
                        phone_done(&p);

                        engine_down(f);
                        engine_up(f);
                        engine_request_pass(f->e, false);
                        drive(f, true);
                        p = find(f, id_of(1).s);
                        assert_true(p.state == STATE_RELEASED || p.state == cases[k].to);
                        phone_done(&p);
                        assert_int_equal(f->api.deletes, 1);
                        check_ledger(f);
                        fixture_free(f);
                }
}

/* ---- numbers on several phones ---------------------------------------------- */

/* Ten live phones with the declared number: none is released, and the
 * detail names the first eight. */
static void test_a_number_on_ten_live_phones_is_never_released(void **state) {
        _cleanup_free_ char *detail = NULL;
        Fixture *f = *state;

        for (unsigned i = 1; i <= 10; i++)
                snprintf(account_add(&f->api, i, "assigned")->number, 32, NUM_FMT, 1u);
        declare_by(f, "number", 1, 1);
        engine_up(f);
        run_pass(f);
        assert_int_equal(state_of(f, number_of(1).s), STATE_FAILED);
        detail = query_text(f->l, "SELECT detail FROM history WHERE new_state = 'failed'");
        assert_non_null(strstr(detail, "10 live phones"));
        assert_non_null(strstr(detail, id_of(8).s));
        assert_null(strstr(detail, id_of(9).s));
        assert_non_null(strstr(detail, ", ..."));
        assert_int_equal(f->api.deletes, 0);
}

/* A number whose phones are all released: it is released (the first one
 * listed tells). */
static void test_a_number_whose_phones_are_all_released_is_released(void **state) {
        Fixture *f = *state;

        for (unsigned i = 1; i <= 2; i++)
                snprintf(account_add(&f->api, i, "released")->number, 32, NUM_FMT, 1u);
        declare_by(f, "number", 1, 1);
        engine_up(f);
        run_pass(f);
        assert_int_equal(state_of(f, number_of(1).s), STATE_RELEASED);
        assert_int_equal(f->api.deletes + f->api.gets, 0);
}

/* ---- a number that falls due after the listing was checked ---------------- */

#define CHECK_BATCH 4096        /* engine.c: numbers checked against a listing per turn of the loop */

typedef struct PassEnd {
        Fixture *f;
        unsigned ends;
        PhoneState state;       /* the late row's, when the first pass ended */
        unsigned lists;         /* list calls by then */
        bool again;             /* a pass started right after it */
} PassEnd;

/* Called when a pass starts and when the engine settles. */
static void on_idle_first_pass(Engine *e, void *userdata) {
        PassEnd *pe = userdata;

        if (!engine_busy(e)) {
                if (pe->ends++ == 0) {
                        pe->state = state_of(pe->f, number_of(9999).s);
                        pe->lists = pe->f->api.lists;
                }
                return;
        }
        /* The next pass: that it starts at once is all this test asks. */
        if (pe->ends > 0 && !pe->again) {
                pe->again = true;
                (void) engine_stop(e);
        }
}

/* A listing by page can miss a phone (two changes that undo each other's
 * shift), so only a listing by cursor may call a number absent: every due
 * number is checked against the listing before any row meets it.  One that
 * fell due after that check (an operator's retry between two turns of it)
 * and is not in the listing waits for the next pass, which starts at once
 * and lists again (and confirms by cursor: test_listing.py shows that end
 * to end), rather than be called unresolved. */
static void test_a_number_due_after_the_check_is_not_called_absent_by_a_listing_by_page(void **state) {
        _cleanup_free_ char *text = NULL, *numbers = releases_by("number", 1, CHECK_BATCH), *message = NULL;
        Fixture *f = *state;
        PassEnd pe = { .f = f };
        Phone p;
        Call *c;

        /* The account: the declared numbers, reserved (their rows deferred:
         * a look at them writes nothing, and sends nothing). */
        for (unsigned i = 1; i <= CHECK_BATCH; i++)
                account_add(&f->api, i, "reserved");
        /* Declared first: its row is met first, once the check has gone past it. */
        assert_true(asprintf(&text, "{ number = \"" NUM_FMT "\"; }, %s", 9999u, numbers) >= 0);
        declare(f, text);
        p = find(f, number_of(9999).s);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = p.pk, .from = STATE_PENDING, .to = STATE_FAILED, .attempts = -1, .next_at = -1,
                .detail = "failed before" }), 0);
        phone_done(&p);
        /* The others deferred by an earlier pass: one transaction, as 4096
         * steps of ledger_update() would be most of this test's time. */
        assert_int_equal(ledger_exec(f->l, "BEGIN IMMEDIATE;"
                "INSERT INTO history (phone, at, kind, old_state, new_state, detail)"
                "  SELECT pk, updated_at, 'state', 'pending', 'deferred', 'reserved' FROM phones WHERE state = 'pending';"
                "UPDATE phones SET state = 'deferred' WHERE state = 'pending';"
                "COMMIT"), 0);

        engine_up(f);
        engine_on_idle(f->e, on_idle_first_pass, &pe);
        /* A resync: deferred rows are due. */
        engine_request_pass(f->e, true);
        /* The listing by page, whole: the pages, and the last again. */
        while ((c = stub_diga_next(f->d))) {
                assert_int_equal(c->kind, CALL_LIST);
                assert_true(c->page > 0);
                account_answer(&f->api, f->d, c);
        }
        /* One turn of the loop: the first CHECK_BATCH numbers checked, all listed. */
        assert_true(sd_event_run(f->event, 0) > 0);
        /* Meanwhile, the operator retries the failed number. */
        assert_int_equal(ledger_retry(f->l, number_of(9999).s, &message), 0);
        drive(f, false);

        /* The first pass left it as it was, and the next started at once. */
        assert_int_equal(pe.ends, 2);
        assert_int_equal(pe.state, STATE_PENDING);
        assert_int_equal(pe.lists, CHECK_BATCH / API_PAGE_LIMIT + 2);
        assert_true(pe.again);
        assert_int_equal(state_of(f, number_of(9999).s), STATE_PENDING);
        assert_int_equal(state_of(f, number_of(1).s), STATE_DEFERRED);
        assert_int_equal(state_of(f, number_of(CHECK_BATCH).s), STATE_DEFERRED);
        assert_int_equal(f->api.gets + f->api.deletes, 0);
        check_ledger(f);
}

/* ---- a whole pass, each SQLite call of it failing in turn ---------------- */

/* Phones 1-3 declared by id, 4-5 by number, 6 by id with its DELETE out
 * before a crash (the API released it); 7-8 in the account, not declared.
 * A pass lists the account (numbers are declared), matches every row, looks
 * at 6 by id, and sends five DELETEs. */
#define FAULT_PHONES 8

static void fault_account(Account *a) {
        a->n = 0;
        for (unsigned i = 1; i <= FAULT_PHONES; i++)
                account_add(a, i, i == 6 ? "released" : "assigned");
}

static char *fault_base;   /* the ledger each try starts from, built once */

/* How phone i is declared there. */
static Name fault_name(unsigned i) {
        return i == 4 || i == 5 ? number_of(i) : id_of(i);
}

static void fault_base_build(void) {
        _cleanup_free_ char *by_id = releases_by("id", 1, 3), *by_number = releases_by("number", 4, 2),
                            *text = NULL;
        Fixture *f = fixture_new();
        Phone p;

        assert_true(asprintf(&text, "%s, %s, { id = \"" ID_FMT "\"; }", by_id, by_number, 6u) >= 0);
        declare(f, text);
        p = find(f, id_of(6).s);
        assert_int_equal(ledger_update(f->l, &(LedgerUpdate) {
                .pk = p.pk, .from = STATE_PENDING, .to = STATE_IN_FLIGHT, .attempts = -1, .next_at = 0,
                .sent_at = (int64_t) now(CLOCK_REALTIME) - (int64_t) USEC_PER_SEC, .method = "DELETE",
                .path = "/v1/phone/6", .detail = "the answer was lost" }), 0);
        phone_done(&p);
        /* Closing the last connection folds the WAL into the file. */
        f->l = ledger_close(f->l);
        fault_base = strdup(f->path);
        assert_non_null(fault_base);
        /* The folder stays: the file is copied from it. */
        free(f->dir);
        f->dir = NULL;
        fixture_free(f);
}

static void copy_file(const char *from, const char *to) {
        _cleanup_free_ char *data = NULL;
        size_t size;
        FILE *out;

        data = read_all(from, &size);
        out = fopen(to, "we");
        assert_non_null(out);
        assert_int_equal(fwrite(data, 1, size, out), size);
        assert_int_equal(fclose(out), 0);
}

/* A fresh ledger from the base, and the API as it was. */
static void fault_fixture(Fixture *f) {
        engine_down(f);
        f->l = ledger_close(f->l);
        copy_file(fault_base, f->path);
        for (size_t i = 0; i < 2; i++) {
                _cleanup_free_ char *p = NULL;

                assert_true(asprintf(&p, "%s%s", f->path, i == 0 ? "-wal" : "-shm") >= 0);
                (void) unlink(p);
        }
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        if (!f->c) {
                _cleanup_free_ char *text = NULL;
                ConfDiag d = {};

                assert_true(asprintf(&text, "%sreleases = ();\n", settings) >= 0);
                write_file(f->conf, text);
                assert_int_equal(config_load(f->conf, NULL, &f->c, &d), 0);
                conf_diag_done(&d);
        }
        f->api = (Account) { .phones = f->api.phones };
        fault_account(&f->api);
}

/* What a pass that met a fault may leave, and may not. */
static void fault_check(Fixture *f) {
        check_ledger(f);
        for (unsigned i = 1; i <= 6; i++) {
                Phone p = find(f, fault_name(i).s);
                const ApiPhone *a = &f->api.phones[i - 1];

                /* Never twice; and a DELETE left only after its row said it may
                 * have (in_flight), so the row is in_flight or further. */
                assert_true(a->deletes <= 1);
                if (a->deletes > 0)
                        assert_true(p.state == STATE_IN_FLIGHT || p.state == STATE_RELEASED);
                if (p.state == STATE_IN_FLIGHT)
                        assert_true(p.sent_at > 0);
                /* No verdict from a pass that failed: nothing gave up on a phone. */
                assert_true(p.state != STATE_FAILED && p.state != STATE_UNRESOLVED);
                phone_done(&p);
        }
}

/* A restart with no fault: every phone is released, each with one DELETE
 * (6, whose DELETE was out before, with none: a look tells). */
static void fault_recover(Fixture *f) {
        engine_down(f);
        f->l = ledger_close(f->l);
        assert_int_equal(ledger_open(f->path, LEDGER_WRITE, &f->l, NULL), 0);
        engine_up(f);
        engine_request_pass(f->e, false);
        drive(f, true);
        check_ledger(f);
        for (unsigned i = 1; i <= 6; i++) {
                assert_int_equal(state_of(f, fault_name(i).s), STATE_RELEASED);
                assert_int_equal(f->api.phones[i - 1].deletes, i == 6 ? 0 : 1);
        }
        assert_null(engine_paused(f->e));
}

/* Each copy a pass makes (strdup(): the job's strings, what a look found,
 * the listing's) failing in turn for want of memory: the job it was for is
 * dropped, the ledger stays true, nothing is sent that its row did not say
 * may be, and a restart releases every phone once. */
static void test_each_copy_of_a_pass_failing_for_want_of_memory_leaves_a_true_ledger(void **state) {
        Fixture *f = *state;
        unsigned n;

        fault_base_build();
        for (n = 1;; n++) {
                fault_fixture(f);
                engine_up(f);
                oom = (__typeof__(oom)) { .armed = true, .fail_at = n };
                run_pass(f);
                oom.armed = false;
                fault_check(f);
                fault_recover(f);
                if (!oom.hit)
                        break;
        }
        print_message("  a pass: %u copies failed in turn\n", n - 1);
        *strrchr(fault_base, '/') = 0;
        tmpdir_remove(fault_base);
        fault_base = NULL;
}

static void test_each_sqlite_call_of_a_pass_failing_in_turn_leaves_a_true_ledger(void **state) {
        Fixture *f = *state;
        unsigned n;

        fault_base_build();
        for (n = 1;; n++) {
                bool hit;

                fault_fixture(f);
                engine_up(f);
                fault_arm(n, fault_codes[(n - 1) % ELEMENTSOF(fault_codes)]);
                run_pass(f);
                hit = fault_disarm();
                if (!hit) {
                        fault_check(f);
                        fault_recover(f);
                        break;
                }
                fault_check(f);
                fault_recover(f);
        }
        print_message("  a pass: %u SQLite calls failed in turn, the codes in rotation\n", n - 1);
        /* (The base's folder.) */
        *strrchr(fault_base, '/') = 0;
        tmpdir_remove(fault_base);
        fault_base = NULL;
}

int main(void) {
        const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
                T(test_a_phone_declared_by_id_is_looked_at_then_released_once),
                T(test_numbers_are_matched_against_a_listing_of_the_account),
                T(test_a_step_the_ledger_refuses_pauses_calls_and_nothing_is_sent_again),
                T(test_a_204_for_an_unknown_provider_is_followed_by_a_look),
                T(test_a_look_answered_with_another_phone_decides_nothing),
                T(test_each_copy_of_a_pass_failing_for_want_of_memory_leaves_a_true_ledger),
                T(test_a_call_the_client_cannot_make_charges_the_phone_nothing),
                T(test_stopping_starts_no_new_call_and_records_what_was_out),
                T(test_a_delete_decided_on_a_declaration_changed_since_does_not_leave),
                T(test_an_operators_pause_looks_only_at_deletes_that_may_have_gone_out),
                T(test_a_delete_that_cannot_be_looked_at_leaves_the_engine_stuck_and_says_why),
                T(test_the_status_tells_while_the_apis_clock_is_off),
                T(test_stopping_during_a_listing_ends_it_at_once),
                T(test_a_delete_decided_while_the_account_is_listed_waits_for_the_listing),
                T(test_a_stop_drops_a_delete_that_waited_for_the_listing),
                T(test_a_key_refused_to_the_listing_pauses_every_call),
                T(test_answers_after_a_refused_key_start_nothing_new),
                T(test_a_delete_answered_after_its_row_was_cancelled_is_settled_by_a_later_look),
                T(test_a_look_answered_after_a_reload_changed_its_row_records_nothing),
                T(test_a_delete_answered_after_its_row_was_cancelled_goes_on_record_whatever_fails),
                T(test_a_ledger_that_cannot_be_read_is_neither_settled_nor_stuck),
                T(test_a_reload_that_cannot_read_a_row_drops_its_queued_delete),
                T(test_a_number_on_ten_live_phones_is_never_released),
                T(test_a_number_whose_phones_are_all_released_is_released),
                T(test_a_number_due_after_the_check_is_not_called_absent_by_a_listing_by_page),
                T(test_each_sqlite_call_of_a_pass_failing_in_turn_leaves_a_true_ledger),
                T(test_a_large_count_lets_the_loop_turn),
                T(test_a_stop_during_the_count_begins_no_pass),
#undef T
        };

        /* The errors these tests provoke are the point: keep the output to the verdicts. */
        log_set_max_level(LOG_ALERT);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
