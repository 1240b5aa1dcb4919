/* SPDX-License-Identifier: MIT */
/* Benchmark helper: applies a config's declarations to a ledger, the way
 * retired does at start, so benchmarks get a ledger of any size. */

#include <stdio.h>
#include <stdlib.h>

#include "conf.h"
#include "state.h"

int main(int argc, char **argv) {
        Config *c = NULL;
        Ledger *l = NULL;
        Plan *p = NULL;
        ConfDiag d = {};
        char *error = NULL;
        int r;

        if (argc != 3) {
                fprintf(stderr, "usage: fill-ledger CONFIG LEDGER\n");
                return 1;
        }
        r = ledger_open(argv[2], LEDGER_WRITE, &l, &error);
        if (r >= 0) {
                DeclLoad dl = { .ledger = l };
                DeclSink sink = decl_load_sink(&dl);

                r = config_load(argv[1], &sink, &c, &d);
                decl_load_done(&dl);
        }
        if (r >= 0)
                r = plan_compute(l, c, &p);
        if (r >= 0)
                r = plan_apply(l, p, true);
        if (r < 0)
                fprintf(stderr, "fill-ledger: %s (%d)\n", error ? error : d.n ? d.lines[0] : "failed", r);
        plan_free(p);
        ledger_close(l);
        config_free(c);
        conf_diag_done(&d);
        free(error);
        return r < 0;
}
