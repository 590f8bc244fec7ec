//! `snapshots`, `show` and `ls`: listing snapshots and looking inside one, printed as text or `--json`.

use std::io::Write;

use cairn::latest;
use cairn::restore;
use cairn::snapshot::Snapshot;
use cairn::tree::NodeKind;
use cairn::{Id, Result};
use serde_json::json;

use super::commands::{human_bytes, Ctx};
use super::EXIT_OK;

fn snapshot_json(id: &Id, s: &Snapshot) -> serde_json::Value {
    s.to_json(id)
}

pub fn snapshots(ctx: &Ctx, instance: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let list: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| instance.is_none() || s.instance.as_deref() == instance)
        .collect();
    if ctx.json {
        ctx.print_json(&serde_json::Value::Array(
            list.iter().map(|(id, s)| snapshot_json(id, s)).collect(),
        ))?;
        return Ok(EXIT_OK);
    }
    outln!(
        "{:<10} {:<25} {:<12} {:>10}  PATHS / STREAMS",
        "ID",
        "TIME",
        "INSTANCE",
        "SIZE"
    );
    for (id, s) in &list {
        let mut what: Vec<String> = s.paths.clone();
        what.extend(s.streams.iter().map(|st| format!("[{}]", st.name)));
        outln!(
            "{:<10} {:<25} {:<12} {:>10}  {}{}",
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S %:z"),
            s.instance.as_deref().unwrap_or("-"),
            human_bytes(s.summary.bytes_total),
            what.join(" "),
            if s.partial { " (partial)" } else { "" }
        );
    }
    outln!("{} snapshots", list.len());
    Ok(EXIT_OK)
}

pub fn show(ctx: &Ctx, spec: &str, instance: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let (id, s) = repo.resolve_snapshot(spec, instance)?;
    if ctx.json {
        ctx.print_json(&snapshot_json(&id, &s))?;
    } else {
        print_snapshot(&id, &s)?;
    }
    Ok(EXIT_OK)
}

/// `show` for people: one field a line, then the streams, then the recorded metadata.
fn print_snapshot(id: &Id, s: &Snapshot) -> Result<()> {
    let m = &s.summary;
    outln!("snapshot {}", id.to_hex());
    outln!("time      {}", s.time.format("%Y-%m-%d %H:%M:%S %:z"));
    outln!("host      {}", s.host);
    outln!("instance  {}", s.instance.as_deref().unwrap_or("-"));
    outln!(
        "tags      {}",
        if s.tags.is_empty() {
            "-".into()
        } else {
            s.tags.join(", ")
        }
    );
    outln!(
        "paths     {}",
        if s.paths.is_empty() {
            "-".into()
        } else {
            s.paths.join(" ")
        }
    );
    outln!("parent    {}", s.parent.as_deref().unwrap_or("-"));
    if s.partial {
        outln!("partial   yes: some files could not be read");
    }
    for st in &s.streams {
        outln!("stream    {}", st.name);
    }
    outln!(
        "summary   {} new, {} changed, {} unmodified files; {} total, {} added",
        m.files_new,
        m.files_changed,
        m.files_unmodified,
        human_bytes(m.bytes_total),
        human_bytes(m.bytes_added)
    );
    if let Some(meta) = &s.metadata {
        outln!(
            "metadata  {}",
            serde_json::to_string_pretty(meta).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn ls(ctx: &Ctx, spec: &str, path: Option<&str>, instance: Option<&str>) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("ls")?;
    let (_, snap) = match path {
        Some(p) if !p.trim_matches('/').is_empty() => latest::for_name(&repo, spec, instance, p)?,
        _ => repo.resolve_snapshot(spec, instance)?,
    };
    // Streams first (all of them, or the one PATH names), then the file tree (none if PATH is a stream).
    let streams: Vec<_> = snap
        .streams
        .iter()
        .filter(|s| path.is_none_or(|p| p == s.name))
        .collect();
    let entries = match (path, snap.tree) {
        (Some(_), _) if !streams.is_empty() => Vec::new(),
        (None, None) => Vec::new(),
        _ => restore::list(&repo, &snap, path.unwrap_or(""))?,
    };
    let mut out = super::out::Stdout;
    if ctx.json {
        let streams = streams
            .iter()
            .map(|s| json!({"path": s.name, "type": "stream", "size": s.size}));
        let v: Vec<_> = streams
            .chain(entries.iter()
            .map(|(p, n)| {
                let (kind, size) = match &n.kind {
                    NodeKind::File { size, .. } => ("file", *size),
                    NodeKind::Dir { .. } => ("dir", 0),
                    NodeKind::Symlink { .. } => ("symlink", 0),
                    _ => ("special", 0),
                };
                json!({"path": p, "type": kind, "size": size, "mode": n.meta.mode, "mtime": n.meta.mtime})
            }))
            .collect();
        ctx.print_json(&serde_json::Value::Array(v))?;
        return Ok(EXIT_OK);
    }
    for s in streams {
        writeln!(out, "s {:>4} {:>12} [{}]", "-", s.size, s.name).map_err(super::out::error)?;
    }
    for (p, n) in entries {
        let (kind, size) = match &n.kind {
            NodeKind::File { size, .. } => ('-', *size),
            NodeKind::Dir { .. } => ('d', 0),
            NodeKind::Symlink { .. } => ('l', 0),
            NodeKind::Fifo => ('p', 0),
            NodeKind::CharDevice { .. } => ('c', 0),
            NodeKind::BlockDevice { .. } => ('b', 0),
        };
        writeln!(out, "{kind} {:o} {:>12} {p}", n.meta.mode & 0o7777, size)
            .map_err(super::out::error)?;
    }
    Ok(EXIT_OK)
}
