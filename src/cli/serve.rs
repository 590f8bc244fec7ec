//! `serve` and `token`: the HTTP server's command line (the server itself is `cairn::server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use cairn::tokens::{self, Role};
use cairn::{Error, Result};

use super::commands::Ctx;
use super::EXIT_OK;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; 127.0.0.1:0 picks a free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8640")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate (chain, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Do not run the instance schedules (API and dashboard only).
    #[arg(long)]
    pub no_schedule: bool,
    /// Allow plain HTTP on a non-loopback address (tokens then cross the network in clear); not needed
    /// with --tls-cert.
    #[arg(long)]
    pub insecure_http: bool,
    /// Largest upload accepted by `POST /instances/{name}/import`, in MiB.
    #[arg(long, default_value_t = 4096)]
    pub max_upload_mib: u64,
    /// Seconds between schedule evaluations.
    #[arg(long, default_value_t = 30)]
    pub tick_seconds: u64,
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create a token; it is printed once (only its hash is stored in the repository).
    Add {
        name: String,
        /// viewer (reads), operator (also backs up, checks, pauses), admin (also restores, deletes,
        /// configures, uploads).
        #[arg(long)]
        role: String,
    },
    /// List tokens (names and roles; the tokens themselves are not stored).
    List,
    /// Remove a token; a running server refuses it within seconds.
    Remove { name: String },
}

pub fn serve(ctx: &Ctx, a: ServeArgs) -> Result<i32> {
    let (repo, _) = ctx.repo_url()?;
    let opts = cairn::server::ServeOptions {
        repo,
        listen: a.listen,
        tls: a
            .tls_cert
            .zip(a.tls_key)
            .map(|(cert, key)| cairn::server::tls::TlsFiles { cert, key }),
        schedule: !a.no_schedule,
        insecure_http: a.insecure_http,
        upload_limit: a.max_upload_mib.saturating_mul(1 << 20),
        tick: std::time::Duration::from_secs(a.tick_seconds.max(1)),
    };
    cairn::server::run(opts)?;
    Ok(EXIT_OK)
}

pub fn token(ctx: &Ctx, action: TokenAction) -> Result<i32> {
    let repo = ctx.open()?;
    match action {
        TokenAction::Add { name, role } => {
            let role: Role = role
                .parse()
                .map_err(|e: Error| Error::Usage(e.to_string()))?;
            let token = tokens::add(&repo, &name, role)?;
            if ctx.json {
                ctx.print_json(&json!({"name": name, "role": role, "token": token}))?;
            } else {
                outln!("{token}");
                if !ctx.quiet {
                    eprintln!(
                        "cairn: token {name} ({}) created; it is shown only now: keep it safe",
                        role.as_str()
                    );
                }
            }
        }
        TokenAction::List => {
            let list = tokens::list(&repo)?;
            if ctx.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|t| json!({"name": t.name, "role": t.role, "created": t.created}))
                    .collect();
                ctx.print_json(&json!(v))?;
            } else {
                for t in &list {
                    outln!(
                        "{:<20} {:<8} {}",
                        t.name,
                        t.role.as_str(),
                        super::instance::human_time(t.created)
                    );
                }
            }
        }
        TokenAction::Remove { name } => {
            tokens::remove(&repo, &name)?;
            if ctx.json {
                ctx.print_json(&json!({"name": name, "action": "removed"}))?;
            } else if !ctx.quiet {
                outln!("removed token {name}");
            }
        }
    }
    Ok(EXIT_OK)
}
