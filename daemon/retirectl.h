/* SPDX-License-Identifier: MIT */
#pragma once

/* Shared by retirectl's files only: its options, and the loads every verb
 * starts with. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "state.h"

/* Exit codes (retirectl(1)); 2 like `terraform plan -detailed-exitcode`.
 * 3 and 4 are apart from 1 (refused by the daemon, or any other error):
 * a request not delivered did nothing and may be sent again; one sent but
 * not answered may have been carried out, and must not be. */
enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_CHANGES = 2, EXIT_UNDELIVERED = 3, EXIT_NO_ANSWER = 4 };

/* Times a request refused unread ("busy") is sent, 10 ms apart and twice
 * that each time, up to 0.5 s: about 3 s in all. */
#define CONTROL_BUSY_TRIES 10

extern const char *arg_config;     /* -c */
extern const char *arg_ledger;     /* --ledger, or NULL: the config's */
/* The command line as given, before getopt_long() reordered it: what
 * retirectl-exec.c hands retirectl-live. */
extern char **saved_argv;

/* The config, with its FILE:LINE problems printed; with a sink, the
 * declarations go to it as read. */
int load(const DeclSink *sink, bool settings_only, Config **ret);
int load_config(Config **ret);
/* The config, its declarations into *l (opened from the config when NULL). */
int load_declarations(Ledger **l, Config **ret);

/* One request to the daemon, one reply line into reply (without "\n"),
 * sent again only while the daemon refuses it unread.  -ECONNREFUSED or
 * -ENOENT: nobody listens; -EBUSY: refused unread every time; -ENOTCONN:
 * closed before it was read; -ETIMEDOUT, -EPROTO: sent, and no (whole)
 * answer: it may have been carried out. */
int control_request(const char *path, const char *verb, const char *arg, char *reply, size_t size);
/* Says what a failed control_request() means and what to do; the exit code. */
int control_failed(const char *path, const char *verb, int r);
/* retry, approve, reload, pause, resume (retirectl-control.c). */
int verb_control(const char *verb, const char *arg);
/* plan --live (retirectl-live.c): what the next pass would do, against the
 * account as listed now; exit 0 nothing would be released, 2 something
 * would, 1 an error.  In retirectl, retirectl-exec.c's runs the program
 * retirectl-live, which has this one, and returns only when it could not. */
int verb_plan_live(bool json);

/* Output (retirectl.c): a JSON string or null, an RFC 3339 time or null,
 * a time or "-". */
void json_str(const char *s);
void json_time(int64_t t);
const char *time_str(int64_t t, char buf[static 21]);
