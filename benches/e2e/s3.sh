#!/usr/bin/env bash
# cairn against restic on the same S3-protocol server on loopback (BENCHMARKS.md, "S3 repositories"). Usage:
#
#   benches/e2e/s3.sh                   # 3 runs of each step; REPS=N for more or fewer
#   S3_SERVER=moto benches/e2e/s3.sh    # the server: s3s-fs (default) or moto
#
# Shares the corpus of run.sh (the benchmark file store and the day 1 dump, under $CAIRN_BENCH_DATA, default
# /work/bench-data). Starts its own S3-protocol server on 127.0.0.1:$CAIRN_BENCH_S3_PORT (default 9580), anew
# for each run, and stops it at the end:
#   - s3s-fs (crate s3s-fs, installed with cargo under $CAIRN_BENCH_TOOLS, default $DATA/tools, when missing):
#     a Rust server keeping each object as a file in $DATA/s3-server (on disk, emptied per run); a ranged GET
#     seeks and streams the range, so the tools, not the server, bound the steps;
#   - moto (pip, server mode): one Python process holding the objects in memory, copying the whole object for
#     every ranged GET (the server of the test suite; the first table of BENCHMARKS.md's S3 section).
# Each run, for each tool: a new bucket; backup of the file store; backup of the dump as a stream; restore
# of the file store + sync; the dump written back out + sync. Prints a Markdown table; raw numbers stay in
# $DATA/results-s3-$S3_SERVER/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
SELF="$HERE/s3.sh"
# shellcheck source=benches/e2e/fresh_fs.sh
. "$HERE/fresh_fs.sh"
DATA=${CAIRN_BENCH_DATA:-/work/bench-data}
REPS=${REPS:-3}
PORT=${CAIRN_BENCH_S3_PORT:-9580}
S3_SERVER=${S3_SERVER:-s3s-fs}
TOOLS_DIR=${CAIRN_BENCH_TOOLS:-$DATA/tools}
S3S_FS=$TOOLS_DIR/s3s-fs/bin/s3s-fs
S3S_FS_VERSION=0.14.1 # the newest that builds with the toolchain of rust-toolchain / CI (later ones want rustc 1.96)
SERVER_DATA=$DATA/s3-server
ENDPOINT=http://127.0.0.1:$PORT
CORPUS=$DATA/corpus
FS=$CORPUS/live/filestore
DUMP=$CORPUS/day1.dump
RESULTS=$DATA/results-s3-$S3_SERVER
LOGS=$DATA/logs-s3-$S3_SERVER
CAIRN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$TOP/target}/release/cairn}
TOOLS=(cairn restic)

# Throwaway values for the loopback server only (moto accepts any pair; s3s-fs is started with this one).
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
# Both tools encrypt (cairn by default since issue 13, like restic), with the same password.
export RESTIC_PASSWORD=bench CAIRN_PASSWORD=bench RESTIC_CACHE_DIR=$DATA/cache-s3/restic XDG_CACHE_HOME=$DATA/cache-s3/xdg

repo_of() { # TOOL BUCKET
  case $1 in
    cairn) echo "s3://$2/repo" ;;
    restic) echo "s3:$ENDPOINT/$2/repo" ;;
  esac
}

step() { # WHAT TOOL REPO [ARG]
  local what=$1 tool=$2 repo=$3 arg=${4:-}
  local c=("$CAIRN" --repo "$repo" --s3-endpoint "$ENDPOINT" --s3-path-style)
  case "$what/$tool" in
    init/cairn) "${c[@]}" --quiet init ;;
    init/restic) restic -r "$repo" --quiet init ;;
    tree/cairn) "${c[@]}" --quiet backup --json "$FS" ;;
    tree/restic) restic -r "$repo" --quiet backup --tag files "$FS" ;;
    stream/cairn) "${c[@]}" --quiet backup --json --stdin-from-command --stdin-name db.dump -- cat "$DUMP" ;;
    stream/restic) cat "$DUMP" | restic -r "$repo" --quiet backup --tag db --stdin --stdin-filename db.dump ;;
    restore/cairn) "${c[@]}" --quiet restore latest --target "$arg" ;;
    restore/restic) restic -r "$repo" --quiet restore latest --tag files --target "$arg" ;;
    dump/cairn) "${c[@]}" dump latest db.dump >"$arg" ;;
    dump/restic) restic -r "$repo" --quiet dump --tag db latest /db.dump >"$arg" ;;
    *) echo "unknown step $what/$tool" >&2; return 2 ;;
  esac
}

if [ "${1:-}" = __step ]; then
  shift
  step "$@"
  sync
  exit 0
fi

measure() { # SCENARIO TOOL RUN CMD...
  local log=$LOGS/$1-$2-$3
  sync
  if ! /usr/bin/time -f '%e %U %S %M' -o "$log.time" "${@:4}" >"$log.log" 2>&1; then
    echo "FAILED: ${*:4} (see $log.log)" >&2
    tail -n 20 "$log.log" >&2
    exit 1
  fi
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$log.time")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$wall" "$user" "$sys" "$rss" >>"$RESULTS/raw.tsv"
  awk -v s="$1" -v t="$2" -v r="$3" -v w="$wall" -v u="$user" -v k="$sys" -v m="$rss" \
    'BEGIN { printf "  %-8s %-7s run %s: %7.2f s wall, %7.2f s CPU, %5d MB\n", s, t, r, w, u + k, m / 1024 }'
}

SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT

install_server() {
  case $S3_SERVER in
    s3s-fs)
      [ -x "$S3S_FS" ] ||
        cargo install --quiet --locked "s3s-fs@$S3S_FS_VERSION" --features binary --root "$TOOLS_DIR/s3s-fs" ;;
    moto) python3 -c 'import moto.server, flask' 2>/dev/null || python3 -m pip install -q 'moto[server]' </dev/null ;;
    *) echo "S3_SERVER must be s3s-fs or moto, not $S3_SERVER" >&2; exit 2 ;;
  esac
}

server_version() {
  case $S3_SERVER in
    s3s-fs) "$S3S_FS" --version | cut -d' ' -f2 ;;
    moto) python3 -c 'import moto; print(moto.__version__)' ;;
  esac
}

start_server() {
  stop_server
  case $S3_SERVER in
    s3s-fs)
      rm -rf "$SERVER_DATA" && mkdir -p "$SERVER_DATA"
      "$S3S_FS" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$SERVER_DATA" >"$LOGS/s3s-fs.log" 2>&1 </dev/null &
      ;;
    moto) python3 -m moto.server -H 127.0.0.1 -p "$PORT" >"$LOGS/moto.log" 2>&1 </dev/null & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 60); do
    curl -s -o /dev/null "$ENDPOINT/" && return
    sleep 0.5
  done
  echo "$S3_SERVER did not answer on $ENDPOINT (see $LOGS/$S3_SERVER.log)" >&2
  exit 1
}

# A signed request, which both servers accept (s3s-fs refuses unsigned ones, and wants the body's SHA-256:
# here the empty body's).
make_bucket() {
  curl -sf -X PUT --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "$ENDPOINT/$1" >/dev/null
}

main() {
  local started=$SECONDS
  command -v restic >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic; }
  [ -n "${CAIRN_BIN:-}" ] || (cd "$TOP" && cargo build --release --quiet)
  install_server
  "$HERE/run.sh" __corpus
  mkdir -p "$RESULTS" "$LOGS"
  : >"$RESULTS/raw.tsv"
  echo "cairn: $("$CAIRN" --version) ($(git -C "$TOP" rev-parse --short HEAD)); restic: $(restic version | cut -d' ' -f2);" \
    "$S3_SERVER: $(server_version) (data: $(findmnt -no FSTYPE -T "$DATA"));" \
    "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$RESULTS/machine.txt"
  echo "file store: $(find "$FS" -type f | wc -l) files, $(du -sb "$FS" | cut -f1) bytes; dump: $(stat -c %s "$DUMP") bytes" |
    tee -a "$RESULTS/machine.txt"
  local run tool bucket repo out=$DATA/s3-out
  for run in $(seq "$REPS"); do
    start_server
    for tool in "${TOOLS[@]}"; do
      bucket=bench-$tool-$run
      make_bucket "$bucket"
      repo=$(repo_of "$tool" "$bucket")
      rm -rf "$DATA/cache-s3"
      "$SELF" __step init "$tool" "$repo" >"$LOGS/init-$tool-$run.log" 2>&1
      measure files "$tool" "$run" "$SELF" __step tree "$tool" "$repo"
      measure stream "$tool" "$run" "$SELF" __step stream "$tool" "$repo"
      fresh_fs "$out"
      measure restore "$tool" "$run" "$SELF" __step restore "$tool" "$repo" "$out/tree"
      if [ "$run" = 1 ]; then
        local got=$out/tree/filestore
        [ "$tool" = cairn ] || got=$out/tree$FS
        diff -rq "$FS" "$got" >/dev/null || { echo "restore by $tool differs from the source" >&2; exit 1; }
      fi
      drop_fs "$out"
      measure dump "$tool" "$run" "$SELF" __step dump "$tool" "$repo" "$out"
      [ "$run" != 1 ] || cmp -s "$DUMP" "$out" || { echo "dump by $tool differs" >&2; exit 1; }
      rm -f "$out"
    done
  done
  stop_server
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/machine.txt"
  echo "== results ($((SECONDS - started)) s in all)"
  python3 "$HERE/report.py" --s3 "$RESULTS" | tee "$RESULTS/table.md"
}

main "$@"
