/* SPDX-License-Identifier: MIT */
/* retirectl's verbs that act: retry, approve, reload, pause and resume go to
 * the daemon over its control socket, the ledger's only writer while it
 * runs; with none running, retry, approve, pause and resume write the
 * ledger here, under the lock the daemon takes too. */

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf.h"
#include "control.h"
#include "macro.h"
#include "retirectl.h"
#include "state.h"

/* One connection, one request.  > 0: refused before it was read (busy),
 * worth sending again; 0: a reply; < 0: see control_request(). */
static int ask_once(const char *path, const char *line, unsigned timeout, char *reply, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { .tv_sec = timeout };
        _cleanup_close_ int fd = -1;
        size_t len = 0, k = strlen(line);
        bool sent;
        ssize_t n;

        if (strlen(path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
                return negative_errno();
        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0)
                return errno == EAGAIN || errno == ETIMEDOUT ? 1 : negative_errno();
        /* A daemon that closed before reading may still have said why. */
        sent = send(fd, line, k, MSG_NOSIGNAL) == (ssize_t) k;
        while (len < size - 1 && !memchr(reply, '\n', len) &&
               (n = recv(fd, reply + len, size - 1 - len, 0)) > 0)
                len += (size_t) n;
        reply[len] = 0;
        if (len >= strlen(CONTROL_BUSY) && startswith(reply, CONTROL_BUSY))
                return 1;
        if (memchr(reply, '\n', len)) {
                reply[strcspn(reply, "\n")] = 0;
                return 0;
        }
        if (!sent)
                return -ENOTCONN;
        return len == 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -EPROTO;
}

int control_request(const char *path, const char *verb, const char *arg, char *reply, size_t size) {
        /* A reload of a million declarations takes tens of seconds, and a
         * request that comes meanwhile is answered when it ends. */
        unsigned timeout = streq(verb, "reload") ? 300 : 60;
        _cleanup_free_ char *line = NULL;
        usec_t wait = 10 * USEC_PER_MSEC;
        int r;

        if (asprintf_or_null(&line, "%s%s%s\n", verb, arg ? " " : "", arg ? arg : "") < 0)
                return -ENOMEM;
        /* Only a request refused unread is sent again: it did nothing. */
        for (unsigned i = 0;; i++) {
                r = ask_once(path, line, timeout, reply, size);
                if (r <= 0)
                        return r;
                if (i + 1 >= CONTROL_BUSY_TRIES)
                        return -EBUSY;
                (void) usleep((useconds_t) wait);
                wait = MIN(wait * 2, 500 * USEC_PER_MSEC);
        }
}

int control_failed(const char *path, const char *verb, int r) {
        switch (r) {
        case -EBUSY:
                fprintf(stderr, "retirectl: the daemon's socket %s stayed busy (%u tries): '%s' was not delivered "
                        "and did nothing; run it again\n", path, CONTROL_BUSY_TRIES, verb);
                return EXIT_UNDELIVERED;
        case -ETIMEDOUT:
                fprintf(stderr, "retirectl: no answer from the daemon on %s: '%s' may have been carried out; "
                        "look with 'retirectl status' (or show KEY) before sending it again\n", path, verb);
                return EXIT_NO_ANSWER;
        case -EPROTO:
                fprintf(stderr, "retirectl: the daemon on %s closed the connection before its answer was whole "
                        "(stopped or restarted?): '%s' may have been carried out; look with 'retirectl status' "
                        "(or show KEY) before sending it again\n", path, verb);
                return EXIT_NO_ANSWER;
        case -ENOTCONN:
                fprintf(stderr, "retirectl: the daemon on %s closed the connection before reading '%s': "
                        "not delivered, it did nothing; run it again\n", path, verb);
                return EXIT_UNDELIVERED;
        default:
                fprintf(stderr, "retirectl: cannot reach the daemon on %s: %s; '%s' was not delivered%s\n", path,
                        strerror(-r), verb, r == -EACCES ? " (only root and the daemon's own user may use it)" : "");
                return EXIT_UNDELIVERED;
        }
}

/* With no daemon running, the pause goes in the ledger for the next start. */
static int pause_offline(Ledger *l, const char *path, const char *verb, const char *reason) {
        _cleanup_(pause_done) Pause p = {};
        int r;

        r = ledger_pause_get(l, &p);
        if (r < 0 && r != -EBADMSG) {
                fprintf(stderr, "retirectl: %s: %s\n", path, ledger_errmsg(l));
                return EXIT_ERROR;
        }
        if (streq(verb, "pause") && p.on && r >= 0) {
                printf("already paused (no daemon running)\n");
                return EXIT_OK;
        }
        if (streq(verb, "resume") && !p.on) {
                printf("not paused (no daemon running)\n");
                return EXIT_OK;
        }
        r = streq(verb, "pause") ? ledger_pause_set(l, (uint32_t) getuid(), (int64_t) now(CLOCK_REALTIME), reason)
                                 : ledger_pause_clear(l);
        if (r == -E2BIG) {
                fprintf(stderr, "retirectl: the reason is longer than %d characters\n", PAUSE_MAX_REASON);
                return EXIT_ERROR;
        }
        if (r < 0) {
                fprintf(stderr, "retirectl: %s: %s\n", path, ledger_errmsg(l));
                return EXIT_ERROR;
        }
        printf("%s (no daemon running: kept in the ledger for its next start)\n",
               streq(verb, "pause") ? "paused" : "resumed");
        return EXIT_OK;
}

/* retry, approve and reload go to the daemon, the ledger's only writer
 * while it runs; without one, retirectl writes the ledger itself under the
 * lock the daemon takes too. */
/* The config does not load (its FILE:LINE problems are printed): the
 * daemon is told all the same, at the default socket, so that its journal
 * and status say so too; it keeps the config it has. */
static int reload_rejected(void) {
        _cleanup_(config_freep) Config *d = NULL;
        char reply[CONTROL_MAX_LINE + 64];

        if (config_defaults(arg_config, &d) >= 0 &&
            control_request(d->control_socket, "reload", NULL, reply, sizeof reply) >= 0 &&
            strncmp(reply, "ok", 2) == 0) {
                /* It read the files otherwise than we did: its word counts. */
                printf("reloaded\n");
                return EXIT_OK;
        }
        return EXIT_ERROR;
}

int verb_control(const char *verb, const char *arg) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        _cleanup_free_ char *error = NULL, *norm = NULL, *message = NULL;
        char reply[CONTROL_MAX_LINE + 64];
        const char *path;
        int r;

        /* A reload is refused here first, FILE:LINE and all, when the files are. */
        if (streq(verb, "reload") ? load(NULL, false, &c) < 0 : load_config(&c) < 0)
                return streq(verb, "reload") ? reload_rejected() : EXIT_ERROR;
        path = arg_ledger ? arg_ledger : c->ledger;
        /* "+34 910 000 001" goes over the socket as the key it stands for. */
        if (arg && streq(verb, "retry") && !strchr(arg, '@') && number_normalize(arg, &norm) >= 0)
                arg = norm;
        r = control_request(c->control_socket, verb, arg, reply, sizeof reply);
        if (r >= 0) {
                bool ok = strncmp(reply, "ok", 2) == 0;
                const char *text = reply + (ok ? 2 : strncmp(reply, "error", 5) == 0 ? 5 : 0);
                fprintf(ok ? stdout : stderr, "%s%s\n", ok ? "" : "retirectl: ", text + strspn(text, " "));
                return ok ? EXIT_OK : EXIT_ERROR;
        }
        if (r != -ECONNREFUSED && r != -ENOENT)
                return control_failed(c->control_socket, verb, r);
        if (streq(verb, "reload")) {
                fprintf(stderr, "retirectl: no retired listens on %s: nothing to reload\n", c->control_socket);
                return EXIT_ERROR;
        }
        r = ledger_open(path, LEDGER_WRITE, &l, &error);
        if (r == -EWOULDBLOCK) {
                fprintf(stderr, "retirectl: %s is in use by a retired that does not answer on %s\n",
                        path, c->control_socket);
                return EXIT_ERROR;
        }
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", error ? error : strerror(-r));
                return EXIT_ERROR;
        }
        if (streq(verb, "retry"))
                r = ledger_retry(l, arg, &message);
        else if (streq(verb, "pause") || streq(verb, "resume"))
                return pause_offline(l, path, verb, arg);
        else {
                /* The declarations again, into the ledger that approves. */
                c = config_free(c);
                if (load_declarations(&l, &c) < 0)
                        return EXIT_ERROR;
                r = plan_approve(l, c, arg, &message, NULL);
        }
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", message ? message : strerror(-r));
                return EXIT_ERROR;
        }
        printf("%s (no daemon running: %s on its next start)\n", strna(message),
               streq(verb, "retry") ? "it is released" : "they are released");
        return EXIT_OK;
}
