/* SPDX-License-Identifier: MIT */
#pragma once

/* conf/: settings and release declarations, read from retired.conf and
 * releases.d/NAME.conf with libconfig and validated before anything else sees
 * them.  A file either loads whole or is rejected whole with FILE:LINE
 * diagnostics; nothing is ever half-applied. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what a user controls. */
/* Bytes per file.  libconfig holds a file's whole tree while it reads it,
 * up to 20 times the file's size (a short entry a line), and that must fit
 * the shipped unit's MemoryMax=256M beside the rest: 8 MiB is 160 MiB at
 * worst; a larger set goes into drop-ins, read one at a time. */
#define CONF_MAX_FILE_SIZE   (8u << 20)
#define CONF_MAX_RELEASES    1000000u      /* declarations over all files */
#define CONF_MAX_DROPIN      10000u        /* files in releases_dir */
#define CONF_MAX_DIAG        50u           /* diagnostics kept per load */
#define CONF_MAX_NUMBER      64u           /* characters in a number */
#define CONF_MAX_SIP         256u          /* characters in a SIP identifier */
#define CONF_MAX_REASON      1024u         /* characters in a reason */
#define CONF_MAX_PATH        4096u
#define CONF_MAX_URL         1024u

#define UUID_STRING_LEN      36

/* A phone in use (an agent on it): "refuse" to release it (the
 * default), or "release" it all the same; a declaration's, when given,
 * wins over safety.in_use. */
typedef enum InUse {
        IN_USE_UNSET,       /* a declaration that says nothing: safety.in_use decides */
        IN_USE_REFUSE,
        IN_USE_RELEASE,
} InUse;

/* IN_USE_REFUSE or IN_USE_RELEASE for "refuse" or "release", else IN_USE_UNSET. */
InUse in_use_from_string(const char *s);
const char *in_use_to_string(InUse v);   /* NULL for IN_USE_UNSET */

typedef struct Decl {
        const char *key;    /* id when declared, else the number */
        const char *id;     /* canonical lowercase UUID, or NULL */
        const char *number; /* normalised number or SIP identifier, or NULL */
        const char *reason; /* NULL when not given */
        int64_t not_before; /* seconds since the epoch, 0 when not given */
        InUse in_use;       /* IN_USE_UNSET when not given */
        const char *file;   /* the file it is declared in */
        unsigned line;
} Decl;

typedef struct Config Config;

/* Diagnostics in the "FILE:LINE: message" form, in the order found. */
typedef struct ConfDiag {
        char **lines;
        size_t n;
        size_t dropped;          /* past CONF_MAX_DIAG */
} ConfDiag;

/* Where the declarations go as they are read, so that no more than one
 * file's worth is ever held in memory (state/ puts them in the ledger's
 * temporary tables).  begin() is called once the main file's settings are
 * known (the ledger's path among them), before the first declaration;
 * add() once per declaration, whose strings live only for the call;
 * finish() after the last file, to merge what several entries declare twice
 * and report in d what conflicts (returning how many), in warnings what
 * agrees (one phone declared more than once), and to tell the number of
 * distinct declarations; rejected says the files are refused already, for
 * other reasons, and nothing of them may stay.  Each returns < 0 on
 * failure. */
typedef struct DeclSink {
        int (*begin)(void *userdata, const Config *c);
        int (*add)(void *userdata, const Decl *d);
        int (*finish)(void *userdata, ConfDiag *d, ConfDiag *warnings, bool rejected, size_t *ret_n);
        void *userdata;
} DeclSink;

struct Config {
        char *path;              /* the main file as given */
        char *base_url;          /* without trailing slash */
        char *token_file;        /* "" = $CREDENTIALS_DIRECTORY/api-token */
        char *ca_file;           /* "" = the system's CA store */
        double timeout;          /* seconds per HTTP call */
        double settle_time;      /* seconds after a DELETE whose answer was lost before a look counts */
        double auth_retry;       /* seconds every call stays paused after the API refused the key */
        double rate;             /* calls per second */
        unsigned burst;
        unsigned concurrency;
        unsigned max_attempts;
        double base_delay, max_delay;
        bool dry_run;
        unsigned max_new_releases;
        double hold;             /* seconds an added or changed release waits before its DELETE */
        InUse in_use;            /* safety.in_use: refuse or release a phone an agent is on */
        double resync_interval;
        char *ledger;            /* resolved path of the ledger */
        char *releases_dir;      /* resolved path of the drop-in folder */
        char *control_socket;    /* the daemon's control socket */

        size_t n_decls;          /* distinct declarations (as many as read, without a sink) */
        /* What loaded but may not be what was meant, "FILE:LINE: message":
         * warnings, to be shown wherever the set is loaded (one phone
         * declared more than once: by the sink only); notes, for
         * `retirectl check` (ids in capitals, read in lowercase). */
        ConfDiag warnings;
        ConfDiag notes;

        char **files;            /* every file read, for Decl.file */
        size_t n_files;
};

void conf_diag_done(ConfDiag *d);
/* file NULL: a line with no place. */
void conf_diag_add(ConfDiag *d, const char *file, unsigned line, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Returns 0, or -EINVAL with d filled when the files are invalid, or another
 * negative errno (also explained in d) when they cannot be read.  With a
 * NULL sink the declarations are only checked one by one and counted. */
int config_load(const char *path, const DeclSink *sink, Config **ret, ConfDiag *d);
/* The settings only (n_decls 0): no declaration is read, not even the main
 * file's, so a million of them cost nothing to the commands that only need
 * to know where the ledger and the control socket are.  api.base_url is
 * kept but not checked: they never call the API, and its check is
 * libcurl's parser, which would load libcurl into each of them. */
int config_load_settings(const char *path, Config **ret, ConfDiag *d);
/* Why the shipped unit, whose user is dynamic, could not read
 * api.token_file (*ret a sentence), or *ret NULL.  -ENOMEM only. */
int config_token_file_warning(const Config *c, char **ret);
Config *config_free(Config *c);
/* Every setting at its default, from the environment only: for a client
 * that must reach the daemon when the files do not load. */
int config_defaults(const char *path, Config **ret);
static inline void config_freep(Config **c) { if (*c) config_free(*c); }


/* Validation helpers shared with state/ and daemon/. */
bool uuid_is_valid(const char *s);            /* lowercase, the canonical form */
/* s a UUID in any case: true, with its lowercase form in ret. */
bool uuid_canonical(const char *s, char ret[static UUID_STRING_LEN + 1]);
int number_normalize(const char *in, char **ret);
int rfc3339_parse(const char *s, int64_t *ret);
int rfc3339_format(int64_t t, char buf[static 21]);
