/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for the API body parsers in daemon/api.c.
 *
 * The first input byte picks the parser (modulo 3):
 *   0  api_parse_page     a GET /v1/phone/ list page
 *   1  api_parse_phone    a GET /v1/phone/{id} answer
 *   2  api_error_body     an error body (FastAPI 422 detail or Diga error)
 * and the rest of the input is the body, passed with its length and NOT
 * NUL-terminated (a copy in a buffer of exactly that size, so ASan sees any
 * read past the end).  One Api (one private SQLite connection and its
 * prepared statements) is made in LLVMFuzzerInitialize and reused, as the
 * daemon does.
 *
 * Checked: a parser returns 0 or -EBADMSG with a reason, as api.h says
 * on
 * success a page has n <= API_PAGE_LIMIT (100), every id passes
 * uuid_is_valid(), every phone has a number (<= CONF_MAX_SIP) and a status
 * name, has_more implies a valid last_id; an error message is short. */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "macro.h"

static Api *api;

static void cleanup(void) {
        api = api_free(api);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        if (api_new(&api) < 0)
                abort();
        atexit(cleanup);
        return 0;
}

#define CHECK(cond) do { if (!(cond)) { \
        fprintf(stderr, "fuzz-api: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        abort(); } } while (0)

static void check_phone(const RemotePhone *p) {
        CHECK(uuid_is_valid(p->id));
        CHECK(p->number && p->number[0] && strlen(p->number) <= CONF_MAX_SIP);
        CHECK(p->status_name && strlen(p->status_name) <= 64);
        CHECK(p->status >= REMOTE_RESERVED && p->status <= REMOTE_UNKNOWN);
        if (p->status != REMOTE_UNKNOWN)
                CHECK(p->status_name[0]);
}

static void check_result(int r, const char *why) {
        /* api.h: "0, or -EBADMSG with *why saying what is wrong with the
         * body".  Nothing runs out of memory here, so -ENOMEM would be wrong. */
        CHECK(r == 0 || r == -EBADMSG);
        if (r == -EBADMSG)
                CHECK(why && why[0]);
        if (r == 0)
                CHECK(!why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *body = NULL, *why = NULL;
        size_t len;
        int r;

        if (size == 0)
                return 0;
        len = size - 1;
        /* malloc(0) may return NULL; keep a non-NULL pointer with no bytes. */
        body = malloc(len ? len : 1);
        if (!body)
                return 0;
        memcpy(body, data + 1, len);

        switch (data[0] % 3) {
        case 0: {
                PhonePage p = {};

                r = api_parse_page(api, body, len, &p, &why);
                check_result(r, why);
                if (r == 0) {
                        CHECK(p.n + p.n_skipped <= API_PAGE_LIMIT);
                        CHECK(p.n == 0 || p.phones);
                        for (size_t i = 0; i < p.n; i++)
                                check_phone(&p.phones[i]);
                        for (size_t i = 0; i < p.n_skipped; i++)
                                CHECK(p.skipped[i] && p.skipped[i][0]);
                        /* A cursor to go on with, unless nothing in the page could give one. */
                        if (p.has_more && p.n > 0)
                                CHECK(uuid_is_valid(p.last_id));
                        CHECK(p.last_id[0] == 0 || uuid_is_valid(p.last_id));
                        CHECK(p.total_pages >= -1 && p.current_page >= -1);
                        phone_page_done(&p);
                } else
                        CHECK(p.n == 0 && !p.phones && !p.skipped);
                break;
        }
        case 1: {
                RemotePhone p = {};

                r = api_parse_phone(api, body, len, &p, &why);
                check_result(r, why);
                if (r == 0) {
                        check_phone(&p);
                        remote_phone_done(&p);
                } else
                        CHECK(!p.number && !p.status_name && !p.provider && !p.scheduled_release_at);
                break;
        }
        default: {
                _cleanup_free_ char *m = NULL;
                bool is_api = api_error_body(api, body, len, &m);

                if (m)
                        /* "%.64s: %.400s" at most, on one line. */
                        CHECK(strlen(m) <= 64 + 2 + 400 && !strchr(m, '\n'));
                /* Only an object can be the API's error body. */
                if (is_api)
                        CHECK(len > 0 && memchr(body, '{', len));
                break;
        }
        }
        return 0;
}
