//! API tokens of `cairn serve`: who may call the HTTP API, and with which role.
//!
//! A token is 256 random bits, printed once by [`add`]; the repository keeps only its BLAKE3 hash, in a
//! `tokens/<name>.json` object (format-spec/README.md, section 9.1), so reading the repository does not let
//! anyone call the API. [`TokenSet::verify`] compares hashes in constant time (`subtle`), and compares against
//! every token, so the time taken tells nothing about which token, or how much of one, matched.
//!
//! Roles are ordered: a viewer reads; an operator also backs up, checks, pauses and resumes; an admin also
//! restores, deletes, changes configuration and uploads.

use std::io::Read;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::backend::{is_not_found, ObjectKind};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// What a token may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::Invalid(format!(
                "role {s:?}: want viewer, operator or admin"
            ))),
        }
    }
}

/// A stored token: its name, role and hash (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// Lowercase hex BLAKE3 of the token's text.
    pub hash: String,
    pub created: DateTime<Utc>,
}

/// Prefix of every token, so that one pasted in the wrong place is recognisable.
const PREFIX: &str = "cairn_";

fn object_name(name: &str) -> String {
    format!("{name}.json")
}

fn hash_of(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// 256 bits from the operating system's generator, as hex after [`PREFIX`]. A failure to read them is an
/// error: a token must never be guessable.
fn new_token() -> Result<String> {
    let mut bits = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bits))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(format!("{PREFIX}{}", hex::encode(bits)))
}

/// Creates token `name` with `role`; returns the token (shown once; only its hash is stored). An existing
/// name is refused: remove it first.
pub fn add(repo: &Repository, name: &str, role: Role) -> Result<String> {
    crate::instance::validate_name(name).map_err(|_| {
        Error::Invalid(format!(
            "token name {name:?}: use 1-64 of a-z, 0-9, _ and -"
        ))
    })?;
    repo.require_writable()?;
    if list(repo)?.iter().any(|t| t.name == name) {
        return Err(Error::Invalid(format!(
            "token {name} exists (remove it first with `cairn token remove {name}`)"
        )));
    }
    let token = new_token()?;
    let record = TokenRecord {
        name: name.to_string(),
        role,
        hash: hex::encode(hash_of(&token)),
        created: Utc::now(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Invalid(e.to_string()))?;
    repo.backend()
        .put(ObjectKind::Token, &object_name(name), &json)?;
    Ok(token)
}

/// Every stored token, by name; objects that do not parse grant nothing and are left out.
pub fn list(repo: &Repository) -> Result<Vec<TokenRecord>> {
    let mut out = Vec::new();
    for (object, _) in repo.backend().list(ObjectKind::Token)? {
        let bytes = match repo.backend().get(ObjectKind::Token, &object) {
            Ok(b) => b,
            // Removed since the listing, or refused unread (larger than any token): grants nothing.
            Err(e) if is_not_found(&e) || e.is_damage() => continue,
            Err(e) => return Err(e),
        };
        if let Ok(r) = serde_json::from_slice::<TokenRecord>(&bytes) {
            if object == object_name(&r.name) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes token `name`; a missing one is an error (a typo must not look like a revocation).
pub fn remove(repo: &Repository, name: &str) -> Result<()> {
    repo.require_writable()?;
    if !list(repo)?.iter().any(|t| t.name == name) {
        return Err(Error::NotFound(format!(
            "no token named {name:?} (see `cairn token list`)"
        )));
    }
    repo.backend().delete(ObjectKind::Token, &object_name(name))
}

/// The tokens a server checks requests against.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    records: Vec<(TokenRecord, [u8; 32])>,
}

impl TokenSet {
    /// Reads the repository's tokens.
    pub fn load(repo: &Repository) -> Result<TokenSet> {
        let records = list(repo)?
            .into_iter()
            .filter_map(|r| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&r.hash, &mut h).ok()?;
                Some((r, h))
            })
            .collect();
        Ok(TokenSet { records })
    }

    /// The record of the token `presented`, if it is one. Every stored hash is compared, in constant time.
    pub fn verify(&self, presented: &str) -> Option<&TokenRecord> {
        let h = hash_of(presented);
        let mut found = None;
        for (r, stored) in &self.records {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(r);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn tokens_are_stored_as_hashes_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("r"), Config::new_default()).unwrap();
        let t = add(&repo, "ci", Role::Operator).unwrap();
        assert!(t.starts_with(PREFIX) && t.len() == PREFIX.len() + 64);
        assert!(add(&repo, "ci", Role::Admin).is_err(), "duplicate name");
        assert!(add(&repo, "Bad Name", Role::Admin).is_err());
        let stored = std::fs::read_to_string(dir.path().join("r/tokens/ci.json")).unwrap();
        assert!(
            !stored.contains(&t[PREFIX.len()..]),
            "the token itself is not stored"
        );
        let set = TokenSet::load(&repo).unwrap();
        assert_eq!(set.verify(&t).map(|r| r.role), Some(Role::Operator));
        assert!(set.verify("cairn_00").is_none());
        remove(&repo, "ci").unwrap();
        assert!(remove(&repo, "ci").is_err());
        assert!(TokenSet::load(&repo).unwrap().verify(&t).is_none());
    }
}
