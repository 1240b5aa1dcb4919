/* SPDX-License-Identifier: MIT */
/* retirectl: the operator's view of retired.  It reads through state/ only,
 * with a read-only connection.  What it changes (retry, approve, reload) goes
 * to the daemon over its control socket; with no daemon, retry and approve
 * write the ledger themselves, as its one writer (state/ takes the lock). */

#include <ctype.h>
#include <getopt.h>
#include <signal.h>
#include <inttypes.h>
#include <time.h>

#include "conf.h"
#include "control.h"
#include "macro.h"
#include "retirectl.h"
#include "state.h"

const char *arg_config = "/etc/retired/retired.conf";
const char *arg_ledger = NULL;
char **saved_argv = NULL;
static bool arg_json = false;
static bool arg_live = false;
static int arg_state = -1;
static bool arg_csv = false;
static bool arg_openmetrics = false;
static int64_t arg_since = 0, arg_until = 0;   /* usec; 0 = open */
static int64_t arg_after_seq = 0;              /* 0 = from the first step */


void json_str(const char *s) {
        if (!s) {
                fputs("null", stdout);
                return;
        }
        putchar('"');
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p == '"' || *p == '\\')
                        printf("\\%c", *p);
                else if (*p < 0x20)
                        printf("\\u%04x", *p);
                else
                        putchar(*p);
        }
        putchar('"');
}

void json_time(int64_t t) {
        char buf[21];
        if (t <= 0 || rfc3339_format(t, buf) < 0)
                fputs("null", stdout);
        else
                json_str(buf);
}

const char *time_str(int64_t t, char buf[static 21]) {
        if (t <= 0 || rfc3339_format(t, buf) < 0)
                return "-";
        return buf;
}

static void print_diag(const ConfDiag *d) {
        for (size_t i = 0; i < d->n; i++)
                fprintf(stderr, "%s\n", d->lines[i]);
        if (d->dropped)
                fprintf(stderr, "(%zu more problems not shown)\n", d->dropped);
}

/* What loaded but may not be what was meant: on stderr, so that the plan's
 * lines and its JSON stay what they were. */
static void print_warnings(const Config *c, bool notes) {
        for (size_t i = 0; notes && i < c->notes.n; i++)
                fprintf(stderr, "retirectl: note: %s\n", c->notes.lines[i]);
        if (notes && c->notes.dropped)
                fprintf(stderr, "retirectl: note: (%zu more not shown)\n", c->notes.dropped);
        for (size_t i = 0; i < c->warnings.n; i++)
                fprintf(stderr, "retirectl: warning: %s\n", c->warnings.lines[i]);
}

int load(const DeclSink *sink, bool settings_only, Config **ret) {
        _cleanup_(conf_diag_done) ConfDiag d = {};
        int r = settings_only ? config_load_settings(arg_config, ret, &d) : config_load(arg_config, sink, ret, &d);
        if (r < 0) {
                print_diag(&d);
                if (d.n == 0)
                        fprintf(stderr, "%s: %s\n", arg_config, strerror(-r));
        }
        return r;
}

/* The settings, for the commands that need only where things are: a
 * broken declaration does not keep `status` or `list` from working. */
int load_config(Config **ret) {
        return load(NULL, true, ret);
}

static int open_read(void *userdata, const Config *c, Ledger **ret) {
        _cleanup_free_ char *error = NULL;
        Ledger **l = userdata;
        int r;

        r = ledger_open(arg_ledger ? arg_ledger : c->ledger, LEDGER_READ, l, &error);
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", error ? error : strerror(-r));
                return r;
        }
        *ret = *l;
        return 0;
}

/* The settings and the declarations, these into the ledger's TEMP tables:
 * the one given, or the config's (read-only) into *l. */
int load_declarations(Ledger **l, Config **ret) {
        _cleanup_(decl_load_done) DeclLoad dl = { .ledger = *l, .open = open_read, .userdata = l };
        DeclSink sink = decl_load_sink(&dl);

        return load(&sink, false, ret);
}

/* The read commands only need the ledger's path; --ledger spares them a
 * config that does not parse. */
static int open_ledger(Ledger **ret, Config **cfg) {
        _cleanup_free_ char *error = NULL;
        const char *path = arg_ledger;
        int r;

        if (!path) {
                r = load_config(cfg);
                if (r < 0) {
                        fprintf(stderr, "retirectl: cannot find the ledger without a valid config "
                                "(fix it, or pass --ledger PATH)\n");
                        return r;
                }
                path = (*cfg)->ledger;
        }
        r = ledger_open(path, LEDGER_READ, ret, &error);
        if (r < 0)
                fprintf(stderr, "retirectl: %s\n", error ? error : strerror(-r));
        return r;
}

static int verb_check(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        _cleanup_free_ char *warning = NULL;
        uint64_t counts[_STATE_MAX], total = 0;
        int r;

        if (load_declarations(&l, &c) < 0)
                return EXIT_ERROR;
        if (ledger_counts(l, counts) < 0) {
                fprintf(stderr, "%s: %s\n", c->ledger, ledger_errmsg(l));
                return EXIT_ERROR;
        }
        for (int s = 0; s < _STATE_MAX; s++)
                total += counts[s];
        r = config_token_file_warning(c, &warning);
        if (r < 0)
                return EXIT_ERROR;
        if (warning)
                fprintf(stderr, "retirectl: warning: %s\n", warning);
        print_warnings(c, true);
        printf("%s: OK, %zu %s declared in %zu %s, ledger %s with %" PRIu64 " %s\n", c->path, c->n_decls,
               plural(c->n_decls, "release", "releases"), c->n_files, plural(c->n_files, "file", "files"),
               arg_ledger ? arg_ledger : c->ledger, total, plural(total, "row", "rows"));
        return EXIT_OK;
}

static int print_change_json(const Change *c, void *userdata) {
        bool *first = userdata;

        printf("%s\n    {\"kind\": ", *first ? "" : ",");
        *first = false;
        json_str(change_kind_to_string(c->kind));
        printf(", \"key\": ");
        json_str(c->key);
        printf(", \"id\": ");
        json_str(c->id);
        printf(", \"number\": ");
        json_str(c->number);
        printf(", \"from\": ");
        json_str(c->kind == CHANGE_ADD ? NULL : state_to_string(c->from));
        printf(", \"to\": ");
        json_str(state_to_string(c->to));
        printf(", \"not_before\": ");
        json_time(c->not_before);
        printf(", \"declared_at\": ");
        json_str(c->declared_at);
        printf(", \"in_use\": ");
        json_str(in_use_to_string(c->in_use));
        putchar('}');
        return 0;
}

/* A plan may be a million lines: written piece by piece under the one
 * lock verb_plan() takes for them all, with no format to parse. */
static void put(const char *s) {
        if (s)
                (void) fputs_unlocked(s, stdout);
}

static int print_change(const Change *c, void *userdata) {
        static const char sign[_CHANGE_MAX] = {
                [CHANGE_ADD] = '+', [CHANGE_REDECLARE] = '+', [CHANGE_CANCEL] = '-',
                [CHANGE_UPDATE] = '~', [CHANGE_KEEP] = '!',
        };
        const char *kind = change_kind_to_string(c->kind);
        char buf[21];

        (void) putchar_unlocked(sign[c->kind]);
        (void) putchar_unlocked(' ');
        put(kind);
        for (size_t n = strlen(kind); n < 10; n++)     /* as "%-9s ": the longest kind and a blank */
                (void) putchar_unlocked(' ');
        put(c->key);
        if (c->number && !streq(c->number, c->key)) {
                put(" number=");
                put(c->number);
        }
        if (c->id && !streq(c->id, c->key)) {
                put(" id=");
                put(c->id);
        }
        if (c->not_before > 0) {
                put(" not_before=");
                put(time_str(c->not_before, buf));
        }
        /* "refuse" is the default and says nothing new; "release" is what
         * may cut a live line. */
        if (c->in_use == IN_USE_RELEASE)
                put(" in_use=release");
        switch (c->kind) {
        case CHANGE_ADD:
                put(" (declared at ");
                put(c->declared_at);
                break;
        case CHANGE_KEEP:
                put(" (");
                put(state_to_string(c->from));
                put(c->from == STATE_RELEASED || c->from == STATE_SCHEDULED ?
                    ", no longer declared: cannot be undone" : ", no longer declared: left as is");
                break;
        default:
                put(" (");
                put(state_to_string(c->from));
                put(" -> ");
                put(state_to_string(c->to));
        }
        put(")\n");
        return 0;
}

static int verb_plan(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        _cleanup_(plan_freep) Plan *p = NULL;
        int64_t go = (int64_t) now(CLOCK_REALTIME) / (int64_t) USEC_PER_SEC;
        char buf[21];
        int r;

        if (load_declarations(&l, &c) < 0)
                return EXIT_ERROR;
        print_warnings(c, false);
        r = plan_compute(l, c, &p);
        if (r < 0) {
                fprintf(stderr, "retirectl: cannot compute the plan: %s (%s)\n", strerror(-r), ledger_errmsg(l));
                return EXIT_ERROR;
        }
        go += p->hold + 1;
        /* A million lines: one lock, and large writes. */
        (void) setvbuf(stdout, NULL, _IOFBF, 1 << 20);
        flockfile(stdout);
        if (arg_json) {
                printf("{\"hash\": \"%s\", \"needs_approval\": %s, \"new_releases\": %zu, "
                       "\"max_new_releases\": %u, \"counts\": {",
                       p->hash, p->needs_approval ? "true" : "false", p->new_releases, c->max_new_releases);
                for (int k = 0; k < _CHANGE_MAX; k++)
                        printf("%s\"%s\": %zu", k ? ", " : "", change_kind_to_string(k), p->count[k]);
                printf("}, \"hold_seconds\": %" PRId64 ", \"may_go_from\": ", p->hold);
                json_time(p->hold > 0 && plan_changes(p) > 0 ? go : 0);
                printf(",\n  \"changes\": [");
                r = plan_foreach(p, -1, SIZE_MAX, print_change_json, &(bool) { true });
                printf("\n  ]\n}\n");
        } else {
                printf("Plan %s: %zu to add, %zu to declare again, %zu to cancel, %zu to update",
                       p->hash, p->count[CHANGE_ADD], p->count[CHANGE_REDECLARE],
                       p->count[CHANGE_CANCEL], p->count[CHANGE_UPDATE]);
                if (p->count[CHANGE_KEEP])
                        printf("; %zu no longer declared but kept", p->count[CHANGE_KEEP]);
                printf(".\n");
                if (p->needs_approval)
                        printf("Needs approval: %zu new releases exceed safety.max_new_releases = %u; "
                               "'retirectl plan --live' shows what approving would release; once the daemon "
                               "holds this plan, run: retirectl approve %s\n",
                               p->new_releases, c->max_new_releases, p->hash);
                if (p->hold > 0 && plan_changes(p) > 0)
                        printf("Applied now, what it adds or changes waits safety.hold = %" PRId64 " s: it may go "
                               "from %s.\n", p->hold, time_str(go, buf));
                r = plan_foreach(p, -1, SIZE_MAX, print_change, NULL);
        }
        funlockfile(stdout);
        if (r < 0) {
                fprintf(stderr, "retirectl: cannot read the plan: %s (%s)\n", strerror(-r), ledger_errmsg(l));
                return EXIT_ERROR;
        }
        return plan_changes(p) > 0 ? EXIT_CHANGES : EXIT_OK;
}

/* The Prometheus text format, which node_exporter's textfile collector
 * reads, ended as OpenMetrics wants: "# EOF" is a comment to the former.
 * Only gauges: a counter's sample is named foo_total in OpenMetrics and
 * its family foo, which the older format would read as two metrics. */
static int print_openmetrics(Ledger *l, const uint64_t counts[static _STATE_MAX]) {
        uint64_t steps;
        int64_t last;
        int r;

        r = ledger_history_stats(l, &steps, &last);
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", ledger_errmsg(l));
                return EXIT_ERROR;
        }
        printf("# HELP retired_phones Phones in the retired ledger, by state.\n"
               "# TYPE retired_phones gauge\n");
        for (int s = 0; s < _STATE_MAX; s++)
                printf("retired_phones{state=\"%s\"} %" PRIu64 "\n", state_to_string(s), counts[s]);
        printf("# HELP retired_history_steps Steps (state changes and API calls) in the retired ledger's history.\n"
               "# TYPE retired_history_steps gauge\n"
               "retired_history_steps %" PRIu64 "\n"
               "# HELP retired_last_step_timestamp_seconds When the retired ledger recorded its last step (0: never).\n"
               "# TYPE retired_last_step_timestamp_seconds gauge\n"
               "retired_last_step_timestamp_seconds %" PRId64 ".%03" PRId64 "\n"
               "# EOF\n", steps, last / (int64_t) USEC_PER_SEC, last % (int64_t) USEC_PER_SEC / (int64_t) USEC_PER_MSEC);
        return EXIT_OK;
}

static int verb_status(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        _cleanup_(pause_done) Pause pause = {};
        uint64_t counts[_STATE_MAX], total = 0;
        char at[21] = "?", daemon[CONTROL_MAX_LINE + 64];
        const char *no_daemon = NULL;
        int r;

        if (open_ledger(&l, &c) < 0)
                return EXIT_ERROR;
        if (ledger_counts(l, counts) < 0) {
                fprintf(stderr, "retirectl: %s\n", ledger_errmsg(l));
                return EXIT_ERROR;
        }
        for (int s = 0; s < _STATE_MAX; s++)
                total += counts[s];
        if (arg_openmetrics)
                return print_openmetrics(l, counts);
        r = ledger_pause_get(l, &pause);
        if (r < 0 && r != -EBADMSG) {
                fprintf(stderr, "retirectl: cannot read the pause record: %s\n", ledger_errmsg(l));
                return EXIT_ERROR;
        }
        (void) rfc3339_format(pause.at / (int64_t) USEC_PER_SEC, at);
        /* The daemon's own line (its pass, progress, pauses), when one runs;
         * else why there is none, never silently. */
        r = control_request(c->control_socket, "status", NULL, daemon, sizeof daemon);
        if (r >= 0 && startswith(daemon, "ok "))
                memmove(daemon, daemon + 3, strlen(daemon + 3) + 1);
        else {
                no_daemon = r == -ECONNREFUSED || r == -ENOENT ? "not running" :
                            r == -EBUSY ? "did not answer: its socket stayed busy" :
                            r == -ETIMEDOUT ? "did not answer in time" :
                            r >= 0 ? "answered with an error" : "did not answer";
                daemon[0] = 0;
        }
        if (arg_json) {
                printf("{\"counts\": {");
                for (int s = 0; s < _STATE_MAX; s++)
                        printf("%s\"%s\": %" PRIu64, s ? ", " : "", state_to_string(s), counts[s]);
                printf("}, \"total\": %" PRIu64 ", \"paused\": ", total);
                if (pause.on) {
                        printf("{\"uid\": %" PRIu32 ", \"since\": ", pause.uid);
                        json_time(pause.at / (int64_t) USEC_PER_SEC);
                        printf(", \"reason\": ");
                        json_str(pause.reason);
                        putchar('}');
                } else
                        printf("null");
                printf(", \"daemon\": ");
                json_str(daemon[0] ? daemon : NULL);
                printf(", \"daemon_error\": ");
                json_str(no_daemon);
                printf("}\n");
                return EXIT_OK;
        }
        if (pause.on)
                printf("PAUSED by uid %" PRIu32 " since %s%s%s%s: no DELETE leaves until 'retirectl resume'\n",
                       pause.uid, at, pause.reason ? " (" : "", strempty(pause.reason), pause.reason ? ")" : "");
        printf("daemon      %s\n", daemon[0] ? daemon : no_daemon);
        for (int s = 0; s < _STATE_MAX; s++)
                printf("%-11s %8" PRIu64 "\n", state_to_string(s), counts[s]);
        printf("%-11s %8" PRIu64 "\n", "total", total);
        return EXIT_OK;
}

/* The honest end of its hold: by the boot-time clock too, which no clock
 * step moves (the wall clock's hold_until alone may be long over). */
static int64_t held_until(const Phone *p) {
        return phone_held_until(p, (int64_t) now(CLOCK_REALTIME), (int64_t) now(CLOCK_BOOTTIME));
}

static void print_phone_json(const Phone *p, bool close) {
        printf("{\"key\": ");
        json_str(p->key);
        printf(", \"id\": ");
        json_str(p->id);
        printf(", \"number\": ");
        json_str(p->number ? p->number : p->api_number);
        printf(", \"state\": ");
        json_str(state_to_string(p->state));
        printf(", \"attempts\": %u, \"reason\": ", p->attempts);
        json_str(p->reason);
        printf(", \"not_before\": ");
        json_time(p->not_before);
        printf(", \"held_until\": ");
        json_time(held_until(p));
        printf(", \"next_attempt_at\": ");
        json_time(p->next_at / (int64_t) USEC_PER_SEC);
        printf(", \"provider\": ");
        json_str(p->provider);
        printf(", \"scheduled_release_at\": ");
        json_str(p->scheduled_release_at);
        printf(", \"released_at\": ");
        json_time(p->released_at / (int64_t) USEC_PER_SEC);
        printf(", \"last_error\": ");
        json_str(p->last_error);
        printf(", \"declared_at\": ");
        json_str(p->declared_at);
        printf(", \"updated_at\": ");
        json_time(p->updated_at / (int64_t) USEC_PER_SEC);
        printf(", \"nickname\": ");
        json_str(p->nickname);
        printf(", \"in_use\": ");
        json_str(in_use_to_string(p->in_use));
        printf(", \"inbound_agent_id\": ");
        json_str(p->inbound_agent);
        printf(", \"outbound_agent_id\": ");
        json_str(p->outbound_agent);
        if (close)
                putchar('}');
}

static int list_one(const Phone *p, void *userdata) {
        size_t *n = userdata;
        char buf[21], rb[21];

        if (arg_json) {
                fputs(*n ? ",\n " : "\n ", stdout);
                print_phone_json(p, true);
        } else
                printf("%-36s %-10s %3u %-16s %-36s %-20s %-20s %-20s %s\n", p->key, state_to_string(p->state),
                       p->attempts, p->number ? p->number : p->api_number ? p->api_number : "-", p->id ? p->id : "-",
                       time_str(held_until(p) > p->not_before ? held_until(p) : p->not_before, buf),
                       time_str(p->released_at / (int64_t) USEC_PER_SEC, rb), p->nickname ? p->nickname : "-",
                       p->reason ? p->reason : "");
        (*n)++;
        return 0;
}

static int verb_list(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        size_t n = 0;
        int r;

        if (open_ledger(&l, &c) < 0)
                return EXIT_ERROR;
        if (arg_json)
                putchar('[');
        else
                printf("%-36s %-10s %3s %-16s %-36s %-20s %-20s %-20s %s\n", "KEY", "STATE", "TRY", "NUMBER", "ID",
                       "MAY GO FROM", "RELEASED AT", "NICKNAME", "REASON");
        r = ledger_list(l, arg_state, list_one, &n);
        if (arg_json)
                printf("%s]\n", n ? "\n" : "");
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", ledger_errmsg(l));
                return EXIT_ERROR;
        }
        return EXIT_OK;
}

static int history_one(const History *h, void *userdata) {
        size_t *n = userdata;
        char buf[21];

        if (arg_json) {
                printf("%s\n   {\"seq\": %" PRId64 ", \"at\": ", *n ? "," : "", h->seq);
                json_time(h->at / (int64_t) USEC_PER_SEC);
                printf(", \"kind\": ");
                json_str(h->kind);
                printf(", \"from\": ");
                json_str(h->old_state);
                printf(", \"to\": ");
                json_str(h->new_state);
                printf(", \"method\": ");
                json_str(h->method);
                printf(", \"path\": ");
                json_str(h->path);
                if (h->http_status)
                        printf(", \"http_status\": %d", h->http_status);
                else
                        printf(", \"http_status\": null");
                printf(", \"latency_ms\": %" PRId64 ", \"detail\": ", h->latency_ms);
                json_str(h->detail);
                putchar('}');
        } else if (streq(h->kind, "call"))
                printf("  %s  call  %s %s -> %s%.0d (%" PRId64 " ms)%s%s\n", time_str(h->at / (int64_t) USEC_PER_SEC, buf),
                       h->method, h->path, h->http_status ? "" : "no answer", h->http_status, h->latency_ms,
                       h->detail ? " " : "", h->detail ? h->detail : "");
        else
                printf("  %s  state %s -> %s%s%s\n", time_str(h->at / (int64_t) USEC_PER_SEC, buf),
                       h->old_state ? h->old_state : "(new)", h->new_state,
                       h->detail ? ": " : "", h->detail ? h->detail : "");
        (*n)++;
        return 0;
}

static int verb_show(const char *what) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        _cleanup_(phone_done) Phone p = {};
        char buf[21], nb[21], ub[21], rb[21], hb[21];
        size_t n = 0;
        int r;

        if (open_ledger(&l, &c) < 0)
                return EXIT_ERROR;
        r = ledger_find(l, what, &p);
        if (r == -ENOENT) {
                fprintf(stderr, "retirectl: no phone %s in the ledger\n", what);
                return EXIT_ERROR;
        }
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", ledger_errmsg(l));
                return EXIT_ERROR;
        }
        if (arg_json) {
                print_phone_json(&p, false);
                printf(",\n \"history\": [");
        } else
                printf("key:          %s\nstate:        %s\nattempts:     %u\nnumber:       %s\n"
                       "id:           %s\nprovider:     %s\nreason:       %s\nnot before:   %s\nheld until:   %s\n"
                       "next attempt: %s\nscheduled:    %s\nreleased at:  %s\nlast error:   %s\n"
                       "declared at:  %s\nupdated:      %s\nnickname:     %s\nif in use:    %s\nagents:       %s%s%s%s%s\n"
                       "history:\n",
                       p.key, state_to_string(p.state), p.attempts, strna(p.number ? p.number : p.api_number), strna(p.id),
                       strna(p.provider), strna(p.reason), time_str(p.not_before, nb), time_str(held_until(&p), hb),
                       time_str(p.next_at / (int64_t) USEC_PER_SEC, buf), strna(p.scheduled_release_at),
                       time_str(p.released_at / (int64_t) USEC_PER_SEC, rb), strna(p.last_error), strna(p.declared_at),
                       time_str(p.updated_at / (int64_t) USEC_PER_SEC, ub), strna(p.nickname),
                       strna(in_use_to_string(p.in_use)), p.inbound_agent ? "inbound " : "", strempty(p.inbound_agent),
                       p.inbound_agent && p.outbound_agent ? ", " : "", p.outbound_agent ? "outbound " : "",
                       p.inbound_agent || p.outbound_agent ? strempty(p.outbound_agent) : "-");
        r = ledger_history(l, p.pk, history_one, &n);
        if (arg_json)
                printf("%s]}\n", n ? "\n " : "");
        if (r < 0) {
                fprintf(stderr, "retirectl: %s\n", ledger_errmsg(l));
                return EXIT_ERROR;
        }
        return EXIT_OK;
}

/* RFC 4180: a field holding a comma, a quote, CR or LF goes in quotes, its
 * quotes doubled; NULL is an empty field.  Nothing else is changed: the
 * export is the record as it stands. */
static void csv_field(const char *s, bool last) {
        if (s && s[strcspn(s, ",\"\r\n")]) {
                putchar('"');
                for (; *s; s++) {
                        if (*s == '"')
                                putchar('"');
                        putchar(*s);
                }
                putchar('"');
        } else if (s)
                fputs(s, stdout);
        fputs(last ? "\r\n" : ",", stdout);
}

static void csv_int(int64_t v, bool present) {
        if (present)
                printf("%" PRId64, v);
        putchar(',');
}

/* Where a step's recorded time is earlier than that of the step before
 * it: the wall clock was set back in between, and an auditor reading the
 * times should know that the order is the seq's, not theirs. */
#define CLOCK_BACK_MARK "[clock back] "

/* The export's head, once its first row (or its end) comes: a cursor the
 * ledger refuses prints nothing on stdout, nothing to take for an export. */
static void audit_head(void) {
        if (arg_json)
                putchar('[');
        else if (arg_csv)
                /* clock_back last: a reader that takes the columns by position
                 * finds the ones it knew where they were. */
                fputs("seq,time,key,id,number,kind,from,to,method,path,http_status,latency_ms,attempt,reason,detail,"
                      "clock_back,nickname\r\n", stdout);
        else
                printf("%-8s %-24s %-36s %3s %s\n", "SEQ", "TIME", "KEY", "TRY", "STEP");
}

static int audit_one(const AuditStep *a, void *userdata) {
        const History *h = &a->h;
        bool call = streq(h->kind, "call");
        size_t *n = userdata;

        if (*n == 0)
                audit_head();
        if (arg_json)
                printf("%s%s", *n ? ",\n" : "\n", a->json);
        else if (arg_csv) {
                csv_int(h->seq, true);
                csv_field(a->time, false);
                csv_field(a->key, false);
                csv_field(a->id, false);
                csv_field(a->number, false);
                csv_field(h->kind, false);
                csv_field(h->old_state, false);
                csv_field(h->new_state, false);
                csv_field(h->method, false);
                csv_field(h->path, false);
                csv_int(h->http_status, h->http_status > 0);
                csv_int(h->latency_ms, call);
                csv_int(a->attempt, true);
                csv_field(a->reason, false);
                csv_field(h->detail, false);
                csv_field(a->clock_back ? "1" : "0", false);
                csv_field(a->nickname, true);
        } else if (call)
                printf("%-8" PRId64 " %-24s %-36s %3u %scall  %s %s -> %s%.0d (%" PRId64 " ms)%s%s\n", h->seq, a->time,
                       a->key, a->attempt, a->clock_back ? CLOCK_BACK_MARK : "",
                       h->method, h->path, h->http_status ? "" : "no answer", h->http_status, h->latency_ms,
                       h->detail ? " " : "", h->detail ? h->detail : "");
        else
                printf("%-8" PRId64 " %-24s %-36s %3u %sstate %s -> %s%s%s\n", h->seq, a->time, a->key, a->attempt,
                       a->clock_back ? CLOCK_BACK_MARK : "", h->old_state ? h->old_state : "(new)", h->new_state,
                       h->detail ? ": " : "", h->detail ? h->detail : "");
        (*n)++;
        return 0;
}

/* The audit export.  Each row is printed as SQLite steps to it: a history
 * of any length is never held in memory. */
static int verb_history(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_(ledger_closep) Ledger *l = NULL;
        AuditFilter f = { .since = arg_since, .until = arg_until, .after_seq = arg_after_seq, .state = arg_state,
                          .json = arg_json };
        size_t n = 0;
        int r;

        if (open_ledger(&l, &c) < 0)
                return EXIT_ERROR;
        r = ledger_audit(l, &f, audit_one, &n);
        if (r >= 0 && n == 0)
                audit_head();
        if (arg_json && (r >= 0 || n > 0))
                printf("%s]\n", n ? "\n" : "");
        if (r == -ERANGE) {
                fprintf(stderr, "retirectl: --after-seq %" PRId64 ": the ledger holds no step numbered that or later "
                        "(a cursor kept for another ledger, or this ledger restored from an older copy?)\n",
                        arg_after_seq);
                return EXIT_ERROR;
        }
        if (r < 0) {
                fprintf(stderr, "retirectl: cannot read the history: %s (%s)\n", strerror(-r), ledger_errmsg(l));
                return EXIT_ERROR;
        }
        /* An export cut short by a full disk must not pass for a whole one. */
        if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "retirectl: cannot write the history: %m\n");
                return EXIT_ERROR;
        }
        return EXIT_OK;
}

static void help(void) {
        printf("Usage: retirectl [OPTIONS] COMMAND [ARG]\n\n"
               "Commands:\n"
               "  check          validate the config and the release declarations\n"
               "  plan           show what a reload would change (exit 2 when it would change something);\n"
               "                 with --live, what the next pass would do against the account as it is now\n"
               "                 (exit 2 when it would release something), writing nothing\n"
               "  status         count the ledger's phones per state\n"
               "  list           one line per phone (--state STATE to filter)\n"
               "  show KEY       one phone (by key, id or number) and its history\n"
               "  history        every recorded step of every phone, oldest first (the audit export)\n"
               "  retry KEY      put a failed phone back to pending\n"
               "  approve HASH   apply the plan held by the blast-radius guard (see plan)\n"
               "  reload         make the daemon re-read its config; fails when it rejects it\n"
               "  pause [REASON] no DELETE leaves until resume (kept in the ledger)\n"
               "  resume         let releases go again\n\n"
               "Options:\n"
               "  -c, --config FILE   main config (default /etc/retired/retired.conf)\n"
               "      --ledger PATH   read this ledger instead of the config's\n"
               "      --json          machine-readable output (plan, status, list, show, history)\n"
               "      --live          with plan: list the account (GETs only, at half of pace.rate) and show\n"
               "                      what the next pass would do with each declared phone\n"
               "      --state STATE   with list: only this state; with history: only steps into it\n"
               "      --since TIME    with history: steps at or after TIME\n"
               "      --until TIME    with history: steps before TIME\n"
               "                      (TIME: 2026-12-01T10:00:00Z, 2026-12-01 or @SECONDS, UTC)\n"
               "      --after-seq N   with history: steps numbered after N (the seq of the last step\n"
               "                      exported), whatever the clock did: exports chained so miss nothing\n"
               "      --csv           with history: CSV (RFC 4180)\n"
               "      --openmetrics   with status: the Prometheus/OpenMetrics text format\n"
               "  -h, --help          this text\n"
               "      --version       the version\n");
}

/* --since and --until: RFC 3339 in UTC, a day (from its midnight, UTC) or
 * @SECONDS since the epoch; usec since the epoch, after 1970. */
static int parse_time_arg(const char *s, int64_t *ret) {
        char day[sizeof "YYYY-MM-DDT00:00:00Z"];
        int64_t t;
        int r;

        if (s[0] == '@') {
                char *end;
                unsigned long long v;

                if (!isdigit((unsigned char) s[1]))
                        return -EINVAL;
                errno = 0;
                v = strtoull(s + 1, &end, 10);
                /* Up to 9999-12-31T23:59:59Z, as RFC 3339 goes. */
                if (errno != 0 || *end || v > 253402300799ULL)
                        return -EINVAL;
                t = (int64_t) v;
        } else {
                if (strlen(s) == 10) {
                        (void) snprintf(day, sizeof day, "%sT00:00:00Z", s);
                        s = day;
                }
                r = rfc3339_parse(s, &t);
                if (r < 0)
                        return r;
        }
        if (t <= 0)
                return -ERANGE;
        *ret = t * (int64_t) USEC_PER_SEC;
        return 0;
}

/* --after-seq: a seq, digits only (no sign, no blank: strtoll would take
 * them), up to the largest a SQLite rowid can be. */
static int parse_seq_arg(const char *s, int64_t *ret) {
        char *end;
        long long v;

        if (!isdigit((unsigned char) s[0]))
                return -EINVAL;
        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || *end)
                return -EINVAL;
        *ret = (int64_t) v;
        return 0;
}

static int parse_state_arg(const char *s) {
        int state = state_from_string(s);

        if (state < 0) {
                fprintf(stderr, "retirectl: --state: unknown state '%s'; one of:", s);
                for (int i = 0; i < _STATE_MAX; i++)
                        fprintf(stderr, "%s %s", i ? "," : "", state_to_string(i));
                fputc('\n', stderr);
        }
        return state;
}

/* Each option works with some commands only; given to another, it is a
 * mistake worth saying rather than ignoring.  Commands not listed here
 * take no options but -c and --ledger. */
enum {
        OPT_JSON = 1 << 0, OPT_STATE = 1 << 1, OPT_SINCE = 1 << 2, OPT_UNTIL = 1 << 3,
        OPT_CSV = 1 << 4, OPT_OPENMETRICS = 1 << 5, OPT_AFTER_SEQ = 1 << 6, OPT_LIVE = 1 << 7,
};

/* Whether word is one of the words of a list such as "plan, status". */
static bool word_in(const char *list, const char *word) {
        size_t n = strlen(word);

        if (n == 0)
                return false;
        for (const char *p = list; (p = strstr(p, word)); p += n)
                if ((p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == 0))
                        return true;
        return false;
}

static int check_options(const char *verb, unsigned given) {
        static const struct {
                unsigned option;
                const char *name, *verbs;
        } rules[] = {
                { OPT_JSON,        "--json",        "plan, status, list, show, history" },
                { OPT_STATE,       "--state",       "list, history" },
                { OPT_SINCE,       "--since",       "history" },
                { OPT_UNTIL,       "--until",       "history" },
                { OPT_CSV,         "--csv",         "history" },
                { OPT_AFTER_SEQ,   "--after-seq",   "history" },
                { OPT_OPENMETRICS, "--openmetrics", "status" },
                { OPT_LIVE,        "--live",        "plan" },
        };

        /* An unknown command is reported as such. */
        if (!word_in("check, plan, status, list, show, history, retry, approve, reload, pause, resume", verb))
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(rules); i++)
                if ((given & rules[i].option) && !word_in(rules[i].verbs, verb)) {
                        fprintf(stderr, "retirectl: %s does not work with %s, only with %s (see retirectl --help)\n",
                                rules[i].name, verb, rules[i].verbs);
                        return -EINVAL;
                }
        if ((given & OPT_JSON) && (given & (OPT_CSV | OPT_OPENMETRICS))) {
                fprintf(stderr, "retirectl: --json and %s exclude each other (see retirectl --help)\n",
                        given & OPT_CSV ? "--csv" : "--openmetrics");
                return -EINVAL;
        }
        /* A cursor exists to miss nothing; a time window after it would miss
         * the steps recorded while the clock was behind. */
        if ((given & OPT_AFTER_SEQ) && (given & (OPT_SINCE | OPT_UNTIL))) {
                fprintf(stderr, "retirectl: --after-seq and %s exclude each other: a time window misses the steps "
                        "recorded while the clock was set back (see retirectl --help)\n",
                        given & OPT_SINCE ? "--since" : "--until");
                return -EINVAL;
        }
        if (arg_since > 0 && arg_until > 0 && arg_until <= arg_since) {
                fprintf(stderr, "retirectl: --until must come after --since\n");
                return -EINVAL;
        }
        return 0;
}

enum {
        ARG_JSON = 0x100, ARG_STATE, ARG_LEDGER, ARG_VERSION, ARG_SINCE, ARG_UNTIL, ARG_CSV, ARG_OPENMETRICS,
        ARG_AFTER_SEQ, ARG_LIVE,
};

static const struct option options[] = {
        { "config",      required_argument, NULL, 'c' },
        { "json",        no_argument,       NULL, ARG_JSON },
        { "state",       required_argument, NULL, ARG_STATE },
        { "ledger",      required_argument, NULL, ARG_LEDGER },
        { "since",       required_argument, NULL, ARG_SINCE },
        { "until",       required_argument, NULL, ARG_UNTIL },
        { "csv",         no_argument,       NULL, ARG_CSV },
        { "after-seq",   required_argument, NULL, ARG_AFTER_SEQ },
        { "openmetrics", no_argument,       NULL, ARG_OPENMETRICS },
        { "live",        no_argument,       NULL, ARG_LIVE },
        { "help",        no_argument,       NULL, 'h' },
        { "version",     no_argument,       NULL, ARG_VERSION },
        {}
};

/* Returns 1 to go on to the command, 0 when the run is done (--help,
 * --version), or -EINVAL when the line is wrong (already said). */
static int parse_argv(int argc, char **argv, unsigned *ret_given) {
        unsigned given = 0;
        int c;

        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        arg_config = optarg;
                        break;
                case ARG_JSON:
                        arg_json = true;
                        given |= OPT_JSON;
                        break;
                case ARG_STATE:
                        arg_state = parse_state_arg(optarg);
                        if (arg_state < 0)
                                return -EINVAL;
                        given |= OPT_STATE;
                        break;
                case ARG_SINCE:
                case ARG_UNTIL:
                        if (parse_time_arg(optarg, c == ARG_SINCE ? &arg_since : &arg_until) < 0) {
                                fprintf(stderr, "retirectl: %s: '%s' is not a time in UTC "
                                        "(2026-12-01T10:00:00Z, 2026-12-01 or @SECONDS)\n",
                                        c == ARG_SINCE ? "--since" : "--until", optarg);
                                return -EINVAL;
                        }
                        given |= c == ARG_SINCE ? OPT_SINCE : OPT_UNTIL;
                        break;
                case ARG_AFTER_SEQ:
                        if (parse_seq_arg(optarg, &arg_after_seq) < 0) {
                                fprintf(stderr, "retirectl: --after-seq: '%s' is not a step number "
                                        "(the seq of a step: 0, 1, 2, ...)\n", optarg);
                                return -EINVAL;
                        }
                        given |= OPT_AFTER_SEQ;
                        break;
                case ARG_CSV:
                        arg_csv = true;
                        given |= OPT_CSV;
                        break;
                case ARG_OPENMETRICS:
                        arg_openmetrics = true;
                        given |= OPT_OPENMETRICS;
                        break;
                case ARG_LIVE:
                        arg_live = true;
                        given |= OPT_LIVE;
                        break;
                case ARG_LEDGER:
                        arg_ledger = optarg;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("retirectl %s\n", VERSION);
                        return 0;
                default:
                        /* getopt said what was wrong. */
                        fprintf(stderr, "Try 'retirectl --help' for more information.\n");
                        return -EINVAL;
                }
        *ret_given = given;
        return 1;
}

/* The pause's reason is the rest of the line, as typed: the words joined
 * by single spaces, printable, and short enough for the ledger. */
static int join_pause_reason(char **args, int n_args, char **ret) {
        _cleanup_free_ char *reason = NULL;
        size_t len = 0;

        for (int i = 0; i < n_args; i++)
                len += strlen(args[i]) + 1;
        if (len > PAUSE_MAX_REASON) {
                fprintf(stderr, "retirectl: the reason is longer than %d characters\n", PAUSE_MAX_REASON);
                return -EINVAL;
        }
        reason = calloc(1, len + 1);
        if (!reason)
                return -ENOMEM;
        for (int i = 0; i < n_args; i++) {
                for (const char *q = args[i]; *q; q++)
                        if (!isprint((unsigned char) *q)) {
                                fprintf(stderr, "retirectl: the reason must be printable text\n");
                                return -EINVAL;
                        }
                if (i > 0)
                        strcat(reason, " ");
                strcat(reason, args[i]);
        }
        *ret = TAKE_PTR(reason);
        return 0;
}

/* Runs the command with the words after it; returns the exit code. */
static int dispatch_verb(const char *verb, char **args, int n_args) {
        if (streq(verb, "pause")) {
                _cleanup_free_ char *reason = NULL;

                if (join_pause_reason(args, n_args, &reason) < 0)
                        return EXIT_ERROR;
                return verb_control(verb, reason[0] ? reason : NULL);
        }
        if (streq(verb, "show") || streq(verb, "retry") || streq(verb, "approve")) {
                if (n_args != 1) {
                        fprintf(stderr, "retirectl: %s takes one argument (see retirectl --help)\n", verb);
                        return EXIT_ERROR;
                }
                if (streq(verb, "show"))
                        return verb_show(args[0]);
                return verb_control(verb, args[0]);
        }
        if (n_args != 0) {
                fprintf(stderr, "retirectl: %s takes no arguments (see retirectl --help)\n", verb);
                return EXIT_ERROR;
        }
        if (streq(verb, "check"))
                return verb_check();
        if (streq(verb, "plan"))
                return arg_live ? verb_plan_live(arg_json) : verb_plan();
        if (streq(verb, "status"))
                return verb_status();
        if (streq(verb, "list"))
                return verb_list();
        if (streq(verb, "history"))
                return verb_history();
        if (streq(verb, "reload") || streq(verb, "resume"))
                return verb_control(verb, NULL);
        fprintf(stderr, "retirectl: unknown command '%s' (see retirectl --help)\n", verb);
        return EXIT_ERROR;
}

int main(int argc, char **argv) {
        _cleanup_free_ char **args = NULL;
        unsigned given = 0;
        const char *verb;
        int r;

        /* A daemon gone mid-request is an answer to report, not a death. */
        (void) signal(SIGPIPE, SIG_IGN);
        /* Before getopt_long() moves the words about. */
        args = malloc(sizeof(char *) * ((size_t) argc + 1));
        if (!args) {
                fprintf(stderr, "retirectl: out of memory\n");
                return EXIT_ERROR;
        }
        saved_argv = memcpy(args, argv, sizeof(char *) * ((size_t) argc + 1));
        r = parse_argv(argc, argv, &given);
        if (r <= 0)
                return r < 0 ? EXIT_ERROR : EXIT_OK;
        if (optind >= argc) {
                help();
                return EXIT_ERROR;
        }
        verb = argv[optind++];
        if (check_options(verb, given) < 0)
                return EXIT_ERROR;
        return dispatch_verb(verb, argv + optind, argc - optind);
}
