#!/usr/bin/env python3
"""Markdown summary of benches/e2e/delta_week.sh: DATA CORPUS..."""
import statistics
import sys

data, corpora = sys.argv[1], sys.argv[2:]
TOOLS = ["cairn", "borg", "restic"]


def load(path):
    rows = {}
    for line in open(path):
        key, *vals = line.rstrip("\n").split("\t")
        rows[key] = vals
    return rows


for c in corpora:
    r = load(f"{data}/{c}.tsv")
    days = sorted(int(k.split()[1]) for k in r if k.startswith("dump ") and k.split()[1].isdigit())
    mb = lambda b: b / 1e6
    print(f"\n### {c}: dump {mb(int(r['dump 1'][0])):.1f} MB on day 1, {len(days) - 1} daily drifts\n")
    print("| tool | day 1 stored MB | next day added MB | 7 drifts added MB | total MB | "
          "day 1 backup s | drift backup s (median) | peak RSS MB |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    added = {t: [int(r[f"added {t} {d}"][0]) for d in days] for t in TOOLS}
    for t in TOOLS:
        times = [float(r[f"time {t} {d}"][0]) for d in days]
        rss = max(int(r[f"time {t} {d}"][1]) for d in days) / 1024
        a = added[t]
        print(f"| {t} | {mb(a[0]):.1f} | {mb(a[1]):.2f} | {mb(sum(a[1:])):.2f} | {mb(sum(a)):.1f} | "
              f"{times[0]:.2f} | {statistics.median(times[1:]):.2f} | {rss:.0f} |")
    ca = added["cairn"]
    for peer in ["borg", "restic"]:
        pa = added[peer]
        print(f"\ncairn / {peer}: day 1 {ca[0] / pa[0]:.2f}x, next day {ca[1] / pa[1]:.2f}x, "
              f"7 drifts {sum(ca[1:]) / sum(pa[1:]):.2f}x, total {sum(ca) / sum(pa):.2f}x", end="")
    ct = statistics.median(float(r[f"time cairn {d}"][0]) for d in days[1:])
    for peer in ["borg", "restic"]:
        pt = statistics.median(float(r[f"time {peer} {d}"][0]) for d in days[1:])
        print(f"; drift backup {peer} / cairn {pt / ct:.1f}x", end="")
    print()
    kinds = {k.split()[2]: v for k, v in r.items() if k.startswith("blobs kind")}
    if "2" in kinds:
        print(f"\ndelta blobs: {kinds['2'][0]} ({mb(int(kinds['2'][1])):.2f} MB stored), "
              f"plain data blobs: {kinds.get('0', ['0', '0'])[0]}")
    dd = [float(r[f"dump delta {i}"][0]) for i in (1, 2, 3)]
    dp = [float(r[f"dump plain {i}"][0]) for i in (1, 2, 3)]
    rd = max(int(r[f"dump delta {i}"][1]) for i in (1, 2, 3)) / 1024
    rp = max(int(r[f"dump plain {i}"][1]) for i in (1, 2, 3)) / 1024
    print(f"\nlast day's stream written out (`cairn dump`, median of 3): from the week's repository "
          f"{statistics.median(dd):.2f} s ({rd:.0f} MB peak RSS), from a repository holding it plain "
          f"{statistics.median(dp):.2f} s ({rp:.0f} MB): {statistics.median(dd) / statistics.median(dp):.2f}x")
