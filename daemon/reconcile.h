/* SPDX-License-Identifier: MIT */
#pragma once

/* The decisions.  What one look at a phone, or the answer to one call, means
 * for its ledger row: the next state, the fields to record, when to look
 * next, the call to make now, and what to tell the journal.  Every meaning
 * of an HTTP answer lives here.  Pure: no I/O, no clock, no randomness, no
 * globals; everything is in the arguments and the Outcome, so the whole
 * table is tested as data (the cases in tests/reconcile/). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "macro.h"
#include "state.h"

/* ---- what the API says ---- */

typedef enum RemoteStatus {
        REMOTE_RESERVED,
        REMOTE_PENDING_VERIFICATION,
        REMOTE_ASSIGNED,
        REMOTE_RELEASED,
        REMOTE_FINISHED,
        REMOTE_UNKNOWN,
        _REMOTE_STATUS_MAX,
} RemoteStatus;

typedef struct RemotePhone {
        char id[UUID_STRING_LEN + 1]; /* canonical: lowercase */
        char *number;                 /* normalised when it looks like a number */
        RemoteStatus status;
        char *status_name;            /* as the API wrote it */
        char *provider;               /* "netelip", "custom", what the API said, or NULL */
        char *scheduled_release_at;   /* NULL when not set */
        char *inbound_agent;          /* an agent answers its calls (canonical UUID), or NULL */
        char *outbound_agent;         /* an agent places calls from it, or NULL */
        char *nickname;               /* as api.c cleaned it: one line, at most NICKNAME_MAX bytes, or NULL */
} RemotePhone;

/* A live line: an agent answers or places calls on it. */
static inline bool remote_in_use(const RemotePhone *p) {
        return p->inbound_agent || p->outbound_agent;
}

void remote_phone_done(RemotePhone *p);
int remote_phone_copy(RemotePhone *to, const RemotePhone *from);
RemoteStatus remote_status_from_string(const char *s);
bool remote_is_live(const RemotePhone *p);

typedef enum CallKind { CALL_LIST, CALL_GET, CALL_DELETE, _CALL_KIND_MAX } CallKind;

/* One call's answer, reduced to what decides. */
typedef struct Reply {
        CallKind kind;
        int status;              /* HTTP status; 0: no answer (timed out, dropped, cut, too large) */
        bool api;                /* the body is the API's own JSON: its error body, or for a
                                  * 200 the documented object (the engine parsed it) */
        int64_t retry_after;     /* seconds; <= 0: none */
        const char *error;       /* why there was no answer, or what is wrong with the body */
        const char *message;     /* the API's own words from an error body, or NULL */
        bool unsent;             /* no answer because the request never left (no connection) */
        int64_t asked_at;        /* usec, CLOCK_REALTIME: when the request left */
} Reply;

/* ---- the row, and the world it is decided in ---- */

typedef struct Row {
        PhoneState state;
        const char *key, *id;    /* id: declared or resolved, or NULL */
        const char *number;      /* as declared, or NULL */
        int64_t not_before;      /* seconds since the epoch it may go from, 0: none */
        int64_t hold_boot_until; /* usec, CLOCK_BOOTTIME: its safety.hold by the clock no step
                                  * moves, 0: none, INT64_MAX: not started in this boot yet */
        unsigned attempts;       /* failed calls so far */
        int64_t sent_at;         /* usec: a DELETE left then and no look settled it; 0: none */
        int64_t look_after;      /* usec: a look asked from then on tells what that DELETE did */
        const char *provider;    /* as last seen */
        const char *last_error;
        const char *rejected;    /* why the API refused this pass's DELETE, before the look */
        int answered;            /* the HTTP status of this pass's DELETE, before the look; 0: none */
        /* The agents on the phone as this pass's look saw them (its listing
         * or its GET), or as the ledger has them for a row in_use: the
         * in_flight commit checks them again. */
        const char *inbound_agent, *outbound_agent;
        bool release_in_use;     /* in_use = "release": the declaration's, else safety.in_use */
} Row;

typedef struct World {
        int64_t now;             /* usec, CLOCK_REALTIME */
        int64_t due_now;         /* usec: the time not_before is held against (both clocks) */
        int64_t boot_now;        /* usec, CLOCK_BOOTTIME: the time a hold is held against */
        unsigned max_attempts;
        usec_t base_delay, max_delay;
        usec_t settle;           /* api.settle_time */
        double jitter;           /* a random draw in [0, 1), for full jitter */
        bool dry_run;
} World;

/* ---- what follows ---- */

typedef enum Next {
        NEXT_NONE,
        NEXT_GET,                /* look at the phone (by id) now, before anything else */
        NEXT_DELETE,             /* release it: queue the DELETE (its in_flight commit comes at dispatch) */
} Next;

#define OUTCOME_TEXT 512

typedef struct Outcome {
        PhoneState to;           /* == the row's state: no change of state */
        bool write;              /* commit a step: a new state, or the call on record */
        unsigned attempts;       /* failed calls, this answer counted */
        int64_t next_at;         /* usec: when to look next; < 0: keep */
        int64_t sent_at;         /* > 0: a DELETE leaves at this time (reconcile_send) */
        bool clear_sent;         /* this look settled the last DELETE: it released nothing */
        const char *id, *api_number, *provider, *scheduled;   /* to record; NULL: keep */
        bool seen;               /* a look saw the phone: the three below are what it showed */
        const char *nickname;    /* NULL: none shown (the ledger keeps the last one) */
        const char *inbound_agent, *outbound_agent;
        Next next;
        int64_t look_after;      /* with NEXT_GET: from when the look may find that the DELETE did nothing */
        bool rejected;           /* with NEXT_GET: `error` is why the DELETE was refused */

        /* Beyond this phone. */
        bool auth_pause;         /* the key is refused: every call stops */
        bool rate_backoff;       /* a 429: the pace slows down */
        int64_t hold;            /* seconds every call waits (Retry-After), 0: none */

        bool dry_run;            /* would have released: the journal hears of it, nothing else */
        int level;               /* a journal entry of this priority (LOG_*); 0: none */
        char detail[OUTCOME_TEXT];  /* for the history and the journal */
        char error[OUTCOME_TEXT];   /* last_error to record; "": keep */
} Outcome;

/* A look at the phone: `seen` is what a GET or a complete listing showed
 * (NULL with `reply` the answer when it showed no phone), or with
 * not_listed, a complete listing that had no phone with the number. */
typedef struct Look {
        const RemotePhone *seen;
        bool not_listed;
        size_t listed, unreadable; /* with not_listed: phones in the account, phones that could not be read */
        unsigned carriers;       /* live phones with the number (> 1: ambiguous, nothing is released) */
        const char *carrier_ids; /* with carriers > 1: their ids, for the detail */
        Reply reply;             /* the call the look came from */
} Look;

void reconcile_look(const Row *row, const Look *look, const World *w, Outcome *ret);
/* What the answer to the row's DELETE means. */
void reconcile_delete(const Row *row, const Reply *reply, const World *w, Outcome *ret);
/* The in_flight commit made right before a DELETE leaves; false (and the
 * DELETE does not leave) when the row is not due by both clocks. */
bool reconcile_send(const Row *row, const World *w, Outcome *ret);

/* A list page's answer. */
typedef enum PageVerdict {
        PAGE_OK,                 /* a page: take its phones */
        PAGE_RETRY,              /* ask again in `delay` (on the listing's own budget) */
        PAGE_GIVE_UP,            /* the listing stops without a verdict on anything */
        PAGE_AUTH,               /* the key is refused: every call stops */
} PageVerdict;

typedef struct PageOutcome {
        PageVerdict verdict;
        usec_t delay;
        bool rate_backoff;
        int64_t hold;
        char detail[OUTCOME_TEXT];
} PageOutcome;

/* `attempts`: the failed tries of this page so far. */
void reconcile_page(const Reply *reply, unsigned attempts, const World *w, PageOutcome *ret);

/* Full jitter: uniformly random in [0, min(max_delay, base_delay * 2^attempt)],
 * and never less than Retry-After (capped at RETRY_AFTER_MAX). */
#define RETRY_AFTER_MAX 3600     /* seconds of Retry-After honoured at most */
usec_t reconcile_backoff(const World *w, unsigned attempt, int64_t retry_after);

/* The two clocks: when they differ by more than CLOCK_SKEW_MAX, a phone is
 * due only when both say so.  api_offset: the API's clock minus ours. */
#define CLOCK_SKEW_MAX (60 * USEC_PER_SEC)
int64_t reconcile_due_now(int64_t local, int64_t api_offset, bool offset_known);

const char *call_kind_to_string(CallKind k);   /* the HTTP method */
