//! `data_dir/group-list`: the groups created on this node at runtime, with the membership each
//! started from, so a restarted node hosts the same groups (group 0, the cluster's first group,
//! is always hosted and never listed).
//!
//! The file is MessagePack of [`GroupListFile`] (a format version and the groups), written
//! atomically (temporary file, fsync, rename, directory fsync). A file that does not decode, or
//! names a version this build does not know, is an error naming it, never a silent reset: a
//! node that forgot a group would stop answering for it while its peers still count it.

use super::member_mark::{write_atomically, WriteFailed};
use conclave_core::ids::GroupId;
use conclave_core::raft::Membership;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "group-list";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;

/// Why the group list could not be read or written; every error names the file.
#[derive(Debug, thiserror::Error)]
pub enum GroupListError {
    /// Reading, writing, syncing or renaming failed.
    #[error("group list {path}: cannot {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not decode.
    #[error("group list {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The list could not be encoded (a bug: every list is encodable).
    #[error("group list {path}: cannot encode: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// What the encoder said.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// The file was written by a build with another format.
    #[error("group list {path} has format version {found}; this build reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

impl From<WriteFailed> for GroupListError {
    fn from(WriteFailed { path, op, source }: WriteFailed) -> Self {
        GroupListError::Io { path, op, source }
    }
}

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListFile {
    /// [`VERSION`].
    pub version: u32,
    /// Every created group and the membership it started from (its bootstrap membership; the
    /// group's log holds the changes since).
    pub groups: BTreeMap<GroupId, Membership>,
}

/// The groups created on this node, durable in `data_dir/group-list`.
#[derive(Debug)]
pub struct GroupList {
    path: PathBuf,
    groups: Mutex<BTreeMap<GroupId, Membership>>,
}

impl GroupList {
    /// Reads the list of the node whose data directory is `data_dir` (empty when the file does
    /// not exist). Creates nothing.
    pub fn open(data_dir: &Path) -> Result<GroupList, GroupListError> {
        let path = data_dir.join(FILE_NAME);
        let groups = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: GroupListFile =
                    rmp_serde::from_slice(&bytes).map_err(|source| GroupListError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if file.version != VERSION {
                    return Err(GroupListError::Version {
                        path,
                        found: file.version,
                    });
                }
                file.groups
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(GroupListError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        };
        Ok(GroupList {
            path,
            groups: Mutex::new(groups),
        })
    }

    /// The listed groups and their bootstrap memberships.
    pub fn groups(&self) -> BTreeMap<GroupId, Membership> {
        self.groups.lock().clone()
    }

    /// Lists `group` with its bootstrap membership (replacing an entry of the same id), or
    /// unlists it (`None`), durably. Blocking (writes and syncs the file): call it off any
    /// arbiter that carries Raft, gossip or the transport.
    pub fn set(
        &self,
        group: GroupId,
        membership: Option<Membership>,
    ) -> Result<(), GroupListError> {
        let mut groups = self.groups.lock();
        let mut next = groups.clone();
        match membership {
            Some(m) => {
                next.insert(group, m);
            }
            None => {
                if next.remove(&group).is_none() {
                    return Ok(());
                }
            }
        }
        let file = GroupListFile {
            version: VERSION,
            groups: next,
        };
        let bytes = rmp_serde::to_vec(&file).map_err(|source| GroupListError::Encode {
            path: self.path.clone(),
            source,
        })?;
        write_atomically(&self.path, &bytes)?;
        *groups = file.groups;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use conclave_core::ids::NodeId;

    #[test]
    fn groups_survive_a_reopen_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let list = GroupList::open(dir.path()).unwrap();
        assert!(list.groups().is_empty());
        assert!(!dir.path().join(FILE_NAME).exists(), "open creates nothing");
        let m = Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
        list.set(GroupId::new(7), Some(m.clone())).unwrap();
        list.set(
            GroupId::new(9),
            Some(Membership::with_voters([NodeId::new(1)])),
        )
        .unwrap();
        list.set(GroupId::new(9), None).unwrap();
        list.set(GroupId::new(11), None).unwrap();
        let again = GroupList::open(dir.path()).unwrap();
        assert_eq!(again.groups(), BTreeMap::from([(GroupId::new(7), m)]));
        assert!(!dir.path().join("group-list.tmp").exists());
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"\xc1 not messagepack").unwrap();
        let e = GroupList::open(dir.path()).unwrap_err();
        assert!(matches!(e, GroupListError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("group-list"), "{e}");
        let future = GroupListFile {
            version: VERSION + 1,
            groups: BTreeMap::new(),
        };
        std::fs::write(&path, rmp_serde::to_vec(&future).unwrap()).unwrap();
        let e = GroupList::open(dir.path()).unwrap_err();
        assert!(matches!(e, GroupListError::Version { found, .. } if found == VERSION + 1));
    }
}
