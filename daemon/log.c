/* SPDX-License-Identifier: MIT */
/* Under systemd, stderr is a stream into the journal and loses structure,
 * so we detect that ($JOURNAL_STREAM names stderr's device and inode) and
 * send native entries instead; elsewhere we write plain lines. */

#include <inttypes.h>
#include <stdbool.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include "log.h"

static bool use_journal = false;
static char progress[160];     /* the bar drawn under the lines on a terminal, or "" */
static int max_level = LOG_INFO;
static const char *ident = "retired";

void log_setup(const char *name) {
        const char *e = getenv("JOURNAL_STREAM");
        uint64_t dev, ino;
        struct stat st;

        /* Unbuffered, a line went out a character at a time, a hundred
         * writes a line; buffered, each entry is one write, flushed whole. */
        (void) setvbuf(stderr, NULL, _IOFBF, BUFSIZ);

        ident = name;
        if (e && sscanf(e, "%" SCNu64 ":%" SCNu64, &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0)
                use_journal = (uint64_t) st.st_dev == dev && (uint64_t) st.st_ino == ino;
        e = getenv("RETIRED_LOG_LEVEL");
        if (e && streq(e, "debug"))
                max_level = LOG_DEBUG;
}

void log_set_max_level(int level) {
        max_level = level;
}

static void put_escaped(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        fprintf(stderr, "\\x%02x", (unsigned char) *s);
                else
                        fputc(*s, stderr);
}

/* " NAME=value", the value escaped: the API's text starts no line of its own. */
static void put_field(const char *name, const char *v) {
        if (!v)
                return;
        fputs(name, stderr);
        put_escaped(v);
}

static void emit(int level, const char *message_id, const LogFields *f, const char *msg) {
        if (use_journal) {
                char prio[16], status[32], attempt[32];
                _cleanup_free_ char *m = NULL, *mid = NULL, *pid = NULL, *num = NULL, *out = NULL, *nick = NULL,
                                    *in = NULL, *ob = NULL;
                struct iovec iov[12];
                size_t n = 0;

#define ADD(s) do { const char *_s = (s); if (_s) iov[n++] = (struct iovec) { .iov_base = (void *) _s, .iov_len = strlen(_s) }; } while (0)
                if (asprintf(&m, "MESSAGE=%s", msg) < 0)
                        return;
                snprintf(prio, sizeof prio, "PRIORITY=%d", level);
                ADD(m);
                ADD(prio);
                ADD("SYSLOG_IDENTIFIER=retired");
                if (message_id && asprintf(&mid, "MESSAGE_ID=%s", message_id) >= 0)
                        ADD(mid);
                if (f) {
                        if (f->phone_id && asprintf(&pid, "PHONE_ID=%s", f->phone_id) >= 0)
                                ADD(pid);
                        if (f->phone_number && asprintf(&num, "PHONE_NUMBER=%s", f->phone_number) >= 0)
                                ADD(num);
                        if (f->outcome && asprintf(&out, "OUTCOME=%s", f->outcome) >= 0)
                                ADD(out);
                        if (f->nickname && asprintf(&nick, "PHONE_NICKNAME=%s", f->nickname) >= 0)
                                ADD(nick);
                        if (f->inbound_agent && asprintf(&in, "INBOUND_AGENT_ID=%s", f->inbound_agent) >= 0)
                                ADD(in);
                        if (f->outbound_agent && asprintf(&ob, "OUTBOUND_AGENT_ID=%s", f->outbound_agent) >= 0)
                                ADD(ob);
                        if (f->http_status > 0) {
                                snprintf(status, sizeof status, "HTTP_STATUS=%d", f->http_status);
                                ADD(status);
                        }
                        if (f->attempt > 0) {
                                snprintf(attempt, sizeof attempt, "ATTEMPT=%u", f->attempt);
                                ADD(attempt);
                        }
                }
#undef ADD
                if (sd_journal_sendv(iov, (int) n) >= 0)
                        return;
        }
        /* One line per entry, the structured facts after the text; control
         * characters (say, in an API's error message) are escaped so that
         * nothing can start a line of its own. */
        flockfile(stderr);
        if (progress[0])
                fputs("\r\033[K", stderr);
        fprintf(stderr, "%s: ", ident);
        put_escaped(msg);
        if (f) {
                put_field(" PHONE_NUMBER=", f->phone_number);
                if (f->phone_id)
                        fprintf(stderr, " PHONE_ID=%s", f->phone_id);
                if (f->outcome)
                        fprintf(stderr, " OUTCOME=%s", f->outcome);
                put_field(" PHONE_NICKNAME=", f->nickname);
                if (f->inbound_agent)
                        fprintf(stderr, " INBOUND_AGENT_ID=%s", f->inbound_agent);
                if (f->outbound_agent)
                        fprintf(stderr, " OUTBOUND_AGENT_ID=%s", f->outbound_agent);
                if (f->http_status > 0)
                        fprintf(stderr, " HTTP_STATUS=%d", f->http_status);
                if (f->attempt > 0)
                        fprintf(stderr, " ATTEMPT=%u", f->attempt);
        }
        if (message_id)
                fprintf(stderr, " MESSAGE_ID=%s", message_id);
        fputc('\n', stderr);
        if (progress[0])
                fputs(progress, stderr);
        (void) fflush(stderr);
        funlockfile(stderr);
}

bool log_progress_possible(void) {
        const char *term = getenv("TERM");

        return !use_journal && isatty(STDERR_FILENO) && term && !streq(term, "dumb");
}

void log_progress(size_t done, size_t total, double rate, double eta) {
        char bar[31];
        size_t fill;

        if (!log_progress_possible())
                return;
        flockfile(stderr);
        if (total == 0) {
                if (progress[0])
                        fputs("\r\033[K", stderr);
                progress[0] = 0;
        } else {
                fill = done >= total ? 30 : done * 30 / total;
                memset(bar, '#', fill);
                memset(bar + fill, '.', 30 - fill);
                bar[30] = 0;
                if (eta >= 0)
                        snprintf(progress, sizeof progress, "\r\033[K[%s] %zu/%zu at %.1f/s, ETA %.0f s", bar, done,
                                 total, rate, eta);
                else
                        snprintf(progress, sizeof progress, "\r\033[K[%s] %zu/%zu", bar, done, total);
                fputs(progress, stderr);
        }
        fflush(stderr);
        funlockfile(stderr);
}

static void vevent(int level, const char *message_id, const LogFields *f, const char *fmt, va_list ap) {
        _cleanup_free_ char *msg = NULL;

        if (vasprintf(&msg, fmt, ap) < 0)
                return;
        emit(level, message_id, f, msg);
}

int log_internal(int level, int error, const char *fmt, ...) {
        int saved = errno;
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > max_level)
                return -error;
        errno = error;  /* so %m works */
        va_start(ap, fmt);
        vevent(level, NULL, NULL, fmt, ap);
        va_end(ap);
        errno = saved;
        return -error;
}

void log_event(int level, const char *message_id, const LogFields *f, const char *fmt, ...) {
        va_list ap;

        if (level > max_level)
                return;
        va_start(ap, fmt);
        vevent(level, message_id, f, fmt, ap);
        va_end(ap);
}
