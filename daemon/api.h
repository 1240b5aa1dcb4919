/* SPDX-License-Identifier: MIT */
#pragma once

/* What the API's bodies say (api.c): a page of the listing, one phone, an
 * error body, read with SQLite's JSON functions; nothing is decided here. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "reconcile.h"

#define API_MAX_BODY   (4u << 20)   /* bytes of one answer we accept */
#define API_PAGE_LIMIT 100          /* phones per list page */

typedef struct PhonePage {
        RemotePhone *phones;
        size_t n;
        bool has_more;
        char last_id[UUID_STRING_LEN + 1];
        int64_t current_page, total_pages;   /* -1: not given (a cursor page) */
        char **skipped;              /* "ID: why" of each phone that could not be read */
        size_t n_skipped;
} PhonePage;

int api_new(Api **ret);
Api *api_free(Api *a);
void phone_page_done(PhonePage *p);
/* 0, or -EBADMSG with *why saying what is wrong with the body, or another
 * -errno when SQLite failed (not the body's fault; *why stays NULL).  A page
 * whose frame is right keeps the phones it can read; the others go to
 * `skipped`.  A page is whole or an error: never cut short. */
int api_parse_phone(Api *a, const char *body, size_t len, RemotePhone *ret, char **why);
int api_parse_page(Api *a, const char *body, size_t len, PhonePage *ret, char **why);
/* Whether the body is the API's own error JSON ({"error_code","message"} or
 * FastAPI's {"detail"}); *message (if given) gets its words, short, or NULL. */
/* The API's nickname as every view may show it: one line, no control
 * characters, at most NICKNAME_MAX bytes (a longer one cut, with a mark). */
int api_nickname_clean(const char *s, char **ret);
bool api_error_body(Api *a, const char *body, size_t len, char **message);
