/* SPDX-License-Identifier: MIT */
/* The small grammars inside the config: numbers, UUIDs, RFC 3339 times, and
 * the FILE:LINE diagnostics. */

#include "unit.h"

#include "conf.h"
#include "macro.h"

/* ---- number_normalize --------------------------------------------------- */

static void test_number_normalize_accepts(void **state) {
        static const struct { const char *in, *out; } t[] = {
                { "+34 910 123 456",       "+34910123456" },
                { "+34.910.123.456",       "+34910123456" },
                { "+34-910-123-456",       "+34910123456" },
                { "(+34) 910-123-456",     "+34910123456" },
                { "+34 (910) 12.34.56",    "+34910123456" },
                { "  910 123 456  ",       "910123456" },
                { "0034 910 123 456",      "0034910123456" },  /* not rewritten to + */
                { "112",                   "112" },
                { "+12345678901234567890", "+12345678901234567890" },  /* 20 digits */
                /* SIP identifiers are names: kept byte for byte. */
                { "alice@pbx.example.com",              "alice@pbx.example.com" },
                { "sip:+34910123456@Trunk.Example.COM", "sip:+34910123456@Trunk.Example.COM" },
                { "1000@10.0.0.1:5060",                 "1000@10.0.0.1:5060" },
        };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                char *out = NULL;
                int r = number_normalize(t[i].in, &out);
                if (r < 0)
                        print_message("  \"%s\": %d\n", t[i].in, r);
                assert_int_equal(r, 0);
                assert_string_equal(out, t[i].out);
                free(out);
        }
}

static void test_number_normalize_rejects(void **state) {
        static const struct { const char *in; int r; } t[] = {
                { "",                        -EINVAL },
                { "+34 91O 123 456",         -EINVAL },  /* a letter O */
                { "34+910123456",            -EINVAL },  /* + in the middle */
                { "++34910123456",           -EINVAL },
                { "+34\t910123456",          -EINVAL },  /* a tab is not a separator */
                { "+34/910/123/456",         -EINVAL },
                { "+34 910 123 456 ext 7",   -EINVAL },
                { "12",                      -ERANGE },  /* too few digits */
                { "+",                       -ERANGE },
                { "( - . )",                 -ERANGE },
                { "+123456789012345678901",  -ERANGE },  /* 21 digits */
                { "alice @pbx.example.com",  -EINVAL },  /* space in a SIP identifier */
                { "alice@pbx.example.com ",  -EINVAL },
                { "@pbx.example.com",        -EINVAL },
                { "alice@",                  -EINVAL },
                { "a@b@c",                   -EINVAL },
        };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                char *out = NULL;
                int r = number_normalize(t[i].in, &out);
                if (r != t[i].r)
                        print_message("  \"%s\": got %d, want %d\n", t[i].in, r, t[i].r);
                assert_int_equal(r, t[i].r);
                assert_null(out);   /* nothing handed out on error */
        }
}

static void test_number_normalize_length_limits(void **state) {
        char num[CONF_MAX_NUMBER + 2], sip[CONF_MAX_SIP + 2], *out = NULL;

        /* CONF_MAX_NUMBER characters, most of them spaces: fine. */
        memset(num, ' ', sizeof num);
        memcpy(num, "+34910123456", 12);
        num[CONF_MAX_NUMBER] = 0;
        assert_int_equal(number_normalize(num, &out), 0);
        assert_string_equal(out, "+34910123456");
        free(out);
        out = NULL;
        /* One more is too long, whatever the digits. */
        num[CONF_MAX_NUMBER] = ' ';
        num[CONF_MAX_NUMBER + 1] = 0;
        assert_int_equal(number_normalize(num, &out), -E2BIG);
        assert_null(out);

        memset(sip, 'u', sizeof sip);
        memcpy(sip + CONF_MAX_SIP - 9, "@pbx.test", 9);
        sip[CONF_MAX_SIP] = 0;
        assert_int_equal(number_normalize(sip, &out), 0);
        assert_int_equal(strlen(out), CONF_MAX_SIP);
        free(out);
        out = NULL;
        memmove(sip + 1, sip, CONF_MAX_SIP + 1);
        assert_int_equal(strlen(sip), CONF_MAX_SIP + 1);
        assert_int_equal(number_normalize(sip, &out), -E2BIG);
        assert_null(out);
}

/* ---- uuid_is_valid ------------------------------------------------------ */

static void test_uuid_is_valid(void **state) {
        static const char *const good[] = {
                "3c90c3cc-0d44-4b50-8888-8dd25736052a",
                "00000000-0000-0000-0000-000000000000",
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
        };
        static const char *const bad[] = {
                "",
                "3C90C3CC-0D44-4B50-8888-8DD25736052A",    /* upper case */
                "3c90c3cc-0d44-4b50-8888-8dd25736052A",    /* one upper-case letter */
                "3c90c3cc-0d44-4b50-8888-8dd25736052",     /* short */
                "3c90c3cc-0d44-4b50-8888-8dd25736052aa",   /* long */
                "3c90c3cc-0d44-4b50-8888-8dd25736052g",    /* not hex */
                "3c90c3cc0d444b5088888dd25736052a",        /* no dashes */
                "3c90c3cc0-d44-4b50-8888-8dd25736052a",    /* dash misplaced */
                "3c90c3cc 0d44 4b50 8888 8dd25736052a",
                "{3c90c3cc-0d44-4b50-8888-8dd25736052a}",
                "3c90c3cc-0d44-4b50-8888-8dd25736052a\n",
                "urn:uuid:3c90c3cc-0d44-4b50-8888-8dd25736052a",
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++)
                assert_true(uuid_is_valid(good[i]));
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (uuid_is_valid(bad[i]))
                        print_message("  accepted: \"%s\"\n", bad[i]);
                assert_false(uuid_is_valid(bad[i]));
        }
        assert_false(uuid_is_valid(NULL));
}

/* Any case in, the lowercase form out; what is no UUID in lowercase is
 * none in capitals either. */
static void test_uuid_canonical(void **state) {
        static const struct { const char *in, *out; } good[] = {
                { "3C90C3CC-0D44-4B50-8888-8DD25736052A", "3c90c3cc-0d44-4b50-8888-8dd25736052a" },
                { "3c90c3cc-0d44-4b50-8888-8dd25736052A", "3c90c3cc-0d44-4b50-8888-8dd25736052a" },
                { "3c90c3cc-0d44-4b50-8888-8dd25736052a", "3c90c3cc-0d44-4b50-8888-8dd25736052a" },
                { "ABCDEF01-2345-4678-9ABC-DEF012345678", "abcdef01-2345-4678-9abc-def012345678" },
        };
        static const char *const bad[] = {
                "", "3C90C3CC-0D44-4B50-8888-8DD25736052G", "3C90C3CC-0D44-4B50-8888-8DD25736052",
                "3C90C3CC-0D44-4B50-8888-8DD25736052AA", "3C90C3CC0D444B5088888DD25736052A",
                "{3C90C3CC-0D44-4B50-8888-8DD25736052A}", "3C90C3CC_0D44_4B50_8888_8DD25736052A",
        };
        char out[UUID_STRING_LEN + 1];

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                memset(out, 'x', sizeof out);
                assert_true(uuid_canonical(good[i].in, out));
                assert_string_equal(out, good[i].out);
                assert_true(uuid_is_valid(out));
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (uuid_canonical(bad[i], out))
                        print_message("  accepted: \"%s\"\n", bad[i]);
                assert_false(uuid_canonical(bad[i], out));
        }
        assert_false(uuid_canonical(NULL, out));
}

/* ---- RFC 3339 ----------------------------------------------------------- */

static void test_rfc3339_parse_accepts(void **state) {
        static const struct { const char *in; int64_t t; } t[] = {
                { "2026-12-31T23:00:00Z",                1798758000 },
                { "2026-12-31T23:00:00+00:00",           1798758000 },
                { "2026-12-31T23:00:00.5Z",              1798758000 },  /* fractions are dropped */
                { "2026-12-31T23:00:00.123456789+00:00", 1798758000 },
                { "1970-01-01T00:00:00Z",                0 },
                { "1970-01-01T00:00:01Z",                1 },
                { "2000-01-01T00:00:00Z",                946684800 },
                { "2028-02-29T12:00:00Z",                1835438400 },   /* leap day */
                { "2038-01-19T03:14:08Z",                2147483648 },   /* past 32 bits */
                { "9999-12-31T23:59:59Z",                253402300799 },
        };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                int64_t v = -1;
                int r = rfc3339_parse(t[i].in, &v);
                if (r < 0 || v != t[i].t)
                        print_message("  \"%s\": r=%d t=%lld\n", t[i].in, r, (long long) v);
                assert_int_equal(r, 0);
                assert_int_equal(v, t[i].t);
        }
}

static void test_rfc3339_parse_rejects(void **state) {
        static const struct { const char *in; int r; } t[] = {
                { "",                           -EINVAL },
                { "next tuesday",               -EINVAL },
                { "2026-12-31",                 -EINVAL },
                { "2026-12-31T23:00:00",        -EINVAL },   /* no zone */
                { "2026-12-31T23:00:00+01:00",  -EINVAL },   /* not UTC */
                { "2026-12-31T23:00:00-00:00",  -EINVAL },
                { "2026-12-31T23:00:00+0000",   -EINVAL },
                { "2026-12-31 23:00:00Z",       -EINVAL },
                { "2026-12-31T23:00Z",          -EINVAL },
                { "2026-12-31T23:00:00.Z",      -EINVAL },
                { "2026-12-31T23:00:00ZZ",      -EINVAL },
                { "2026-12-31T23:00:00Z ",      -EINVAL },
                { "26-12-31T23:00:00Z",         -EINVAL },
                { "2026-1-31T23:00:00Z",        -EINVAL },
                { "2026-02-30T12:00:00Z",       -ERANGE },   /* no such day */
                { "2026-02-29T12:00:00Z",       -ERANGE },   /* not a leap year */
                { "2026-04-31T12:00:00Z",       -ERANGE },
                { "2026-13-01T00:00:00Z",       -ERANGE },
                { "2026-00-10T00:00:00Z",       -ERANGE },
                { "2026-12-00T00:00:00Z",       -ERANGE },
                { "2026-12-31T24:00:00Z",       -ERANGE },
                { "2026-12-31T23:60:00Z",       -ERANGE },
                { "2026-12-31T23:59:60Z",       -ERANGE },
                { "1969-12-31T23:59:59Z",       -ERANGE },
        };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                int64_t v = 42;
                int r = rfc3339_parse(t[i].in, &v);
                if (r != t[i].r)
                        print_message("  \"%s\": got %d, want %d\n", t[i].in, r, t[i].r);
                assert_int_equal(r, t[i].r);
                assert_int_equal(v, 42);   /* untouched on error */
        }
}

/* Regression: the fields were read with sscanf's %2d, which also takes a
 * sign or leading blanks, so strings that are not RFC 3339 at all were
 * accepted as release times. */
static void test_rfc3339_parse_rejects_signs_and_blanks_in_fields(void **state) {
        static const char *const t[] = {
                "2026-+1-01T00:00:00Z",
                "2026-01-+1T00:00:00Z",
                "2026-01-01T 1:00:00Z",
                "2026-01-01T00:00:+1Z",
                "2026- 1- 1T 1: 1: 1Z",
        };
        size_t accepted = 0;

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                int64_t v = 0;
                if (rfc3339_parse(t[i], &v) >= 0) {
                        print_message("  accepted \"%s\" as %lld\n", t[i], (long long) v);
                        accepted++;
                }
        }
        assert_int_equal(accepted, 0);
}

static void test_rfc3339_format(void **state) {
        static const struct { int64_t t; const char *out; } t[] = {
                { 0,            "1970-01-01T00:00:00Z" },
                { 1798758000,   "2026-12-31T23:00:00Z" },
                { 1835438400,   "2028-02-29T12:00:00Z" },
                { 2147483648,   "2038-01-19T03:14:08Z" },
                { 253402300799, "9999-12-31T23:59:59Z" },
        };
        char buf[21];

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                assert_int_equal(rfc3339_format(t[i].t, buf), 0);
                assert_string_equal(buf, t[i].out);
        }
        /* Year 10000 does not fit in the 21 bytes. */
        assert_int_equal(rfc3339_format(253402300800, buf), -ERANGE);
}

static void test_rfc3339_round_trip(void **state) {
        char buf[21];

        /* Format then parse gives back the same second, over the whole range
         * with an odd step so every field takes many values. */
        for (int64_t t = 0; t <= 253402300799; t += 25340230007 / 1000 + 7919) {
                int64_t back = -1;
                assert_int_equal(rfc3339_format(t, buf), 0);
                assert_int_equal(rfc3339_parse(buf, &back), 0);
                assert_int_equal(back, t);
        }
}

/* ---- diagnostics -------------------------------------------------------- */

static void test_diag_format(void **state) {
        ConfDiag d = {};

        conf_diag_add(&d, "tests/x.conf", 3, "unknown setting '%s.%s'", "api", "tmeout");
        conf_diag_add(&d, "tests/x.conf", 0, "cannot open: %s", "No such file or directory");
        assert_int_equal(d.n, 2);
        assert_string_equal(d.lines[0], "tests/x.conf:3: unknown setting 'api.tmeout'");
        assert_string_equal(d.lines[1], "tests/x.conf: cannot open: No such file or directory");
        assert_int_equal(d.dropped, 0);
        conf_diag_done(&d);
        assert_int_equal(d.n, 0);
        assert_null(d.lines);
}

static void test_diag_is_capped(void **state) {
        ConfDiag d = {};
        char want[64];

        for (unsigned i = 1; i <= CONF_MAX_DIAG + 7; i++)
                conf_diag_add(&d, "f.conf", i, "problem %u", i);
        assert_int_equal(d.n, CONF_MAX_DIAG);
        assert_int_equal(d.dropped, 7);
        /* The first ones are kept, in order. */
        assert_string_equal(d.lines[0], "f.conf:1: problem 1");
        snprintf(want, sizeof want, "f.conf:%u: problem %u", CONF_MAX_DIAG, CONF_MAX_DIAG);
        assert_string_equal(d.lines[CONF_MAX_DIAG - 1], want);
        conf_diag_done(&d);
        assert_int_equal(d.n, 0);
        assert_int_equal(d.dropped, 0);
}

static void test_diag_keeps_long_messages_whole(void **state) {
        char msg[5000];
        ConfDiag d = {};

        memset(msg, 'm', sizeof msg - 1);
        msg[sizeof msg - 1] = 0;
        conf_diag_add(&d, "f.conf", 1, "%s", msg);
        assert_int_equal(d.n, 1);
        assert_int_equal(strlen(d.lines[0]), strlen("f.conf:1: ") + sizeof msg - 1);
        conf_diag_done(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_number_normalize_accepts),
                cmocka_unit_test(test_number_normalize_rejects),
                cmocka_unit_test(test_number_normalize_length_limits),
                cmocka_unit_test(test_uuid_is_valid),
                cmocka_unit_test(test_uuid_canonical),
                cmocka_unit_test(test_rfc3339_parse_accepts),
                cmocka_unit_test(test_rfc3339_parse_rejects),
                cmocka_unit_test(test_rfc3339_parse_rejects_signs_and_blanks_in_fields),
                cmocka_unit_test(test_rfc3339_format),
                cmocka_unit_test(test_rfc3339_round_trip),
                cmocka_unit_test(test_diag_format),
                cmocka_unit_test(test_diag_is_capped),
                cmocka_unit_test(test_diag_keeps_long_messages_whole),
        };

        return cmocka_run_group_tests_name("test-syntax", tests, NULL, NULL);
}
