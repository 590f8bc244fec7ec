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
    /// Repository: a directory, file:///path or s3://bucket/prefix (default: $XDG_DATA_HOME/cairn/repo,
    /// created on first backup).
    #[arg(long, global = true, env = "CAIRN_REPO")]
    pub repo: Option<PathBuf>,
    /// S3 endpoint URL for S3-compatible servers (MinIO, Ceph, Garage, https://storage.googleapis.com);
    /// default: AWS_ENDPOINT_URL, else AWS.
    #[arg(long, global = true, env = "CAIRN_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Path-style S3 requests (endpoint/bucket/key), as most self-hosted servers want.
    #[arg(long, global = true, env = "CAIRN_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Sealed packs written (uploaded) at once while chunking continues; default 4 for object storage,
    /// 1 for a local directory (where each pack's fsync dominates).
    #[arg(long, global = true, env = "CAIRN_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
    /// Limit what is sent to the repository to KIB KiB/s (all repositories of this process together).
    #[arg(long, global = true, env = "CAIRN_LIMIT_UPLOAD", value_name = "KIB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_upload: Option<u64>,
    /// Limit what is read from the repository to KIB KiB/s (all repositories of this process together).
    #[arg(long, global = true, env = "CAIRN_LIMIT_DOWNLOAD", value_name = "KIB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_download: Option<u64>,
    /// Read the repository password from the first line of FILE (an encrypted repository).
    #[arg(long, global = true, env = "CAIRN_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run CMD with `sh -c` and take the first line it prints as the repository password.
    #[arg(
        long,
        global = true,
        env = "CAIRN_PASSWORD_COMMAND",
        value_name = "CMD"
    )]
    pub password_command: Option<String>,
    /// Print exactly one JSON document on stdout (no progress display; `dump` and `export` refuse it).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display, and nothing on stdout from commands that report an action (the exit code tells).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// How `daemon`, `run-due` and warnings log on stderr: plain lines, or one JSON object a line.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The format of log lines on stderr (see `cli::logging`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Take a snapshot of paths and/or a stream.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Everything recorded about one snapshot.
    Show {
        snapshot: String,
        /// Narrows `latest`.
        #[arg(long)]
        instance: Option<String>,
    },
    /// List the files and streams of a snapshot.
    Ls {
        snapshot: String,
        /// A directory, file or stream of the snapshot (any bytes, as the file system allows).
        path: Option<PathBuf>,
        #[arg(long)]
        instance: Option<String>,
    },
    /// Restore a snapshot's files.
    Restore(RestoreArgs),
    /// Write one stream or file of a snapshot to stdout.
    Dump {
        snapshot: String,
        /// A stream's name or a file's path in the snapshot (any bytes, as the file system allows).
        name: PathBuf,
        #[arg(long)]
        instance: Option<String>,
    },
    /// Verify the repository.
    Check(CheckArgs),
    /// Remove snapshots according to a retention policy (restic semantics), per group.
    Forget(ForgetArgs),
    /// Delete or repack packs that hold data no snapshot needs.
    Prune {
        /// Repack packs whose unused share exceeds this percentage.
        #[arg(long, default_value_t = 5.0)]
        max_unused: f64,
        #[arg(long)]
        dry_run: bool,
    },
    /// Rebuild repository metadata.
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
    /// Copy snapshots from another repository into this one, deduplicating against it (default: every
    /// snapshot this repository lacks).
    Copy(CopyArgs),
    /// Manage instances (a database and file trees with a schedule and retention).
    Instance {
        #[command(subcommand)]
        action: InstanceAction,
    },
    /// Back up every instance whose schedule is due (for cron or systemd timers).
    RunDue {
        /// Append stdout and stderr to FILE, moved to FILE.1 when it reaches 1 MiB (for cron).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// Show the run log.
    Log {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Run instance schedules until SIGTERM/SIGINT (running backups finish first).
    Daemon {
        /// Concurrent backups; default one per core.
        #[arg(long)]
        max_jobs: Option<usize>,
        /// Seconds between schedule evaluations.
        #[arg(long, default_value_t = 30)]
        tick_seconds: u64,
    },
    /// Serve the HTTP API and the web dashboard, and run instance schedules, until SIGTERM/SIGINT.
    Serve(super::serve::ServeArgs),
    /// API tokens of `cairn serve`: add (printed once), list, remove.
    Token {
        #[command(subcommand)]
        action: super::serve::TokenAction,
    },
    /// Per-instance statistics and totals, exact from the index (see README "Statistics").
    Stats {
        #[arg(long)]
        instance: Option<String>,
        /// Print the Prometheus text format (for node_exporter's textfile collector).
        #[arg(long)]
        prometheus: bool,
    },
    /// Exit non-zero if any enabled instance failed its last run or is overdue.
    Health {
        /// Minutes past a missed slot before an instance counts as overdue.
        #[arg(long, default_value_t = 60)]
        grace_minutes: i64,
        /// Seconds past archive_timeout a finished WAL segment may wait for archiving (instances with --wal).
        #[arg(long, default_value_t = 300)]
        wal_grace_seconds: i64,
    },
    /// Print ready-to-install scheduler entries that run `cairn run-due`.
    Schedule {
        #[command(subcommand)]
        kind: ScheduleKind,
    },
    /// Store an existing archive backup (tar.gz / Odoo zip) as a snapshot with its original time.
    ImportArchive {
        #[arg(long)]
        instance: Option<String>,
        /// The archive's original time (RFC 3339 or "YYYY-MM-DD HH:MM").
        #[arg(long)]
        time: String,
        /// Accept a --time more than 5 minutes after now.
        #[arg(long)]
        force_time: bool,
        file: PathBuf,
    },
    /// Write a snapshot out as an archive, streamed to stdout or --output: odoo-zip/odoo-tar (Odoo's
    /// backup: dump.sql, manifest.json, filestore/) or zip/tar (the snapshot's entries and streams as stored).
    Export {
        snapshot: String,
        /// odoo-zip, odoo-tar, zip or tar.
        #[arg(long)]
        format: String,
        /// Narrows `latest`.
        #[arg(long)]
        instance: Option<String>,
        /// Write the archive to FILE (complete or not at all) instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Odoo formats: the snapshot's root directory holding the filestore (when it has several).
        #[arg(long)]
        filestore: Option<String>,
    },
    /// What changed between two snapshots: files, streams and per-table row counts.
    Diff {
        /// The earlier snapshot.
        snapshot1: String,
        /// The later snapshot.
        snapshot2: String,
        /// Narrows `latest`.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Which snapshots hold a path matching PATTERN (a glob on the name, or on the path if it has a `/`).
    Find {
        pattern: String,
        #[arg(long)]
        instance: Option<String>,
    },
    /// Mount the snapshots read-only at MOUNTPOINT (FUSE) until unmounted or interrupted.
    Mount { mountpoint: std::path::PathBuf },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one per command into --dir.
    Man {
        /// Write cairn.1 and a page per subcommand (cairn-backup.1, ...) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Archive one WAL file (PostgreSQL's archive_command: `cairn wal-push --instance NAME %p`).
    WalPush {
        #[arg(long)]
        instance: String,
        /// The file to archive (%p).
        path: PathBuf,
    },
    /// Restore one archived WAL file (restore_command: `cairn wal-fetch --instance NAME %f %p`); exit
    /// code 1 when it is not archived, 255 (fatal for recovery) when it is but cannot be restored.
    WalFetch {
        #[arg(long)]
        instance: String,
        /// The WAL file's name (%f).
        file: String,
        /// Where to write it (%p).
        dest: PathBuf,
        /// How long to wait for an exclusive lock (a prune or repair) to go away before failing; recovery
        /// waits for the file meanwhile.
        #[arg(long, env = "CAIRN_WAL_FETCH_LOCK_WAIT", value_name = "SECONDS",
              default_value_t = cairn::wal::FETCH_LOCK_WAIT.as_secs())]
        lock_wait: u64,
        /// The database system identifier of the cluster being recovered: a segment archived as another
        /// cluster's is refused (exit 255). `instance restore` writes it into restore_command.
        #[arg(long, value_name = "ID")]
        system_identifier: Option<u64>,
    },
    /// List archived WAL files.
    WalList {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Remove stale locks.
    Unlock {
        /// Remove every lock, stale or not.
        #[arg(long)]
        remove_all: bool,
    },
    /// Manage the passwords (key files) of an encrypted repository.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// List the key files: id, created, host, and which one the password opened.
    List,
    /// Add a password: a new key file wrapping the same master key.
    Add {
        /// Read the new password from the first line of FILE (else prompt twice on the terminal).
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key file (never the last one, never the one whose password opened the repository).
    Remove {
        /// The key's id or a unique prefix of it.
        id: String,
    },
    /// Change the password: add a key file for the new password, then remove the one in use.
    Passwd {
        /// Read the new password from the first line of FILE (else prompt twice on the terminal).
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

impl Command {
    /// Every instance name the command was given, so that one place checks them all (an unchecked name
    /// such as `../../etc/x` would reach file names and the index).
    pub fn instance_names(&self) -> Vec<&str> {
        let name = match self {
            Command::Backup(a) => a.instance.as_deref(),
            Command::Restore(a) => a.instance.as_deref(),
            Command::Forget(a) => a.instance.as_deref(),
            Command::Snapshots { instance }
            | Command::Ls { instance, .. }
            | Command::Dump { instance, .. }
            | Command::Diff { instance, .. }
            | Command::Find { instance, .. }
            | Command::Show { instance, .. }
            | Command::Export { instance, .. }
            | Command::Log { instance }
            | Command::Stats { instance, .. }
            | Command::ImportArchive { instance, .. }
            | Command::WalList { instance } => instance.as_deref(),
            Command::WalPush { instance, .. } | Command::WalFetch { instance, .. } => {
                Some(instance.as_str())
            }
            Command::Instance { action } => action.name(),
            Command::Init(_)
            | Command::Check(_)
            | Command::Copy(_)
            | Command::Prune { .. }
            | Command::Repair { .. }
            | Command::RunDue { .. }
            | Command::Daemon { .. }
            | Command::Serve(_)
            | Command::Token { .. }
            | Command::Health { .. }
            | Command::Schedule { .. }
            | Command::Mount { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Unlock { .. }
            | Command::Key { .. } => None,
        };
        name.into_iter().collect()
    }
}

impl InstanceAction {
    /// The instance the action names, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            InstanceAction::Add { name, .. }
            | InstanceAction::Show { name }
            | InstanceAction::Set { name, .. }
            | InstanceAction::Pause { name }
            | InstanceAction::Resume { name }
            | InstanceAction::Remove { name, .. }
            | InstanceAction::Backup { name, .. }
            | InstanceAction::WalSetup { name, .. }
            | InstanceAction::Restore { name, .. }
            | InstanceAction::BaseBackup { name } => Some(name),
            InstanceAction::List => None,
        }
    }
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
    /// Accept a --time more than 5 minutes after now (such a snapshot is ignored by schedules, health and `latest`).
    #[arg(long, requires = "time")]
    pub force_time: bool,
    /// Dump this PostgreSQL database (pg_dump, streamed) into the snapshot as the stream DBNAME.dump.
    #[arg(long, value_name = "DBNAME")]
    pub pg: Option<String>,
    /// libpq connection settings ("host=... port=... user=..."); unset ones come from PGHOST, PGPORT,
    /// PGUSER, PGPASSWORD, ~/.pgpass.
    #[arg(long, value_name = "CONNINFO", requires = "pg")]
    pub pg_conn: Option<String>,
    #[command(flatten)]
    pub excludes: ExcludeArgs,
    /// The command for --stdin-from-command.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// What to leave out of a backup (restic's flags and pattern semantics; see README "Choosing what to back up").
#[derive(Args, Debug, Default)]
pub struct ExcludeArgs {
    /// Leave out paths matching PATTERN (repeatable; `!PATTERN` re-includes; a leading `/` anchors it).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Like --exclude, ignoring case.
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Read patterns from FILE, one a line (`#` starts a comment).
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Leave out the contents of directories holding a file named NAME (the directory and NAME are kept).
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub if_present: Vec<String>,
    /// Leave out the contents of directories tagged with a valid CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Do not cross file-system boundaries (mount points are kept as empty directories).
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
}

impl ExcludeArgs {
    pub fn options(self) -> cairn::exclude::ExcludeOptions {
        cairn::exclude::ExcludeOptions {
            exclude: self.exclude,
            iexclude: self.iexclude,
            exclude_files: self.exclude_files,
            if_present: self.if_present,
            caches: self.exclude_caches,
            one_file_system: self.one_file_system,
        }
    }
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub snapshot: String,
    /// Directory to restore the snapshot's files into.
    #[arg(long, required_unless_present = "pg_target")]
    pub target: Option<PathBuf>,
    /// Only these paths of the snapshot.
    #[arg(long = "path")]
    pub paths: Vec<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    pub overwrite: bool,
    /// Leave holes in restored files where the snapshot holds chunks of zeros (disk images, database files).
    #[arg(long)]
    pub sparse: bool,
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

/// The `--keep-*` counting rules, shared by `forget` and instance settings.
#[derive(Args, Debug, Default)]
pub struct KeepArgs {
    #[arg(long)]
    pub keep_last: Option<u32>,
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    #[arg(long)]
    pub keep_daily: Option<u32>,
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep everything this close to the newest snapshot, e.g. 1y2m3d4h.
    #[arg(long)]
    pub keep_within: Option<String>,
}

impl KeepArgs {
    pub fn retention(self) -> cairn::schedule::Retention {
        cairn::schedule::Retention {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
        }
    }
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Remove these snapshots (ids or prefixes), safety snapshots included, instead of applying a policy.
    #[arg(conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                                "keep_yearly", "keep_within", "keep_tags", "include_safety", "tags"])]
    pub snapshots: Vec<String>,
    #[arg(long)]
    pub instance: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag")]
    pub keep_tags: Vec<String>,
    /// Show what would be removed and why the rest is kept.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply the policy to safety snapshots too (by default they are always kept).
    #[arg(long)]
    pub include_safety: bool,
    /// Let the policy remove every snapshot of a group (`--keep-last 0`); refused without it.
    #[arg(long)]
    pub unsafe_allow_remove_all: bool,
    /// Run prune afterwards.
    #[arg(long)]
    pub prune: bool,
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
pub enum ScheduleKind {
    /// A crontab entry (for the user running it; its log under $XDG_STATE_HOME/cairn/).
    Crontab {
        /// Where `run-due` logs (default: $XDG_STATE_HOME/cairn/run-due.log, else ~/.local/state/cairn/).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// A systemd service + timer (system units run as the generating user when not root).
    Systemd {
        /// Units for the user's own service manager (~/.config/systemd/user).
        #[arg(long)]
        user: bool,
    },
}

/// Instance settings shared by `instance add` and `instance set`.
#[derive(Args, Debug, Default)]
pub struct InstanceSettings {
    /// Database to dump with pg_dump.
    #[arg(long)]
    pub pg: Option<String>,
    /// libpq connection string (no password: use ~/.pgpass or PGPASSWORD).
    #[arg(long)]
    pub pg_conn: Option<String>,
    /// A file tree of the instance (absolute); repeatable.
    #[arg(long = "path")]
    pub paths: Vec<PathBuf>,
    /// Cron expression (five fields), overriding the priority's preset.
    #[arg(long)]
    pub schedule: Option<String>,
    /// high | medium | low | manual (presets for schedule and retention).
    #[arg(long)]
    pub priority: Option<String>,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Shell command run before a backup; its failure aborts the run.
    #[arg(long)]
    pub pre_hook: Option<String>,
    /// Shell command run after a backup (also after a failed one).
    #[arg(long)]
    pub post_hook: Option<String>,
    /// Shell command run after every backup, with the run as JSON on stdin (`status`: success, partial
    /// or failed).
    #[arg(long)]
    pub notify: Option<String>,
    /// Dead man's switch (healthchecks.io style): POST URL/start, then URL on success or URL/fail on
    /// failure or a partial run; "" removes it.
    #[arg(long, value_name = "URL")]
    pub ping_url: Option<String>,
    /// The instance's excludes; any of these flags replaces all of the stored ones.
    #[command(flatten)]
    pub excludes: ExcludeArgs,
    /// Remove the instance's excludes.
    #[arg(long, conflicts_with_all = ["exclude", "iexclude", "exclude_files", "if_present", "exclude_caches", "one_file_system"])]
    pub clear_excludes: bool,
    /// Point-in-time recovery on: the cluster archives its WAL into the repository (see `instance wal-setup`).
    #[arg(long)]
    pub wal: bool,
    /// Point-in-time recovery off (`wal-push` then refuses the instance).
    #[arg(long, conflicts_with = "wal")]
    pub no_wal: bool,
}

#[derive(Subcommand, Debug)]
pub enum InstanceAction {
    /// Define an instance.
    Add {
        name: String,
        #[command(flatten)]
        settings: InstanceSettings,
    },
    /// List instances.
    List,
    /// Show one instance's configuration and state.
    Show { name: String },
    /// Change settings of an instance.
    Set {
        name: String,
        #[command(flatten)]
        settings: InstanceSettings,
    },
    /// Skip the instance in run-due and the daemon.
    Pause { name: String },
    /// Undo pause.
    Resume { name: String },
    /// Remove the instance's configuration (its snapshots stay unless --purge).
    Remove {
        name: String,
        /// Also forget every snapshot of the instance (space is reclaimed by `prune`).
        #[arg(long)]
        purge: bool,
    },
    /// Print (or with --apply set through ALTER SYSTEM) the server settings that archive WAL to cairn.
    WalSetup {
        name: String,
        /// Apply them to the instance's server (ALTER SYSTEM, then pg_reload_conf()).
        #[arg(long)]
        apply: bool,
        /// archive_timeout in seconds: the longest a quiet server waits before archiving a segment.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86400))]
        archive_timeout: u32,
    },
    /// Take one snapshot of the instance now.
    Backup {
        name: String,
        /// Snapshot time (for imports and tests).
        #[arg(long)]
        time: Option<String>,
        /// Accept a --time more than 5 minutes after now.
        #[arg(long, requires = "time")]
        force_time: bool,
    },
    /// Restore an instance's files (the snapshot, or the latest at or before --at).
    Restore {
        name: String,
        snapshot: Option<String>,
        /// Restore the latest snapshot taken at or before this time.
        #[arg(long, conflicts_with = "snapshot")]
        at: Option<String>,
        #[command(flatten)]
        to: RestoreTo,
        /// Point-in-time recovery: build this PostgreSQL data directory from the newest base backup
        /// finished before --at (a time, or `latest` for all archived WAL), replaying the WAL archive.
        #[arg(long, value_name = "DIR", requires = "at", conflicts_with_all = ["snapshot", "pg_target", "in_place"])]
        pg_datadir: Option<PathBuf>,
        /// Start the restored server, wait until it reached --at and promoted, and check it accepts
        /// connections.
        #[arg(long, requires = "pg_datadir")]
        start: bool,
        /// The restored server's port.
        #[arg(long, requires = "pg_datadir")]
        port: Option<u16>,
        /// Directory of pg_ctl, pg_controldata and pg_isready (default: the backed-up server's).
        #[arg(long, value_name = "DIR", requires = "pg_datadir")]
        pg_bin: Option<PathBuf>,
        /// When run as root: the OS user that owns the data directory and runs the server (default postgres).
        #[arg(long, value_name = "USER", requires = "pg_datadir")]
        os_user: Option<String>,
        /// Seconds to wait for recovery to reach --at and promote.
        #[arg(long, default_value_t = 3600, requires = "start")]
        recovery_timeout: u64,
    },
    /// Take a base backup of the instance's cluster now (with its files, without a dump).
    BaseBackup { name: String },
}

/// Where and how `instance restore` writes a snapshot (its options but those of a point-in-time recovery).
#[derive(Args, Debug)]
pub struct RestoreTo {
    /// Restore file trees under this directory.
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// Restore the database into this new database.
    #[arg(long)]
    pub pg_target: Option<String>,
    /// Restore over the live database and file trees (a safety snapshot of both is taken first).
    #[arg(long, conflicts_with_all = ["target", "pg_target"])]
    pub in_place: bool,
    /// Replace existing files under --target.
    #[arg(long)]
    pub overwrite: bool,
    /// Remove files absent from the snapshot (under --target, or the live trees with --in-place).
    #[arg(long)]
    pub delete: bool,
    /// Restore over an existing --pg-target database (a safety snapshot of it is taken first).
    #[arg(long, requires = "pg_target")]
    pub replace: bool,
    /// Restore owners and privileges too (by default pg_restore runs with --no-owner --no-acl).
    #[arg(long)]
    pub owner_acl: bool,
    /// libpq connection settings for the database restore (default: the instance's own).
    #[arg(long, value_name = "CONNINFO")]
    pub pg_conn: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairWhat {
    /// Rebuild the index from pack files and snapshot files.
    Index,
    /// Rewrite snapshots that need missing or damaged data, dropping only the affected files.
    Snapshots {
        /// Remove such snapshots instead of rewriting them.
        #[arg(long)]
        forget_damaged: bool,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// zstd level (1-19) for file contents and trees; 1 is ~40% faster on text and stores ~15% more of it
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: Option<i32>,
    /// zstd level (1-19) for stream chunks (database dumps)
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub stream_compression_level: Option<i32>,
    /// Make a plaintext repository: anyone who can read it reads every file and database it holds, and
    /// anyone who can write it can change instance configurations (whose hooks cairn runs).
    #[arg(long)]
    pub insecure_no_encryption: bool,
    /// Share the keys and chunker parameters of this repository (its password is asked for the same way),
    /// so `cairn copy` between the two deduplicates and keeps snapshot ids (borg's `--other-repo`).
    #[arg(long, value_name = "REPO", conflicts_with = "insecure_no_encryption")]
    pub from_repo: Option<PathBuf>,
    /// The cipher that seals everything stored (default: xaes-256-gcm where the processor has AES
    /// instructions, else xchacha20-poly1305); fixed for the repository's life
    #[arg(long, value_enum, conflicts_with_all = ["insecure_no_encryption", "from_repo"])]
    pub cipher: Option<CipherArg>,
}

/// `cairn init --cipher`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherArg {
    #[value(name = "xaes-256-gcm")]
    Xaes256Gcm,
    #[value(name = "xchacha20-poly1305")]
    Xchacha20Poly1305,
}

impl From<CipherArg> for cairn::crypto::Cipher {
    fn from(c: CipherArg) -> Self {
        match c {
            CipherArg::Xaes256Gcm => cairn::crypto::Cipher::Xaes256Gcm,
            CipherArg::Xchacha20Poly1305 => cairn::crypto::Cipher::XChaCha20Poly1305,
        }
    }
}

/// `cairn copy [SNAPSHOT...] --from-repo R1 [--instances]`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Snapshots of the source to copy (ids, unique prefixes or `latest`); default: all.
    pub snapshots: Vec<String>,
    /// The repository to copy from: a directory, file:///path or s3://bucket/prefix (the S3 options apply
    /// to both repositories).
    #[arg(long, value_name = "REPO", env = "CAIRN_FROM_REPO")]
    pub from_repo: PathBuf,
    /// Read the source repository's password from the first line of FILE (default: the target's source).
    #[arg(long, value_name = "FILE", env = "CAIRN_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run CMD with `sh -c` for the source repository's password (default: the target's source).
    #[arg(long, value_name = "CMD", env = "CAIRN_FROM_PASSWORD_COMMAND")]
    pub from_password_command: Option<String>,
    /// Copy the instance configurations too.
    #[arg(long)]
    pub instances: bool,
}
