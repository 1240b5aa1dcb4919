/* SPDX-License-Identifier: MIT */
/* The pacer (daemon/pacer.c): the bucket's arithmetic on given times. */

#include "unit.h"

#include "pacer.h"
#include "macro.h"

#define S(x) ((usec_t) ((x) * (double) USEC_PER_SEC))

static void test_burst_then_rate(void **state) {
        Pacer p;
        usec_t t = S(100);

        pacer_init(&p, 2.0, 3, 10, t);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(pacer_wait(&p, t), 0);
                pacer_take(&p, t);
        }
        /* The bucket is empty: the next token comes at the rate, 0.5 s later. */
        assert_int_equal(pacer_wait(&p, t), t + S(0.5));
        assert_int_equal(pacer_wait(&p, t + S(0.5)), 0);
}

static void test_concurrency_cap(void **state) {
        Pacer p;

        pacer_init(&p, 100.0, 10, 2, 0);
        pacer_take(&p, 0);
        pacer_take(&p, 0);
        assert_true(pacer_wait(&p, 0) == USEC_INFINITY);
        pacer_done(&p);
        assert_int_equal(pacer_wait(&p, 0), 0);
}

static void test_hold_and_backoff(void **state) {
        Pacer p;

        pacer_init(&p, 10.0, 1, 4, 0);
        pacer_hold(&p, S(30));
        assert_int_equal(pacer_wait(&p, S(1)), S(30));
        pacer_hold(&p, S(10));           /* an earlier hold does not shorten it */
        assert_int_equal(pacer_wait(&p, S(1)), S(30));
        pacer_take(&p, S(30));
        pacer_done(&p);
        /* After a 429 the rate halves: the next token comes in 0.2 s, not 0.1 s. */
        pacer_backoff(&p, S(30));
        assert_true(pacer_wait(&p, S(30)) >= S(30.19));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_burst_then_rate),
                cmocka_unit_test(test_concurrency_cap),
                cmocka_unit_test(test_hold_and_backoff),
        };

        return cmocka_run_group_tests_name("test-pacer", tests, NULL, NULL);
}
