/* SPDX-License-Identifier: MIT */
/* retired: keeps the declared phones released.  The main loop: load the
 * config, the key and the ledger, apply the declarations as a plan, and let
 * the engine reconcile; SIGHUP reloads, SIGTERM finishes what is in flight. */

#include <getopt.h>
#include <malloc.h>
#include <libgen.h>
#include <sys/inotify.h>
#include <sys/statvfs.h>
#include <curl/curl.h>
#include <signal.h>
#include <time.h>
#include <systemd/sd-daemon.h>

#include "control.h"
#include "engine.h"
#include "log.h"
#include "macro.h"
#include "messages.h"
#include "token.h"

#ifdef COVERAGE
#include <gcov.h>
#endif

/* The exit codes (retired(8)), for batch jobs that run --once. */
#define EXIT_SETTLED   0   /* every declared phone released, scheduled or waiting for its time */
#define EXIT_STOPPED   1   /* stopped before that (API unreachable, paused): run again later */
#define EXIT_OPERATOR  2   /* some phones need an operator: failed, unresolved or in use */
#define EXIT_SETUP     3   /* a config, ledger or key error: nothing was done */

typedef struct Manager {
        sd_event *event;
        Config *config;
        char *token;
        Ledger *ledger;
        Engine *engine;
        Control *control;
        sd_event_source *stop_timer, *debounce, *tick;
        sd_event_source *watch_dir, *watch_dropins;
        char held_hash[13];   /* a plan held back for approval, or "" */
        size_t held_count;
        bool once;
        bool ledger_read_only;   /* opened to read (-n, or no ledger yet) */
        bool ledger_failed;      /* it could not be opened (and the journal was told) */
        char *ledger_error;      /* why no ledger could be made, told after the config's own mistakes */
        int ledger_errno;
        int exit_code;
        uint64_t watchdog_usec;  /* WatchdogSec=, or 0 */
        usec_t pinged;           /* when on_ledger_progress() last pinged it */
        bool started;            /* READY=1 was sent: no more start extensions */
        bool interruptible;      /* a stop may cut the declarations' load or plan short */
        bool interrupted;        /* and did: what it began was taken back */
        bool stopping;           /* SIGTERM or SIGINT was served: no more reloads */
        Pause pause;          /* an operator's, as the ledger has it */
        char *rejected;       /* why the last reload was refused, for STATUS= */
        usec_t took_read;     /* the last load's reading of the files, usec */
} Manager;

#define DEBOUNCE_USEC   (500 * USEC_PER_MSEC)
/* Until READY=1, progress holds off TimeoutStartSec= too: a million
 * declarations on a busy machine may need longer than its 90 s, and a start
 * killed for that starts over, forever.  Each message grants this much more
 * from when it is sent, so a start that stops progressing still times out. */
#define START_EXTEND_USEC (30 * USEC_PER_SEC)
#define CANCEL_ENTRIES_MAX 100   /* cancellations one reload reports phone by phone */
#define STOP_GRACE_USEC (5 * USEC_PER_SEC)     /* past api.timeout, before giving up on calls in flight */
#define STATUS_SHARE    20   /* STATUS= takes at most 1/20 of the loop's time */

#ifdef COVERAGE
/* Coverage builds only (make coverage).  gcov writes its counts when the
 * process exits normally, as a stop by SIGTERM does; a SIGKILL (the crash
 * tests, a test's clean-up) would take all of them.  So the loop writes
 * them every COVERAGE_FLUSH_USEC and starts again from zero (the .gcda
 * files add up, runs are counted once): a kill loses at most that much. */
#define COVERAGE_FLUSH_USEC (200 * USEC_PER_MSEC)

static int on_coverage_flush(sd_event_source *s, uint64_t usec, void *userdata) {
        int r;

        __gcov_dump();
        __gcov_reset();
        r = sd_event_source_set_time_relative(s, COVERAGE_FLUSH_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return r;
}

static int coverage_flush_start(sd_event *e) {
        /* Floating: the loop owns it, and it ends with the loop. */
        return sd_event_add_time_relative(e, NULL, CLOCK_MONOTONIC, COVERAGE_FLUSH_USEC, 0, on_coverage_flush, NULL);
}
#endif

static const char *arg_config = "/etc/retired/retired.conf";
static bool arg_once = false, arg_dry_run = false, arg_check = false;

static void report_diag(const ConfDiag *d, const char *what) {
        for (size_t i = 0; i < d->n; i++)
                log_event(LOG_ERR, MESSAGE_CONFIG_REJECTED, NULL, "%s: %s", what, d->lines[i]);
        if (d->dropped)
                log_error("%s: %zu more problems not shown.", what, d->dropped);
}

/* Until the event loop runs, and while one of its callbacks works through a
 * million declarations, nothing else pings the watchdog or reads a signal:
 * the ledger's own progress does both, and before READY=1 extends the start
 * timeout too.  The ping goes at a quarter of WatchdogSec= (or of the
 * extension); work that makes no progress in SQLite still misses it, as a
 * hang should.  A SIGTERM or SIGINT waiting (blocked, for the loop's
 * signalfd) cuts short a load or plan that may be: SQLite takes back what
 * it began, and the loop serves the stop within a second, not after the
 * million rows. */
static bool on_ledger_progress(void *userdata) {
        Manager *m = userdata;
        usec_t every = START_EXTEND_USEC / 4, t;
        sigset_t pending;

        if (m->watchdog_usec > 0 && m->watchdog_usec < START_EXTEND_USEC)
                every = m->watchdog_usec / 4;
        if ((m->watchdog_usec > 0 || !m->started) && (t = now(CLOCK_MONOTONIC)) - m->pinged >= every) {
                if (m->watchdog_usec > 0)
                        (void) sd_notify(false, "WATCHDOG=1");
                if (!m->started)
                        (void) sd_notifyf(false, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long) START_EXTEND_USEC);
                m->pinged = t;
        }
        if (!m->interruptible || sigpending(&pending) < 0)
                return false;
        m->interrupted = sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1;
        return m->interrupted;
}

/* Work a stop may cut short begins; what ends it must not be. */
static void set_interruptible(Manager *m, bool on) {
        m->interruptible = on;
        if (on)
                m->interrupted = false;
}

/* Bringing the set in force back is never cut short. */
static int restore_declarations(Manager *m) {
        set_interruptible(m, false);
        return ledger_decls_restore(m->ledger);
}

/* A clock that went back since the last run (a machine booted with its
 * clock slow, not yet put right) dates what is recorded now before what
 * was; holds do not mind (they run on the boot-time clock), but a reader
 * of the history should know.  A hold stamped in another boot starts again:
 * that boot's clock says nothing about this one. */
static void note_clocks(Manager *m) {
        char was[21], is[21];
        int64_t last, t = (int64_t) now(CLOCK_REALTIME);
        uint64_t n;
        int r;

        if (ledger_last_recorded(m->ledger, &last) >= 0 && t < last &&
            rfc3339_format(t / (int64_t) USEC_PER_SEC, is) >= 0 && rfc3339_format(last / (int64_t) USEC_PER_SEC, was) >= 0)
                log_warning("The clock says %s, earlier than the last step on record (%s): it went back since. "
                            "Holds run on the boot-time clock and stay whole; history entries from now on may "
                            "be dated before earlier ones (their seq keeps the order).", is, was);
        r = ledger_holds_restart(m->ledger, &n);
        if (r < 0)
                log_error_errno(r, "Cannot start the holds of another boot again: %m (%s); they wait until it can.",
                                ledger_errmsg(m->ledger));
        else if (n > 0)
                log_notice("%" PRIu64 " %s from another boot (the machine restarted since) started again from now, whole.",
                           n, n == 1 ? "hold" : "holds");
}

/* At start, the ledger the config names: opened as soon as the settings
 * are read, for the declarations to go into.  One this start makes goes
 * again if the start fails (manager_free()): a bad config makes no file,
 * and the files are read once. */
static int open_ledger(void *userdata, const Config *c, Ledger **ret) {
        Manager *m = userdata;
        _cleanup_free_ char *error = NULL;
        int r;

        m->ledger_read_only = arg_check;
        r = ledger_open(c->ledger, m->ledger_read_only ? LEDGER_READ : LEDGER_WRITE, &m->ledger, &error);
        if (r < 0 && !arg_check && access(c->ledger, F_OK) < 0) {
                /* None can be made (no folder, no right to it): the declarations
                 * are read all the same, into an empty ledger in memory, so that
                 * the config's own mistakes are told too; the start fails after. */
                m->ledger_errno = r;
                m->ledger_error = error ? TAKE_PTR(error) : strdup(c->ledger);
                if (!m->ledger_error)
                        return log_oom();
                m->ledger_read_only = true;
                r = ledger_open(c->ledger, LEDGER_READ, &m->ledger, NULL);
        }
        m->ledger_failed = r < 0;
        if (r < 0) {
                if (error)
                        return log_error_errno(r, "%s", error);
                return log_error_errno(r, "Cannot open the ledger %s: %m", c->ledger);
        }
        ledger_on_progress(m->ledger, on_ledger_progress, m);
        if (!m->ledger_read_only)
                note_clocks(m);
        *ret = m->ledger;
        return 0;
}

/* Reads config and key together: a reload that cannot get both keeps both
 * old, and the declared set in force with them. */
static int load_config(Manager *m, Config **ret_config, char **ret_token) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(conf_diag_done) ConfDiag d = {};
        _cleanup_free_ char *token = NULL, *where = NULL;
        _cleanup_(decl_load_done) DeclLoad dl = { .ledger = m->ledger, .open = open_ledger, .userdata = m };
        DeclSink sink = decl_load_sink(&dl);
        int r;

        free(m->rejected);
        m->rejected = NULL;
        usec_t t0 = now(CLOCK_MONOTONIC);
        r = config_load(arg_config, &sink, &c, &d);
        m->took_read = now(CLOCK_MONOTONIC) - t0;
        if (r < 0 && (m->ledger_failed || m->interrupted))
                return r;       /* said so already, or a stop cut it short */
        if (m->ledger_error) {
                if (r < 0)
                        report_diag(&d, "Config rejected");
                return log_error_errno(m->ledger_errno, "%s", m->ledger_error);
        }
        if (r < 0) {
                report_diag(&d, "Config rejected");
                if (d.n == 0)
                        log_error_errno(r, "Config rejected: %s: %m", arg_config);
                if (d.n > 0)
                        m->rejected = strdup(d.lines[0]);
                else
                        (void) asprintf_or_null(&m->rejected, "%s: %s", arg_config, strerror(-r));
                return r;
        }
        if (arg_dry_run)
                c->dry_run = true;
        r = token_load(c, &token, &where);
        if (r < 0) {
                const char *why = r == -EPERM ? "group or others may access it; chmod 0600 it" :
                                  r == -ENODATA ? "it is empty" :
                                  r == -EBADMSG ? "it holds characters a key cannot have" :
                                  r == -EFBIG ? "it is too large to be a key" : NULL;
                if (why)
                        log_event(LOG_ERR, MESSAGE_CONFIG_REJECTED, NULL, "Cannot use the API key in %s: %s.",
                                  strna(where), why);
                else
                        log_event(LOG_ERR, MESSAGE_CONFIG_REJECTED, NULL, "Cannot read the API key (%s): %s.",
                                  strna(where), strerror(-r));
                (void) asprintf_or_null(&m->rejected, "API key %s: %s", strna(where), why ? why : strerror(-r));
                return restore_declarations(m) < 0 ? -EIO : r;
        }
        if (!m->token || !streq(m->token, token)) {
                char fp[TOKEN_FINGERPRINT_LEN + 1] = "?";

                (void) token_fingerprint(token, fp);
                log_info("API key %s from %s%s.", fp, where, m->token ? " (a new one)" : "");
        }
        *ret_config = TAKE_PTR(c);
        *ret_token = TAKE_PTR(token);
        return 0;
}

/* Declarations become ledger rows through one plan, applied in one
 * transaction; past the blast-radius limit the new releases wait. */
static int log_cancelled(const Change *ch, void *userdata) {
        log_event(LOG_NOTICE, MESSAGE_CANCELLED,
                  &(LogFields) { .phone_id = ch->id, .phone_number = ch->number, .outcome = "cancelled" },
                  "%s cancelled: no longer declared (was %s)", ch->key, state_to_string(ch->from));
        return 0;
}

/* The load's warnings (a phone declared more than once), "; "-joined after
 * "; ", for the load line: said once per load, where the load is told. */
static int warnings_text(const ConfDiag *w, char **ret) {
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f;

        *ret = NULL;
        if (w->n == 0)
                return 0;
        f = open_memstream(&text, &size);
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < w->n; i++)
                fprintf(f, "; %s", w->lines[i]);
        if (fclose(f) != 0)
                return -ENOMEM;
        *ret = TAKE_PTR(text);
        return 0;
}

/* The ledger kept, and its WAL given back after a large commit or a pass;
 * a reader in the way is met again at the next one. */
static void settle(Manager *m) {
        int r = ledger_settle(m->ledger);

        if (r < 0 && r != -EBUSY)
                log_warning_errno(r, "Cannot checkpoint the ledger's WAL: %m (%s); it is tried again after the "
                                  "next pass.", ledger_errmsg(m->ledger));
}

/* Where the plan was written: the ledger's folder, and SQLite's own
 * temporary files (its TEMP tables) in the first of the folders it looks at. */
static int log_no_space(int r, const Config *c) {
        _cleanup_free_ char *dir = strdup(c->ledger);
        const char *tmp = secure_getenv("SQLITE_TMPDIR");
        char free_dir[32] = "?", free_tmp[32] = "?";
        struct statvfs v;

        if (!dir)
                return log_oom();
        if (!tmp)
                tmp = secure_getenv("TMPDIR");
        if (!tmp)
                tmp = "/var/tmp";
        if (statvfs(dirname(dir), &v) >= 0)
                snprintf(free_dir, sizeof free_dir, "%" PRIu64 " kB free", (uint64_t) v.f_bavail * v.f_frsize / 1024);
        if (statvfs(tmp, &v) >= 0)
                snprintf(free_tmp, sizeof free_tmp, "%" PRIu64 " kB free", (uint64_t) v.f_bavail * v.f_frsize / 1024);
        return log_error_errno(r, "Cannot apply the plan: %m: the ledger's folder %s (%s) or the temporary folder "
                               "%s (%s) is full. Nothing of the plan was recorded; the ledger is as it was. Free "
                               "space there and start (or reload) again.", dir, free_dir, tmp, free_tmp);
}

static int apply_plan(Manager *m, const Config *c, const char *why) {
        _cleanup_(plan_freep) Plan *p = NULL;
        _cleanup_free_ char *warnings = NULL;
        int r;

        usec_t t0 = now(CLOCK_MONOTONIC), took_plan;

        r = plan_compute_changes(m->ledger, c, &p);
        took_plan = now(CLOCK_MONOTONIC) - t0;
        if (r < 0 && m->interrupted)
                return r;
        if (r < 0)
                return log_error_errno(r, "Cannot compute the plan: %m (%s)", ledger_errmsg(m->ledger));
        r = plan_apply(m->ledger, p, false);
        if (r < 0 && m->interrupted)
                return r;
        if (r == -ENOSPC)
                return log_no_space(r, c);
        if (r < 0)
                return log_error_errno(r, "Cannot apply the plan: %m (%s)", ledger_errmsg(m->ledger));
        /* Applied: what is left is telling, and must not be cut short. */
        set_interruptible(m, false);
        /* One entry per phone while that reads as news; past that, one entry
         * with the count (each step is in the ledger's history). */
        if (p->count[CHANGE_CANCEL] <= CANCEL_ENTRIES_MAX &&
            plan_foreach(p, CHANGE_CANCEL, CANCEL_ENTRIES_MAX, log_cancelled, NULL) < 0)
                log_warning("Cannot read back the cancellations (%s); the ledger's history has them.",
                            ledger_errmsg(m->ledger));
        if (p->count[CHANGE_CANCEL] > CANCEL_ENTRIES_MAX)
                log_event(LOG_NOTICE, MESSAGE_CANCELLED, &(LogFields) { .outcome = "cancelled" },
                          "%zu phones cancelled: no longer declared (retirectl history --state cancelled lists them).",
                          p->count[CHANGE_CANCEL]);
        m->held_hash[0] = 0;
        m->held_count = 0;
        if (p->needs_approval) {
                memcpy(m->held_hash, p->hash, sizeof m->held_hash);
                m->held_count = p->new_releases;
                log_event(LOG_CRIT, MESSAGE_APPROVAL_NEEDED, NULL,
                          "Approval needed: %zu new releases exceed safety.max_new_releases = %u; none of them "
                          "is applied. Review with 'retirectl plan' ('retirectl plan --live' shows what approving "
                          "would release), then run 'retirectl approve %s'.",
                          p->new_releases, c->max_new_releases, p->hash);
        }
        if (warnings_text(&c->warnings, &warnings) < 0)
                (void) log_oom();
        log_event(c->warnings.n > 0 ? LOG_WARNING : LOG_INFO, MESSAGE_CONFIG_LOADED, NULL,
                  "Config %s (%s): %zu declared; %zu added, %zu declared again, %zu cancelled, %zu updated%s%s.",
                  why, c->path, c->n_decls, p->needs_approval ? 0 : p->count[CHANGE_ADD],
                  p->needs_approval ? 0 : p->count[CHANGE_REDECLARE], p->count[CHANGE_CANCEL],
                  p->count[CHANGE_UPDATE], p->needs_approval ? "; new releases held for approval" : "",
                  strempty(warnings));
        /* A large start or reload says where its time went. */
        usec_t t1 = now(CLOCK_MONOTONIC);
        settle(m);
        t1 = now(CLOCK_MONOTONIC) - t1;
        if (m->took_read + took_plan + p->took_rows + p->took_history + p->took_changes + p->took_commit + t1 >=
            USEC_PER_SEC)
                log_info("Load steps: read %.2f s, plan %.2f s, rows added %.2f s, their history %.2f s, "
                         "other changes %.2f s, commit %.2f s, checkpoint %.2f s.",
                         (double) m->took_read / USEC_PER_SEC, (double) took_plan / USEC_PER_SEC,
                         (double) p->took_rows / USEC_PER_SEC, (double) p->took_history / USEC_PER_SEC,
                         (double) p->took_changes / USEC_PER_SEC,
                         (double) p->took_commit / USEC_PER_SEC, (double) t1 / USEC_PER_SEC);
        /* A large load leaves a large heap behind; an idle daemon should be small. */
        p = plan_free(p);
        malloc_trim(0);
        return 0;
}

/* The declared set just loaded stays in force only once it is applied. */
static int apply_declarations(Manager *m, const Config *c, const char *why) {
        int r = apply_plan(m, c, why);

        if (r < 0) {
                if (restore_declarations(m) < 0)
                        log_error("Cannot bring the previous declarations back (%s); restarting is the way out.",
                                  ledger_errmsg(m->ledger));
                return r;
        }
        if (ledger_decls_keep(m->ledger) < 0)
                log_warning("Cannot drop the previous declarations' copy (%s).", ledger_errmsg(m->ledger));
        return 0;
}

/* "PAUSED by uid 0 since 2026-12-01T10:00:00Z (reason); " or "". */
static void pause_text(const Pause *p, char *buf, size_t size) {
        char at[21] = "?";

        buf[0] = 0;
        if (!p->on)
                return;
        (void) rfc3339_format(p->at / (int64_t) USEC_PER_SEC, at);
        snprintf(buf, size, "PAUSED by uid %" PRIu32 " since %s%s%s%s; ", p->uid, at, p->reason ? " (" : "",
                 p->reason ? p->reason : "", p->reason ? ")" : "");
}

static void notify_status(Manager *m) {
        char buf[512], held[128] = "", paused[PAUSE_MAX_REASON + 64];

        if (m->held_hash[0])
                snprintf(held, sizeof held, "APPROVAL NEEDED for %zu new %s: retirectl plan, then "
                         "retirectl approve %s; ", m->held_count, plural(m->held_count, "release", "releases"),
                         m->held_hash);
        pause_text(&m->pause, paused, sizeof paused);
        if (engine_status(m->engine, buf, sizeof buf) >= 0)
                (void) sd_notifyf(false, "STATUS=%s%s%s%s%s%s%s", paused, m->config->dry_run ? "DRY RUN: " : "", held,
                                  m->rejected ? "CONFIG REJECTED (old one in force): " : "",
                                  m->rejected ? m->rejected : "", m->rejected ? "; " : "", buf);
}

/* What --once ends with: settled, unless some declared phones need an operator. */
static int once_done(Manager *m) {
        uint64_t c[_STATE_MAX], needing = 0;
        int r = ledger_counts(m->ledger, c);

        /* A failed row no longer declared was the operator's choice: history, not work. */
        if (r >= 0)
                r = ledger_decls_needing_operator(m->ledger, &needing);
        if (r < 0) {
                log_error("Cannot count the ledger's phones: %s.", ledger_errmsg(m->ledger));
                return EXIT_SETUP;
        }
        log_info("Done: %" PRIu64 " released, %" PRIu64 " scheduled, %" PRIu64 " waiting for their time, %" PRIu64
                 " failed, %" PRIu64 " unresolved, %" PRIu64 " in use.", c[STATE_RELEASED], c[STATE_SCHEDULED],
                 c[STATE_PENDING] + c[STATE_DEFERRED] + c[STATE_RETRYING], c[STATE_FAILED], c[STATE_UNRESOLVED],
                 c[STATE_IN_USE]);
        if (needing == 0)
                return EXIT_SETTLED;
        log_warning("%" PRIu64 " declared %s an operator: retirectl list --state failed, retirectl list --state "
                    "unresolved, retirectl list --state in_use.", needing, plural(needing, "phone needs", "phones need"));
        return EXIT_OPERATOR;
}

/* Told when a pass starts and when it ends. */
static void on_idle(Engine *e, void *userdata) {
        Manager *m = userdata;
        EngineProgress p;
        bool pass = engine_progress(e, &p);

        if (!pass)
                settle(m);

        /* The status ticks during a pass only: an idle daemon sleeps. */
        if (pass && sd_event_source_get_enabled(m->tick, NULL) == 0)
                (void) sd_event_source_set_time_relative(m->tick, USEC_PER_SEC);
        (void) sd_event_source_set_enabled(m->tick, pass ? SD_EVENT_ON : SD_EVENT_OFF);
        log_progress(0, 0, 0, 0);
        notify_status(m);
        if (!m->once || engine_busy(e))
                return;
        if (engine_paused(e)) {
                /* A refused key or an unwritable ledger: no later run fixes it by itself. */
                log_error("Stopping: calls are paused: %s.", engine_paused(e));
                m->exit_code = EXIT_SETUP;
        } else if (m->pause.on) {
                log_error("Stopping: releases are paused by an operator (retirectl resume lets them go).");
                m->exit_code = EXIT_STOPPED;
        } else if (engine_stuck(e)) {
                log_error("Stopping: %s; the phones concerned keep their state and are looked at on the next run.",
                          engine_stuck(e));
                m->exit_code = EXIT_STOPPED;
        } else if (engine_settled(e))
                m->exit_code = once_done(m);
        else
                return;
        (void) sd_event_exit(m->event, m->exit_code);
}

/* During a pass, STATUS= (and on a terminal the bar) once a second, or
 * less often where the ledger is slow to count: a million rows take a
 * fifth of a second, and a pass of days at the rate limit would spend a
 * fifth of them saying how it does. */
static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        usec_t start = now(CLOCK_MONOTONIC), next;
        EngineProgress p;

        if (engine_progress(m->engine, &p)) {
                notify_status(m);
                if (m->once)
                        log_progress(p.done, p.total, p.rate, p.eta);
        }
        next = (now(CLOCK_MONOTONIC) - start) * STATUS_SHARE;
        (void) sd_event_source_set_time(s, usec + (next > USEC_PER_SEC ? next : USEC_PER_SEC));
        return 0;
}

static void watch_dropins(Manager *m);

static int reload(Manager *m, const char *why) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *token = NULL;
        int r;

        /* Waiting for the calls in flight is no time to read a million
         * declarations; the next start reads them anyway. */
        if (m->stopping) {
                log_info("Not reloading (%s): the daemon is stopping.", why);
                return -ECANCELED;
        }
        log_info("Reloading (%s).", why);
        (void) sd_notifyf(false, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long) now(CLOCK_MONOTONIC));
        set_interruptible(m, true);
        r = load_config(m, &c, &token);
        if (r >= 0)
                r = apply_declarations(m, c, "reloaded");
        set_interruptible(m, false);
        if (r >= 0) {
                /* Before READY=1: nothing decided on the old declarations leaves after it. */
                engine_declarations_changed(m->engine);
                r = engine_set_config(m->engine, c, token);
        }
        if (r < 0 && m->interrupted)
                log_notice("Reload cut short by a stop; the previous config stays in force.");
        else if (r < 0)
                log_warning("Reload failed; the previous config stays in force.");
        else {
                config_free(m->config);
                m->config = TAKE_PTR(c);
                erase_and_free(m->token);
                m->token = TAKE_PTR(token);
                if (m->watch_dir)
                        watch_dropins(m);
                engine_request_pass(m->engine, true);
        }
        (void) sd_notify(false, "READY=1");
        notify_status(m);
        return r;
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) reload(userdata, "SIGHUP");
        return 0;
}

static void stop_idle(Engine *e, void *userdata) {
        Manager *m = userdata;
        if (!engine_busy(e))
                (void) sd_event_exit(m->event, m->exit_code);
}

static int on_stop_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        log_warning("Calls still in flight after the stop timeout; exiting. They will be looked at on the next start.");
        return sd_event_exit(m->event, m->exit_code);
}

static int on_sigterm(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        log_info("Stopping (%s): no new calls; waiting for those in flight.", strsignal((int) si->ssi_signo));
        (void) sd_notify(false, "STOPPING=1");
        m->stopping = true;
        if (m->debounce)
                (void) sd_event_source_set_enabled(m->debounce, SD_EVENT_OFF);
        engine_on_idle(m->engine, stop_idle, m);
        if (engine_stop(m->engine))
                return sd_event_exit(m->event, m->exit_code);
        /* curl ends each call within api.timeout; this is a last resort. */
        return sd_event_add_time_relative(m->event, &m->stop_timer, CLOCK_MONOTONIC,
                                          sec_to_usec(m->config->timeout) + STOP_GRACE_USEC, 0, on_stop_timeout, m);
}

static int control_approve(Manager *m, const char *hash, char **text) {
        size_t n = 0;
        int r;

        set_interruptible(m, true);
        r = plan_approve(m->ledger, m->config, hash, text, &n);
        set_interruptible(m, false);
        if (r < 0 && m->interrupted) {
                free(*text);
                *text = NULL;
                return asprintf_or_null(text, "the daemon is stopping; nothing was approved"), r;
        }
        if (r < 0)
                return r;
        log_event(LOG_NOTICE, MESSAGE_CONFIG_LOADED, NULL, "Plan %s approved: %zu new releases applied.", hash, n);
        m->held_hash[0] = 0;
        m->held_count = 0;
        engine_request_pass(m->engine, false);
        notify_status(m);
        return 0;
}

static int control_pause(Manager *m, uint32_t uid, const char *reason, char **text) {
        _cleanup_(pause_done) Pause p = {};
        int64_t t = (int64_t) now(CLOCK_REALTIME);
        int r;

        if (m->pause.on)
                return asprintf_or_null(text, "already paused"), 0;
        r = ledger_pause_set(m->ledger, uid, t, *reason ? reason : NULL);
        if (r == -E2BIG)
                return asprintf_or_null(text, "the reason is longer than %d characters", PAUSE_MAX_REASON), r;
        if (r < 0)
                return asprintf_or_null(text, "cannot record the pause: %s", ledger_errmsg(m->ledger)), r;
        r = ledger_pause_get(m->ledger, &p);
        if (r < 0)
                return r;
        pause_done(&m->pause);
        m->pause = p;
        p = (Pause) {};
        engine_hold(m->engine, true);
        log_event(LOG_WARNING, MESSAGE_PAUSED, NULL, "Releases paused by uid %" PRIu32 "%s%s: no DELETE leaves until "
                  "'retirectl resume'.", uid, *reason ? ": " : "", reason);
        notify_status(m);
        return asprintf_or_null(text, "paused: no DELETE leaves until 'retirectl resume'");
}

static int control_resume(Manager *m, uint32_t uid, char **text) {
        int r;

        if (!m->pause.on)
                return asprintf_or_null(text, "not paused"), 0;
        r = ledger_pause_clear(m->ledger);
        if (r < 0)
                return asprintf_or_null(text, "cannot record the resume: %s", ledger_errmsg(m->ledger)), r;
        pause_done(&m->pause);
        log_event(LOG_NOTICE, MESSAGE_RESUMED, NULL, "Releases resumed by uid %" PRIu32 ".", uid);
        engine_hold(m->engine, false);
        notify_status(m);
        return asprintf_or_null(text, "resumed");
}

static int on_control(void *userdata, uint32_t uid, const char *verb, const char *arg, char **text) {
        Manager *m = userdata;
        int r;

        if (streq(verb, "pause"))
                return control_pause(m, uid, arg, text);
        if (streq(verb, "resume") && !*arg)
                return control_resume(m, uid, text);

        if (streq(verb, "reload") && !*arg) {
                r = reload(m, "retirectl reload");
                if (m->rejected)
                        return asprintf_or_null(text, "config rejected, the previous one stays in force: %s",
                                                m->rejected), -EINVAL;
                if (r < 0 && (m->interrupted || m->stopping))
                        return asprintf_or_null(text, "the daemon is stopping; the previous config stays in force"), r;
                if (r < 0)
                        return asprintf_or_null(text, "reload failed, the previous config stays in force "
                                                "(the journal says why)"), r;
                return asprintf_or_null(text, "reloaded");
        }
        if (streq(verb, "retry") && *arg) {
                r = ledger_retry(m->ledger, arg, text);
                if (r < 0)
                        return r;
                log_info("%s: retry requested by an operator; pending again.", arg);
                engine_request_pass(m->engine, false);
                return 0;
        }
        if (streq(verb, "approve") && *arg)
                return control_approve(m, arg, text);
        if (streq(verb, "status") && !*arg) {
                char buf[512];
                r = engine_status(m->engine, buf, sizeof buf);
                return r < 0 ? r : asprintf_or_null(text, "%s", buf);
        }
        return asprintf_or_null(text, "unknown request '%s'", verb), -EOPNOTSUPP;
}

static int on_debounced(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) reload(userdata, "the config changed on disk");
        return 0;
}

/* Editors save by rename, and a change often touches several files: wait
 * for the writes to settle, then reload once. */
static int on_config_change(sd_event_source *s, const struct inotify_event *ev, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ char *main_copy = strdup(arg_config), *dropin_copy = strdup(m->config->releases_dir);
        size_t n = ev->len > 0 ? strlen(ev->name) : 0;
        int r;

        if (!main_copy || !dropin_copy || m->stopping)
                return 0;
        /* Only our files count: the ledger or an editor's swap file may live
         * in the same folder. */
        if (s == m->watch_dir ? n == 0 || (!streq(ev->name, basename(main_copy)) &&
                                            !streq(ev->name, basename(dropin_copy)))
                              : n < 6 || ev->name[0] == '.' || !streq(ev->name + n - 5, ".conf"))
                return 0;
        r = sd_event_source_set_time_relative(m->debounce, DEBOUNCE_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->debounce, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Cannot wait for the edits to settle (%m); reload with 'retirectl reload'.");
        return 0;
}

/* IN_ATTRIB: a file written under umask 077 and then chmod'ed (as install(1)
 * and many hands do) is unreadable at its close, and readable only after. */
#define WATCH_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_ATTRIB)

/* (Re)watches the drop-in folder: it may appear after start, or move on a
 * reload. */
static void watch_dropins(Manager *m) {
        int r;

        m->watch_dropins = sd_event_source_disable_unref(m->watch_dropins);
        r = sd_event_add_inotify(m->event, &m->watch_dropins, m->config->releases_dir, WATCH_MASK,
                                 on_config_change, m);
        if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Cannot watch %s (edits there need a reload): %m", m->config->releases_dir);
}

static int watch_config(Manager *m) {
        _cleanup_free_ char *copy = strdup(arg_config);
        int r;

        if (!copy)
                return -ENOMEM;
        r = sd_event_add_time(m->event, &m->debounce, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_debounced, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->debounce, SD_EVENT_OFF);
        if (r < 0)
                return r;
        r = sd_event_add_inotify(m->event, &m->watch_dir, dirname(copy), WATCH_MASK, on_config_change, m);
        if (r < 0)
                return r;
        watch_dropins(m);
        return 0;
}

static void manager_free(Manager *m) {
        control_free(m->control);
        (void) sd_event_source_disable_unref(m->debounce);
        (void) sd_event_source_disable_unref(m->tick);
        (void) sd_event_source_disable_unref(m->watch_dir);
        (void) sd_event_source_disable_unref(m->watch_dropins);
        engine_free(m->engine);
        /* Made by a start that did not get as far as applying its plan. */
        ledger_discard(m->ledger);
        config_free(m->config);
        erase_and_free(m->token);
        pause_done(&m->pause);
        (void) sd_event_source_disable_unref(m->stop_timer);
        sd_event_unref(m->event);
        free(m->rejected);
        free(m->ledger_error);
}

/* A stop during the start's load or plan leaves the ledger as it was. */
static int start_failed(Manager *m) {
        if (!m->interrupted)
                return EXIT_SETUP;
        log_notice("Stopped while starting: nothing of this start was recorded; the ledger is as it was.");
        (void) sd_notify(false, "STOPPING=1");
        return m->once ? EXIT_STOPPED : EXIT_SUCCESS;
}

/* Blocked from the start, for the loop's signalfd: a stop that comes while a
 * million declarations are read waits for no more than the ledger's next
 * progress call (a check, -n, has no loop). */
static int block_stop_signals(void) {
        sigset_t mask;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        if (!arg_check && sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(negative_errno(), "Cannot block signals: %m");
        return 0;
}

/* Loads the config and the ledger at start.  A failure here is for the
 * caller's start_failed(). */
static int load_at_start(Manager *m) {
        int r;

        set_interruptible(m, !arg_check);
        r = load_config(m, &m->config, &m->token);
        set_interruptible(m, false);
        return r;
}

/* -n: the verdict on the config just loaded; returns the exit code. */
static int check_report(Manager *m) {
        _cleanup_free_ char *warning = NULL;

        if (config_token_file_warning(m->config, &warning) < 0) {
                (void) log_oom();
                return EXIT_SETUP;
        }
        if (warning)
                fprintf(stderr, "retired: warning: %s\n", warning);
        for (size_t i = 0; i < m->config->warnings.n; i++)
                fprintf(stderr, "retired: warning: %s\n", m->config->warnings.lines[i]);
        (void) fflush(stderr);  /* before the verdict below, as it reads */
        printf("%s: OK, %zu %s declared\n", arg_config, m->config->n_decls,
               plural(m->config->n_decls, "release", "releases"));
        return 0;
}

/* The loop with its signals, watchdog and (off until needed) status timer. */
static int setup_event_loop(Manager *m) {
        int r;

        r = sd_event_default(&m->event);
        if (r < 0)
                return log_error_errno(r, "Cannot create the event loop: %m");
        if ((r = sd_event_add_signal(m->event, NULL, SIGTERM, on_sigterm, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGINT, on_sigterm, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m)) < 0)
                return log_error_errno(r, "Cannot watch signals: %m");
#ifdef COVERAGE
        r = coverage_flush_start(m->event);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the coverage flush: %m");
#endif
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                log_warning_errno(r, "Cannot enable the watchdog ($WATCHDOG_USEC): %m");

        r = sd_event_add_time_relative(m->event, &m->tick, CLOCK_MONOTONIC, USEC_PER_SEC, 100 * USEC_PER_MSEC,
                                       on_tick, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->tick, SD_EVENT_OFF);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the status timer: %m");
        return 0;
}

/* Takes the ledger's pause record over, holding the engine if it is on.
 * Returns a negative errno (already logged) if it cannot be read at all. */
static int read_pause_record(Manager *m) {
        int r;

        r = ledger_pause_get(m->ledger, &m->pause);
        if (r == -EBADMSG) {
                /* Unreadable: the safe reading of a pause is that it is on. */
                log_warning("The ledger's pause record cannot be read; releases stay paused until 'retirectl resume'.");
                m->pause.on = true;
        } else if (r < 0)
                return log_error_errno(r, "Cannot read the ledger's pause record: %m (%s)", ledger_errmsg(m->ledger));
        if (m->pause.on) {
                engine_hold(m->engine, true);
                log_warning("Releases are paused (since an operator's 'retirectl pause'): no DELETE leaves until "
                            "'retirectl resume'.");
        }
        return 0;
}

/* A service (not --once) takes commands and follows edits of its config. */
static int listen_and_watch(Manager *m) {
        int r;

        if (m->once)
                return 0;
        r = control_open(m->event, m->config->control_socket, on_control, m, &m->control);
        if (r < 0)
                return log_error_errno(r, "Cannot listen on %s: %m", m->config->control_socket);
        r = watch_config(m);
        if (r < 0)
                return log_error_errno(r, "Cannot watch the config files: %m");
        return 0;
}

/* Says READY=1 and runs the loop until a stop; returns its exit code. */
static int go_ready(Manager *m) {
        int r;

        if (m->config->dry_run)
                log_notice("Dry run: observing and logging only; nothing will be released.");

        (void) sd_notify(false, "READY=1");
        m->started = true;
        notify_status(m);
        engine_request_pass(m->engine, true);
        r = sd_event_loop(m->event);
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        return r;
}

static int run(void) {
        _cleanup_(manager_free) Manager m = { .once = arg_once };
        int r;

        if (sd_watchdog_enabled(false, &m.watchdog_usec) <= 0)
                m.watchdog_usec = 0;
        r = block_stop_signals();
        if (r < 0)
                return r;
        if (load_at_start(&m) < 0)
                return start_failed(&m);
        if (arg_check)
                return check_report(&m);

        r = setup_event_loop(&m);
        if (r < 0)
                return r;
        r = engine_new(m.event, m.ledger, &m.engine);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the engine: %m");
        r = engine_set_config(m.engine, m.config, m.token);
        if (r < 0) {
                (void) log_error_errno(r, "Cannot set up the API client: %m");
                return EXIT_SETUP;
        }
        engine_on_idle(m.engine, on_idle, &m);
        if (read_pause_record(&m) < 0)
                return EXIT_SETUP;
        set_interruptible(&m, true);
        r = apply_declarations(&m, m.config, "loaded");
        set_interruptible(&m, false);
        if (r < 0)
                return start_failed(&m);
        r = listen_and_watch(&m);
        if (r < 0)
                return r;
        return go_ready(&m);
}

static void help(void) {
        printf("Usage: retired [-c FILE] [--once] [--dry-run] [-n]\n\n"
               "Releases the phone numbers declared in FILE through the Diga API.\n\n"
               "  -c, --config FILE  main config (default /etc/retired/retired.conf)\n"
               "      --once         run until every declared phone is settled, then exit\n"
               "      --dry-run      observe and log what would be released; release nothing\n"
               "  -n, --check        check the config and the API key, then exit\n"
               "  -h, --help         this text\n"
               "      --version      the version\n");
}

int main(int argc, char **argv) {
        enum { ARG_ONCE = 0x100, ARG_DRY_RUN, ARG_VERSION };
        static const struct option options[] = {
                { "config",  required_argument, NULL, 'c' },
                { "once",    no_argument,       NULL, ARG_ONCE },
                { "dry-run", no_argument,       NULL, ARG_DRY_RUN },
                { "check",   no_argument,       NULL, 'n' },
                { "help",    no_argument,       NULL, 'h' },
                { "version", no_argument,       NULL, ARG_VERSION },
                {}
        };
        int c, r;

        while ((c = getopt_long(argc, argv, "c:nh", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        arg_config = optarg;
                        break;
                case ARG_ONCE:
                        arg_once = true;
                        break;
                case ARG_DRY_RUN:
                        arg_dry_run = true;
                        break;
                case 'n':
                        arg_check = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("retired %s\n", VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'retired --help' for more information.\n");
                        return EXIT_SETUP;
                }
        if (optind < argc) {
                fprintf(stderr, "retired: unexpected argument '%s'\nTry 'retired --help' for more information.\n",
                        argv[optind]);
                return EXIT_SETUP;
        }
        log_setup("retired");
        r = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (r != 0) {
                log_error("Cannot initialise libcurl.");
                return 1;
        }
        r = run();
        curl_global_cleanup();
        return r < 0 ? 1 : r;
}
