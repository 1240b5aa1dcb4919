/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for the Retry-After path: from the header on the wire,
 * through libcurl (CURLINFO_RETRY_AFTER) and daemon/diga.c's finish() into
 * CallResult.retry_after, to daemon/reconcile.c's reconcile_backoff() and
 * its RETRY_AFTER_MAX clamp.  See tests/fuzz/README.md for why this shape.
 * The client (diga.c, pacer.c), the decisions (reconcile.c) and log.c are
 * linked as they are.
 *
 * A responder thread listens on 127.0.0.1 (an ephemeral port bound once in
 * LLVMFuzzerInitialize) and answers each connection with the response the
 * current input describes; the real Diga client (diga_new + diga_call, driven
 * by a private sd-event loop) makes the call, exactly as the daemon does.
 *
 * Input:
 *   byte 0  the status: 429, 503, 500 or 200 (the first three are the
 *           transient answers the decisions retry; 200 with a bad body is too)
 *   byte 1  the attempt number given to reconcile_backoff (1..100, the range of
 *           retry.max_attempts)
 *   byte 2  retry.base_delay / retry.max_delay, from a table of the extremes
 *           conf/parse.c accepts, and the drand48() seed
 *   rest    the Retry-After value(s): split at '\n', one "Retry-After: LINE"
 *           header per piece (at most 16), so a response may repeat it, and
 *           no input can end the header block or add another header.
 *
 * Checked:
 *   - the call is answered with the status sent (or fails in transport:
 *     status 0, e.g. when curl refuses a header with a NUL byte);
 *   - CallResult.retry_after is -1 (none) or > 0, never 0 or negative, even
 *     for HTTP-dates in the past (for which curl reports a negative delay);
 *   - when the last header is plain decimal seconds, the value is exactly
 *     that number;
 *   - reconcile_backoff() is >= 0, honours the delay (>= min(retry_after,
 *     3600) s) and is bounded by max(retry.max_delay, 3600) s whatever the
 *     header. */

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diga.h"
#include "log.h"
#include "macro.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>

#define FUZZ_ID "3c90c3cc-0d44-4b50-8888-8dd25736052a"
#define MAX_HEADERS 16

#define CHECK(cond) do { if (!(cond)) { \
        fprintf(stderr, "fuzz-retry-after: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        abort(); } } while (0)

static int listen_fd = -1;
static pthread_t responder;
static sem_t served;
/* The response for the connection being served; owned by the fuzz loop,
 * which waits for `served` before it frees or replaces it. */
static char *response;
static size_t response_len;

static sd_event *event;
static Diga *diga;
static Config config;
static char base_url[64];

static void *respond(void *arg) {
        for (;;) {
                struct timeval tv = { .tv_sec = 5 };
                char req[8192];
                size_t got = 0;
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        abort();
                }
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                /* Read the whole request first: closing with unread bytes
                 * would reset the connection under curl. */
                while (got < sizeof req - 1) {
                        ssize_t n = recv(fd, req + got, sizeof req - 1 - got, 0);
                        if (n <= 0)
                                break;
                        got += (size_t) n;
                        req[got] = 0;
                        if (strstr(req, "\r\n\r\n"))
                                break;
                }
                for (size_t off = 0; off < response_len;) {
                        ssize_t n = send(fd, response + off, response_len - off, MSG_NOSIGNAL);
                        if (n <= 0)
                                break;
                        off += (size_t) n;
                }
                shutdown(fd, SHUT_WR);
                while (recv(fd, req, sizeof req, 0) > 0)
                        ;
                close(fd);
                sem_post(&served);
        }
        return NULL;
}

static void cleanup(void) {
        diga = diga_free(diga);
        event = sd_event_unref(event);
        free(config.base_url);
        free(config.token_file);
        free(config.ca_file);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;

        log_set_max_level(LOG_WARNING);
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                abort();
        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *) &sa, sizeof sa) < 0 ||
            listen(listen_fd, 16) < 0 || getsockname(listen_fd, (struct sockaddr *) &sa, &len) < 0)
                abort();
        snprintf(base_url, sizeof base_url, "http://127.0.0.1:%u", (unsigned) ntohs(sa.sin_port));
        if (sem_init(&served, 0, 0) < 0 || pthread_create(&responder, NULL, respond, NULL) != 0)
                abort();

        /* The settings a real config could hold, with a pace that never
         * makes the fuzzer wait. */
        config = (Config) {
                .base_url = strdup(base_url), .token_file = strdup(""), .ca_file = strdup(""),
                .timeout = 5, .rate = 10000, .burst = 10000, .concurrency = 1,
                .max_attempts = 8, .base_delay = 1, .max_delay = 300,
        };
        if (!config.base_url || !config.token_file || !config.ca_file)
                abort();
        if (sd_event_new(&event) < 0 || diga_new(event, &config, "fuzz-token", &diga) < 0)
                abort();
        atexit(cleanup);
        return 0;
}

typedef struct Answer {
        bool done;
        CallResult r;           /* copied out; body and error not kept */
} Answer;

static void on_done(Diga *d, const CallResult *r, void *userdata) {
        Answer *o = userdata;

        o->r = *r;
        o->r.body = NULL;
        o->r.error = NULL;
        o->r.path = NULL;
        o->done = true;
}

static const int statuses[] = { 429, 503, 500, 200 };
static const double delays[][2] = {
        { 1, 300 },             /* the defaults */
        { 0.001, 0.001 },       /* the smallest */
        { 3600, 86400 },        /* the largest */
        { 0.001, 86400 },
        { 3600, 3600 },
        { 0.5, 10 },
        { 60, 60 },
        { 0.001, 3600 },
};

/* Plain decimal seconds, as RFC 9110 writes delay-seconds; -1 otherwise. */
static int64_t plain_seconds(const char *s, size_t n) {
        int64_t v = 0;

        if (n == 0 || n > 15)
                return -1;
        for (size_t i = 0; i < n; i++) {
                if (!isdigit((unsigned char) s[i]))
                        return -1;
                v = v * 10 + (s[i] - '0');
        }
        return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *resp = NULL;
        size_t resp_size = 0, n_headers = 0;
        FILE *f;
        Answer o = {};
        int status;
        unsigned attempt;
        double base, max;
        const char *v, *end, *last = NULL;
        size_t last_len = 0;
        bool has_nul;
        struct timespec deadline;

        if (size < 3)
                return 0;
        status = statuses[data[0] % ELEMENTSOF(statuses)];
        attempt = 1 + data[1] % 100;
        base = delays[data[2] % ELEMENTSOF(delays)][0];
        max = delays[data[2] % ELEMENTSOF(delays)][1];
        v = (const char *) data + 3;
        end = (const char *) data + size;
        has_nul = memchr(v, 0, (size_t) (end - v)) != NULL;

        f = open_memstream(&resp, &resp_size);
        if (!f)
                abort();
        fprintf(f, "HTTP/1.1 %d Fuzz\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                   "Connection: close\r\n", status);
        for (const char *p = v; n_headers < MAX_HEADERS; n_headers++) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t n = nl ? (size_t) (nl - p) : (size_t) (end - p);

                fputs("Retry-After: ", f);
                fwrite(p, 1, n, f);
                fputs("\r\n", f);
                last = p;
                last_len = n;
                if (!nl)
                        break;
                p = nl + 1;
        }
        fputs("\r\n{}", f);
        if (fclose(f) != 0)
                abort();
        response = resp;
        response_len = resp_size;

        if (diga_call(diga, &(CallSpec) { .kind = CALL_GET, .id = FUZZ_ID, .done = on_done, .userdata = &o }, NULL) < 0)
                abort();
        while (!o.done)
                if (sd_event_run(event, UINT64_MAX) < 0)
                        abort();
        /* The responder is done with `resp` before it is freed. */
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 8;
        while (sem_timedwait(&served, &deadline) < 0)
                if (errno != EINTR)
                        CHECK(!"the responder never finished");

        const CallResult *r = &o.r;
#ifdef FUZZ_TRACE
        fprintf(stderr, "status %d -> http_status %d retry_after %" PRId64 "\n", status, r->http_status, r->retry_after);
#endif
        CHECK(!r->not_sent);
        CHECK(r->http_status == status || r->http_status == 0);
        CHECK(r->retry_after == -1 || r->retry_after > 0);
        if (r->http_status == status && !has_nul && last) {
                int64_t s = plain_seconds(last, last_len);
                if (s >= 0)
                        CHECK(r->retry_after == (s > 0 ? s : -1));
        }

        /* What the decisions make of it. */
        World w = { .base_delay = sec_to_usec(base), .max_delay = sec_to_usec(max) };
        double honoured = r->retry_after > 0 ? (double) (r->retry_after < RETRY_AFTER_MAX ? r->retry_after : RETRY_AFTER_MAX) : 0;
        srand48(data[2]);
        for (unsigned a = 1; a <= 2; a++) {
                int64_t u;

                w.jitter = drand48();
                u = (int64_t) reconcile_backoff(&w, a == 1 ? 1 : attempt, r->retry_after);
                CHECK(u >= 0);
                CHECK((double) u <= fmax(max, (double) RETRY_AFTER_MAX) * 1e6 + 1);
                CHECK((double) u <= fmax(max, honoured) * 1e6 + 1);
                CHECK((double) u >= honoured * 1e6 - 1);
        }
        response = NULL;
        response_len = 0;
        return 0;
}
