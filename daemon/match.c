/* SPDX-License-Identifier: MIT */
/* The match of a complete listing to the declarations: the listing keeps
 * the phones some row names (in the ledger's TEMP table), and each row
 * then meets the phone it names, by id or by number, without a call. */

#include "engine-internal.h"
#include "log.h"
#include "macro.h"
#include "messages.h"

#define CARRIER_IDS_MAX   8                       /* ids named in an ambiguity's detail */

/* Only the phones the ledger has a row for are kept (in the ledger's TEMP
 * table, not the heap): the rest are only counted.  (A row of any state:
 * cheaper to ask than which are due.) */
int match_keep(const RemotePhone *p, void *userdata) {
        Engine *e = userdata;
        int r;

        if (!p)
                return ledger_listed_clear(e->ledger);
        r = ledger_knows_phone(e->ledger, p->id, p->number);
        if (r <= 0)
                return r;
        return ledger_listed_add(e->ledger, &(ListedPhone) {
                .id = p->id, .number = p->number, .status = p->status_name, .provider = p->provider,
                .scheduled_release_at = p->scheduled_release_at,
        });
}

/* A listed phone as the decisions read it, its strings its own. */
static int remote_of(const ListedPhone *l, RemotePhone *ret) {
        RemotePhone v = {
                .status = remote_status_from_string(l->status), .number = (char *) l->number,
                .status_name = (char *) l->status, .provider = (char *) l->provider,
                .scheduled_release_at = (char *) l->scheduled_release_at,
        };

        snprintf(v.id, sizeof v.id, "%s", l->id);
        return remote_phone_copy(ret, &v);
}

static int take_listed(const ListedPhone *l, void *userdata) {
        return remote_of(l, userdata);
}

/* The phones carrying a number: the first live one, else the first gone,
 * and how many are live. */
typedef struct Carriers {
        RemotePhone live, gone;
        bool has_live, has_gone;
        unsigned n;
        char ids[CARRIER_IDS_MAX * (UUID_STRING_LEN + 2) + 8];
} Carriers;

static void carriers_done(Carriers *c) {
        remote_phone_done(&c->live);
        remote_phone_done(&c->gone);
}

static int add_carrier(const ListedPhone *l, void *userdata) {
        Carriers *c = userdata;
        RemotePhone v = { .status = remote_status_from_string(l->status) };
        int r;

        if (!remote_is_live(&v)) {
                if (c->has_gone)
                        return 0;
                r = remote_of(l, &c->gone);
                c->has_gone = r >= 0;
                return r;
        }
        if (!c->has_live) {
                r = remote_of(l, &c->live);
                if (r < 0)
                        return r;
                c->has_live = true;
        }
        if (c->n++ < CARRIER_IDS_MAX) {
                if (c->ids[0])
                        strcat(c->ids, ", ");
                strncat(c->ids, l->id, UUID_STRING_LEN);
        } else if (c->n == CARRIER_IDS_MAX + 1)
                strcat(c->ids, ", ...");
        return 0;
}

static const CallResult list_call = {
        .kind = CALL_LIST, .method = "GET", .path = "/v1/phone/ (the account listed)", .http_status = 200,
};

/* A number-declared row: which phone it means.  A number can come back
 * after release under a new id: the live phone counts, a released one only
 * if nothing live has the number; two live ones are a question for an operator. */
static void match_number(Engine *e, Job *j) {
        _cleanup_(carriers_done) Carriers c = {};
        const ListingStats *st = listing_stats(e->listing);
        Look look = {
                .reply = { .kind = CALL_LIST, .status = 200, .api = true, .asked_at = (int64_t) now(CLOCK_REALTIME) },
                .listed = st->listed, .unreadable = st->unreadable,
        };
        Row row = job_row(j);
        World w = engine_world(e);
        Outcome o;
        int r;

        r = ledger_listed_find(e->ledger, NULL, j->number, add_carrier, &c);
        if (r < 0) {
                log_error_errno(r, "Cannot read the listing back for %s: %m (%s); it waits for the next pass.",
                                j->key, ledger_errmsg(e->ledger));
                job_finish(j);
                return;
        }
        look.seen = c.has_live ? &c.live : c.has_gone ? &c.gone : NULL;
        look.not_listed = !look.seen;
        if (look.not_listed && st->pages && !e->confirming) {
                /* Offset pages can miss a phone when two changes undo each
                 * other's shift; only the cursor may call it absent.  This row
                 * fell due after the check that would have asked it. */
                e->stats.unconfirmed++;
                e->want_pass = true;
                job_finish(j);
                return;
        }
        look.carriers = c.n;
        look.carrier_ids = c.ids;
        reconcile_look(&row, &look, &w, &o);
        act_apply(j, &o, &list_call, true);
}

/* The listing is complete: a row meets the phone it names. */
void match_job(Engine *e, Job *j) {
        _cleanup_(remote_phone_done) RemotePhone p = {};
        Look look = { .reply = { .kind = CALL_LIST, .status = 200, .api = true,
                                 .asked_at = (int64_t) now(CLOCK_REALTIME) } };
        Row row;
        World w;
        Outcome o;
        int r;

        if (!j->id) {
                match_number(e, j);
                return;
        }
        r = ledger_listed_find(e->ledger, j->id, NULL, take_listed, &p);
        if (r < 0) {
                log_error_errno(r, "Cannot read the listing back for %s: %m (%s); looking at it by id.", j->key,
                                ledger_errmsg(e->ledger));
                r = 0;
        }
        if (r == 0) {
                act_observe(j, false);   /* not listed: ask for it by id to be sure */
                return;
        }
        look.seen = &p;
        row = job_row(j);
        w = engine_world(e);
        reconcile_look(&row, &look, &w, &o);
        act_apply(j, &o, &list_call, true);
}

