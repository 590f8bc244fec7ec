//! cairn: a content-addressed, deduplicating snapshot engine for application instances made of a
//! PostgreSQL database and a file store.
//!
//! The library owns every operation; the `cairn` binary only parses arguments and prints results. The
//! on-disk format is specified in `format-spec/`; each module that encodes part of it names its section.
//!
//! Module map: [`chunking`] (FastCDC), [`hashing`] (ids), [`pack`] (pack format), [`pack_writer`] (dedup and
//! durable pack writes), [`index`] (SQLite), [`tree`], [`walk`] (the one walk of snapshot trees), [`snapshot`],
//! [`repo`] (layout, and the one read path of blobs with [`fetch`]), [`backup`], [`restore`], [`listing`]
//! (`ls`, streamed), [`check`], [`repair`], [`lock`], [`config`], [`postgres`] (pg_dump streams and verified
//! restores).

pub mod archive;
pub mod backend;
pub mod backup;
pub mod check;
pub mod chunking;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod daemon;
pub mod delete_absent;
pub mod delta;
pub mod diff;
pub mod error;
pub mod exclude;
pub mod export;
pub mod fetch;
pub mod find;
pub mod fsutil;
pub mod gc;
pub mod hashing;
pub mod index;
pub mod index_object;
pub mod index_sync;
pub mod instance;
pub mod instance_restore;
pub mod instance_store;
pub mod interrupt;
pub mod latest;
pub mod listing;
pub mod lock;
pub mod log_file;
pub mod marks;
pub mod mount;
pub mod object_io;
pub mod overview;
pub mod pack;
pub mod pack_writer;
pub mod ping;
pub mod pitr;
pub mod pitr_restore;
pub mod postgres;
pub mod progress;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod run_log;
pub mod runner;
pub mod schedule;
pub mod schedule_entries;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod tokens;
pub mod tree;
pub mod wal;
pub mod walk;
pub mod xattrs;

pub use error::{Error, Result};
pub use hashing::Id;
pub use repo::Repository;
