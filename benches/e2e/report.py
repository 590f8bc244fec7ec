#!/usr/bin/env python3
"""Summarises benches/e2e/run.sh results: report.py RESULTS_DIR prints the Markdown table and the targets;
report.py --s3 RESULTS_DIR does the same for benches/e2e/s3.sh (cairn against restic on one S3 server).

Reads raw.tsv (scenario, tool, run, wall s, user s, sys s, peak RSS KiB) and bytes.tsv (point, tool, repository
bytes). Wall and CPU times are medians over the runs, peak RSS the largest of any run; ratios are "peer / cairn",
so above 1 means cairn is ahead.
"""

import statistics
import sys
from collections import defaultdict

TOOLS = ["cairn", "restic", "borg"]
SCENARIOS = [
    ("files1", "first backup, file store", "cp-sync"),
    ("db1", "first backup, day 1 dump stream", "pg_dump"),
    ("day2", "next day: file store + dump", None),
    ("db2", "next day's dump alone", None),
    ("small-first", "first backup, 100k-file tree (1 run)", None),
    ("small-again", "unchanged re-backup, 100k files", "walk"),
    ("restore", "restore of the file store + sync", "cp-sync"),
    ("dump", "day 2 dump written out of the repository + sync", "cp-dump"),
]
LIMITS = {"cp-sync": ("cp", "`cp -a` + `sync` of the file store"),
          "walk": ("find", "`find -printf` walk of the 100k-file tree"),
          "pg_dump": ("pg_dump", "`pg_dump -Fc -Z0 > /dev/null` (day 2 database)"),
          "cp-dump": ("cp", "`cp` + `sync` of the day 2 dump file")}
STORED = {"day1": "after day 1 (file store + dump)", "day2": "after both days",
          "dump_added": "added by the next day's dump"}


def load(results):
    runs = defaultdict(list)
    with open(f"{results}/raw.tsv") as f:
        for line in f:
            scen, tool, _run, wall, user, sys_, rss = line.split("\t")
            runs[scen, tool].append((float(wall), float(user) + float(sys_), int(rss) / 1024))
    stats = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), max(r[2] for r in v))
             for k, v in runs.items()}
    counts = {k: len(v) for k, v in runs.items()}
    sizes = defaultdict(list)
    with open(f"{results}/bytes.tsv") as f:
        for line in f:
            point, tool, n = line.split("\t")
            sizes[point, tool].append(int(n))
    stored = {k: statistics.median(v) for k, v in sizes.items()}
    for tool in TOOLS:
        if ("dumps2", tool) in stored:
            stored["dump_added", tool] = statistics.median(
                b - a for a, b in zip(sizes["dumps1", tool], sizes["dumps2", tool]))
    return stats, counts, stored


def mb(n):
    return f"{n / 1e6:,.1f}"


def table(stats, counts):
    out = ["| measurement | tool | wall s | CPU s | peak RSS MB | peer / cairn: wall | CPU | cairn / limit |",
           "|---|---|--:|--:|--:|--:|--:|--:|"]
    for scen, title, limit in SCENARIOS:
        base = stats.get((scen, "cairn"))
        for tool in TOOLS:
            if (scen, tool) not in stats:
                continue
            wall, cpu, rss = stats[scen, tool]
            row = [title if tool == "cairn" else "", tool, f"{wall:.2f}", f"{cpu:.2f}", f"{rss:.0f}"]
            if tool != "cairn" and base:
                row += [f"{wall / base[0]:.2f}x", f"{cpu / base[1]:.2f}x"]
            else:
                row += ["", ""]
            lim = stats.get((limit, LIMITS[limit][0])) if limit else None
            row.append(f"{wall / lim[0]:.2f}x" if tool == "cairn" and lim else "")
            out.append("| " + " | ".join(row) + " |")
    for key, (tool, title) in LIMITS.items():
        if (key, tool) in stats:
            wall, cpu, rss = stats[key, tool]
            out.append(f"| {title} | – | {wall:.2f} | {cpu:.2f} | {rss:.0f} | | | |")
    n = max(counts.values())
    out.append(f"\nWall and CPU: medians of {n} runs (unless marked); peak RSS: the largest of any run. "
               "peer / cairn above 1 means cairn is faster.")
    return "\n".join(out)


def stored_table(stored):
    out = ["| repository bytes | cairn MB | restic MB | borg MB | restic / cairn | borg / cairn |",
           "|---|--:|--:|--:|--:|--:|"]
    for point, title in STORED.items():
        sizes = [stored.get((point, tool)) for tool in TOOLS]
        if sizes[0] is None:
            continue
        row = [title] + [mb(n) if n is not None else "" for n in sizes]
        row += [f"{n / sizes[0]:.2f}x" if n else "" for n in sizes[1:]]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def targets(stats, stored):
    s = lambda scen, tool="cairn": stats.get((scen, tool), (float("nan"),) * 3)
    rows = []

    def check(name, ok, detail):
        rows.append(f"| {name} | {'met' if ok else '**missed**'} | {detail} |")

    w, c = s("files1")[:2]
    cp = s("cp-sync", "cp")[0]
    check("file store first backup within 1.3x of cp -a + sync", w <= 1.3 * cp, f"{w:.2f} s vs {cp:.2f} s ({w / cp:.2f}x)")
    for peer in ("borg", "restic"):
        check(f"file store first backup not slower than {peer}", w <= s("files1", peer)[0],
              f"{w:.2f} s vs {s('files1', peer)[0]:.2f} s")
    check("file store CPU at most half of borg's", c <= 0.5 * s("files1", "borg")[1],
          f"{c:.2f} vs {s('files1', 'borg')[1]:.2f} CPU-s ({c / s('files1', 'borg')[1]:.2f})")
    check("file store CPU at most a quarter of restic's", c <= 0.25 * s("files1", "restic")[1],
          f"{c:.2f} vs {s('files1', 'restic')[1]:.2f} CPU-s ({c / s('files1', 'restic')[1]:.2f})")
    for peer in ("borg", "restic"):
        r = s("db1", peer)[0] / s("db1")[0]
        check(f"dump stream >= 2.5x faster than {peer}", r >= 2.5, f"{r:.2f}x")
    r = s("small-again")[0] / s("walk", "find")[0]
    check("unchanged 100k re-backup within 3x of the walk", r <= 3, f"{s('small-again')[0]:.2f} s vs "
          f"{s('walk', 'find')[0]:.2f} s ({r:.2f}x)")
    for peer in ("borg", "restic"):
        r = s("day2", peer)[0] / s("day2")[0]
        check(f"next-day backup >= 2x faster than {peer}", r >= 2, f"{r:.2f}x")
    w = s("restore")[0]
    check("restore within 1.3x of cp -a + sync", w <= 1.3 * cp, f"{w:.2f} s vs {cp:.2f} s ({w / cp:.2f}x)")
    for peer in ("borg", "restic"):
        r = s("restore", peer)[0] / w
        check(f"restore >= 1.5x faster than {peer}", r >= 1.5, f"{r:.2f}x")
    for peer in ("borg", "restic"):
        a, b = stored.get(("day2", "cairn"), 0), stored.get(("day2", peer), 0)
        check(f"stored after both days <= {peer}", a <= b, f"{mb(a)} MB vs {mb(b)} MB")
        a, b = stored.get(("dump_added", "cairn"), 0), stored.get(("dump_added", peer), 0)
        check(f"next day's dump adds <= half of {peer}", a <= 0.5 * b, f"{mb(a)} MB vs {mb(b)} MB ({a / b:.2f})")
    peak = max(v[2] for (scen, tool), v in stats.items() if tool == "cairn")
    check("cairn peak RSS < 150 MB", peak < 150, f"{peak:.0f} MB (largest of any run)")
    return "| target | | measured |\n|---|---|---|\n" + "\n".join(rows)


S3_SCENARIOS = [("files", "backup of the file store"), ("stream", "backup of the day 1 dump stream"),
                ("restore", "restore of the file store + sync"), ("dump", "the dump written back out + sync")]


def s3_report(results):
    """The S3 table: each step of cairn and restic, and the target (cairn at least 2x faster) per step."""
    runs = defaultdict(list)
    with open(f"{results}/raw.tsv") as f:
        for line in f:
            scen, tool, _run, wall, user, sys_, rss = line.split("\t")
            runs[scen, tool].append((float(wall), float(user) + float(sys_), int(rss) / 1024))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), max(r[2] for r in v))
           for k, v in runs.items()}
    out = ["| step | tool | wall s | CPU s | peak RSS MB | restic / cairn: wall | CPU | target: >= 2x |",
           "|---|---|--:|--:|--:|--:|--:|---|"]
    for scen, title in S3_SCENARIOS:
        if (scen, "cairn") not in med or (scen, "restic") not in med:
            continue
        c, r = med[scen, "cairn"], med[scen, "restic"]
        out.append(f"| {title} | cairn | {c[0]:.2f} | {c[1]:.2f} | {c[2]:.0f} | | | |")
        ratio = r[0] / c[0]
        out.append(f"| | restic | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.0f} | {ratio:.2f}x | {r[1] / c[1]:.2f}x | "
                   f"{'met' if ratio >= 2 else '**missed**'} |")
    peak = max((v[2] for (_, tool), v in med.items() if tool == "cairn"), default=float("nan"))
    out.append(f"| cairn peak RSS < 150 MB (largest of any step and run) | | | | {peak:.0f} | | | "
               f"{'met' if peak < 150 else '**missed**'} |")
    n = max(len(v) for v in runs.values())
    out.append(f"\nWall and CPU: medians of {n} runs; peak RSS: the largest of any run.")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--s3":
        print(s3_report(sys.argv[2]))
        sys.exit(0)
    stats, counts, stored = load(sys.argv[1])
    print(table(stats, counts))
    print()
    print(stored_table(stored))
    print()
    print(targets(stats, stored))
