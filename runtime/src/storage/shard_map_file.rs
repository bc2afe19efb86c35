//! `data_dir/shard-map`: this node's copy of the shard map (`conclave_ring::ShardMap`), so a
//! restarted node hosts the same shards whatever its `[ring]` configuration says now.
//!
//! The file is MessagePack of [`ShardMapFile`] (a format version and the map), written
//! atomically (temporary file, fsync, rename, directory fsync). A file that does not decode,
//! names a format this build does not know, or holds a map that fails
//! `ShardMap::validate` is an error naming it, never a silent reset: a node that recomputed
//! another map would host other shards than its peers count on.

use super::member_mark::{write_atomically, WriteFailed};
use conclave_ring::{ShardMap, ShardMapError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "shard-map";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;

/// Why the shard map file could not be read or written; every error names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardMapFileError {
    /// Reading, writing, syncing or renaming failed.
    #[error("shard map {path}: cannot {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not decode (or the map could not be encoded).
    #[error("shard map {path} is corrupt: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The map could not be encoded.
    #[error("shard map {path}: cannot encode: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// What the encoder said.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// The file was written by a build with another format.
    #[error("shard map {path} has format {found}; this build reads format {FORMAT}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The file decodes to a map that is not valid.
    #[error("shard map {path} holds an invalid map: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with the map.
        #[source]
        source: ShardMapError,
    },
    /// Writing a map the file's older than: refused (versions only grow).
    #[error("shard map {path}: refusing to replace version {stored} with version {offered}")]
    Older {
        /// The file.
        path: PathBuf,
        /// The stored version.
        stored: u64,
        /// The version offered.
        offered: u64,
    },
}

/// What the file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMapFile {
    /// [`FORMAT`].
    pub format: u32,
    /// The map.
    pub map: ShardMap,
}

/// Reads the map of the node whose data directory is `data_dir`; `None` when there is no
/// file (a node that never started sharded). Creates nothing.
pub fn load(data_dir: &Path) -> Result<Option<ShardMap>, ShardMapFileError> {
    let path = data_dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ShardMapFileError::Io {
                path,
                op: "read",
                source,
            })
        }
    };
    let file: ShardMapFile = match rmp_serde::from_slice(&bytes) {
        Ok(f) => f,
        Err(source) => return Err(ShardMapFileError::Decode { path, source }),
    };
    if file.format != FORMAT {
        return Err(ShardMapFileError::Format {
            path,
            found: file.format,
        });
    }
    if let Err(source) = file.map.validate() {
        return Err(ShardMapFileError::Invalid { path, source });
    }
    Ok(Some(file.map))
}

/// Stores `map` durably (blocking: writes and syncs the file; call it off any arbiter that
/// carries Raft, gossip or the transport). A map older than the stored one is refused.
pub fn store(data_dir: &Path, map: &ShardMap) -> Result<(), ShardMapFileError> {
    let path = data_dir.join(FILE_NAME);
    if let Some(stored) = load(data_dir)? {
        if stored.version() > map.version() {
            return Err(ShardMapFileError::Older {
                path,
                stored: stored.version(),
                offered: map.version(),
            });
        }
    }
    let file = ShardMapFile {
        format: FORMAT,
        map: map.clone(),
    };
    let bytes = rmp_serde::to_vec(&file).map_err(|source| ShardMapFileError::Encode {
        path: path.clone(),
        source,
    })?;
    write_atomically(&path, &bytes)
        .map_err(|WriteFailed { path, op, source }| ShardMapFileError::Io { path, op, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use conclave_core::ids::NodeId;
    use conclave_ring::{Ring, RingConfig, DEFAULT_WEIGHT};

    fn map(nodes: u64) -> ShardMap {
        let config = RingConfig {
            shards: 8,
            ..RingConfig::default()
        };
        let ring = Ring::with_nodes(
            config,
            (1..=nodes).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
        )
        .unwrap();
        ShardMap::bootstrap(ring.placement()).unwrap()
    }

    #[test]
    fn a_stored_map_loads_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        assert!(!dir.path().join(FILE_NAME).exists(), "load creates nothing");
        let m = map(3);
        store(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(m));
    }

    #[test]
    fn corrupt_foreign_and_invalid_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"\xc1 not messagepack").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, ShardMapFileError::Decode { .. }), "{e}");
        assert!(e.to_string().contains(FILE_NAME), "{e}");
        let future = ShardMapFile {
            format: FORMAT + 1,
            map: map(3),
        };
        std::fs::write(&path, rmp_serde::to_vec(&future).unwrap()).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, ShardMapFileError::Format { found, .. } if found == FORMAT + 1));
        // A map whose entry 0 names a replica twice: decodes, does not validate.
        let mut value = rmp_serde::to_vec_named(&ShardMapFile {
            format: FORMAT,
            map: map(3),
        })
        .unwrap();
        let bad: ShardMapFile = {
            let mut f: ShardMapFile = rmp_serde::from_slice(&value).unwrap();
            let json = serde_json::to_string(&f.map).unwrap().replacen(
                "\"replicas\":[",
                "\"replicas\":[7,7,",
                1,
            );
            f.map = serde_json::from_str(&json).unwrap();
            f
        };
        value = rmp_serde::to_vec(&bad).unwrap();
        std::fs::write(&path, value).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, ShardMapFileError::Invalid { .. }), "{e}");
    }
}
