//! `snapshots`, `show` and `ls`: listing snapshots and looking inside one, printed as text or `--json`.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cairn::latest;
use cairn::listing;
use cairn::snapshot::Snapshot;
use cairn::tree::{Node, NodeKind};
use cairn::{Id, Result};
use serde_json::json;

use super::commands::{human_bytes, Ctx, JsonArray};
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

pub fn ls(ctx: &Ctx, spec: &str, path: Option<&Path>, instance: Option<&str>) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("ls")?;
    let (_, snap) = match path {
        Some(p) if p.as_os_str().as_bytes().iter().any(|&b| b != b'/') => {
            latest::for_name(&repo, spec, instance, p)?
        }
        _ => repo.resolve_snapshot(spec, instance)?,
    };
    // Streams first (all of them, or the one PATH names), then the file tree (none if PATH is a stream).
    let streams: Vec<_> = snap
        .streams
        .iter()
        .filter(|s| path.is_none_or(|p| p.as_os_str() == s.name.as_str()))
        .collect();
    let tree = match (path, snap.tree) {
        (Some(_), _) if !streams.is_empty() => false,
        (None, None) => false,
        _ => true,
    };
    // Each entry is printed as the walk meets it (see `cairn::listing`): nothing is collected.
    let mut out = super::out::lines();
    if ctx.json {
        let mut array = JsonArray::new(&mut out);
        for s in streams {
            array.push(&json!({"path": s.name, "type": "stream", "size": s.size}))?;
        }
        if tree {
            listing::list(&repo, &snap, path.unwrap_or(Path::new("")), &mut |p, n| {
                array.push(&entry_json(p, n))
            })?;
        }
        array.finish()?;
        return Ok(EXIT_OK);
    }
    for s in streams {
        writeln!(out, "s {:>4} {:>12} [{}]", "-", s.size, s.name).map_err(super::out::error)?;
    }
    if tree {
        listing::list(&repo, &snap, path.unwrap_or(Path::new("")), &mut |p, n| {
            let (kind, size) = match &n.kind {
                NodeKind::File { size, .. } => ('-', *size),
                NodeKind::Dir { .. } => ('d', 0),
                NodeKind::Symlink { .. } => ('l', 0),
                NodeKind::Fifo => ('p', 0),
                NodeKind::CharDevice { .. } => ('c', 0),
                NodeKind::BlockDevice { .. } => ('b', 0),
            };
            let p = String::from_utf8_lossy(p);
            writeln!(out, "{kind} {:o} {:>12} {p}", n.meta.mode & 0o7777, size)
                .map_err(super::out::error)
        })?;
    }
    out.flush().map_err(super::out::error)?;
    Ok(EXIT_OK)
}

/// One entry of `ls --json`. `path` shows a name that is not UTF-8 lossily (U+FFFD); such an entry also
/// has `path_bytes`, the path's bytes in hex, which a script can use to reach the file.
fn entry_json(path: &[u8], n: &Node) -> serde_json::Value {
    let (kind, size) = match &n.kind {
        NodeKind::File { size, .. } => ("file", *size),
        NodeKind::Dir { .. } => ("dir", 0),
        NodeKind::Symlink { .. } => ("symlink", 0),
        _ => ("special", 0),
    };
    let shown = String::from_utf8_lossy(path);
    let lossy = matches!(shown, std::borrow::Cow::Owned(_));
    let mut v = json!({"path": shown, "type": kind, "size": size, "mode": n.meta.mode, "mtime": n.meta.mtime});
    if lossy {
        v["path_bytes"] = json!(hex::encode(path));
    }
    v
}
