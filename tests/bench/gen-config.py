#!/usr/bin/python3
"""Writes a retired.conf declaring N phones by number (from START on), every
tenth also by id, for the benchmarks.  With a PER_FILE count the releases go
into releases.d/ files of that many entries each, the way operators keep one
file per change request.  Usage: gen-config.py FILE N START LEDGER [PER_FILE]"""
import os, sys, uuid

path, n, start, ledger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
per_file = int(sys.argv[5]) if len(sys.argv) > 5 else 0


def entries(lo, hi):
    for i in range(lo, hi):
        idpart = f' id = "{uuid.UUID(int=i, version=4)}";' if i % 10 == 0 else ""
        yield f'  {{ number = "+34 9{i:08d}";{idpart} reason = "bench {i}"; }}'


dropins = os.path.join(os.path.dirname(path), os.path.basename(path) + ".d")
with open(path, "w") as f:
    f.write(f'ledger = "{ledger}";\nreleases_dir = "{dropins}";\n'
            'safety: { max_new_releases = 1000000; hold = 0; };\n')
    os.makedirs(dropins, exist_ok=True)
    if not per_file:
        f.write("releases = (\n" + ",\n".join(entries(start, start + n)) + "\n);\n")
    else:
        for k, lo in enumerate(range(start, start + n, per_file)):
            with open(os.path.join(dropins, f"{k:06d}.conf"), "w") as d:
                d.write("releases = (\n" + ",\n".join(entries(lo, min(lo + per_file, start + n))) + "\n);\n")
