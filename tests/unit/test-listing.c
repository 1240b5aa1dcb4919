/* SPDX-License-Identifier: MIT */
/* The listing (daemon/listing.c) against a scripted Diga client
 * (stub-diga.h): each test answers each list call as the API might, and
 * checks the contract of daemon.h's listing section.  A listing ends once,
 * with 0 when every phone of the account was given to `keep`, or < 0 and a
 * why when it failed or was stopped; a failed listing is no verdict, so
 * `keep` is then told to forget (called with NULL), and nothing it asked is
 * left waiting for an answer. */

#include "unit.h"

#include <inttypes.h>

#include "api.h"
#include "diga.h"
#include "listing.h"
#include "log.h"
#include "macro.h"
#include "stub-diga.h"

#define PAGE API_PAGE_LIMIT

typedef struct Fixture Fixture;

struct Fixture {
        sd_event *event;
        Diga *diga;
        Api *api;
        Listing *ls;

        /* What keep saw since listing_start(). */
        unsigned kept;               /* phones given, in all */
        unsigned forgets;            /* calls with NULL */
        bool forgot_last;            /* the last call was NULL */
        unsigned kept_late;          /* phones given after the listing ended */
        unsigned keep_fail_at;       /* the nth phone (from 1) is refused; 0: none */
        int keep_error, forget_error;

        /* What done saw. */
        unsigned dones;
        int r;
        char why[256];
        void (*then)(Fixture *f);    /* run from the done callback, once */
};

/* ---- the API's side: ids, phones and pages ---- */

/* Phone i's id: its first bytes differ from phone to phone, as a version-4
 * id's would (the listing's id set hashes them). */
static void phone_id(unsigned i, char ret[static UUID_STRING_LEN + 1]) {
        snprintf(ret, UUID_STRING_LEN + 1, "%08" PRIx32 "-0000-4000-8000-%012x", (uint32_t) (i * 2654435761u), i);
}

typedef struct Body {
        char *s;
        size_t len, cap;
} Body;

static void body_add(Body *b, const char *fmt, ...) _printf_(2, 3);
static void body_add(Body *b, const char *fmt, ...) {
        va_list ap;
        int n;

        for (;;) {
                va_start(ap, fmt);
                n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
                va_end(ap);
                assert_true(n >= 0);
                if (b->s && b->len + (size_t) n < b->cap)
                        break;
                b->cap = (b->cap + (size_t) n + 1) * 2;
                b->s = realloc(b->s, b->cap);
                assert_non_null(b->s);
        }
        b->len += (size_t) n;
}

static void body_phones(Body *b, unsigned first, unsigned n) {
        char id[UUID_STRING_LEN + 1];

        body_add(b, "{\"data\":[");
        for (unsigned i = first; i < first + n; i++) {
                phone_id(i, id);
                body_add(b, "%s{\"id\":\"%s\",\"number\":\"+3491%07u\",\"status\":\"assigned\","
                         "\"telephony_provider\":\"netelip\",\"scheduled_release_at\":null}",
                         i == first ? "" : ",", id, i);
        }
        body_add(b, "]");
}

/* Phones first..first+n-1 as page `current` of `total`. */
static char *page_body(unsigned first, unsigned n, unsigned current, unsigned total) {
        Body b = {};

        body_phones(&b, first, n);
        body_add(&b, ",\"has_more\":%s,\"current_page\":%u,\"total_pages\":%u}", current < total ? "true" : "false",
                 current, total);
        return b.s;
}

/* The same as a page of an API that pages by cursor only. */
static char *cursor_body(unsigned first, unsigned n, bool has_more) {
        Body b = {};

        body_phones(&b, first, n);
        body_add(&b, ",\"has_more\":%s}", has_more ? "true" : "false");
        return b.s;
}

/* ---- the listing's callbacks ---- */

static int keep(const RemotePhone *p, void *userdata) {
        Fixture *f = userdata;

        if (!p) {
                f->forgets++;
                f->forgot_last = true;
                return f->forget_error;
        }
        f->forgot_last = false;
        f->kept++;
        f->kept_late += f->dones > 0;
        if (f->keep_fail_at > 0 && f->kept == f->keep_fail_at)
                return f->keep_error;
        return 0;
}

static void done(Listing *ls, int r, const char *why, void *userdata) {
        Fixture *f = userdata;
        void (*then)(Fixture *) = f->then;

        assert_ptr_equal(ls, f->ls);
        assert_false(listing_running(ls));
        f->dones++;
        f->r = r;
        snprintf(f->why, sizeof f->why, "%s", strempty(why));
        f->then = NULL;
        if (then)
                then(f);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        /* Retries a millisecond apart: the tests wait for them on the loop. */
        World w = { .now = (int64_t) now(CLOCK_REALTIME), .max_attempts = 3, .base_delay = USEC_PER_MSEC,
                    .max_delay = USEC_PER_MSEC };

        assert_non_null(f);
        assert_int_equal(sd_event_new(&f->event), 0);
        assert_int_equal(diga_new(f->event, NULL, NULL, &f->diga), 0);
        assert_int_equal(api_new(&f->api), 0);
        assert_int_equal(listing_new(f->event, f->diga, f->api, &w, keep, done, f, &f->ls), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        listing_free(f->ls);
        api_free(f->api);
        diga_free(f->diga);
        sd_event_unref(f->event);
        free(f);
        return 0;
}

/* ---- the test's side ---- */

static void start(Fixture *f) {
        listing_start(f->ls);
        /* A start forgets what an earlier listing gave: count from here. */
        f->forgets = 0;
        f->forgot_last = false;
}

/* The next call the listing asked for, which must be a list call. */
static Call *next(Fixture *f) {
        Call *c = stub_diga_next(f->diga);

        assert_non_null(c);
        assert_int_equal(c->kind, CALL_LIST);
        return c;
}

static void answer_page(Fixture *f, Call *c, unsigned first, unsigned n, unsigned current, unsigned total) {
        _cleanup_free_ char *b = page_body(first, n, current, total);

        assert_true(stub_diga_answer_json(f->diga, c, 200, b));
}

static void answer_cursor(Fixture *f, Call *c, unsigned first, unsigned n, bool has_more) {
        _cleanup_free_ char *b = cursor_body(first, n, has_more);

        assert_true(stub_diga_answer_json(f->diga, c, 200, b));
}

/* A failed page is asked again from a timer: run the loop until it is. */
static Call *next_after_retry(Fixture *f) {
        usec_t deadline = now(CLOCK_MONOTONIC) + 5 * USEC_PER_SEC;

        while (stub_diga_pending(f->diga) == 0 && listing_running(f->ls) && now(CLOCK_MONOTONIC) < deadline)
                assert_true(sd_event_run(f->event, 100 * USEC_PER_MSEC) >= 0);
        return next(f);
}

/* Ended once, with r, and a failure left nothing behind: keep forgot what
 * it was given, and no call waits for an answer. */
static void assert_ended(Fixture *f, int r) {
        if (f->r != r)
                print_message("  the listing ended with %d (%s)\n", f->r, f->why);
        assert_int_equal(f->dones, 1);
        assert_int_equal(f->r, r);
        assert_false(listing_running(f->ls));
        assert_int_equal(stub_diga_pending(f->diga), 0);
        assert_int_equal(f->kept_late, 0);
        if (r < 0) {
                assert_true(f->why[0] != 0);
                assert_true(f->forgot_last);
        }
}

static void assert_id(const Call *c, unsigned i) {
        char id[UUID_STRING_LEN + 1];

        phone_id(i, id);
        assert_string_equal(c->id, id);
}

/* ---- by page ---- */

static void test_pages_after_the_first_are_asked_together_and_the_last_again_at_the_end(void **state) {
        Fixture *f = *state;
        Call *c, *p2, *p3;

        start(f);
        c = next(f);
        assert_int_equal(c->page, 1);
        assert_string_equal(c->id, "");
        answer_page(f, c, 0, PAGE, 1, 3);

        /* Pages 2 and 3 at once, in order; the pacer spaces them, not the listing. */
        assert_int_equal(stub_diga_pending(f->diga), 2);
        p2 = stub_diga_pending_call(f->diga, 0);
        p3 = stub_diga_pending_call(f->diga, 1);
        assert_int_equal(p2->page, 2);
        assert_int_equal(p3->page, 3);
        answer_page(f, p3, 2 * PAGE, 50, 3, 3);
        answer_page(f, p2, PAGE, PAGE, 2, 3);

        /* The last page once more, before anything else waiting. */
        c = next(f);
        assert_int_equal(c->page, 3);
        assert_true(c->urgent);
        assert_int_equal(f->dones, 0);
        answer_page(f, c, 2 * PAGE, 50, 3, 3);

        assert_ended(f, 0);
        assert_int_equal(f->kept, 250);
        assert_int_equal(f->forgets, 0);
        assert_int_equal(listing_stats(f->ls)->listed, 250);
        assert_int_equal(listing_stats(f->ls)->calls, 4);
        assert_true(listing_stats(f->ls)->pages);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
}

/* A phone listed twice by page means the account moved: listed again by
 * cursor, which new phones do not shift; a change by cursor that must start
 * it again a second time (the same 400 to the same cursor after a step back)
 * fails it, and what it kept is forgotten. */
static void test_a_listing_by_page_goes_on_by_cursor_and_fails_the_second_time(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        c = next(f);
        assert_int_equal(c->page, 1);
        answer_page(f, c, 0, PAGE, 1, 2);
        c = next(f);
        assert_int_equal(c->page, 2);
        /* A phone added before page 1 shifted its last phone onto page 2. */
        answer_page(f, c, PAGE - 1, 10, 2, 2);
        assert_int_equal(f->dones, 0);
        assert_int_equal(listing_stats(f->ls)->restarts, 1);
        assert_true(f->forgot_last);

        c = next(f);
        assert_int_equal(c->page, 0);                       /* by cursor now */
        assert_string_equal(c->id, "");
        answer_cursor(f, c, 0, PAGE, true);
        for (unsigned round = 0; round < 2; round++) {
                c = next(f);
                assert_id(c, PAGE - 1);
                assert_true(stub_diga_answer_json(f->diga, c, 400,
                                                  "{\"error_code\":\"invalid_cursor\",\"message\":\"unknown phone\"}"));
                if (round == 0) {
                        /* A step back, to the start: the same phones, counted once. */
                        c = next(f);
                        assert_string_equal(c->id, "");
                        answer_cursor(f, c, 0, PAGE, true);
                        assert_int_equal(listing_stats(f->ls)->listed, PAGE);
                }
        }
        assert_ended(f, -EAGAIN);
        assert_non_null(strstr(f->why, "kept changing"));
        assert_int_equal(listing_stats(f->ls)->restarts, 1);
        assert_false(listing_stats(f->ls)->pages);
}

/* Listed again, once, by cursor: the account moved under the listing by page. */
static void assert_listed_again(Fixture *f) {
        Call *c;

        assert_int_equal(f->dones, 0);
        assert_int_equal(listing_stats(f->ls)->restarts, 1);
        assert_true(f->forgot_last);
        assert_int_equal(stub_diga_pending(f->diga), 1);
        c = next(f);
        assert_int_equal(c->page, 0);
        assert_string_equal(c->id, "");
        answer_cursor(f, c, 0, 5, false);
        assert_ended(f, 0);
        assert_int_equal(listing_stats(f->ls)->listed, 5);
        assert_false(listing_stats(f->ls)->pages);          /* a cursor listing: believed as one */
}

/* Pages 1 and 2 of 3 read, page 3 asked and not answered yet. */
static Call *two_pages_of_three(Fixture *f) {
        Call *p3;

        start(f);
        answer_page(f, next(f), 0, PAGE, 1, 3);
        p3 = stub_diga_pending_call(f->diga, 1);
        answer_page(f, next(f), PAGE, PAGE, 2, 3);
        return p3;
}

static void test_a_page_with_another_page_count_lists_the_account_again(void **state) {
        Fixture *f = *state;

        answer_page(f, two_pages_of_three(f), 2 * PAGE, 50, 3, 4);
        assert_listed_again(f);
}

static void test_a_page_before_the_last_that_is_not_full_lists_the_account_again(void **state) {
        Fixture *f = *state;

        start(f);
        answer_page(f, next(f), 0, PAGE, 1, 3);
        answer_page(f, next(f), PAGE, PAGE - 1, 2, 3);
        assert_listed_again(f);
}

static void test_a_last_page_with_another_page_count_at_the_end_lists_the_account_again(void **state) {
        Fixture *f = *state;

        answer_page(f, two_pages_of_three(f), 2 * PAGE, 50, 3, 3);
        answer_page(f, next(f), 2 * PAGE, 50, 3, 4);
        assert_listed_again(f);
}

static void test_a_last_page_not_the_same_at_the_end_lists_the_account_again(void **state) {
        Fixture *f = *state;

        answer_page(f, two_pages_of_three(f), 2 * PAGE, 50, 3, 3);
        /* A phone removed before it and another added after: same count, other ids. */
        answer_page(f, next(f), 2 * PAGE + 1, 50, 3, 3);
        assert_listed_again(f);
}

/* Page 1 must be page 1, and the account no larger than retired lists. */
static void test_a_first_page_that_is_not_believed_ends_the_listing(void **state) {
        static const struct { unsigned current, total; const char *why; } cases[] = {
                { 2, 3, "another page" },
                { 1, 10001, "more pages than retired lists" },
        };
        Fixture *f = *state;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                f->dones = 0;
                start(f);
                answer_page(f, next(f), 0, PAGE, cases[i].current, cases[i].total);
                assert_ended(f, -EBADMSG);
                assert_non_null(strstr(f->why, cases[i].why));
        }
}

/* A phone that cannot be read is counted, not kept, and a page before the
 * last that has one is still full. */
static void test_unreadable_phones_are_counted_and_a_page_with_one_is_still_full(void **state) {
        Fixture *f = *state;
        Body b = {};
        Call *c;

        start(f);
        c = next(f);
        body_phones(&b, 0, PAGE - 1);
        b.len--;        /* the closing bracket */
        body_add(&b, ",{\"id\":\"00000000-0000-4000-8000-ffffffffffff\",\"number\":null,\"status\":\"assigned\"}]"
                 ",\"has_more\":true,\"current_page\":1,\"total_pages\":2}");
        assert_true(stub_diga_answer_json(f->diga, c, 200, b.s));
        free(b.s);
        answer_page(f, next(f), PAGE, 10, 2, 2);
        answer_page(f, next(f), PAGE, 10, 2, 2);

        assert_ended(f, 0);
        assert_int_equal(f->kept, PAGE - 1 + 10);
        assert_int_equal(listing_stats(f->ls)->listed, PAGE - 1 + 10);
        assert_int_equal(listing_stats(f->ls)->unreadable, 1);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
}

/* The nil UUID is the id set's empty slot inside; from the API it is a
 * phone like any other, listed once. */
static void test_the_nil_uuid_is_a_phone_like_any_other(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        c = next(f);
        assert_true(stub_diga_answer_json(f->diga, c, 200,
                "{\"data\":[{\"id\":\"00000000-0000-0000-0000-000000000000\",\"number\":\"+34910000001\","
                "\"status\":\"assigned\"},{\"id\":\"00000000-0000-0000-0000-000000000002\","
                "\"number\":\"+34910000002\",\"status\":\"assigned\"}],\"has_more\":false,"
                "\"current_page\":1,\"total_pages\":1}"));
        assert_ended(f, 0);
        assert_int_equal(f->kept, 2);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
}

/* ---- by cursor ---- */

static void test_a_listing_by_cursor_follows_the_cursor_to_the_end(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        c = next(f);
        assert_int_equal(c->page, 0);
        assert_id(c, PAGE - 1);
        answer_cursor(f, c, PAGE, 30, false);

        assert_ended(f, 0);
        assert_int_equal(f->kept, PAGE + 30);
        assert_int_equal(listing_stats(f->ls)->calls, 2);
        assert_false(listing_stats(f->ls)->pages);
}

static void test_an_empty_account_by_cursor_is_complete_at_once(void **state) {
        Fixture *f = *state;

        start(f);
        assert_true(stub_diga_answer_json(f->diga, next(f), 200, "{\"data\":[],\"has_more\":false}"));
        assert_ended(f, 0);
        assert_int_equal(f->kept, 0);
        assert_int_equal(listing_stats(f->ls)->calls, 1);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
}

/* An API whose cursor never runs out: past LIST_MAX_PAGES pages for each
 * time the listing may start (10,000 of them, twice) it is not believed. */
static void test_more_pages_by_cursor_than_retired_lists_is_not_believed(void **state) {
        Fixture *f = *state;
        unsigned i;

        start(f);
        for (i = 0; i < 30000 && listing_running(f->ls); i++)
                answer_cursor(f, next(f), i, 1, true);
        assert_ended(f, -E2BIG);
        assert_non_null(strstr(f->why, "more pages than retired lists"));
        assert_int_equal(i, 20001);
        assert_int_equal(listing_stats(f->ls)->calls, 20001);
}

/* "has_more" on an empty page gives no cursor to follow: the listing stops
 * there, rather than start over from the first page without a word. */
static void test_an_empty_page_that_says_there_is_more_stops_the_listing(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        c = next(f);
        assert_id(c, PAGE - 1);
        assert_true(stub_diga_answer_json(f->diga, c, 200, "{\"data\":[],\"has_more\":true,\"last_id\":null}"));
        assert_ended(f, -EBADMSG);
        assert_non_null(strstr(f->why, "has_more"));
        assert_int_equal(listing_stats(f->ls)->calls, 2);
}

/* An empty end right after has_more may be a cursor whose phone went away:
 * listed again to tell, once; the second time it is the end. */
static void test_an_empty_end_after_has_more_is_believed_the_second_time(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        for (unsigned round = 0; round < 2; round++) {
                c = next(f);
                assert_string_equal(c->id, "");             /* the start; then a step back to it */
                answer_cursor(f, c, 0, PAGE, true);
                c = next(f);
                assert_id(c, PAGE - 1);
                assert_true(stub_diga_answer_json(f->diga, c, 200, "{\"data\":[],\"has_more\":false}"));
                if (round == 0)
                        assert_int_equal(f->dones, 0);
        }
        assert_ended(f, 0);
        assert_int_equal(listing_stats(f->ls)->listed, PAGE);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
        assert_int_equal(f->forgets, 0);
}

/* has_more after the cursor the page was asked with: following it would
 * loop. */
static void test_a_cursor_that_does_not_move_ends_the_listing(void **state) {
        Fixture *f = *state;
        char id[UUID_STRING_LEN + 1];
        Body b = {};

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        phone_id(PAGE - 1, id);
        body_phones(&b, PAGE, 5);
        body_add(&b, ",\"has_more\":true,\"last_id\":\"%s\"}", id);
        assert_true(stub_diga_answer_json(f->diga, next(f), 200, b.s));
        free(b.s);
        assert_ended(f, -EBADMSG);
        assert_non_null(strstr(f->why, "cursor does not move"));
}

/* A 400 to a cursor, in the API's words, is the phone it names gone: the
 * listing steps back to the cursor before it (here, the start), counts the
 * phones it meets again once, and goes on without starting again. */
static void test_a_400_to_a_cursor_steps_back_and_goes_on(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        c = next(f);
        answer_cursor(f, c, 0, PAGE, true);
        c = next(f);
        assert_id(c, PAGE - 1);
        assert_true(stub_diga_answer_json(f->diga, c, 400,
                                          "{\"error_code\":\"invalid_cursor\",\"message\":\"unknown phone\"}"));
        c = next(f);
        assert_string_equal(c->id, "");
        answer_cursor(f, c, 0, PAGE - 1, true);             /* the cursor's phone is gone */
        c = next(f);
        assert_id(c, PAGE - 2);
        answer_cursor(f, c, PAGE, 5, false);
        assert_ended(f, 0);
        assert_int_equal(listing_stats(f->ls)->listed, PAGE + 5);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
        assert_int_equal(f->forgets, 0);
}

/* A 400 that is not the API's own body (a proxy's page) says nothing of
 * the cursor: the page is asked again, with the same cursor. */
static void test_a_400_to_a_cursor_not_in_the_apis_words_is_a_failed_page(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        assert_true(stub_diga_answer(f->diga, next(f),
                                     &(StubAnswer) { .status = 400, .body = "<html>Bad Request</html>" }));
        assert_int_equal(f->dones, 0);
        c = next_after_retry(f);
        assert_id(c, PAGE - 1);
        answer_cursor(f, c, PAGE, 1, false);
        assert_ended(f, 0);
        assert_int_equal(f->kept, PAGE + 1);
        assert_int_equal(listing_stats(f->ls)->restarts, 0);
}

/* ---- failed pages ---- */

static void test_a_failed_page_is_asked_again_and_the_listing_goes_on(void **state) {
        Fixture *f = *state;
        Call *c;

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        assert_true(stub_diga_answer_json(f->diga, next(f), 503, "{\"detail\":\"busy\"}"));
        /* Not at once: after a back-off, on the listing's own timer. */
        assert_int_equal(stub_diga_pending(f->diga), 0);
        assert_int_equal(f->dones, 0);
        c = next_after_retry(f);
        assert_id(c, PAGE - 1);
        answer_cursor(f, c, PAGE, 5, false);
        assert_ended(f, 0);
        assert_int_equal(f->kept, PAGE + 5);
        assert_int_equal(listing_stats(f->ls)->calls, 3);
}

/* A 200 that is not the API's page (not JSON, or JSON without its frame)
 * is the API, or what stands before it, having a bad moment: asked again. */
static void test_a_200_that_is_not_a_page_is_asked_again(void **state) {
        Fixture *f = *state;

        start(f);
        assert_true(stub_diga_answer(f->diga, next(f), &(StubAnswer) { .status = 200, .body = "<html>ok</html>" }));
        assert_true(stub_diga_answer_json(f->diga, next_after_retry(f), 200, "{\"items\":[]}"));
        assert_int_equal(f->dones, 0);
        answer_page(f, next_after_retry(f), 0, 7, 1, 1);
        assert_ended(f, 0);
        assert_int_equal(f->kept, 7);
        assert_int_equal(listing_stats(f->ls)->calls, 3);
}

/* A 429's Retry-After holds every call (not only the listing's) that long,
 * and slows the pace down. */
static void test_a_429_with_retry_after_holds_every_call_and_slows_the_pace(void **state) {
        Fixture *f = *state;
        const StubDigaStats *st = stub_diga_stats(f->diga);
        usec_t before, after;

        start(f);
        before = now(CLOCK_MONOTONIC);
        assert_true(stub_diga_answer(f->diga, next(f), &(StubAnswer) {
                .status = 429, .body = "{\"detail\":\"slow down\"}", .json = true, .retry_after = 30 }));
        after = now(CLOCK_MONOTONIC);
        assert_int_equal(st->backoffs, 1);
        assert_int_equal(st->holds, 1);
        assert_true(st->held_until >= before + 30 * USEC_PER_SEC);
        assert_true(st->held_until <= after + 30 * USEC_PER_SEC);
        assert_int_equal(stub_diga_pending(f->diga), 0);
        assert_true(listing_running(f->ls));

        /* Stopped while it waits: the retry never comes. */
        listing_stop(f->ls, "stopping");
        assert_ended(f, -ECANCELED);
        assert_string_equal(f->why, "stopping");
}

/* Failed max_attempts times, a page ends the listing without a verdict:
 * what it kept is forgotten. */
static void test_a_page_that_keeps_failing_ends_the_listing_without_a_verdict(void **state) {
        Fixture *f = *state;

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        assert_true(stub_diga_answer_json(f->diga, next(f), 502, "{\"detail\":\"bad gateway\"}"));
        for (unsigned i = 1; i < 3; i++) {
                Call *c = next_after_retry(f);

                assert_id(c, PAGE - 1);
                assert_true(stub_diga_answer_json(f->diga, c, 502, "{\"detail\":\"bad gateway\"}"));
        }
        assert_ended(f, -EIO);
        assert_int_equal(listing_stats(f->ls)->calls, 4);
}

/* No answer at all, ever: -EHOSTUNREACH, so that the engine sends no GET
 * either. */
static void test_an_api_that_never_answers_ends_the_listing_as_unreachable(void **state) {
        Fixture *f = *state;
        const StubAnswer refused = { .error = "Connection refused", .unsent = true };

        start(f);
        assert_true(stub_diga_answer(f->diga, next(f), &refused));
        for (unsigned i = 1; i < 3; i++)
                assert_true(stub_diga_answer(f->diga, next_after_retry(f), &refused));
        assert_ended(f, -EHOSTUNREACH);
}

static void test_a_refused_key_ends_the_listing_at_once(void **state) {
        Fixture *f = *state;

        start(f);
        assert_true(stub_diga_answer_json(f->diga, next(f), 401, "{\"detail\":\"Not authenticated\"}"));
        assert_ended(f, -EACCES);
        assert_int_equal(stub_diga_stats(f->diga)->holds, 0);
}

/* ---- keep ---- */

/* keep refusing a phone fails the listing with keep's error, never ends it
 * complete; keep is told to forget, and the page still out is dropped. */
static void test_a_keep_that_fails_fails_the_listing(void **state) {
        Fixture *f = *state;

        f->keep_fail_at = PAGE + 50;
        f->keep_error = -EIO;
        start(f);
        answer_page(f, next(f), 0, PAGE, 1, 3);
        stub_diga_start_all(f->diga);
        answer_page(f, next(f), PAGE, PAGE, 2, 3);

        assert_ended(f, -EIO);
        assert_non_null(strstr(f->why, "cannot keep"));
        assert_int_equal(f->kept, PAGE + 50);
        assert_int_equal(f->forgets, 1);
        /* Page 3 was out: its answer reaches nobody. */
        assert_int_equal(stub_diga_silenced(f->diga), 1);
        stub_diga_answer_silenced(f->diga, &(StubAnswer) { .status = 200, .body = "{}", .json = true });
        assert_int_equal(f->dones, 1);
        assert_int_equal(f->kept, PAGE + 50);
}

/* keep failing to forget as well changes nothing of that: the listing is
 * still a failure, and says so. */
static void test_a_keep_that_cannot_forget_still_fails_the_listing(void **state) {
        Fixture *f = *state;

        f->keep_fail_at = 1;
        f->keep_error = -ENOMEM;
        f->forget_error = -EIO;
        start(f);
        answer_cursor(f, next(f), 0, 3, false);
        assert_ended(f, -ENOMEM);
        assert_int_equal(f->kept, 1);
        assert_int_equal(f->forgets, 1);
}

/* ---- starting and stopping ---- */

static void test_stopping_a_listing_ignores_the_answers_still_out(void **state) {
        Fixture *f = *state;

        start(f);
        answer_page(f, next(f), 0, PAGE, 1, 3);
        stub_diga_start_all(f->diga);
        listing_stop(f->ls, "operator");
        assert_ended(f, -ECANCELED);
        assert_string_equal(f->why, "operator");
        assert_int_equal(f->forgets, 1);
        assert_int_equal(stub_diga_silenced(f->diga), 2);
        for (unsigned i = 0; i < 2; i++)
                stub_diga_answer_silenced(f->diga, &(StubAnswer) { .status = 503 });
        assert_int_equal(f->dones, 1);
        assert_int_equal(f->kept, PAGE);
        /* Stopped twice, it ends once. */
        listing_stop(f->ls, "again");
        assert_int_equal(f->dones, 1);
}

/* A list call the client dropped before it left (a stop, a reload): the
 * listing ends as stopped. */
static void test_a_list_call_dropped_before_it_left_ends_the_listing_as_stopped(void **state) {
        Fixture *f = *state;

        start(f);
        answer_cursor(f, next(f), 0, PAGE, true);
        diga_drop_queued(f->diga);
        assert_ended(f, -ECANCELED);
        assert_int_equal(stub_diga_stats(f->diga)->not_sent, 1);
}

/* The client refusing a call (out of memory) ends the listing there: the
 * pages after it are not asked, and the ones asked are dropped. */
static void test_a_list_call_that_cannot_be_made_ends_the_listing(void **state) {
        Fixture *f = *state;

        start(f);
        stub_diga_fail_call(f->diga, 2, -ENOMEM);
        answer_page(f, next(f), 0, PAGE, 1, 4);
        assert_ended(f, -ENOMEM);
        assert_non_null(strstr(f->why, "cannot list"));
        /* Page 2 was asked, page 3 failed, page 4 never was. */
        assert_int_equal(stub_diga_stats(f->diga)->calls, 2);
        assert_int_equal(stub_diga_stats(f->diga)->forgotten, 1);
}

static void test_starting_a_listing_that_runs_asks_nothing_more(void **state) {
        Fixture *f = *state;

        start(f);
        listing_start(f->ls);
        assert_int_equal(stub_diga_pending(f->diga), 1);
        assert_int_equal(next(f)->page, 1);
        assert_int_equal(f->forgets, 0);
}

static void again_by_cursor(Fixture *f) {
        listing_start_by_cursor(f->ls);
}

/* The engine confirms a listing by page with one by cursor, started from
 * the first one's done callback: it follows the cursor only, even where
 * the API offers pages. */
static void test_a_listing_started_again_by_cursor_from_its_done_callback_follows_the_cursor(void **state) {
        Fixture *f = *state;
        Call *c;

        f->then = again_by_cursor;
        start(f);
        answer_page(f, next(f), 0, 40, 1, 1);
        assert_int_equal(f->dones, 1);
        assert_int_equal(f->r, 0);
        assert_true(listing_running(f->ls));

        c = next(f);
        assert_int_equal(c->page, 0);
        assert_string_equal(c->id, "");
        f->dones = 0;
        f->kept = 0;
        /* Pages offered: the cursor is followed all the same. */
        answer_page(f, c, 0, PAGE, 1, 2);
        c = next(f);
        assert_int_equal(c->page, 0);
        assert_id(c, PAGE - 1);
        answer_page(f, c, PAGE, 3, 2, 2);
        assert_ended(f, 0);
        assert_int_equal(f->kept, PAGE + 3);
        assert_false(listing_stats(f->ls)->pages);
        assert_int_equal(listing_stats(f->ls)->calls, 2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
                T(test_pages_after_the_first_are_asked_together_and_the_last_again_at_the_end),
                T(test_a_listing_by_page_goes_on_by_cursor_and_fails_the_second_time),
                T(test_a_page_with_another_page_count_lists_the_account_again),
                T(test_a_page_before_the_last_that_is_not_full_lists_the_account_again),
                T(test_a_last_page_with_another_page_count_at_the_end_lists_the_account_again),
                T(test_a_last_page_not_the_same_at_the_end_lists_the_account_again),
                T(test_a_first_page_that_is_not_believed_ends_the_listing),
                T(test_unreadable_phones_are_counted_and_a_page_with_one_is_still_full),
                T(test_the_nil_uuid_is_a_phone_like_any_other),
                T(test_a_listing_by_cursor_follows_the_cursor_to_the_end),
                T(test_an_empty_account_by_cursor_is_complete_at_once),
                T(test_more_pages_by_cursor_than_retired_lists_is_not_believed),
                T(test_an_empty_page_that_says_there_is_more_stops_the_listing),
                T(test_an_empty_end_after_has_more_is_believed_the_second_time),
                T(test_a_cursor_that_does_not_move_ends_the_listing),
                T(test_a_400_to_a_cursor_steps_back_and_goes_on),
                T(test_a_400_to_a_cursor_not_in_the_apis_words_is_a_failed_page),
                T(test_a_failed_page_is_asked_again_and_the_listing_goes_on),
                T(test_a_200_that_is_not_a_page_is_asked_again),
                T(test_a_429_with_retry_after_holds_every_call_and_slows_the_pace),
                T(test_a_page_that_keeps_failing_ends_the_listing_without_a_verdict),
                T(test_an_api_that_never_answers_ends_the_listing_as_unreachable),
                T(test_a_refused_key_ends_the_listing_at_once),
                T(test_a_keep_that_fails_fails_the_listing),
                T(test_a_keep_that_cannot_forget_still_fails_the_listing),
                T(test_stopping_a_listing_ignores_the_answers_still_out),
                T(test_a_list_call_dropped_before_it_left_ends_the_listing_as_stopped),
                T(test_a_list_call_that_cannot_be_made_ends_the_listing),
                T(test_starting_a_listing_that_runs_asks_nothing_more),
                T(test_a_listing_started_again_by_cursor_from_its_done_callback_follows_the_cursor),
#undef T
        };

        /* Warnings and errors are what these tests provoke: keep the output to the verdicts. */
        log_set_max_level(LOG_CRIT);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
