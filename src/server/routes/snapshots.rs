//! Snapshots: show, forget, and download as a streamed archive.

use super::*;

pub(super) async fn show_snapshot(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    st.auth.require(&headers, Role::Viewer, None).await?;
    let repo = st.repo.clone();
    let v = blocking(move || {
        let (id, s) = repo.resolve_snapshot(&id, None)?;
        Ok(s.to_json(&id))
    })
    .await?;
    Ok(Json(v))
}

pub(super) async fn forget_snapshot(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let caller = st
        .auth
        .require(&headers, Role::Admin, Some(("forget", None)))
        .await?;
    let repo = st.repo.clone();
    let target = id.clone();
    audited(
        &st,
        &caller,
        &format!("forget {target}"),
        None,
        async move {
            let v = blocking(move || {
                if id == "latest" {
                    return Err(Error::Invalid(
                        "forget takes a snapshot id, not `latest`".into(),
                    ));
                }
                let (id, _) = repo.resolve_snapshot(&id, None)?;
                crate::gc::forget_ids(&repo, &[id], false)?;
                Ok(json!({"removed": 1, "snapshots": [id.to_hex()]}))
            })
            .await?;
            Ok(Json(v))
        },
    )
    .await
}

#[derive(Deserialize)]
pub(super) struct DownloadQuery {
    format: Option<String>,
}

/// A `Write` that hands its bytes to the response body; a client that went away makes it fail, which
/// stops the export (its read lock and open files go with it). So does a client that stays connected but
/// takes nothing for [`STALLED_AFTER`]: it would otherwise hold the lock and a blocking thread forever.
pub(super) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
    /// The runtime, to wait for room in the channel with a deadline (from a blocking-pool thread).
    rt: tokio::runtime::Handle,
}

const CHUNK: usize = 256 * 1024;

/// A download whose client has taken nothing for this long is abandoned.
const STALLED_AFTER: Duration = Duration::from_secs(300);

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let sent = self
            .rt
            .block_on(tokio::time::timeout(STALLED_AFTER, self.tx.send(Ok(chunk))));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub(super) async fn download(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    st.auth.require(&headers, Role::Operator, None).await?;
    let format: crate::export::ExportFormat = q.format.as_deref().unwrap_or("tar").parse()?;
    let (ext, mime) = match format {
        crate::export::ExportFormat::Tar | crate::export::ExportFormat::OdooTar => {
            ("tar", "application/x-tar")
        }
        crate::export::ExportFormat::Zip | crate::export::ExportFormat::OdooZip => {
            ("zip", "application/zip")
        }
    };
    let opts = crate::export::ExportOptions {
        format,
        filestore: None,
    };
    let repo = st.repo.clone();
    // Resolved before the answer starts, so that a wrong id is a 404, not a cut-off download.
    let r2 = repo.clone();
    let (id, snap) = blocking(move || crate::latest::for_export(&r2, &id, None, format)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<std::result::Result<(), String>>();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            rt,
        };
        let r = crate::lock::acquire_reader_on(&repo, "export").and_then(|_lock| {
            crate::export::export(&repo, &snap, &opts, &mut out)?;
            out.flush().map_err(|e| Error::io("download", e))
        });
        let _ = done_tx.send(r.map_err(|e| e.to_string()));
    });
    let stream = futures_util::stream::unfold((rx, Some(done_rx)), |(mut rx, done)| async move {
        if let Some(item) = rx.recv().await {
            return Some((item, (rx, done)));
        }
        // The export has ended. Unless it ended well, an error item makes the server cut the response: the
        // client sees a broken download, never a complete-looking one (told through this separate channel,
        // so that it arrives even when the data channel is full).
        let failure = match done?.await {
            Ok(Ok(())) => return None,
            Ok(Err(m)) => m,
            Err(_) => "the export stopped".to_string(),
        };
        Some((Err(std::io::Error::other(failure)), (rx, None)))
    });
    let disposition = format!("attachment; filename=\"{}.{ext}\"", id.short());
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
