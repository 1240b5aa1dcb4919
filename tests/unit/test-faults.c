/* SPDX-License-Identifier: MIT */
/* Fault injection, as SQLite and curl test themselves: this binary is
 * linked with -Wl,--wrap for the SQLite calls below (see the Makefile), so
 * every call the code under test makes goes through fault_now(), which
 * fails the Nth one with a chosen code.  Each loop fails the 1st, 2nd, ...
 * call of one operation in turn until the operation runs through, and after
 * every failure checks that the error was reported and that retrying with
 * no fault succeeds. */

#include "unit.h"

#include <sqlite3.h>

#include "daemon.h"
#include "macro.h"

/* ---- the faults ---------------------------------------------------------- */

static struct {
        bool armed;
        unsigned fail_at;          /* the call to fail, from 1 */
        unsigned calls;            /* made since armed */
        int code;
        bool hit;
} fault;

/* The codes each loop fails with, and what the caller must be told. */
static const struct { int code; int error; } codes[] = {
        { SQLITE_NOMEM, -ENOMEM },
        { SQLITE_IOERR_WRITE, -EIO },
        { SQLITE_FULL, -ENOSPC },
        { SQLITE_INTERRUPT, -EINTR },
        { SQLITE_BUSY, -EBUSY },
};

static void fault_arm(unsigned n, int code) {
        fault = (__typeof__(fault)) { .armed = true, .fail_at = n, .code = code };
}

/* Whether the armed fault was hit; no call fails after this. */
static bool fault_disarm(void) {
        fault.armed = false;
        return fault.hit;
}

static bool fault_now(void) {
        if (!fault.armed || ++fault.calls != fault.fail_at)
                return false;
        fault.hit = true;
        return true;
}

int __real_sqlite3_step(sqlite3_stmt *st);
int __wrap_sqlite3_step(sqlite3_stmt *st);
int __wrap_sqlite3_step(sqlite3_stmt *st) {
        return fault_now() ? fault.code : __real_sqlite3_step(st);
}

typedef int (*ExecCb)(void *, int, char **, char **);
int __real_sqlite3_exec(sqlite3 *db, const char *sql, ExecCb cb, void *userdata, char **error);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, ExecCb cb, void *userdata, char **error);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, ExecCb cb, void *userdata, char **error) {
        if (!fault_now())
                return __real_sqlite3_exec(db, sql, cb, userdata, error);
        if (error)
                *error = NULL;
        return fault.code;
}

int __real_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **ret, const char **tail);
int __wrap_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **ret, const char **tail);
int __wrap_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **ret, const char **tail) {
        if (!fault_now())
                return __real_sqlite3_prepare_v2(db, sql, n, ret, tail);
        *ret = NULL;
        return fault.code;
}

int __real_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **ret,
                              const char **tail);
int __wrap_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **ret,
                              const char **tail);
int __wrap_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **ret,
                              const char **tail) {
        if (!fault_now())
                return __real_sqlite3_prepare_v3(db, sql, n, flags, ret, tail);
        *ret = NULL;
        return fault.code;
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
                                assert_int_equal(r, codes[c].error);
                                assert_int_equal(got, 0);
                                /* Retried with no fault, the same Api reads it whole. */
                                assert_int_equal(parse_once(api, what, &got), 0);
                                assert_int_equal(got, want[what]);
                        }
                print_message("  %s: %u calls failed in turn, %zu codes each\n", names[what], points,
                              ELEMENTSOF(codes));
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
                        assert_int_equal(r, codes[c].error);
                        assert_null(api);
                }
        print_message("  api_new: %u calls failed in turn, %zu codes each\n", points, ELEMENTSOF(codes));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse),
                cmocka_unit_test(test_api_new),
        };

        return cmocka_run_group_tests_name("test-faults", tests, NULL, NULL);
}
