/* SPDX-License-Identifier: MIT */
#pragma once

/* Small helpers in the style of systemd's src/basic/macro.h, shared by every
 * stage so that cleanup and error conventions read the same everywhere. */

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

static inline void freep(void *p) { free(*(void **) p); }
static inline void *mfree(void *p) { free(p); return NULL; }
static inline void fclosep(FILE **f) { if (*f) fclose(*f); }
static inline void closep(int *fd) { if (*fd >= 0) close(*fd); }

/* For secrets: overwritten before the memory goes back to the allocator. */
static inline void *erase_and_free(char *s) {
        if (s)
                explicit_bzero(s, strlen(s));
        free(s);
        return NULL;
}

static inline void erase_and_freep(char **s) { erase_and_free(*s); }

#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_fclose_ _cleanup_(fclosep)
#define _cleanup_close_ _cleanup_(closep)

/* Hand ownership out of a _cleanup_ variable. */
#define TAKE_PTR(p) ({ __typeof__(p) _t = (p); (p) = NULL; _t; })
#define TAKE_FD(fd) ({ int _t = (fd); (fd) = -1; _t; })

#define streq(a, b) (strcmp((a), (b)) == 0)
static inline int streq_ptr(const char *a, const char *b) {
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}
static inline const char *strna(const char *s) { return s ? s : "n/a"; }
static inline const char *strempty(const char *s) { return s ? s : ""; }
static inline bool startswith(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* asprintf() that leaves NULL, not an undefined pointer, when it fails:
 * 0 or -ENOMEM. */
static inline int asprintf_or_null(char **ret, const char *fmt, ...) _printf_(2, 3);
static inline int asprintf_or_null(char **ret, const char *fmt, ...) {
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vasprintf(ret, fmt, ap);
        va_end(ap);
        if (n < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* errno as a negative value, never 0, for callers that return -errno. */
static inline int negative_errno(void) { return errno > 0 ? -errno : -EIO; }

/* Time, in microseconds everywhere (as systemd's usec_t): the ledger stores
 * CLOCK_REALTIME, timers and the pacer use CLOCK_MONOTONIC. */
typedef uint64_t usec_t;

#define USEC_INFINITY   ((usec_t) UINT64_MAX)
#define NSEC_PER_USEC   ((usec_t) 1000ULL)
#define USEC_PER_MSEC   ((usec_t) 1000ULL)
#define MSEC_PER_SEC    ((usec_t) 1000ULL)
#define USEC_PER_SEC    ((usec_t) 1000000ULL)
#define USEC_PER_MINUTE (60 * USEC_PER_SEC)
#define USEC_PER_HOUR   (60 * USEC_PER_MINUTE)

static inline usec_t now(clockid_t clock) {
        struct timespec ts;

        (void) clock_gettime(clock, &ts);
        return (usec_t) ts.tv_sec * USEC_PER_SEC + (usec_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* Settings are seconds as doubles; negative or NaN becomes 0. */
static inline usec_t sec_to_usec(double s) {
        return s > 0 ? (usec_t) (s * (double) USEC_PER_SEC) : 0;
}

static inline double usec_to_sec(int64_t u) {
        return (double) u / (double) USEC_PER_SEC;
}

/* "1 phone", "2 phones": the words of a count for the operator. */
static inline const char *plural(uint64_t n, const char *one, const char *many) {
        return n == 1 ? one : many;
}
