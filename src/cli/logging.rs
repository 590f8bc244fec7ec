//! Log lines on stderr through `tracing`: what `daemon` and `run-due` report about each run, and the
//! warnings of instance runs (a notifier or ping that failed). `--log-format plain` (the default) prints one
//! human line per event (timestamp, level, message, then `key=value` fields such as `instance=web`;
//! coloured only on a terminal); `--log-format json` prints one JSON object per line with `timestamp`,
//! `level`, `message` and the fields at the top level (`instance`, `snapshot`, `error`, ...), for journald,
//! Loki and the like. Events below INFO are not shown, and with `--quiet` only warnings and errors are.

use std::io::IsTerminal;

use super::args::LogFormat;

/// Installs the process's subscriber; a second call (tests) keeps the first.
pub fn init(format: LogFormat, quiet: bool) {
    let level = if quiet {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    let base = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let _ = match format {
        LogFormat::Plain => base.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
