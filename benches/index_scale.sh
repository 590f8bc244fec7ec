#!/usr/bin/env bash
# Memory and speed of a backup as the repository grows (BENCHMARKS.md, "At 10M chunks"): the same backup
# into an empty repository and into one whose index already holds 10M chunks (the index file built by
# `CAIRN_BENCH_10M=1 cargo bench --bench index`, copied in; its chunks are not the tree's, so every lookup
# searches the whole 10M-row index and misses, as for new data). Usage:
#
#   benches/index_scale.sh [TREE]    # TREE defaults to the e2e corpus's 100k-file tree (100k lookups)
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
DATA=${CAIRN_BENCH_DATA:-/work/bench-data}
TREE=${1:-$DATA/corpus/small}
INDEX10M=$TOP/target/tmp/bench-index-10M.sqlite
CAIRN=$TOP/target/release/cairn
REPS=${REPS:-3}

[ -f "$INDEX10M" ] || { echo "missing $INDEX10M: run CAIRN_BENCH_10M=1 cargo bench --bench index" >&2; exit 1; }
(cd "$TOP" && cargo build --release --quiet)

for kind in empty 10M; do
  for run in $(seq "$REPS"); do
    repo=$DATA/repos/scale-$kind
    rm -rf "$repo"
    "$CAIRN" --repo "$repo" --quiet init
    if [ "$kind" = 10M ]; then
      rm -f "$repo"/index.sqlite*
      cp "$INDEX10M" "$repo/index.sqlite"
    fi
    find "$TREE" -type f -print0 | xargs -0 cat >/dev/null
    sync
    /usr/bin/time -f "$kind run $run: %e s wall, %U s user, %S s sys, %M KB peak RSS" \
      "$CAIRN" --repo "$repo" --quiet backup "$TREE" >/dev/null
    rm -rf "$repo"
  done
done
