/* SPDX-License-Identifier: MIT */
/* The Diga client: libcurl's multi interface driven by sd-event (curl tells
 * us which sockets and which timeout to watch), behind the pacer every call
 * goes through (pacer.c).  One multi handle means one connection pool for
 * every call.  What the answers mean is not decided here (reconcile.c). */

#include <curl/curl.h>
#include <fcntl.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/stat.h>

#include "api.h"
#include "diga.h"
#include "pacer.h"
#include "log.h"
#include "macro.h"

struct Call {
        Diga *d;
        CallKind kind;
        char *path;
        CallDone done;             /* NULL once cancelled while out: the answer is dropped */
        CallStart start;
        void *userdata;
        CURL *easy;
        char *body;
        size_t len, cap;
        bool too_big;
        usec_t started;            /* CLOCK_MONOTONIC */
        int64_t asked_at;          /* CLOCK_REALTIME */
        char errbuf[CURL_ERROR_SIZE];
        Call *prev, *next;         /* in the queue, or among the running */
};

struct Diga {
        sd_event *event;
        CURLM *multi;
        sd_event_source *curl_timer, *pace_timer, *drain_later;
        char *base_url, *token, *ca_file;
        long timeout_ms;
        Pacer pacer;
        bool paused;
        Call *head, *tail;         /* the queue */
        size_t queued;
        Call *running;
        unsigned owned;            /* calls out whose answer someone waits for */
        CallDone on_answer;
        void *on_answer_userdata;
};

static void call_free(Call *c) {
        if (!c)
                return;
        if (c->easy)
                curl_easy_cleanup(c->easy);
        free(c->path);
        free(c->body);
        free(c);
}

static void unqueue(Diga *d, Call *c) {
        if (c->prev)
                c->prev->next = c->next;
        else
                d->head = c->next;
        if (c->next)
                c->next->prev = c->prev;
        else
                d->tail = c->prev;
        c->prev = c->next = NULL;
        d->queued--;
}

static void unrun(Diga *d, Call *c) {
        if (c->prev)
                c->prev->next = c->next;
        else
                d->running = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
}

static size_t on_body(char *p, size_t size, size_t n, void *userdata) {
        Call *c = userdata;
        size_t add = size * n;
        char *b;

        /* Past the limit, returning short makes curl fail the transfer. */
        if (c->len + add > API_MAX_BODY) {
                c->too_big = true;
                return 0;
        }
        /* Grown by doubling: a realloc per chunk copies a large answer over
         * and over (under ASan, which never grows in place, 4 MiB took
         * seconds). */
        if (c->len + add + 1 > c->cap) {
                size_t cap = c->cap ? c->cap * 2 : 16384;

                if (cap < c->len + add + 1)
                        cap = c->len + add + 1;
                if (cap > API_MAX_BODY + 1)
                        cap = API_MAX_BODY + 1;

                b = realloc(c->body, cap);
                if (!b)
                        return 0;
                c->body = b;
                c->cap = cap;
        }
        b = c->body;
        memcpy(b + c->len, p, add);
        c->len += add;
        b[c->len] = 0;
        return add;
}

static void dispatch(Diga *d);

/* Every call ends in exactly one callback, also when it is never sent. */
static void not_sent(Diga *d, Call *c, const char *why) {
        CallResult r = { .kind = c->kind, .not_sent = true, .error = why, .retry_after = -1,
                         .method = call_kind_to_string(c->kind), .path = c->path };

        if (c->done)
                c->done(d, &r, c->userdata);
        call_free(c);
}

/* The API's clock, from its Date header: the second clock not_before is held against. */
static int64_t api_date(CURL *easy) {
        struct curl_header *h;
        time_t t;

        if (curl_easy_header(easy, "Date", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
                return 0;
        t = curl_getdate(h->value, NULL);
        return t > 0 ? (int64_t) t * (int64_t) USEC_PER_SEC : 0;
}

static void finish(Diga *d, CURL *easy, CURLcode res) {
        Call *c = NULL;
        long status = 0;
        curl_off_t retry_after = 0;
        long request_size = 0;
        const char *ctype = NULL;
        CallResult r;

        (void) curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &c);
        (void) curl_multi_remove_handle(d->multi, easy);
        pacer_done(&d->pacer);
        unrun(d, c);
        (void) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        (void) curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after);
        (void) curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ctype);
        (void) curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_size);
        r = (CallResult) {
                .kind = c->kind,
                .http_status = res == CURLE_OK ? (int) status : 0,
                .error = res == CURLE_OK ? NULL :
                         c->too_big ? "answer larger than 4 MiB" :
                         c->errbuf[0] ? c->errbuf : curl_easy_strerror(res),
                .body = c->body,
                .body_len = c->len,
                .json = ctype && strncasecmp(ctype, "application/json", 16) == 0,
                .unsent = res != CURLE_OK && request_size == 0,
                .retry_after = retry_after > 0 ? (int64_t) retry_after : -1,
                .api_date = res == CURLE_OK ? api_date(easy) : 0,
                .asked_at = c->asked_at,
                .answered_at = (int64_t) now(CLOCK_REALTIME),
                .latency_ms = (int64_t) ((now(CLOCK_MONOTONIC) - c->started) / USEC_PER_MSEC),
                .method = call_kind_to_string(c->kind),
                .path = c->path,
        };
        if (d->on_answer)
                d->on_answer(d, &r, d->on_answer_userdata);
        if (c->done) {
                d->owned--;
                c->done(d, &r, c->userdata);
        }
        call_free(c);
}

static void drain(Diga *d) {
        CURLMsg *m;
        int left;

        while ((m = curl_multi_info_read(d->multi, &left)))
                if (m->msg == CURLMSG_DONE)
                        finish(d, m->easy_handle, m->data.result);
        dispatch(d);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Diga *d = userdata;
        int action = 0, running;

        if (revents & (EPOLLIN | EPOLLHUP))
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & EPOLLERR)
                action |= CURL_CSELECT_ERR;
        (void) curl_multi_socket_action(d->multi, fd, action, &running);
        drain(d);
        return 0;
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        Diga *d = userp;
        sd_event_source *io = socketp;
        uint32_t events = 0;

        if (what == CURL_POLL_REMOVE) {
                if (io) {
                        (void) sd_event_source_disable_unref(io);
                        (void) curl_multi_assign(d->multi, fd, NULL);
                }
                return 0;
        }
        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;
        if (io) {
                if (sd_event_source_set_io_events(io, events) < 0)
                        return -1;
                return sd_event_source_set_enabled(io, SD_EVENT_ON) < 0 ? -1 : 0;
        }
        if (sd_event_add_io(d->event, &io, fd, events, on_io, d) < 0)
                return -1;
        if (curl_multi_assign(d->multi, fd, io) != CURLM_OK) {
                (void) sd_event_source_disable_unref(io);
                return -1;
        }
        return 0;
}

static int on_curl_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Diga *d = userdata;
        int running;

        (void) curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        drain(d);
        return 0;
}

static int arm(sd_event_source *s, usec_t when) {
        int r = sd_event_source_set_time(s, when);
        return r < 0 ? r : sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int on_curl_timeout(CURLM *m, long timeout_ms, void *userp) {
        Diga *d = userp;

        if (timeout_ms < 0)
                return sd_event_source_set_enabled(d->curl_timer, SD_EVENT_OFF) < 0 ? -1 : 0;
        return arm(d->curl_timer, now(CLOCK_MONOTONIC) + (usec_t) timeout_ms * USEC_PER_MSEC) < 0 ? -1 : 0;
}

static int on_drain_later(sd_event_source *s, void *userdata) {
        drain(userdata);
        return 0;
}

static int on_pace(sd_event_source *s, uint64_t usec, void *userdata) {
        dispatch(userdata);
        return 0;
}

static int prepare(Diga *d, Call *c) {
        _cleanup_free_ char *url = NULL;
        CURL *e;

        if (asprintf_or_null(&url, "%s%s", d->base_url, c->path) < 0)
                return -ENOMEM;
        e = c->easy = curl_easy_init();
        if (!e)
                return -ENOMEM;
        /* Each of these only fails for an unknown option or out of memory;
         * the options are this libcurl's (7.88), and curl copies the strings. */
        (void) curl_easy_setopt(e, CURLOPT_URL, url);
        (void) curl_easy_setopt(e, CURLOPT_PRIVATE, c);
        (void) curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        (void) curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
        (void) curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
        (void) curl_easy_setopt(e, CURLOPT_USERAGENT, "retired/" VERSION);
        (void) curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long) CURLAUTH_BEARER);
        (void) curl_easy_setopt(e, CURLOPT_XOAUTH2_BEARER, d->token);
        (void) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, d->timeout_ms);
        (void) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, d->timeout_ms);
        (void) curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http");
        (void) curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        if (d->ca_file && d->ca_file[0])
                (void) curl_easy_setopt(e, CURLOPT_CAINFO, d->ca_file);
        if (c->kind == CALL_DELETE) {
                (void) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
                /* libcurl silently sends a request again when a reused
                 * connection turns out to be dead; a DELETE must never go out
                 * twice unknown to the ledger, so it takes a fresh one. */
                (void) curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        }
        return 0;
}

static void dispatch(Diga *d) {
        while (d->head && !d->paused) {
                Call *c = d->head;
                usec_t wait = pacer_wait(&d->pacer, now(CLOCK_MONOTONIC));
                int r, running;

                if (wait == USEC_INFINITY)
                        return;
                if (wait > 0) {
                        if (arm(d->pace_timer, wait) < 0)
                                log_error("Cannot arm the pace timer: calls wait for the next answer.");
                        return;
                }
                unqueue(d, c);
                /* Everything that can fail is done before the start hook, which
                 * commits the intent (a DELETE's in_flight row): once it has, the
                 * call goes on the wire. */
                r = prepare(d, c);
                if (r < 0) {
                        log_error_errno(r, "Cannot start %s %s: %m", call_kind_to_string(c->kind), c->path);
                        not_sent(d, c, "cannot start the call");
                        continue;
                }
                if (c->start && c->start(c->userdata) < 0) {
                        not_sent(d, c, "not started");
                        continue;
                }
                /* The hook may have waited on the disk: count the call when it leaves. */
                c->started = now(CLOCK_MONOTONIC);
                c->asked_at = (int64_t) now(CLOCK_REALTIME);
                log_debug("start %s %s at %.6f tokens %.3f", call_kind_to_string(c->kind), c->path,
                          usec_to_sec((int64_t) c->started), d->pacer.tokens);
                if (curl_multi_add_handle(d->multi, c->easy) != CURLM_OK) {
                        /* After the hook: the owner treats it as possibly sent. */
                        not_sent(d, c, "cannot hand the call to libcurl");
                        continue;
                }
                pacer_take(&d->pacer, c->started);
                if (c->done)
                        d->owned++;
                c->next = d->running;
                if (d->running)
                        d->running->prev = c;
                d->running = c;
                /* Send it now, when it is counted, not when this event loop
                 * iteration ends (it may be busy recording a page of
                 * outcomes); what this completes is collected just after. */
                (void) curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
                if (sd_event_source_set_enabled(d->drain_later, SD_EVENT_ONESHOT) < 0)
                        log_error("Cannot schedule collecting answers: they are collected on the next event.");
        }
}

int diga_call(Diga *d, const CallSpec *spec, Call **ret) {
        _cleanup_free_ Call *c = NULL;
        int r;

        /* Only a UUID or a number goes into a path or a query: nothing else
         * can be smuggled into the URL, whatever the ledger or the API said. */
        if (spec->id && !uuid_is_valid(spec->id))
                return -EINVAL;
        if ((spec->kind != CALL_LIST && (!spec->id || spec->page)) || (spec->id && spec->page))
                return -EINVAL;
        c = calloc(1, sizeof(Call));
        if (!c)
                return -ENOMEM;
        *c = (Call) { .d = d, .kind = spec->kind, .start = spec->start, .done = spec->done,
                      .userdata = spec->userdata };
        /* A fixed order, so that pages (and cursors) mean the same thing throughout a listing. */
        if (spec->kind != CALL_LIST)
                r = asprintf_or_null(&c->path, "/v1/phone/%s", spec->id);
        else if (spec->page)
                r = asprintf_or_null(&c->path, "/v1/phone/?page=%u&limit=%u&order=asc", spec->page, API_PAGE_LIMIT);
        else if (spec->id)
                r = asprintf_or_null(&c->path, "/v1/phone/?limit=%u&order=asc&after=%s", API_PAGE_LIMIT, spec->id);
        else
                r = asprintf_or_null(&c->path, "/v1/phone/?limit=%u&order=asc", API_PAGE_LIMIT);
        if (r < 0)
                return r;
        if (spec->urgent) {
                c->next = d->head;
                if (d->head)
                        d->head->prev = c;
                d->head = c;
                if (!d->tail)
                        d->tail = c;
        } else {
                c->prev = d->tail;
                if (d->tail)
                        d->tail->next = c;
                else
                        d->head = c;
                d->tail = c;
        }
        d->queued++;
        if (ret)
                *ret = c;
        TAKE_PTR(c);
        dispatch(d);
        return 0;
}

static bool is_queued(Diga *d, Call *c) {
        for (Call *q = d->head; q; q = q->next)
                if (q == c)
                        return true;
        return false;
}

bool diga_cancel(Diga *d, Call *c) {
        if (!is_queued(d, c))
                return false;
        unqueue(d, c);
        not_sent(d, c, "cancelled");
        return true;
}

void diga_forget(Diga *d, Call *c) {
        if (is_queued(d, c)) {
                unqueue(d, c);
                call_free(c);
                return;
        }
        if (c->done)
                d->owned--;
        c->done = NULL;
}

void diga_on_answer(Diga *d, CallDone cb, void *userdata) {
        d->on_answer = cb;
        d->on_answer_userdata = userdata;
}

void diga_drop_queued(Diga *d) {
        while (d->head) {
                Call *c = d->head;
                unqueue(d, c);
                not_sent(d, c, "dropped");
        }
}

void diga_hold(Diga *d, usec_t until) {
        log_debug("hold at %.6f until %.6f", usec_to_sec((int64_t) now(CLOCK_MONOTONIC)),
                  usec_to_sec((int64_t) until));
        pacer_hold(&d->pacer, until);
        dispatch(d);
}

void diga_set_paused(Diga *d, bool paused) {
        d->paused = paused;
        dispatch(d);
}

void diga_rate_backoff(Diga *d) {
        pacer_backoff(&d->pacer, now(CLOCK_MONOTONIC));
}

unsigned diga_in_flight(Diga *d) {
        return d->owned;
}

size_t diga_queued(Diga *d) {
        return d->queued;
}

static int set_string(char **p, const char *v) {
        char *n = strdup(v ? v : "");
        if (!n)
                return -ENOMEM;
        erase_and_free(*p);
        *p = n;
        return 0;
}

int diga_set_config(Diga *d, const Config *c, const char *token) {
        if (set_string(&d->base_url, c->base_url) < 0 || set_string(&d->token, token) < 0 ||
            set_string(&d->ca_file, c->ca_file) < 0)
                return -ENOMEM;
        d->timeout_ms = (long) (c->timeout * (double) MSEC_PER_SEC);
        pacer_configure(&d->pacer, c->rate, c->burst, c->concurrency);
        if (curl_multi_setopt(d->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) c->concurrency) != CURLM_OK ||
            curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long) c->concurrency) != CURLM_OK)
                log_warning("Cannot size libcurl's connection pool; it keeps its defaults.");
        dispatch(d);
        return 0;
}

int diga_new(sd_event *e, const Config *c, const char *token, Diga **ret) {
        Diga *d;
        int r;

        d = calloc(1, sizeof(Diga));
        if (!d)
                return -ENOMEM;
        d->event = sd_event_ref(e);
        pacer_init(&d->pacer, c->rate, c->burst, c->concurrency, now(CLOCK_MONOTONIC));
        d->multi = curl_multi_init();
        if (!d->multi) {
                diga_free(d);
                return -ENOMEM;
        }
        if (curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
            curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, d) != CURLM_OK ||
            curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, on_curl_timeout) != CURLM_OK ||
            curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, d) != CURLM_OK) {
                diga_free(d);
                return -EIO;
        }
        /* Timers accurate to a millisecond: sd-event's default slack of
         * 250 ms would bunch calls up and break the pacing bound. */
        r = sd_event_add_time(e, &d->curl_timer, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_curl_timer, d);
        if (r >= 0)
                r = sd_event_add_time(e, &d->pace_timer, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_pace, d);
        if (r >= 0)
                r = sd_event_add_defer(e, &d->drain_later, on_drain_later, d);
        if (r >= 0)
                r = sd_event_source_set_enabled(d->drain_later, SD_EVENT_OFF);
        if (r >= 0)
                r = diga_set_config(d, c, token);
        if (r < 0) {
                diga_free(d);
                return r;
        }
        *ret = d;
        return 0;
}

Diga *diga_free(Diga *d) {
        if (!d)
                return NULL;
        /* Owners drop or finish their calls first; whatever is left is freed silently. */
        for (Call *c = d->head, *n; c; c = n) {
                n = c->next;
                call_free(c);
        }
        for (Call *c = d->running, *n; c; c = n) {
                n = c->next;
                (void) curl_multi_remove_handle(d->multi, c->easy);
                call_free(c);
        }
        if (d->multi)
                (void) curl_multi_cleanup(d->multi);
        (void) sd_event_source_disable_unref(d->curl_timer);
        (void) sd_event_source_disable_unref(d->pace_timer);
        (void) sd_event_source_disable_unref(d->drain_later);
        sd_event_unref(d->event);
        erase_and_free(d->token);
        free(d->base_url);
        free(d->ca_file);
        free(d);
        return NULL;
}
