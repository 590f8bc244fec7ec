#!/usr/bin/env python3
"""Deterministic file corpora for benches/e2e/run.sh (see BENCHMARKS.md).

    gen_files.py filestore OUT_DIR   an Odoo-like file store (OUT_DIR/filestore/<xx>/<sha1>) plus the next
                                     day's changes: OUT_DIR/day2-added/ (1% new files, same layout) and
                                     OUT_DIR/day2-removed.txt (0.5% of the files, relative paths)
    gen_files.py small OUT_DIR       100,000 small files in 100 x 10 directories (OUT_DIR/small/...)
    gen_files.py mixed OUT_DIR [N]   the second corpus shape (restore speed, issue 12): N files (default
                                     6,000, about 2.1 GB) in 60 directories (OUT_DIR/mixed/dNN/...), sizes
                                     log-normal (median 140 KiB, mean about 350 KiB, at most 16 MiB), 45%
                                     random bytes and 55% text

Sizes are log-uniform between 2 KiB and 2 MiB (most attachments are small, most bytes are in large ones).
Half the files are random bytes (already compressed data: JPEG, PDF, ZIP), half are text built from a word
list (HTML, XML, CSV, plain text), which zstd shrinks about 3x. Every byte comes from random.Random(seed), so
the corpus is the same on every machine.
"""

import hashlib
import math
import os
import random
import sys

FILES = 4000
ADDED = FILES // 100  # "next day": 1% new attachments
REMOVED = FILES // 200  # and 0.5% deleted ones
MIN_SIZE, MAX_SIZE = 2 * 1024, 2 * 1024 * 1024
SMALL_DIRS, SMALL_SUBDIRS, SMALL_PER_DIR = 100, 10, 100
MIXED_MEDIAN = 140 * 1024


def vocabulary(rng):
    """65536 two-word phrases over a 3000-word vocabulary, a few with line breaks or markup."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 6, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9, 1.5, 1, 0.8, 0.2,
               0.2, 0.1, 0.1]
    words = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(3000)]
    seps = [" "] * 40 + [", ", ". ", ".\n", "\n", "</p>\n<p>", "; ", " - ", "\t"]
    return [rng.choice(words) + rng.choice(seps) + rng.choice(words) + " " for _ in range(65536)]


def text(rng, phrases, size):
    picks = memoryview(rng.randbytes(2 * (size // 8 + 2))).cast("H")
    return "".join(map(phrases.__getitem__, picks)).encode()[:size]


def attachment(rng, phrases):
    size = int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))))
    if rng.random() < 0.5:
        return rng.randbytes(size)
    return text(rng, phrases, size)


def write_store(root, rng, phrases, count):
    """Writes `count` attachments named like Odoo does (sha1 of the content); returns their relative paths."""
    paths = []
    for _ in range(count):
        data = attachment(rng, phrases)
        name = hashlib.sha1(data).hexdigest()
        rel = os.path.join(name[:2], name)
        os.makedirs(os.path.join(root, name[:2]), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        paths.append(rel)
    return paths


def filestore(out):
    rng = random.Random(20261124)
    phrases = vocabulary(rng)
    paths = write_store(os.path.join(out, "filestore"), rng, phrases, FILES)
    write_store(os.path.join(out, "day2-added"), random.Random(20261125), phrases, ADDED)
    removed = random.Random(7).sample(sorted(paths), REMOVED)
    with open(os.path.join(out, "day2-removed.txt"), "w") as f:
        f.write("".join(p + "\n" for p in sorted(removed)))


def small(out):
    rng = random.Random(100000)
    phrases = vocabulary(rng)
    for d in range(SMALL_DIRS):
        for s in range(SMALL_SUBDIRS):
            dir_ = os.path.join(out, "small", f"d{d:03}", f"s{s:02}")
            os.makedirs(dir_, exist_ok=True)
            for i in range(SMALL_PER_DIR):
                size = int(math.exp(rng.uniform(math.log(64), math.log(8 * 1024))))
                with open(os.path.join(dir_, f"f{i:03}.txt"), "wb") as f:
                    f.write(text(rng, phrases, size))


def mixed(out, count=6000):
    rng = random.Random(6000)
    phrases = vocabulary(rng)
    for i in range(count):
        dir_ = os.path.join(out, "mixed", f"d{i % 60:02}")
        os.makedirs(dir_, exist_ok=True)
        size = min(int(rng.lognormvariate(math.log(MIXED_MEDIAN), 1.35)), 16 << 20)
        data = rng.randbytes(size) if rng.random() < 0.45 else text(rng, phrases, size)
        with open(os.path.join(dir_, f"f{i:05}.bin"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    kinds = {"filestore": filestore, "small": small, "mixed": mixed}
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in kinds or (len(sys.argv) == 4 and sys.argv[1] != "mixed"):
        sys.exit(__doc__)
    kinds[sys.argv[1]](sys.argv[2], *map(int, sys.argv[3:]))
