//! Dead man's switch pings for an instance's `ping_url` (healthchecks.io and compatible services).
//!
//! Protocol (healthchecks' own): `POST URL/start` when a run begins, `POST URL` when it succeeds, and
//! `POST URL/fail` when it fails. A partial run (a snapshot written without some files) also pings
//! `URL/fail`: these services know no "warning" state, and a snapshot missing files needs someone's
//! attention as much as a failed one; the body (the run as JSON, `status: "partial"`) says which it was.
//! The body of a finishing ping is the run report (services show it as the ping's log).
//!
//! A ping is best effort: one attempt with a 10-second timeout, and a failure (unreachable, an HTTP error
//! status) is returned for the caller to print as a warning; it never fails the backup. URLs are checked
//! when the instance is configured: `http://` or `https://`, no whitespace or control characters.

use std::time::Duration;

use crate::error::{Error, Result};

/// Which moment of a run a ping reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Start,
    Success,
    Fail,
}

/// How long one ping may take (connect, send and response together).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses what is not an `http(s)://` URL or holds whitespace or control characters.
pub fn validate_url(url: &str) -> Result<()> {
    let scheme_ok = ["http://", "https://"]
        .iter()
        .any(|s| url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s));
    if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Invalid(format!(
            "--ping-url {url:?}: want an http:// or https:// URL without spaces (e.g. https://hc-ping.com/UUID)"
        )));
    }
    Ok(())
}

/// The URL a signal goes to: `URL/start`, `URL`, `URL/fail` (before any query string).
pub fn endpoint(base: &str, signal: Signal) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let path = path.trim_end_matches('/');
    let mut url = match signal {
        Signal::Start => format!("{path}/start"),
        Signal::Success => path.to_string(),
        Signal::Fail => format!("{path}/fail"),
    };
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Sends one ping with `body` (JSON, possibly empty).
pub fn send(base: &str, signal: Signal, body: &[u8]) -> Result<()> {
    let url = endpoint(base, signal);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body)
        .map(drop)
        .map_err(|e| Error::Command(format!("ping {url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_healthchecks_convention() {
        let b = "https://hc-ping.com/abc/";
        assert_eq!(endpoint(b, Signal::Start), "https://hc-ping.com/abc/start");
        assert_eq!(endpoint(b, Signal::Success), "https://hc-ping.com/abc");
        assert_eq!(
            endpoint("http://h/p?k=1", Signal::Fail),
            "http://h/p/fail?k=1"
        );
        assert!(validate_url("https://hc-ping.com/x").is_ok());
        for bad in [
            "hc-ping.com/x",
            "ftp://x",
            "http://a b",
            "http://a\n",
            "https://",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }
}
