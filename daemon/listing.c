/* SPDX-License-Identifier: MIT */
/* The listing: every phone of the account, before anything is acted on.
 *
 * Page 1 is asked with page=1&limit=100&order=asc.  When its answer gives
 * total_pages, the other pages are asked at once (the pacer spaces them),
 * and the last page is asked once more at the end.  When it does not, the
 * API pages by cursor only, and the listing follows after=<last id>.
 *
 * Offset pages shift when the account changes under them, so a change must
 * be noticed: an id seen twice (a phone added before a page already read),
 * a total_pages that moved, a page before the last that is not full, or a
 * last page that is not the same at the end as when it was first read (a
 * phone added or removed anywhere shifts it).  On any of these the listing
 * starts again by cursor, which new phones do not shift: an account that
 * keeps changing is listed all the same, one page after another.
 *
 * A cursor listing walks the ids in order.  A phone seen again (the API
 * went back) is only counted once.  A cursor the API no longer takes (a 400:
 * the phone it names is gone), or an empty end right after "has_more"
 * (maybe the end, maybe a cursor whose phone went away), steps back to the
 * cursor before it, from where the walk goes on; the same answer at the
 * same cursor after a step back is believed (an empty end) or starts the
 * listing again (a 400).  A listing that starts again a second time fails.
 * A failed listing is never a verdict: the rows it concerns stay as they
 * are and are looked at in a later pass.  It ends with -EHOSTUNREACH when
 * the API did not answer at all (the engine then sends no GET either),
 * -EACCES when it refused the key.
 *
 * What it cannot notice: two changes that undo each other's shift (a phone
 * removed and another added) between the reads of two pages.  A cursor
 * listing has no such gap, so the engine confirms by cursor every number a
 * listing by page did not find (listing_start_by_cursor()): a phone that
 * exists for the whole listing is never taken for absent. */

#include <math.h>

#include "api.h"
#include "diga.h"
#include "listing.h"
#include "log.h"
#include "macro.h"

#define LIST_MAX_PAGES  10000u      /* 1,000,000 phones: past this a listing is not believed */
#define LIST_RESTARTS   1u          /* times a listing starts again after the account changed */
#define LIST_BACK       8u          /* cursors kept to step back to */

/* The ids seen in this listing, 16 bytes each, open addressing. */
typedef struct IdSet {
        uint8_t (*slots)[16];
        size_t n, cap;
} IdSet;

typedef struct PageReq {
        Listing *ls;
        unsigned page;              /* 0 in cursor mode */
        unsigned attempts;
        Call *call;
        sd_event_source *retry;
        bool done;
} PageReq;

struct Listing {
        sd_event *event;
        Diga *diga;
        Api *api;
        World world;
        ListingKeep keep;
        ListingDone done;
        void *userdata;

        bool running, pages;
        bool cursor_only;           /* follow the cursor even when the API offers pages */
        unsigned total_pages, pages_left;
        PageReq *reqs;              /* page mode: one per page, [0] is page 1; cursor mode: one */
        size_t n_reqs;
        PageReq last;               /* page mode: the last page, asked again at the end */
        uint64_t last_print;        /* the last page's ids as first read */
        char cursor[UUID_STRING_LEN + 1];
        char back[LIST_BACK][UUID_STRING_LEN + 1];   /* the cursors before it, newest last */
        unsigned n_back;
        char empty_at[UUID_STRING_LEN + 1];          /* the cursor an empty end came after */
        char refused_at[UUID_STRING_LEN + 1];        /* the cursor the API answered 400 to */
        IdSet seen;
        ListingStats stats;
};

static void request(Listing *ls, PageReq *q);

/* ---- the id set ---- */

static bool id_bytes(const char *id, uint8_t ret[static 16]) {
        size_t j = 0;

        for (size_t i = 0; id[i] && j < 32; i++) {
                int v;
                if (id[i] == '-')
                        continue;
                v = id[i] >= 'a' ? id[i] - 'a' + 10 : id[i] - '0';
                if (j % 2 == 0)
                        ret[j / 2] = (uint8_t) (v << 4);
                else
                        ret[j / 2] |= (uint8_t) v;
                j++;
        }
        return j == 32;
}

static size_t id_hash(const uint8_t b[static 16], size_t cap) {
        uint64_t h;

        /* Version-4 ids are random: their bytes are a hash already. */
        memcpy(&h, b, sizeof h);
        return (size_t) (h ^ (h >> 29)) & (cap - 1);
}

static bool slot_empty(const uint8_t s[static 16]) {
        static const uint8_t zero[16];
        return memcmp(s, zero, 16) == 0;
}

/* 1: added, 0: seen before, -ENOMEM.  (The all-zero id never comes from
 * uuid_is_valid()'s version-4 API; it is the empty slot.) */
static int idset_add(IdSet *s, const char *id) {
        uint8_t b[16];
        size_t i;

        if (!id_bytes(id, b))
                return -EINVAL;
        if (slot_empty(b))
                b[15] = 1;      /* never equal to an empty slot; a clash with 0...01 only makes a false repeat */
        if ((s->n + 1) * 2 > s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 1024;
                uint8_t (*n)[16] = calloc(cap, 16);

                if (!n)
                        return -ENOMEM;
                for (size_t k = 0; k < s->cap; k++)
                        if (!slot_empty(s->slots[k])) {
                                for (i = id_hash(s->slots[k], cap); !slot_empty(n[i]); i = (i + 1) & (cap - 1))
                                        ;
                                memcpy(n[i], s->slots[k], 16);
                        }
                free(s->slots);
                s->slots = n;
                s->cap = cap;
        }
        for (i = id_hash(b, s->cap); !slot_empty(s->slots[i]); i = (i + 1) & (s->cap - 1))
                if (memcmp(s->slots[i], b, 16) == 0)
                        return 0;
        memcpy(s->slots[i], b, 16);
        s->n++;
        return 1;
}

static void idset_done(IdSet *s) {
        free(s->slots);
        *s = (IdSet) {};
}

/* ---- the listing ---- */

/* What was kept is no verdict once the listing starts again or fails. */
static void kept_clear(Listing *ls) {
        if (ls->keep(NULL, ls->userdata) < 0)
                log_warning("Listing phones: cannot forget the phones kept so far; a failed listing is still "
                            "no verdict.");
}

static void req_drop(Listing *ls, PageReq *q) {
        if (q->call)
                diga_forget(ls->diga, TAKE_PTR(q->call));
        q->retry = sd_event_source_disable_unref(q->retry);
}

static void reqs_drop(Listing *ls) {
        for (size_t i = 0; i < ls->n_reqs; i++)
                req_drop(ls, &ls->reqs[i]);
        req_drop(ls, &ls->last);
        free(ls->reqs);
        ls->reqs = NULL;
        ls->n_reqs = 0;
        ls->last = (PageReq) { .ls = ls };
}

static void end(Listing *ls, int r, const char *why) {
        if (!ls->running)
                return;
        ls->running = false;
        reqs_drop(ls);
        idset_done(&ls->seen);
        if (r < 0)
                kept_clear(ls);
        ls->done(ls, r, why, ls->userdata);
}

static void reset(Listing *ls) {
        reqs_drop(ls);
        idset_done(&ls->seen);
        kept_clear(ls);
        ls->pages = false;
        ls->total_pages = ls->pages_left = 0;
        ls->cursor[0] = ls->empty_at[0] = ls->refused_at[0] = 0;
        ls->n_back = 0;
        ls->last_print = 0;
        ls->stats.listed = ls->stats.unreadable = 0;
        ls->stats.pages = false;
}

static int begin(Listing *ls) {
        ls->reqs = calloc(1, sizeof(PageReq));
        if (!ls->reqs)
                return -ENOMEM;
        ls->n_reqs = 1;
        ls->reqs[0] = (PageReq) { .ls = ls, .page = ls->cursor_only ? 0 : 1 };
        ls->last = (PageReq) { .ls = ls };
        request(ls, &ls->reqs[0]);
        return 0;
}

/* The account moved under the listing: start again, once. */
static void changed(Listing *ls, const char *what) {
        int r;

        if (ls->stats.restarts >= LIST_RESTARTS) {
                log_error("Listing phones: the account changed again while it was listed (%s); stopping the listing.",
                          what);
                end(ls, -EAGAIN, "the account kept changing while it was listed");
                return;
        }
        ls->stats.restarts++;
        /* Offset pages shift at every change; a cursor does not. */
        if (ls->pages)
                ls->cursor_only = true;
        log_notice("Listing phones: the account changed while it was listed (%s); listing it again%s.", what,
                   ls->pages ? " by cursor, which new phones do not shift" : "");
        reset(ls);
        r = begin(ls);
        if (r < 0)
                end(ls, r, "out of memory");
}

/* An order-dependent fingerprint of a page's ids. */
static uint64_t page_print(const PhonePage *p) {
        uint64_t h = 0xcbf29ce484222325ULL;

        for (size_t i = 0; i < p->n; i++)
                for (const char *c = p->phones[i].id; *c; c++) {
                        h ^= (unsigned char) *c;
                        h *= 0x100000001b3ULL;
                }
        return h ^ (p->n + p->n_skipped);
}

/* 0, or 1 when an id repeats in page mode (the account changed), or -errno. */
static int take(Listing *ls, PhonePage *p) {
        size_t again = 0;

        for (size_t i = 0; i < p->n_skipped; i++)
                log_warning("Listing phones: skipped a phone that cannot be read (%s); the rest of the page counts.",
                            p->skipped[i]);
        ls->stats.unreadable += p->n_skipped;
        for (size_t i = 0; i < p->n; i++) {
                RemotePhone *ph = &p->phones[i];
                int r = idset_add(&ls->seen, ph->id);

                if (r < 0)
                        return r;
                if (r == 0 && ls->pages)
                        return 1;
                if (r == 0) {
                        again++;        /* by cursor: the API went back, and the walk goes on */
                        continue;
                }
                ls->stats.listed++;
                r = ls->keep(ph, ls->userdata);
                if (r < 0)
                        return r;
        }
        if (again > 0)
                log_info("Listing phones: %zu %s listed before came again (the API went back); counted once.",
                         again, again == 1 ? "phone" : "phones");
        return 0;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        PageReq *q = userdata;

        q->retry = sd_event_source_disable_unref(q->retry);
        request(q->ls, q);
        return 0;
}

/* A page that failed: again on the listing's own budget, or the listing stops. */
static void page_failed(Listing *ls, PageReq *q, const Reply *reply) {
        World w = ls->world;
        PageOutcome o;
        int r;

        w.jitter = drand48();
        reconcile_page(reply, q->attempts, &w, &o);
        diga_heed(ls->diga, o.rate_backoff, o.hold);
        switch (o.verdict) {
        case PAGE_AUTH:
                end(ls, -EACCES, o.detail);
                return;
        case PAGE_RETRY:
                q->attempts++;
                log_warning("Listing phones: page %s failed (%s); again in %.1f s.", q->page ? "by number" : "by cursor",
                            o.detail, usec_to_sec((int64_t) o.delay));
                r = sd_event_add_time_relative(ls->event, &q->retry, CLOCK_MONOTONIC, o.delay, USEC_PER_MSEC,
                                               on_retry, q);
                if (r < 0)
                        end(ls, r, "cannot arm a timer");
                return;
        case PAGE_OK:
        case PAGE_GIVE_UP:
                break;
        }
        log_error("Listing phones failed: %s.", o.detail);
        /* No HTTP answer at all: no GET by id would get one either. */
        end(ls, reply->status == 0 ? -EHOSTUNREACH : -EIO, o.detail);
}

static void all_pages_in(Listing *ls) {
        /* Asked again at the end: a change anywhere in the account shifts it. */
        ls->last = (PageReq) { .ls = ls, .page = ls->total_pages };
        request(ls, &ls->last);
}

/* By cursor: ask again after the cursor before this one (or from the
 * start); the phones seen again are counted once. */
static void step_back(Listing *ls, PageReq *q, const char *why) {
        log_info("Listing phones: %s (%s); going on from the cursor before it.", why, ls->cursor);
        if (ls->n_back > 0)
                memcpy(ls->cursor, ls->back[--ls->n_back], sizeof ls->cursor);
        else
                ls->cursor[0] = 0;
        *q = (PageReq) { .ls = ls };
        request(ls, q);
}

/* By cursor: the next page is after this one's last phone. */
static void step_forward(Listing *ls, PageReq *q, const char *next) {
        if (ls->cursor[0]) {
                if (ls->n_back == LIST_BACK) {
                        memmove(ls->back[0], ls->back[1], (LIST_BACK - 1) * sizeof ls->back[0]);
                        ls->n_back--;
                }
                memcpy(ls->back[ls->n_back++], ls->cursor, sizeof ls->cursor);
        }
        memcpy(ls->cursor, next, sizeof ls->cursor);
        *q = (PageReq) { .ls = ls };
        request(ls, q);
}

/* A call that brought no page: a cursor the API dropped is the account
 * moving, anything else is a failed page. */
static void page_not_taken(Listing *ls, PageReq *q, const CallResult *r, const Reply *reply) {
        /* A cursor the API no longer knows: the phone it names was
         * removed meanwhile. */
        if (!ls->pages && ls->cursor[0] && r->http_status == 400 && reply->api) {
                if (streq(ls->refused_at, ls->cursor)) {
                        changed(ls, "the API refuses the cursor again");
                        return;
                }
                memcpy(ls->refused_at, ls->cursor, sizeof ls->refused_at);
                step_back(ls, q, "the API no longer takes the cursor");
                return;
        }
        page_failed(ls, q, reply);
}

/* Page 1 tells the mode: a total_pages means page mode, none means cursor
 * mode.  False when the listing ended. */
static bool first_page_mode(Listing *ls, PageReq *q, const PhonePage *page) {
        if (q != &ls->reqs[0] || q->page != 1 || ls->pages || ls->cursor[0])
                return true;
        if (page->total_pages < 0)
                return true;
        if (page->current_page != 1 || page->total_pages > LIST_MAX_PAGES) {
                end(ls, -EBADMSG, page->total_pages > LIST_MAX_PAGES ?
                    "the account has more pages than retired lists" : "the API answered another page");
                return false;
        }
        ls->pages = ls->stats.pages = true;
        ls->total_pages = (unsigned) page->total_pages;
        return true;
}

/* The last page read again only to see whether it moved: its phones are in
 * already. */
static void last_page_again(Listing *ls, const PhonePage *page) {
        if (page->total_pages != (int64_t) ls->total_pages) {
                changed(ls, "the number of pages moved");
                return;
        }
        if (page_print(page) != ls->last_print) {
                changed(ls, "the last page is not what it was");
                return;
        }
        end(ls, 0, NULL);
}

/* Page 1 in page mode asks for all the other pages at once. */
static void other_pages(Listing *ls) {
        PageReq *n;

        if (ls->total_pages <= 1) {
                /* One read of one page: nothing can have moved under it. */
                end(ls, 0, NULL);
                return;
        }
        n = reallocarray(ls->reqs, ls->total_pages, sizeof(PageReq));
        if (!n) {
                end(ls, -ENOMEM, "out of memory");
                return;
        }
        ls->reqs = n;
        ls->n_reqs = ls->total_pages;
        ls->pages_left = ls->total_pages - 1;
        for (unsigned i = 1; i < ls->total_pages; i++)
                ls->reqs[i] = (PageReq) { .ls = ls, .page = i + 1 };
        for (unsigned i = 1; i < ls->total_pages && ls->running; i++)
                request(ls, &ls->reqs[i]);
}

/* By page number: each page must agree with page 1, or the account moved. */
static void page_mode_next(Listing *ls, PageReq *q, const PhonePage *page) {
        if (page->total_pages != (int64_t) ls->total_pages) {
                changed(ls, "the number of pages moved");
                return;
        }
        if (q->page < ls->total_pages && page->n + page->n_skipped != API_PAGE_LIMIT) {
                changed(ls, "a page before the last is not full");
                return;
        }
        if (q->page == 1) {
                other_pages(ls);
                return;
        }
        if (--ls->pages_left == 0)
                all_pages_in(ls);
}

/* By cursor: the API decides where the listing ends, so bound it, and do not
 * believe a listing that cannot end. */
static void cursor_mode_next(Listing *ls, PageReq *q, const PhonePage *page) {
        if (ls->stats.calls > LIST_MAX_PAGES * (LIST_RESTARTS + 1)) {
                end(ls, -E2BIG, "the account has more pages than retired lists");
                return;
        }
        if (page->has_more && page->n == 0) {
                log_error("Listing phones: the API says there is more after an empty page; stopping the listing.");
                end(ls, -EBADMSG, "the API's listing does not end (an empty page says has_more)");
                return;
        }
        /* A page with phones always has a cursor: api_parse_page() takes the
         * last phone's id when the API gives none.  (And were it empty, the
         * next page would start over, and the phones seen twice tell.) */
        if (page->has_more && streq(page->last_id, ls->cursor)) {
                log_error("Listing phones: the API repeats the cursor %s; stopping the listing.", ls->cursor);
                end(ls, -EBADMSG, "the API's list cursor does not move");
                return;
        }
        if (!page->has_more) {
                /* An empty end right after "has_more": maybe the end, maybe a
                 * cursor whose phone went away.  A step back tells: the same
                 * empty end after the same cursor again is the end. */
                if (page->n == 0 && ls->cursor[0] && !streq(ls->empty_at, ls->cursor)) {
                        memcpy(ls->empty_at, ls->cursor, sizeof ls->empty_at);
                        step_back(ls, q, "an empty last page after has_more");
                        return;
                }
                end(ls, 0, NULL);
                return;
        }
        step_forward(ls, q, page->last_id);
}

static void on_page(Diga *d, const CallResult *r, void *userdata) {
        PageReq *q = userdata;
        Listing *ls = q->ls;
        _cleanup_(phone_page_done) PhonePage page = {};
        _cleanup_free_ char *why = NULL, *msg = NULL;
        Reply reply;
        int k;

        q->call = NULL;
        if (!ls->running)
                return;
        if (r->not_sent) {
                end(ls, -ECANCELED, "a list call was not sent");
                return;
        }
        ls->stats.calls++;
        reply = (Reply) {
                .kind = CALL_LIST, .status = r->http_status, .retry_after = r->retry_after,
                .error = r->error, .asked_at = r->asked_at,
        };
        if (r->http_status == 200) {
                if (!r->json)
                        reply.error = "not JSON";
                else if ((k = api_parse_page(ls->api, r->body, r->body_len, &page, &why)) < 0)
                        reply.error = why ? why : strerror(-k);
                else
                        reply.api = true;
        } else {
                reply.api = r->json && api_error_body(ls->api, r->body, r->body_len, &msg);
                reply.message = msg;
        }
        if (!reply.api || r->http_status != 200) {
                page_not_taken(ls, q, r, &reply);
                return;
        }

        if (!first_page_mode(ls, q, &page))
                return;
        q->done = true;
        if (ls->pages && q == &ls->last) {
                last_page_again(ls, &page);
                return;
        }
        /* (Before take(), which moves the phones out of the page.) */
        if (ls->pages && q->page == ls->total_pages)
                ls->last_print = page_print(&page);
        k = take(ls, &page);
        if (k < 0) {
                end(ls, k, k == -ENOMEM ? "out of memory" : "cannot keep the phones listed");
                return;
        }
        if (k > 0) {
                changed(ls, "a phone was listed twice");
                return;
        }

        if (ls->pages)
                page_mode_next(ls, q, &page);
        else
                cursor_mode_next(ls, q, &page);
}

static void request(Listing *ls, PageReq *q) {
        int r;

        if (!ls->running)
                return;
        r = diga_call(ls->diga, &(CallSpec) {
                .kind = CALL_LIST, .page = q->page, .id = !q->page && ls->cursor[0] ? ls->cursor : NULL,
                .urgent = q == &ls->last, .done = on_page, .userdata = q,
        }, &q->call);
        if (r < 0) {
                log_error_errno(r, "Cannot list phones: %m");
                end(ls, r, "cannot list phones");
        }
}

int listing_new(sd_event *e, Diga *d, Api *api, const World *w, ListingKeep keep, ListingDone done,
                void *userdata, Listing **ret) {
        Listing *ls = calloc(1, sizeof(Listing));

        if (!ls)
                return -ENOMEM;
        *ls = (Listing) { .event = sd_event_ref(e), .diga = d, .api = api, .world = *w, .keep = keep,
                          .done = done, .userdata = userdata };
        ls->last.ls = ls;
        *ret = ls;
        return 0;
}

void listing_start(Listing *ls) {
        int r;

        if (ls->running)
                return;
        reset(ls);
        ls->stats = (ListingStats) {};
        ls->running = true;
        r = begin(ls);
        if (r < 0)
                end(ls, r, "out of memory");
}

void listing_start_by_cursor(Listing *ls) {
        ls->cursor_only = true;
        listing_start(ls);
}

void listing_stop(Listing *ls, const char *why) {
        end(ls, -ECANCELED, why);
}

bool listing_running(Listing *ls) {
        return ls->running;
}

const ListingStats *listing_stats(Listing *ls) {
        return &ls->stats;
}

Listing *listing_free(Listing *ls) {
        if (!ls)
                return NULL;
        ls->running = false;
        reqs_drop(ls);
        idset_done(&ls->seen);
        sd_event_unref(ls->event);
        free(ls);
        return NULL;
}
