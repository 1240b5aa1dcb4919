/* SPDX-License-Identifier: MIT */
/* Benchmark baseline: what libconfig alone needs to hold one file's tree
 * (config_read_file() and nothing else), against which retirectl's peak
 * for the same file is measured. */

#include <libconfig.h>
#include <stdio.h>

int main(int argc, char **argv) {
        config_t cfg;
        int ok;

        if (argc != 2) {
                fprintf(stderr, "usage: libconfig-read FILE\n");
                return 1;
        }
        config_init(&cfg);
        ok = config_read_file(&cfg, argv[1]) == CONFIG_TRUE;
        if (!ok)
                fprintf(stderr, "%s:%d: %s\n", argv[1], config_error_line(&cfg), config_error_text(&cfg));
        config_destroy(&cfg);
        return !ok;
}
