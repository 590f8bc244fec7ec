#!/bin/sh
# Local restore speed against `cp -a` (BENCHMARKS.md, "Local restore against cp -a"), on the second corpus
# shape (gen_files.py mixed: 6,000 files, 2.1 GB, 45% incompressible, log-normal sizes).
#
#   restore_vs_cp.sh CAIRN_BINARY [RUNS] [DATA_DIR]
#
# Each run: remove the previous copy, sync, drop the page cache (needs root; skipped with a note otherwise),
# then time `cairn restore` + sync and, alternately, `cp -a` + sync. Prints every time and the medians.
set -eu
cairn=$(realpath "$1"); runs=${2:-5}; data=${3:-/tmp/cairn-restore-bench}
here=$(dirname "$(realpath "$0")")
mkdir -p "$data"; cd "$data"
[ -d corpus/mixed ] || python3 "$here/gen_files.py" mixed corpus
if [ ! -d repo ]; then
  "$cairn" --repo repo --quiet init >/dev/null
  "$cairn" --repo repo --quiet backup corpus/mixed >/dev/null
fi
drop() {
  sync
  if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo "note: page cache not dropped (not root)" >&2; fi
}
timed() { # timed TARGET CMD...: prints the seconds of CMD + sync
  target=$1; shift
  rm -rf "$target"; drop
  s=$(date +%s.%N); "$@"; sync; e=$(date +%s.%N)
  echo "$s $e" | awk '{printf "%.3f\n", $2-$1}'
}
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
: >restore.times; : >cp.times
i=0
while [ "$i" -lt "$runs" ]; do
  timed out-restore "$cairn" --repo repo --quiet restore latest --target out-restore >>restore.times
  timed out-cp cp -a corpus/mixed out-cp >>cp.times
  i=$((i + 1))
done
diff -r corpus/mixed out-restore/mixed >/dev/null || { echo "the restored tree differs from the source" >&2; exit 1; }
echo "restore + sync: $(tr '\n' ' ' <restore.times)-> median $(median <restore.times) s"
echo "cp -a + sync:   $(tr '\n' ' ' <cp.times)-> median $(median <cp.times) s"
