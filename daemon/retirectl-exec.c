/* SPDX-License-Identifier: MIT */
/* plan --live in the retirectl every other command runs.  The live listing
 * needs the API client (libcurl, and libcrypto for the key's fingerprint),
 * whose forty libraries would be most of each command's start: it is a
 * program of its own, retirectl-live (retirectl with the client), run here
 * with this command line as given, which it parses again as retirectl does. */

#include <libgen.h>
#include <limits.h>
#include <unistd.h>

#include "macro.h"
#include "retirectl.h"

#define HELPER "retirectl-live"

/* Where an uninstalled build's helper is: beside this retirectl (build/,
 * build-san/).  -errno when /proc does not say where that is. */
static int helper_beside(char **ret) {
        char self[PATH_MAX];
        ssize_t n;

        n = readlink("/proc/self/exe", self, sizeof self);
        if (n < 0)
                return negative_errno();
        if ((size_t) n >= sizeof self)
                return -ENAMETOOLONG;
        self[n] = 0;
        if (asprintf_or_null(ret, "%s/" HELPER, dirname(self)) < 0)
                return -ENOMEM;
        return 0;
}

int verb_plan_live(bool json) {
        _cleanup_free_ char *beside = NULL;
        const char *tried[2];
        int errors[2];
        size_t n = 0;

        if (helper_beside(&beside) >= 0)
                tried[n++] = beside;
        /* Installed, it is not beside retirectl (/usr/bin) but here. */
        if (n == 0 || !streq(beside, PKGLIBEXECDIR "/" HELPER))
                tried[n++] = PKGLIBEXECDIR "/" HELPER;
        for (size_t i = 0; i < n; i++) {
                /* Returns only when it failed. */
                (void) execv(tried[i], saved_argv);
                errors[i] = errno;
        }
        fprintf(stderr, "retirectl: plan --live runs %s, which could not be run from %s (%s)", HELPER, tried[0],
                strerror(errors[0]));
        if (n > 1)
                fprintf(stderr, " or %s (%s)", tried[1], strerror(errors[1]));
        fprintf(stderr, ": install it as retirectl was (make install, or the retired package), "
                "or build it beside this retirectl (make)\n");
        return EXIT_ERROR;
}
