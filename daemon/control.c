/* SPDX-License-Identifier: MIT */
/* The control socket: one request line ("VERB [ARG]\n"), one reply line
 * ("ok ..." or "error ..."), then the connection closes.  Only root and the
 * daemon's own user may talk to it, whatever the socket's mode says. */

#include <ctype.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "control.h"
#include "log.h"
#include "macro.h"

#define CONTROL_MAX_CLIENTS 16
#define CONTROL_TIMEOUT_USEC (5 * USEC_PER_SEC)

typedef struct Client {
        Control *c;
        int fd;
        sd_event_source *io, *timer;
        char buf[CONTROL_MAX_LINE + 1];
        size_t len;
        uid_t uid;                   /* the peer's, for the record of what it asked */
} Client;

struct Control {
        sd_event *event;
        int fd;
        sd_event_source *io;
        char *path;
        ControlHandler handler;
        void *userdata;
        unsigned clients;
};

int control_parse(const char *line, size_t len, char verb[static CONTROL_MAX_VERB + 1],
                  char arg[static CONTROL_MAX_ARG + 1]) {
        size_t i = 0, n = 0;

        if (len > 0 && line[len - 1] == '\n')
                len--;
        while (i < len && islower((unsigned char) line[i])) {
                if (n >= CONTROL_MAX_VERB)
                        return -E2BIG;
                verb[n++] = line[i++];
        }
        verb[n] = 0;
        if (n == 0)
                return -EBADMSG;
        n = 0;
        arg[0] = 0;
        if (i == len)
                return 0;
        if (line[i++] != ' ')
                return -EBADMSG;
        /* Printable; keys, ids, numbers and hashes have no spaces, a pause's
         * reason may have them inside. */
        if (i < len && !isgraph((unsigned char) line[i]))
                return -EBADMSG;
        if (!isgraph((unsigned char) line[len - 1]))
                return -EBADMSG;
        for (; i < len; i++) {
                if (!isprint((unsigned char) line[i]))
                        return -EBADMSG;
                if (n >= CONTROL_MAX_ARG)
                        return -E2BIG;
                arg[n++] = line[i];
        }
        arg[n] = 0;
        return n > 0 ? 0 : -EBADMSG;
}

static void client_free(Client *cl) {
        if (!cl)
                return;
        (void) sd_event_source_disable_unref(cl->io);
        (void) sd_event_source_disable_unref(cl->timer);
        if (cl->fd >= 0)
                (void) close(cl->fd);
        cl->c->clients--;
        free(cl);
}

static void reply(Client *cl, const char *status, const char *text) {
        _cleanup_free_ char *line = NULL;
        int n = asprintf(&line, "%s%s%s\n", status, text && *text ? " " : "", text ? text : "");

        if (n > 0)
                (void) send(cl->fd, line, (size_t) n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int on_client(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Client *cl = userdata;
        char verb[CONTROL_MAX_VERB + 1], arg[CONTROL_MAX_ARG + 1];
        _cleanup_free_ char *text = NULL;
        ssize_t n;
        char *nl;
        int r;

        n = recv(fd, cl->buf + cl->len, sizeof cl->buf - 1 - cl->len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n <= 0) {
                client_free(cl);
                return 0;
        }
        cl->len += (size_t) n;
        cl->buf[cl->len] = 0;
        nl = memchr(cl->buf, '\n', cl->len);
        if (!nl) {
                if (cl->len >= sizeof cl->buf - 1) {
                        reply(cl, "error", "request longer than 512 bytes");
                        client_free(cl);
                }
                return 0;
        }
        r = control_parse(cl->buf, (size_t) (nl - cl->buf) + 1, verb, arg);
        if (r < 0)
                reply(cl, "error", "malformed request: expected \"VERB [ARG]\"");
        else {
                r = cl->c->handler(cl->c->userdata, (uint32_t) cl->uid, verb, arg, &text);
                reply(cl, r < 0 ? "error" : "ok", text ? text : r < 0 ? strerror(-r) : "");
        }
        client_free(cl);
        return 0;
}

static int on_client_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        client_free(userdata);
        return 0;
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Control *c = userdata;
        struct ucred cred;
        socklen_t len = sizeof cred;
        Client *cl;
        int cfd, r;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
                return 0;
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
            (cred.uid != 0 && cred.uid != geteuid())) {
                log_warning("Control socket: refused a client with uid %u.", (unsigned) cred.uid);
                (void) close(cfd);
                return 0;
        }
        if (c->clients >= CONTROL_MAX_CLIENTS) {
                (void) send(cfd, "error busy\n", 11, MSG_NOSIGNAL | MSG_DONTWAIT);
                (void) close(cfd);
                return 0;
        }
        cl = calloc(1, sizeof(Client));
        if (!cl) {
                (void) close(cfd);
                return 0;
        }
        cl->c = c;
        cl->fd = cfd;
        cl->uid = cred.uid;
        c->clients++;
        r = sd_event_add_io(c->event, &cl->io, cfd, EPOLLIN, on_client, cl);
        if (r >= 0)
                r = sd_event_add_time_relative(c->event, &cl->timer, CLOCK_MONOTONIC, CONTROL_TIMEOUT_USEC, 0,
                                               on_client_timeout, cl);
        if (r < 0)
                client_free(cl);
        return 0;
}

int control_open(sd_event *e, const char *path, ControlHandler handler, void *userdata, Control **ret) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        Control *c;
        mode_t old;
        int r;

        if (strlen(path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        c = calloc(1, sizeof(Control));
        if (!c)
                return -ENOMEM;
        *c = (Control) { .event = sd_event_ref(e), .fd = -1, .handler = handler, .userdata = userdata,
                         .path = strdup(path) };
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (!c->path || c->fd < 0) {
                r = c->path ? negative_errno() : -ENOMEM;
                goto fail;
        }
        /* A socket left by a crashed run would make bind() fail. */
        (void) unlink(path);
        old = umask(0077);
        r = bind(c->fd, (struct sockaddr *) &sa, sizeof sa) < 0 ? negative_errno() : 0;
        umask(old);
        if (r < 0)
                goto fail;
        if (listen(c->fd, CONTROL_MAX_CLIENTS) < 0) {
                r = negative_errno();
                goto fail;
        }
        r = sd_event_add_io(e, &c->io, c->fd, EPOLLIN, on_accept, c);
        if (r < 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        control_free(c);
        return r;
}

Control *control_free(Control *c) {
        if (!c)
                return NULL;
        (void) sd_event_source_disable_unref(c->io);
        if (c->fd >= 0) {
                (void) close(c->fd);
                if (c->path)
                        (void) unlink(c->path);
        }
        free(c->path);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}
