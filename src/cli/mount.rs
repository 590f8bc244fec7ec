//! `mount`: the snapshots as a read-only file system (see `cairn::mount`), until unmounted or interrupted.

use std::path::Path;

use cairn::Result;
use serde_json::json;

use super::commands::Ctx;
use super::EXIT_OK;

pub fn mount(ctx: &Ctx, mountpoint: &Path) -> Result<i32> {
    let repo = ctx.open()?;
    let shown = mountpoint.display().to_string();
    let mut printed = Ok(());
    cairn::mount::mount(repo, mountpoint, || {
        if ctx.json {
            printed = ctx.print_json(&json!({ "mountpoint": shown, "mounted": true }));
        } else if !ctx.quiet {
            eprintln!("snapshots mounted at {shown}; unmount with `fusermount3 -u {shown}`, Ctrl-C or SIGTERM");
        }
    })?;
    printed?;
    Ok(EXIT_OK)
}
