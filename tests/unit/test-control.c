/* SPDX-License-Identifier: MIT */
/* The control socket (daemon/control.c) as retirectl meets it: a real unix
 * socket in a temporary folder, served by a real sd_event loop, with a handler
 * that stands for the daemon's verbs (daemon/retired.c, on_control).
 *
 * The contract asserted: one request line "VERB [ARG]\n" gets one reply line
 * "ok [TEXT]\n" or "error [TEXT]\n", then the connection closes; a line that
 * is not a request, too long, or never finished is answered without reaching
 * the handler (or not answered at all); a client gone early cannot hurt the
 * daemon; only root and the daemon's own user are served; and no client
 * leaves a file descriptor behind.  The second group is the flood of issue
 * 30: a full table makes room for a newcomer, a request gets through many
 * silent clients, and a silent client has less time than a begun one.
 *
 * This binary is linked with -Wl,--wrap for the calls below (see the
 * Makefile), so a test can say which uid the kernel reports for the peer,
 * make a client's time run out at once (its timer, as control.c armed it, is
 * made due now: no test waits 5 s), and fail an accept or the loop's
 * registration of a source. */

#include "unit.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-event.h>

#include "control.h"
#include "macro.h"

/* ---- the wrapped calls ------------------------------------------------------ */

static struct {
        bool fake_uid;
        uid_t uid;                  /* what SO_PEERCRED says of the peer, when fake_uid */
        int accept_errno;           /* the next accept4 fails with it; 0: none */
        unsigned io_calls, io_fail_at;        /* sd_event_add_io: made, and the one to fail (from 1) */
        unsigned timer_calls, timer_fail_at;  /* sd_event_add_time_relative: the same */
        uint64_t timeout;           /* the last client timeout asked for */
        sd_event_source *timer[8];  /* the first clients' timers, kept (a reference) so a test can expire them */
        size_t n_timers;
} w;

int __real_getsockopt(int fd, int level, int name, void *value, socklen_t *len);
int __wrap_getsockopt(int fd, int level, int name, void *value, socklen_t *len);
int __wrap_getsockopt(int fd, int level, int name, void *value, socklen_t *len) {
        int r = __real_getsockopt(fd, level, name, value, len);

        if (r == 0 && level == SOL_SOCKET && name == SO_PEERCRED && w.fake_uid)
                ((struct ucred *) value)->uid = w.uid;
        return r;
}

int __real_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags);
int __wrap_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags);
int __wrap_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags) {
        if (w.accept_errno) {
                errno = w.accept_errno;
                w.accept_errno = 0;
                return -1;
        }
        return __real_accept4(fd, sa, len, flags);
}

int __real_sd_event_add_io(sd_event *e, sd_event_source **s, int fd, uint32_t events, sd_event_io_handler_t cb,
                           void *userdata);
int __wrap_sd_event_add_io(sd_event *e, sd_event_source **s, int fd, uint32_t events, sd_event_io_handler_t cb,
                           void *userdata);
int __wrap_sd_event_add_io(sd_event *e, sd_event_source **s, int fd, uint32_t events, sd_event_io_handler_t cb,
                           void *userdata) {
        if (++w.io_calls == w.io_fail_at)
                return -ENOMEM;
        return __real_sd_event_add_io(e, s, fd, events, cb, userdata);
}

int __real_sd_event_add_time_relative(sd_event *e, sd_event_source **s, clockid_t clock, uint64_t usec,
                                      uint64_t accuracy, sd_event_time_handler_t cb, void *userdata);
int __wrap_sd_event_add_time_relative(sd_event *e, sd_event_source **s, clockid_t clock, uint64_t usec,
                                      uint64_t accuracy, sd_event_time_handler_t cb, void *userdata);
int __wrap_sd_event_add_time_relative(sd_event *e, sd_event_source **s, clockid_t clock, uint64_t usec,
                                      uint64_t accuracy, sd_event_time_handler_t cb, void *userdata) {
        int r;

        if (++w.timer_calls == w.timer_fail_at)
                return -ENOMEM;
        w.timeout = usec;
        r = __real_sd_event_add_time_relative(e, s, clock, usec, accuracy, cb, userdata);
        if (r >= 0 && s && w.n_timers < ELEMENTSOF(w.timer))
                w.timer[w.n_timers++] = sd_event_source_ref(*s);
        return r;
}

/* The time of the i-th client (from 0) runs out now, if it is still running. */
static void expire(size_t i) {
        assert_true(i < w.n_timers);
        assert_int_equal(sd_event_source_set_time_relative(w.timer[i], 0), 0);
}

/* ---- the daemon's side: a loop, the socket, a handler ------------------------ */

static struct {
        char *dir, *path;
        sd_event *e;
        Control *c;
        int fds;                    /* open before, to find a leak after */
} F;

/* What the handler was asked, and what it answers. */
static struct {
        void *userdata;
        unsigned calls;
        uint32_t uid;
        char verb[CONTROL_MAX_VERB + 1], arg[CONTROL_MAX_ARG + 1];
        int r;
        const char *text;           /* NULL: none */
} h;

static int handler(void *userdata, uint32_t uid, const char *verb, const char *arg, char **text) {
        /* No assertion here: it would jump out of the loop's dispatch. */
        h.userdata = userdata;
        h.calls++;
        h.uid = uid;
        snprintf(h.verb, sizeof h.verb, "%s", verb);
        snprintf(h.arg, sizeof h.arg, "%s", arg);
        if (h.text && !(*text = strdup(h.text)))
                return -ENOMEM;
        return h.r;
}

static int count_fds(void) {
        return count_entries("/proc/self/fd");
}

static int setup(void **state) {
        w = (__typeof__(w)) {};
        h = (__typeof__(h)) {};
        F.fds = count_fds();
        F.dir = tmpdir_new();
        F.path = path_join(F.dir, "control");
        assert_int_equal(sd_event_new(&F.e), 0);
        assert_int_equal(control_open(F.e, F.path, handler, &h, &F.c), 0);
        return 0;
}

/* Runs the loop until nothing more is ready. */
static void drain(void) {
        int r;

        for (unsigned i = 0; (r = sd_event_run(F.e, 0)) > 0; i++)
                assert_true(i < 10000);
        assert_int_equal(r, 0);
}

static int teardown(void **state) {
        drain();       /* the daemon sees the hang-ups of the clients the test closed */
        for (size_t i = 0; i < w.n_timers; i++)
                w.timer[i] = sd_event_source_unref(w.timer[i]);
        F.c = control_free(F.c);
        F.e = sd_event_unref(F.e);
        assert_false(file_exists(F.path));   /* the socket goes with the daemon */
        free(F.path);
        tmpdir_remove(F.dir);
        /* Every client the daemon took is closed, and the socket too. */
        assert_int_equal(count_fds(), F.fds);
        return 0;
}

/* ---- the clients ------------------------------------------------------------- */

typedef struct Peer {
        int fd;
        sd_event_source *s;
        char buf[2048];
        size_t len;
        bool eof;
        int error;       /* how the connection ended: 0 (closed) or an errno */
} Peer;

static int on_peer(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Peer *p = userdata;
        ssize_t n = recv(fd, p->buf + p->len, sizeof p->buf - 1 - p->len, MSG_DONTWAIT);

        if (n < 0 && errno == EAGAIN)
                return 0;
        if (n <= 0) {
                p->error = n < 0 ? errno : 0;
                p->eof = true;
                return sd_event_source_set_enabled(s, SD_EVENT_OFF);
        }
        p->len += (size_t) n;
        p->buf[p->len] = 0;
        return 0;
}

/* A client connected (not yet accepted: the loop has not run). */
static Peer *peer_new(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        Peer *p = calloc(1, sizeof(Peer));

        assert_non_null(p);
        p->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(p->fd >= 0);
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", F.path);
        assert_int_equal(connect(p->fd, (struct sockaddr *) &sa, sizeof sa), 0);
        assert_int_equal(sd_event_add_io(F.e, &p->s, p->fd, EPOLLIN, on_peer, p), 0);
        return p;
}

static void peer_free(Peer *p) {
        if (!p)
                return;
        (void) sd_event_source_disable_unref(p->s);
        (void) close(p->fd);
        free(p);
}

static void peer_send(Peer *p, const void *data, size_t len) {
        assert_int_equal(send(p->fd, data, len, MSG_NOSIGNAL), (ssize_t) len);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* What the client reads until the daemon closes (3 s at most). */
static const char *peer_reply(Peer *p) {
        uint64_t start = now_usec();

        while (!p->eof) {
                assert_true(sd_event_run(F.e, 100 * USEC_PER_MSEC) >= 0);
                assert_true(now_usec() - start < 3 * USEC_PER_SEC);
        }
        /* The daemon closing with part of a request unread resets the
         * connection, once what it wrote has been read. */
        if (p->error != 0)
                assert_int_equal(p->error, ECONNRESET);
        return p->buf;
}

/* One request on a new connection; the reply, to be freed. */
static char *ask(const char *line) {
        Peer *p = peer_new();
        char *reply;

        peer_send(p, line, strlen(line));
        reply = strdup(peer_reply(p));
        assert_non_null(reply);
        peer_free(p);
        return reply;
}

/* Whether the daemon has neither answered nor closed yet. */
static bool waiting(Peer *p) {
        drain();
        return !p->eof && p->len == 0;
}

#define TABLE 16   /* CONTROL_MAX_CLIENTS, in control.c */
#define MALFORMED "error malformed request: expected \"VERB [ARG]\"\n"
#define TOO_LONG "error request longer than 512 bytes\n"

/* ---- a request and its answer ---------------------------------------------------- */

static void test_a_request_gets_its_answer(void **state) {
        _cleanup_free_ char *a = NULL, *b = NULL;

        h.text = "0 pending, 3 released";
        a = ask("status\n");
        assert_string_equal(a, "ok 0 pending, 3 released\n");
        assert_int_equal(h.calls, 1);
        assert_string_equal(h.verb, "status");
        assert_string_equal(h.arg, "");
        assert_int_equal(h.uid, geteuid());      /* who asked, for the ledger's record */
        assert_ptr_equal(h.userdata, &h);

        /* A pause's reason keeps its inner spaces. */
        h.text = "paused";
        b = ask("pause OPS-1300 wrong batch\n");
        assert_string_equal(b, "ok paused\n");
        assert_int_equal(h.calls, 2);
        assert_string_equal(h.verb, "pause");
        assert_string_equal(h.arg, "OPS-1300 wrong batch");
}

/* The handler's result is the first word; its text follows, or strerror()
 * of the error when it gave none; no text leaves no trailing space. */
static void test_the_reply_says_ok_or_error(void **state) {
        static const struct {
                int r;
                const char *text, *reply;
        } cases[] = {
                { 0, NULL, "ok\n" },
                { 0, "", "ok\n" },
                { 1, "resumed", "ok resumed\n" },
                { -EINVAL, "config rejected: retired.conf:3: bad", "error config rejected: retired.conf:3: bad\n" },
                { -ENOENT, NULL, "error No such file or directory\n" },
                { -EOPNOTSUPP, "unknown request 'frobnicate'", "error unknown request 'frobnicate'\n" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *reply = NULL;

                h.r = cases[i].r;
                h.text = cases[i].text;
                reply = ask("retry +34910123456\n");
                assert_string_equal(reply, cases[i].reply);
        }
        assert_int_equal(h.calls, ELEMENTSOF(cases));
}

/* control.c knows no verbs: whatever has the form of one goes to the
 * daemon, which answers for the ones it does not know. */
static void test_any_verb_reaches_the_daemon(void **state) {
        _cleanup_free_ char *reply = NULL;

        h.r = -EOPNOTSUPP;
        h.text = "unknown request 'frobnicate'";
        reply = ask("frobnicate now\n");
        assert_string_equal(reply, "error unknown request 'frobnicate'\n");
        assert_string_equal(h.verb, "frobnicate");
        assert_string_equal(h.arg, "now");
}

/* Lines that are not "VERB [ARG]" are answered so, and never reach the
 * daemon: a NUL, a CR, binary garbage, an upper-case or over-long verb, an
 * over-long argument, spaces where there should be none, bytes outside
 * printable ASCII. */
static void test_a_line_that_is_not_a_request_is_refused(void **state) {
        char verb16[32], arg257[300], arg256[300];
        static const struct {
                const char *line;
                size_t len;
        } bad[] = {
#define L(s) { s, sizeof(s) - 1 }
                L("\n"),
                L(" status\n"),
                L("Status\n"),
                L("status \n"),
                L("status\r\n"),
                L("pause  two spaces first\n"),
                L("pause trailing \n"),
                L("sta\0tus\n"),
                L("pause a\0b\n"),
                L("pause \0\n"),
                L("pause tab\there\n"),
                L("pause caf\xc3\xa9\n"),
                L("\xff\xfe\x00\x01garbage\x7f\n"),
                L("pause\x1b[2J\n"),
                L("9status\n"),
#undef L
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                Peer *p = peer_new();

                peer_send(p, bad[i].line, bad[i].len);
                if (!streq(peer_reply(p), MALFORMED))
                        print_message("  line %zu\n", i);
                assert_string_equal(p->buf, MALFORMED);
                peer_free(p);
        }

        /* The verb holds 15 letters and the argument 256 bytes, no more. */
        memset(verb16, 'a', 16);
        strcpy(verb16 + 16, "\n");
        memset(arg257, 'x', sizeof arg257);
        memcpy(arg257, "pause ", 6);
        strcpy(arg257 + 6 + 257, "\n");
        for (size_t i = 0; i < 2; i++) {
                _cleanup_free_ char *reply = ask(i == 0 ? verb16 : arg257);
                assert_string_equal(reply, MALFORMED);
        }
        assert_int_equal(h.calls, 0);

        verb16[15] = '\n';
        verb16[16] = 0;
        memcpy(arg256, arg257, 6 + 256);
        strcpy(arg256 + 6 + 256, "\n");
        for (size_t i = 0; i < 2; i++) {
                _cleanup_free_ char *reply = ask(i == 0 ? verb16 : arg256);
                assert_string_equal(reply, "ok\n");
        }
        assert_int_equal(h.calls, 2);
        assert_int_equal(strlen(h.arg), 256);
}

/* A request may come in pieces; it is read up to its newline. */
static void test_a_request_in_pieces(void **state) {
        Peer *p = peer_new();

        peer_send(p, "pau", 3);
        assert_true(waiting(p));
        peer_send(p, "se OPS-1", 8);
        assert_true(waiting(p));
        peer_send(p, "300\n", 4);
        assert_string_equal(peer_reply(p), "ok\n");
        assert_string_equal(h.arg, "OPS-1300");
        peer_free(p);
}

/* One request a connection: what follows the newline is not read as another. */
static void test_one_request_per_connection(void **state) {
        _cleanup_free_ char *reply = NULL;

        h.text = "paused";
        reply = ask("pause first\nresume\n");
        assert_string_equal(reply, "ok paused\n");
        assert_int_equal(h.calls, 1);
        assert_string_equal(h.verb, "pause");
}

/* control_parse() alone, as the fuzzer calls it: the newline is optional,
 * and an over-long verb or argument is told apart (-E2BIG) from a line of
 * the wrong form (-EBADMSG); only `len` bytes are read. */
static void test_control_parse(void **state) {
        char verb[CONTROL_MAX_VERB + 1], arg[CONTROL_MAX_ARG + 1], line[300];

        assert_int_equal(control_parse("status", 6, verb, arg), 0);
        assert_string_equal(verb, "status");
        assert_string_equal(arg, "");
        assert_int_equal(control_parse("retry +34 910\nresume\n", 14, verb, arg), 0);
        assert_string_equal(verb, "retry");
        assert_string_equal(arg, "+34 910");
        assert_int_equal(control_parse("pause x", 6, verb, arg), -EBADMSG);
        assert_int_equal(control_parse("", 0, verb, arg), -EBADMSG);
        assert_int_equal(control_parse("\n", 1, verb, arg), -EBADMSG);
        assert_int_equal(control_parse("pause \n", 7, verb, arg), -EBADMSG);

        memset(line, 'a', 16);
        assert_int_equal(control_parse(line, 16, verb, arg), -E2BIG);
        assert_int_equal(control_parse(line, 15, verb, arg), 0);
        assert_int_equal(strlen(verb), 15);
        memcpy(line, "pause ", 6);
        memset(line + 6, 'x', 257);
        assert_int_equal(control_parse(line, 6 + 257, verb, arg), -E2BIG);
        assert_int_equal(control_parse(line, 6 + 256, verb, arg), 0);
        assert_int_equal(strlen(arg), 256);
}

/* ---- the line limit ---------------------------------------------------------------- */

/* 512 bytes without a newline is refused at once, however much more the
 * client would write (issue 30's writer of 1 MiB); up to then the daemon
 * waits for the rest. */
static void test_a_line_longer_than_512_bytes_is_refused(void **state) {
        char big[4096];
        Peer *p;

        memset(big, 'a', sizeof big);

        p = peer_new();
        peer_send(p, big, 511);
        assert_true(waiting(p));
        peer_send(p, big, 1);
        assert_string_equal(peer_reply(p), TOO_LONG);
        peer_free(p);

        p = peer_new();
        peer_send(p, big, sizeof big);
        assert_string_equal(peer_reply(p), TOO_LONG);
        peer_free(p);

        /* Binary garbage without a newline: the same. */
        for (size_t i = 0; i < sizeof big; i++)
                big[i] = (char) (i * 37 + 11) == '\n' ? 0 : (char) (i * 37 + 11);
        p = peer_new();
        peer_send(p, big, sizeof big);
        assert_string_equal(peer_reply(p), TOO_LONG);
        peer_free(p);

        /* 511 bytes and the newline fit (and are then no request). */
        memset(big, 'a', 511);
        big[511] = '\n';
        p = peer_new();
        peer_send(p, big, 512);
        assert_string_equal(peer_reply(p), MALFORMED);
        peer_free(p);

        assert_int_equal(h.calls, 0);
}

/* ---- clients that go early ------------------------------------------------------------- */

/* A client gone without a word, or with half a line, leaves nothing behind
 * (teardown counts the descriptors) and asks nothing. */
static void test_a_client_gone_before_its_newline_asks_nothing(void **state) {
        Peer *p;

        p = peer_new();
        peer_free(p);
        drain();

        p = peer_new();
        peer_send(p, "pause OPS", 9);
        assert_true(waiting(p));
        peer_free(p);
        drain();

        /* A request without its newline is not one, even when the client
         * says it has no more to write. */
        p = peer_new();
        peer_send(p, "resume", 6);
        assert_int_equal(shutdown(p->fd, SHUT_WR), 0);
        assert_string_equal(peer_reply(p), "");
        peer_free(p);

        assert_int_equal(h.calls, 0);
}

/* A whole request is acted on even when its client hangs up before the
 * answer (so a client cannot tell whether a request it gave up on was done:
 * issue 30's "never twice"), and the answer that cannot be delivered does
 * not kill the daemon with SIGPIPE. */
static void test_a_client_gone_before_its_answer(void **state) {
        Peer *p = peer_new();

        h.text = "paused";
        peer_send(p, "pause OPS-1300\n", 15);
        peer_free(p);
        drain();
        assert_int_equal(h.calls, 1);
        assert_string_equal(h.arg, "OPS-1300");
}

/* However many clients connect, the daemon keeps 16 at most open (the
 * oldest silent ones make room), so a flood of clients cannot take its file
 * descriptors. */
static void test_the_daemon_holds_16_clients_at_most(void **state) {
        Peer *p[3 * TABLE];
        int before;

        p[0] = peer_new();
        drain();                 /* the loop's own descriptors for timers are made */
        before = count_fds();
        for (size_t i = 1; i < ELEMENTSOF(p); i++) {
                p[i] = peer_new();
                drain();
        }
        /* Ours grew by one a client; the daemon's by at most 15 more. */
        assert_true(count_fds() - before - (int) (ELEMENTSOF(p) - 1) <= TABLE - 1);
        for (size_t i = 0; i < ELEMENTSOF(p); i++)
                peer_free(p[i]);
        assert_int_equal(h.calls, 0);
}

/* ---- the time a client has ------------------------------------------------------------------ */

/* A client that does not finish its line in time is told so, and its
 * request never acts; its place is free again. */
static void test_a_client_too_slow_is_told_and_its_request_never_acts(void **state) {
        Peer *silent, *slow;

        silent = peer_new();
        slow = peer_new();
        drain();
        peer_send(slow, "pause OPS", 9);
        assert_true(waiting(silent));
        assert_true(waiting(slow));
        expire(0);
        expire(1);
        assert_string_equal(peer_reply(silent), "error timeout nothing sent within 1 s; the request was not read\n");
        assert_string_equal(peer_reply(slow), "error timeout no complete request within 5 s; it was not read\n");
        peer_free(silent);
        peer_free(slow);
        assert_int_equal(h.calls, 0);
}

/* ---- who may ask -------------------------------------------------------------------------------- */

static int stderr_saved = -1;

static void stderr_to(int fd) {
        stderr_saved = dup(STDERR_FILENO);
        assert_true(stderr_saved >= 0);
        assert_true(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
}

static void stderr_back(void) {
        (void) fflush(stderr);
        assert_true(dup2(stderr_saved, STDERR_FILENO) == STDERR_FILENO);
        (void) close(stderr_saved);
        stderr_saved = -1;
}

/* Another user is refused, whatever the socket's mode lets through, told
 * so in one line, and the journal says who was refused; root is served. */
static void test_only_root_and_the_daemons_user_are_served(void **state) {
        _cleanup_free_ char *journal = NULL, *reply = NULL;
        _cleanup_close_ int log = memfd_create("stderr", MFD_CLOEXEC);
        struct stat st;
        Peer *p;

        assert_true(log >= 0);
        w.fake_uid = true;
        w.uid = geteuid() == 12345 ? 12346 : 12345;
        p = peer_new();
        peer_send(p, "resume\n", 7);
        stderr_to(log);
        (void) peer_reply(p);
        stderr_back();
        assert_string_equal(p->buf, "error refused: only root and the daemon's own user may use this socket\n");
        assert_int_equal(h.calls, 0);
        peer_free(p);
        assert_int_equal(fstat(log, &st), 0);
        journal = calloc(1, (size_t) st.st_size + 1);
        assert_non_null(journal);
        assert_int_equal(pread(log, journal, (size_t) st.st_size, 0), st.st_size);
        assert_non_null(strstr(journal, "Control socket: refused a client with uid 1234"));

        w.uid = 0;
        reply = ask("resume\n");
        assert_string_equal(reply, "ok\n");
        assert_int_equal(h.calls, 1);
        assert_int_equal(h.uid, 0);
}

/* The daemon runs as its own (dynamic) user, not root: that user is served.
 * Run as root, the test takes another effective uid while the loop accepts. */
static void test_the_daemons_own_user_is_served(void **state) {
        bool root = geteuid() == 0;
        uid_t daemon = root ? 61234 : geteuid();
        Peer *p = peer_new();

        w.fake_uid = true;
        w.uid = daemon;
        peer_send(p, "status\n", 7);
        if (root)
                assert_int_equal(seteuid(daemon), 0);
        drain();       /* accepted, read and answered as that user */
        if (root)
                assert_int_equal(seteuid(0), 0);
        assert_string_equal(peer_reply(p), "ok\n");
        assert_int_equal(h.calls, 1);
        assert_int_equal(h.uid, daemon);
        peer_free(p);
}

/* ---- when the system says no ----------------------------------------------------------------- */

/* An accept that fails loses no client: it is taken on the next turn. */
static void test_a_failed_accept_loses_no_client(void **state) {
        _cleanup_free_ char *reply = NULL;

        w.accept_errno = ECONNABORTED;
        reply = ask("status\n");
        assert_string_equal(reply, "ok\n");
        assert_int_equal(w.accept_errno, 0);
}

/* A client the loop cannot watch or time is closed without an answer, and
 * its place in the table is given back. */
static void test_a_client_that_cannot_be_watched_is_closed(void **state) {
        for (int which = 0; which < 2; which++) {
                _cleanup_free_ char *reply = NULL, *after = NULL;

                if (which == 0)
                        w.io_fail_at = w.io_calls + 2;      /* the client's, after the test's own */
                else
                        w.timer_fail_at = w.timer_calls + 1;
                reply = ask("status\n");
                assert_string_equal(reply, "");
                after = ask("status\n");
                assert_string_equal(after, "ok\n");
        }
        assert_int_equal(h.calls, 2);
}

/* ---- the socket itself ------------------------------------------------------------------------ */

/* Only the owner may connect, whatever the umask; the umask is left as it was. */
static void test_the_socket_is_the_owners_alone(void **state) {
        struct stat st;
        mode_t old;

        F.c = control_free(F.c);
        old = umask(0);
        assert_int_equal(control_open(F.e, F.path, handler, &h, &F.c), 0);
        assert_int_equal(umask(old), 0);
        assert_int_equal(lstat(F.path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 077, 0);
}

/* A socket left by a crashed run is replaced, and the new one answers. */
static void test_a_socket_left_by_a_crash_is_replaced(void **state) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_free_ char *reply = NULL;
        int fd;

        F.c = control_free(F.c);
        assert_false(file_exists(F.path));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", F.path);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        assert_int_equal(close(fd), 0);           /* the crash: the file stays */
        assert_true(file_exists(F.path));

        assert_int_equal(control_open(F.e, F.path, handler, &h, &F.c), 0);
        reply = ask("status\n");
        assert_string_equal(reply, "ok\n");
}

/* Each way control_open() can fail says why and leaves no socket file nor
 * descriptor behind. */
static void test_control_open_fails_cleanly(void **state) {
        _cleanup_free_ char *long_path = NULL, *missing = NULL;
        struct rlimit rl, low;
        Control *c = NULL;
        int fds, lowest;

        F.c = control_free(F.c);
        fds = count_fds();

        long_path = malloc(200);
        assert_non_null(long_path);
        memset(long_path, 'x', 199);
        long_path[0] = '/';
        long_path[199] = 0;
        assert_int_equal(control_open(F.e, long_path, handler, &h, &c), -ENAMETOOLONG);

        missing = path_join(F.dir, "no-such-folder/control");
        assert_int_equal(control_open(F.e, missing, handler, &h, &c), -ENOENT);

        /* Out of descriptors. */
        lowest = dup(0);
        assert_true(lowest >= 0);
        assert_int_equal(close(lowest), 0);
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
        low = rl;
        low.rlim_cur = (rlim_t) lowest;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
        int r = control_open(F.e, F.path, handler, &h, &c);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
        assert_int_equal(r, -EMFILE);

        /* The loop cannot watch the socket. */
        w.io_fail_at = w.io_calls + 1;
        assert_int_equal(control_open(F.e, F.path, handler, &h, &c), -ENOMEM);

        assert_null(c);
        assert_int_equal(count_entries(F.dir), 0);
        assert_int_equal(count_fds(), fds);
        assert_null(control_free(NULL));
}

/* ---- a flood of clients (issue 30) ----------------------------------------------------------- */

static Peer **silent_table(void) {
        Peer **p = calloc(TABLE, sizeof(Peer *));

        assert_non_null(p);
        for (int i = 0; i < TABLE; i++) {
                p[i] = peer_new();
                drain();
        }
        return p;
}

static void silent_free(Peer **p) {
        for (int i = 0; i < TABLE; i++)
                peer_free(p[i]);
        free(p);
}

/* With 16 silent clients in the table, the operator's `pause` is answered:
 * the oldest silent client makes room, told that its request (none) was not
 * read, so that a client that retries on "busy" cannot act twice. */
static void test_a_full_table_makes_room_for_the_newcomer(void **state) {
        Peer **silent = silent_table(), *newcomer;

        newcomer = peer_new();
        peer_send(newcomer, "pause OPS-1300\n", 15);
        assert_string_equal(peer_reply(newcomer), "ok\n");
        assert_int_equal(h.calls, 1);
        assert_string_equal(h.verb, "pause");
        assert_string_equal(peer_reply(silent[0]),
                            "error busy the socket had too many clients; the request was not read, send it again\n");
        for (int i = 1; i < TABLE; i++)
                assert_true(waiting(silent[i]));
        peer_free(newcomer);
        silent_free(silent);
}

/* The oldest that has sent nothing goes before one that has begun its line. */
static void test_room_is_made_from_the_silent_first(void **state) {
        Peer *begun = peer_new(), *silent[TABLE - 1], *newcomer;

        drain();
        peer_send(begun, "sta", 3);
        drain();
        for (int i = 0; i < TABLE - 1; i++) {
                silent[i] = peer_new();
                drain();
        }
        newcomer = peer_new();
        peer_send(newcomer, "status\n", 7);
        assert_string_equal(peer_reply(newcomer), "ok\n");
        assert_true(waiting(begun) || begun->len == 0);
        assert_false(begun->eof);
        assert_true(peer_reply(silent[0])[0] == 'e');
        peer_send(begun, "tus\n", 4);
        assert_string_equal(peer_reply(begun), "ok\n");
        assert_int_equal(h.calls, 2);
        peer_free(begun);
        peer_free(newcomer);
        for (int i = 0; i < TABLE - 1; i++)
                peer_free(silent[i]);
}

/* A flood of newcomers that send nothing, many times the table, cannot keep
 * out a request: it is read before the next newcomer is accepted. */
static void test_a_request_gets_through_a_flood(void **state) {
        Peer *flood[4 * TABLE], *operator;
        size_t n = 0;

        for (; n < 2 * TABLE; n++)
                flood[n] = peer_new();
        operator = peer_new();
        peer_send(operator, "resume\n", 7);
        for (; n < ELEMENTSOF(flood); n++)
                flood[n] = peer_new();
        assert_string_equal(peer_reply(operator), "ok\n");
        assert_int_equal(h.calls, 1);
        assert_string_equal(h.verb, "resume");
        peer_free(operator);
        for (size_t i = 0; i < n; i++)
                peer_free(flood[i]);
}

/* A client's line that came while newcomers queue is read before the next
 * of them is accepted: the table filling up cannot push it out unread. */
static void test_a_line_that_came_is_read_before_the_next_newcomer(void **state) {
        Peer *operator = peer_new(), *silent[TABLE - 1], *newcomer[4];

        drain();                                /* accepted, nothing sent yet */
        for (int i = 0; i < TABLE - 1; i++)
                silent[i] = peer_new();
        drain();                                /* the table is full */
        peer_send(operator, "pause OPS-1300\n", 15);
        for (size_t i = 0; i < ELEMENTSOF(newcomer); i++)
                newcomer[i] = peer_new();       /* queued with the line, before the loop runs */
        assert_string_equal(peer_reply(operator), "ok\n");
        assert_int_equal(h.calls, 1);
        peer_free(operator);
        for (size_t i = 0; i < ELEMENTSOF(newcomer); i++)
                peer_free(newcomer[i]);
        for (int i = 0; i < TABLE - 1; i++)
                peer_free(silent[i]);
}

/* A client that has sent nothing has 1 s; once it has begun, its line may
 * take until 5 s after its connection. */
static void test_a_silent_client_has_1_s_and_a_begun_one_5_s(void **state) {
        uint64_t armed, moved;
        Peer *p;

        p = peer_new();
        drain();
        assert_int_equal(w.timer_calls, 1);
        assert_int_equal(w.timeout, 1 * USEC_PER_SEC);
        assert_int_equal(sd_event_source_get_time(w.timer[0], &armed), 0);
        peer_send(p, "pa", 2);
        assert_true(waiting(p));
        assert_int_equal(sd_event_source_get_time(w.timer[0], &moved), 0);
        assert_int_equal(moved, armed + 4 * USEC_PER_SEC);
        peer_send(p, "use", 3);
        assert_true(waiting(p));
        expire(0);
        assert_string_equal(peer_reply(p), "error timeout no complete request within 5 s; it was not read\n");
        assert_int_equal(h.calls, 0);
        peer_free(p);
}

/* With the table full, a newcomer that gave up before the daemon could take
 * it does not kill the daemon with SIGPIPE, and the table serves again. */
static void test_a_newcomer_gone_while_the_table_is_full_is_harmless(void **state) {
        Peer **silent = silent_table(), *gone, *next;

        gone = peer_new();
        peer_free(gone);
        drain();
        silent_free(silent);
        drain();
        next = peer_new();
        peer_send(next, "status\n", 7);
        assert_string_equal(peer_reply(next), "ok\n");
        peer_free(next);
}

/* The daemon stopping with clients still connected frees them all. */
static void test_clients_left_at_the_end_are_freed(void **state) {
        Peer *p[3];

        for (size_t i = 0; i < ELEMENTSOF(p); i++) {
                p[i] = peer_new();
                drain();
        }
        F.c = control_free(F.c);
        for (size_t i = 0; i < ELEMENTSOF(p); i++) {
                assert_string_equal(peer_reply(p[i]), "");
                peer_free(p[i]);
        }
}

int main(void) {
        const struct CMUnitTest contract[] = {
                cmocka_unit_test_setup_teardown(test_a_request_gets_its_answer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_reply_says_ok_or_error, setup, teardown),
                cmocka_unit_test_setup_teardown(test_any_verb_reaches_the_daemon, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_line_that_is_not_a_request_is_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_control_parse, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_request_in_pieces, setup, teardown),
                cmocka_unit_test_setup_teardown(test_one_request_per_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_line_longer_than_512_bytes_is_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_client_gone_before_its_newline_asks_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_client_gone_before_its_answer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_daemon_holds_16_clients_at_most, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_client_too_slow_is_told_and_its_request_never_acts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_only_root_and_the_daemons_user_are_served, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_daemons_own_user_is_served, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_failed_accept_loses_no_client, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_client_that_cannot_be_watched_is_closed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_socket_is_the_owners_alone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_socket_left_by_a_crash_is_replaced, setup, teardown),
                cmocka_unit_test_setup_teardown(test_control_open_fails_cleanly, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_newcomer_gone_while_the_table_is_full_is_harmless, setup,
                                                teardown),
        };
        const struct CMUnitTest flood[] = {
                cmocka_unit_test_setup_teardown(test_a_full_table_makes_room_for_the_newcomer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_room_is_made_from_the_silent_first, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_request_gets_through_a_flood, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_line_that_came_is_read_before_the_next_newcomer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_silent_client_has_1_s_and_a_begun_one_5_s, setup, teardown),
                cmocka_unit_test_setup_teardown(test_clients_left_at_the_end_are_freed, setup, teardown),
        };
        int failed;

        failed = cmocka_run_group_tests_name("test-control", contract, NULL, NULL);
        failed += cmocka_run_group_tests_name("test-control: a flood of clients", flood, NULL, NULL);
        return failed;
}
