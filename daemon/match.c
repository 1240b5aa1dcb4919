/* SPDX-License-Identifier: MIT */
/* The match of a complete listing to the rows: the listing keeps the phones
 * in the ledger's TEMP table, and each row then meets the phone it names, by
 * id or by number, without a call.  What the meeting means is
 * reconcile_look()'s; what follows from it is the caller's (the engine's
 * pass, or `retirectl plan --live`, which acts on nothing). */

#include <stdlib.h>

#include "api.h"
#include "macro.h"
#include "match.h"

/* The daemon keeps only the phones the ledger has a row for (in the ledger's
 * TEMP table, not the heap): the rest are only counted.  (A row of any
 * state: cheaper to ask than which are due.) */
int match_keep(Ledger *l, const RemotePhone *p, bool known_only) {
        int r;

        if (!p)
                return ledger_listed_clear(l);
        if (known_only) {
                r = ledger_knows_phone(l, p->id, p->number);
                if (r <= 0)
                        return r;
        }
        return ledger_listed_add(l, &(ListedPhone) {
                .id = p->id, .number = p->number, .status = p->status_name, .provider = p->provider,
                .scheduled_release_at = p->scheduled_release_at, .inbound_agent = p->inbound_agent,
                .outbound_agent = p->outbound_agent, .nickname = p->nickname,
        });
}

/* A listed phone as the decisions read it, its strings its own. */
static int remote_of(const ListedPhone *l, RemotePhone *ret) {
        RemotePhone v = {
                .status = remote_status_from_string(l->status), .number = (char *) l->number,
                .status_name = (char *) l->status, .provider = (char *) l->provider,
                .scheduled_release_at = (char *) l->scheduled_release_at,
                .inbound_agent = (char *) l->inbound_agent, .outbound_agent = (char *) l->outbound_agent,
                .nickname = (char *) l->nickname,
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
        char *ids;                       /* Match.ids */
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
        if (c->n++ < MATCH_CARRIER_IDS_MAX) {
                if (c->ids[0])
                        strcat(c->ids, ", ");
                strncat(c->ids, l->id, UUID_STRING_LEN);
        } else if (c->n == MATCH_CARRIER_IDS_MAX + 1)
                strcat(c->ids, ", ...");
        return 0;
}

/* A number-declared row: which phone it means.  A number can come back
 * after release under a new id: the live phone counts, a released one only
 * if nothing live has the number; two live ones are a question for an operator. */
static int match_number(Ledger *l, const Row *row, const ListingStats *st, bool confirmed, Match *m) {
        _cleanup_(carriers_done) Carriers c = { .ids = m->ids };
        int r;

        r = ledger_listed_find(l, NULL, row->number, add_carrier, &c);
        if (r < 0)
                return r;
        if (c.has_live || c.has_gone) {
                m->seen = c.has_live ? c.live : c.gone;
                if (c.has_live)
                        c.live = (RemotePhone) {};
                else
                        c.gone = (RemotePhone) {};
                m->look.seen = &m->seen;
        }
        m->look.not_listed = !m->look.seen;
        /* Offset pages can miss a phone when two changes undo each other's
         * shift; only the cursor may call it absent. */
        if (m->look.not_listed && st->pages && !confirmed)
                return MATCH_UNCONFIRMED;
        m->look.listed = st->listed;
        m->look.unreadable = st->unreadable;
        m->look.carriers = c.n;
        m->look.carrier_ids = m->ids;
        return MATCH_LOOK;
}

int match_row(Ledger *l, const Row *row, const ListingStats *st, bool confirmed, int64_t now, Match *ret) {
        int r;

        *ret = (Match) { .look.reply = { .kind = CALL_LIST, .status = 200, .api = true, .asked_at = now } };
        if (!row->id)
                return match_number(l, row, st, confirmed, ret);
        r = ledger_listed_find(l, row->id, NULL, take_listed, &ret->seen);
        if (r <= 0)
                return r < 0 ? r : MATCH_BY_ID;   /* not listed: ask for it by id to be sure */
        ret->look.seen = &ret->seen;
        return MATCH_LOOK;
}

void match_done(Match *m) {
        remote_phone_done(&m->seen);
        m->look.seen = NULL;
}

bool match_wants_listing(Ledger *l, uint64_t by_id, uint64_t by_number) {
        _cleanup_free_ char *v = NULL;
        size_t pages;

        if (by_number > 0)
                return true;
        if (ledger_meta_get(l, "account_size", &v) < 0)
                return by_id > 10;
        pages = (size_t) strtoull(v, NULL, 10) / API_PAGE_LIMIT + 1;
        return by_id > pages;
}
