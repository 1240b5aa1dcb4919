/* SPDX-License-Identifier: MIT */
/* daemon/log.c as an operator reads it.  Under systemd stderr is a stream
 * into the journal, named by $JOURNAL_STREAM ("dev:ino" of that stream), and
 * each entry must then be a native journal entry whose fields
 * `journalctl -o verbose` shows and `journalctl FIELD=value` matches; anywhere
 * else, and when the journal refuses an entry, it is one line on stderr.
 *
 * The journal itself is not under test: this binary is linked with
 * -Wl,--wrap=sd_journal_sendv_with_location (see the Makefile), so the fields
 * log.c hands to the journal land in `sent` below, and a test can make the
 * send fail.
 * stderr is a memfd (or a pseudo-terminal, for the progress bar) for the span
 * of the calls under test, and told to log_setup() the way systemd tells it. */

#include "unit.h"

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>

#include "log.h"
#include "macro.h"

/* ---- the journal, as log.c sees it ---------------------------------------- */

#define MAX_FIELDS 16

static struct {
        unsigned calls;            /* entries sent, failed ones included */
        char *field[MAX_FIELDS];   /* the last entry's "NAME=value" fields */
        size_t n;
        int result;                /* what the send returns: 0, or -errno */
} sent;

static void sent_clear(void) {
        for (size_t i = 0; i < sent.n; i++)
                sent.field[i] = mfree(sent.field[i]);
        sent.n = 0;
}

/* <systemd/sd-journal.h> makes sd_journal_sendv() this call, adding where in
 * the source it was made (CODE_FILE, CODE_LINE, CODE_FUNC). */
int __wrap_sd_journal_sendv_with_location(const char *file, const char *line, const char *func,
                                          const struct iovec *iov, int n);
int __wrap_sd_journal_sendv_with_location(const char *file, const char *line, const char *func,
                                          const struct iovec *iov, int n) {
        sent_clear();
        sent.calls++;
        for (int i = 0; i < n && i < MAX_FIELDS; i++) {
                sent.field[i] = strndup(iov[i].iov_base, iov[i].iov_len);
                assert_non_null(sent.field[i]);
                /* A NUL inside would be cut here and not there. */
                assert_int_equal(strlen(sent.field[i]), iov[i].iov_len);
        }
        sent.n = (size_t) n;
        return sent.result;
}

/* The value of NAME in the last entry, or NULL; a field given twice fails. */
static const char *field(const char *name) {
        size_t len = strlen(name);
        const char *found = NULL;

        for (size_t i = 0; i < sent.n; i++)
                if (strncmp(sent.field[i], name, len) == 0 && sent.field[i][len] == '=') {
                        assert_null(found);
                        found = sent.field[i] + len + 1;
                }
        return found;
}

/* journald drops a field whose name is not [A-Z0-9_], starts with '_' (those
 * are its own) or a digit, or is longer than 64. */
static void assert_field_names_valid(void) {
        for (size_t i = 0; i < sent.n; i++) {
                const char *eq = strchr(sent.field[i], '=');

                assert_non_null(eq);
                assert_true(eq > sent.field[i] && eq - sent.field[i] <= 64);
                assert_true(sent.field[i][0] != '_' && !(sent.field[i][0] >= '0' && sent.field[i][0] <= '9'));
                for (const char *p = sent.field[i]; p < eq; p++)
                        assert_true((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_');
        }
}

/* ---- stderr ------------------------------------------------------------------ */

static int saved_stderr = -1;

/* A fresh memfd, to stand for stderr. */
static int new_stream(void) {
        int fd = memfd_create("stderr", MFD_CLOEXEC);

        assert_true(fd >= 0);
        return fd;
}

/* What systemd puts in the environment for a service whose stderr is `fd`. */
static void set_journal_stream(int fd) {
        struct stat st;
        char value[64];

        assert_int_equal(fstat(fd, &st), 0);
        snprintf(value, sizeof value, "%" PRIu64 ":%" PRIu64, (uint64_t) st.st_dev, (uint64_t) st.st_ino);
        assert_int_equal(setenv("JOURNAL_STREAM", value, 1), 0);
}

/* $JOURNAL_STREAM names a stream, but not stderr: stderr redirected by a
 * shell in the unit, say.  (log_setup() leaves the journal alone when the
 * variable is missing or unreadable, so this is how a test forgets it.) */
static void not_the_journal(void) {
        _cleanup_close_ int other = new_stream();

        set_journal_stream(other);
}

/* stderr becomes `fd` until stderr_back(); no assertion in between, or
 * cmocka would write its report into it. */
static void stderr_to(int fd) {
        (void) fflush(stderr);
        saved_stderr = dup(STDERR_FILENO);
        assert_true(saved_stderr >= 0);
        assert_true(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
}

static void stderr_back(void) {
        (void) fflush(stderr);
        assert_true(dup2(saved_stderr, STDERR_FILENO) == STDERR_FILENO);
        (void) close(saved_stderr);
        saved_stderr = -1;
}

/* Everything written to the memfd, to be freed. */
static char *stream_text(int fd) {
        struct stat st;
        char *buf;

        assert_int_equal(fstat(fd, &st), 0);
        buf = calloc(1, (size_t) st.st_size + 1);
        assert_non_null(buf);
        assert_int_equal(pread(fd, buf, (size_t) st.st_size, 0), st.st_size);
        return buf;
}

/* A stream that is the journal's (journal) or just a file whose name systemd
 * gave for another stream: stderr redirected by a shell in the unit, say. */
typedef enum { PLAIN, JOURNAL } Where;

static int setup_stream(Where where) {
        int fd = new_stream();

        if (where == JOURNAL)
                set_journal_stream(fd);
        else
                not_the_journal();
        stderr_to(fd);
        log_setup("retired");
        return fd;
}

static int setup(void **state) {
        sent_clear();
        sent.calls = 0;
        sent.result = 0;
        (void) unsetenv("RETIRED_LOG_LEVEL");
        log_set_max_level(LOG_INFO);
        return 0;
}

static int teardown(void **state) {
        if (saved_stderr >= 0)
                stderr_back();
        sent_clear();
        /* log_setup() buffers stderr; cmocka's reports come in their place unbuffered. */
        (void) setvbuf(stderr, NULL, _IONBF, 0);
        return 0;
}

static const char *const MID = "699ac9948fe444e7bef90aa8b1ec7f29";
static const char *const UUID = "3c90c3cc-0d44-4b50-8888-8dd25736052a";

/* ---- the journal's half -------------------------------------------------------- */

static void test_an_outcome_is_one_entry_with_every_field(void **state) {
        _cleanup_close_ int fd = setup_stream(JOURNAL);
        _cleanup_free_ char *text = NULL;

        log_event(LOG_WARNING, MID,
                  &(LogFields) { .phone_id = UUID, .phone_number = "+34910123456", .outcome = "failed",
                                 .http_status = 503, .attempt = 3 },
                  "+34910123456: DELETE failed (%s), attempt %u.", "Service Unavailable", 3u);
        stderr_back();
        text = stream_text(fd);

        assert_int_equal(sent.calls, 1);
        assert_string_equal(text, "");   /* in the journal, and not a second time as a line */
        assert_field_names_valid();
        assert_string_equal(field("MESSAGE"), "+34910123456: DELETE failed (Service Unavailable), attempt 3.");
        assert_string_equal(field("PRIORITY"), "4");
        assert_string_equal(field("SYSLOG_IDENTIFIER"), "retired");
        assert_string_equal(field("MESSAGE_ID"), MID);
        assert_string_equal(field("PHONE_ID"), UUID);
        assert_string_equal(field("PHONE_NUMBER"), "+34910123456");
        assert_string_equal(field("OUTCOME"), "failed");
        assert_string_equal(field("HTTP_STATUS"), "503");
        assert_string_equal(field("ATTEMPT"), "3");
        assert_int_equal(sent.n, 9);
}

/* `journalctl HTTP_STATUS=0` or `ATTEMPT=0` must not match an entry that had
 * no call: a field not set is not sent. */
static void test_fields_not_set_are_not_sent(void **state) {
        _cleanup_close_ int fd = setup_stream(JOURNAL);

        log_info("Started.");
        stderr_back();
        assert_int_equal(sent.calls, 1);
        assert_int_equal(sent.n, 3);
        assert_string_equal(field("MESSAGE"), "Started.");
        assert_string_equal(field("PRIORITY"), "6");
        assert_string_equal(field("SYSLOG_IDENTIFIER"), "retired");

        stderr_to(fd);
        log_event(LOG_NOTICE, NULL, &(LogFields) { .phone_number = "+34910123456", .http_status = -1 }, "held");
        stderr_back();
        assert_int_equal(sent.calls, 2);
        assert_field_names_valid();
        assert_string_equal(field("PRIORITY"), "5");
        assert_string_equal(field("PHONE_NUMBER"), "+34910123456");
        assert_null(field("MESSAGE_ID"));
        assert_null(field("PHONE_ID"));
        assert_null(field("OUTCOME"));
        assert_null(field("HTTP_STATUS"));
        assert_null(field("ATTEMPT"));
        assert_int_equal(sent.n, 4);

        /* The daemon's own events: a MESSAGE_ID and no phone. */
        stderr_to(fd);
        log_event(LOG_CRIT, MID, NULL, "approval needed");
        stderr_back();
        assert_string_equal(field("PRIORITY"), "2");
        assert_string_equal(field("MESSAGE_ID"), MID);
        assert_int_equal(sent.n, 4);

        stderr_to(fd);
        log_event(LOG_INFO, NULL, &(LogFields) { .phone_id = UUID, .outcome = "released", .http_status = 204 }, "gone");
        stderr_back();
        assert_string_equal(field("PHONE_ID"), UUID);
        assert_string_equal(field("OUTCOME"), "released");
        assert_string_equal(field("HTTP_STATUS"), "204");
        assert_null(field("PHONE_NUMBER"));
        assert_null(field("ATTEMPT"));
        assert_int_equal(sent.n, 6);

        stderr_to(fd);
        log_event(LOG_INFO, NULL, &(LogFields) { .attempt = 1 }, "first try");
        stderr_back();
        assert_string_equal(field("ATTEMPT"), "1");
        assert_null(field("HTTP_STATUS"));
        assert_int_equal(sent.n, 4);
}

/* The journal keeps bytes as they are (journalctl shows a newline as one);
 * escaping is for the line form, where a newline would start a false entry. */
static void test_the_journal_gets_the_text_as_it_is(void **state) {
        _cleanup_close_ int fd = setup_stream(JOURNAL);

        log_error("API said: %s", "bad\nthing\x1b[31m");
        stderr_back();
        assert_string_equal(field("MESSAGE"), "API said: bad\nthing\x1b[31m");
        assert_string_equal(field("PRIORITY"), "3");
}

/* %m in an _errno form says the error given, as a positive or negative
 * errno; the call returns it negative (for `return log_error_errno(r, ...)`)
 * and leaves errno as it was. */
static void test_errno_forms(void **state) {
        _cleanup_close_ int fd = setup_stream(JOURNAL);
        int r1, r2, e1, e2;

        errno = EBADF;
        r1 = log_error_errno(-EACCES, "Cannot open %s: %m", "/x");
        e1 = errno;
        r2 = log_warning_errno(ENOENT, "Cannot watch: %m");
        e2 = errno;
        stderr_back();
        assert_int_equal(r1, -EACCES);
        assert_int_equal(r2, -ENOENT);
        assert_int_equal(e1, EBADF);
        assert_int_equal(e2, EBADF);
        assert_int_equal(sent.calls, 2);
        assert_string_equal(field("MESSAGE"), "Cannot watch: No such file or directory");
        assert_string_equal(field("PRIORITY"), "4");
}

/* The journal socket gone or full: the entry is not lost but written as the
 * line, and each entry stays one line however its text is made. */
static void test_a_refused_entry_falls_back_to_one_escaped_line(void **state) {
        _cleanup_close_ int fd = setup_stream(JOURNAL);
        _cleanup_free_ char *text = NULL;

        sent.result = -EAGAIN;
        log_event(LOG_ERR, MID,
                  &(LogFields) { .phone_id = UUID, .phone_number = "+34\n910", .outcome = "failed",
                                 .http_status = 500, .attempt = 2 },
                  "DELETE failed: %s", "line one\nretired: forged\r\tend\x7f\x1b[2J ñ");
        log_info("second");
        stderr_back();
        text = stream_text(fd);

        assert_int_equal(sent.calls, 2);
        assert_string_equal(text,
                            "retired: DELETE failed: line one\\x0aretired: forged\\x0d\\x09end\\x7f\\x1b[2J ñ"
                            " PHONE_NUMBER=+34\\x0a910 PHONE_ID=3c90c3cc-0d44-4b50-8888-8dd25736052a"
                            " OUTCOME=failed HTTP_STATUS=500 ATTEMPT=2 MESSAGE_ID=699ac9948fe444e7bef90aa8b1ec7f29\n"
                            "retired: second\n");
}

/* Debug entries only with RETIRED_LOG_LEVEL=debug (exactly that word). */
static void test_debug_only_when_asked(void **state) {
        _cleanup_close_ int fd = -1;

        fd = setup_stream(JOURNAL);
        log_debug("not shown");
        stderr_back();
        assert_int_equal(sent.calls, 0);

        /* Anything else leaves the level alone. */
        assert_int_equal(setenv("RETIRED_LOG_LEVEL", "DEBUG", 1), 0);
        stderr_to(fd);
        log_setup("retired");
        log_debug("not shown either");
        log_event(LOG_DEBUG, MID, NULL, "nor this");
        stderr_back();
        assert_int_equal(sent.calls, 0);

        assert_int_equal(setenv("RETIRED_LOG_LEVEL", "debug", 1), 0);
        stderr_to(fd);
        log_setup("retired");
        log_debug("shown");
        stderr_back();
        assert_int_equal(sent.calls, 1);
        assert_string_equal(field("MESSAGE"), "shown");
        assert_string_equal(field("PRIORITY"), "7");
        stderr_to(fd);
        log_event(LOG_DEBUG, MID, NULL, "and this");
        stderr_back();
        assert_int_equal(sent.calls, 2);
        assert_string_equal(field("MESSAGE"), "and this");
}

/* Below the level nothing is written, and the _errno forms still return
 * their error. */
static void test_below_the_level_nothing_is_written(void **state) {
        _cleanup_close_ int fd = setup_stream(PLAIN);
        _cleanup_free_ char *text = NULL;
        int r;

        log_set_max_level(LOG_ERR);
        r = log_warning_errno(-EIO, "not shown: %m");
        log_event(LOG_NOTICE, MID, NULL, "not shown");
        log_crit("shown");
        stderr_back();
        text = stream_text(fd);
        assert_int_equal(r, -EIO);
        assert_string_equal(text, "retired: shown\n");
}

/* ---- a fresh process --------------------------------------------------------------- */

/* Runs `fn` in a child with stderr on a fresh memfd and returns what it wrote;
 * the child exits with the number of journal entries it sent. */
static char *in_child(void (*fn)(int fd), int *entries) {
        int fd = new_stream(), status;
        pid_t pid;
        char *text;

        (void) fflush(stdout);
        (void) fflush(stderr);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                fn(fd);
                (void) fflush(stderr);
                exit((int) sent.calls);   /* exit, not _exit: coverage counts are written at exit */
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        *entries = WEXITSTATUS(status);
        text = stream_text(fd);
        (void) close(fd);
        return text;
}

static void child_default_level(int fd) {
        (void) unsetenv("RETIRED_LOG_LEVEL");
        (void) unsetenv("JOURNAL_STREAM");
        (void) dup2(fd, STDERR_FILENO);
        log_setup("retired");
        log_debug("debug");
        log_info("info");
}

/* A process as systemd starts it: info and up, on stderr when it is not the
 * journal's stream. */
static void test_a_fresh_process_logs_info_and_up_as_lines(void **state) {
        _cleanup_free_ char *text = NULL;
        int entries;

        text = in_child(child_default_level, &entries);
        assert_int_equal(entries, 0);
        assert_string_equal(text, "retired: info\n");
}

static void child_stderr_closed_at_setup(int fd) {
        set_journal_stream(fd);
        (void) close(STDERR_FILENO);
        log_setup("retired");
        (void) dup2(fd, STDERR_FILENO);
        log_info("line");
}

/* $JOURNAL_STREAM without a stderr to compare it with is not the journal. */
static void test_no_stderr_at_setup_is_not_the_journal(void **state) {
        _cleanup_free_ char *text = NULL;
        int entries;

        text = in_child(child_stderr_closed_at_setup, &entries);
        assert_int_equal(entries, 0);
        assert_string_equal(text, "retired: line\n");
}

/* ---- which stream is the journal's ---------------------------------------------------- */

/* Only the very stream systemd named is the journal's: the same device with
 * another inode (a file beside it), or a value that is not "dev:ino", is not. */
static void test_only_the_named_stream_is_the_journal(void **state) {
        _cleanup_close_ int fd = new_stream();
        _cleanup_free_ char *text = NULL;
        struct stat st;
        char value[64];
        static const char *const bad[] = { "", "journal", "12", "12:", ":34", "x:y" };

        assert_int_equal(fstat(fd, &st), 0);
        snprintf(value, sizeof value, "%" PRIu64 ":%" PRIu64, (uint64_t) st.st_dev, (uint64_t) st.st_ino + 1);
        assert_int_equal(setenv("JOURNAL_STREAM", value, 1), 0);
        stderr_to(fd);
        log_setup("retired");
        log_info("same device, another inode");
        stderr_back();

        snprintf(value, sizeof value, "%" PRIu64 ":%" PRIu64, (uint64_t) st.st_dev + 1, (uint64_t) st.st_ino);
        assert_int_equal(setenv("JOURNAL_STREAM", value, 1), 0);
        stderr_to(fd);
        log_setup("retired");
        log_info("another device, same inode");
        stderr_back();

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(setenv("JOURNAL_STREAM", bad[i], 1), 0);
                stderr_to(fd);
                log_setup("retired");
                log_info("%s", bad[i]);
                stderr_back();
        }
        /* Not to be read as "not the journal" by mistake: the right one is. */
        set_journal_stream(fd);
        stderr_to(fd);
        log_setup("retired");
        log_info("to the journal");
        stderr_back();

        text = stream_text(fd);
        assert_int_equal(sent.calls, 1);
        assert_string_equal(field("MESSAGE"), "to the journal");
        assert_string_equal(text, "retired: same device, another inode\n"
                                  "retired: another device, same inode\n"
                                  "retired: \n" "retired: journal\n" "retired: 12\n"
                                  "retired: 12:\n" "retired: :34\n" "retired: x:y\n");
}

/* ---- the line's half -------------------------------------------------------------------- */

static void test_the_line_has_the_fields_after_the_text(void **state) {
        _cleanup_close_ int fd = setup_stream(PLAIN);
        _cleanup_free_ char *text = NULL;

        log_event(LOG_WARNING, MID,
                  &(LogFields) { .phone_id = UUID, .phone_number = "+34910123456", .outcome = "failed",
                                 .http_status = 503, .attempt = 3 },
                  "DELETE failed, attempt %u.", 3u);
        log_event(LOG_INFO, NULL, &(LogFields) { .phone_number = "+34910123457", .http_status = 0 }, "held");
        log_event(LOG_INFO, NULL, &(LogFields) { .phone_id = UUID, .outcome = "released", .http_status = 204 }, "gone");
        log_event(LOG_INFO, NULL, &(LogFields) { .attempt = 1 }, "first try");
        log_event(LOG_NOTICE, MID, NULL, "Releases paused.");
        log_notice("plain %d", 42);
        stderr_back();
        text = stream_text(fd);

        assert_int_equal(sent.calls, 0);
        assert_string_equal(text,
                            "retired: DELETE failed, attempt 3. PHONE_NUMBER=+34910123456"
                            " PHONE_ID=3c90c3cc-0d44-4b50-8888-8dd25736052a OUTCOME=failed HTTP_STATUS=503 ATTEMPT=3"
                            " MESSAGE_ID=699ac9948fe444e7bef90aa8b1ec7f29\n"
                            "retired: held PHONE_NUMBER=+34910123457\n"
                            "retired: gone PHONE_ID=3c90c3cc-0d44-4b50-8888-8dd25736052a OUTCOME=released HTTP_STATUS=204\n"
                            "retired: first try ATTEMPT=1\n"
                            "retired: Releases paused. MESSAGE_ID=699ac9948fe444e7bef90aa8b1ec7f29\n"
                            "retired: plain 42\n");
}

/* Text from the API or a config file cannot start a line of its own, nor
 * drive the terminal: every control character is written as \xNN.  Bytes of
 * UTF-8 stay. */
static void test_control_characters_are_escaped_in_the_line(void **state) {
        _cleanup_close_ int fd = setup_stream(PLAIN);
        _cleanup_free_ char *text = NULL;
        char all[33];

        for (int c = 1; c < 32; c++)
                all[c - 1] = (char) c;
        all[31] = 0x7f;
        all[32] = 0;
        log_error("%s|", all);
        log_event(LOG_ERR, NULL, &(LogFields) { .phone_number = "sip\n+34" }, "%s", "número ok\x1b]0;title\x07");
        stderr_back();
        text = stream_text(fd);

        assert_string_equal(text,
                            "retired: \\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\x09\\x0a\\x0b\\x0c\\x0d\\x0e\\x0f"
                            "\\x10\\x11\\x12\\x13\\x14\\x15\\x16\\x17\\x18\\x19\\x1a\\x1b\\x1c\\x1d\\x1e\\x1f\\x7f|\n"
                            "retired: número ok\\x1b]0;title\\x07 PHONE_NUMBER=sip\\x0a+34\n");
}

/* The line says which program wrote it. */
static void test_the_line_starts_with_the_name_given(void **state) {
        _cleanup_close_ int fd = new_stream();
        _cleanup_free_ char *text = NULL;

        not_the_journal();
        stderr_to(fd);
        log_setup("retired-test");
        log_info("hello");
        log_setup("retired");
        stderr_back();
        text = stream_text(fd);
        assert_string_equal(text, "retired-test: hello\n");
}

/* ---- the progress bar --------------------------------------------------------------------- */

typedef struct Pty {
        int master, slave;
} Pty;

/* A pseudo-terminal in raw mode (no \n to \r\n), or skips the test where
 * there is none (a build chroot). */
static Pty pty_open(void) {
        Pty p = { .master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC), .slave = -1 };
        struct termios t;
        const char *name;

        if (p.master < 0) {
                print_message("  no pseudo-terminal here (%s)\n", strerror(errno));
                skip();
        }
        assert_int_equal(grantpt(p.master), 0);
        assert_int_equal(unlockpt(p.master), 0);
        name = ptsname(p.master);
        assert_non_null(name);
        p.slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        assert_true(p.slave >= 0);
        assert_int_equal(tcgetattr(p.slave, &t), 0);
        cfmakeraw(&t);
        assert_int_equal(tcsetattr(p.slave, TCSANOW, &t), 0);
        return p;
}

static void pty_close(Pty *p) {
        (void) close(p->slave);
        (void) close(p->master);
}

/* What was written to the terminal since the last call: a marker byte goes in
 * behind it, and the master is read up to the marker (2 s at most). */
static char *pty_text(Pty *p) {
        char *buf = calloc(1, 4096);
        size_t n = 0;

        assert_non_null(buf);
        assert_int_equal(write(p->slave, "\x01", 1), 1);
        for (;;) {
                struct pollfd pfd = { .fd = p->master, .events = POLLIN };
                ssize_t k;

                assert_int_equal(poll(&pfd, 1, 2000), 1);
                k = read(p->master, buf + n, 4095 - n);
                assert_true(k > 0);
                n += (size_t) k;
                if (memchr(buf, '\x01', n))
                        break;
                assert_true(n < 4095);
        }
        assert_true(buf[n - 1] == '\x01');
        buf[n - 1] = 0;
        return buf;
}

#define CLEAR "\r\033[K"

/* On a terminal the bar stays under the log lines: a line clears it, is
 * written, and the bar is drawn again below. */
static void test_the_progress_bar_on_a_terminal(void **state) {
        _cleanup_free_ char *drawn = NULL, *line = NULL, *full = NULL, *gone = NULL, *after = NULL;
        Pty p = pty_open();
        bool possible;

        assert_int_equal(setenv("TERM", "xterm", 1), 0);
        not_the_journal();
        stderr_to(p.slave);
        log_setup("retired");
        possible = log_progress_possible();
        log_progress(5, 10, 2.0, 3.0);
        stderr_back();
        drawn = pty_text(&p);

        stderr_to(p.slave);
        log_info("a line");
        stderr_back();
        line = pty_text(&p);

        stderr_to(p.slave);
        log_progress(12, 10, 0.5, -1);    /* past the end, and no rate yet */
        log_progress(3, 10, 0.5, -1);
        stderr_back();
        full = pty_text(&p);

        stderr_to(p.slave);
        log_progress(0, 0, 0, 0);         /* done: the bar goes */
        stderr_back();
        gone = pty_text(&p);

        stderr_to(p.slave);
        log_info("after");
        log_progress(0, 0, 0, 0);         /* nothing to take away */
        stderr_back();
        after = pty_text(&p);

        pty_close(&p);
        assert_true(possible);
        assert_string_equal(drawn, CLEAR "[###############...............] 5/10 at 2.0/s, ETA 3 s");
        assert_string_equal(line, CLEAR "retired: a line\n" CLEAR "[###############...............] 5/10 at 2.0/s, ETA 3 s");
        assert_string_equal(full, CLEAR "[##############################] 12/10" CLEAR "[#########.....................] 3/10");
        assert_string_equal(gone, CLEAR);
        assert_string_equal(after, "retired: after\n");
}

/* Never into a file, the journal, or a terminal that cannot draw it. */
static void test_no_progress_bar_elsewhere(void **state) {
        _cleanup_free_ char *dumb = NULL, *noterm = NULL, *journal = NULL, *file = NULL;
        _cleanup_close_ int fd = new_stream();
        bool possible[4];
        Pty p = pty_open();

        not_the_journal();
        assert_int_equal(setenv("TERM", "dumb", 1), 0);
        stderr_to(p.slave);
        log_setup("retired");
        possible[0] = log_progress_possible();
        log_progress(1, 2, 1.0, 1.0);
        log_info("x");
        stderr_back();
        dumb = pty_text(&p);

        (void) unsetenv("TERM");
        stderr_to(p.slave);
        possible[1] = log_progress_possible();
        log_progress(1, 2, 1.0, 1.0);
        stderr_back();
        noterm = pty_text(&p);

        /* The terminal is the journal's stream (so it is not a terminal). */
        assert_int_equal(setenv("TERM", "xterm", 1), 0);
        set_journal_stream(p.slave);
        stderr_to(p.slave);
        log_setup("retired");
        possible[2] = log_progress_possible();
        log_progress(1, 2, 1.0, 1.0);
        stderr_back();
        journal = pty_text(&p);

        not_the_journal();
        stderr_to(fd);
        log_setup("retired");
        possible[3] = log_progress_possible();
        log_progress(1, 2, 1.0, 1.0);
        log_info("y");
        stderr_back();
        file = stream_text(fd);

        pty_close(&p);
        assert_false(possible[0]);
        assert_false(possible[1]);
        assert_false(possible[2]);
        assert_false(possible[3]);
        assert_string_equal(dumb, "retired: x\n");
        assert_string_equal(noterm, "");
        assert_string_equal(journal, "");
        assert_string_equal(file, "retired: y\n");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_an_outcome_is_one_entry_with_every_field, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fields_not_set_are_not_sent, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_journal_gets_the_text_as_it_is, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errno_forms, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_refused_entry_falls_back_to_one_escaped_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_debug_only_when_asked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_below_the_level_nothing_is_written, setup, teardown),
                cmocka_unit_test_setup_teardown(test_a_fresh_process_logs_info_and_up_as_lines, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_stderr_at_setup_is_not_the_journal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_only_the_named_stream_is_the_journal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_line_has_the_fields_after_the_text, setup, teardown),
                cmocka_unit_test_setup_teardown(test_control_characters_are_escaped_in_the_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_line_starts_with_the_name_given, setup, teardown),
                cmocka_unit_test_setup_teardown(test_the_progress_bar_on_a_terminal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_progress_bar_elsewhere, setup, teardown),
        };

        return cmocka_run_group_tests_name("test-log", tests, NULL, NULL);
}
