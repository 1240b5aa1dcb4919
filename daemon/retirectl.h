/* SPDX-License-Identifier: MIT */
#pragma once

/* Shared by retirectl's files only: its options, and the loads every verb
 * starts with. */

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"
#include "state.h"

/* Exit codes, like `terraform plan -detailed-exitcode` for plan. */
enum { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_CHANGES = 2 };

extern const char *arg_config;     /* -c */
extern const char *arg_ledger;     /* --ledger, or NULL: the config's */

/* The config, with its FILE:LINE problems printed; with a sink, the
 * declarations go to it as read. */
int load(const DeclSink *sink, bool settings_only, Config **ret);
int load_config(Config **ret);
/* The config, its declarations into *l (opened from the config when NULL). */
int load_declarations(Ledger **l, Config **ret);

/* One request to the daemon, one reply line into reply (without "\n").
 * -ECONNREFUSED/-ENOENT: nobody listens. */
int control_request(const char *path, const char *verb, const char *arg, char *reply, size_t size);
/* retry, approve, reload, pause, resume (retirectl-control.c). */
int verb_control(const char *verb, const char *arg);
