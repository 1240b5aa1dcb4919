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

/* Sends one request to the daemon.  -ECONNREFUSED/-ENOENT: nobody listens. */
int control_request(const char *path, const char *verb, const char *arg, char *reply, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        /* A reload of a million declarations takes seconds; the rest answer at once. */
        struct timeval tv = { .tv_sec = streq(verb, "reload") ? 300 : 10 };
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *line = NULL;
        size_t len = 0;
        ssize_t n;
        int k;

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
                return negative_errno();
        if (asprintf_or_null(&line, "%s%s%s\n", verb, arg ? " " : "", arg ? arg : "") < 0)
                return -ENOMEM;
        k = (int) strlen(line);
        if (send(fd, line, (size_t) k, MSG_NOSIGNAL) != k)
                return negative_errno();
        while (len < size - 1 && (n = recv(fd, reply + len, size - 1 - len, 0)) > 0)
                len += (size_t) n;
        reply[len] = 0;
        if (len == 0)
                return -EPROTO;
        reply[strcspn(reply, "\n")] = 0;
        return 0;
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
        if (r != -ECONNREFUSED && r != -ENOENT) {
                fprintf(stderr, "retirectl: %s: %s\n", c->control_socket, strerror(-r));
                return EXIT_ERROR;
        }
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
