/* SPDX-License-Identifier: MIT */
/* The control socket: one request line ("VERB [ARG]\n"), one reply line
 * ("ok ..." or "error ..."), then the connection closes.  Only root and the
 * daemon's own user may talk to it, whatever the socket's mode says.
 *
 * It is the operator's brake, so it must get through a flood of local
 * clients (a hung monitoring script, a burst of parallel calls): a full
 * table makes room by dropping the oldest client that has not finished a
 * request, never by refusing the newcomer; a request already there when its
 * client is accepted is read at once; and clients are read before the next
 * one is accepted.  Whoever is dropped is told its request was not read. */

#include <ctype.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "control.h"
#include "log.h"
#include "macro.h"

typedef struct Client Client;

struct Client {
        Control *c;
        int fd;
        sd_event_source *io, *timer;
        char buf[CONTROL_MAX_LINE + 1];
        size_t len;
        uid_t uid;                   /* the peer's, for the record of what it asked */
        usec_t accepted;             /* CLOCK_MONOTONIC */
        Client *prev, *next;         /* oldest first */
};

struct Control {
        sd_event *event;
        int fd;
        sd_event_source *io;
        char *path;
        ControlHandler handler;
        void *userdata;
        Client *first, *last;
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
        Control *c;

        if (!cl)
                return;
        c = cl->c;
        (void) sd_event_source_disable_unref(cl->io);
        (void) sd_event_source_disable_unref(cl->timer);
        if (cl->fd >= 0)
                (void) close(cl->fd);
        *(cl->prev ? &cl->prev->next : &c->first) = cl->next;
        *(cl->next ? &cl->next->prev : &c->last) = cl->prev;
        c->clients--;
        free(cl);
}

/* Best effort: a client gone already has nothing to read it. */
static void reply(int fd, const char *status, const char *text) {
        _cleanup_free_ char *line = NULL;
        int n = asprintf(&line, "%s%s%s\n", status, text && *text ? " " : "", text ? text : "");

        if (n > 0)
                (void) send(fd, line, (size_t) n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void client_answer(Client *cl) {
        char verb[CONTROL_MAX_VERB + 1], arg[CONTROL_MAX_ARG + 1];
        _cleanup_free_ char *text = NULL;
        char *nl = memchr(cl->buf, '\n', cl->len);
        int r;

        r = control_parse(cl->buf, (size_t) (nl - cl->buf) + 1, verb, arg);
        if (r < 0)
                reply(cl->fd, "error", "malformed request: expected \"VERB [ARG]\"");
        else {
                r = cl->c->handler(cl->c->userdata, (uint32_t) cl->uid, verb, arg, &text);
                reply(cl->fd, r < 0 ? "error" : "ok", text ? text : r < 0 ? strerror(-r) : "");
        }
        client_free(cl);
}

/* Reads what has come; answers and frees the client once its line is whole
 * (or cannot be).  Returns false when the client is gone. */
static bool client_read(Client *cl) {
        bool first = cl->len == 0;
        ssize_t n;

        n = recv(cl->fd, cl->buf + cl->len, sizeof cl->buf - 1 - cl->len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return true;
        if (n <= 0) {
                client_free(cl);
                return false;
        }
        cl->len += (size_t) n;
        cl->buf[cl->len] = 0;
        if (memchr(cl->buf, '\n', cl->len)) {
                client_answer(cl);
                return false;
        }
        if (cl->len >= sizeof cl->buf - 1) {
                reply(cl->fd, "error", "request longer than 512 bytes");
                client_free(cl);
                return false;
        }
        /* It has begun: the rest of the line may take the whole time. */
        if (first)
                (void) sd_event_source_set_time(cl->timer, cl->accepted + CONTROL_TIMEOUT_USEC);
        return true;
}

static int on_client(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        (void) client_read(userdata);
        return 0;
}

static int on_client_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Client *cl = userdata;

        reply(cl->fd, CONTROL_TIMEOUT, cl->len == 0 ? "nothing sent within 1 s; the request was not read" :
                                                      "no complete request within 5 s; it was not read");
        client_free(cl);
        return 0;
}

/* The table is full: the oldest client that has sent nothing goes, else the
 * oldest of all (none has a whole request: those are answered as read). */
static void make_room(Control *c) {
        Client *victim = c->first;

        for (Client *cl = c->first; cl; cl = cl->next)
                if (cl->len == 0) {
                        victim = cl;
                        break;
                }
        reply(victim->fd, CONTROL_BUSY, "the socket had too many clients; the request was not read, send it again");
        client_free(victim);
}

static bool peer_allowed(int fd, uid_t *ret) {
        struct ucred cred = {};
        socklen_t len = sizeof cred;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                log_warning_errno(negative_errno(), "Control socket: cannot tell who a client is: %m; refused.");
                return false;
        }
        if (cred.uid != 0 && cred.uid != geteuid()) {
                log_warning("Control socket: refused a client with uid %u.", (unsigned) cred.uid);
                reply(fd, "error", "refused: only root and the daemon's own user may use this socket");
                return false;
        }
        *ret = cred.uid;
        return true;
}

static Client *client_add(Control *c, int fd, uid_t uid) {
        Client *cl = calloc(1, sizeof(Client));
        int r;

        if (!cl)
                return NULL;
        *cl = (Client) { .c = c, .fd = fd, .uid = uid, .prev = c->last };
        /* The loop's time, which its timers count from too. */
        if (sd_event_now(c->event, CLOCK_MONOTONIC, &cl->accepted) < 0)
                cl->accepted = now(CLOCK_MONOTONIC);
        *(c->last ? &c->last->next : &c->first) = cl;
        c->last = cl;
        c->clients++;
        r = sd_event_add_io(c->event, &cl->io, fd, EPOLLIN, on_client, cl);
        /* Before the next accept: a flood of newcomers must not push out a
         * request that has come. */
        if (r >= 0)
                r = sd_event_source_set_priority(cl->io, SD_EVENT_PRIORITY_IMPORTANT);
        if (r >= 0)
                r = sd_event_add_time_relative(c->event, &cl->timer, CLOCK_MONOTONIC, CONTROL_SILENT_USEC, 0,
                                               on_client_timeout, cl);
        if (r < 0) {
                client_free(cl);
                return NULL;
        }
        return cl;
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Control *c = userdata;
        Client *cl;
        uid_t uid;
        int cfd;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
                return 0;
        if (!peer_allowed(cfd, &uid)) {
                (void) close(cfd);
                return 0;
        }
        if (c->clients >= CONTROL_MAX_CLIENTS)
                make_room(c);
        cl = client_add(c, cfd, uid);
        if (!cl) {
                (void) close(cfd);
                return 0;
        }
        /* retirectl writes its line as it connects: it may be here already. */
        (void) client_read(cl);
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
        /* The queue is the kernel's; the table is what holds our resources. */
        if (listen(c->fd, SOMAXCONN) < 0) {
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
        while (c->first)
                client_free(c->first);
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
