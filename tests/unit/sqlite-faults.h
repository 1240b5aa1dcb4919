/* SPDX-License-Identifier: MIT */
#pragma once

/* SQLite's calls failed on purpose.  A test program linked with
 * sqlite-faults.o and $(SQLITE_WRAP) (the Makefile's --wrap of step, exec
 * and both prepares) has the code under test make those calls through
 * this file: once armed, the fail_at-th of them fails with the code. */

#include <stdbool.h>

typedef struct Fault {
        bool armed;
        unsigned fail_at;          /* the call to fail, from 1 */
        unsigned calls;            /* made since armed */
        int code;
        bool hit;
        char sql[160];             /* what the failed call was to run, to say where it was */
} Fault;

extern Fault fault;

void fault_arm(unsigned n, int code);
/* Whether the armed fault was hit; no call fails after this. */
bool fault_disarm(void);
