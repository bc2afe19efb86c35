//! `data_dir/member-of`: the groups this node has been a member of (issue 14).
//!
//! A node reports `removed` when a membership it knows no longer names it *and* an earlier one
//! did. The earlier one is normally in its log, but a snapshot compacts the log: once the
//! entries that named this node are gone (and the snapshot's membership, taken after the
//! removal, no longer names it), the log alone reads as "never a member", and a restarted node
//! would report `not_a_member`, i.e. that it waits to be added. This file keeps the fact that
//! survives compaction: one group id per line, decimal, each followed by a newline, written
//! atomically (temporary file, fsync, rename, directory fsync). The group actor asks for a
//! mark as soon as a committed membership names this node; the mark is written by the log
//! store actor (its own arbiter, in order with the compactions that could drop the evidence).
//! A file that does not parse is an error naming it, never a silent reset.

use conclave_core::raft::GroupId;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "member-of";

/// Why the membership marks could not be read or written; every error names the file.
#[derive(Debug, thiserror::Error)]
pub enum MemberMarkError {
    /// Reading, writing, syncing or renaming failed.
    #[error("membership marks {path}: cannot {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold group ids one per line.
    #[error("membership marks {path} are corrupt: line {line}: {found:?} is not a group id")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What the line holds: the file's bytes, echoed (lossily as UTF-8), not a
        /// description of the error.
        found: String,
    },
}

/// A step of [`write_atomically`] failed: the old file, if any, is still whole.
#[derive(Debug)]
pub(crate) struct WriteFailed {
    /// The file being replaced.
    pub path: PathBuf,
    /// The step: `write`, `fsync`, `rename the temporary file`, …
    pub op: &'static str,
    /// The OS error.
    pub source: std::io::Error,
}

impl From<WriteFailed> for MemberMarkError {
    fn from(WriteFailed { path, op, source }: WriteFailed) -> Self {
        MemberMarkError::Io { path, op, source }
    }
}

/// The groups this node has been a member of, durable in `data_dir/member-of`.
#[derive(Debug)]
pub struct MemberMarks {
    path: PathBuf,
    groups: Mutex<BTreeSet<GroupId>>,
}

impl MemberMarks {
    /// Reads the marks of the node whose data directory is `data_dir` (none when the file does
    /// not exist). Does not create anything.
    pub fn open(data_dir: &Path) -> Result<MemberMarks, MemberMarkError> {
        let path = data_dir.join(FILE_NAME);
        let groups = match std::fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(MemberMarkError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        };
        Ok(MemberMarks {
            path,
            groups: Mutex::new(groups),
        })
    }

    /// Whether this node is marked as having been a member of `group`.
    pub fn contains(&self, group: GroupId) -> bool {
        self.groups.lock().contains(&group)
    }

    /// Marks `group` durably (blocking: writes and syncs the file; nothing when it is marked
    /// already). Call it off any arbiter that carries Raft, gossip or the transport.
    pub fn mark(&self, group: GroupId) -> Result<(), MemberMarkError> {
        let mut groups = self.groups.lock();
        if groups.contains(&group) {
            return Ok(());
        }
        let mut next = groups.clone();
        next.insert(group);
        let text: String = next.iter().map(|g| format!("{g}\n")).collect();
        write_atomically(&self.path, text.as_bytes())?;
        *groups = next;
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeSet<GroupId>, MemberMarkError> {
    let corrupt = |line: usize, found: &[u8]| MemberMarkError::Corrupt {
        path: path.to_owned(),
        line,
        found: String::from_utf8_lossy(found).into_owned(),
    };
    let mut groups = BTreeSet::new();
    if bytes.is_empty() {
        return Ok(groups);
    }
    let Some(body) = bytes.strip_suffix(b"\n") else {
        // A torn write cannot produce this (the file is renamed into place whole).
        let last = bytes.split(|b| *b == b'\n').count();
        return Err(corrupt(
            last,
            bytes.rsplit(|b| *b == b'\n').next().unwrap_or(bytes),
        ));
    };
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let id = std::str::from_utf8(line)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<GroupId>().ok())
            .ok_or_else(|| corrupt(i + 1, line))?;
        groups.insert(id);
    }
    Ok(groups)
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new file whole: temporary
/// file, fsync, rename, directory fsync.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteFailed> {
    let io = |op: &'static str| {
        let path = path.to_owned();
        move |source| WriteFailed { path, op, source }
    };
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io("create the temporary file"))?;
        f.write_all(bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
    }
    std::fs::rename(&tmp, path).map_err(io("rename the temporary file"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the directory"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemberMarks::open(dir.path()).unwrap();
        assert!(!m.contains(GroupId::FIRST));
        assert!(!dir.path().join(FILE_NAME).exists(), "open creates nothing");
        m.mark(GroupId::FIRST).unwrap();
        m.mark(GroupId::FIRST).unwrap();
        m.mark(GroupId::new(7)).unwrap();
        assert!(
            m.contains(GroupId::FIRST)
                && m.contains(GroupId::new(7))
                && !m.contains(GroupId::new(1))
        );
        let again = MemberMarks::open(dir.path()).unwrap();
        assert!(
            again.contains(GroupId::FIRST)
                && again.contains(GroupId::new(7))
                && !again.contains(GroupId::new(1))
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "0\n7\n"
        );
        assert!(!dir.path().join("member-of.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        for bad in [
            &b"0\nx\n"[..],
            b"0\n\n",
            b"12",
            b"-1\n",
            b"99999999999999999999999\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FILE_NAME), bad).unwrap();
            let e = MemberMarks::open(dir.path()).unwrap_err();
            assert!(
                e.to_string().contains("member-of") && e.to_string().contains("corrupt"),
                "{bad:?}: {e}"
            );
        }
    }
}
