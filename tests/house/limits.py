#!/usr/bin/python3
"""The house's limits (HACKING.md): no source file above 1,100 lines and no
function above 80, in daemon/, state/ and conf/.  A function is what the
project's style makes it: a line at column 0 ending in "{" that is not a
struct, enum or initialiser, to the "}" at column 0 that closes it.
Exits 1 naming each file or function past its limit."""

import glob
import os
import re
import sys

FILE_MAX = 1100
FUNC_MAX = 80
TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
NOT_A_FUNCTION = re.compile(r"^(typedef|struct|enum|union|static const|const|#)|=\s*\{$")


def functions(lines):
    """(name, first line, length) of each function body in the file; a
    signature may go on over several lines, a prototype ends in ";"."""
    start = name = None
    body = False
    for i, line in enumerate(lines, 1):
        if start is None:
            if line[:1].isalpha() and "(" in line and not NOT_A_FUNCTION.search(line) and not line.endswith(";"):
                m = re.search(r"(\w+)\s*\(", line)
                start, name, body = i, m.group(1) if m else "?", line.endswith("{")
        elif not body:
            if line.endswith(";"):
                start = None
            body = line.endswith("{")
        elif line == "}":
            yield name, start, i - start + 1
            start = None


def main():
    bad = []
    for path in sorted(glob.glob(os.path.join(TOP, "*", "*.[ch]"))):
        rel = os.path.relpath(path, TOP)
        if rel.split(os.sep)[0] not in ("daemon", "state", "conf"):
            continue
        with open(path) as f:
            lines = f.read().split("\n")
        if len(lines) - 1 > FILE_MAX:
            bad.append("%s: %d lines (at most %d)" % (rel, len(lines) - 1, FILE_MAX))
        for name, first, n in functions(lines):
            if n > FUNC_MAX:
                bad.append("%s:%d: %s() is %d lines (at most %d)" % (rel, first, name, n, FUNC_MAX))
    for b in bad:
        print("house: " + b)
    if not bad:
        print("house: every file at most %d lines, every function at most %d" % (FILE_MAX, FUNC_MAX))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
