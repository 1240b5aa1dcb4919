/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's objects, by name only: a header that passes one around needs
 * no more of it, and includes this in place of the header that defines it. */

typedef struct Api Api;             /* api.h: a private SQLite connection for its JSON functions */
typedef struct Call Call;           /* diga.h: one HTTP call, queued or out */
typedef struct Control Control;     /* control.h: the operator's socket */
typedef struct Diga Diga;           /* diga.h: the HTTP client */
typedef struct Engine Engine;       /* engine.h: the reconciler */
typedef struct Listing Listing;     /* listing.h: one listing of the account */
