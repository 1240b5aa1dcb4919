/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for config_load() (conf/parse.c, conf/syntax.c).
 *
 * The input is split at its first NUL byte: the part before is written to
 * DIR/retired.conf, the part after (when there is one) to
 * DIR/releases.d/fuzz.conf, so the drop-in path (read_dropins, read_dropin,
 * and the cross-file dedup) is exercised as well as the main file.  DIR is
 * made once with mkdtemp() under $TMPDIR (or /tmp) and removed at exit.
 *
 * Checked on every input:
 *   success: no diagnostics; n_decls <= CONF_MAX_RELEASES; every Decl (as
 *            the ledger's TEMP table holds it after the merge, state/decl.c) has a
 *            key that is its id when it has one, else its number; ids pass
 *            uuid_is_valid(); numbers are already in normalised form; no two
 *            Decls share an id or a number; Decl.file is one of Config.files;
 *            settings are inside the ranges conf/parse.c documents.
 *   failure: -EINVAL (or another negative errno) with at least one
 *            diagnostic, each of the form "FILE: ..." with FILE a real path
 *            (ours, or a file the input pulled in).
 * Everything is freed, so LeakSanitizer checks the error paths too. */

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "macro.h"
#include "state.h"

static char dir[PATH_MAX];
static char main_path[PATH_MAX + 32], dropin_dir[PATH_MAX + 32], dropin_path[PATH_MAX + 64];

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
        return remove(p);
}

/* A ledger that is not there: read as an empty one, in memory.  The
 * declarations go into its TEMP tables as they would in the daemon. */
static Ledger *ledger;

static void cleanup(void) {
        ledger = ledger_close(ledger);
        if (dir[0])
                nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        const char *tmp = getenv("TMPDIR");

        /* Absolute, so that every path config_load() resolves is too.  A
         * crash skips atexit(): make runs us with TMPDIR in build/fuzz/. */
        snprintf(dir, sizeof dir, "%s/retired-fuzz-config.XXXXXX",
                 tmp && tmp[0] == '/' && strlen(tmp) < PATH_MAX - 64 ? tmp : "/tmp");
        if (!mkdtemp(dir))
                abort();
        snprintf(main_path, sizeof main_path, "%s/retired.conf", dir);
        snprintf(dropin_dir, sizeof dropin_dir, "%s/releases.d", dir);
        snprintf(dropin_path, sizeof dropin_path, "%s/fuzz.conf", dropin_dir);
        if (mkdir(dropin_dir, 0700) < 0)
                abort();
        /* The ledger and control socket defaults come from these. */
        unsetenv("STATE_DIRECTORY");
        unsetenv("RUNTIME_DIRECTORY");
        if (ledger_open("/nonexistent/retired-fuzz/ledger.db", LEDGER_READ, &ledger, NULL) < 0)
                abort();
        atexit(cleanup);
        return 0;
}

static void write_file(const char *path, const uint8_t *data, size_t size) {
        FILE *f = fopen(path, "we");

        if (!f)
                abort();
        if (size > 0 && fwrite(data, 1, size, f) != size)
                abort();
        if (fclose(f) != 0)
                abort();
}

#define CHECK(cond) do { if (!(cond)) { \
        fprintf(stderr, "fuzz-config: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        abort(); } } while (0)

static bool is_config_file(const Config *c, const char *f) {
        for (size_t i = 0; i < c->n_files; i++)
                if (streq(c->files[i], f))
                        return true;
        return false;
}

/* The declared set as the ledger's TEMP table holds it once merged, copied
 * out for the checks. */
static Decl *seen;
static size_t n_seen;

static char *dup0(const char *s) {
        char *d = s ? strdup(s) : NULL;
        if (s && !d)
                abort();
        return d;
}

static void seen_clear(void) {
        for (size_t i = 0; i < n_seen; i++) {
                free((char *) seen[i].key);
                free((char *) seen[i].id);
                free((char *) seen[i].number);
                free((char *) seen[i].reason);
                free((char *) seen[i].file);
        }
        free(seen);
        seen = NULL;
        n_seen = 0;
}

static int collect(const Decl *x, void *userdata) {
        Decl *v = reallocarray(seen, n_seen + 1, sizeof(Decl));

        if (!v)
                abort();
        seen = v;
        seen[n_seen++] = (Decl) { .key = dup0(x->key), .id = dup0(x->id), .number = dup0(x->number),
                                  .reason = dup0(x->reason), .not_before = x->not_before, .file = dup0(x->file),
                                  .line = x->line };
        return 0;
}

static void check_success(const Config *c, const ConfDiag *d) {
        CHECK(d->n == 0 && d->dropped == 0);
        CHECK(c->n_decls <= CONF_MAX_RELEASES);
        CHECK(c->n_files >= 1 && streq(c->files[0], main_path));
        CHECK(c->path && streq(c->path, main_path));
        CHECK(c->base_url && c->token_file && c->ca_file && c->ledger && c->releases_dir && c->control_socket);
        /* Paths are resolved against the folder of the main file, and an
         * empty one means the documented default (retired.conf(5)). */
        CHECK(c->releases_dir[0] == '/');
        CHECK(c->ledger[0] == '/' && c->control_socket[0] == '/');
        CHECK(c->token_file[0] == 0 || c->token_file[0] == '/');
        CHECK(c->ca_file[0] == 0 || c->ca_file[0] == '/');
        CHECK(strlen(c->base_url) == 0 || c->base_url[strlen(c->base_url) - 1] != '/');
        CHECK(c->timeout >= 1 && c->timeout <= 600);
        CHECK(c->rate >= 0.001 && c->rate <= 10000);
        CHECK(c->burst >= 1 && c->burst <= 10000);
        CHECK(c->concurrency >= 1 && c->concurrency <= 64);
        CHECK(c->max_attempts >= 1 && c->max_attempts <= 100);
        CHECK(c->base_delay >= 0.001 && c->base_delay <= 3600);
        CHECK(c->max_delay >= 0.001 && c->max_delay <= 86400);
        CHECK(c->max_delay >= c->base_delay);
        CHECK(c->max_new_releases <= CONF_MAX_RELEASES);
        CHECK(c->resync_interval >= 1 && c->resync_interval <= 604800);

        for (size_t i = 0; i < n_seen; i++) {
                const Decl *x = &seen[i];

                CHECK(x->key);
                CHECK(x->id || x->number);
                CHECK(streq(x->key, x->id ? x->id : x->number));
                if (x->id)
                        CHECK(uuid_is_valid(x->id));
                if (x->number) {
                        _cleanup_free_ char *again = NULL;

                        CHECK(x->number[0]);
                        /* The stored form is a fixed point of the normaliser. */
                        CHECK(number_normalize(x->number, &again) == 0);
                        CHECK(streq(again, x->number));
                }
                if (x->reason)
                        CHECK(strlen(x->reason) <= CONF_MAX_REASON);
                CHECK(x->not_before >= 0);
                CHECK(x->file && is_config_file(c, x->file));
                CHECK(x->line > 0);
        }
        /* After the merge, one Decl per phone: no id and no number twice. */
        CHECK(n_seen == c->n_decls);
        if (n_seen <= 2000)
                for (size_t i = 0; i < n_seen; i++)
                        for (size_t j = i + 1; j < n_seen; j++) {
                                const Decl *x = &seen[i], *y = &seen[j];
                                CHECK(!(x->id && y->id && streq(x->id, y->id)));
                                CHECK(!(x->number && y->number && streq(x->number, y->number)));
                        }
}

static void check_failure(int r, const ConfDiag *d) {
        CHECK(r < 0);
        CHECK(d->n > 0);
        CHECK(d->n <= CONF_MAX_DIAG);
        for (size_t i = 0; i < d->n; i++) {
                const char *l = d->lines[i], *colon;

                CHECK(l);
                /* "FILE:LINE: message" or "FILE: message". */
                if (strncmp(l, dir, strlen(dir)) == 0)
                        continue;
                /* Only an @include'd file can be named otherwise (the name
                 * as written, resolved against the working folder). */
                colon = strchr(l, ':');
                CHECK(colon && colon > l);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint8_t *nul = memchr(data, 0, size);
        size_t main_len = nul ? (size_t) (nul - data) : size;
        ConfDiag d = {};
        Config *c = NULL;
        int r;

        write_file(main_path, data, main_len);
        if (nul)
                write_file(dropin_path, nul + 1, size - main_len - 1);
        else if (unlink(dropin_path) < 0 && errno != ENOENT)
                abort();

        {
                DeclLoad dl = { .ledger = ledger };
                DeclSink sink = decl_load_sink(&dl);

                r = config_load(main_path, &sink, &c, &d);
                decl_load_done(&dl);
        }
        if (r == 0) {
                CHECK(c);
                CHECK(ledger_decls_foreach(ledger, collect, NULL) == 0);
                CHECK(ledger_decls_keep(ledger) == 0);
                check_success(c, &d);
                seen_clear();
                config_free(c);
        } else {
                CHECK(!c);
                check_failure(r, &d);
        }
        conf_diag_done(&d);
        return 0;
}

/* libconfig 1.5 itself leaks a string token on some syntax errors
 * (a = 1; b"c"; leaks 64 bytes from strbuf_append, a run of "" one byte
 * from libconfig_yylex): a bug of the library, reproduced without our code,
 * while conf/parse.c calls config_destroy() on every path.  Only leaks
 * allocated under libconfig are ignored; nothing it allocates is handed to
 * our code.  README.md. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
        return "leak:libconfig.so\n";
}

const char *__lsan_default_options(void);
const char *__lsan_default_options(void) {
        return "print_suppressions=0";
}
