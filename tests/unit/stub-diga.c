/* SPDX-License-Identifier: MIT */
/* The scripted Diga client (stub-diga.h): calls wait in two lists, as in
 * daemon/diga.c, the queue (not started) and the calls out (started), until
 * the test answers them. */

#include "unit.h"

#include "stub-diga.h"
#include "macro.h"

struct Diga {
        Call *queue, *out;         /* in order: the queue's head leaves first, the oldest out is first */
        bool autostart;
        unsigned fail_at;          /* the diga_call() to fail, counted from when it was set; 0: none */
        int fail_error;
        CallDone on_answer;
        void *on_answer_userdata;
        StubDigaStats stats;
};

static Diga *last;

Diga *stub_diga_last(void) {
        return last;
}

const StubDigaStats *stub_diga_stats(Diga *d) {
        return &d->stats;
}

/* ---- the two lists ---- */

static void list_remove(Call **head, Call *c) {
        for (Call **p = head; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        c->next = NULL;
                        return;
                }
        fail_msg("stub-diga: call %u is not where it should be", c->seq);
}

static void list_append(Call **head, Call *c) {
        Call **p = head;

        while (*p)
                p = &(*p)->next;
        c->next = NULL;
        *p = c;
}

static bool in_list(Call *head, Call *c) {
        for (; head; head = head->next)
                if (head == c)
                        return true;
        return false;
}

/* Every call ends in exactly one callback, also when it is never sent. */
static void not_sent(Diga *d, Call *c, const char *why) {
        CallResult r = { .kind = c->kind, .not_sent = true, .error = why, .retry_after = -1,
                         .method = call_kind_to_string(c->kind), .path = "/v1/phone/" };

        d->stats.not_sent++;
        if (c->done)
                c->done(d, &r, c->userdata);
        free(c);
}

/* Off the queue and out, through the start hook: false when it refused
 * (the call then ended not_sent). */
static bool start(Diga *d, Call *c) {
        if (d->stats.paused)
                fail_msg("stub-diga: call %u started while calls are paused", c->seq);
        list_remove(&d->queue, c);
        if (c->start && c->start(c->userdata) < 0) {
                not_sent(d, c, "not started");
                return false;
        }
        c->started = true;
        c->asked_at = (int64_t) now(CLOCK_REALTIME);
        list_append(&d->out, c);
        return true;
}

void stub_diga_start_all(Diga *d) {
        while (d->queue && !d->stats.paused)
                (void) start(d, d->queue);
}

bool stub_diga_start(Diga *d, Call *c) {
        if (c->started)
                fail_msg("stub-diga: call %u is out already", c->seq);
        return start(d, c);
}

void stub_diga_set_autostart(Diga *d, bool on) {
        d->autostart = on;
        if (on)
                stub_diga_start_all(d);
}

/* ---- what the code under test calls ---- */

int diga_new(sd_event *e, const Config *c, const char *token, Diga **ret) {
        Diga *d = calloc(1, sizeof(Diga));

        if (!d)
                return -ENOMEM;
        d->stats.configs = 1;
        *ret = last = d;
        return 0;
}

Diga *diga_free(Diga *d) {
        if (!d)
                return NULL;
        /* As the real one: owners finished their calls first; the rest go silently. */
        for (Call *c = d->queue, *n; c; c = n) {
                n = c->next;
                free(c);
        }
        for (Call *c = d->out, *n; c; c = n) {
                n = c->next;
                free(c);
        }
        if (last == d)
                last = NULL;
        free(d);
        return NULL;
}

int diga_set_config(Diga *d, const Config *c, const char *token) {
        d->stats.configs++;
        return 0;
}

int diga_call(Diga *d, const CallSpec *spec, Call **ret) {
        Call *c;

        /* The real client's own refusals: they are part of its contract. */
        if (spec->id && !uuid_is_valid(spec->id))
                return -EINVAL;
        if ((spec->kind != CALL_LIST && (!spec->id || spec->page)) || (spec->id && spec->page))
                return -EINVAL;
        if (d->fail_at > 0 && --d->fail_at == 0)
                return d->fail_error;
        c = calloc(1, sizeof(Call));
        if (!c)
                return -ENOMEM;
        *c = (Call) { .d = d, .seq = ++d->stats.calls, .kind = spec->kind, .page = spec->page,
                      .urgent = spec->urgent, .start = spec->start, .done = spec->done,
                      .userdata = spec->userdata };
        if (spec->id)
                memcpy(c->id, spec->id, sizeof c->id);
        if (spec->urgent) {
                c->next = d->queue;
                d->queue = c;
        } else
                list_append(&d->queue, c);
        if (ret)
                *ret = c;
        if (d->autostart)
                stub_diga_start_all(d);
        return 0;
}

bool diga_cancel(Diga *d, Call *c) {
        if (!in_list(d->queue, c))
                return false;
        list_remove(&d->queue, c);
        not_sent(d, c, "cancelled");
        return true;
}

void diga_forget(Diga *d, Call *c) {
        d->stats.forgotten++;
        if (in_list(d->queue, c)) {
                list_remove(&d->queue, c);
                free(c);
                return;
        }
        c->done = NULL;
}

void diga_on_answer(Diga *d, CallDone cb, void *userdata) {
        d->on_answer = cb;
        d->on_answer_userdata = userdata;
}

void diga_drop_queued(Diga *d) {
        /* The head each time: a callback may queue or forget others. */
        while (d->queue) {
                Call *c = d->queue;

                list_remove(&d->queue, c);
                not_sent(d, c, "dropped");
        }
}

void diga_hold(Diga *d, usec_t until) {
        d->stats.holds++;
        d->stats.held_until = until;
}

void diga_set_paused(Diga *d, bool paused) {
        d->stats.paused = paused;
        if (!paused && d->autostart)
                stub_diga_start_all(d);
}

void diga_rate_backoff(Diga *d) {
        d->stats.backoffs++;
}

unsigned diga_in_flight(Diga *d) {
        unsigned n = 0;

        for (Call *c = d->out; c; c = c->next)
                n += c->done != NULL;
        return n;
}

size_t diga_queued(Diga *d) {
        size_t n = 0;

        for (Call *c = d->queue; c; c = c->next)
                n++;
        return n;
}

/* ---- what the test calls ---- */

size_t stub_diga_pending(Diga *d) {
        return diga_in_flight(d) + diga_queued(d);
}

size_t stub_diga_silenced(Diga *d) {
        size_t n = 0;

        for (Call *c = d->out; c; c = c->next)
                n += c->done == NULL;
        return n;
}

Call *stub_diga_pending_call(Diga *d, size_t i) {
        for (Call *c = d->out; c; c = c->next)
                if (c->done && i-- == 0)
                        return c;
        for (Call *c = d->queue; c; c = c->next)
                if (i-- == 0)
                        return c;
        return NULL;
}

Call *stub_diga_next(Diga *d) {
        return stub_diga_pending_call(d, 0);
}

static void answer(Diga *d, Call *c, const StubAnswer *a) {
        CallResult r = {
                .kind = c->kind, .http_status = a->status, .error = a->error, .body = a->body,
                .body_len = a->body ? strlen(a->body) : 0, .json = a->json, .unsent = a->unsent,
                .retry_after = a->retry_after > 0 ? a->retry_after : -1, .api_date = a->api_date,
                .asked_at = c->asked_at, .answered_at = (int64_t) now(CLOCK_REALTIME),
                .method = call_kind_to_string(c->kind), .path = "/v1/phone/",
        };

        list_remove(&d->out, c);
        d->stats.answered++;
        if (d->on_answer)
                d->on_answer(d, &r, d->on_answer_userdata);
        if (c->done)
                c->done(d, &r, c->userdata);
        free(c);
}

bool stub_diga_answer(Diga *d, Call *c, const StubAnswer *a) {
        assert_non_null(c);
        if (!c->started && !start(d, c))
                return false;
        if (!c->done)
                fail_msg("stub-diga: call %u was forgotten: answer it with stub_diga_answer_silenced()", c->seq);
        answer(d, c, a);
        return true;
}

bool stub_diga_answer_json(Diga *d, Call *c, int status, const char *body) {
        return stub_diga_answer(d, c, &(StubAnswer) { .status = status, .body = body, .json = true });
}

void stub_diga_answer_silenced(Diga *d, const StubAnswer *a) {
        for (Call *c = d->out; c; c = c->next)
                if (!c->done) {
                        answer(d, c, a);
                        return;
                }
        fail_msg("stub-diga: no call out was forgotten");
}

void stub_diga_fail_call(Diga *d, unsigned nth, int error) {
        d->fail_at = nth;
        d->fail_error = error;
}
