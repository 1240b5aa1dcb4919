/* SPDX-License-Identifier: MIT */
/* The Diga client: libcurl's multi interface driven by sd-event (curl tells
 * us which sockets and which timeout to watch), behind one pacer that every
 * call goes through: a token bucket (rate, burst) and a cap on calls in
 * flight.  One multi handle means one connection pool for every call. */

#include <curl/curl.h>
#include <fcntl.h>
#include <math.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>

#include "daemon.h"
#include "log.h"
#include "macro.h"

typedef struct Call {
        Diga *d;
        CallKind kind;
        char *path;
        CallDone done;
        CallStart start;
        void *userdata;
        CURL *easy;
        char *body;
        size_t len;
        bool too_big;
        uint64_t started;
        char errbuf[CURL_ERROR_SIZE];
        struct Call *next;              /* in the queue */
        struct Call *rprev, *rnext;     /* among the running */
} Call;

struct Diga {
        sd_event *event;
        CURLM *multi;
        sd_event_source *curl_timer, *pace_timer;
        char *base_url, *token, *ca_file;
        long timeout_ms;
        double rate, factor, tokens;
        unsigned burst, concurrency, in_flight;
        uint64_t refilled, hold_until;
        bool paused;
        Call *head, *tail;
        size_t queued;
        Call *running;
        sd_event_source *drain_later;
};

static const char *const methods[] = { [CALL_LIST] = "GET", [CALL_GET] = "GET", [CALL_DELETE] = "DELETE" };

/* The clock now, not the event loop's cached time: the pacer must count a
 * call when it really leaves, however long the iteration has run. */
static uint64_t now_mono(Diga *d) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void call_free(Call *c) {
        if (!c)
                return;
        if (c->easy)
                curl_easy_cleanup(c->easy);
        free(c->path);
        free(c->body);
        free(c);
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
        b = realloc(c->body, c->len + add + 1);
        if (!b)
                return 0;
        memcpy(b + c->len, p, add);
        c->body = b;
        c->len += add;
        b[c->len] = 0;
        return add;
}

static void dispatch(Diga *d);

/* Every call ends in exactly one callback, also when it is never sent. */
static void not_sent(Diga *d, Call *c, const char *why) {
        CallResult r = { .kind = c->kind, .not_sent = true, .error = why, .retry_after = -1,
                         .method = methods[c->kind], .path = c->path };
        c->done(d, &r, c->userdata);
        call_free(c);
}

static void finish(Diga *d, CURL *easy, CURLcode res) {
        Call *c = NULL;
        long status = 0;
        curl_off_t retry_after = 0;
        const char *ctype = NULL;
        CallResult r;

        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &c);
        curl_multi_remove_handle(d->multi, easy);
        d->in_flight--;
        if (c->rprev)
                c->rprev->rnext = c->rnext;
        else
                d->running = c->rnext;
        if (c->rnext)
                c->rnext->rprev = c->rprev;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after);
        curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &ctype);
        r = (CallResult) {
                .kind = c->kind,
                .http_status = res == CURLE_OK ? (int) status : 0,
                .error = res == CURLE_OK ? NULL :
                         c->too_big ? "answer larger than 4 MiB" :
                         c->errbuf[0] ? c->errbuf : curl_easy_strerror(res),
                .body = c->body,
                .body_len = c->len,
                .json = ctype && strncasecmp(ctype, "application/json", 16) == 0,
                .retry_after = retry_after > 0 ? (int64_t) retry_after : -1,
                .latency_ms = (int64_t) ((now_mono(d) - c->started) / 1000),
                .method = methods[c->kind],
                .path = c->path,
        };
        c->done(d, &r, c->userdata);
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
        curl_multi_socket_action(d->multi, fd, action, &running);
        drain(d);
        return 0;
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        Diga *d = userp;
        sd_event_source *io = socketp;
        uint32_t events = 0;

        if (what == CURL_POLL_REMOVE) {
                if (io) {
                        sd_event_source_disable_unref(io);
                        curl_multi_assign(d->multi, fd, NULL);
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
        curl_multi_assign(d->multi, fd, io);
        return 0;
}

static int on_curl_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Diga *d = userdata;
        int running;

        curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        drain(d);
        return 0;
}

static int arm(sd_event_source *s, uint64_t when) {
        int r = sd_event_source_set_time(s, when);
        return r < 0 ? r : sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int on_curl_timeout(CURLM *m, long timeout_ms, void *userp) {
        Diga *d = userp;

        if (timeout_ms < 0)
                return sd_event_source_set_enabled(d->curl_timer, SD_EVENT_OFF) < 0 ? -1 : 0;
        return arm(d->curl_timer, now_mono(d) + (uint64_t) timeout_ms * 1000) < 0 ? -1 : 0;
}

static int on_drain_later(sd_event_source *s, void *userdata) {
        drain(userdata);
        return 0;
}

static int on_pace(sd_event_source *s, uint64_t usec, void *userdata) {
        dispatch(userdata);
        return 0;
}

/* The bucket fills at the effective rate.  After a 429 that rate is cut
 * (diga_rate_backoff) and climbs back linearly, a twentieth of the way per
 * second, so a throttled API is not hit at full speed again at once. */
static void refill(Diga *d, uint64_t now) {
        double dt = (double) (now - d->refilled) / 1e6;

        d->refilled = now;
        d->tokens = fmin((double) d->burst, d->tokens + dt * d->rate * d->factor);
        d->factor = fmin(1.0, d->factor + dt * 0.05);
}

static int start(Diga *d, Call *c) {
        _cleanup_free_ char *url = NULL;
        CURL *e;

        if (asprintf(&url, "%s%s", d->base_url, c->path) < 0)
                return -ENOMEM;
        e = c->easy = curl_easy_init();
        if (!e)
                return -ENOMEM;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, c);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "retired/" VERSION);
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long) CURLAUTH_BEARER);
        curl_easy_setopt(e, CURLOPT_XOAUTH2_BEARER, d->token);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, d->timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, d->timeout_ms);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        if (d->ca_file && d->ca_file[0])
                curl_easy_setopt(e, CURLOPT_CAINFO, d->ca_file);
        if (c->kind == CALL_DELETE) {
                curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
                /* libcurl silently sends a request again when a reused
                 * connection turns out to be dead; a DELETE must never go out
                 * twice unknown to the ledger, so it takes a fresh one. */
                curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        }
        c->started = now_mono(d);
        log_debug("start %s %s at %.6f tokens %.3f", methods[c->kind], c->path, (double) c->started / 1e6, d->tokens);
        if (curl_multi_add_handle(d->multi, e) != CURLM_OK)
                return -EIO;
        d->in_flight++;
        c->rnext = d->running;
        if (d->running)
                d->running->rprev = c;
        d->running = c;
        return 0;
}

static void dispatch(Diga *d) {
        while (d->head && !d->paused && d->in_flight < d->concurrency) {
                Call *c = d->head;
                uint64_t now = now_mono(d);
                int r, running;

                refill(d, now);
                if (now < d->hold_until) {
                        arm(d->pace_timer, d->hold_until);
                        return;
                }
                if (d->tokens < 1.0) {
                        double wait = (1.0 - d->tokens) / (d->rate * d->factor);
                        arm(d->pace_timer, now + (uint64_t) ceil(wait * 1e6));
                        return;
                }
                d->head = c->next;
                if (!d->head)
                        d->tail = NULL;
                d->queued--;
                /* The start hook commits the intent (a DELETE's in_flight row)
                 * before anything goes on the wire; if it cannot, nothing does. */
                if (c->start && c->start(c->userdata) < 0) {
                        not_sent(d, c, "not started");
                        continue;
                }
                /* The hook may have waited on the disk: count the call when it leaves. */
                refill(d, now_mono(d));
                d->tokens -= 1.0;
                r = start(d, c);
                if (r < 0) {
                        log_error_errno(r, "Cannot start %s %s: %m", methods[c->kind], c->path);
                        not_sent(d, c, "cannot start the call");
                        continue;
                }
                /* Send it now, when it is counted, not when this event loop
                 * iteration ends (it may be busy recording a page of
                 * outcomes); what this completes is collected just after. */
                curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
                sd_event_source_set_enabled(d->drain_later, SD_EVENT_ONESHOT);
        }
}

int diga_call(Diga *d, CallKind kind, const char *arg, bool urgent, CallStart start_hook, CallDone done,
              void *userdata) {
        Call *c;
        int r;

        /* Only a UUID goes into a path or a query: nothing else can be smuggled
         * into the URL, whatever the ledger or the API said. */
        if (arg && !uuid_is_valid(arg))
                return -EINVAL;
        if (kind != CALL_LIST && !arg)
                return -EINVAL;
        c = calloc(1, sizeof(Call));
        if (!c)
                return -ENOMEM;
        *c = (Call) { .d = d, .kind = kind, .start = start_hook, .done = done, .userdata = userdata };
        if (kind == CALL_LIST)
                r = asprintf(&c->path, "/v1/phone/?limit=%u%s%s", API_PAGE_LIMIT, arg ? "&after=" : "", arg ? arg : "");
        else
                r = asprintf(&c->path, "/v1/phone/%s", arg);
        if (r < 0) {
                free(c);
                return -ENOMEM;
        }
        if (urgent) {
                c->next = d->head;
                d->head = c;
                if (!d->tail)
                        d->tail = c;
        } else {
                if (d->tail)
                        d->tail->next = c;
                else
                        d->head = c;
                d->tail = c;
        }
        d->queued++;
        dispatch(d);
        return 0;
}

void diga_drop_queued(Diga *d) {
        while (d->head) {
                Call *c = d->head;
                d->head = c->next;
                if (!d->head)
                        d->tail = NULL;
                d->queued--;
                not_sent(d, c, "dropped");
        }
}

void diga_hold(Diga *d, uint64_t until) {
        if (until > d->hold_until)
                d->hold_until = until;
        dispatch(d);
}

void diga_set_paused(Diga *d, bool paused) {
        d->paused = paused;
        dispatch(d);
}

void diga_rate_backoff(Diga *d) {
        refill(d, now_mono(d));
        d->factor = fmax(d->factor / 2, 1.0 / 64);
}

unsigned diga_in_flight(Diga *d) {
        return d->in_flight;
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
        d->timeout_ms = (long) (c->timeout * 1000);
        d->rate = c->rate;
        d->burst = c->burst;
        d->concurrency = c->concurrency;
        d->tokens = fmin(d->tokens, (double) d->burst);
        curl_multi_setopt(d->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) c->concurrency);
        curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long) c->concurrency);
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
        d->factor = 1.0;
        d->tokens = c->burst;
        d->refilled = now_mono(d);
        d->multi = curl_multi_init();
        if (!d->multi) {
                diga_free(d);
                return -ENOMEM;
        }
        curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, d);
        curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, on_curl_timeout);
        curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, d);
        /* Timers accurate to a millisecond: sd-event's default slack of
         * 250 ms would bunch calls up and break the pacing bound. */
        r = sd_event_add_time(e, &d->curl_timer, CLOCK_MONOTONIC, UINT64_MAX, 1000, on_curl_timer, d);
        if (r >= 0)
                r = sd_event_add_time(e, &d->pace_timer, CLOCK_MONOTONIC, UINT64_MAX, 1000, on_pace, d);
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
                n = c->rnext;
                curl_multi_remove_handle(d->multi, c->easy);
                call_free(c);
        }
        if (d->multi)
                curl_multi_cleanup(d->multi);
        sd_event_source_disable_unref(d->curl_timer);
        sd_event_source_disable_unref(d->pace_timer);
        sd_event_source_disable_unref(d->drain_later);
        sd_event_unref(d->event);
        erase_and_free(d->token);
        free(d->base_url);
        free(d->ca_file);
        free(d);
        return NULL;
}

/* The key must be the owner's alone: a key others can read is a leaked key,
 * and we would rather not start than use it. */
int token_load(const Config *c, char **ret, char **where) {
        _cleanup_free_ char *path = NULL;
        _cleanup_(erase_and_freep) char *buf = NULL;
        _cleanup_close_ int fd = -1;
        const char *dir;
        struct stat st;
        ssize_t n;

        if (c->token_file[0])
                path = strdup(c->token_file);
        else if ((dir = getenv("CREDENTIALS_DIRECTORY")) && *dir)
                asprintf(&path, "%s/api-token", dir);
        else {
                *where = strdup("api.token_file is empty and there is no $CREDENTIALS_DIRECTORY "
                                "(LoadCredential=api-token:...)");
                return -ENOKEY;
        }
        if (!path)
                return -ENOMEM;
        *where = strdup(path);
        /* O_NONBLOCK: a FIFO put in its place must not hang the daemon. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if (st.st_mode & 0077)
                return -EPERM;
        if (st.st_size > TOKEN_MAX)
                return -EFBIG;
        buf = calloc(1, TOKEN_MAX + 2);
        if (!buf)
                return -ENOMEM;
        n = read(fd, buf, TOKEN_MAX + 1);
        if (n < 0)
                return negative_errno();
        if (n > TOKEN_MAX)
                return -EFBIG;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
                buf[--n] = 0;
        if (n == 0)
                return -ENODATA;
        for (ssize_t i = 0; i < n; i++)
                if (buf[i] <= ' ' || buf[i] > '~')
                        return -EBADMSG;
        *ret = TAKE_PTR(buf);
        return 0;
}
