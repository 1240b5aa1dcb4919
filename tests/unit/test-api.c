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

/* ---- bodies refused, field by field ------------------------------------- */

/* A JSON string of n copies of c, quoted, in buf. */
static const char *quoted_run(char *buf, size_t size, char c, size_t n) {
        assert_true(n + 3 <= size);
        buf[0] = '"';
        memset(buf + 1, c, n);
        buf[n + 1] = '"';
        buf[n + 2] = 0;
        return buf;
}

/* A phone object with the given JSON values; NULL leaves the field out. */
static char *phone_json(const char *id, const char *number, const char *status, const char *provider,
                        const char *when) {
        char *s = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&s, &len);
        const char *sep = "";

        assert_non_null(f);
        fputc('{', f);
        if (id)
                fprintf(f, "%s\"id\":%s", sep, id), sep = ",";
        if (number)
                fprintf(f, "%s\"number\":%s", sep, number), sep = ",";
        if (status)
                fprintf(f, "%s\"status\":%s", sep, status), sep = ",";
        if (provider)
                fprintf(f, "%s\"telephony_provider\":%s", sep, provider), sep = ",";
        if (when)
                fprintf(f, "%s\"scheduled_release_at\":%s", sep, when);
        fputc('}', f);
        assert_int_equal(fclose(f), 0);
        return s;
}

#define QID1 "\"" ID1 "\""
#define QNUM "\"+34910000001\""
#define QSTATUS "\"assigned\""

/* Each field the daemon acts on is checked for its type, its length and
 * control characters (what the API says reaches the journal and the ledger):
 * a phone that fails one is refused with the field named, and nothing of it
 * is handed out.  In a page, the same phone is skipped with the same reason,
 * and the phones around it are kept. */
static void test_each_bad_phone_is_refused_with_its_reason(void **state) {
        char s65[80], n257[300], id35[40];
        const struct {
                const char *id, *number, *status, *provider, *when, *why;
        } cases[] = {
                { NULL, QNUM, QSTATUS, NULL, NULL, "a phone has no valid \"id\"" },
                { "null", QNUM, QSTATUS, NULL, NULL, "a phone has no valid \"id\"" },
                { "42", QNUM, QSTATUS, NULL, NULL, "a phone has no valid \"id\"" },
                { "\"not-a-uuid\"", QNUM, QSTATUS, NULL, NULL, "a phone has no valid \"id\"" },
                { "\"00000000-05e7-4bed-8000-00000000000g\"", QNUM, QSTATUS, NULL, NULL, "a phone has no valid \"id\"" },
                { quoted_run(id35, sizeof id35, 'a', 35), QNUM, QSTATUS, NULL, NULL, "a phone has no valid \"id\"" },
                { QID1, NULL, QSTATUS, NULL, NULL, "phone " ID1 " has no valid \"number\"" },
                { QID1, "null", QSTATUS, NULL, NULL, "phone " ID1 " has no valid \"number\"" },
                { QID1, "34910000001", QSTATUS, NULL, NULL, "phone " ID1 " has no valid \"number\"" },
                { QID1, "\"\"", QSTATUS, NULL, NULL, "phone " ID1 " has no valid \"number\"" },
                { QID1, quoted_run(n257, sizeof n257, '1', 257), QSTATUS, NULL, NULL,
                  "phone " ID1 " has no valid \"number\"" },
                { QID1, "\"+34910000001\\n+34910000002\"", QSTATUS, NULL, NULL, "phone " ID1 " has no valid \"number\"" },
                { QID1, "\"+34910000001\\u007f\"", QSTATUS, NULL, NULL, "phone " ID1 " has no valid \"number\"" },
                { QID1, QNUM, NULL, NULL, NULL, "phone " ID1 " has no valid \"status\"" },
                { QID1, QNUM, "1", NULL, NULL, "phone " ID1 " has no valid \"status\"" },
                { QID1, QNUM, "[\"assigned\"]", NULL, NULL, "phone " ID1 " has no valid \"status\"" },
                { QID1, QNUM, quoted_run(s65, sizeof s65, 's', 65), NULL, NULL, "phone " ID1 " has no valid \"status\"" },
                { QID1, QNUM, "\"assigned\\t\"", NULL, NULL, "phone " ID1 " has no valid \"status\"" },
                { QID1, QNUM, QSTATUS, "7", NULL, "phone " ID1 " has an invalid \"telephony_provider\"" },
                { QID1, QNUM, QSTATUS, "{}", NULL, "phone " ID1 " has an invalid \"telephony_provider\"" },
                { QID1, QNUM, QSTATUS, s65, NULL, "phone " ID1 " has an invalid \"telephony_provider\"" },
                { QID1, QNUM, QSTATUS, "\"netelip\\u0001\"", NULL, "phone " ID1 " has an invalid \"telephony_provider\"" },
                { QID1, QNUM, QSTATUS, NULL, "7", "phone " ID1 " has an invalid \"scheduled_release_at\"" },
                { QID1, QNUM, QSTATUS, NULL, "true", "phone " ID1 " has an invalid \"scheduled_release_at\"" },
                { QID1, QNUM, QSTATUS, NULL, s65, "phone " ID1 " has an invalid \"scheduled_release_at\"" },
                { QID1, QNUM, QSTATUS, NULL, "\"2026-12-31T23:00:00Z\\r\"",
                  "phone " ID1 " has an invalid \"scheduled_release_at\"" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *body = phone_json(cases[i].id, cases[i].number, cases[i].status, cases[i].provider,
                                        cases[i].when);
                char *page, *why = NULL, *want;
                RemotePhone r = { .id = "untouched" };
                PhonePage p = {};
                int rc;

                rc = api_parse_phone(api, body, strlen(body), &r, &why);
                if (rc != -EBADMSG || !why || !streq(why, cases[i].why))
                        print_message("  %s: %d, %s\n", body, rc, strna(why));
                assert_int_equal(rc, -EBADMSG);
                assert_string_equal(why, cases[i].why);
                assert_string_equal(r.id, "untouched");
                assert_null(r.number);
                assert_null(r.status_name);
                free(why);
                why = NULL;

                assert_true(asprintf(&page, "{\"data\":[%s,%s,%s],\"has_more\":false}",
                                     PHONE("00000000-05e7-4bed-8000-0000000000a1", "\"+34910000101\""), body,
                                     PHONE("00000000-05e7-4bed-8000-0000000000a3", "\"+34910000103\"")) >= 0);
                assert_int_equal(parse_page(page, &p, &why), 0);
                assert_null(why);
                assert_int_equal(p.n, 2);
                assert_string_equal(p.phones[0].id, "00000000-05e7-4bed-8000-0000000000a1");
                assert_string_equal(p.phones[1].id, "00000000-05e7-4bed-8000-0000000000a3");
                assert_int_equal(p.n_skipped, 1);
                assert_true(asprintf(&want, "phone #2 of the page: %s", cases[i].why) >= 0);
                assert_string_equal(p.skipped[0], want);
                free(want);
                phone_page_done(&p);
                free(page);
                free(body);
        }
}

/* What is not a phone object at all, and what is not JSON. */
static void test_a_body_that_is_not_a_phone_is_refused(void **state) {
        static const struct { const char *body, *why; } cases[] = {
                { "[]", "a phone is not a JSON object" },
                { "42", "a phone is not a JSON object" },
                { "null", "a phone is not a JSON object" },
                { "\"{}\"", "a phone is not a JSON object" },
                { "{\"id\":", "the body is not valid JSON" },
                { "", "the body is not valid JSON" },
                { "<html>502 Bad Gateway</html>", "the body is not valid JSON" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                RemotePhone r = { .id = "untouched" };
                char *why = NULL;

                assert_int_equal(api_parse_phone(api, cases[i].body, strlen(cases[i].body), &r, &why), -EBADMSG);
                assert_string_equal(why, cases[i].why);
                assert_string_equal(r.id, "untouched");
                free(why);
        }
        /* An answer with no body at all. */
        {
                RemotePhone r = { .id = "untouched" };
                char *why = NULL;

                assert_int_equal(api_parse_phone(api, NULL, 0, &r, &why), -EBADMSG);
                assert_string_equal(why, "the body is not valid JSON");
                assert_string_equal(r.id, "untouched");
                free(why);
        }
}

/* The edges that are still a phone: the longest fields allowed, the optional
 * fields absent or null, and a number that does not normalise (kept as the
 * API wrote it, so that it matches no declaration rather than a wrong one). */
static void test_a_phone_at_the_limits_is_taken(void **state) {
        char s64[80], sip[300], *body, *why = NULL;
        RemotePhone r = {};

        /* A SIP identifier of exactly 256 characters. */
        quoted_run(sip, sizeof sip, 'a', 256);
        sip[200] = '@';
        body = phone_json(QID1, sip, quoted_run(s64, sizeof s64, 's', 64), "null",
                          "\"2026-12-31T23:00:00Z\"");
        assert_int_equal(api_parse_phone(api, body, strlen(body), &r, &why), 0);
        assert_null(why);
        assert_int_equal(strlen(r.number), 256);
        assert_int_equal(strlen(r.status_name), 64);
        assert_int_equal(r.status, REMOTE_UNKNOWN);
        assert_null(r.provider);
        assert_string_equal(r.scheduled_release_at, "2026-12-31T23:00:00Z");
        remote_phone_done(&r);
        free(body);

        body = phone_json(QID1, "\"+34 91O 000 001\"", QSTATUS, NULL, NULL);
        assert_int_equal(api_parse_phone(api, body, strlen(body), &r, &why), 0);
        assert_string_equal(r.number, "+34 91O 000 001");
        assert_string_equal(r.status_name, "assigned");
        assert_null(r.provider);
        assert_null(r.scheduled_release_at);
        remote_phone_done(&r);
        free(body);

        body = phone_json(QID1, QNUM, QSTATUS, s64, "null");
        assert_int_equal(api_parse_phone(api, body, strlen(body), &r, &why), 0);
        assert_int_equal(strlen(r.provider), 64);
        assert_null(r.scheduled_release_at);
        remote_phone_done(&r);
        free(body);
}

/* A body of n bytes: the JSON text padded with spaces; free it. */
static char *padded(const char *json, size_t n) {
        size_t len = strlen(json);
        char *b = malloc(n + 1);

        assert_non_null(b);
        assert_true(n >= len);
        memcpy(b, json, len);
        memset(b + len, ' ', n - len);
        b[n] = 0;
        return b;
}

/* A page whose frame is wrong is refused whole, saying what is wrong, and
 * hands out nothing: no phone of it counts as listed. */
static void test_each_bad_page_frame_is_refused_with_its_reason(void **state) {
        static const struct { const char *body, *why; } cases[] = {
                { "{\"data\":[", "the body is not valid JSON" },
                { "", "the body is not valid JSON" },
                { "[]", "the body has no \"data\" array" },
                { "{}", "the body has no \"data\" array" },
                { "{\"data\":{},\"has_more\":false}", "the body has no \"data\" array" },
                { "{\"data\":null,\"has_more\":false}", "the body has no \"data\" array" },
                { "{\"data\":\"[]\",\"has_more\":false}", "the body has no \"data\" array" },
                { "{\"data\":[" PHONE(ID1, "\"+34910000001\"") "]}", "the body has no boolean \"has_more\"" },
                { "{\"data\":[],\"has_more\":\"false\"}", "the body has no boolean \"has_more\"" },
                { "{\"data\":[],\"has_more\":0}", "the body has no boolean \"has_more\"" },
                { "{\"data\":[],\"has_more\":null}", "the body has no boolean \"has_more\"" },
                { "{\"data\":[],\"has_more\":false,\"current_page\":\"2\"}", "the body has an invalid \"current_page\"" },
                { "{\"data\":[],\"has_more\":false,\"current_page\":-1}", "the body has an invalid \"current_page\"" },
                { "{\"data\":[],\"has_more\":false,\"current_page\":1.5}", "the body has an invalid \"current_page\"" },
                { "{\"data\":[],\"has_more\":false,\"current_page\":true}", "the body has an invalid \"current_page\"" },
                { "{\"data\":[],\"has_more\":false,\"total_pages\":2.0}", "the body has an invalid \"total_pages\"" },
                { "{\"data\":[],\"has_more\":false,\"total_pages\":[7]}", "the body has an invalid \"total_pages\"" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                PhonePage p = { .total_pages = 1234 };
                char *why = NULL;

                assert_int_equal(parse_page(cases[i].body, &p, &why), -EBADMSG);
                if (!why || !streq(why, cases[i].why))
                        print_message("  %s: %s\n", cases[i].body, strna(why));
                assert_string_equal(why, cases[i].why);
                assert_null(p.phones);
                assert_int_equal(p.total_pages, 1234);
                free(why);
        }
}

/* The limits of a page: API_PAGE_LIMIT phones, API_MAX_BODY bytes. */
static void test_a_page_over_its_limits_is_refused_whole(void **state) {
        char *body, *why = NULL;
        PhonePage p = {};
        FILE *f;
        size_t len;

        for (unsigned n = API_PAGE_LIMIT; n <= API_PAGE_LIMIT + 1; n++) {
                body = NULL;
                f = open_memstream(&body, &len);
                assert_non_null(f);
                fputs("{\"data\":[", f);
                for (unsigned i = 0; i < n; i++)
                        fprintf(f, "%s{\"id\":\"00000000-05e7-4bed-8000-%012u\",\"number\":\"+3491%07u\","
                                "\"status\":\"assigned\"}", i ? "," : "", i, i);
                fputs("],\"has_more\":true}", f);
                assert_int_equal(fclose(f), 0);
                p = (PhonePage) {};
                if (n == API_PAGE_LIMIT) {
                        assert_int_equal(parse_page(body, &p, &why), 0);
                        assert_int_equal(p.n, API_PAGE_LIMIT);
                        assert_int_equal(p.n_skipped, 0);
                        assert_string_equal(p.phones[n - 1].id, "00000000-05e7-4bed-8000-000000000099");
                        /* No last_id: paging on from the last phone. */
                        assert_string_equal(p.last_id, p.phones[n - 1].id);
                        phone_page_done(&p);
                } else {
                        assert_int_equal(parse_page(body, &p, &why), -EBADMSG);
                        assert_string_equal(why, "more than 100 phones in one page");
                        assert_null(p.phones);
                        why = mfree(why);
                }
                free(body);
        }

        /* Refused unread: one byte over is as bad as a gigabyte.  (A body of
         * exactly the limit is read, but takes a good part of a second.) */
        body = padded("{\"data\":[],\"has_more\":false}", API_MAX_BODY + 1);
        p = (PhonePage) { .total_pages = 1234 };
        assert_int_equal(api_parse_page(api, body, API_MAX_BODY + 1, &p, &why), -EBADMSG);
        assert_string_equal(why, "the body is not valid JSON");
        assert_int_equal(p.total_pages, 1234);
        why = mfree(why);
        free(body);
        body = padded("{\"error_code\":\"X\",\"message\":\"m\"}", API_MAX_BODY + 1);
        assert_false(api_error_body(api, body, API_MAX_BODY + 1, &why));
        assert_null(why);
        free(body);
}

/* The cursor: has_more with no phone and no last_id leaves nothing to
 * follow; a last_id of the wrong type is not followed either. */
static void test_the_cursor_of_a_page(void **state) {
        PhonePage p = {};
        char *why = NULL;

        assert_int_equal(parse_page("{\"data\":[],\"has_more\":true}", &p, &why), 0);
        assert_true(p.has_more);
        assert_string_equal(p.last_id, "");
        phone_page_done(&p);
        assert_int_equal(parse_page("{\"data\":[],\"has_more\":true,\"last_id\":\"" ID2 "\"}", &p, &why), 0);
        assert_string_equal(p.last_id, ID2);
        phone_page_done(&p);
        assert_int_equal(parse_page("{\"data\":[" PHONE(ID1, "\"+34910000001\"") "],\"has_more\":true,"
                                    "\"last_id\":42}", &p, &why), 0);
        assert_string_equal(p.last_id, ID1);
        phone_page_done(&p);
        /* The last page: no cursor, whatever the API puts there. */
        assert_int_equal(parse_page("{\"data\":[" PHONE(ID1, "\"+34910000001\"") "],\"has_more\":false}",
                                    &p, &why), 0);
        assert_false(p.has_more);
        assert_string_equal(p.last_id, "");
        phone_page_done(&p);
        assert_null(why);
}

static int parse_one(const char *extra, RemotePhone *r, char **why) {
        char body[1024];

        snprintf(body, sizeof body, "{\"id\":\"" ID1 "\",\"number\":\"+34910000001\",\"status\":\"assigned\"%s}", extra);
        return api_parse_phone(api, body, strlen(body), r, why);
}

/* Issue 31: the agents of a phone are UUIDs or null, and anything else
 * makes the phone unreadable (never released on a guess); absent is none. */
static void test_the_agents_of_a_phone(void **state) {
        static const char *const bad[] = {
                ",\"inbound_agent_id\":42", ",\"outbound_agent_id\":\"agent-7\"", ",\"inbound_agent_id\":{}",
                ",\"outbound_agent_id\":\"\"", ",\"inbound_agent_id\":true", ",\"nickname\":7",
        };
        RemotePhone r = {};
        char *why = NULL;

        assert_int_equal(parse_one("", &r, &why), 0);
        assert_false(remote_in_use(&r));
        assert_null(r.nickname);
        remote_phone_done(&r);
        assert_int_equal(parse_one(",\"inbound_agent_id\":null,\"outbound_agent_id\":null,\"nickname\":null", &r, &why), 0);
        assert_false(remote_in_use(&r));
        remote_phone_done(&r);
        assert_int_equal(parse_one(",\"inbound_agent_id\":\"" "00000000-05E7-4BED-8000-0000000000AA" "\"", &r, &why), 0);
        assert_true(remote_in_use(&r));
        assert_string_equal(r.inbound_agent, "00000000-05e7-4bed-8000-0000000000aa");
        assert_null(r.outbound_agent);
        remote_phone_done(&r);
        assert_int_equal(parse_one(",\"outbound_agent_id\":\"" ID2 "\"", &r, &why), 0);
        assert_true(remote_in_use(&r));
        assert_string_equal(r.outbound_agent, ID2);
        remote_phone_done(&r);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(parse_one(bad[i], &r, &why), -EBADMSG);
                assert_non_null(why);
                free(why);
                why = NULL;
        }
}

/* The nickname is the API's text: on one line, no control character, at
 * most NICKNAME_MAX bytes, cut at a character with a visible mark. */
static void test_a_nickname_is_cleaned_and_cut(void **state) {
        static const struct { const char *in, *out; } cases[] = {
                { "Madrid shop", "Madrid shop" },
                { "line\nbreak\ttab\r\x1b[31m", "line?break?tab??[31m" },
                { "sep\xe2\x80\xa8par\xe2\x80\xa9" "c1\xc2\x85 ok \xc3\xa9", "sep?par?c1? ok \xc3\xa9" },
                { "bad\xff\xc3", "bad??" },
                { "0123456789012345678901234567890123456789012345678901234567890123",
                  "0123456789012345678901234567890123456789012345678901234567890123" },
                { "01234567890123456789012345678901234567890123456789012345678901234",
                  "0123456789012345678901234567890123456789012345678901234567890\xe2\x80\xa6" },
                /* A cut never splits a character. */
                { "012345678901234567890123456789012345678901234567890123456789\xc3\xa9\xc3\xa9\xc3\xa9",
                  "012345678901234567890123456789012345678901234567890123456789\xe2\x80\xa6" },
        };
        RemotePhone r = {};
        char *why = NULL, *s;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                assert_int_equal(api_nickname_clean(cases[i].in, &s), 0);
                assert_string_equal(s, cases[i].out);
                assert_true(strlen(s) <= NICKNAME_MAX);
                free(s);
        }
        assert_int_equal(parse_one(",\"nickname\":\"Support\\nES\"", &r, &why), 0);
        assert_string_equal(r.nickname, "Support?ES");
        remote_phone_done(&r);
        assert_int_equal(parse_one(",\"nickname\":\"\"", &r, &why), 0);
        assert_null(r.nickname);
        remote_phone_done(&r);
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
                /* The API's words must not forge a journal line: a control
                 * character drops them (the code alone would not tell). */
                { "{\"error_code\":\"X\",\"message\":\"gone\\nFAKE LINE\"}", true, NULL },
                { "{\"error_code\":\"X\\u001b[31m\",\"message\":\"gone\"}", true, "gone" },
                { "{\"detail\":\"a\\rb\"}", true, NULL },
                /* Half of the API's shape is not the API's word. */
                { "{\"message\":\"only a message\"}", false, "only a message" },
                { "{\"error_code\":1,\"message\":\"m\"}", false, "m" },
                { "{\"detail\":42}", false, NULL },
                { "{\"detail\":[]}", true, NULL },
                { "{\"detail\":[{\"msg\":7}]}", true, NULL },
                { "not json", false, NULL },
        };
        char *long_body, *m = NULL;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                bool is = api_error_body(api, cases[i].body, strlen(cases[i].body), &m);

                if (is != cases[i].api || !streq_ptr(m, cases[i].msg))
                        print_message("  %s: %d, %s\n", cases[i].body, is, strna(m));
                assert_int_equal(is, cases[i].api);
                if (cases[i].msg)
                        assert_string_equal(m, cases[i].msg);
                else
                        assert_null(m);
                m = mfree(m);
                /* Without a place for the words, the verdict is the same. */
                assert_int_equal(api_error_body(api, cases[i].body, strlen(cases[i].body), NULL), cases[i].api);
        }
        assert_false(api_error_body(api, NULL, 0, &m));
        assert_null(m);

        /* Kept short: 64 characters of code, 400 of message. */
        assert_true(asprintf(&long_body, "{\"error_code\":\"%0100d\",\"message\":\"%0500d\"}", 1, 2) >= 0);
        assert_true(api_error_body(api, long_body, strlen(long_body), &m));
        assert_int_equal(strlen(m), 64 + 2 + 400);
        assert_int_equal(strspn(m, "0"), 64);
        free(long_body);
        free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_a_page_keeps_the_phones_it_can_read),
                cmocka_unit_test(test_a_string_in_the_page_is_skipped),
                cmocka_unit_test(test_an_id_in_capitals_is_the_same_phone),
                cmocka_unit_test(test_paging_fields),
                cmocka_unit_test(test_each_bad_phone_is_refused_with_its_reason),
                cmocka_unit_test(test_a_body_that_is_not_a_phone_is_refused),
                cmocka_unit_test(test_a_phone_at_the_limits_is_taken),
                cmocka_unit_test(test_each_bad_page_frame_is_refused_with_its_reason),
                cmocka_unit_test(test_a_page_over_its_limits_is_refused_whole),
                cmocka_unit_test(test_the_cursor_of_a_page),
                cmocka_unit_test(test_the_agents_of_a_phone),
                cmocka_unit_test(test_a_nickname_is_cleaned_and_cut),
                cmocka_unit_test(test_api_error_bodies),
        };

        return cmocka_run_group_tests_name("test-api", tests, setup, teardown);
}
