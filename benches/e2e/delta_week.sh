#!/usr/bin/env bash
# A week of daily database dumps stored by cairn (delta chunks, format-spec 5.1), borg (-C zstd,3) and restic,
# in one run, on two corpora of different shape (BENCHMARKS.md, "A week of dumps"):
#
#   odoo     the end-to-end benchmark's database (db_day1.sql), then 7 daily drifts: db_day2.sql with the
#            day's seed and a different 1% of the rows each day (about 1% updated, mostly among the newest
#            rows, 0.2% of the messages deleted, VACUUM, 1% new rows);
#   orders   scripts/measure-stream-chunking's shape (two wide tables, bigint/int/text/numeric/timestamptz and
#            jsonb), 7 daily drifts of its "uniform" pattern: 1% of the rows updated at random, 0.5% inserted,
#            0.2% deleted at random, VACUUM (the worst case for deduplication).
#
#   benches/e2e/delta_week.sh [odoo|orders]...     # default: both; ROWS= scales `orders` (default 1,000,000)
#
# Each day's dump (`pg_dump -Fc -Z0`, what `cairn backup --pg` runs) is piped into each tool as a stream;
# added bytes are the growth of the repository directory; wall time and peak RSS from /usr/bin/time. At the
# end, the last day's stream is written out of cairn's repository (mostly deltas) and out of a repository
# holding only that dump (plain chunks), to compare the read cost. Data in $CAIRN_BENCH_DATA/delta (default
# /work/bench-data/delta); one dump on disk at a time. Results: a TSV per corpus and a Markdown summary.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
DATA=${CAIRN_BENCH_DATA:-/work/bench-data}/delta
CAIRN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$TOP/target}/release/cairn}
DAYS=${DAYS:-7}
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$DATA/cache/restic
export BORG_PASSPHRASE='' BORG_BASE_DIR=$DATA/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
pg() { runuser -u postgres -- "$@"; }
psql_() { pg psql -X -q -o /dev/null -v ON_ERROR_STOP=1 "$@"; }
mkdir -p "$DATA"

# measure TSV LABEL CMD...: appends LABEL, wall seconds, peak RSS (KB) to TSV
measure() {
  local tsv=$1 label=$2
  shift 2
  /usr/bin/time -f "%e %M" -o "$DATA/time.out" "$@" >/dev/null
  printf '%s\t%s\t%s\n' "$label" $(cat "$DATA/time.out") >>"$tsv"
}

size() { du -sb "$1" | cut -f1; }

backup_all() { # CORPUS DAY DUMP
  local c=$1 d=$2 dump=$3 tsv=$DATA/$1.tsv
  for tool in cairn borg restic; do
    local repo=$DATA/repos/$c-$tool before
    before=$(size "$repo")
    case $tool in
      cairn) measure "$tsv" "time $tool $d" sh -c "'$CAIRN' --repo '$repo' --quiet backup --stdin-from-command --stdin-name db.dump -- cat '$dump'" ;;
      borg) measure "$tsv" "time $tool $d" sh -c "cat '$dump' | borg create -C zstd,3 --stdin-name db.dump '$repo::day-$d' -" ;;
      restic) measure "$tsv" "time $tool $d" sh -c "cat '$dump' | restic -r '$repo' --quiet backup --stdin --stdin-filename db.dump" ;;
    esac
    printf 'added %s %s\t%s\n' "$tool" "$d" $(($(size "$repo") - before)) >>"$tsv"
  done
}

init_all() { # CORPUS
  rm -rf "$DATA/repos/$1-"*
  mkdir -p "$DATA/repos"
  "$CAIRN" --repo "$DATA/repos/$1-cairn" --quiet init --insecure-no-encryption
  borg init -e none "$DATA/repos/$1-borg"
  restic -r "$DATA/repos/$1-restic" --quiet init
}

dump_db() { pg pg_dump --format=custom --compress=0 "$1" >"$2"; }

odoo_day1() {
  psql_ -d postgres -c "DROP DATABASE IF EXISTS cairn_delta_odoo" -c "CREATE DATABASE cairn_delta_odoo"
  psql_ -d cairn_delta_odoo -f "$HERE/db_day1.sql"
}
odoo_drift() { # DAY: db_day2.sql with the day's seed and the day's 1% of the rows
  sed -e "s/setseed(0.1125)/setseed(0.1125 + $1 \/ 1000.0)/" \
      -e "s/(id::bigint \* 2654435761)/((id + $1 * 7919)::bigint * 2654435761)/g" \
      -e "s/^DROP FUNCTION bench_words(int);//" "$HERE/db_day2.sql" >"$DATA/drift.sql"
  psql_ -d cairn_delta_odoo -f "$DATA/drift.sql"
}

orders_day1() {
  local rows=${ROWS:-1000000}
  psql_ -d postgres -c "DROP DATABASE IF EXISTS cairn_delta_orders" -c "CREATE DATABASE cairn_delta_orders"
  psql_ -d cairn_delta_orders <<SQL
SELECT setseed(0.42);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer int NOT NULL, state text NOT NULL, amount numeric(12,2) NOT NULL,
    note text, created timestamptz NOT NULL, updated timestamptz NOT NULL);
INSERT INTO orders
SELECT g, (g::bigint * 7919) % 50000, (ARRAY['draft','sent','paid','done'])[1 + g % 4], round((random() * 10000)::numeric, 2),
       md5(g::text) || ' ' || md5((g * 3)::text), timestamptz '2024-01-01' + g * interval '20 seconds',
       timestamptz '2024-01-01' + g * interval '20 seconds'
FROM generate_series(1, $rows) g;
CREATE INDEX ON orders (customer);
CREATE INDEX ON orders (created);
CREATE TABLE events (id bigint PRIMARY KEY, order_id bigint NOT NULL, payload jsonb NOT NULL);
INSERT INTO events
SELECT g, 1 + (g::bigint * 104729) % $rows, jsonb_build_object('kind', 'k' || g % 17, 'v', md5(g::text), 'n', g)
FROM generate_series(1, $rows / 2) g;
VACUUM ANALYZE;
SQL
}
orders_drift() { # DAY
  local rows=${ROWS:-1000000}
  psql_ -d cairn_delta_orders <<SQL
SELECT setseed(0.7 + $1 / 1000.0);
UPDATE orders SET state = 'done', amount = amount + 1, updated = timestamptz '2026-11-01' + $1 * interval '1 day'
  WHERE random() < 0.01;
INSERT INTO orders SELECT (SELECT max(id) FROM orders) + g, g % 50000, 'draft', 10, md5((-g - $1 * $rows)::text),
  timestamptz '2026-11-01' + $1 * interval '1 day', timestamptz '2026-11-01' + $1 * interval '1 day'
FROM generate_series(1, $rows / 200) g;
DELETE FROM orders WHERE random() < 0.002;
UPDATE events SET payload = payload || jsonb_build_object('seen', $1) WHERE random() < 0.01;
VACUUM ANALYZE;
SQL
}

run_corpus() { # CORPUS
  local c=$1 tsv=$DATA/$1.tsv dump=$DATA/$1.dump
  : >"$tsv"
  echo "== $c: day 1" >&2
  "${c}_day1"
  dump_db "cairn_delta_$c" "$dump"
  printf 'dump 1\t%s\n' "$(stat -c %s "$dump")" >>"$tsv"
  init_all "$c"
  backup_all "$c" 1 "$dump"
  for d in $(seq 2 $((DAYS + 1))); do
    echo "== $c: day $d" >&2
    "${c}_drift" "$d"
    dump_db "cairn_delta_$c" "$dump"
    printf 'dump %s\t%s\n' "$d" "$(stat -c %s "$dump")" >>"$tsv"
    backup_all "$c" "$d" "$dump"
  done
  local repo=$DATA/repos/$c-cairn plain=$DATA/repos/$c-plain
  python3 - "$repo/index.sqlite" >>"$tsv" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for kind, n, stored in db.execute("SELECT kind, count(*), sum(stored_len) FROM blobs GROUP BY kind"):
    print(f"blobs kind {kind}\t{n}\t{stored}")
PY
  # The last day's stream read back: mostly deltas, against the same dump stored plain in a repository of its own.
  rm -rf "$plain"
  "$CAIRN" --repo "$plain" --quiet init --insecure-no-encryption
  "$CAIRN" --repo "$plain" --quiet backup --stdin-from-command --stdin-name db.dump -- cat "$dump"
  for r in 1 2 3; do
    measure "$tsv" "dump delta $r" sh -c "'$CAIRN' --repo '$repo' dump latest db.dump > '$DATA/out.dump'"
    cmp -s "$dump" "$DATA/out.dump" || { echo "$c: the dump read back from the delta repository differs" >&2; exit 1; }
    measure "$tsv" "dump plain $r" sh -c "'$CAIRN' --repo '$plain' dump latest db.dump > '$DATA/out.dump'"
  done
  rm -f "$DATA/out.dump"
  "$CAIRN" --repo "$repo" check --read-data >/dev/null
  # Only the TSV is kept: the repositories of a week of borg and restic take gigabytes.
  rm -rf "$DATA/repos/$c-"* "$dump" "$DATA/cache"
  psql_ -d postgres -c "DROP DATABASE IF EXISTS cairn_delta_$c"
}

for c in "${@:-odoo orders}"; do
  for one in $c; do run_corpus "$one"; done
done
python3 "$HERE/delta_week_report.py" "$DATA" ${@:-odoo orders}
