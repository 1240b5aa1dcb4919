/* SPDX-License-Identifier: MIT */
/* The API's JSON, read with SQLite's JSON functions: one well-tested parser
 * we already link, and malformed input becomes an error, never a crash.
 * Unknown fields are ignored; fields we act on are checked strictly.  A
 * list page whose frame is right keeps every phone it can read: one odd
 * phone in the account must not hide all the others. */

#include <sqlite3.h>
#include <stdarg.h>

#include "api.h"
#include "macro.h"

struct Api {
        sqlite3 *db;
        sqlite3_stmt *valid, *page, *items, *phone, *error;
};

/* One row per phone object: id, number, status, provider, schedule, and
 * the JSON types of each, so a number where a string belongs is caught. */
#define PHONE_COLUMNS(x) \
        "json_type(" x ", '$'), json_extract(" x ", '$.id'), json_type(" x ", '$.id')," \
        "json_extract(" x ", '$.number'), json_type(" x ", '$.number')," \
        "json_extract(" x ", '$.status'), json_type(" x ", '$.status')," \
        "json_extract(" x ", '$.telephony_provider'), json_type(" x ", '$.telephony_provider')," \
        "json_extract(" x ", '$.scheduled_release_at'), json_type(" x ", '$.scheduled_release_at')," \
        "json_extract(" x ", '$.inbound_agent_id'), json_type(" x ", '$.inbound_agent_id')," \
        "json_extract(" x ", '$.outbound_agent_id'), json_type(" x ", '$.outbound_agent_id')," \
        "json_extract(" x ", '$.nickname'), json_type(" x ", '$.nickname')"

int api_new(Api **ret) {
        _cleanup_free_ Api *a = calloc(1, sizeof(Api));
        int rc;

        if (!a)
                return -ENOMEM;
        rc = sqlite3_open_v2(":memory:", &a->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
        /* json_type() raises an error on invalid JSON: validity is asked first. */
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db, "SELECT json_valid(?1)", -1, SQLITE_PREPARE_PERSISTENT, &a->valid, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db,
                        "SELECT json_type(?1, '$'), json_type(?1, '$.data'),"
                        " json_type(?1, '$.has_more'), json_type(?1, '$.last_id'), json_extract(?1, '$.last_id'),"
                        " json_type(?1, '$.current_page'), json_extract(?1, '$.current_page'),"
                        " json_type(?1, '$.total_pages'), json_extract(?1, '$.total_pages')",
                        -1, SQLITE_PREPARE_PERSISTENT, &a->page, NULL);
        /* json_each() gives a string as its bare text, which the JSON
         * functions would parse: "abc" an error, "{}" an object.  Only an
         * object is a phone; the rest reads as NULL, and is skipped. */
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db, "SELECT " PHONE_COLUMNS("v") " FROM (SELECT"
                                        " CASE WHEN type = 'object' THEN value END AS v FROM json_each(?1, '$.data'))",
                                        -1, SQLITE_PREPARE_PERSISTENT, &a->items, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db, "SELECT " PHONE_COLUMNS("?1"),
                                        -1, SQLITE_PREPARE_PERSISTENT, &a->phone, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db,
                        "SELECT json_type(?1, '$') = 'object' AND ("
                        "  (json_type(?1, '$.error_code') = 'text' AND json_type(?1, '$.message') = 'text')"
                        "  OR json_type(?1, '$.detail') IN ('array', 'text')),"
                        " coalesce("
                        " CASE WHEN json_type(?1, '$.message') = 'text' THEN json_extract(?1, '$.message') END,"
                        " CASE WHEN json_type(?1, '$.detail[0].msg') = 'text' THEN json_extract(?1, '$.detail[0].msg') END,"
                        " CASE WHEN json_type(?1, '$.detail') = 'text' THEN json_extract(?1, '$.detail') END),"
                        " CASE WHEN json_type(?1, '$.error_code') = 'text' THEN json_extract(?1, '$.error_code') END",
                        -1, SQLITE_PREPARE_PERSISTENT, &a->error, NULL);
        if (rc != SQLITE_OK) {
                api_free(TAKE_PTR(a));
                return sqlite_to_errno(rc);
        }
        *ret = TAKE_PTR(a);
        return 0;
}

Api *api_free(Api *a) {
        if (!a)
                return NULL;
        (void) sqlite3_finalize(a->valid);
        (void) sqlite3_finalize(a->page);
        (void) sqlite3_finalize(a->items);
        (void) sqlite3_finalize(a->phone);
        (void) sqlite3_finalize(a->error);
        (void) sqlite3_close_v2(a->db);
        free(a);
        return NULL;
}

void phone_page_done(PhonePage *p) {
        for (size_t i = 0; i < p->n; i++)
                remote_phone_done(&p->phones[i]);
        free(p->phones);
        for (size_t i = 0; i < p->n_skipped; i++)
                free(p->skipped[i]);
        free(p->skipped);
        *p = (PhonePage) {};
}

static int bad_body(char **why, const char *fmt, ...) _printf_(2, 3);
static int bad_body(char **why, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(why, fmt, ap) < 0)
                *why = NULL;
        va_end(ap);
        return -EBADMSG;
}

/* 1 when the body is JSON, 0 when not, -errno when SQLite could not tell:
 * a failure of ours is not the body's fault. */
static int json_ok(Api *a, const char *body, size_t len) {
        int rc, r;

        if (!body || len > API_MAX_BODY)
                return 0;
        (void) sqlite3_bind_text(a->valid, 1, body, (int) len, SQLITE_STATIC);
        rc = sqlite3_step(a->valid);
        r = rc == SQLITE_ROW ? sqlite3_column_int(a->valid, 0) != 0 : sqlite_row_errno(rc);
        (void) sqlite3_reset(a->valid);
        (void) sqlite3_clear_bindings(a->valid);
        return r;
}

/* What the API says ends up in the journal and the ledger: no control
 * characters, so it cannot forge a line. */
static bool printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

static const char *text(sqlite3_stmt *st, int i) {
        return (const char *) sqlite3_column_text(st, i);
}

static bool is_type(sqlite3_stmt *st, int i, const char *type) {
        const char *t = text(st, i);
        return t && streq(t, type);
}

/* A UUID in either case, as the spec's "format: uuid" allows; ours are
 * lowercase, so that one phone has one spelling. */
static int strdup_to(const char *s, char **ret) {
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

/* An agent's id: a UUID or null (or absent).  Anything else makes the
 * phone unreadable, so it is never released on a guess about its agents. */
static int read_agent(sqlite3_stmt *st, int c, const char *field, const char *id, char **ret, char **why) {
        char canon[UUID_STRING_LEN + 1];

        *ret = NULL;
        if (!text(st, c + 1) || is_type(st, c + 1, "null"))
                return 0;
        if (!is_type(st, c + 1, "text") || !uuid_canonical(text(st, c), canon))
                return bad_body(why, "phone %s has an invalid \"%s\"", id, field);
        return strdup_to(canon, ret);
}

/* Bytes of the UTF-8 sequence at s, or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s) {
        size_t n = *s < 0x80 ? 1 : (*s & 0xe0) == 0xc0 ? 2 : (*s & 0xf0) == 0xe0 ? 3 : (*s & 0xf8) == 0xf0 ? 4 : 0;

        for (size_t i = 1; i < n; i++)
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
        return n;
}

/* The nickname is the API's text and goes to every view, CSV and journal
 * line: a control character (C0, DEL, C1), a line or paragraph separator
 * or a byte that is no UTF-8 becomes "?", and a name longer than
 * NICKNAME_MAX bytes is cut at a character with NICKNAME_CUT, so the cut
 * shows. */
int api_nickname_clean(const char *s, char **ret) {
        _cleanup_free_ char *o = malloc(NICKNAME_MAX + 1);
        const size_t keep = NICKNAME_MAX - strlen(NICKNAME_CUT);
        size_t n = 0;

        if (!o)
                return -ENOMEM;
        for (const unsigned char *p = (const unsigned char *) s; *p;) {
                size_t k = utf8_len(p);
                bool bad = k == 0 || *p < 0x20 || *p == 0x7f || (k == 2 && p[0] == 0xc2 && p[1] < 0xa0) ||
                           (k == 3 && p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9));
                size_t w = bad ? 1 : k;

                /* Cut where what is left, and the mark, would not fit. */
                if (n + w > keep && strlen((const char *) p) + n > NICKNAME_MAX) {
                        memcpy(o + n, NICKNAME_CUT, strlen(NICKNAME_CUT));
                        n += strlen(NICKNAME_CUT);
                        break;
                }
                if (bad)
                        o[n] = '?';
                else
                        memcpy(o + n, p, k);
                n += w;
                p += k ? k : 1;
        }
        o[n] = 0;
        *ret = TAKE_PTR(o);
        return 0;
}

static int read_extras(sqlite3_stmt *st, int c, RemotePhone *p, char **why) {
        int r;

        r = read_agent(st, c + 11, "inbound_agent_id", p->id, &p->inbound_agent, why);
        if (r < 0)
                return r;
        r = read_agent(st, c + 13, "outbound_agent_id", p->id, &p->outbound_agent, why);
        if (r < 0)
                return r;
        if (!text(st, c + 16) || is_type(st, c + 16, "null"))
                return 0;
        if (!is_type(st, c + 16, "text"))
                return bad_body(why, "phone %s has an invalid \"nickname\"", p->id);
        /* An empty name names nothing. */
        if (!text(st, c + 15)[0])
                return 0;
        return api_nickname_clean(text(st, c + 15), &p->nickname);
}

/* Columns from `c` on are PHONE_COLUMNS. */
static int read_phone(sqlite3_stmt *st, int c, RemotePhone *ret, char **why) {
        _cleanup_(remote_phone_done) RemotePhone p = {};
        const char *id = text(st, c + 1), *number = text(st, c + 3), *status = text(st, c + 5);
        int r;

        if (!is_type(st, c, "object"))
                return bad_body(why, "a phone is not a JSON object");
        if (!is_type(st, c + 2, "text") || !uuid_canonical(id, p.id))
                return bad_body(why, "a phone has no valid \"id\"");
        if (!is_type(st, c + 4, "text") || strlen(number) == 0 || strlen(number) > CONF_MAX_SIP ||
            !printable(number))
                return bad_body(why, "phone %s has no valid \"number\"", p.id);
        if (!is_type(st, c + 6, "text") || strlen(status) > 64 || !printable(status))
                return bad_body(why, "phone %s has no valid \"status\"", p.id);
        if (!is_type(st, c + 8, "text") && !is_type(st, c + 8, "null") && text(st, c + 8))
                return bad_body(why, "phone %s has an invalid \"telephony_provider\"", p.id);
        if (is_type(st, c + 8, "text") && (strlen(text(st, c + 7)) > 64 || !printable(text(st, c + 7))))
                return bad_body(why, "phone %s has an invalid \"telephony_provider\"", p.id);
        if (!is_type(st, c + 10, "text") && !is_type(st, c + 10, "null") && text(st, c + 10))
                return bad_body(why, "phone %s has an invalid \"scheduled_release_at\"", p.id);
        if (is_type(st, c + 10, "text") && (strlen(text(st, c + 9)) > 64 || !printable(text(st, c + 9))))
                return bad_body(why, "phone %s has an invalid \"scheduled_release_at\"", p.id);

        /* Numbers are compared in the form the config normalises them to. */
        if (number_normalize(number, &p.number) < 0 && strdup_to(number, &p.number) < 0)
                return -ENOMEM;
        if (strdup_to(status, &p.status_name) < 0)
                return -ENOMEM;
        p.status = remote_status_from_string(status);
        if (is_type(st, c + 8, "text") && strdup_to(text(st, c + 7), &p.provider) < 0)
                return -ENOMEM;
        if (is_type(st, c + 10, "text") && strdup_to(text(st, c + 9), &p.scheduled_release_at) < 0)
                return -ENOMEM;
        r = read_extras(st, c, &p, why);
        if (r < 0)
                return r;
        *ret = p;
        p = (RemotePhone) {};
        return 0;
}

int api_parse_phone(Api *a, const char *body, size_t len, RemotePhone *ret, char **why) {
        sqlite3_stmt *st = a->phone;
        int r, rc;

        r = json_ok(a, body, len);
        if (r < 0)
                return r;
        if (r == 0)
                return bad_body(why, "the body is not valid JSON");
        (void) sqlite3_reset(st);
        (void) sqlite3_bind_text(st, 1, body, (int) len, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                r = sqlite_row_errno(rc);
        else
                r = read_phone(st, 0, ret, why);
        (void) sqlite3_reset(st);
        (void) sqlite3_clear_bindings(st);
        return r;
}

static int int_or_none(sqlite3_stmt *st, int type_col, int64_t *ret) {
        *ret = -1;
        if (!text(st, type_col) || is_type(st, type_col, "null"))
                return 0;
        if (!is_type(st, type_col, "integer") || sqlite3_column_int64(st, type_col + 1) < 0)
                return -EBADMSG;
        *ret = sqlite3_column_int64(st, type_col + 1);
        return 0;
}

static int page_frame(Api *a, PhonePage *p, char **why) {
        sqlite3_stmt *st = a->page;
        int rc;

        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return sqlite_row_errno(rc);
        if (!is_type(st, 0, "object") || !is_type(st, 1, "array"))
                return bad_body(why, "the body has no \"data\" array");
        if (!is_type(st, 2, "true") && !is_type(st, 2, "false"))
                return bad_body(why, "the body has no boolean \"has_more\"");
        p->has_more = is_type(st, 2, "true");
        /* A cursor that is not a UUID is not followed (nor put in a URL):
         * the last phone's id stands in for it. */
        if (!is_type(st, 3, "text") || !uuid_canonical(text(st, 4), p->last_id))
                p->last_id[0] = 0;
        if (int_or_none(st, 5, &p->current_page) < 0)
                return bad_body(why, "the body has an invalid \"current_page\"");
        if (int_or_none(st, 7, &p->total_pages) < 0)
                return bad_body(why, "the body has an invalid \"total_pages\"");
        return 0;
}

static int skip(PhonePage *p, size_t i, const char *why) {
        char **n, *line;

        n = reallocarray(p->skipped, p->n_skipped + 1, sizeof(char *));
        if (!n)
                return -ENOMEM;
        p->skipped = n;
        if (asprintf_or_null(&line, "phone #%zu of the page: %s", i + 1, why ? why : "unreadable") < 0)
                return -ENOMEM;
        p->skipped[p->n_skipped++] = line;
        return 0;
}

int api_parse_page(Api *a, const char *body, size_t len, PhonePage *ret, char **why) {
        _cleanup_(phone_page_done) PhonePage p = {};
        size_t cap = 0, i = 0;
        int r, rc;

        r = json_ok(a, body, len);
        if (r < 0)
                return r;
        if (r == 0)
                return bad_body(why, "the body is not valid JSON");
        (void) sqlite3_reset(a->page);
        (void) sqlite3_bind_text(a->page, 1, body, (int) len, SQLITE_STATIC);
        r = page_frame(a, &p, why);
        (void) sqlite3_reset(a->page);
        (void) sqlite3_clear_bindings(a->page);
        if (r < 0)
                return r;

        (void) sqlite3_bind_text(a->items, 1, body, (int) len, SQLITE_STATIC);
        while (r >= 0 && (rc = sqlite3_step(a->items)) == SQLITE_ROW) {
                _cleanup_free_ char *bad = NULL;

                if (p.n + p.n_skipped >= API_PAGE_LIMIT) {
                        r = bad_body(why, "more than %u phones in one page", API_PAGE_LIMIT);
                        break;
                }
                if (p.n == cap) {
                        RemotePhone *n = reallocarray(p.phones, cap ? cap * 2 : 16, sizeof(RemotePhone));
                        if (!n) {
                                r = -ENOMEM;
                                break;
                        }
                        p.phones = n;
                        cap = cap ? cap * 2 : 16;
                }
                r = read_phone(a->items, 0, &p.phones[p.n], &bad);
                if (r >= 0)
                        p.n++;
                else if (r == -EBADMSG)
                        r = skip(&p, i, bad);
                i++;
        }
        /* A step that fails mid-page fails the page: the phones after it
         * would look absent from the account. */
        if (r >= 0 && rc != SQLITE_DONE)
                r = sqlite_to_errno(rc);
        (void) sqlite3_reset(a->items);
        (void) sqlite3_clear_bindings(a->items);
        if (r < 0)
                return r;
        /* Paging on by cursor takes the last phone's id when last_id is absent. */
        if (p.has_more && !p.last_id[0] && p.n > 0)
                memcpy(p.last_id, p.phones[p.n - 1].id, sizeof p.last_id);
        *ret = p;
        p = (PhonePage) {};
        return 0;
}

bool api_error_body(Api *a, const char *body, size_t len, char **message) {
        const char *msg, *code;
        bool is_api = false;

        if (message)
                *message = NULL;
        /* A body SQLite could not read is not known to be the API's: the
         * answer is retried like a proxy's, never read as the API's word. */
        if (!body || len == 0 || json_ok(a, body, len) <= 0)
                return false;
        (void) sqlite3_reset(a->error);
        (void) sqlite3_bind_text(a->error, 1, body, (int) len, SQLITE_STATIC);
        if (sqlite3_step(a->error) == SQLITE_ROW) {
                is_api = sqlite3_column_int(a->error, 0) != 0;
                msg = text(a->error, 1);
                code = text(a->error, 2);
                /* The API's words go to the journal and the ledger: keep them
                 * short and on one line. */
                if (message && msg && code && printable(msg) && printable(code))
                        (void) asprintf_or_null(message, "%.64s: %.400s", code, msg);
                else if (message && (msg || code) && printable(msg ? msg : code))
                        (void) asprintf_or_null(message, "%.400s", msg ? msg : code);
        }
        (void) sqlite3_reset(a->error);
        (void) sqlite3_clear_bindings(a->error);
        return is_api;
}
