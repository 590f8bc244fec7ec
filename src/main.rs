//! The `cairn` command: parses arguments and hands them to the library (see `src/cli`).

fn main() {
    large_buffers_go_back_to_the_system();
    std::process::exit(cairn_cli::run());
}

/// Packs being uploaded and runs being read from object storage are buffers of 1-20 MiB, allocated on one
/// thread and freed on another. glibc raises its mmap threshold after each such free (up to 32 MiB), after
/// which they come from per-thread arenas that keep the freed space: peak RSS of a backup to S3 grew past
/// 170 MB with 5 packs in memory. A fixed threshold keeps every buffer of 1 MiB or more its own mapping,
/// returned to the system when freed.
fn large_buffers_go_back_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[path = "cli/mod.rs"]
mod cairn_cli;
