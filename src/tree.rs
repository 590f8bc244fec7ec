//! Tree objects (format-spec/README.md, "Trees"): one per directory, a sorted list of nodes, stored as a blob
//! of kind `Tree` whose id is the BLAKE3 of its encoding. Subdirectories are referenced by id, so an unchanged
//! subtree encodes to the same bytes and is stored once (a Merkle DAG).
//!
//! Invariants enforced on decode (a tree is untrusted input): names are non-empty, not `.` or `..`, contain no
//! `/` or NUL, and are strictly ascending by bytes (which also rules out duplicates). Restore relies on this to
//! never write outside its target.
//!
//! Versions: a tree none of whose nodes has extended attributes is written as version 1, byte for byte as
//! before they were recorded (so such trees keep their ids and deduplicate against older snapshots); a tree
//! with any is version 2: the version 1 fields followed by one list of attributes per node. Readers that know
//! only version 1 refuse version 2 trees instead of misreading them (format-spec section 6).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hashing::Id;

/// Encoding version of trees without extended attributes.
pub const TREE_VERSION: u8 = 1;
/// Encoding version of trees where some node has extended attributes.
pub const TREE_VERSION_XATTRS: u8 = 2;

/// One extended attribute (POSIX ACLs are the `system.posix_acl_access` and `system.posix_acl_default`
/// attributes, in the kernel's binary form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Metadata recorded for every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    /// Permission and type bits as `st_mode` reports them.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// ctime, inode, device and link count serve change detection and hard-link grouping; they are not restored.
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub inode: u64,
    pub device: u64,
    pub nlink: u64,
    /// Extended attributes sorted by name; encoded apart from the other fields (version 2 trees only).
    #[serde(skip)]
    pub xattrs: Vec<Xattr>,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file: its size and the ids of its chunks, in order.
    File { size: u64, chunks: Vec<Id> },
    /// A directory: the id of its tree object.
    Dir { subtree: Id },
    /// A symbolic link: its target, byte for byte (not resolved).
    Symlink { target: Vec<u8> },
    /// A named pipe.
    Fifo,
    /// A character device (`rdev` as the kernel reports it).
    CharDevice { rdev: u64 },
    /// A block device.
    BlockDevice { rdev: u64 },
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The file name's bytes (not necessarily UTF-8).
    pub name: Vec<u8>,
    pub kind: NodeKind,
    pub meta: Meta,
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub version: u8,
    pub nodes: Vec<Node>,
}

/// The encoding of a version 2 tree: the version 1 fields, then each node's attributes in node order.
#[derive(Serialize)]
struct WireV2Ref<'a> {
    version: u8,
    nodes: &'a [Node],
    xattrs: Vec<&'a [Xattr]>,
}

#[derive(Deserialize)]
struct WireV2 {
    version: u8,
    nodes: Vec<Node>,
    xattrs: Vec<Vec<Xattr>>,
}

/// True if `name` is a single safe path component.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl Tree {
    /// Builds a tree, sorting nodes by name; duplicate or unsafe names are an error.
    pub fn new(mut nodes: Vec<Node>) -> Result<Tree> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let version = if nodes.iter().any(|n| !n.meta.xattrs.is_empty()) {
            TREE_VERSION_XATTRS
        } else {
            TREE_VERSION
        };
        let tree = Tree { version, nodes };
        tree.validate()?;
        Ok(tree)
    }

    /// Deterministic encoding (postcard) and its id.
    ///
    /// The id is the plain BLAKE3 of the bytes: in an encrypted repository a tree's blob id is keyed
    /// ([`crate::crypto::Crypto::blob_id`]); writers name the blob through their repository's keys.
    pub fn encode(&self) -> Result<(Vec<u8>, Id)> {
        let bytes = if self.version == TREE_VERSION_XATTRS {
            let wire = WireV2Ref {
                version: self.version,
                nodes: &self.nodes,
                xattrs: self
                    .nodes
                    .iter()
                    .map(|n| n.meta.xattrs.as_slice())
                    .collect(),
            };
            postcard::to_allocvec(&wire)
        } else {
            postcard::to_allocvec(self)
        }
        .map_err(|e| Error::corrupt("tree encoding", e))?;
        let id = Id::of(&bytes);
        Ok((bytes, id))
    }

    /// Decodes and validates an untrusted tree.
    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        let tree = if bytes.first() == Some(&TREE_VERSION_XATTRS) {
            let wire: WireV2 =
                postcard::from_bytes(bytes).map_err(|e| Error::corrupt("tree", e))?;
            if wire.xattrs.len() != wire.nodes.len() {
                return Err(Error::corrupt(
                    "tree",
                    "attribute lists do not match the nodes",
                ));
            }
            let mut nodes = wire.nodes;
            for (n, x) in nodes.iter_mut().zip(wire.xattrs) {
                n.meta.xattrs = x;
            }
            Tree {
                version: wire.version,
                nodes,
            }
        } else {
            postcard::from_bytes(bytes).map_err(|e| Error::corrupt("tree", e))?
        };
        tree.validate()?;
        Ok(tree)
    }

    fn validate(&self) -> Result<()> {
        let has_xattrs = self.nodes.iter().any(|n| !n.meta.xattrs.is_empty());
        let expected = if has_xattrs {
            TREE_VERSION_XATTRS
        } else {
            TREE_VERSION
        };
        if self.version != expected {
            return Err(Error::corrupt(
                "tree",
                format!("unsupported tree version {}", self.version),
            ));
        }
        for n in &self.nodes {
            for (i, x) in n.meta.xattrs.iter().enumerate() {
                if x.name.is_empty() || x.name.contains(&0) {
                    return Err(Error::corrupt("tree", "invalid extended attribute name"));
                }
                if i > 0 && n.meta.xattrs[i - 1].name >= x.name {
                    return Err(Error::corrupt(
                        "tree",
                        "extended attributes not sorted or duplicated",
                    ));
                }
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !valid_name(&n.name) {
                return Err(Error::corrupt(
                    "tree",
                    format!("unsafe entry name {:?}", String::from_utf8_lossy(&n.name)),
                ));
            }
            if i > 0 && self.nodes[i - 1].name >= n.name {
                return Err(Error::corrupt("tree", "entries not sorted or duplicated"));
            }
        }
        Ok(())
    }

    /// The node named `name`, by binary search.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &[u8]) -> Node {
        Node {
            name: name.to_vec(),
            kind: NodeKind::File {
                size: 1,
                chunks: vec![Id::of(b"c")],
            },
            meta: Meta::default(),
        }
    }

    #[test]
    fn encoding_is_deterministic_and_order_independent() {
        let a = Tree::new(vec![file(b"b"), file(b"a")]).unwrap();
        let b = Tree::new(vec![file(b"a"), file(b"b")]).unwrap();
        assert_eq!(a.encode().unwrap(), b.encode().unwrap());
        let (bytes, _) = a.encode().unwrap();
        assert_eq!(Tree::decode(&bytes).unwrap(), a);
        assert!(a.get(b"b").is_some() && a.get(b"c").is_none());
    }

    #[test]
    fn unsafe_names_are_rejected() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(Tree::new(vec![file(bad)]).is_err());
            let t = Tree {
                version: TREE_VERSION,
                nodes: vec![file(bad)],
            };
            let bytes = postcard::to_allocvec(&t).unwrap();
            assert!(Tree::decode(&bytes).is_err());
        }
        assert!(Tree::new(vec![file(b"x"), file(b"x")]).is_err());
        assert!(
            Tree::new(vec![file(b"\xff\xfe")]).is_ok(),
            "non-UTF-8 names are fine"
        );
    }

    #[test]
    fn xattrs_make_a_version_2_tree_that_round_trips_and_version_1_is_unchanged() {
        let plain = Tree::new(vec![file(b"a")]).unwrap();
        assert_eq!(plain.version, TREE_VERSION);
        assert_eq!(
            plain.encode().unwrap().0,
            postcard::to_allocvec(&plain).unwrap()
        );
        let mut n = file(b"b");
        n.meta.xattrs = vec![Xattr {
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
        }];
        let t = Tree::new(vec![file(b"a"), n]).unwrap();
        assert_eq!(t.version, TREE_VERSION_XATTRS);
        let (bytes, _) = t.encode().unwrap();
        assert_eq!(Tree::decode(&bytes).unwrap(), t);
        // A version 1 reader (the plain derive, then the version check) refuses it.
        let old: Tree = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old.version, 2);
        // Version 2 without any attribute is not canonical: corrupt.
        let mut bare = postcard::to_allocvec(&plain).unwrap();
        bare[0] = 2;
        assert!(Tree::decode(&bare).is_err());
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(Tree::decode(b"").is_err());
        assert!(Tree::decode(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
