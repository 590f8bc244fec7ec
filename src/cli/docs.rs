//! `completions` and `man`: shell completion scripts (clap_complete) and manual pages (clap_mangen),
//! both generated from the same clap definitions as the parser, so they never drift from the real flags.
//!
//! `man` prints the main page (`cairn.1`) on stdout, or with `--dir DIR` writes one page per command and
//! subcommand (`cairn.1`, `cairn-backup.1`, `cairn-instance-add.1`, ...) into DIR, which it creates.

use std::path::{Path, PathBuf};

use cairn::{Error, Result};
use clap::CommandFactory;
use serde_json::json;

use super::args::Cli;
use super::commands::Ctx;
use super::EXIT_OK;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    // Into memory first: clap_complete panics on a write error (a full or closed stdout).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cairn", &mut script);
    write_stdout(&script)
}

/// Prints `cairn.1`, or writes every page into `dir`.
pub fn man(ctx: &Ctx, dir: Option<PathBuf>) -> Result<i32> {
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .map_err(|e| Error::io("stdout", e))?;
        return write_stdout(&out);
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut files = Vec::new();
    write_pages(cmd, &dir, &mut files)?;
    if ctx.json {
        ctx.print_json(&json!({ "files": files }))?;
    } else if !ctx.quiet {
        for f in &files {
            outln!("{}", f.display());
        }
    }
    Ok(EXIT_OK)
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth first.
fn write_pages(cmd: clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_pages(sub, dir, files)?;
    }
    let page = clap_mangen::Man::new(cmd);
    let path = dir.join(page.get_filename());
    page.generate_to(dir).map_err(|e| Error::io(&path, e))?;
    files.push(path);
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<i32> {
    super::out::bytes(bytes)?;
    Ok(EXIT_OK)
}
