//! The `cairn` command: parses arguments and hands them to the library (see `src/cli`).

fn main() {
    tune_allocator();
    std::process::exit(cairn_cli::run());
}

/// Two allocator settings, both measured (BENCHMARKS.md, "Allocator settings"):
///
/// - Packs being uploaded and runs being read from object storage are buffers of 16-20 MiB, allocated on one
///   thread and freed on another. glibc raises its mmap threshold after each such free (up to 32 MiB), after
///   which they come from per-thread arenas that keep the freed space: peak RSS of a backup to S3 grew past
///   170 MB with 5 packs in memory. A fixed threshold of 8 MiB keeps each of them its own mapping, returned
///   to the system when freed.
/// - Everything smaller (chunks of up to 4 MiB, their compressed and sealed copies, local runs of 1 MiB)
///   stays in the arenas and is reused. With the threshold at 1 MiB, or with the default trim threshold of
///   128 KiB that a fixed mmap threshold leaves in place, every chunk was a fresh mapping or a heap grown and
///   trimmed again: page faults and TLB shootdowns took a third of a restore's time and 1 s of system time
///   from a 1.2 GB backup. 32 MiB of free space may stay at the top of an arena before it is trimmed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

#[path = "cli/mod.rs"]
mod cairn_cli;
