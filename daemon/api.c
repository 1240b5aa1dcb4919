/* SPDX-License-Identifier: MIT */
/* The API's JSON, read with SQLite's JSON functions: one well-tested parser
 * we already link, and malformed input becomes an error, never a crash.
 * Unknown fields are ignored; fields we act on are checked strictly. */

#include <sqlite3.h>
#include <stdarg.h>

#include "daemon.h"
#include "macro.h"

struct Api {
        sqlite3 *db;
        sqlite3_stmt *valid, *page, *items, *phone, *error;
};

static const char *const status_names[] = {
        [REMOTE_RESERVED] = "reserved",
        [REMOTE_PENDING_VERIFICATION] = "pending_verification",
        [REMOTE_ASSIGNED] = "assigned",
        [REMOTE_RELEASED] = "released",
        [REMOTE_FINISHED] = "finished",
};

/* One row per phone object: id, number, status, provider, schedule, and
 * the JSON types of each, so a number where a string belongs is caught. */
#define PHONE_COLUMNS(x) \
        "json_type(" x ", '$'), json_extract(" x ", '$.id'), json_type(" x ", '$.id')," \
        "json_extract(" x ", '$.number'), json_type(" x ", '$.number')," \
        "json_extract(" x ", '$.status'), json_type(" x ", '$.status')," \
        "json_extract(" x ", '$.telephony_provider'), json_type(" x ", '$.telephony_provider')," \
        "json_extract(" x ", '$.scheduled_release_at'), json_type(" x ", '$.scheduled_release_at')"

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
                        " json_type(?1, '$.has_more'), json_type(?1, '$.last_id'), json_extract(?1, '$.last_id')",
                        -1, SQLITE_PREPARE_PERSISTENT, &a->page, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db, "SELECT " PHONE_COLUMNS("value") " FROM json_each(?1, '$.data')",
                                        -1, SQLITE_PREPARE_PERSISTENT, &a->items, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db, "SELECT " PHONE_COLUMNS("?1"),
                                        -1, SQLITE_PREPARE_PERSISTENT, &a->phone, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v3(a->db,
                        "SELECT coalesce("
                        " CASE WHEN json_type(?1, '$.message') = 'text' THEN json_extract(?1, '$.message') END,"
                        " CASE WHEN json_type(?1, '$.detail[0].msg') = 'text' THEN json_extract(?1, '$.detail[0].msg') END,"
                        " CASE WHEN json_type(?1, '$.detail') = 'text' THEN json_extract(?1, '$.detail') END),"
                        " CASE WHEN json_type(?1, '$.error_code') = 'text' THEN json_extract(?1, '$.error_code') END",
                        -1, SQLITE_PREPARE_PERSISTENT, &a->error, NULL);
        if (rc != SQLITE_OK) {
                api_free(TAKE_PTR(a));
                return -ENOMEM;
        }
        *ret = TAKE_PTR(a);
        return 0;
}

Api *api_free(Api *a) {
        if (!a)
                return NULL;
        sqlite3_finalize(a->valid);
        sqlite3_finalize(a->page);
        sqlite3_finalize(a->items);
        sqlite3_finalize(a->phone);
        sqlite3_finalize(a->error);
        sqlite3_close_v2(a->db);
        free(a);
        return NULL;
}

void remote_phone_done(RemotePhone *p) {
        free(p->number);
        free(p->status_name);
        free(p->provider);
        free(p->scheduled_release_at);
        *p = (RemotePhone) {};
}

void phone_page_done(PhonePage *p) {
        for (size_t i = 0; i < p->n; i++)
                remote_phone_done(&p->phones[i]);
        free(p->phones);
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

static bool json_ok(Api *a, const char *body, size_t len) {
        bool ok;

        sqlite3_bind_text(a->valid, 1, body, (int) len, SQLITE_STATIC);
        ok = sqlite3_step(a->valid) == SQLITE_ROW && sqlite3_column_int(a->valid, 0);
        sqlite3_reset(a->valid);
        sqlite3_clear_bindings(a->valid);
        return ok;
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

/* Columns from `c` on are PHONE_COLUMNS. */
static int read_phone(sqlite3_stmt *st, int c, RemotePhone *ret, char **why) {
        RemotePhone p = {};
        const char *id = text(st, c + 1), *number = text(st, c + 3), *status = text(st, c + 5);

        if (!is_type(st, c, "object"))
                return bad_body(why, "a phone is not a JSON object");
        if (!is_type(st, c + 2, "text") || !uuid_is_valid(id))
                return bad_body(why, "a phone has no valid \"id\"");
        if (!is_type(st, c + 4, "text") || strlen(number) == 0 || strlen(number) > CONF_MAX_SIP ||
            !printable(number))
                return bad_body(why, "phone %s has no valid \"number\"", id);
        if (!is_type(st, c + 6, "text") || strlen(status) > 64 || !printable(status))
                return bad_body(why, "phone %s has no valid \"status\"", id);
        if (!is_type(st, c + 8, "text") && !is_type(st, c + 8, "null") && text(st, c + 8))
                return bad_body(why, "phone %s has an invalid \"telephony_provider\"", id);
        if (!is_type(st, c + 10, "text") && !is_type(st, c + 10, "null") && text(st, c + 10))
                return bad_body(why, "phone %s has an invalid \"scheduled_release_at\"", id);

        memcpy(p.id, id, sizeof p.id);
        /* Numbers are compared in the form the config normalises them to. */
        if (number_normalize(number, &p.number) < 0)
                p.number = strdup(number);
        p.status_name = strdup(status);
        p.status = REMOTE_UNKNOWN;
        for (size_t i = 0; i < ELEMENTSOF(status_names); i++)
                if (streq(status, status_names[i]))
                        p.status = (RemoteStatus) i;
        if (is_type(st, c + 8, "text"))
                p.provider = strdup(text(st, c + 7));
        if (is_type(st, c + 10, "text"))
                p.scheduled_release_at = strdup(text(st, c + 9));
        if (!p.number || !p.status_name || (is_type(st, c + 8, "text") && !p.provider) ||
            (is_type(st, c + 10, "text") && !p.scheduled_release_at)) {
                remote_phone_done(&p);
                return -ENOMEM;
        }
        *ret = p;
        return 0;
}

int api_parse_phone(Api *a, const char *body, size_t len, RemotePhone *ret, char **why) {
        sqlite3_stmt *st = a->phone;
        int r;

        if (!json_ok(a, body, len))
                return bad_body(why, "the body is not valid JSON");
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, body, (int) len, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW)
                r = -ENOMEM;
        else
                r = read_phone(st, 0, ret, why);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return r;
}

int api_parse_page(Api *a, const char *body, size_t len, PhonePage *ret, char **why) {
        PhonePage p = {};
        size_t cap = 0;
        int r = 0, rc;

        if (!json_ok(a, body, len))
                return bad_body(why, "the body is not valid JSON");
        sqlite3_reset(a->page);
        sqlite3_bind_text(a->page, 1, body, (int) len, SQLITE_STATIC);
        if (sqlite3_step(a->page) != SQLITE_ROW)
                r = -ENOMEM;
        else if (!is_type(a->page, 0, "object") || !is_type(a->page, 1, "array"))
                r = bad_body(why, "the body has no \"data\" array");
        else if (!is_type(a->page, 2, "true") && !is_type(a->page, 2, "false"))
                r = bad_body(why, "the body has no boolean \"has_more\"");
        else {
                p.has_more = is_type(a->page, 2, "true");
                if (is_type(a->page, 3, "text") && uuid_is_valid(text(a->page, 4)))
                        memcpy(p.last_id, text(a->page, 4), sizeof p.last_id);
        }
        sqlite3_reset(a->page);
        sqlite3_clear_bindings(a->page);
        if (r < 0)
                return r;

        sqlite3_bind_text(a->items, 1, body, (int) len, SQLITE_STATIC);
        while (r >= 0 && (rc = sqlite3_step(a->items)) == SQLITE_ROW) {
                if (p.n >= API_PAGE_LIMIT) {
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
                r = read_phone(a->items, 0, &p.phones[p.n], why);
                if (r >= 0)
                        p.n++;
        }
        sqlite3_reset(a->items);
        sqlite3_clear_bindings(a->items);
        /* Paging on needs a cursor: take the last phone's id when last_id is absent. */
        if (r >= 0 && p.has_more && !p.last_id[0]) {
                if (p.n == 0)
                        r = bad_body(why, "\"has_more\" is true but the page is empty");
                else
                        memcpy(p.last_id, p.phones[p.n - 1].id, sizeof p.last_id);
        }
        if (r < 0) {
                phone_page_done(&p);
                return r;
        }
        *ret = p;
        return 0;
}

char *api_error_message(Api *a, const char *body, size_t len) {
        char *m = NULL;
        const char *msg, *code;

        if (!body || len == 0 || !json_ok(a, body, len))
                return NULL;
        sqlite3_reset(a->error);
        sqlite3_bind_text(a->error, 1, body, (int) len, SQLITE_STATIC);
        if (sqlite3_step(a->error) == SQLITE_ROW) {
                msg = text(a->error, 0);
                code = text(a->error, 1);
                /* The API's words go to the journal and the ledger: keep them short. */
                if (msg && code)
                        asprintf(&m, "%.64s: %.400s", code, msg);
                else if (msg || code)
                        asprintf(&m, "%.400s", msg ? msg : code);
        }
        sqlite3_reset(a->error);
        sqlite3_clear_bindings(a->error);
        return m;
}
