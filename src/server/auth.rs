//! Who is calling: bearer tokens checked against the repository's token hashes (see [`crate::tokens`]),
//! roles enforced per route, and the audit record of every mutating call in the run log.
//!
//! No valid token: 401. A valid token whose role is below the route's: 403 (and, for a mutating route, a
//! `denied` entry in the run log). The token set is read from the repository at most every
//! [`RELOAD_AFTER`], so `cairn token remove` takes effect within seconds without a restart.
//!
//! The run log is shared and shown on terminals: what a request chose (a path's instance name, snapshot or
//! job id, an error quoting them) is recorded only as plain, short text ([`plain`]), and an instance only
//! under a name an instance may have, so no caller writes escapes, line breaks or kilobytes into it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;

use super::errors::{ApiError, ApiResult};
use crate::instance::RunRecord;
use crate::repo::Repository;
use crate::tokens::{Role, TokenSet};

/// How long a read token set is trusted.
pub const RELOAD_AFTER: Duration = Duration::from_secs(2);

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: String,
    pub role: Role,
}

/// The token set, re-read when stale.
pub struct Auth {
    repo: Arc<Repository>,
    cache: Mutex<Option<(Instant, Arc<TokenSet>)>>,
    /// Held while the token set is read again: one read for all the requests that found it stale.
    reload: tokio::sync::Mutex<()>,
}

impl Auth {
    pub fn new(repo: Arc<Repository>) -> Auth {
        Auth {
            repo,
            cache: Mutex::new(None),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The token set if it is fresh.
    fn fresh(&self) -> Option<Arc<TokenSet>> {
        match &*self.cache.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((at, set)) if at.elapsed() < RELOAD_AFTER => Some(set.clone()),
            _ => None,
        }
    }

    /// The current token set (read on the blocking pool when stale, by one request while the others
    /// wait for it: a busy server would otherwise read the tokens once per request every few seconds).
    async fn tokens(&self) -> ApiResult<Arc<TokenSet>> {
        if let Some(set) = self.fresh() {
            return Ok(set);
        }
        let _reading = self.reload.lock().await;
        if let Some(set) = self.fresh() {
            return Ok(set);
        }
        let repo = self.repo.clone();
        let set = Arc::new(super::blocking(move || TokenSet::load(&repo)).await?);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    /// The caller, if its bearer token is valid and its role at least `need`. A mutating route (`action`
    /// given) that is refused for the role is recorded as denied.
    pub async fn require(
        &self,
        headers: &HeaderMap,
        need: Role,
        action: Option<(&str, Option<&str>)>,
    ) -> ApiResult<Caller> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid API token is required (Authorization: Bearer TOKEN; see `cairn token add`)",
            )
        };
        let presented = presented.ok_or_else(unauthorized)?;
        let tokens = self.tokens().await?;
        let record = tokens.verify(presented).ok_or_else(unauthorized)?;
        let caller = Caller {
            token: record.name.clone(),
            role: record.role,
        };
        if caller.role < need {
            let msg = format!(
                "token {} has role {}; this needs {}",
                caller.token,
                caller.role.as_str(),
                need.as_str()
            );
            if let Some((what, instance)) = action {
                self.audit(&caller, what, instance, "denied", Some(msg.clone()))
                    .await;
            }
            return Err(ApiError::new(StatusCode::FORBIDDEN, msg));
        }
        Ok(caller)
    }

    /// Records a mutating call in the run log: kind `api:<action>:<token>`, the instance it targets, its
    /// result (`ok`, `accepted` for a job started, `failed`, `denied`). A failure to record is printed, not
    /// fatal to the call (the repository may be full; the call itself already said so).
    pub async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        instance: Option<&str>,
        status: &str,
        detail: Option<String>,
    ) {
        let now = Utc::now();
        let record = RunRecord {
            instance: instance
                .filter(|i| crate::instance::validate_name(i).is_ok())
                .map(str::to_string),
            kind: format!("api:{}:{}", plain(action), caller.token),
            start: now,
            end: Some(now),
            status: status.to_string(),
            bytes: None,
            snapshot_id: None,
            error: detail.as_deref().map(plain),
        };
        let repo = self.repo.clone();
        if let Err(e) = super::blocking(move || crate::instance::record_run(&repo, &record)).await {
            eprintln!(
                "cairn serve: warning: could not record an API call: {}",
                e.message
            );
        }
    }
}

/// Longest text of a request recorded in the run log, in characters.
const RECORDED_TEXT: usize = 200;

/// `text` as the run log may hold it: control characters (and other non-printing ones) escaped, at most
/// [`RECORDED_TEXT`] characters (cut with an ellipsis).
fn plain(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            let keep =
                !c.is_control() && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}');
            let shown: Vec<char> = if keep {
                vec![c]
            } else {
                c.escape_unicode().collect()
            };
            shown
        })
        .collect();
    match escaped.char_indices().nth(RECORDED_TEXT) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn recorded_text_is_plain_and_short() {
        assert_eq!(plain("forget ab12"), "forget ab12");
        assert_eq!(plain("a\u{1b}[2J\nb"), "a\\u{1b}[2J\\u{a}b");
        assert_eq!(plain(&"é".repeat(500)).chars().count(), 201);
    }
}
