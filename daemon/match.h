/* SPDX-License-Identifier: MIT */
#pragma once

/* What a complete listing shows for a row (match.c): the phone it names, by
 * id or by number, read back from the listing's TEMP table.  No call, no
 * decision (reconcile_look() decides on the Look), no engine: the daemon's
 * pass and `retirectl plan --live` meet their rows the same way. */

#include <stdbool.h>
#include <stdint.h>

#include "listing.h"
#include "reconcile.h"
#include "state.h"

#define MATCH_CARRIER_IDS_MAX 8          /* ids named in an ambiguity's detail */

typedef struct Match {
        Look look;                       /* for reconcile_look(); look.seen points into this */
        RemotePhone seen;
        char ids[MATCH_CARRIER_IDS_MAX * (UUID_STRING_LEN + 2) + 8];
} Match;

typedef enum MatchKind {
        MATCH_LOOK,                      /* look is what the listing shows */
        MATCH_BY_ID,                     /* the row's id is not in the listing: a GET by id tells */
        MATCH_UNCONFIRMED,               /* the number is not in a listing by page: only a listing
                                          * by cursor may call it absent */
} MatchKind;

/* A listed phone into the ledger's TEMP table (NULL: forget them all); with
 * known_only, only one some ledger row names, the rest only counted. */
int match_keep(Ledger *l, const RemotePhone *p, bool known_only);
/* The row meets what the listing kept: a MatchKind, or -errno when the
 * listing cannot be read back.  confirmed: the listing is by cursor (or
 * confirms one by page), so a number it lacks is not in the account.  now:
 * usec, CLOCK_REALTIME, when the look counts as made. */
int match_row(Ledger *l, const Row *row, const ListingStats *st, bool confirmed, int64_t now, Match *ret);
void match_done(Match *m);
/* Fewer calls wins: the pages of the whole account (whose size the last
 * listing left in the ledger), or a GET per row named by id; rows named by
 * number only a listing finds. */
bool match_wants_listing(Ledger *l, uint64_t by_id, uint64_t by_number);
