# Sourced by run.sh and s3.sh: restore targets on a file system of their own.
#
# Why: this machine class's root file system is ext4 without a journal, after months of churn. There, creating
# files where a restore's files were deleted a moment before cost up to 1.5 s more system time than the same
# restore into a fresh file system (perf: ext4 `find_inode_bit` / `recently_deleted` scanning inode tables),
# and the penalty changed from run to run. Every tool paid it the same, which both compressed the ratios and
# made them noisy. A new ext4 in a loop image (on the same disk) for every restore and every `cp -a` limit
# measures the tools instead. Without root, mkfs.ext4 or loop devices (or with CAIRN_BENCH_FRESH_FS=0), a
# plain directory, as before.

# fresh_fs DIR: an empty, freshly made file system mounted at DIR (or an empty directory).
fresh_fs() {
  local dir=$1
  drop_fs "$dir"
  mkdir -p "$dir"
  if [ "${CAIRN_BENCH_FRESH_FS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null &&
    truncate -s "${CAIRN_BENCH_FS_SIZE:-6G}" "$dir.img" &&
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dir.img" &&
    mount -o loop "$dir.img" "$dir"; then
    return 0
  fi
  rm -f "$dir.img"
  [ -n "${FRESH_FS_WARNED:-}" ] || echo "note: restoring into a plain directory (no fresh file system)" >&2
  FRESH_FS_WARNED=1
}

# drop_fs DIR: unmounts and removes what fresh_fs made.
drop_fs() {
  local dir=$1
  if mountpoint -q "$dir" 2>/dev/null; then umount "$dir"; fi
  rm -rf "$dir" "$dir.img"
}
