#!/usr/bin/env bash
# Peak memory of the commands that visit every blob a repository's snapshots reference (`check`, `stats`,
# `prune`, `copy` into an empty repository that shares the keys), as the number of blobs grows (BENCHMARKS.md, "Walks over every blob: memory"). A plaintext
# repository whose stream chunker is set to FastCDC's smallest sizes (64 / 256 / 1024 bytes) takes
# snapshots of 8 MiB of random bytes each from stdin (about 27,000 chunks per snapshot), so the blob count
# grows with the number of snapshots while each snapshot, and its chunk list, stays the same size. Usage:
#
#   benches/walk_memory.sh [CAIRN...]   # binaries to compare (default: target/release/cairn);
#                                       # SNAPSHOTS="4 32" picks the repository sizes
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
DATA=${CAIRN_BENCH_DATA:-/work/bench-data}/walk-memory
SNAPSHOTS=${SNAPSHOTS:-"4 32"}
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("${CARGO_TARGET_DIR:-$TOP/target}/release/cairn")

rss() { # command... -> "peak-RSS-MB wall-s"
  /usr/bin/time -f "%M %e" -o "$DATA/time" "$@" >/dev/null
  awk '{printf "%.1f MB, %.2f s", $1 / 1024, $2}' "$DATA/time"
}

mkdir -p "$DATA"
for n in $SNAPSHOTS; do
  repo=$DATA/repo-$n
  rm -rf "$repo"
  "${BINS[0]}" --repo "$repo" --quiet init --insecure-no-encryption
  python3 - "$repo/config" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["chunker_streams"] = {"min_size": 64, "avg_size": 256, "max_size": 1024}
json.dump(cfg, open(sys.argv[1], "w"))
PY
  for i in $(seq "$n"); do
    head -c 8M /dev/urandom | "${BINS[0]}" --repo "$repo" --quiet backup --stdin --stdin-name "blob$i"
  done
  blobs=$("${BINS[0]}" --repo "$repo" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["blob_count"])')
  for bin in "${BINS[@]}"; do
    echo "$n snapshots, $blobs blobs, $bin:"
    echo "  check:           $(rss "$bin" --repo "$repo" --quiet check)"
    echo "  stats:           $(rss "$bin" --repo "$repo" --quiet stats)"
    echo "  prune --dry-run: $(rss "$bin" --repo "$repo" --quiet prune --dry-run)"
    rm -rf "$repo-copy"
    "$bin" --repo "$repo-copy" --quiet init --from-repo "$repo"
    echo "  copy:            $(rss "$bin" --repo "$repo-copy" --quiet copy --from-repo "$repo")"
    rm -rf "$repo-copy"
  done
  rm -rf "$repo"
done
