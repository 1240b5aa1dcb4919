/* SPDX-License-Identifier: MIT */
#pragma once

/* The control protocol between retirectl and retired, over a unix stream
 * socket: one request line "VERB [ARG]\n", one reply line "ok [TEXT]\n" or
 * "error [TEXT]\n", then the connection closes.  Only root and the daemon's
 * own user are answered (SO_PEERCRED).
 *
 * The daemon holds CONTROL_MAX_CLIENTS connections at most.  A newcomer is
 * never refused for a full table: the oldest client without a complete
 * request makes room, and is answered CONTROL_BUSY (its request was not
 * read: sending it again cannot act twice).  A client has CONTROL_SILENT_USEC
 * to send its first byte and CONTROL_TIMEOUT_USEC from its connection to end
 * its line, or it is answered CONTROL_TIMEOUT, likewise unread. */

#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "forward.h"
#include "macro.h"

#define CONTROL_MAX_LINE 512     /* bytes of a request, newline included */
#define CONTROL_MAX_VERB 15
#define CONTROL_MAX_ARG  256
#define CONTROL_MAX_CLIENTS 16
#define CONTROL_SILENT_USEC  (1 * USEC_PER_SEC)
#define CONTROL_TIMEOUT_USEC (5 * USEC_PER_SEC)
/* The replies that say the request was not read, so it did nothing. */
#define CONTROL_BUSY     "error busy"
#define CONTROL_TIMEOUT  "error timeout"

/* Splits "verb [arg]\n"; -EBADMSG or -E2BIG for anything else. */
int control_parse(const char *line, size_t len, char verb[static CONTROL_MAX_VERB + 1],
                  char arg[static CONTROL_MAX_ARG + 1]);

/* Returns >= 0 (reply "ok TEXT") or < 0 (reply "error TEXT"); *text may be set. */
typedef int (*ControlHandler)(void *userdata, uint32_t uid, const char *verb, const char *arg, char **text);

int control_open(sd_event *e, const char *path, ControlHandler h, void *userdata, Control **ret);
Control *control_free(Control *c);
