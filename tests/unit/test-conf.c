/* SPDX-License-Identifier: MIT */
/* config_load() against the corpus in tests/conf/ and against generated
 * files for the limits.
 *
 *   tests/conf/good/NAME.conf     must load with no diagnostic;
 *   tests/conf/bad/NAME.conf      must be rejected with -EINVAL;
 *   tests/conf/bad-NAME/retired.conf  the same, for cases that need a
 *                                 releases.d/ folder next to the main file.
 *
 * A bad file starts with one or more lines
 *     # expect: FILE:LINE: text
 * and the load must report exactly those problems: each expect line matches
 * a diagnostic that begins with "FILE:LINE: " and contains the text, and
 * every diagnostic is matched by some expect line.  New files are picked up
 * without touching this program. */

#include "unit.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/wait.h>

#include "conf.h"
#include "macro.h"
#include "state.h"

#define CORPUS "tests/conf"
#define UUID_A "3c90c3cc-0d44-4b50-8888-8dd25736052a"

static void print_diag(const ConfDiag *d) {
        for (size_t i = 0; i < d->n; i++)
                print_message("    diagnostic: %s\n", d->lines[i]);
        if (d->dropped)
                print_message("    (%zu more dropped)\n", d->dropped);
}

/* The declarations of the last load_ok(), as the ledger's TEMP tables
 * hold them once merged: the sink the daemon uses, on a ledger that is not
 * there (read as an empty one, in memory). */
typedef struct Loaded {
        Decl *v;
        size_t n;
} Loaded;

static Loaded loaded;

static char *dup0(const char *s) {
        return s ? strdup(s) : NULL;
}

static void loaded_clear(void) {
        for (size_t i = 0; i < loaded.n; i++) {
                free((char *) loaded.v[i].id);
                free((char *) loaded.v[i].number);
                free((char *) loaded.v[i].reason);
                free((char *) loaded.v[i].file);
        }
        loaded.v = mfree(loaded.v);
        loaded.n = 0;
}

static int collect(const Decl *d, void *userdata) {
        Decl *v = reallocarray(loaded.v, loaded.n + 1, sizeof(Decl));

        assert_non_null(v);
        loaded.v = v;
        v[loaded.n] = (Decl) { .id = dup0(d->id), .number = dup0(d->number), .reason = dup0(d->reason),
                               .not_before = d->not_before, .file = dup0(d->file), .line = d->line,
                               .in_use = d->in_use };
        v[loaded.n].key = v[loaded.n].id ? v[loaded.n].id : v[loaded.n].number;
        assert_string_equal(v[loaded.n].key, d->key);
        loaded.n++;
        return 0;
}

static int open_memory(void *userdata, const Config *c, Ledger **ret) {
        return ledger_open("/nonexistent/ledger.db", LEDGER_READ, ret, NULL);
}

static int load(const char *path, Config **ret, ConfDiag *d) {
        DeclLoad dl = { .open = open_memory };
        DeclSink sink = decl_load_sink(&dl);
        int r;

        loaded_clear();
        r = config_load(path, &sink, ret, d);
        if (r >= 0)
                assert_int_equal(ledger_decls_foreach(dl.ledger, collect, NULL), 0);
        decl_load_done(&dl);
        ledger_close(dl.ledger);
        if (r >= 0)
                assert_int_equal(loaded.n, (*ret)->n_decls);
        return r;
}

/* Loads a file that must be valid; fails the test otherwise. */
static Config *load_ok(const char *path) {
        ConfDiag d = {};
        Config *c = NULL;
        int r;

        r = load(path, &c, &d);
        if (r < 0 || d.n > 0) {
                print_message("  %s: config_load() = %d (%s)\n", path, r, strerror(-r));
                print_diag(&d);
        }
        conf_diag_done(&d);
        assert_int_equal(r, 0);
        assert_non_null(c);
        return c;
}

/* Loads a file that must be rejected; returns the error (0 if it loaded,
 * which fails the caller's check), d keeps the diagnostics. */
static int load_fail(const char *path, ConfDiag *d) {
        Config *c = NULL;
        int r;

        r = load(path, &c, d);
        if (r >= 0)
                print_message("  %s: loaded, but should have been rejected\n", path);
        else if (c) {
                /* A rejected load hands nothing out. */
                print_message("  %s: rejected, yet a Config was returned\n", path);
                r = -EUCLEAN;
        }
        config_free(c);
        return r;
}

static bool diag_has(const ConfDiag *d, const char *line) {
        for (size_t i = 0; i < d->n; i++)
                if (streq_ptr(d->lines[i], line))
                        return true;
        return false;
}

/* ---- the corpus --------------------------------------------------------- */

static void test_good_file(void **state) {
        const char *path = *state;
        Config *c = load_ok(path);

        assert_string_equal(c->path, path);
        assert_string_equal(c->files[0], path);
        config_free(c);
}

/* "FILE:LINE: text" (or "FILE: text") matches a diagnostic that starts with
 * the same "FILE:LINE: " and has the text somewhere after it. */
static bool diag_matches(const char *diag, const char *expect) {
        const char *sep = strstr(expect, ": ");
        size_t prefix;

        if (!sep)
                return false;
        prefix = (size_t) (sep + 2 - expect);
        return strncmp(diag, expect, prefix) == 0 && strstr(diag + prefix, sep + 2);
}

static void test_bad_file(void **state) {
        const char *path = *state;
        char *text = read_all(path, NULL), *expect[32];
        size_t n_expect = 0, unmatched_expect = 0, unexpected_diag = 0;
        bool starts_with_expect = strncmp(text, "# expect: ", 10) == 0;
        ConfDiag d = {};
        int r;

        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
                if (strncmp(line, "# expect: ", 10) == 0 && n_expect < ELEMENTSOF(expect))
                        expect[n_expect++] = line + 10;

        r = load_fail(path, &d);

        for (size_t i = 0; i < n_expect; i++) {
                bool found = false;
                for (size_t j = 0; j < d.n && !found; j++)
                        found = diag_matches(d.lines[j], expect[i]);
                if (!found) {
                        print_message("  missing: %s\n", expect[i]);
                        unmatched_expect++;
                }
        }
        for (size_t j = 0; j < d.n; j++) {
                bool found = false;
                for (size_t i = 0; i < n_expect && !found; i++)
                        found = diag_matches(d.lines[j], expect[i]);
                if (!found) {
                        print_message("  unexpected: %s\n", d.lines[j]);
                        unexpected_diag++;
                }
        }
        if (unmatched_expect || unexpected_diag || r != -EINVAL) {
                print_message("  %s: config_load() = %d\n", path, r);
                print_diag(&d);
        }
        conf_diag_done(&d);
        free(text);

        /* A bad file says first thing what is wrong with it. */
        assert_true(starts_with_expect);
        assert_true(n_expect > 0);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(unmatched_expect, 0);
        assert_int_equal(unexpected_diag, 0);
}

/* ---- concrete values of the good files ---------------------------------- */

static void test_minimal_gets_every_default(void **state) {
        Config *c;

        unsetenv("STATE_DIRECTORY");
        unsetenv("RUNTIME_DIRECTORY");
        c = load_ok(CORPUS "/good/minimal.conf");
        assert_string_equal(c->base_url, "https://api.diga.io");
        assert_string_equal(c->token_file, "");
        assert_string_equal(c->ca_file, "");
        assert_true(c->timeout == 30.0);
        assert_true(c->settle_time == 300.0);
        assert_true(c->auth_retry == 900.0);
        assert_true(c->rate == 2.0);
        assert_int_equal(c->burst, 5);
        assert_int_equal(c->concurrency, 4);
        assert_int_equal(c->max_attempts, 8);
        assert_true(c->base_delay == 1.0);
        assert_true(c->max_delay == 300.0);
        assert_false(c->dry_run);
        assert_int_equal(c->max_new_releases, 25);
        assert_true(c->hold == 600.0);
        assert_int_equal(c->in_use, IN_USE_REFUSE);
        assert_true(c->resync_interval == 3600.0);
        assert_string_equal(c->ledger, "/var/lib/retired/ledger.db");
        assert_string_equal(c->releases_dir, CORPUS "/good/releases.d");
        assert_string_equal(c->control_socket, "/run/retired/control");
        assert_int_equal(c->n_decls, 0);
        assert_int_equal(c->n_files, 1);
        config_free(c);
}

static void test_empty_paths_are_the_defaults(void **state) {
        Config *c;

        unsetenv("STATE_DIRECTORY");
        unsetenv("RUNTIME_DIRECTORY");
        c = load_ok(CORPUS "/good/empty-paths.conf");
        assert_string_equal(c->token_file, "");
        assert_string_equal(c->ca_file, "");
        assert_string_equal(c->ledger, "/var/lib/retired/ledger.db");
        assert_string_equal(c->releases_dir, CORPUS "/good/releases.d");
        assert_string_equal(c->control_socket, "/run/retired/control");
        config_free(c);
}

static void test_every_key_is_read(void **state) {
        Config *c = load_ok(CORPUS "/good/every-key.conf");

        /* The trailing slash goes, so paths can be appended. */
        assert_string_equal(c->base_url, "https://phones.example.com:8443/diga");
        assert_string_equal(c->token_file, "/etc/retired/api-token");
        assert_string_equal(c->ca_file, "/etc/passwd");
        assert_true(c->timeout == 12.5);
        assert_true(c->settle_time == 45.0);
        assert_true(c->auth_retry == 120.0);
        assert_true(c->rate == 0.5);
        assert_int_equal(c->burst, 9);
        assert_int_equal(c->concurrency, 64);
        assert_int_equal(c->max_attempts, 100);
        assert_true(c->base_delay == 2.5);
        assert_true(c->max_delay == 600.0);
        assert_true(c->dry_run);
        assert_int_equal(c->max_new_releases, 0);
        assert_true(c->hold == 30.5);
        assert_int_equal(c->in_use, IN_USE_RELEASE);
        assert_true(c->resync_interval == 60.0);
        /* Relative paths are relative to the file, not to the working folder. */
        assert_string_equal(c->ledger, CORPUS "/good/state/ledger.db");
        assert_string_equal(c->releases_dir, CORPUS "/good/every-key.d");
        assert_string_equal(c->control_socket, "/run/retired-test/control");

        assert_int_equal(c->n_files, 2);
        assert_string_equal(c->files[1], CORPUS "/good/every-key.d/10-more.conf");
        assert_int_equal(c->n_decls, 2);
        assert_string_equal(loaded.v[0].key, "+34910000001");
        assert_string_equal(loaded.v[0].number, "+34910000001");
        assert_null(loaded.v[0].id);
        assert_string_equal(loaded.v[0].reason, "OPS-1 shop closed");
        assert_int_equal(loaded.v[0].not_before, 1798758000);   /* 2026-12-31T23:00:00Z */
        assert_string_equal(loaded.v[0].file, CORPUS "/good/every-key.conf");
        assert_int_equal(loaded.v[0].line, 33);
        /* The declaration's in_use wins; one that says nothing has safety.in_use. */
        assert_int_equal(loaded.v[0].in_use, IN_USE_REFUSE);
        assert_int_equal(loaded.v[1].in_use, IN_USE_RELEASE);
        assert_string_equal(loaded.v[1].key, UUID_A);
        assert_string_equal(loaded.v[1].id, UUID_A);
        assert_null(loaded.v[1].number);
        assert_string_equal(loaded.v[1].reason, "from the drop-in");
        assert_int_equal(loaded.v[1].not_before, 0);
        assert_string_equal(loaded.v[1].file, CORPUS "/good/every-key.d/10-more.conf");
        assert_int_equal(loaded.v[1].line, 1);
        config_free(c);
}

static void test_numbers_are_normalised(void **state) {
        static const char *const want[] = {
                "+34910000001", "+34910000002", "+34910000003", "+34910000004", "+34910000005",
                "910000006", "+15550100007", "112", "+12345678901234567890",
        };
        Config *c = load_ok(CORPUS "/good/numbers.conf");

        assert_int_equal(c->n_decls, ELEMENTSOF(want));
        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                assert_string_equal(loaded.v[i].number, want[i]);
                assert_string_equal(loaded.v[i].key, want[i]);
                assert_null(loaded.v[i].id);
                assert_null(loaded.v[i].reason);
                assert_int_equal(loaded.v[i].line, 3 + i);
        }
        config_free(c);
}

static void test_sip_identifiers_are_kept_as_written(void **state) {
        Config *c = load_ok(CORPUS "/good/sip.conf");

        assert_int_equal(c->n_decls, 2);
        assert_string_equal(loaded.v[0].key, "alice@pbx.example.com");
        assert_string_equal(loaded.v[0].reason, "SIP trunk");
        assert_string_equal(loaded.v[1].key, "sip:+34910000009@Trunk.Example.COM");
        assert_string_equal(loaded.v[1].number, "sip:+34910000009@Trunk.Example.COM");
        config_free(c);
}

static void test_ids_become_the_key(void **state) {
        Config *c = load_ok(CORPUS "/good/ids.conf");

        assert_int_equal(c->n_decls, 2);
        assert_string_equal(loaded.v[0].key, UUID_A);
        assert_string_equal(loaded.v[0].id, UUID_A);
        assert_null(loaded.v[0].number);
        assert_string_equal(loaded.v[1].key, "00000000-0000-0000-0000-000000000000");
        assert_string_equal(loaded.v[1].number, "+34910000010");
        assert_int_equal(c->warnings.n, 0);
        config_free(c);
}

/* As dashboards and spreadsheets show them: kept in lowercase, the one
 * spelling of the ledger and the journal, so that both spellings are one
 * phone (merged, not two declarations), and said once per file. */
static void test_ids_in_any_case(void **state) {
        Config *c = load_ok(CORPUS "/good/ids-any-case.conf");

        assert_int_equal(c->n_decls, 3);
        assert_string_equal(loaded.v[0].key, UUID_A);
        assert_string_equal(loaded.v[0].id, UUID_A);
        assert_string_equal(loaded.v[0].reason, "from a dashboard");
        assert_int_equal(loaded.v[0].line, 4);
        assert_string_equal(loaded.v[1].key, "0000000a-000b-400c-8d0e-00000000000f");
        assert_string_equal(loaded.v[1].id, "0000000a-000b-400c-8d0e-00000000000f");
        assert_string_equal(loaded.v[1].number, "+34910000011");
        assert_string_equal(loaded.v[2].key, "abcdef01-2345-4678-9abc-def012345678");
        assert_int_equal(c->notes.n, 1);
        assert_string_equal(c->notes.lines[0], CORPUS "/good/ids-any-case.conf:4: 3 ids in capitals (the first "
                            "here), read in lowercase as the ledger and the journal write them");
        config_free(c);

        /* In lowercase already: nothing to say. */
        c = load_ok(CORPUS "/good/ids.conf");
        assert_int_equal(c->notes.n, 0);
        config_free(c);
}

static void test_not_before_forms(void **state) {
        Config *c = load_ok(CORPUS "/good/not-before.conf");

        assert_int_equal(c->n_decls, 4);
        /* Z, +00:00 and a fraction of a second all name the same second. */
        assert_int_equal(loaded.v[0].not_before, 1798758000);
        assert_int_equal(loaded.v[1].not_before, 1798758000);
        assert_int_equal(loaded.v[2].not_before, 1798758000);
        assert_int_equal(loaded.v[3].not_before, 1835438400);   /* 2028-02-29T12:00:00Z */
        config_free(c);
}

static void test_duplicates_are_merged(void **state) {
        Config *c = load_ok(CORPUS "/good/duplicates.conf");

        assert_int_equal(c->n_decls, 2);
        /* Two identical entries, written differently: one declaration. */
        assert_string_equal(loaded.v[0].key, "+34910000020");
        assert_string_equal(loaded.v[0].reason, "same");
        assert_int_equal(loaded.v[0].line, 3);
        /* By number, by number and id, by id: one phone, fields combined,
         * reported where it was first declared. */
        assert_string_equal(loaded.v[1].key, UUID_A);
        assert_string_equal(loaded.v[1].id, UUID_A);
        assert_string_equal(loaded.v[1].number, "+34910000021");
        assert_string_equal(loaded.v[1].reason, "OPS-7");
        assert_int_equal(loaded.v[1].not_before, 1798758000);
        assert_int_equal(loaded.v[1].line, 5);
        /* Not an error, but said: each phone once, with every entry counted
         * across the merge by number and the one by id. */
        assert_int_equal(c->warnings.n, 2);
        assert_string_equal(c->warnings.lines[0], CORPUS "/good/duplicates.conf:3: +34910000020 is declared 2 times, "
                            "also at " CORPUS "/good/duplicates.conf:4: one phone, one release");
        assert_string_equal(c->warnings.lines[1], CORPUS "/good/duplicates.conf:5: " UUID_A " is declared 3 times, "
                            "also at " CORPUS "/good/duplicates.conf:6 and " CORPUS "/good/duplicates.conf:7: "
                            "one phone, one release");
        config_free(c);
}

/* A list pasted twice, or ten thousand times: one declaration per phone,
 * and one warning per phone with the count and the first few places, for
 * the first few phones, then how many more; the places past those are
 * counted, not kept. */
static void test_copies_are_counted_and_said_once(void **state) {
        char *dir = tmpdir_new(), *rd = path_join(dir, "releases.d"), *main, *dropin, *want;
        const unsigned copies = 10000;
        size_t len = 0, size = 40 * copies + 64;
        char *text = malloc(size);
        Config *c;

        assert_non_null(text);
        assert_int_equal(mkdir(rd, 0755), 0);
        len += (size_t) snprintf(text + len, size - len, "releases = (\n");
        for (unsigned i = 0; i < copies; i++)
                len += (size_t) snprintf(text + len, size - len, "%s{ number = \"+34 910 000 001\"; }\n", i ? "," : "");
        snprintf(text + len, size - len, ");\n");
        main = write_in(dir, "retired.conf", text);
        free(text);
        /* Seven more phones declared twice, and the first once more. */
        dropin = write_in(rd, "10-again.conf",
                          "releases = (\n"
                          "{ number = \"+34910000002\"; }, { number = \"+34910000002\"; },\n"
                          "{ number = \"+34910000003\"; }, { number = \"+34910000003\"; },\n"
                          "{ number = \"+34910000004\"; }, { number = \"+34910000004\"; },\n"
                          "{ number = \"+34910000005\"; }, { number = \"+34910000005\"; },\n"
                          "{ number = \"+34910000006\"; }, { number = \"+34910000006\"; },\n"
                          "{ number = \"+34910000007\"; }, { number = \"+34910000007\"; },\n"
                          "{ number = \"+34910000008\"; }, { number = \"+34910000008\"; },\n"
                          "{ number = \"+34910000001\"; }\n"
                          ");\n");

        c = load_ok(main);
        assert_int_equal(c->n_decls, 8);
        assert_string_equal(loaded.v[0].key, "+34910000001");
        assert_int_equal(loaded.v[0].line, 2);
        assert_int_equal(c->warnings.n, 6);
        assert_true(asprintf(&want, "%1$s:2: +34910000001 is declared %2$u times, also at %1$s:3, %1$s:4 and %3$u "
                             "more places: one phone, one release", main, copies + 1, copies - 2) >= 0);
        assert_string_equal(c->warnings.lines[0], want);
        free(want);
        for (unsigned i = 0; i < 4; i++) {
                assert_true(asprintf(&want, "%1$s:%2$u: +3491000000%3$u is declared 2 times, also at %1$s:%2$u: "
                                     "one phone, one release", dropin, 2 + i, 2 + i) >= 0);
                assert_string_equal(c->warnings.lines[1 + i], want);
                free(want);
        }
        assert_string_equal(c->warnings.lines[5], "3 more phones are declared more than once, each one release");
        assert_int_equal(c->warnings.dropped, 0);
        config_free(c);
        free(main);
        free(dropin);
        free(rd);
        tmpdir_remove(dir);
}

static void test_loopback_base_urls(void **state) {
        static const struct { const char *file, *url; } t[] = {
                { CORPUS "/good/base-url-loopback-ipv4.conf", "http://127.0.0.1:8080" },
                { CORPUS "/good/base-url-loopback-ipv6.conf", "http://[::1]:8080" },
                { CORPUS "/good/base-url-localhost.conf",     "http://localhost:8080" },
                { CORPUS "/good/base-url-loopback-range.conf", "http://127.45.6.7:9000/api" },
        };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                Config *c = load_ok(t[i].file);
                assert_string_equal(c->base_url, t[i].url);
                config_free(c);
        }
}

static void test_ledger_and_socket_defaults_follow_systemd_folders(void **state) {
        Config *c;

        /* systemd may list several folders; the first one is ours. */
        setenv("STATE_DIRECTORY", "/var/lib/private/retired:/var/lib/other", 1);
        setenv("RUNTIME_DIRECTORY", "/run/retired-a:/run/retired-b", 1);
        c = load_ok(CORPUS "/good/minimal.conf");
        assert_string_equal(c->ledger, "/var/lib/private/retired/ledger.db");
        assert_string_equal(c->control_socket, "/run/retired-a/control");
        config_free(c);

        /* A relative value is not trusted. */
        setenv("STATE_DIRECTORY", "relative/dir", 1);
        setenv("RUNTIME_DIRECTORY", "relative/run", 1);
        c = load_ok(CORPUS "/good/minimal.conf");
        assert_string_equal(c->ledger, "/var/lib/retired/ledger.db");
        assert_string_equal(c->control_socket, "/run/retired/control");
        config_free(c);

        /* Explicit settings win over the environment. */
        setenv("STATE_DIRECTORY", "/var/lib/private/retired", 1);
        setenv("RUNTIME_DIRECTORY", "/run/retired-a", 1);
        c = load_ok(CORPUS "/good/every-key.conf");
        assert_string_equal(c->ledger, CORPUS "/good/state/ledger.db");
        assert_string_equal(c->control_socket, "/run/retired-test/control");
        config_free(c);
        unsetenv("STATE_DIRECTORY");
        unsetenv("RUNTIME_DIRECTORY");
}

/* ---- files that cannot be read ------------------------------------------ */

static void test_missing_file(void **state) {
        ConfDiag d = {};
        int r = load_fail(CORPUS "/does-not-exist.conf", &d);

        assert_int_equal(r, -ENOENT);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], CORPUS "/does-not-exist.conf: cannot open: No such file or directory");
        conf_diag_done(&d);
}

static void test_main_file_must_be_a_regular_file(void **state) {
        ConfDiag d = {};

        assert_int_equal(load_fail(CORPUS "/good", &d), -EINVAL);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], CORPUS "/good: not a regular file");
        conf_diag_done(&d);
}

static void test_explicit_releases_dir_must_exist(void **state) {
        char *dir = tmpdir_new(), *main, *want;
        ConfDiag d = {};
        int r;

        main = write_in(dir, "retired.conf", "releases_dir = \"nowhere.d\";\n");
        r = load_fail(main, &d);
        assert_int_equal(r, -ENOENT);
        assert_true(asprintf(&want, "%s/nowhere.d: cannot read folder: No such file or directory", dir) >= 0);
        assert_true(diag_has(&d, want));
        free(want);
        conf_diag_done(&d);
        free(main);
        tmpdir_remove(dir);
}

/* ---- drop-ins ----------------------------------------------------------- */

static void test_releases_dir_must_be_a_folder(void **state) {
        char *dir = tmpdir_new(), *main, *want;
        ConfDiag d = {};

        main = write_in(dir, "retired.conf", "releases_dir = \"retired.conf\";\n");
        assert_int_equal(load_fail(main, &d), -ENOTDIR);
        assert_true(asprintf(&want, "%s: cannot read folder: Not a directory", main) >= 0);
        if (!diag_has(&d, want))
                print_diag(&d);
        assert_true(diag_has(&d, want));
        free(want);
        conf_diag_done(&d);
        free(main);
        tmpdir_remove(dir);
}

/* A drop-in that cannot be looked at is an error that names it, not a file
 * skipped: its releases would be cancelled as no longer declared. */
static void test_a_dropin_that_cannot_be_looked_at_is_named(void **state) {
        char *dir = tmpdir_new(), *rd = path_join(dir, "releases.d"), *main, *loop, *want;
        ConfDiag d = {};

        assert_int_equal(mkdir(rd, 0755), 0);
        main = write_in(dir, "retired.conf", "");
        free(write_in(rd, "a.conf", "releases = ( { number = \"+34 910 000 001\"; } );\n"));
        loop = path_join(rd, "b.conf");
        assert_int_equal(symlink("b.conf", loop), 0);

        assert_int_equal(load_fail(main, &d), -ELOOP);
        assert_true(asprintf(&want, "%s: cannot stat: %s", loop, strerror(ELOOP)) >= 0);
        if (!diag_has(&d, want))
                print_diag(&d);
        assert_true(diag_has(&d, want));
        free(want);
        conf_diag_done(&d);
        free(loop);
        free(main);
        free(rd);
        tmpdir_remove(dir);
}

static void test_dropins_order_and_selection(void **state) {
        char *dir = tmpdir_new(), *rd = path_join(dir, "releases.d"), *main, *p, *sub;
        static const struct { const char *name, *number; } read[] = {
                /* Byte order, whatever the locale: digits, then upper, then lower case. */
                { "10-x.conf", "+34910000010" },
                { "9-x.conf",  "+34910000009" },
                { "B.conf",    "+34910000002" },
                { "a.conf",    "+34910000001" },
        };
        static const char *const ignored[] = {
                ".hidden.conf", "notes.txt", "c.conf~", "d.conf.disabled", "conf", ".conf",
        };
        Config *c;

        assert_int_equal(mkdir(rd, 0755), 0);
        main = write_in(dir, "retired.conf", "releases = ( { number = \"+34 910 000 000\"; } );\n");
        /* Written out of order, so that creation order proves nothing. */
        for (size_t i = ELEMENTSOF(read); i-- > 0;) {
                char text[128];
                snprintf(text, sizeof text, "releases = ( { number = \"%s\"; } );\n", read[i].number);
                free(write_in(rd, read[i].name, text));
        }
        /* Anything else in the folder would fail the load if it were read. */
        for (size_t i = 0; i < ELEMENTSOF(ignored); i++)
                free(write_in(rd, ignored[i], "this is not ( a config\n"));
        sub = path_join(rd, "e.conf");
        assert_int_equal(mkdir(sub, 0755), 0);
        free(write_in(sub, "inner.conf", "this is not ( a config\n"));

        c = load_ok(main);
        assert_int_equal(c->n_decls, 1 + ELEMENTSOF(read));
        assert_string_equal(loaded.v[0].number, "+34910000000");
        assert_string_equal(loaded.v[0].file, main);
        assert_int_equal(c->n_files, 1 + ELEMENTSOF(read));
        for (size_t i = 0; i < ELEMENTSOF(read); i++) {
                p = path_join(rd, read[i].name);
                assert_string_equal(loaded.v[1 + i].number, read[i].number);
                assert_string_equal(loaded.v[1 + i].file, p);
                assert_string_equal(c->files[1 + i], p);
                free(p);
        }
        config_free(c);
        free(sub);
        free(main);
        free(rd);
        tmpdir_remove(dir);
}

static void test_dropin_merges_with_main_file(void **state) {
        char *dir = tmpdir_new(), *rd = path_join(dir, "releases.d"), *main;
        Config *c;

        assert_int_equal(mkdir(rd, 0755), 0);
        main = write_in(dir, "retired.conf",
                        "releases = (\n"
                        "  { number = \"+34 910 000 001\"; reason = \"OPS-1\"; }\n"
                        ");\n");
        free(write_in(rd, "shop.conf",
                      "releases = ( { number = \"+34910000001\"; id = \"" UUID_A "\"; } );\n"));

        c = load_ok(main);
        assert_int_equal(c->n_decls, 1);
        assert_string_equal(loaded.v[0].key, UUID_A);
        assert_string_equal(loaded.v[0].number, "+34910000001");
        assert_string_equal(loaded.v[0].reason, "OPS-1");
        assert_string_equal(loaded.v[0].file, main);
        assert_int_equal(loaded.v[0].line, 2);
        config_free(c);
        free(main);
        free(rd);
        tmpdir_remove(dir);
}

/* ---- limits ------------------------------------------------------------- */

static void test_too_many_releases(void **state) {
        char *dir = tmpdir_new(), *rd = path_join(dir, "releases.d"), *main, *want, *line;
        const unsigned per_file = 10000, files = CONF_MAX_RELEASES / per_file + 1;
        size_t len = 0, size = 16 * per_file + 64;
        ConfDiag d = {};

        /* The limit is over all files: a hundred drop-ins of ten thousand
         * entries each is the limit, one more entry in one more file is over
         * it.  (Lists of moderate size also keep libconfig fast: it grows a
         * list a few elements at a time.)  The entry is the same every time,
         * as declarations are counted before duplicates are merged. */
        assert_int_equal(mkdir(rd, 0755), 0);
        main = write_in(dir, "retired.conf", "");
        line = malloc(size);
        assert_non_null(line);
        len += (size_t) snprintf(line + len, size - len, "releases = (");
        for (unsigned i = 0; i < per_file; i++)
                len += (size_t) snprintf(line + len, size - len, "%s{number=\"123\"}", i ? "," : "");
        snprintf(line + len, size - len, ");\n");
        for (unsigned i = 0; i < files; i++) {
                char name[32];
                snprintf(name, sizeof name, "%03u.conf", i);
                free(write_in(rd, name, i + 1 < files ? line : "releases = ( {number=\"123\"} );\n"));
        }
        free(line);

        assert_int_equal(load_fail(main, &d), -E2BIG);
        assert_true(asprintf(&want, "%s/%03u.conf:1: more than %u release declarations",
                             rd, files - 1, CONF_MAX_RELEASES) >= 0);
        if (!diag_has(&d, want))
                print_diag(&d);
        assert_true(diag_has(&d, want));
        free(want);
        conf_diag_done(&d);
        free(main);
        free(rd);
        tmpdir_remove(dir);
}

/* More drop-ins than CONF_MAX_DROPIN: refused before any is read, with the
 * folder named.  (On tmpfs when there is one: ten thousand files.) */
static void test_too_many_dropins(void **state) {
        char tmpl[] = "/dev/shm/retired-unit-XXXXXX", *dir, *rd, *main, *want;
        ConfDiag d = {};
        int dfd;

        dir = mkdtemp(tmpl) ? strdup(tmpl) : tmpdir_new();
        assert_non_null(dir);
        rd = path_join(dir, "releases.d");
        assert_int_equal(mkdir(rd, 0755), 0);
        main = write_in(dir, "retired.conf", "");
        dfd = open(rd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dfd >= 0);
        /* The first one would fail the load if it were read. */
        for (unsigned i = 0; i <= CONF_MAX_DROPIN; i++) {
                char name[32];
                int fd;

                snprintf(name, sizeof name, "%05u.conf", i);
                fd = openat(dfd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
                assert_true(fd >= 0);
                if (i == 0)
                        assert_int_equal(write(fd, "x", 1), 1);
                close(fd);
        }
        close(dfd);

        assert_int_equal(load_fail(main, &d), -E2BIG);
        assert_true(asprintf(&want, "%s: more than %u files", rd, CONF_MAX_DROPIN) >= 0);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], want);
        free(want);
        conf_diag_done(&d);
        free(main);
        free(rd);
        tmpdir_remove(dir);
}

static void test_reason_length_limit(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "retired.conf"), *text, *want;
        char reason[CONF_MAX_REASON + 2];
        ConfDiag d = {};
        Config *c;

        /* Exactly the limit is fine... */
        memset(reason, 'r', CONF_MAX_REASON);
        reason[CONF_MAX_REASON] = 0;
        assert_true(asprintf(&text, "releases = (\n  { number = \"112\"; reason = \"%s\"; }\n);\n", reason) >= 0);
        write_file(path, text);
        free(text);
        c = load_ok(path);
        assert_int_equal(strlen(loaded.v[0].reason), CONF_MAX_REASON);
        config_free(c);

        /* ...one more character is not. */
        strcat(reason, "r");
        assert_true(asprintf(&text, "releases = (\n  { number = \"112\";\n    reason = \"%s\"; }\n);\n", reason) >= 0);
        write_file(path, text);
        free(text);
        assert_int_equal(load_fail(path, &d), -EINVAL);
        assert_true(asprintf(&want, "%s:3: reason: longer than %u characters", path, CONF_MAX_REASON) >= 0);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], want);
        free(want);
        conf_diag_done(&d);
        free(path);
        tmpdir_remove(dir);
}

static void test_file_size_limit(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "retired.conf"), *want;
        ConfDiag d = {};
        int fd;

        /* A sparse file: big on paper, nothing on disk. */
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) CONF_MAX_FILE_SIZE + 1), 0);
        close(fd);

        assert_int_equal(load_fail(path, &d), -EFBIG);
        assert_true(asprintf(&want, "%s: larger than 8 MiB: spread its releases over files in releases_dir",
                             path) >= 0);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], want);
        free(want);
        conf_diag_done(&d);
        free(path);
        tmpdir_remove(dir);
}

static void test_diagnostics_are_capped(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "retired.conf"), *want;
        size_t len = 0;
        char text[4096];
        ConfDiag d = {};

        /* Sixty unknown settings, one per line. */
        for (unsigned i = 1; i <= 60; i++)
                len += (size_t) snprintf(text + len, sizeof text - len, "bogus%u = 1;\n", i);
        write_file(path, text);

        assert_int_equal(load_fail(path, &d), -EINVAL);
        assert_int_equal(d.n, CONF_MAX_DIAG);
        assert_int_equal(d.dropped, 60 - CONF_MAX_DIAG);
        /* The ones kept are the first ones, in file order. */
        assert_true(asprintf(&want, "%s:1: unknown setting 'bogus1'", path) >= 0);
        assert_string_equal(d.lines[0], want);
        free(want);
        assert_true(asprintf(&want, "%s:50: unknown setting 'bogus50'", path) >= 0);
        assert_string_equal(d.lines[49], want);
        free(want);
        conf_diag_done(&d);
        free(path);
        tmpdir_remove(dir);
}

/* ---- NUL in a string ---------------------------------------------------- */

/* The bad corpus (nul-*.conf, bad-nul-dropin/) holds the refusals; this is
 * the text that looks like them and is not one, read as written. */
static void test_escaped_backslash_before_x00_is_text(void **state) {
        Config *c = load_ok(CORPUS "/good/nul-escaped-backslash.conf");

        assert_int_equal(c->n_decls, 4);
        assert_string_equal(loaded.v[0].reason, "OPS-1 \\x00 is four characters");
        assert_string_equal(loaded.v[1].reason, "C:\\");
        assert_string_equal(loaded.v[2].reason, "\\\\x00 \\X00");
        assert_string_equal(loaded.v[3].reason, "A00 \\x0 \\xg");
        config_free(c);
}

/* ---- settings only ------------------------------------------------------ */

/* What the ledger's views load: the settings are checked as strictly, but
 * for api.base_url (libcurl's to check, which they must not load), the
 * declarations not at all (a broken one must not hide the record). */
static void test_settings_only(void **state) {
        char *dir = tmpdir_new(), *path = path_join(dir, "retired.conf"), *want;
        ConfDiag d = {};
        Config *c = NULL;

        write_file(path, "ledger = \"state/ledger.db\";\nreleases = ( { id = \"not-a-uuid\"; } );\n");
        assert_int_equal(config_load_settings(path, &c, &d), 0);
        assert_int_equal(d.n, 0);
        assert_non_null(c);
        assert_int_equal(c->n_decls, 0);
        assert_true(asprintf(&want, "%s/state/ledger.db", dir) >= 0);
        assert_string_equal(c->ledger, want);
        free(want);
        c = config_free(c);

        write_file(path, "releases = ( { number = \"112\"; } );\npace: {\n  rate = 0.0;\n};\n");
        assert_int_equal(config_load_settings(path, &c, &d), -EINVAL);
        assert_null(c);
        assert_true(asprintf(&want, "%s:3: pace.rate: 0 is out of range (0.001 to 10000)", path) >= 0);
        assert_int_equal(d.n, 1);
        assert_string_equal(d.lines[0], want);
        free(want);
        conf_diag_done(&d);

        /* Kept unchecked; the whole load, the daemon's and check's, refuses it. */
        write_file(path, "api: {\n  base_url = \"http://example.com/\";\n};\n");
        assert_int_equal(config_load_settings(path, &c, &d), 0);
        assert_int_equal(d.n, 0);
        assert_string_equal(c->base_url, "http://example.com");
        c = config_free(c);
        assert_int_equal(config_load(path, NULL, &c, &d), -EINVAL);
        assert_null(c);
        assert_int_equal(d.n, 1);
        assert_non_null(strstr(d.lines[0], ":2: api.base_url: \"http://example.com/\": only https://"));
        conf_diag_done(&d);
        free(path);
        tmpdir_remove(dir);
}

/* ---- the key file ------------------------------------------------------- */

/* retirectl check and retired -n warn when api.token_file names a key the
 * shipped unit (a dynamic user) could not read; no key file, no warning. */
static void test_token_file_warning(void **state) {
        char *dir = tmpdir_new(), *key = write_in(dir, "api-token", "secret\n"), *missing = path_join(dir, "nope");
        char *w = NULL, *want;
        Config *c;

        assert_int_equal(config_defaults("/etc/retired/retired.conf", &c), 0);
        assert_int_equal(config_token_file_warning(c, &w), 0);
        assert_null(w);

        free(c->token_file);
        c->token_file = strdup(missing);
        assert_int_equal(config_token_file_warning(c, &w), 0);
        assert_true(asprintf(&want, "api.token_file %s: No such file or directory", missing) >= 0);
        assert_string_equal(w, want);
        free(want);
        w = mfree(w);

        free(c->token_file);
        c->token_file = strdup(key);
        assert_int_equal(config_token_file_warning(c, &w), 0);
        if (geteuid() == 0) {
                /* Root's own file: the dynamic user could not read it. */
                assert_true(asprintf(&want, "api.token_file %s is root's own: the shipped unit runs as a "
                                     "dynamic user that cannot read it; leave token_file empty and let "
                                     "LoadCredential= hand the unit the key", key) >= 0);
                assert_string_equal(w, want);
                free(want);
        } else
                assert_null(w);
        free(w);
        config_free(c);
        free(missing);
        free(key);
        tmpdir_remove(dir);
}

/* What an operator who is not root is told, for a key file and a CA bundle
 * only root may read.  As root (as here, and in the package build) it runs
 * in a child whose real and effective uid are nobody's; the child only
 * reports, through a pipe, and the checks are made here. */
#define NOBODY 65534

#ifdef COVERAGE
/* The child leaves by _exit(), which writes no coverage counts: it writes
 * them as root again (its saved uid), the owner of the count files. */
void __gcov_dump(void);
#define child_exit(code) ((void) seteuid(0), __gcov_dump(), _exit(code))
#else
#define child_exit(code) _exit(code)
#endif

typedef struct Unreadable {
        const char *key, *conf;
} Unreadable;

static void report_unreadable(const Unreadable *u, FILE *out) {
        ConfDiag d = {};
        Config *c = NULL;
        char *w = NULL;
        int r;

        r = config_defaults("/etc/retired/retired.conf", &c);
        if (r >= 0) {
                free(c->token_file);
                c->token_file = strdup(u->key);
                r = config_token_file_warning(c, &w);
                fprintf(out, "%d %u %s\n", r, (unsigned) geteuid(), strna(w));
                free(w);
                c = config_free(c);
        }
        r = config_load_settings(u->conf, &c, &d);
        fprintf(out, "%d %s\n", r, d.n > 0 ? d.lines[0] : "(none)");
        conf_diag_done(&d);
        config_free(c);
}

static void test_what_a_user_who_cannot_read_is_told(void **state) {
        char *dir = tmpdir_new(), *key = write_in(dir, "api-token", "secret\n");
        char *ca = write_in(dir, "ca.pem", "-----BEGIN CERTIFICATE-----\n"), *text, *conf, *out = NULL, *want;
        bool root = geteuid() == 0;
        size_t size = 0;
        int pipefd[2], status;
        unsigned uid;
        FILE *f;
        pid_t pid;

        assert_true(asprintf(&text, "api: { ca_file = \"%s\"; };\n", ca) >= 0);
        conf = write_in(dir, "retired.conf", text);
        free(text);
        /* The folder and the config are everyone's; the key and the bundle
         * root's alone (or, not as root, no one's). */
        assert_int_equal(chmod(dir, 0755), 0);
        assert_int_equal(chmod(key, root ? 0600 : 0), 0);
        assert_int_equal(chmod(ca, root ? 0600 : 0), 0);

        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                FILE *o = fdopen(pipefd[1], "w");

                if (!o)
                        _exit(2);
                if (root && (setgroups(0, NULL) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 ||
                             setresuid(NOBODY, NOBODY, 0) < 0))
                        _exit(77);
                report_unreadable(&(Unreadable) { .key = key, .conf = conf }, o);
                child_exit(fclose(o) == 0 ? 0 : 2);
        }
        close(pipefd[1]);
        f = open_memstream(&out, &size);
        assert_non_null(f);
        for (;;) {
                char buf[512];
                ssize_t n = read(pipefd[0], buf, sizeof buf);

                assert_true(n >= 0);
                if (n == 0)
                        break;
                fwrite(buf, 1, (size_t) n, f);
        }
        assert_int_equal(fclose(f), 0);
        close(pipefd[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77) {
                print_message("  cannot become uid %u here\n", NOBODY);
                skip();
        }
        assert_int_equal(WEXITSTATUS(status), 0);

        uid = root ? NOBODY : (unsigned) geteuid();
        assert_true(asprintf(&want, "0 %u api.token_file %s cannot be read by uid %u\n"
                             "-22 %s:1: api.ca_file: \"%s\": not a readable file\n", uid, key, uid, conf, ca) >= 0);
        assert_string_equal(out, want);
        free(want);
        free(out);
        free(conf);
        free(ca);
        free(key);
        tmpdir_remove(dir);
}

/* ---- the ledger behind the sink ----------------------------------------- */

static int open_refused(void *userdata, const Config *c, Ledger **ret) {
        return -EPROTO;
}

/* A ledger that cannot be opened (here: newer than this retired) stops the
 * load with its error, and nothing is handed out. */
static void test_a_ledger_that_cannot_be_opened_stops_the_load(void **state) {
        DeclLoad dl = { .open = open_refused };
        DeclSink sink = decl_load_sink(&dl);
        ConfDiag d = {};
        Config *c = NULL;

        assert_int_equal(config_load(CORPUS "/good/numbers.conf", &sink, &c, &d), -EPROTO);
        assert_null(c);
        assert_null(dl.ledger);
        decl_load_done(&dl);
        conf_diag_done(&d);
}

/* ---- the test list ------------------------------------------------------ */

typedef struct Tests {
        struct CMUnitTest *v;
        size_t n;
        char **owned;   /* names and paths to free */
        size_t n_owned;
        size_t n_good, n_bad;
} Tests;

static void tests_add(Tests *t, struct CMUnitTest test) {
        t->v = reallocarray(t->v, t->n + 1, sizeof(*t->v));
        if (!t->v)
                abort();
        t->v[t->n++] = test;
}

static char *owned(Tests *t, char *s) {
        t->owned = reallocarray(t->owned, t->n_owned + 1, sizeof(char *));
        if (!s || !t->owned)
                abort();
        return t->owned[t->n_owned++] = s;
}

static void add_corpus_file(Tests *t, const char *path, bool good) {
        char *p = owned(t, strdup(path)), *name;

        if (asprintf(&name, "%s %s", good ? "good" : "bad", p) < 0)
                abort();
        tests_add(t, (struct CMUnitTest) {
                .name = owned(t, name),
                .test_func = good ? test_good_file : test_bad_file,
                .initial_state = p,
        });
        if (good)
                t->n_good++;
        else
                t->n_bad++;
}

static int has_conf_suffix(const struct dirent *de) {
        size_t n = strlen(de->d_name);
        return de->d_name[0] != '.' && n > 5 && streq(de->d_name + n - 5, ".conf");
}

static int is_case_folder(const struct dirent *de) {
        return strncmp(de->d_name, "good-", 5) == 0 || strncmp(de->d_name, "bad-", 4) == 0;
}

/* tests/conf/{good,bad}/ *.conf and tests/conf/{good,bad}-NAME/retired.conf,
 * each in byte order. */
static void add_corpus(Tests *t) {
        static const char *const kinds[] = { "good", "bad" };
        struct dirent **list;
        char path[4096];
        int n;

        for (size_t k = 0; k < ELEMENTSOF(kinds); k++) {
                snprintf(path, sizeof path, CORPUS "/%s", kinds[k]);
                n = scandir(path, &list, has_conf_suffix, alphasort);
                for (int i = 0; i < n; i++) {
                        snprintf(path, sizeof path, CORPUS "/%s/%s", kinds[k], list[i]->d_name);
                        add_corpus_file(t, path, k == 0);
                        free(list[i]);
                }
                if (n >= 0)
                        free(list);
        }
        n = scandir(CORPUS, &list, is_case_folder, alphasort);
        for (int i = 0; i < n; i++) {
                snprintf(path, sizeof path, CORPUS "/%s/retired.conf", list[i]->d_name);
                add_corpus_file(t, path, list[i]->d_name[0] == 'g');
                free(list[i]);
        }
        if (n >= 0)
                free(list);
}

static size_t corpus_good, corpus_bad;

/* Guards against a corpus that silently went missing (wrong working folder). */
static void test_corpus_is_there(void **state) {
        assert_true(corpus_good >= 10);
        assert_true(corpus_bad >= 30);
}

int main(void) {
        const struct CMUnitTest fixed[] = {
                cmocka_unit_test(test_corpus_is_there),
                cmocka_unit_test(test_minimal_gets_every_default),
                cmocka_unit_test(test_every_key_is_read),
                cmocka_unit_test(test_empty_paths_are_the_defaults),
                cmocka_unit_test(test_numbers_are_normalised),
                cmocka_unit_test(test_sip_identifiers_are_kept_as_written),
                cmocka_unit_test(test_ids_become_the_key),
                cmocka_unit_test(test_ids_in_any_case),
                cmocka_unit_test(test_not_before_forms),
                cmocka_unit_test(test_duplicates_are_merged),
                cmocka_unit_test(test_copies_are_counted_and_said_once),
                cmocka_unit_test(test_loopback_base_urls),
                cmocka_unit_test(test_ledger_and_socket_defaults_follow_systemd_folders),
                cmocka_unit_test(test_missing_file),
                cmocka_unit_test(test_main_file_must_be_a_regular_file),
                cmocka_unit_test(test_explicit_releases_dir_must_exist),
                cmocka_unit_test(test_releases_dir_must_be_a_folder),
                cmocka_unit_test(test_a_dropin_that_cannot_be_looked_at_is_named),
                cmocka_unit_test(test_dropins_order_and_selection),
                cmocka_unit_test(test_dropin_merges_with_main_file),
                cmocka_unit_test(test_too_many_releases),
                cmocka_unit_test(test_too_many_dropins),
                cmocka_unit_test(test_reason_length_limit),
                cmocka_unit_test(test_file_size_limit),
                cmocka_unit_test(test_diagnostics_are_capped),
                cmocka_unit_test(test_escaped_backslash_before_x00_is_text),
                cmocka_unit_test(test_settings_only),
                cmocka_unit_test(test_token_file_warning),
                cmocka_unit_test(test_what_a_user_who_cannot_read_is_told),
                cmocka_unit_test(test_a_ledger_that_cannot_be_opened_stops_the_load),
        };
        Tests t = {};
        int r;

        for (size_t i = 0; i < ELEMENTSOF(fixed); i++)
                tests_add(&t, fixed[i]);
        add_corpus(&t);
        corpus_good = t.n_good;
        corpus_bad = t.n_bad;

        r = _cmocka_run_group_tests("test-conf", t.v, t.n, NULL, NULL);

        for (size_t i = 0; i < t.n_owned; i++)
                free(t.owned[i]);
        free(t.owned);
        free(t.v);
        return r;
}
