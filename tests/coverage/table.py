#!/usr/bin/python3
"""Prints gcovr's JSON summary (make coverage) as one table of lines and
branches per file: gcovr's text report shows one or the other, not both."""

import json
import sys


def pct(covered, total):
    return "%.1f %% (%d/%d)" % (100.0 * covered / total, covered, total) if total else "-"


def main(path):
    with open(path) as f:
        s = json.load(f)
    rows = [(x["filename"], pct(x["line_covered"], x["line_total"]), pct(x["branch_covered"], x["branch_total"]))
            for x in sorted(s["files"], key=lambda x: x["filename"])]
    rows.append(("all of them", pct(s["line_covered"], s["line_total"]), pct(s["branch_covered"], s["branch_total"])))
    print("| file | lines | branches |\n|---|---|---|")
    for r in rows:
        print("| %s | %s | %s |" % r)


if __name__ == "__main__":
    main(sys.argv[1])
