//! `cairn copy`: the command line of [`cairn::copy`].

use cairn::copy::{self, CopyOptions, CopyReport};
use cairn::crypto::password;
use cairn::{Repository, Result};

use super::args::CopyArgs;
use super::commands::Ctx;
use super::EXIT_OK;

/// Opens both repositories (the source as named by `--from-repo`, the target as `--repo`), copies, reports.
pub fn copy_cmd(ctx: &Ctx, a: CopyArgs) -> Result<i32> {
    cairn::interrupt::install()?;
    let from = ctx.other_repo_url(&a.from_repo)?;
    let src = match (a.from_password_file, a.from_password_command) {
        (None, None) => Repository::open(from)?,
        (file, command) => password::with_sources(password::Sources { file, command }, || {
            Repository::open(from)
        })?,
    };
    let dst = ctx.open()?;
    let report = copy::copy(
        &src,
        &dst,
        &CopyOptions {
            snapshots: a.snapshots,
            instances: a.instances,
        },
    )?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).unwrap_or_default())?;
    } else if !ctx.quiet {
        print_report(&report, src.location(), dst.location())?;
    }
    Ok(EXIT_OK)
}

fn print_report(r: &CopyReport, from: &str, to: &str) -> Result<()> {
    for s in &r.copied {
        // A snapshot rewritten for other keys has another id in the target.
        let renamed = if s.target_id == s.id {
            String::new()
        } else {
            format!(" as {}", s.target_id.get(..8).unwrap_or_default())
        };
        outln!(
            "copied snapshot {}{renamed} ({}{}): {} blobs copied, {} already there",
            s.id.get(..8).unwrap_or_default(),
            s.time,
            s.instance
                .as_deref()
                .map(|i| format!(", instance {i}"))
                .unwrap_or_default(),
            s.blobs_copied,
            s.blobs_present
        );
    }
    for name in &r.instances_copied {
        outln!("copied instance {name}");
    }
    if r.copied.is_empty() {
        outln!(
            "nothing to copy: {to} holds every snapshot asked for ({} already there)",
            r.already_present.len()
        );
    } else {
        outln!(
            "{} snapshots copied from {from} to {to} ({} already there); {} blobs, {} bytes stored",
            r.copied.len(),
            r.already_present.len(),
            r.blobs_copied,
            r.bytes_stored
        );
    }
    Ok(())
}
