//! Choosing what to back up: exclude patterns (restic's semantics), tag files and file-system boundaries.
//!
//! Patterns (`--exclude`, `--iexclude`, `--exclude-file`) are globs compiled with `globset` (`*` and `?` stop
//! at `/`, `**` crosses directories, `[...]` classes, `\` escapes):
//! - a pattern without a leading `/` matches the end of a path at any depth (`*.tmp`, `cache`,
//!   `node_modules/.cache`);
//! - a pattern with a leading `/` is anchored: it matches the path below a backup path (`/cache`), the path as
//!   the snapshot shows it (`/filestore/cache`, as `ls` prints it) or the absolute path (restic's form);
//! - `!pattern` re-includes what an earlier pattern excluded; the last matching pattern decides;
//! - an excluded directory excludes everything below it, unless a `!` pattern re-includes something there
//!   (the walk then goes on below excluded directories and keeps a directory that holds a re-included entry).
//!
//! Tag files (`--exclude-if-present NAME`, `--exclude-caches`): the contents of a directory holding the tag
//! are excluded, but the directory and the tag file itself are kept (as restic does), so a restore shows the
//! directory was there on purpose. `--exclude-caches` is the tag `CACHEDIR.TAG` whose first bytes are the
//! standard signature ([`CACHEDIR_SIGNATURE`]).
//!
//! `--one-file-system`: a directory on another device than its backup path (a mount point) is kept as an
//! empty directory; nothing below it is read.
//!
//! Invariant: the filter only removes entries; it never changes what is recorded for an entry it keeps.

use std::io::Read;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The first bytes of a cache directory tag (https://bford.info/cachedir/).
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// How many excluded paths a backup reports by name (the count is always exact).
pub const REPORTED_PATHS: usize = 100;

/// What to leave out, as the user gave it (stored in instance configs and in snapshot metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludeOptions {
    /// Patterns (`!` re-includes), case-sensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Patterns matched without regard to case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iexclude: Vec<String>,
    /// Files of patterns, one a line (`#` comments and blank lines skipped), read at backup time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_files: Vec<PathBuf>,
    /// File names whose presence excludes the rest of their directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub if_present: Vec<String>,
    /// Exclude the contents of directories tagged with a valid CACHEDIR.TAG.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caches: bool,
    /// Do not descend into other file systems.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_file_system: bool,
}

impl ExcludeOptions {
    /// True if nothing is excluded.
    pub fn is_empty(&self) -> bool {
        *self == ExcludeOptions::default()
    }

    /// Checks what can be checked before a backup (stored configs): patterns compile, tag names are file
    /// names, exclude files are absolute paths (an instance runs from any directory).
    pub fn validate(&self) -> Result<()> {
        for f in &self.exclude_files {
            if !f.is_absolute() {
                return Err(Error::Invalid(format!(
                    "--exclude-file {}: must be absolute",
                    f.display()
                )));
            }
        }
        ExcludeOptions {
            exclude_files: Vec::new(),
            ..self.clone()
        }
        .compile()
        .map(|_| ())
    }

    /// Compiles the options; a bad pattern or an unreadable exclude file is an error before anything is read.
    pub fn compile(&self) -> Result<Filter> {
        let mut rules = Vec::new();
        for p in &self.exclude {
            rules.extend(Rule::parse(p, false)?);
        }
        for f in &self.exclude_files {
            let text = std::fs::read_to_string(f).at(f)?;
            for line in text.lines() {
                rules.extend(Rule::parse(line, false)?);
            }
        }
        for p in &self.iexclude {
            rules.extend(Rule::parse(p, true)?);
        }
        let mut tags: Vec<Tag> = self
            .if_present
            .iter()
            .map(|n| {
                if crate::tree::valid_name(n.as_bytes()) {
                    Ok(Tag {
                        name: n.clone(),
                        signature: None,
                    })
                } else {
                    Err(Error::Invalid(format!(
                        "--exclude-if-present {n:?}: give a file name, not a path"
                    )))
                }
            })
            .collect::<Result<_>>()?;
        if self.caches {
            tags.push(Tag {
                name: "CACHEDIR.TAG".into(),
                signature: Some(CACHEDIR_SIGNATURE),
            });
        }
        Ok(Filter {
            has_negations: rules.iter().any(|r| r.negated),
            rules,
            tags,
            one_file_system: self.one_file_system,
        })
    }
}

/// One compiled pattern.
#[derive(Debug)]
struct Rule {
    negated: bool,
    anchored: bool,
    matcher: GlobMatcher,
    /// For anchored rules: the same glob with its leading `/`, for absolute paths.
    absolute: Option<GlobMatcher>,
}

impl Rule {
    /// `None` for a blank line or a comment.
    fn parse(raw: &str, case_insensitive: bool) -> Result<Option<Rule>> {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        let (negated, pat) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let pat = pat.trim_end_matches('/');
        if pat.is_empty() || pat == "/" {
            return Err(Error::Invalid(format!("exclude pattern {raw:?} is empty")));
        }
        let glob = |p: &str| {
            GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .case_insensitive(case_insensitive)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| Error::Invalid(format!("exclude pattern {raw:?}: {e}")))
        };
        Ok(Some(match pat.strip_prefix('/') {
            Some(rel) => Rule {
                negated,
                anchored: true,
                matcher: glob(rel)?,
                absolute: Some(glob(pat)?),
            },
            None => Rule {
                negated,
                anchored: false,
                matcher: glob(&format!("**/{pat}"))?,
                absolute: None,
            },
        }))
    }

    fn matches(&self, at: &Place) -> bool {
        if self.anchored {
            self.matcher.is_match(at.below_source)
                || self.matcher.is_match(at.in_snapshot)
                || self
                    .absolute
                    .as_ref()
                    .is_some_and(|m| m.is_match(at.absolute))
        } else {
            self.matcher.is_match(at.absolute) || self.matcher.is_match(at.in_snapshot)
        }
    }
}

#[derive(Debug)]
struct Tag {
    name: String,
    signature: Option<&'static [u8]>,
}

/// Where an entry is, in the three forms patterns are matched against.
pub struct Place<'a> {
    /// Relative to the backup path it was found under (`cache/x`).
    pub below_source: &'a Path,
    /// As the snapshot shows it (`filestore/cache/x`).
    pub in_snapshot: &'a Path,
    /// The absolute path read.
    pub absolute: &'a Path,
}

/// The compiled exclusion rules of one backup.
#[derive(Debug, Default)]
pub struct Filter {
    rules: Vec<Rule>,
    has_negations: bool,
    tags: Vec<Tag>,
    one_file_system: bool,
}

impl Filter {
    /// Whether the entry at `at` is excluded, given whether its directory was (`inherited`): the last
    /// matching pattern decides, and without one the directory's verdict holds.
    pub fn excluded(&self, at: &Place, inherited: bool) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matches(at))
            .map_or(inherited, |r| !r.negated)
    }

    /// True if a `!` pattern may re-include something below an excluded directory, so the walk must go on.
    pub fn descends_into_excluded(&self) -> bool {
        self.has_negations
    }

    /// The name of a tag file in `dir` (whose entries are `names`) that excludes the rest of it, if any.
    pub fn tag_in(&self, dir: &Path, names: &[Vec<u8>]) -> Option<&str> {
        self.tags.iter().find_map(|t| {
            let present = names.iter().any(|n| n.as_slice() == t.name.as_bytes());
            (present && t.valid_in(dir)).then_some(t.name.as_str())
        })
    }

    /// Whether directories on other devices are left empty.
    pub fn one_file_system(&self) -> bool {
        self.one_file_system
    }
}

impl Tag {
    /// The tag counts if it needs no signature, or is a regular file starting with it.
    fn valid_in(&self, dir: &Path) -> bool {
        let Some(sig) = self.signature else {
            return true;
        };
        let path = dir.join(&self.name);
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => {}
            _ => return false,
        }
        let mut head = vec![0u8; sig.len()];
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && head == sig
    }
}

/// What a backup left out: the exact count and the first [`REPORTED_PATHS`] paths (as the snapshot would
/// show them). A directory is counted once, not with its contents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExcludedReport {
    pub count: u64,
    pub paths: Vec<String>,
}

impl ExcludedReport {
    pub fn add(&mut self, path: &Path, why: &str) {
        self.count += 1;
        if self.paths.len() < REPORTED_PATHS {
            let mut p = path.to_string_lossy().into_owned();
            if !why.is_empty() {
                p.push_str(&format!(" ({why})"));
            }
            self.paths.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(opts: &ExcludeOptions, below: &str) -> bool {
        let f = opts.compile().unwrap();
        // The verdict of each ancestor is inherited, as in the walk.
        let mut inherited = false;
        let mut acc = PathBuf::new();
        for c in Path::new(below).components() {
            acc.push(c);
            let (s, a) = (
                Path::new("src").join(&acc),
                Path::new("/data/src").join(&acc),
            );
            inherited = f.excluded(
                &Place {
                    below_source: &acc,
                    in_snapshot: &s,
                    absolute: &a,
                },
                inherited,
            );
        }
        inherited
    }

    fn pats(p: &[&str]) -> ExcludeOptions {
        ExcludeOptions {
            exclude: p.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn restic_pattern_semantics() {
        let o = pats(&["*.tmp", "/top", "deep/**/x", "cache"]);
        assert!(excluded(&o, "a.tmp") && excluded(&o, "d/e/a.tmp"));
        assert!(!excluded(&o, "a.tmpx"));
        assert!(excluded(&o, "top") && excluded(&o, "top/inner"));
        assert!(
            !excluded(&o, "d/top"),
            "anchored patterns match at the root only"
        );
        assert!(excluded(&o, "deep/x") && excluded(&o, "deep/a/b/x"));
        assert!(
            excluded(&o, "a/cache/file"),
            "a directory excludes its contents"
        );
        let o = pats(&["/src/top", "/data/src/abs"]);
        assert!(excluded(&o, "top"), "the path in the snapshot");
        assert!(excluded(&o, "abs"), "the absolute path");
        let o = pats(&["logs", "!logs/keep.log"]);
        assert!(excluded(&o, "logs/a.log") && !excluded(&o, "logs/keep.log"));
        let i = ExcludeOptions {
            iexclude: vec!["*.JPG".into()],
            ..Default::default()
        };
        assert!(excluded(&i, "a/photo.jpg") && excluded(&i, "b.Jpg"));
        assert!(!excluded(&pats(&["*.JPG"]), "a/photo.jpg"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(pats(&["a[b"]).compile().is_err());
        assert!(pats(&["!"]).compile().is_err());
        let o = ExcludeOptions {
            if_present: vec!["a/b".into()],
            ..Default::default()
        };
        assert!(o.compile().is_err());
    }
}
