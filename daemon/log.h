/* SPDX-License-Identifier: MIT */
#pragma once

/* Logging: native journal entries when stderr is the journal, one readable
 * line per entry on stderr otherwise.  The *_errno() forms return the
 * negative errno they were given, so callers can `return log_…_errno(r, …)`. */

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <syslog.h>

#include "macro.h"

void log_setup(const char *ident);
void log_set_max_level(int level);
/* A one-line progress bar under the log lines, only on a terminal (never
 * into the journal or a file); total 0 takes it away. */
bool log_progress_possible(void);
void log_progress(size_t done, size_t total, double rate, double eta);

int log_internal(int level, int error, const char *fmt, ...) _printf_(3, 4);

#define log_debug(...)   log_internal(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...)    log_internal(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...)  log_internal(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_internal(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...)   log_internal(LOG_ERR, 0, __VA_ARGS__)
#define log_crit(...)    log_internal(LOG_CRIT, 0, __VA_ARGS__)
#define log_error_errno(e, ...)   log_internal(LOG_ERR, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_internal(LOG_WARNING, (e), __VA_ARGS__)
#define log_oom() log_internal(LOG_ERR, ENOMEM, "Out of memory.")

/* One outcome for one phone (or for the daemon when the phone fields are
 * NULL): a journal entry with MESSAGE_ID and structured fields. */
typedef struct LogFields {
        const char *phone_id, *phone_number, *outcome;
        const char *nickname;                     /* PHONE_NICKNAME: the API's text, as api.c cleaned it */
        const char *inbound_agent, *outbound_agent;   /* INBOUND_AGENT_ID, OUTBOUND_AGENT_ID */
        int http_status;      /* 0: none */
        unsigned attempt;     /* 0: none */
} LogFields;

void log_event(int level, const char *message_id, const LogFields *f, const char *fmt, ...) _printf_(4, 5);
