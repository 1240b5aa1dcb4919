/* SPDX-License-Identifier: MIT */
#pragma once

/* The listing (listing.c): every phone of the account, by page or by
 * cursor, before anything is acted on. */

#include <stdbool.h>
#include <stddef.h>
#include <systemd/sd-event.h>

#include "forward.h"
#include "reconcile.h"

/* Each phone listed, for the caller to keep or only count; NULL: forget the
 * phones given so far (the listing starts again, or failed).  < 0 stops
 * the listing. */
typedef int (*ListingKeep)(const RemotePhone *p, void *userdata);
/* The listing ended: 0, complete; < 0, it failed or was stopped (why says
 * what), and nothing it saw may be taken as a verdict: -EHOSTUNREACH, the
 * API did not answer at all; -EACCES, it refused the key; -ECANCELED,
 * stopped. */
typedef void (*ListingDone)(Listing *ls, int r, const char *why, void *userdata);

typedef struct ListingStats {
        size_t listed;            /* phones in the account */
        size_t unreadable;        /* phones skipped because they could not be read */
        unsigned calls;           /* list calls made */
        unsigned restarts;        /* times the account changed under the listing */
        bool pages;               /* listed by page (concurrently), not by cursor */
} ListingStats;

int listing_new(sd_event *e, Diga *d, Api *api, const World *w, ListingKeep keep, ListingDone done,
                void *userdata, Listing **ret);
Listing *listing_free(Listing *ls);
void listing_start(Listing *ls);
/* Starts again (also from its done callback), following the cursor only. */
void listing_start_by_cursor(Listing *ls);
/* Stops at once: calls queued are dropped, answers still out are ignored. */
void listing_stop(Listing *ls, const char *why);
bool listing_running(Listing *ls);
const ListingStats *listing_stats(Listing *ls);
