/* SPDX-License-Identifier: MIT */
#pragma once

/* The API key (token.c): read from a file only its owner can read, and
 * named in the journal by a fingerprint, never by itself. */

#include "conf.h"

#define TOKEN_MAX      4096         /* bytes of a key */

/* The API key: from api.token_file or $CREDENTIALS_DIRECTORY/api-token. */
int token_load(const Config *c, char **ret, char **where);
/* The first bytes of the key's SHA-256, in hex: names the key in the
 * journal without telling anything of use about it. */
#define TOKEN_FINGERPRINT_LEN 16
int token_fingerprint(const char *token, char buf[static TOKEN_FINGERPRINT_LEN + 1]);
