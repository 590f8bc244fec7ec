//! `cairn key list|add|remove|passwd`: the passwords of an encrypted repository, one key file each
//! (format-spec/README.md, "Key files"). Every key file wraps the same master key, so adding or removing one
//! never re-encrypts data. A repository always keeps at least one key, and the key whose password opened it
//! is never removed by `remove` (use `passwd`, which adds the new key, and checks it reads back, before
//! removing the old one).

use cairn::crypto::{keyfile, password};
use cairn::{Error, Repository, Result};
use serde_json::json;

use super::args::KeyAction;
use super::commands::Ctx;
use super::EXIT_OK;

pub fn key(ctx: &Ctx, action: KeyAction) -> Result<i32> {
    let repo = ctx.open()?;
    if !repo.crypto().is_encrypted() {
        return Err(Error::Invalid(format!(
            "{}: the repository is not encrypted: it has no keys",
            repo.location()
        )));
    }
    match action {
        KeyAction::List => list(ctx, &repo),
        KeyAction::Add { new_password_file } => {
            repo.require_writable()?;
            let password = password::new_password(new_password_file.as_deref())?;
            let _lock = cairn::lock::acquire(repo.backend(), false, "key add")?;
            let id = keyfile::add(repo.backend().as_ref(), repo.crypto(), password.as_bytes())?;
            report(ctx, "added", &id)
        }
        KeyAction::Remove { id } => {
            repo.require_writable()?;
            let _lock = cairn::lock::acquire(repo.backend(), true, "key remove")?;
            let id = resolve(&repo, &id)?;
            if Some(id.as_str()) == repo.crypto().key_id() {
                return Err(Error::Invalid(format!(
                    "key {}: its password opened the repository; remove it with another password (or use `cairn key passwd`)",
                    &id[..12]
                )));
            }
            if keyfile::list(repo.backend().as_ref())?.len() < 2 {
                return Err(Error::Invalid(
                    "the last key of a repository is never removed".into(),
                ));
            }
            repo.backend()
                .delete(cairn::backend::ObjectKind::Key, &id)?;
            report(ctx, "removed", &id)
        }
        KeyAction::Passwd { new_password_file } => {
            repo.require_writable()?;
            let password = password::new_password(new_password_file.as_deref())?;
            let _lock = cairn::lock::acquire(repo.backend(), true, "key passwd")?;
            let id = keyfile::add(repo.backend().as_ref(), repo.crypto(), password.as_bytes())?;
            // The new key is durable, and read back and opened with the new password (`keyfile::add`),
            // before the old one goes: a crash leaves both, never neither, and a torn new key none.
            if let Some(old) = repo.crypto().key_id() {
                repo.backend()
                    .delete(cairn::backend::ObjectKind::Key, old)?;
            }
            report(ctx, "changed the password; new key", &id)
        }
    }
}

fn list(ctx: &Ctx, repo: &Repository) -> Result<i32> {
    let mut rows = Vec::new();
    for id in keyfile::list(repo.backend().as_ref())? {
        let current = Some(id.as_str()) == repo.crypto().key_id();
        match keyfile::load(repo.backend().as_ref(), &id) {
            Ok(kf) => rows.push(
                json!({"id": id, "created": kf.created, "host": kf.host, "current": current}),
            ),
            Err(e) if e.is_damage() => {
                rows.push(json!({"id": id, "current": current, "error": e.to_string()}))
            }
            Err(e) => return Err(e),
        }
    }
    if ctx.json {
        ctx.print_json(&json!({ "keys": rows }))?;
        return Ok(EXIT_OK);
    }
    outln!(" {:<12} {:<25} HOST", "ID", "CREATED");
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("?").to_string();
        let mark = if r["current"] == json!(true) {
            "*"
        } else {
            " "
        };
        outln!(
            "{mark}{:<12} {:<25} {}",
            &s("id")[..12.min(s("id").len())],
            s("created"),
            s("host")
        );
    }
    Ok(EXIT_OK)
}

/// The full id of the key named by `prefix` (unique).
fn resolve(repo: &Repository, prefix: &str) -> Result<String> {
    let all = keyfile::list(repo.backend().as_ref())?;
    let found: Vec<&String> = all.iter().filter(|id| id.starts_with(prefix)).collect();
    match found.as_slice() {
        [one] if !prefix.is_empty() => Ok((*one).clone()),
        [] | [_] => Err(Error::NotFound(format!(
            "no key {prefix:?} in this repository"
        ))),
        _ => Err(Error::Invalid(format!(
            "key prefix {prefix:?} is ambiguous"
        ))),
    }
}

fn report(ctx: &Ctx, what: &str, id: &str) -> Result<i32> {
    if ctx.json {
        ctx.print_json(&json!({ "action": what, "id": id }))?;
    } else if !ctx.quiet {
        outln!("{what} {id}");
    }
    Ok(EXIT_OK)
}
