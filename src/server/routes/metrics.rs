//! Prometheus metrics.

use super::*;

/// Prometheus text format: per instance, the last successful backup's time, duration and bytes added,
/// stored bytes, dedup ratio and failed runs; the repository's pack bytes.
pub(super) async fn metrics(State(st): St, headers: HeaderMap) -> ApiResult<Response> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let repo = st.repo.clone();
    let text = blocking(move || {
        let o = Overview::read(&repo)?;
        let pack_bytes: u64 = repo.pack_files()?.iter().map(|(_, n)| n).sum();
        Ok(prometheus_text(&o, pack_bytes))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

pub(super) fn prometheus_text(o: &Overview, pack_bytes: u64) -> String {
    let mut lines: HashMap<&str, (&str, Vec<String>)> = HashMap::new();
    let mut add = |metric: &'static str, help: &'static str, instance: &str, value: String| {
        lines
            .entry(metric)
            .or_insert_with(|| (help, Vec::new()))
            .1
            .push(format!("{metric}{{instance=\"{instance}\"}} {value}"));
    };
    for c in &o.configs {
        let name = c.name.as_str();
        let backups: Vec<_> = o
            .runs
            .iter()
            .filter(|r| r.instance.as_deref() == Some(name) && r.kind == "backup")
            .collect();
        if let Some(r) = backups.iter().rev().find(|r| r.status == "ok") {
            let end = r.end.unwrap_or(r.start);
            add(
                "cairn_last_success_timestamp_seconds",
                "End of the last successful backup.",
                name,
                end.timestamp().to_string(),
            );
            let secs = (end - r.start).num_milliseconds() as f64 / 1000.0;
            add(
                "cairn_last_backup_duration_seconds",
                "Duration of the last successful backup.",
                name,
                format!("{secs}"),
            );
            add(
                "cairn_last_backup_bytes_added",
                "Bytes the last successful backup added.",
                name,
                r.bytes.unwrap_or(0).to_string(),
            );
        }
        let failures = backups.iter().filter(|r| r.status == "failed").count();
        add(
            "cairn_backup_failures_total",
            "Failed backups in the run log.",
            name,
            failures.to_string(),
        );
        let s = o.stats_of(name);
        add(
            "cairn_instance_stored_bytes",
            "Bytes the instance's snapshots added.",
            name,
            s["stored_bytes"].to_string(),
        );
        add(
            "cairn_instance_dedup_ratio",
            "Logical over stored bytes.",
            name,
            s["dedup_ratio"].to_string(),
        );
    }
    let mut names: Vec<_> = lines.keys().copied().collect();
    names.sort_unstable();
    let mut out = String::new();
    for n in names {
        let (help, rows) = &lines[n];
        out.push_str(&format!("# HELP {n} {help}\n# TYPE {n} gauge\n"));
        for r in rows {
            out.push_str(r);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "# HELP cairn_repository_stored_bytes Bytes in pack files.\n# TYPE cairn_repository_stored_bytes gauge\ncairn_repository_stored_bytes {pack_bytes}\n"
    ));
    out
}
