//! The `cairn` command: parses arguments and hands them to the library (see `src/cli`).

fn main() {
    std::process::exit(cairn_cli::run());
}

#[path = "cli/mod.rs"]
mod cairn_cli;
