/* SPDX-License-Identifier: MIT */
/* LD_PRELOAD shim for the clock tests (tests/e2e/test_clock_steps.py): moves
 * the process's wall clock, and only that, as a clock step would.
 *
 * $RETIRED_CLOCK_OFFSET_FILE holds seconds (may be negative, a fraction)
 * added to CLOCK_REALTIME in clock_gettime(), gettimeofday() and time(); the
 * test rewrites the file to step the clock.  CLOCK_MONOTONIC and
 * CLOCK_BOOTTIME are left alone, as a real step leaves them.  An absolute
 * deadline of a CLOCK_REALTIME timerfd (sd-event's wall timers) is taken
 * back from the moved clock to the kernel's, so that it fires when the
 * moved clock reaches it, as it would on a machine whose clock really
 * reads so.  (libfaketime moves every timerfd deadline, monotonic and boot
 * ones too, which no real step does.)  A step made while such a timer is
 * armed moves it too, from a thread that watches the file, as a real step
 * would: a deadline stepped over fires at once. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>

#define FD_MAX 4096
#define REREAD_NS 10000000LL    /* the file is read again at most every 10 ms */

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_timerfd_create)(int, int);
static int (*real_timerfd_settime)(int, int, const struct itimerspec *, struct itimerspec *);
static unsigned char realtime_fd[FD_MAX];
static struct timespec deadline[FD_MAX];     /* an armed absolute deadline, on the moved clock */
static long long offset_ns, read_at_ns = -1;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void init(void) {
        if (!real_clock_gettime) {
                real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
                real_timerfd_create = dlsym(RTLD_NEXT, "timerfd_create");
                real_timerfd_settime = dlsym(RTLD_NEXT, "timerfd_settime");
        }
}

static long long read_offset(void) {
        const char *path = getenv("RETIRED_CLOCK_OFFSET_FILE");
        long long v = offset_ns;
        char buf[64];
        FILE *f;

        f = path ? fopen(path, "re") : NULL;
        if (f) {
                if (fgets(buf, sizeof buf, f))
                        v = (long long) (strtod(buf, NULL) * 1e9);
                fclose(f);
        }
        return v;
}

static long long offset(void) {
        struct timespec m;
        long long t, v;

        init();
        real_clock_gettime(CLOCK_MONOTONIC, &m);
        t = m.tv_sec * 1000000000LL + m.tv_nsec;
        pthread_mutex_lock(&lock);
        if (read_at_ns < 0 || t - read_at_ns >= REREAD_NS) {
                read_at_ns = t;
                offset_ns = read_offset();
        }
        v = offset_ns;
        pthread_mutex_unlock(&lock);
        return v;
}

static void shift(struct timespec *ts, long long ns) {
        long long t = ts->tv_sec * 1000000000LL + ts->tv_nsec + ns;

        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
        if (ts->tv_nsec < 0) {
                ts->tv_sec--;
                ts->tv_nsec += 1000000000LL;
        }
}

static int wall(clockid_t id) {
        return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_REALTIME_ALARM;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
        int r;

        init();
        r = real_clock_gettime(id, ts);
        if (r == 0 && wall(id))
                shift(ts, offset());
        return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
        struct timespec ts;

        (void) tz;
        if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
                return -1;
        tv->tv_sec = ts.tv_sec;         /* glibc declares it nonnull */
        tv->tv_usec = ts.tv_nsec / 1000;
        return 0;
}

time_t time(time_t *t) {
        struct timespec ts;

        if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
                return (time_t) -1;
        if (t)
                *t = ts.tv_sec;
        return ts.tv_sec;
}

int timerfd_create(int id, int flags) {
        int fd;

        init();
        fd = real_timerfd_create(id, flags);
        if (fd >= 0 && fd < FD_MAX)
                realtime_fd[fd] = wall(id);
        return fd;
}

static int arm(int fd, int flags, const struct timespec *at, long long off, struct itimerspec *old) {
        struct itimerspec its = { .it_value = *at };

        shift(&its.it_value, -off);
        if (its.it_value.tv_sec <= 0)
                its.it_value = (struct timespec) { .tv_nsec = 1 };     /* long past: at once, not disarmed */
        return real_timerfd_settime(fd, flags, &its, old);
}

int timerfd_settime(int fd, int flags, const struct itimerspec *new, struct itimerspec *old) {
        long long off;

        init();
        if (!new || !(flags & TFD_TIMER_ABSTIME) || fd < 0 || fd >= FD_MAX || !realtime_fd[fd] ||
            new->it_interval.tv_sec != 0 || new->it_interval.tv_nsec != 0 ||
            (new->it_value.tv_sec == 0 && new->it_value.tv_nsec == 0)) {
                if (fd >= 0 && fd < FD_MAX)
                        deadline[fd] = (struct timespec) {};
                return real_timerfd_settime(fd, flags, new, old);
        }
        off = offset();
        pthread_mutex_lock(&lock);
        deadline[fd] = new->it_value;
        pthread_mutex_unlock(&lock);
        return arm(fd, flags, &new->it_value, off, old);
}

/* A step moves the armed deadlines with it. */
static void *watch(void *arg) {
        long long seen = read_offset(), now_off;

        sigset_t all;

        /* The process's signals are for its own threads (retired takes
         * SIGTERM through a signalfd, blocked everywhere else). */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
        (void) arg;
        for (;;) {
                struct timespec pause = { .tv_nsec = REREAD_NS };

                nanosleep(&pause, NULL);
                now_off = read_offset();
                if (now_off == seen)
                        continue;
                seen = now_off;
                pthread_mutex_lock(&lock);
                offset_ns = now_off;
                for (int fd = 0; fd < FD_MAX; fd++)
                        if (realtime_fd[fd] && (deadline[fd].tv_sec || deadline[fd].tv_nsec))
                                (void) arm(fd, TFD_TIMER_ABSTIME, &deadline[fd], now_off, NULL);
                pthread_mutex_unlock(&lock);
        }
        return NULL;
}

__attribute__((constructor)) static void start(void) {
        pthread_t t;

        init();
        if (getenv("RETIRED_CLOCK_OFFSET_FILE") && pthread_create(&t, NULL, watch, NULL) == 0)
                (void) pthread_detach(t);
}
