/* SPDX-License-Identifier: MIT */
/* Reads retired.conf and releases.d/NAME.conf.  Every problem is reported with
 * the file and line libconfig gives us, and any problem rejects the load. */

#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <libconfig.h>
#include <libgen.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <curl/curl.h>

#include "conf.h"
#include "macro.h"

typedef struct Loader {
        Config *c;
        ConfDiag *d;
        const DeclSink *sink;  /* NULL: declarations are checked and counted only */
        const char *file;   /* the file being read, for settings libconfig has no name for */
        bool settings_only; /* config_load_settings() */
        size_t errors;      /* d->n may be capped; this is not */
        size_t n_read;      /* declarations read, before any merge */
        unsigned retry_line;   /* where the retry group is, for cross-key checks */
        size_t capital_ids;    /* ids in capitals in the file being read */
        unsigned capital_line; /* the first of them */
} Loader;

static void bad(Loader *l, const config_setting_t *s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bad(Loader *l, const config_setting_t *s, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        const char *f = s ? config_setting_source_file(s) : NULL;
        va_list ap;

        l->errors++;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        conf_diag_add(l->d, f ? f : l->file, s ? config_setting_source_line(s) : 0, "%s",
                      msg ? msg : "out of memory");
}

typedef enum { K_STR, K_FLOAT, K_UINT, K_BOOL, K_IN_USE } Kind;

typedef struct Key {
        const char *group, *name;
        Kind kind;
        size_t offset;
        double min, max;
        const char *(*check)(const char *value);  /* NULL or why the string is refused */
        /* Not checked by config_load_settings(): its commands never use the
         * value, and its check would load libcurl into each of them. */
        bool whole_load_only;
} Key;

static const char *check_absolute(const char *v) {
        return v[0] && v[0] != '/' ? "must be an absolute path (or empty)" : NULL;
}

/* A CA bundle that is not there would fail every call, one phone after
 * another: better refused at load. */
static const char *check_ca_file(const char *v) {
        struct stat st;

        if (check_absolute(v))
                return check_absolute(v);
        if (v[0] && (stat(v, &st) < 0 || !S_ISREG(st.st_mode) || access(v, R_OK) < 0))
                return "not a readable file";
        return NULL;
}

static bool host_is_loopback(const char *h) {
        struct in_addr a;

        /* 127.example.com is a name, not 127.0.0.0/8: only literals count. */
        return streq(h, "localhost") || streq(h, "[::1]") || streq(h, "::1") ||
               (inet_pton(AF_INET, h, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127);
}

/* libcurl is opened here, when a URL is checked, not linked: retirectl's
 * commands that load the settings alone never check one, and mapping
 * libcurl and the forty libraries it needs was most of their start.  The
 * daemon and plan --live link it for their client, and get that copy. */
static __typeof__(curl_url) *sym_curl_url;
static __typeof__(curl_url_set) *sym_curl_url_set;
static __typeof__(curl_url_get) *sym_curl_url_get;
static __typeof__(curl_url_cleanup) *sym_curl_url_cleanup;

static int dlopen_curl(void) {
        static int cached = 1;          /* 1: not tried yet */
        void *dl;

        if (cached <= 0)
                return cached;
        dl = dlopen("libcurl.so.4", RTLD_NOW);
        if (!dl)
                return (cached = -EOPNOTSUPP);
        sym_curl_url = (__typeof__(sym_curl_url)) dlsym(dl, "curl_url");
        sym_curl_url_set = (__typeof__(sym_curl_url_set)) dlsym(dl, "curl_url_set");
        sym_curl_url_get = (__typeof__(sym_curl_url_get)) dlsym(dl, "curl_url_get");
        sym_curl_url_cleanup = (__typeof__(sym_curl_url_cleanup)) dlsym(dl, "curl_url_cleanup");
        if (!sym_curl_url || !sym_curl_url_set || !sym_curl_url_get || !sym_curl_url_cleanup)
                return (cached = -EOPNOTSUPP);
        return (cached = 0);
}

/* libcurl's own URL parser decides what the scheme and host are, so that
 * we check the same thing that will be connected to. */
static const char *check_url(const char *v) {
        _cleanup_free_ char *scheme = NULL, *host = NULL, *query = NULL;
        const char *why = NULL;
        CURLU *u;

        if (strlen(v) > CONF_MAX_URL)
                return "longer than 1024 characters";
        if (dlopen_curl() < 0)
                return "cannot be checked: libcurl.so.4 (libcurl4) cannot be loaded";
        u = sym_curl_url();
        if (!u)
                return "out of memory";
        if (sym_curl_url_set(u, CURLUPART_URL, v, 0) != CURLUE_OK ||
            sym_curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            sym_curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
                why = "not a URL";
        else if (!streq(scheme, "https") && !(streq(scheme, "http") && host_is_loopback(host)))
                why = "only https:// URLs are allowed (http:// only for loopback test servers)";
        else if (sym_curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK || strchr(v, '#'))
                why = "must not have a query or fragment";
        sym_curl_url_cleanup(u);
        return why;
}

#define C(f) offsetof(Config, f)
static const Key keys[] = {
        { "api",    "base_url",         K_STR,   C(base_url),   .check = check_url, .whole_load_only = true },
        { "api",    "token_file",       K_STR,   C(token_file), .check = check_absolute },
        { "api",    "ca_file",          K_STR,   C(ca_file),    .check = check_ca_file },
        { "api",    "timeout",          K_FLOAT, C(timeout),          1, 600 },
        { "api",    "settle_time",      K_FLOAT, C(settle_time),      0, 86400 },
        { "api",    "auth_retry",       K_FLOAT, C(auth_retry),       1, 86400 },
        { "pace",   "rate",             K_FLOAT, C(rate),             0.001, 10000 },
        { "pace",   "burst",            K_UINT,  C(burst),            1, 10000 },
        { "pace",   "concurrency",      K_UINT,  C(concurrency),      1, 64 },
        { "retry",  "max_attempts",     K_UINT,  C(max_attempts),     1, 100 },
        { "retry",  "base_delay",       K_FLOAT, C(base_delay),       0.001, 3600 },
        { "retry",  "max_delay",        K_FLOAT, C(max_delay),        0.001, 86400 },
        { "safety", "dry_run",          K_BOOL,  C(dry_run) },
        { "safety", "max_new_releases", K_UINT,  C(max_new_releases), 0, CONF_MAX_RELEASES },
        { "safety", "hold",             K_FLOAT, C(hold),             0, 2592000 },
        { "safety", "in_use",           K_IN_USE, C(in_use) },
        { NULL,     "resync_interval",  K_FLOAT, C(resync_interval),  1, 604800 },
        { NULL,     "ledger",           K_STR,   C(ledger) },
        { NULL,     "releases_dir",     K_STR,   C(releases_dir) },
        { NULL,     "control_socket",   K_STR,   C(control_socket), .check = check_absolute },
};
#undef C

static const char *const groups[] = { "api", "pace", "retry", "safety" };

static void read_key(Loader *l, const Key *k, const config_setting_t *s) {
        char *field = (char *) l->c + k->offset;
        int type = config_setting_type(s);
        char name[64];
        double v = 0;

        snprintf(name, sizeof name, "%s%s%s", k->group ? k->group : "", k->group ? "." : "", k->name);

        switch (k->kind) {
        case K_STR: {
                const char *str = config_setting_get_string(s), *why;
                char *dup;

                if (type != CONFIG_TYPE_STRING)
                        return bad(l, s, "%s: expected a string", name);
                if (k->check && !(l->settings_only && k->whole_load_only) && (why = k->check(str)))
                        return bad(l, s, "%s: \"%.80s\": %s", name, str, why);
                if (strlen(str) > CONF_MAX_PATH)
                        return bad(l, s, "%s: longer than %u characters", name, CONF_MAX_PATH);
                dup = strdup(str);
                if (!dup)
                        return bad(l, s, "out of memory");
                free(*(char **) field);
                *(char **) field = dup;
                return;
        }
        case K_IN_USE:
                if (type != CONFIG_TYPE_STRING || in_use_from_string(config_setting_get_string(s)) == IN_USE_UNSET)
                        return bad(l, s, "%s: expected \"refuse\" or \"release\"", name);
                *(InUse *) field = in_use_from_string(config_setting_get_string(s));
                return;
        case K_BOOL:
                if (type != CONFIG_TYPE_BOOL)
                        return bad(l, s, "%s: expected true or false", name);
                *(bool *) field = config_setting_get_bool(s);
                return;
        case K_FLOAT:
                if (type == CONFIG_TYPE_FLOAT)
                        v = config_setting_get_float(s);
                else if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64)
                        v = (double) config_setting_get_int64(s);
                else
                        return bad(l, s, "%s: expected a number", name);
                break;
        case K_UINT:
                if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
                        return bad(l, s, "%s: expected a whole number", name);
                v = (double) config_setting_get_int64(s);
                break;
        }
        if (!(v >= k->min && v <= k->max))
                return bad(l, s, "%s: %g is out of range (%g to %g)", name, v, k->min, k->max);
        if (k->kind == K_FLOAT)
                *(double *) field = v;
        else
                *(unsigned *) field = (unsigned) v;
}

static const Key *find_key(const char *group, const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (streq_ptr(keys[i].group, group) && streq(keys[i].name, name))
                        return &keys[i];
        return NULL;
}

static int decl_push(Loader *l, const Decl *d) {
        if (l->n_read >= CONF_MAX_RELEASES)
                return -E2BIG;
        l->n_read++;
        /* Handed on even once the files are known to be wrong: what they
         * declare twice is reported with the rest. */
        if (!l->sink)
                return 0;
        return l->sink->add(l->sink->userdata, d);
}

/* An id written in capitals is read in lowercase, the one spelling the
 * ledger, the plan and the journal use: counted per file, so that a file
 * pasted from a dashboard gets one note, not one per line. */
static void capital_id(Loader *l, unsigned line) {
        if (l->capital_ids++ == 0)
                l->capital_line = line;
}

static void note_capital_ids(Loader *l, const char *file) {
        if (l->capital_ids > 0)
                conf_diag_add(&l->c->notes, file, l->capital_line,
                              "%zu %s in capitals (the first here), read in lowercase as the ledger and the "
                              "journal write them", l->capital_ids, l->capital_ids == 1 ? "id" : "ids");
        l->capital_ids = 0;
}

/* Where a reason holds a control character other than a line break or a
 * tab (the audit export quotes those), or its end.  The reason is shown in
 * the journal, in retirectl's views and on terminals, where an escape
 * sequence would rewrite the screen and a carriage return hide the line. */
static size_t reason_control(const char *v) {
        size_t i = 0;

        while (v[i] && ((unsigned char) v[i] >= 0x20 || v[i] == '\n' || v[i] == '\t') && v[i] != 0x7f)
                i++;
        return i;
}

/* The strings are libconfig's, alive as long as the file's tree: only the
 * normalised number and id are our own. */
static int read_entry(Loader *l, const config_setting_t *e, const char *file) {
        Decl d = { .file = file, .line = config_setting_source_line(e) };
        _cleanup_free_ char *number = NULL;
        char id[UUID_STRING_LEN + 1];
        size_t before = l->errors;
        int r;

        if (!config_setting_is_group(e)) {
                bad(l, e, "releases: each entry must be a group { ... }");
                return 0;
        }
        for (int i = 0; i < config_setting_length(e); i++) {
                const config_setting_t *s = config_setting_get_elem(e, i);
                const char *name = config_setting_name(s), *v = config_setting_get_string(s);

                if (!streq(name, "id") && !streq(name, "number") && !streq(name, "reason") &&
                    !streq(name, "not_before") && !streq(name, "in_use")) {
                        bad(l, s, "unknown key '%s' in release entry (expected number, id, reason, not_before, in_use)",
                            name);
                        continue;
                }
                if (config_setting_type(s) != CONFIG_TYPE_STRING) {
                        bad(l, s, "%s: expected a string", name);
                        continue;
                }
                if (streq(name, "id")) {
                        if (!uuid_canonical(v, id))
                                bad(l, s, "id: \"%.40s\" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", v);
                        else {
                                d.id = id;
                                if (!streq(id, v))
                                        capital_id(l, config_setting_source_line(s));
                        }
                } else if (streq(name, "number")) {
                        number = mfree(number);
                        r = number_normalize(v, &number);
                        d.number = number;
                        if (r == -ENOMEM)
                                return r;
                        if (r == -E2BIG)
                                bad(l, s, "number: longer than %u characters", strchr(v, '@') ? CONF_MAX_SIP : CONF_MAX_NUMBER);
                        else if (r == -ERANGE)
                                bad(l, s, "number: \"%s\" must have 3 to 20 digits", v);
                        else if (r < 0)
                                bad(l, s, "number: \"%.80s\" is not a phone number (digits, a leading +, spaces . - ( ) ) or a SIP identifier (user@host)", v);
                } else if (streq(name, "reason")) {
                        size_t ctl = reason_control(v);

                        if (strlen(v) > CONF_MAX_REASON)
                                bad(l, s, "reason: longer than %u characters", CONF_MAX_REASON);
                        else if (v[ctl])
                                bad(l, s, "reason: a control character (0x%02x) at byte %zu: only line breaks and "
                                    "tabs may be written in a reason", (unsigned) (unsigned char) v[ctl], ctl + 1);
                        else
                                d.reason = v;
                } else if (streq(name, "in_use")) {
                        d.in_use = in_use_from_string(v);
                        if (d.in_use == IN_USE_UNSET)
                                bad(l, s, "in_use: \"%.40s\" is not \"refuse\" or \"release\"", v);
                } else {
                        r = rfc3339_parse(v, &d.not_before);
                        if (r < 0 || d.not_before == 0)
                                bad(l, s, "not_before: \"%.40s\" is not an RFC 3339 UTC time (e.g. 2026-12-31T23:00:00Z)", v);
                }
        }
        if (!d.id && !d.number && l->errors == before)
                bad(l, e, "release entry names neither a number nor an id");
        if (l->errors != before)
                return 0;
        d.key = d.id ? d.id : d.number;
        r = decl_push(l, &d);
        if (r < 0) {
                if (r == -E2BIG)
                        bad(l, e, "more than %u release declarations", CONF_MAX_RELEASES);
                return r;
        }
        return 0;
}

static int read_releases(Loader *l, const config_setting_t *s, const char *file) {
        int r;

        if (!config_setting_is_list(s) && !config_setting_is_array(s)) {
                bad(l, s, "releases: expected a list ( { ... }, ... )");
                return 0;
        }
        for (int i = 0; i < config_setting_length(s); i++) {
                r = read_entry(l, config_setting_get_elem(s, i), file);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Where a line starts in libconfig's scanner (lib/scanner.l): strings and
 * comments may span lines. */
typedef enum { TEXT_CODE, TEXT_STRING, TEXT_COMMENT } TextState;

/* libconfig turns the escape \x00 (or \X00: two hex digits, its only escape
 * that gives a 0 byte) into nothing in 1.5, Debian 12's, and into a NUL that
 * ends the string in 1.7, and hands us only the C string: so
 * "+3491000\x000012" would be read as another phone, and a reason cut short,
 * without a word.  No check on the value can see that, and libconfig keeps
 * no literal to compare it with, only a line: so the escape is refused where
 * it is written, in the text, by read_tree()'s first pass, which every file
 * goes through (main file, drop-ins, settings-only loads) whatever the key
 * that holds the string.  This follows the scanner's rules for comments,
 * strings and the escapes that hide a backslash or a quote (so \\x00 is the
 * text \x00), carrying *st from line to line; returns the line's first NUL
 * escape inside a string, or NULL. */
static const char *find_nul_escape(const char *p, TextState *st) {
        const char *found = NULL;

        for (; *p; p++)
                switch (*st) {
                case TEXT_CODE:
                        if (*p == '#' || (p[0] == '/' && p[1] == '/'))
                                return found;   /* a comment to the end of the line */
                        if (p[0] == '/' && p[1] == '*')
                                *st = TEXT_COMMENT, p++;
                        else if (*p == '"')
                                *st = TEXT_STRING;
                        break;
                case TEXT_COMMENT:
                        if (p[0] == '*' && p[1] == '/')
                                *st = TEXT_CODE, p++;
                        break;
                case TEXT_STRING:
                        if (*p == '"')
                                *st = TEXT_CODE;
                        else if (*p == '\\' && (p[1] == 'x' || p[1] == 'X') &&
                                 isxdigit((unsigned char) p[2]) && isxdigit((unsigned char) p[3])) {
                                if (p[2] == '0' && p[3] == '0' && !found)
                                        found = p;
                                p += 3;
                        } else if (*p == '\\' && (p[1] == '\\' || p[1] == '"'))
                                p++;
                        break;
                }
        return found;
}

/* Reads one file into a libconfig tree.  We open it ourselves so that its
 * type and size are checked on what we read, and refuse @include: libconfig
 * 1.5 would follow it past every check here (and exit() on a folder). */
static int read_tree(Loader *l, const char *path, config_t *cfg) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *buf = NULL;
        TextState text = TEXT_CODE;
        unsigned line = 1, nul_escapes = 0;
        const char *nul;
        struct stat st;
        size_t cap = 0;
        ssize_t n;

        /* O_NONBLOCK: a FIFO named like a config file must not hang a reload. */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 || !(f = fdopen(fd, "r"))) {
                int r = negative_errno();
                if (fd >= 0)
                        close(fd);
                conf_diag_add(l->d, path, 0, "cannot open: %s", strerror(-r));
                return r;
        }
        if (fstat(fileno(f), &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode)) {
                conf_diag_add(l->d, path, 0, "not a regular file");
                return -EINVAL;
        }
        if (st.st_size > (off_t) CONF_MAX_FILE_SIZE) {
                conf_diag_add(l->d, path, 0, "larger than %u MiB: spread its releases over files in releases_dir",
                              CONF_MAX_FILE_SIZE >> 20);
                return -EFBIG;
        }
        /* A first pass line by line, so the file is never held whole
         * beside the tree libconfig builds from it. */
        while ((n = getline(&buf, &cap, f)) >= 0) {
                const char *q = buf + strspn(buf, " \t");
                if (strlen(buf) != (size_t) n) {
                        conf_diag_add(l->d, path, line, "contains a NUL byte: not a text file");
                        return -EINVAL;
                }
                if (strncmp(q, "@include", 8) == 0) {
                        conf_diag_add(l->d, path, line, "@include is not supported: put declarations in %s",
                                      "releases_dir");
                        return -EINVAL;
                }
                if ((nul = find_nul_escape(buf, &text))) {
                        conf_diag_add(l->d, path, line, "%.4s in a string: no setting may hold a NUL (libconfig "
                                      "would drop it silently); for the text %.4s write \\%.4s", nul, nul, nul);
                        nul_escapes++;
                }
                line++;
        }
        if (ferror(f))
                return -EIO;
        /* Refused before libconfig reads it: its strings are not what was written. */
        if (nul_escapes > 0)
                return -EINVAL;
        rewind(f);
        if (config_read(cfg, f) != CONFIG_TRUE) {
                const char *ef = config_error_file(cfg);
                conf_diag_add(l->d, ef ? ef : path, config_error_line(cfg), "%s", config_error_text(cfg));
                return -EINVAL;
        }
        return 0;
}

/* The settings only: its releases are read once the settings are known. */
static void read_settings(Loader *l, config_t *cfg) {
        config_setting_t *root = config_root_setting(cfg);

        for (int i = 0; i < config_setting_length(root); i++) {
                const config_setting_t *s = config_setting_get_elem(root, i);
                const char *name = config_setting_name(s);
                const Key *k;
                bool group = false;

                if (streq(name, "releases"))
                        continue;
                for (size_t g = 0; g < ELEMENTSOF(groups); g++)
                        group = group || streq(name, groups[g]);
                if (group) {
                        if (!config_setting_is_group(s)) {
                                bad(l, s, "%s: expected a group { ... }", name);
                                continue;
                        }
                        if (streq(name, "retry"))
                                l->retry_line = config_setting_source_line(s);
                        for (int j = 0; j < config_setting_length(s); j++) {
                                const config_setting_t *c = config_setting_get_elem(s, j);
                                k = find_key(name, config_setting_name(c));
                                if (k)
                                        read_key(l, k, c);
                                else
                                        bad(l, c, "unknown setting '%s.%s'", name, config_setting_name(c));
                        }
                        continue;
                }
                k = find_key(NULL, name);
                if (k)
                        read_key(l, k, s);
                else
                        bad(l, s, "unknown setting '%s'", name);
        }
}

static int read_main_releases(Loader *l, config_t *cfg) {
        config_setting_t *root = config_root_setting(cfg);
        int r = 0;

        for (int i = 0; i < config_setting_length(root) && r >= 0; i++) {
                const config_setting_t *s = config_setting_get_elem(root, i);
                if (streq(config_setting_name(s), "releases"))
                        r = read_releases(l, s, l->c->files[0]);
        }
        note_capital_ids(l, l->c->files[0]);
        return r;
}

static int add_file(Config *c, const char *path, const char **ret) {
        char **a = reallocarray(c->files, c->n_files + 1, sizeof(char *));
        if (!a)
                return -ENOMEM;
        c->files = a;
        if (!(c->files[c->n_files] = strdup(path)))
                return -ENOMEM;
        *ret = c->files[c->n_files++];
        return 0;
}

static int read_dropin(Loader *l, const char *path) {
        const char *file;
        config_t cfg;
        int r;

        r = add_file(l->c, path, &file);
        if (r < 0)
                return r;
        l->file = file;
        config_init(&cfg);
        r = read_tree(l, path, &cfg);
        if (r >= 0) {
                config_setting_t *root = config_root_setting(&cfg);
                for (int i = 0; i < config_setting_length(root) && r >= 0; i++) {
                        const config_setting_t *s = config_setting_get_elem(root, i);
                        if (streq(config_setting_name(s), "releases"))
                                r = read_releases(l, s, file);
                        else
                                bad(l, s, "unknown setting '%s' (a releases.d file holds only 'releases')",
                                    config_setting_name(s));
                }
                note_capital_ids(l, file);
        }
        config_destroy(&cfg);
        return r;
}

static int dropin_filter(const struct dirent *de) {
        size_t n = strlen(de->d_name);
        return de->d_name[0] != '.' && n > 5 && streq(de->d_name + n - 5, ".conf");
}

/* Plain byte order, so the order of files never depends on the locale. */
static int dropin_cmp(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

static int read_dropins(Loader *l, bool explicit) {
        struct dirent **list = NULL;
        int n, r = 0;

        n = scandir(l->c->releases_dir, &list, dropin_filter, dropin_cmp);
        if (n < 0) {
                r = negative_errno();
                if (r == -ENOENT && !explicit)
                        return 0;
                conf_diag_add(l->d, l->c->releases_dir, 0, "cannot read folder: %s", strerror(-r));
                return r;
        }
        if ((unsigned) n > CONF_MAX_DROPIN) {
                conf_diag_add(l->d, l->c->releases_dir, 0, "more than %u files", CONF_MAX_DROPIN);
                r = -E2BIG;
        }
        for (int i = 0; i < n; i++) {
                if (r >= 0) {
                        _cleanup_free_ char *p = NULL;
                        struct stat st;

                        if (asprintf(&p, "%s/%s", l->c->releases_dir, list[i]->d_name) < 0)
                                r = -ENOMEM;
                        /* Folders and sockets named *.conf are not declarations,
                         * and a file removed while we scan was never there. */
                        else if (stat(p, &st) < 0) {
                                if (errno != ENOENT) {
                                        r = negative_errno();
                                        conf_diag_add(l->d, p, 0, "cannot stat: %s", strerror(-r));
                                }
                        } else if (S_ISREG(st.st_mode))
                                r = read_dropin(l, p);
                }
                free(list[i]);
        }
        free(list);
        return r;
}

static int resolve_path(const char *base_dir, char **p, const char *fallback) {
        char *n;

        if (!*p || !**p) {
                if (!(n = strdup(fallback)))
                        return -ENOMEM;
        } else if (**p == '/')
                return 0;
        else if (asprintf(&n, "%s/%s", base_dir, *p) < 0)
                return -ENOMEM;
        free(*p);
        *p = n;
        return 0;
}

static int config_new(const char *path, Config **ret) {
        _cleanup_(config_freep) Config *c = NULL;
        const char *sd = getenv("STATE_DIRECTORY"), *rd = getenv("RUNTIME_DIRECTORY");
        _cleanup_free_ char *sd_first = NULL, *rd_first = NULL;

        c = calloc(1, sizeof(Config));
        if (!c)
                return -ENOMEM;
        *c = (Config) {
                .timeout = 30.0, .settle_time = 300.0, .auth_retry = 900.0, .rate = 2.0, .burst = 5, .concurrency = 4,
                .max_attempts = 8, .base_delay = 1.0, .max_delay = 300.0,
                .max_new_releases = 25, .hold = 600.0, .in_use = IN_USE_REFUSE, .resync_interval = 3600.0,
        };
        /* $STATE_DIRECTORY may list several folders separated by ':'. */
        if (sd && *sd == '/')
                sd_first = strndup(sd, strcspn(sd, ":"));
        if (rd && *rd == '/')
                rd_first = strndup(rd, strcspn(rd, ":"));
        if (asprintf(&c->ledger, "%s/ledger.db", sd_first ? sd_first : "/var/lib/retired") < 0) {
                c->ledger = NULL;
                return -ENOMEM;
        }
        if (asprintf(&c->control_socket, "%s/control", rd_first ? rd_first : "/run/retired") < 0) {
                c->control_socket = NULL;
                return -ENOMEM;
        }
        c->path = strdup(path);
        c->base_url = strdup("https://api.diga.io");
        c->token_file = strdup("");
        c->ca_file = strdup("");
        c->releases_dir = strdup("");
        if (!c->path || !c->base_url || !c->token_file || !c->ca_file || !c->releases_dir)
                return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 0;
}

static void config_destroyp(config_t **cfg) {
        if (*cfg)
                config_destroy(*cfg);
}

/* The settings read, made whole: relative paths resolved against the
 * file's folder, unset ones defaulted, and the checks that need more than
 * one key.  A bad setting counts in l->errors; only ENOMEM fails here. */
static int finish_settings(Loader *l, const char *path, const char *ledger_default, const char *control_default,
                           bool *ret_explicit_dropin) {
        _cleanup_free_ char *dir_copy = NULL, *default_dropin = NULL;
        Config *c = l->c;
        const char *dir;

        dir_copy = strdup(path);
        if (!dir_copy)
                return -ENOMEM;
        dir = dirname(dir_copy);
        if (asprintf(&default_dropin, "%s/releases.d", dir) < 0)
                return -ENOMEM;
        *ret_explicit_dropin = c->releases_dir[0] != 0;
        if (resolve_path(dir, &c->releases_dir, default_dropin) < 0 ||
            resolve_path(dir, &c->ledger, ledger_default) < 0 ||
            resolve_path(dir, &c->control_socket, control_default) < 0)
                return -ENOMEM;
        if (c->max_delay < c->base_delay) {
                conf_diag_add(l->d, l->file, l->retry_line,
                              "retry.max_delay (%g) is shorter than retry.base_delay (%g)",
                              c->max_delay, c->base_delay);
                l->errors++;
        }
        /* Trailing slashes would double up when paths are appended. */
        for (size_t n = strlen(c->base_url); n > 0 && c->base_url[n - 1] == '/'; n--)
                c->base_url[n - 1] = 0;
        return 0;
}

/* The declarations: the main file's, then the drop-ins', into l->sink
 * (if any).  *tree is the main file's, still owned by the caller; it is
 * freed here once read, so that only one file's tree is in memory at a
 * time.  -EINVAL if any entry was bad or in conflict. */
static int load_releases(Loader *l, config_t **tree, bool explicit_dropin) {
        const DeclSink *sink = l->sink;
        Config *c = l->c;
        size_t conflicts = 0;
        int r;

        if (sink && sink->begin) {
                r = sink->begin(sink->userdata, c);
                if (r < 0)
                        return r;
        }
        r = read_main_releases(l, *tree);
        if (r < 0)
                return r;
        /* Only one file's tree at a time. */
        config_destroy(TAKE_PTR(*tree));

        r = read_dropins(l, explicit_dropin);
        if (r < 0)
                return r;
        c->n_decls = l->n_read;
        if (sink) {
                r = sink->finish(sink->userdata, l->d, &c->warnings, l->errors > 0, &c->n_decls);
                if (r < 0)
                        return r;
                conflicts = (size_t) r;
        }
        if (l->errors > 0 || conflicts > 0)
                return -EINVAL;
        return 0;
}

static int load(const char *path, const DeclSink *sink, bool settings_only, Config **ret, ConfDiag *d) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *ledger_default = NULL, *control_default = NULL;
        _cleanup_(config_destroyp) config_t *tree = NULL;
        config_t main_cfg;
        const char *file;
        bool explicit_dropin;
        Loader l;
        int r;

        r = config_new(path, &c);
        if (r < 0)
                return r;
        r = add_file(c, path, &file);
        if (r < 0)
                return r;
        l = (Loader) { .c = c, .d = d, .sink = sink, .file = file, .settings_only = settings_only };

        /* The defaults, before the file may set the keys to "" (= default). */
        ledger_default = strdup(c->ledger);
        control_default = strdup(c->control_socket);
        if (!ledger_default || !control_default)
                return -ENOMEM;
        config_init(&main_cfg);
        tree = &main_cfg;
        r = read_tree(&l, path, tree);
        if (r < 0)
                return r;
        read_settings(&l, tree);
        r = finish_settings(&l, path, ledger_default, control_default, &explicit_dropin);
        if (r < 0)
                return r;

        /* Settings that do not load: the declarations are still checked,
         * for the diagnostics, but go to no sink (whose ledger path may be
         * the one that is wrong). */
        if (l.errors > 0)
                l.sink = NULL;
        if (settings_only) {
                if (l.errors > 0)
                        return -EINVAL;
                *ret = TAKE_PTR(c);
                return 0;
        }
        r = load_releases(&l, &tree, explicit_dropin);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

int config_load(const char *path, const DeclSink *sink, Config **ret, ConfDiag *d) {
        return load(path, sink, false, ret, d);
}

int config_load_settings(const char *path, Config **ret, ConfDiag *d) {
        return load(path, NULL, true, ret, d);
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_files; i++)
                free(c->files[i]);
        free(c->files);
        free(c->path);
        free(c->base_url);
        free(c->token_file);
        free(c->ca_file);
        free(c->ledger);
        free(c->releases_dir);
        free(c->control_socket);
        conf_diag_done(&c->notes);
        conf_diag_done(&c->warnings);
        free(c);
        return NULL;
}

int config_token_file_warning(const Config *c, char **ret) {
        struct stat st;

        *ret = NULL;
        if (!c->token_file || !c->token_file[0])
                return 0;
        if (stat(c->token_file, &st) < 0)
                return asprintf_or_null(ret, "api.token_file %s: %s", c->token_file, strerror(errno)) < 0 ? -ENOMEM : 0;
        /* A key file must be 0600; owned by root, no DynamicUser= reads it. */
        if (st.st_uid == 0 && geteuid() == 0)
                return asprintf_or_null(ret, "api.token_file %s is root's own: the shipped unit runs as a dynamic user "
                                        "that cannot read it; leave token_file empty and let LoadCredential= hand "
                                        "the unit the key", c->token_file) < 0 ? -ENOMEM : 0;
        if (access(c->token_file, R_OK) < 0)
                return asprintf_or_null(ret, "api.token_file %s cannot be read by uid %u", c->token_file,
                                        (unsigned) geteuid()) < 0 ? -ENOMEM : 0;
        return 0;
}

int config_defaults(const char *path, Config **ret) {
        return config_new(path, ret);
}

