/* SPDX-License-Identifier: MIT */
/* What the API's bodies say (daemon/api.c): a page keeps every phone it can
 * read, ids in any case are one phone, the paging fields, and whether an
 * error body is the API's own. */

#include "unit.h"

#include "api.h"
#include "macro.h"

#define ID1 "00000000-05e7-4bed-8000-000000000001"
#define ID2 "00000000-05e7-4bed-8000-000000000002"
#define PHONE(id, number) "{\"id\":\"" id "\",\"number\":" number ",\"status\":\"assigned\"," \
                          "\"telephony_provider\":\"netelip\",\"scheduled_release_at\":null}"

static Api *api;

static int setup(void **state) {
        assert_int_equal(api_new(&api), 0);
        return 0;
}

static int teardown(void **state) {
        api = api_free(api);
        return 0;
}

static int parse_page(const char *body, PhonePage *p, char **why) {
        return api_parse_page(api, body, strlen(body), p, why);
}

/* Finding 6: one phone with "number": null made every page malformed. */
static void test_a_page_keeps_the_phones_it_can_read(void **state) {
        PhonePage p = {};
        char *why = NULL;

        assert_int_equal(parse_page("{\"data\":[" PHONE(ID1, "\"+34 910 000 001\"") "," PHONE(ID2, "null")
                                    ",42],\"has_more\":false}", &p, &why), 0);
        assert_null(why);
        assert_int_equal(p.n, 1);
        assert_string_equal(p.phones[0].id, ID1);
        assert_string_equal(p.phones[0].number, "+34910000001");
        assert_int_equal(p.n_skipped, 2);
        assert_non_null(strstr(p.skipped[0], ID2));
        assert_non_null(strstr(p.skipped[0], "no valid \"number\""));
        assert_non_null(strstr(p.skipped[1], "phone #3"));
        phone_page_done(&p);
}

/* json_each() hands a string out as its bare text, which the JSON
 * functions then parse: "abc" was an SQL error that cut the page short
 * (silently, before it failed the page), and "{}" read as an object. */
static void test_a_string_in_the_page_is_skipped(void **state) {
        PhonePage p = {};
        char *why = NULL;

        assert_int_equal(parse_page("{\"data\":[" PHONE(ID1, "\"+34910000001\"") ",\"abc\",\"{}\","
                                    PHONE(ID2, "\"+34910000002\"") "],\"has_more\":false}", &p, &why), 0);
        assert_null(why);
        assert_int_equal(p.n, 2);
        assert_string_equal(p.phones[1].id, ID2);
        assert_int_equal(p.n_skipped, 2);
        assert_non_null(strstr(p.skipped[0], "phone #2 of the page: a phone is not a JSON object"));
        assert_non_null(strstr(p.skipped[1], "phone #3 of the page: a phone is not a JSON object"));
        phone_page_done(&p);
}

static void test_an_id_in_capitals_is_the_same_phone(void **state) {
        PhonePage p = {};
        RemotePhone r = {};
        char *why = NULL;
        const char *one = PHONE("00000000-05E7-4BED-8000-000000000001", "\"+34910000001\"");

        assert_int_equal(parse_page("{\"data\":[" PHONE("00000000-05E7-4BED-8000-000000000001", "\"+34910000001\"")
                                    "],\"has_more\":true,\"last_id\":\"00000000-05E7-4BED-8000-000000000001\"}",
                                    &p, &why), 0);
        assert_int_equal(p.n, 1);
        assert_string_equal(p.phones[0].id, ID1);
        assert_string_equal(p.last_id, ID1);
        phone_page_done(&p);
        assert_int_equal(api_parse_phone(api, one, strlen(one), &r, &why), 0);
        assert_string_equal(r.id, ID1);
        remote_phone_done(&r);
}

static void test_paging_fields(void **state) {
        PhonePage p = {};
        char *why = NULL;

        assert_int_equal(parse_page("{\"data\":[],\"has_more\":false,\"current_page\":2,\"total_pages\":7}", &p, &why), 0);
        assert_int_equal(p.current_page, 2);
        assert_int_equal(p.total_pages, 7);
        phone_page_done(&p);
        assert_int_equal(parse_page("{\"data\":[],\"has_more\":false,\"current_page\":null}", &p, &why), 0);
        assert_int_equal(p.current_page, -1);
        assert_int_equal(p.total_pages, -1);
        phone_page_done(&p);
        /* A cursor that is not a UUID is never followed: the last phone's id stands in. */
        assert_int_equal(parse_page("{\"data\":[" PHONE(ID2, "\"+34910000002\"") "],\"has_more\":true,"
                                    "\"last_id\":\"../../x\"}", &p, &why), 0);
        assert_string_equal(p.last_id, ID2);
        phone_page_done(&p);
        assert_int_equal(parse_page("{\"data\":[],\"has_more\":false,\"total_pages\":\"7\"}", &p, &why), -EBADMSG);
        assert_non_null(strstr(why, "total_pages"));
        free(why);
        why = NULL;
        assert_int_equal(parse_page("{\"data\":[],\"has_more\":false,\"total_pages\":-1}", &p, &why), -EBADMSG);
        free(why);
}

static void test_api_error_bodies(void **state) {
        static const struct { const char *body; bool api; const char *msg; } cases[] = {
                { "{\"status\":\"error\",\"error_code\":\"PHONE_NOT_FOUND\",\"message\":\"Phone x not found\"}", true,
                  "PHONE_NOT_FOUND: Phone x not found" },
                { "{\"detail\":[{\"loc\":[\"path\",\"id\"],\"msg\":\"bad uuid\",\"type\":\"uuid_parsing\"}]}", true, "bad uuid" },
                { "{\"detail\":\"Not Found\"}", true, "Not Found" },
                { "<html><h1>404 Not Found</h1></html>", false, NULL },
                { "{\"error_code\":\"X\"}", false, "X" },
                { "[]", false, NULL },
                { "", false, NULL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *m = NULL;
                bool is = api_error_body(api, cases[i].body, strlen(cases[i].body), &m);

                assert_int_equal(is, cases[i].api);
                if (cases[i].msg)
                        assert_string_equal(m, cases[i].msg);
                else
                        assert_null(m);
                free(m);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_a_page_keeps_the_phones_it_can_read),
                cmocka_unit_test(test_a_string_in_the_page_is_skipped),
                cmocka_unit_test(test_an_id_in_capitals_is_the_same_phone),
                cmocka_unit_test(test_paging_fields),
                cmocka_unit_test(test_api_error_bodies),
        };

        return cmocka_run_group_tests_name("test-api", tests, setup, teardown);
}
