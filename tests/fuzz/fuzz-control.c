/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for control_parse() (daemon/control.c): the parser of
 * the one request line a client sends on the control socket.
 *
 * The input is the line as received (on_client passes everything up to and
 * including the first '\n'; here any bytes, any length, NULs included), in
 * a buffer of exactly its size so ASan catches any read past it.  verb and
 * arg are exactly the sizes the prototype promises, also heap-allocated so
 * a write past them is caught.
 *
 * Checked: the result is 0, -EBADMSG or -E2BIG; on success verb is 1 to
 * CONTROL_MAX_VERB lowercase ASCII letters and arg is empty or 1 to
 * CONTROL_MAX_ARG isgraph() characters, both NUL-terminated, and the line
 * is exactly "verb" or "verb arg", optionally followed by one '\n'. */

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "macro.h"

#define CHECK(cond) do { if (!(cond)) { \
        fprintf(stderr, "fuzz-control: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *line = malloc(size ? size : 1);
        _cleanup_free_ char *verb = malloc(CONTROL_MAX_VERB + 1);
        _cleanup_free_ char *arg = malloc(CONTROL_MAX_ARG + 1);
        size_t vl, al, body;
        int r;

        if (!line || !verb || !arg)
                return 0;
        memcpy(line, data, size);
        memset(verb, 'X', CONTROL_MAX_VERB + 1);
        memset(arg, 'X', CONTROL_MAX_ARG + 1);

        r = control_parse(line, size, verb, arg);
        CHECK(r == 0 || r == -EBADMSG || r == -E2BIG);
        if (r < 0)
                return 0;

        vl = strnlen(verb, CONTROL_MAX_VERB + 1);
        al = strnlen(arg, CONTROL_MAX_ARG + 1);
        CHECK(vl >= 1 && vl <= CONTROL_MAX_VERB);
        CHECK(al <= CONTROL_MAX_ARG);
        for (size_t i = 0; i < vl; i++)
                CHECK(verb[i] >= 'a' && verb[i] <= 'z');
        for (size_t i = 0; i < al; i++)
                CHECK(isprint((unsigned char) arg[i]));
        CHECK(al == 0 || (isgraph((unsigned char) arg[0]) && isgraph((unsigned char) arg[al - 1])));

        /* Nothing was dropped or invented: the line is "verb[ arg][\n]". */
        body = size > 0 && data[size - 1] == '\n' ? size - 1 : size;
        CHECK(body == vl + (al ? 1 + al : 0));
        CHECK(memcmp(data, verb, vl) == 0);
        if (al) {
                CHECK(data[vl] == ' ');
                CHECK(memcmp(data + vl + 1, arg, al) == 0);
        }
        return 0;
}
