//! Raw command-line arguments (clap derive). Validation into library options happens in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating snapshots of PostgreSQL databases and file stores"
)]
pub struct Cli {
    /// Repository directory (default: $XDG_DATA_HOME/cairn/repo, created on first backup).
    #[arg(long, global = true, env = "CAIRN_REPO")]
    pub repo: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository.
    Init,
    /// Take a snapshot of paths and/or a stream.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Everything recorded about one snapshot.
    Show { snapshot: String },
    /// List the files of a snapshot.
    Ls {
        snapshot: String,
        path: Option<String>,
        #[arg(long)]
        instance: Option<String>,
    },
    /// Restore a snapshot's files.
    Restore(RestoreArgs),
    /// Write one stream or file of a snapshot to stdout.
    Dump {
        snapshot: String,
        name: String,
        #[arg(long)]
        instance: Option<String>,
    },
    /// Verify the repository.
    Check(CheckArgs),
    /// Rebuild repository metadata.
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
    /// Remove stale locks.
    Unlock {
        /// Remove every lock, stale or not.
        #[arg(long)]
        remove_all: bool,
    },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    #[arg(long)]
    pub instance: Option<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Read a stream from standard input.
    #[arg(long, requires = "stdin_name", conflicts_with = "stdin_from_command")]
    pub stdin: bool,
    /// Read a stream from the standard output of the command given after `--`.
    #[arg(long, requires = "stdin_name")]
    pub stdin_from_command: bool,
    /// Name of the stream in the snapshot.
    #[arg(long)]
    pub stdin_name: Option<String>,
    /// Compare against this snapshot instead of the latest matching one.
    #[arg(long)]
    pub parent: Option<String>,
    /// Re-read every file, even when unchanged since the parent.
    #[arg(long)]
    pub force: bool,
    /// Snapshot time (RFC 3339 or "YYYY-MM-DD HH:MM[:SS]" local); default now.
    #[arg(long)]
    pub time: Option<String>,
    /// Dump this PostgreSQL database (pg_dump, streamed) into the snapshot as the stream DBNAME.dump.
    #[arg(long, value_name = "DBNAME")]
    pub pg: Option<String>,
    /// libpq connection settings ("host=... port=... user=..."); unset ones come from PGHOST, PGPORT,
    /// PGUSER, PGPASSWORD, ~/.pgpass.
    #[arg(long, value_name = "CONNINFO", requires = "pg")]
    pub pg_conn: Option<String>,
    /// The command for --stdin-from-command.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub snapshot: String,
    /// Directory to restore the snapshot's files into.
    #[arg(long, required_unless_present = "pg_target")]
    pub target: Option<PathBuf>,
    /// Only these paths of the snapshot.
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long)]
    pub instance: Option<String>,
    /// Create this PostgreSQL database and restore the snapshot's dump into it (verifying row counts).
    #[arg(long, value_name = "NEWDB")]
    pub pg_target: Option<String>,
    /// libpq connection settings for --pg-target (see `backup --pg-conn`).
    #[arg(long, value_name = "CONNINFO", requires = "pg_target")]
    pub pg_conn: Option<String>,
    /// Restore over an existing database: snapshot it first (tag `safety`), then drop and recreate it.
    #[arg(long, requires = "pg_target")]
    pub replace: bool,
    /// Restore owners and privileges too (by default pg_restore runs with --no-owner --no-acl).
    #[arg(long, requires = "pg_target")]
    pub owner_acl: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and verify every blob of every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read a slice N/M of the packs, or a random percentage (e.g. 10%).
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairWhat {
    /// Rebuild the index from pack files and snapshot files.
    Index,
}
