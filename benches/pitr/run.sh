#!/bin/sh
# cairn vs pgBackRest on the same PostgreSQL cluster and workload (BENCHMARKS.md, "Point-in-time recovery").
#
# A throwaway cluster (initdb as postgres, own socket directory and port) archives every segment to BOTH
# tools: archive_command runs pgbackrest-and-cairn-push.sh, which times `pgbackrest archive-push` and `cairn wal-push` on the same
# segment (alternating which goes first, so neither always reads the file from a cold cache). Then: pgbench
# initialisation, base backup 1 (both tools), a pgbench run (the "day" of WAL), base backup 2 (both), and the
# bytes each repository holds. Both repositories are encrypted, each with its tool's defaults otherwise
# (pgBackRest 2.45: gz level 6, aes-256-cbc; cairn: zstd, XChaCha20-Poly1305).
#
# usage: benches/pitr/run.sh CAIRN_BINARY [PGBENCH_SCALE] [PGBENCH_SECONDS]   (as root; deletes $BENCH)
set -eu
CAIRN_SRC=$1
SCALE=${2:-10}
SECONDS_RUN=${3:-120}
BENCH=${BENCH:-/tmp/cairn-pitr-bench}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=${PORT:-55439}

asp() { setpriv --reuid=postgres --regid=postgres --clear-groups -- env HOME=/var/lib/postgresql "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

[ -d "$BENCH/data" ] && asp "$BIN/pg_ctl" stop -m immediate -D "$BENCH/data" >/dev/null 2>&1 || true
rm -rf "$BENCH"
mkdir -p "$BENCH/walcopy" "$BENCH/cache" "$BENCH/pgbr-log" "$BENCH/pgbr-lock"
cp "$CAIRN_SRC" "$BENCH/cairn"
head -c 32 /dev/urandom | base64 > "$BENCH/password"
cat > "$BENCH/pgbackrest.conf" <<CONF
[global]
repo1-path=$BENCH/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(cat "$BENCH/password")
repo1-retention-full=2
log-path=$BENCH/pgbr-log
lock-path=$BENCH/pgbr-lock
log-level-console=warn
start-fast=y

[bench]
pg1-path=$BENCH/data
pg1-port=$PORT
pg1-socket-path=$BENCH
CONF
cat > "$BENCH/pgbackrest-and-cairn-push.sh" <<PUSH
#!/bin/sh
# archive_command (pgBackRest wants its name in it): pgbackrest-and-cairn-push.sh %p %f
export XDG_CACHE_HOME=$BENCH/cache
pgbr() { pgbackrest --config=$BENCH/pgbackrest.conf --stanza=bench archive-push "\$1"; }
cairn() { $BENCH/cairn --repo $BENCH/cairn-repo --password-file $BENCH/password --quiet wal-push --instance db "\$1"; }
case "\$2" in *[13579BDF]) first=pgbr second=cairn;; *) first=cairn second=pgbr;; esac
t0=\$(date +%s.%N); \$first "\$1" || exit 1
t1=\$(date +%s.%N); \$second "\$1" || exit 1
t2=\$(date +%s.%N)
echo "\$2" >> $BENCH/walcopy/segments
echo "\$2 \$first \$(echo "\$t1 - \$t0" | bc) \$second \$(echo "\$t2 - \$t1" | bc) \$(stat -c %s "\$1")" >> $BENCH/push-times.log
PUSH
chmod 755 "$BENCH/pgbackrest-and-cairn-push.sh"
chown -R postgres:postgres "$BENCH"

asp "$BIN/initdb" --auth=trust -U postgres --no-sync -D "$BENCH/data" >/dev/null
cat >> "$BENCH/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BENCH'
archive_mode = on
archive_command = '$BENCH/pgbackrest-and-cairn-push.sh %p %f'
archive_timeout = 60
wal_keep_size = '0'
max_wal_size = '256MB'
CONF
asp "$BIN/pg_ctl" start -w -D "$BENCH/data" -l "$BENCH/server.log" >/dev/null
PSQL="$BIN/psql -X -q -A -t -h $BENCH -p $PORT -U postgres -d postgres"

asp pgbackrest --config="$BENCH/pgbackrest.conf" --stanza=bench stanza-create
C="$BENCH/cairn --repo $BENCH/cairn-repo --password-file $BENCH/password"
asp env XDG_CACHE_HOME="$BENCH/cache" $C --quiet init
asp env XDG_CACHE_HOME="$BENCH/cache" $C --quiet instance add db --pg postgres --pg-conn "host=$BENCH port=$PORT user=postgres" --wal

asp "$BIN/pgbench" -h "$BENCH" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -1
$PSQL -c "CHECKPOINT"
echo "data directory: $(du -sb "$BENCH/data" | cut -f1) bytes"

base_backups() {
    n=$1
    t0=$(now)
    asp pgbackrest --config="$BENCH/pgbackrest.conf" --stanza=bench --type=full backup
    t1=$(now)
    asp env XDG_CACHE_HOME="$BENCH/cache" $C --quiet instance base-backup db
    t2=$(now)
    echo "base backup $n: pgbackrest full $(secs "$t0" "$t1") s, cairn $(secs "$t1" "$t2") s"
    echo "  repository bytes now: pgbackrest $(du -sb "$BENCH/pgbr-repo" | cut -f1), cairn $(du -sb "$BENCH/cairn-repo" | cut -f1)"
}
base_backups 1
asp "$BIN/pgbench" -h "$BENCH" -p "$PORT" -U postgres -c 2 -T "$SECONDS_RUN" -n postgres 2>&1 | grep -E "tps|transactions actually" || true
base_backups 2
# A last switch so that the run's WAL is all archived.
$PSQL -c "SELECT pg_switch_wal()" >/dev/null
sleep 15
# The same retention on both sides: WAL back to the oldest kept base backup (pgBackRest expires it with
# repo1-retention-full=2 after each backup; cairn's prune).
asp env XDG_CACHE_HOME="$BENCH/cache" $C --quiet prune
echo "after cairn prune: cairn $(du -sb "$BENCH/cairn-repo" | cut -f1) (packs $(du -sb "$BENCH/cairn-repo/packs" | cut -f1)), pgbackrest $(du -sb "$BENCH/pgbr-repo" | cut -f1)"
asp env XDG_CACHE_HOME="$BENCH/cache" $C --json snapshots | tr ',' '\n' | grep -E '"bytes_(read|added)"'
asp pgbackrest --config="$BENCH/pgbackrest.conf" --stanza=bench --type=incr backup
echo "after an incremental pgBackRest backup (for reference): pgbackrest $(du -sb "$BENCH/pgbr-repo" | cut -f1)"
echo "WAL files archived: $(wc -l < "$BENCH/walcopy/segments")"
echo "bytes: pgbackrest archive/ $(du -sb "$BENCH/pgbr-repo/archive" | cut -f1), backup/ $(du -sb "$BENCH/pgbr-repo/backup" | cut -f1)"
echo "per-segment seconds (segment, first tool, s, second tool, s, bytes): $BENCH/push-times.log"
awk '$6 == 16777216 { for (i = 2; i <= 4; i += 2) { s[$i] += $(i+1); n[$i]++; v[$i] = v[$i] " " $(i+1) } }
     END { for (t in s) printf "%s: %d segments, mean %.3f s\n", t, n[t], s[t] / n[t] }' "$BENCH/push-times.log"
asp "$BIN/pg_ctl" stop -m fast -D "$BENCH/data" >/dev/null
