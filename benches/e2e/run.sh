#!/usr/bin/env bash
# End-to-end comparison of cairn with restic and borg on an instance-like corpus (BENCHMARKS.md,
# "End-to-end comparison"). Usage:
#
#   benches/e2e/run.sh            # everything: corpus (cached), 3 runs of each measurement, the table
#   REPS=1 benches/e2e/run.sh     # a quicker, noisier look
#   benches/e2e/run.sh encryption # first backup + restore of the file store: cairn encrypted, cairn
#                                 # plaintext (--insecure-no-encryption) and restic, side by side
#                                 # (REPS_ENCRYPTION=1); `encryption small`: of the 100,000 small files
#
# Data (corpora, repositories, logs, results) lives in $CAIRN_BENCH_DATA (default /work/bench-data), outside
# any git tree. The corpus is generated once and reused while its generators are unchanged. Runs as root
# (apt-get, PostgreSQL via runuser). Prints one Markdown table; raw numbers stay in $DATA/results/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
SELF="$HERE/run.sh"
# shellcheck source=benches/e2e/fresh_fs.sh
. "$HERE/fresh_fs.sh"
DATA=${CAIRN_BENCH_DATA:-/work/bench-data}
REPS=${REPS:-3}
DB=${CAIRN_BENCH_DB:-cairn_bench_e2e}
CORPUS=$DATA/corpus
FS=$CORPUS/live/filestore # the file store's path never changes, so every tool finds its parent snapshot
SMALL=$CORPUS/small
REPOS=$DATA/repos
RESULTS=$DATA/results
LOGS=$DATA/logs
CAIRN=${CARGO_TARGET_DIR:-$TOP/target}/release/cairn
TOOLS=(cairn restic borg)

export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$DATA/cache/restic
# cairn encrypts by default: its password, and the index cache of an encrypted repository, like restic's.
export CAIRN_PASSWORD=bench XDG_CACHE_HOME=$DATA/cache/xdg
export BORG_PASSPHRASE='' BORG_BASE_DIR=$DATA/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
pg() { runuser -u postgres -- "$@"; }

# ---------------------------------------------------------------------------------------------------------
# One step of one tool, run under /usr/bin/time by `measure` (the script calls itself: `run.sh __step ...`).
# Every backup and restore ends with `sync`, like the `cp -a` + `sync` it is compared with.

step() {
  local what=$1 tool=$2 repo=$3 arg=${4:-}
  case "$what/$tool" in
    init/cairn) "$CAIRN" --repo "$repo" --quiet init ;;
    init/cairnplain) "$CAIRN" --repo "$repo" --quiet init --insecure-no-encryption ;;
    # cairnplain is cairn on a plaintext repository: every other step is cairn's.
    */cairnplain) step "$what" cairn "$repo" "${@:4}" ;;
    init/restic) restic -r "$repo" --quiet init ;;
    init/borg) borg init -e none "$repo" ;;
    # A tree: $arg is the path, $5 a unique archive name for borg.
    tree/cairn) "$CAIRN" --repo "$repo" --quiet backup --json "$arg" ;;
    tree/restic) restic -r "$repo" --quiet backup --tag files "$arg" ;;
    tree/borg) borg create -C zstd,3 "$repo::$5" "$arg" ;;
    # A stream: $arg is the dump file, read through a pipe as if it came from pg_dump.
    stream/cairn) "$CAIRN" --repo "$repo" --quiet backup --json --stdin-from-command --stdin-name db.dump -- cat "$arg" ;;
    stream/restic) cat "$arg" | restic -r "$repo" --quiet backup --tag db --stdin --stdin-filename db.dump ;;
    stream/borg) cat "$arg" | borg create -C zstd,3 --stdin-name db.dump "$repo::$5" - ;;
    # The next day: the file store and the new dump. cairn takes both in one snapshot; restic and borg
    # cannot mix paths and stdin in one snapshot, so they take two, one after the other.
    day2/cairn) "$CAIRN" --repo "$repo" --quiet backup --json --stdin-from-command --stdin-name db.dump "$FS" -- cat "$arg" ;;
    day2/*) step tree "$tool" "$repo" "$FS" files-2 && step stream "$tool" "$repo" "$arg" db-2 ;;
    # Restore the file store (the latest file snapshot) into $arg.
    restore/cairn) "$CAIRN" --repo "$repo" --quiet restore latest --target "$arg" ;;
    restore/restic) restic -r "$repo" --quiet restore latest --tag files --target "$arg" ;;
    restore/borg) mkdir -p "$arg" && cd "$arg" && borg extract "$repo::files-2" ;;
    # The day 2 dump written back out of the repository into the file $arg (what a restore feeds pg_restore).
    dump/cairn) "$CAIRN" --repo "$repo" dump latest db.dump >"$arg" ;;
    dump/restic) restic -r "$repo" --quiet dump --tag db latest /db.dump >"$arg" ;;
    dump/borg) borg extract --stdout "$repo::db-2" >"$arg" ;;
    *) echo "unknown step $what/$tool" >&2; return 2 ;;
  esac
}

if [ "${1:-}" = __step ]; then
  shift
  step "$@"
  sync
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# Measurement: wall, user, sys, peak RSS of a command and all its children, one line per run in raw.tsv.

measure() { # SCENARIO TOOL RUN CMD...
  local log=$LOGS/$1-$2-$3
  sync # what earlier steps left dirty is not this step's cost
  if ! /usr/bin/time -f '%e %U %S %M' -o "$log.time" "${@:4}" >"$log.log" 2>&1; then
    echo "FAILED: ${*:4} (see $log.log)" >&2
    tail -n 20 "$log.log" >&2
    exit 1
  fi
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$log.time")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$wall" "$user" "$sys" "$rss" >>"$RESULTS/raw.tsv"
  awk -v s="$1" -v t="$2" -v r="$3" -v w="$wall" -v u="$user" -v k="$sys" -v m="$rss" \
    'BEGIN { printf "  %-12s %-7s run %s: %7.2f s wall, %7.2f s CPU, %5d MB\n", s, t, r, w, u + k, m / 1024 }'
}

# Empties the page cache. On this VM class a page cache that grows into memory the guest never touched before
# makes every copy into it several times slower (cp -a + sync took 1.41 s, then 1.69, 1.99, 2.17, 2.20 s in
# five runs in a row), so the first backups and the cp -a limit each start from a dropped cache.
settle() { sync; echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# Reads a tree once, so every tool's first backup starts from the same warm page cache (whichever tool ran
# first used to pay for the cold reads alone).
warm() { find "$@" -type f -print0 | xargs -0 cat >/dev/null; }

stored() { # SCENARIO TOOL REPO: apparent size of the repository, in bytes
  printf '%s\t%s\t%s\n' "$1" "$2" "$(du -sb "$3" | cut -f1)" >>"$RESULTS/bytes.tsv"
}

fresh_repo() { # TOOL NAME -> prints the path of a new, empty repository
  local repo=$REPOS/$1-$2
  rm -rf "$repo"
  mkdir -p "$REPOS"
  "$SELF" __step init "$1" "$repo" >/dev/null
  echo "$repo"
}

# ---------------------------------------------------------------------------------------------------------
# Setup: tools, build, corpus.

setup_tools() {
  local missing=()
  command -v restic >/dev/null || missing+=(restic)
  command -v borg >/dev/null || missing+=(borgbackup)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  (cd "$TOP" && cargo build --release --quiet)
}

start_postgres() {
  pg pg_isready -q && return
  if [ -x "$TOP/scripts/pg-setup" ]; then "$TOP/scripts/pg-setup" >/dev/null; else pg_ctlcluster 15 main start; fi
  for _ in $(seq 30); do pg pg_isready -q && return; sleep 1; done
  echo "PostgreSQL did not start" >&2
  exit 1
}

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# The file store (day 1 state in $FS, the next day's changes beside it) and the 100k-file tree.
make_files() {
  local stamp
  stamp=$(stamp_of "$HERE/gen_files.py")
  if [ "$(cat "$CORPUS/files.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "generating the file store and the 100k-file tree..."
    rm -rf "$CORPUS/live" "$CORPUS/day2-added" "$CORPUS/day2-removed" "$CORPUS/day2-removed.txt" "$SMALL" \
      "$CORPUS/day.state"
    mkdir -p "$CORPUS/live"
    python3 "$HERE/gen_files.py" filestore "$CORPUS/live"
    mv "$CORPUS/live/day2-added" "$CORPUS/live/day2-removed.txt" "$CORPUS/"
    (cd "$CORPUS/day2-added" && find . -type f | sort) >"$CORPUS/day2-added.txt"
    python3 "$HERE/gen_files.py" small "$CORPUS"
    echo "$stamp" >"$CORPUS/files.stamp"
  fi
}

# Day 1 and day 2 dumps of the same database (left in its day 2 state for the pg_dump measurement).
make_dumps() {
  local stamp
  stamp=$(stamp_of "$HERE/db_day1.sql" "$HERE/db_day2.sql")
  local have_db
  have_db=$(pg psql -XAtc "SELECT 1 FROM pg_database WHERE datname = '$DB'")
  if [ "$(cat "$CORPUS/dumps.stamp" 2>/dev/null)" = "$stamp" ] && [ "$have_db" = 1 ]; then
    return
  fi
  echo "generating the database and its two dumps..."
  pg dropdb --if-exists "$DB"
  pg createdb "$DB"
  pg psql -qX -d "$DB" -f "$HERE/db_day1.sql" >/dev/null
  pg pg_dump --format=custom --compress=0 "$DB" >"$CORPUS/day1.dump"
  pg psql -qX -d "$DB" -f "$HERE/db_day2.sql" >/dev/null
  pg pg_dump --format=custom --compress=0 "$DB" >"$CORPUS/day2.dump"
  echo "$stamp" >"$CORPUS/dumps.stamp"
}

# Moves the file store to day 1 or day 2: 1% files added, 0.5% removed (attachments are never modified).
set_day() {
  local cur
  cur=$(cat "$CORPUS/day.state" 2>/dev/null || echo 1)
  [ "$cur" = "$1" ] && return
  local from_add=$CORPUS/day2-added to_add=$FS from_rm=$FS to_rm=$CORPUS/day2-removed
  if [ "$1" = 1 ]; then
    from_add=$FS to_add=$CORPUS/day2-added from_rm=$CORPUS/day2-removed to_rm=$FS
  fi
  while read -r rel; do
    mkdir -p "$(dirname "$to_add/$rel")" && mv "$from_add/$rel" "$to_add/$rel"
  done <"$CORPUS/day2-added.txt"
  while read -r rel; do
    mkdir -p "$(dirname "$to_rm/$rel")" && mv "$from_rm/$rel" "$to_rm/$rel"
  done <"$CORPUS/day2-removed.txt"
  echo "$1" >"$CORPUS/day.state"
}

machine() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "disk: $(df -h "$DATA" | awk 'NR==2 {print $1", "$2" total, "$4" free"}'), $(findmnt -no FSTYPE -T "$DATA")"
  echo "kernel: $(uname -r)"
  echo "cairn: $("$CAIRN" --version) ($(git -C "$TOP" rev-parse --short HEAD))"
  echo "restic: $(restic version | cut -d' ' -f2)"
  echo "borg: $(borg --version | cut -d' ' -f2)"
  echo "postgresql: $(pg psql -XAtc 'SHOW server_version' | cut -d' ' -f1)"
  echo "file store: $(find "$FS" -type f | wc -l) files, $(du -sb "$FS" | cut -f1) bytes"
  echo "small tree: $(find "$SMALL" -type f | wc -l) files, $(du -sb "$SMALL" | cut -f1) bytes"
  echo "dumps: day 1 $(stat -c %s "$CORPUS/day1.dump") bytes, day 2 $(stat -c %s "$CORPUS/day2.dump") bytes"
}

# ---------------------------------------------------------------------------------------------------------

main() {
  local started=$SECONDS
  setup_tools
  start_postgres
  mkdir -p "$CORPUS" "$RESULTS" "$LOGS"
  make_files
  make_dumps
  set_day 1
  drop_fs "$DATA/restore" && drop_fs "$DATA/cp"
  rm -rf "$REPOS" "$DATA/cache"
  : >"$RESULTS/raw.tsv"
  : >"$RESULTS/bytes.tsv"
  machine | tee "$RESULTS/machine.txt"

  echo "== day 1, day 2 and the dump pair, $REPS runs"
  local run tool repo
  for run in $(seq "$REPS"); do
    for tool in "${TOOLS[@]}"; do
      set_day 1
      repo=$(fresh_repo "$tool" main)
      settle
      warm "$FS" "$CORPUS/day1.dump" "$CORPUS/day2.dump"
      measure files1 "$tool" "$run" "$SELF" __step tree "$tool" "$repo" "$FS" files-1
      measure db1 "$tool" "$run" "$SELF" __step stream "$tool" "$repo" "$CORPUS/day1.dump" db-1
      stored day1 "$tool" "$repo"
      set_day 2
      measure day2 "$tool" "$run" "$SELF" __step day2 "$tool" "$repo" "$CORPUS/day2.dump"
      stored day2 "$tool" "$repo"
      # The next day's dump alone, into a repository holding only the day 1 dump: what the stream adds.
      repo=$(fresh_repo "$tool" dumps)
      "$SELF" __step stream "$tool" "$repo" "$CORPUS/day1.dump" db-1 >"$LOGS/dumps-$tool-$run.log" 2>&1
      stored dumps1 "$tool" "$repo"
      measure db2 "$tool" "$run" "$SELF" __step stream "$tool" "$repo" "$CORPUS/day2.dump" db-2
      stored dumps2 "$tool" "$repo"
      rm -rf "$repo"
    done
  done

  echo "== restore of the file store (day 2), $REPS runs"
  set_day 2
  local target=$DATA/restore/out
  for run in $(seq "$REPS"); do
    for tool in "${TOOLS[@]}"; do
      fresh_fs "$DATA/restore"
      measure restore "$tool" "$run" "$SELF" __step restore "$tool" "$REPOS/$tool-main" "$target"
      if [ "$run" = 1 ]; then # the restored tree must equal the source
        local got=$target/filestore
        [ "$tool" = cairn ] || got=$target$FS
        diff -rq "$FS" "$got" >/dev/null || { echo "restore by $tool differs from the source" >&2; exit 1; }
      fi
    done
  done
  drop_fs "$DATA/restore"

  echo "== the day 2 dump written out of each repository, $REPS runs"
  local out=$DATA/dump.out
  for run in $(seq "$REPS"); do
    for tool in "${TOOLS[@]}"; do
      rm -f "$out"
      measure dump "$tool" "$run" "$SELF" __step dump "$tool" "$REPOS/$tool-main" "$out"
      if [ "$run" = 1 ] && ! cmp -s "$CORPUS/day2.dump" "$out"; then
        echo "the dump written by $tool differs from the day 2 dump" >&2
        exit 1
      fi
    done
    rm -f "$out"
    measure cp-dump cp "$run" sh -c "cp '$CORPUS/day2.dump' '$out' && sync"
  done
  rm -f "$out"
  rm -rf "$REPOS"

  echo "== unchanged re-backup of the 100k-file tree, $REPS runs"
  for tool in "${TOOLS[@]}"; do
    repo=$(fresh_repo "$tool" small)
    warm "$SMALL"
    measure small-first "$tool" 1 "$SELF" __step tree "$tool" "$repo" "$SMALL" small-0
    for run in $(seq "$REPS"); do
      measure small-again "$tool" "$run" "$SELF" __step tree "$tool" "$repo" "$SMALL" "small-$run"
    done
    rm -rf "$repo"
  done
  rm -rf "$DATA/cache"

  echo "== physical limits, $REPS runs"
  # The walk and pg_dump read what earlier steps left cached; cp -a starts from a dropped cache, as the
  # first backups do.
  for run in $(seq "$REPS"); do
    measure walk find "$run" sh -c "find '$SMALL' -printf '%s %T@ %C@ %i\n' >/dev/null"
    measure pg_dump pg_dump "$run" sh -c "runuser -u postgres -- pg_dump --format=custom --compress=0 $DB >/dev/null"
  done
  for run in $(seq "$REPS"); do
    fresh_fs "$DATA/cp"
    settle
    warm "$FS"
    measure cp-sync cp "$run" sh -c "cp -a '$FS' '$DATA/cp/out' && sync"
  done
  drop_fs "$DATA/cp"
  set_day 1

  echo "== results ($((SECONDS - started)) s in all)"
  python3 "$HERE/report.py" "$RESULTS" | tee "$RESULTS/table.md"
}

# `run.sh encryption [small]`: what encryption costs. The first backup of the file store (or, with `small`,
# of the tree of 100,000 small files) and its restore, by cairn into an encrypted repository (the default),
# into a plaintext one, and by restic (which encrypts), one after the other in each run; a table of wall
# time, CPU and peak RSS with the ratios the targets are about.
encryption_main() {
  local shape=${1:-filestore}
  REPS=${REPS_ENCRYPTION:-1}
  RESULTS=$DATA/results-encryption
  local tree=$FS
  if [ "$shape" = small ]; then
    RESULTS=$DATA/results-encryption-small
    tree=$SMALL
  fi
  local tools=(cairn cairnplain restic) run tool repo target
  setup_tools
  mkdir -p "$CORPUS" "$RESULTS" "$LOGS"
  make_files
  set_day 1
  drop_fs "$DATA/restore"
  rm -rf "$REPOS" "$DATA/cache"
  : >"$RESULTS/raw.tsv"
  : >"$RESULTS/bytes.tsv"
  echo "cairn: $("$CAIRN" --version) ($(git -C "$TOP" rev-parse --short HEAD)); restic $(restic version | cut -d' ' -f2)"
  echo "$shape: $(find "$tree" -type f | wc -l) files, $(du -sb "$tree" | cut -f1) bytes; $(nproc) CPUs"
  for run in $(seq "$REPS"); do
    for tool in "${tools[@]}"; do
      repo=$(fresh_repo "$tool" enc)
      settle
      warm "$tree"
      measure files1 "$tool" "$run" "$SELF" __step tree "$tool" "$repo" "$tree" files-1
      stored files1 "$tool" "$repo"
    done
    # The restores take turns going first: the first restore of the script runs while the page cache grows
    # into guest memory nothing has touched yet, which this VM class charges as CPU time (1.3-1.9 s).
    local first=$(((run - 1) % ${#tools[@]}))
    for tool in "${tools[@]:first}" "${tools[@]:0:first}"; do
      target=$DATA/restore/out
      fresh_fs "$DATA/restore"
      settle
      measure restore "$tool" "$run" "$SELF" __step restore "$tool" "$REPOS/$tool-enc" "$target"
      local got=$target/$(basename "$tree")
      [ "$tool" = restic ] && got=$target$tree
      diff -rq "$tree" "$got" >/dev/null || { echo "restore by $tool differs from the source" >&2; exit 1; }
    done
  done
  drop_fs "$DATA/restore"
  rm -rf "$REPOS"
  # Medians per scenario and tool; ratios of encrypted cairn to plaintext cairn and to restic.
  python3 - "$RESULTS/raw.tsv" <<'PY' | tee "$RESULTS/table.md"
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
med = {}
for scen, tool, _, wall, user, sys_, rss in rows:
    med.setdefault((scen, tool), []).append((float(wall), float(user) + float(sys_), int(rss) / 1024))
print("| step | cairn encrypted | cairn plaintext | restic | encrypted / plaintext | restic / encrypted |")
print("|---|---|---|---|---|---|")
for scen in ("files1", "restore"):
    cell, walls = [], {}
    for tool in ("cairn", "cairnplain", "restic"):
        v = med[(scen, tool)]
        w, c, m = (statistics.median(x[i] for x in v) for i in range(3))
        walls[tool] = w
        cell.append(f"{w:.2f} s ({c:.2f} s CPU, {m:.0f} MB)")
    print(f"| {scen} | " + " | ".join(cell)
          + f" | {walls['cairn'] / walls['cairnplain']:.2f}x | {walls['restic'] / walls['cairn']:.2f}x |")
PY
}

if [ "${1:-}" = encryption ]; then
  encryption_main "${2:-}"
  exit 0
fi

# `run.sh __corpus`: only the corpus (for benches/e2e/s3.sh, which shares it).
if [ "${1:-}" = __corpus ]; then
  start_postgres
  mkdir -p "$CORPUS"
  make_files
  make_dumps
  set_day 1
  exit 0
fi

main "$@"
