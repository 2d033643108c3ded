#!/usr/bin/env python3
"""dev/ab-table.py [PREFIX...]: the A/B table of gpu_bench.py runs, one column per run.

Reads h/<prefix>-<tag>.txt under the current folder (prefixes default gb), one row per (layer, T):
the floor (us) and each run's dmoe_us. Used by the dev/s1*-*.sh device scripts."""
import collections
import glob
import re
import sys

prefixes = sys.argv[1:] or ["gb"]
for pre in prefixes:
    cells = collections.defaultdict(dict)
    for f in sorted(glob.glob("h/%s-*.txt" % pre)):
        tag = f[len("h/%s-" % pre):-4]
        for line in open(f):
            m = re.match(r"^([a-z0-9-]+) +(\d+) +([\d.]+) +(\S+) +([\d.]+) +([\d.]+)", line)
            if m:
                cells[(m.group(1), int(m.group(2)))][tag] = (float(m.group(3)), float(m.group(6)))
    tags = sorted({t for c in cells.values() for t in c})
    print("%-16s %5s %8s " % ("layer", "T", "floor") + " ".join("%11s" % t for t in tags))
    for k in sorted(cells):
        c = cells[k]
        fl = next(iter(c.values()))[1]
        print("%-16s %5d %8.1f " % (k[0], k[1], fl) +
              " ".join("%11s" % ("%.1f" % c[t][0] if t in c else "-") for t in tags))
