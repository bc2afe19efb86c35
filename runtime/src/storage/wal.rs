//! A segmented write-ahead log of CRC-checked records with group commit.
//!
//! Why not sled for the Raft log: sled 0.34's `flush()` issues `sync_file_range`, not `fsync`,
//! so it does not make a vote or a log entry durable (DESIGN.md §4). This log calls
//! `fdatasync` (`File::sync_data`) once per batch, however many records — of however many
//! Raft groups — the batch holds.
//!
//! ## On-disk format
//! A directory of segment files named `{first_lsn:020}.wal`. Each segment starts with a
//! 16-byte header, `b"CNCLWAL1"` then the segment's first LSN (u64 little-endian), followed by
//! records:
//!
//! ```text
//! +-----------+-----------+-----------+------------------+
//! | len: u32  | crc: u32  | lsn: u64  | payload (len B)  |    all integers little-endian
//! +-----------+-----------+-----------+------------------+
//! crc = CRC-32C-style crc32fast over lsn bytes + payload
//! ```
//! LSNs (log sequence numbers) increase by one per record across segments. Payloads are opaque
//! here; the Raft log store above encodes group ids, entries and hard states in them.
//!
//! ## Preallocation
//! A segment's file is extended ahead of its records with `fallocate`, in steps of up to
//! [`PREALLOC_STEP`] (never past the segment's size), so the bytes after the last record are
//! zeros and most `fdatasync`s write data only: appending to a file changes its size, which
//! makes every `fdatasync` commit the file system's journal too. Measured on this project's
//! machine (ext4, three processes each writing 300-byte records and syncing, as the three nodes
//! of a local cluster do): median `fdatasync` 0.16-0.20 ms appending, 0.13 ms into preallocated
//! space (docs/performance.md). A file system without `fallocate` gets plain appends. A segment
//! that is rotated away is cut back to its records.
//!
//! ## Recovery
//! On open every segment is read in order. Zeros from a record's position to the end of its
//! file are preallocated space: that segment's records end there (no record is all zeros: LSNs
//! start at 1). Otherwise a record that is short, has a bad CRC or an unexpected LSN ends the
//! valid log. If it is in the *last* segment and no valid record
//! follows it, it is a torn tail (a crash during the last, unacknowledged write): the file is
//! truncated there and the log opens. Anything else — a bad record followed by valid ones, or a
//! bad record in an earlier segment — is corruption of acknowledged data, and opening fails
//! with [`WalError::Corrupt`] naming the file and offset rather than silently dropping writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CNCLWAL1";
/// Most bytes a segment's file is extended by ahead of its records at a time.
pub const PREALLOC_STEP: u64 = 4 * 1024 * 1024;
const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: usize = 16;

/// Log sequence number of a record.
pub type Lsn = u64;

/// Tunables of the write-ahead log.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Start a new segment once the current one reaches this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest payload accepted (and believed when reading a length back). Default 64 MiB.
    pub max_record_bytes: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation on a WAL file failed.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Acknowledged data is damaged: the node must not start on it.
    #[error("WAL corrupt in {path} at byte offset {offset}: {damage}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the first bad byte range.
        offset: u64,
        /// What was wrong.
        damage: WalDamage,
    },
    /// A record larger than [`WalOptions::max_record_bytes`] was appended.
    #[error("WAL record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// The payload size.
        size: usize,
        /// The configured limit.
        limit: u32,
    },
}

/// What recovery found wrong in a segment ([`WalError::Corrupt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalDamage {
    /// The segment is shorter than its header or its magic bytes are wrong.
    #[error("bad segment header")]
    BadHeader,
    /// The first LSN in the header is not the one in the file's name.
    #[error("segment header LSN does not match its file name")]
    HeaderLsnMismatch,
    /// The segment does not start where the previous one ended.
    #[error("segment starts at LSN {found} but {expected} was expected")]
    SegmentGap {
        /// The segment's first LSN.
        found: Lsn,
        /// The LSN after the previous segment's last record.
        expected: Lsn,
    },
    /// A valid record whose LSN is not the next one.
    #[error("record out of sequence")]
    OutOfSequence,
    /// The file ends inside a record header.
    #[error("truncated record header")]
    TruncatedHeader,
    /// A record header gives a length above [`WalOptions::max_record_bytes`].
    #[error("record length over the limit")]
    LengthOverLimit,
    /// The file ends inside a record's payload.
    #[error("truncated record payload")]
    TruncatedPayload,
    /// A record's CRC does not match its LSN and payload.
    #[error("record checksum mismatch")]
    ChecksumMismatch,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record read back at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub lsn: Lsn,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What recovery found, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read.
    pub records: usize,
    /// Bytes cut off a torn tail, if any.
    pub truncated_bytes: u64,
}

struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
}

/// An open write-ahead log. Appends buffer in memory; [`Wal::sync`] writes them and issues one
/// `fdatasync` (group commit).
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<Segment>,
    file: File,
    /// Where the current segment's records end (the next write goes here).
    file_len: u64,
    /// The current segment file's size: `file_len` plus preallocated zeros.
    allocated: u64,
    /// Whether to preallocate in the current segment (off after `fallocate` failed in it).
    prealloc: bool,
    next_lsn: Lsn,
    buf: Vec<u8>,
    /// LSN of the first record in `buf` not yet written.
    synced_lsn: Lsn,
}

fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

fn record_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Outcome of decoding one record at a position.
enum Decoded {
    Ok {
        lsn: Lsn,
        payload_at: usize,
        len: usize,
    },
    Bad(WalDamage),
}

fn decode_at(data: &[u8], pos: usize, max: u32) -> Decoded {
    let Some(header) = data.get(pos..pos + RECORD_HEADER) else {
        return Decoded::Bad(WalDamage::TruncatedHeader);
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0);
    let crc = word(4);
    let lsn = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    if len > max {
        return Decoded::Bad(WalDamage::LengthOverLimit);
    }
    let start = pos + RECORD_HEADER;
    let Some(payload) = data.get(start..start + len as usize) else {
        return Decoded::Bad(WalDamage::TruncatedPayload);
    };
    if record_crc(lsn, payload) != crc {
        return Decoded::Bad(WalDamage::ChecksumMismatch);
    }
    Decoded::Ok {
        lsn,
        payload_at: start,
        len: len as usize,
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and returns every valid record in order.
    /// See the module docs for how a torn tail and corruption are told apart.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Vec<Record>, Recovery), WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".wal") else {
                continue;
            };
            let Ok(first_lsn) = stem.parse::<u64>() else {
                continue;
            };
            segments.push(Segment {
                first_lsn,
                path: entry.path(),
            });
        }
        segments.sort_by_key(|s| s.first_lsn);

        let mut records = Vec::new();
        let mut recovery = Recovery::default();
        let mut expected_lsn: Option<Lsn> = None;
        let mut tail_len = SEGMENT_HEADER;
        // The last segment file's size (its records and any preallocated zeros after them).
        let mut file_size = SEGMENT_HEADER;
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == count;
            let data = fs::read(&seg.path).map_err(io_err(&seg.path))?;
            file_size = data.len() as u64;
            let corrupt = |offset: u64, damage| WalError::Corrupt {
                path: seg.path.clone(),
                offset,
                damage,
            };
            if data.len() < SEGMENT_HEADER as usize || &data[..8] != MAGIC {
                if last && data.iter().all(|&b| b == 0) {
                    // A crash between creating the segment and writing its header.
                    fs::write(&seg.path, segment_header(seg.first_lsn))
                        .map_err(io_err(&seg.path))?;
                    recovery.truncated_bytes += data.len() as u64;
                    tail_len = SEGMENT_HEADER;
                    file_size = SEGMENT_HEADER;
                    continue;
                }
                return Err(corrupt(0, WalDamage::BadHeader));
            }
            let mut lsn_bytes = [0u8; 8];
            lsn_bytes.copy_from_slice(&data[8..16]);
            if u64::from_le_bytes(lsn_bytes) != seg.first_lsn {
                return Err(corrupt(8, WalDamage::HeaderLsnMismatch));
            }
            if let Some(expected) = expected_lsn {
                if seg.first_lsn != expected {
                    return Err(corrupt(
                        8,
                        WalDamage::SegmentGap {
                            found: seg.first_lsn,
                            expected,
                        },
                    ));
                }
            }
            let mut next = seg.first_lsn;
            let mut pos = SEGMENT_HEADER as usize;
            while pos < data.len() {
                match decode_at(&data, pos, options.max_record_bytes) {
                    Decoded::Ok {
                        lsn,
                        payload_at,
                        len,
                    } if lsn == next => {
                        records.push(Record {
                            lsn,
                            payload: data[payload_at..payload_at + len].to_vec(),
                        });
                        next += 1;
                        pos = payload_at + len;
                    }
                    Decoded::Ok { .. } => {
                        return Err(corrupt(pos as u64, WalDamage::OutOfSequence));
                    }
                    Decoded::Bad(_) if data[pos..].iter().all(|&b| b == 0) => {
                        // Preallocated space: this segment's records end here.
                        break;
                    }
                    Decoded::Bad(reason) => {
                        if !last {
                            return Err(corrupt(pos as u64, reason));
                        }
                        // A valid record after the bad one means the damage is not a torn
                        // write at the end: refuse rather than drop acknowledged records.
                        if later_valid_record(&data, pos, next, options.max_record_bytes) {
                            return Err(corrupt(pos as u64, reason));
                        }
                        recovery.truncated_bytes += (data.len() - pos) as u64;
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&seg.path)
                            .map_err(io_err(&seg.path))?;
                        f.set_len(pos as u64).map_err(io_err(&seg.path))?;
                        f.sync_all().map_err(io_err(&seg.path))?;
                        file_size = pos as u64;
                        break;
                    }
                }
            }
            tail_len = pos.min(data.len()) as u64;
            expected_lsn = Some(next);
        }
        recovery.records = records.len();
        let next_lsn = expected_lsn.unwrap_or(1);

        let (file, file_len) = match segments.last() {
            Some(seg) => {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                f.seek(SeekFrom::Start(tail_len))
                    .map_err(io_err(&seg.path))?;
                (f, tail_len)
            }
            None => {
                let (seg, f) = create_segment(dir, next_lsn)?;
                segments.push(seg);
                file_size = SEGMENT_HEADER;
                (f, SEGMENT_HEADER)
            }
        };
        let wal = Wal {
            dir: dir.to_owned(),
            options,
            segments,
            file,
            file_len,
            allocated: file_size.max(file_len),
            prealloc: true,
            next_lsn,
            buf: Vec::new(),
            synced_lsn: next_lsn,
        };
        Ok((wal, records, recovery))
    }

    /// The largest payload [`Wal::append`] accepts.
    pub fn max_record_bytes(&self) -> u32 {
        self.options.max_record_bytes
    }

    /// The first LSN not yet written and synced: every record below it is durable.
    pub fn synced_lsn(&self) -> Lsn {
        self.synced_lsn
    }

    /// The LSN the next appended record gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Buffers one record; it is durable once [`Wal::sync`] returns. Returns its LSN.
    pub fn append(&mut self, payload: &[u8]) -> Result<Lsn, WalError> {
        if payload.len() > self.options.max_record_bytes as usize {
            return Err(WalError::RecordTooLarge {
                size: payload.len(),
                limit: self.options.max_record_bytes,
            });
        }
        let lsn = self.next_lsn;
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&record_crc(lsn, payload).to_le_bytes());
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Writes every buffered record with one write and makes them durable with one
    /// `fdatasync`; rotates to a new segment first when the current one is full.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.file_len >= self.options.segment_bytes {
            self.rotate()?;
        }
        let path = self.current_path().to_owned();
        let end = self.file_len + self.buf.len() as u64;
        if end > self.allocated && self.prealloc {
            self.preallocate(end);
        }
        self.file.write_all(&self.buf).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        self.file_len += self.buf.len() as u64;
        self.buf.clear();
        self.synced_lsn = self.next_lsn;
        Ok(())
    }

    fn current_path(&self) -> &Path {
        self.segments
            .last()
            .map(|s| s.path.as_path())
            .unwrap_or(self.dir.as_path())
    }

    /// Extends the current segment's file with zeros to cover at least `end` (and up to
    /// [`PREALLOC_STEP`] more, within the segment's size). A failure is not an error of the
    /// log: the write that follows appends as it would without preallocation, and the
    /// segment stops trying (a file system without `fallocate`, a nearly full disk).
    fn preallocate(&mut self, end: u64) {
        let step = PREALLOC_STEP.min(self.options.segment_bytes.max(4096));
        let want = (self.allocated + step)
            .min(self.options.segment_bytes)
            .max(end);
        match rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::empty(),
            self.allocated,
            want - self.allocated,
        ) {
            Ok(()) => self.allocated = want,
            Err(e) => {
                tracing::debug!(error = %e, "WAL preallocation unavailable; appending");
                self.prealloc = false;
            }
        }
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        // The old segment gives its preallocated tail back (its records end at `file_len`).
        if self.allocated > self.file_len {
            let path = self.current_path().to_owned();
            self.file.set_len(self.file_len).map_err(io_err(&path))?;
        }
        let (seg, file) = create_segment(&self.dir, self.synced_lsn)?;
        self.segments.push(seg);
        self.file = file;
        self.file_len = SEGMENT_HEADER;
        self.allocated = SEGMENT_HEADER;
        self.prealloc = true;
        Ok(())
    }

    /// Deletes whole segments all of whose records have LSNs below `lsn` (the caller has made
    /// them obsolete, e.g. by a snapshot and a re-written hard state). The current segment is
    /// never deleted. Returns how many segments were removed.
    pub fn purge_before(&mut self, lsn: Lsn) -> Result<usize, WalError> {
        let mut removed = 0;
        // Segment i holds [first_lsn(i), first_lsn(i+1)).
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// The first LSN of the second-oldest segment: records below it are all in the oldest
    /// one. `None` with a single segment.
    pub fn second_segment_lsn(&self) -> Option<Lsn> {
        self.segments.get(1).map(|s| s.first_lsn)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn later_valid_record(data: &[u8], bad_at: usize, expected: Lsn, max: u32) -> bool {
    (bad_at + 1..data.len().saturating_sub(RECORD_HEADER - 1)).any(|p| {
        matches!(decode_at(data, p, max), Decoded::Ok { lsn, len, .. } if lsn > expected && len > 0)
    })
}

fn segment_header(first_lsn: Lsn) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&first_lsn.to_le_bytes());
    h
}

fn create_segment(dir: &Path, first_lsn: Lsn) -> Result<(Segment, File), WalError> {
    let path = segment_path(dir, first_lsn);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.write_all(&segment_header(first_lsn))
        .map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok((Segment { first_lsn, path }, f))
}

/// Makes a directory entry change (create, delete) durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads a whole segment file (used by tests and tools).
pub fn read_segment_bytes(path: &Path) -> Result<Vec<u8>, WalError> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .map_err(io_err(path))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("record-{i}-{}", "x".repeat((i % 37) as usize)).into_bytes()
    }

    fn write(dir: &Path, n: u64, opts: WalOptions) {
        let (mut wal, recs, _) = Wal::open(dir, opts).unwrap();
        assert!(recs.is_empty());
        for i in 1..=n {
            assert_eq!(wal.append(&payload(i)).unwrap(), i);
            if i % 10 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
    }

    /// A segment's bytes up to the end of its records (without the preallocated zeros; every
    /// test payload ends with a non-zero byte).
    fn records_of(path: &Path) -> Vec<u8> {
        let mut data = read_segment_bytes(path).unwrap();
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        data.truncate(end);
        data
    }

    /// Where record `n` (LSN `n`, written by [`write`]) starts in the first segment.
    fn record_start(n: u64) -> usize {
        SEGMENT_HEADER as usize
            + (1..n)
                .map(|i| RECORD_HEADER + payload(i).len())
                .sum::<usize>()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn appends_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 512,
            ..WalOptions::default()
        };
        write(dir.path(), 200, opts.clone());
        assert!(segments(dir.path()).len() > 3);
        let (mut wal, recs, rec) = Wal::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(recs.len(), 200);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.lsn, i as u64 + 1);
            assert_eq!(r.payload, payload(i as u64 + 1));
        }
        // Appending continues the sequence.
        assert_eq!(wal.append(b"next").unwrap(), 201);
        wal.sync().unwrap();
        let (_, recs, _) = Wal::open(dir.path(), opts).unwrap();
        assert_eq!(recs.last().unwrap().payload, b"next");
    }

    #[test]
    fn unsynced_records_are_not_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append(b"a").unwrap();
        wal.sync().unwrap();
        wal.append(b"b").unwrap();
        drop(wal); // "crash" before sync
        let (_, recs, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut_point() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 20, WalOptions::default());
        let seg = segments(dir.path()).pop().unwrap();
        let full = records_of(&seg);
        // Find where the last record starts: reopen with 19 records' worth.
        let last_len = RECORD_HEADER + payload(20).len();
        let last_start = full.len() - last_len;
        for cut in last_start..full.len() {
            fs::write(&seg, &full[..cut]).unwrap();
            let (mut wal, recs, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            assert_eq!(recs.len(), 19, "cut at {cut}");
            assert_eq!(rec.truncated_bytes, (cut - last_start) as u64);
            assert_eq!(fs::metadata(&seg).unwrap().len(), last_start as u64);
            // The log is writable again and the next record gets LSN 20.
            assert_eq!(wal.append(b"again").unwrap(), 20);
            wal.sync().unwrap();
            drop(wal);
            let (_, recs, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            assert_eq!(recs.len(), 20);
        }
    }

    #[test]
    fn garbage_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5, WalOptions::default());
        let seg = segments(dir.path()).pop().unwrap();
        let mut data = records_of(&seg);
        let good = data.len();
        data.extend_from_slice(&[0u8; 300]);
        data.extend_from_slice(&[0xAB; 77]);
        fs::write(&seg, &data).unwrap();
        let (_, recs, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(rec.truncated_bytes, 377);
        assert_eq!(fs::metadata(&seg).unwrap().len(), good as u64);
    }

    #[test]
    fn preallocated_space_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 50, WalOptions::default());
        let seg = segments(dir.path()).pop().unwrap();
        let records_end = records_of(&seg).len() as u64;
        let size = fs::metadata(&seg).unwrap().len();
        // On Linux the file is extended ahead of its records (elsewhere it may not be).
        if cfg!(target_os = "linux") {
            assert!(size > records_end, "{size} <= {records_end}");
            assert!(size <= PREALLOC_STEP + records_end);
        }
        let (mut wal, recs, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(recs.len(), 50);
        assert_eq!(rec.truncated_bytes, 0);
        // Reopening cut nothing, and appends go after the last record, into the zeros.
        assert_eq!(fs::metadata(&seg).unwrap().len(), size);
        assert_eq!(wal.append(b"after-reopen").unwrap(), 51);
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(fs::metadata(&seg).unwrap().len(), size);
        let (_, recs, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(recs.len(), 51);
        assert_eq!(recs[50].payload, b"after-reopen");
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn rotated_segments_are_cut_back_and_a_zero_tail_in_one_is_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 8 * 1024,
            ..WalOptions::default()
        };
        write(dir.path(), 400, opts.clone());
        let segs = segments(dir.path());
        assert!(segs.len() >= 3, "{}", segs.len());
        // Rotation gave each older segment's preallocated tail back.
        for seg in &segs[..segs.len() - 1] {
            assert_eq!(
                fs::metadata(seg).unwrap().len(),
                records_of(seg).len() as u64
            );
        }
        // A crash between preallocating and cutting back leaves zeros after an older
        // segment's records: free space, not damage.
        let mut data = read_segment_bytes(&segs[0]).unwrap();
        data.extend_from_slice(&[0u8; 5000]);
        fs::write(&segs[0], &data).unwrap();
        let (_, recs, rec) = Wal::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(recs.len(), 400);
        assert_eq!(rec.truncated_bytes, 0);
        // But anything non-zero after the zeros of an older segment is damage.
        data.extend_from_slice(&[0xCD; 3]);
        fs::write(&segs[0], &data).unwrap();
        assert!(matches!(
            Wal::open(dir.path(), opts),
            Err(WalError::Corrupt { .. })
        ));
    }

    #[test]
    fn zeros_before_a_valid_record_are_still_corruption() {
        // A zeroed range followed by a valid later record is not preallocated space: acknowledged
        // records follow it, so the log refuses to open rather than drop them.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 30, WalOptions::default());
        let seg = segments(dir.path()).pop().unwrap();
        let mut data = records_of(&seg);
        let pos = record_start(10);
        let rec_len = RECORD_HEADER + payload(10).len();
        data[pos..pos + rec_len].fill(0);
        fs::write(&seg, &data).unwrap();
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, pos as u64),
            Err(e) => panic!("unexpected error {e}"),
            Ok((_, recs, _)) => panic!("opened with {} records", recs.len()),
        }
    }

    #[test]
    fn flipped_byte_mid_log_refuses_to_open_and_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 30, WalOptions::default());
        let seg = segments(dir.path()).pop().unwrap();
        let original = read_segment_bytes(&seg).unwrap();
        // Flip one byte in each position of the 10th record (header and payload alike).
        let pos = record_start(10);
        let rec_len = RECORD_HEADER + payload(10).len();
        for flip in pos..pos + rec_len {
            let mut data = original.clone();
            data[flip] ^= 0x40;
            fs::write(&seg, &data).unwrap();
            match Wal::open(dir.path(), WalOptions::default()) {
                Err(WalError::Corrupt { path, offset, .. }) => {
                    assert_eq!(path, seg);
                    assert_eq!(offset, pos as u64, "flip at {flip}");
                }
                Err(e) => panic!("flip at {flip}: unexpected error {e}"),
                Ok((_, recs, _)) => panic!("flip at {flip}: opened with {} records", recs.len()),
            }
            // Nothing was changed on disk by the refused open.
            assert_eq!(read_segment_bytes(&seg).unwrap(), data);
        }
        let msg = {
            let mut data = original.clone();
            data[pos + RECORD_HEADER] ^= 1;
            fs::write(&seg, &data).unwrap();
            Wal::open(dir.path(), WalOptions::default())
                .err()
                .unwrap()
                .to_string()
        };
        assert!(msg.contains(".wal") && msg.contains("offset"), "{msg}");
        assert!(msg.ends_with(": record checksum mismatch"), "{msg}");
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 256,
            ..WalOptions::default()
        };
        write(dir.path(), 60, opts.clone());
        let segs = segments(dir.path());
        assert!(segs.len() >= 3);
        let first = &segs[0];
        let mut data = read_segment_bytes(first).unwrap();
        data.truncate(data.len() - 3);
        fs::write(first, &data).unwrap();
        assert!(matches!(
            Wal::open(dir.path(), opts),
            Err(WalError::Corrupt { .. })
        ));
    }

    #[test]
    fn purge_removes_only_obsolete_segments() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 256,
            ..WalOptions::default()
        };
        write(dir.path(), 100, opts.clone());
        let (mut wal, recs, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(recs.len(), 100);
        let before = wal.segment_count();
        let removed = wal.purge_before(50).unwrap();
        assert!(removed > 0 && removed < before);
        drop(wal);
        let (_, recs, _) = Wal::open(dir.path(), opts).unwrap();
        // Every record at or after LSN 50 survives, in order, from a contiguous suffix.
        assert!(recs.first().unwrap().lsn <= 50);
        assert_eq!(recs.last().unwrap().lsn, 100);
        assert!(recs.windows(2).all(|w| w[1].lsn == w[0].lsn + 1));
    }

    #[test]
    fn oversized_record_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            max_record_bytes: 8,
            ..WalOptions::default()
        };
        let (mut wal, _, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        assert!(matches!(
            wal.append(&[0u8; 9]),
            Err(WalError::RecordTooLarge { size: 9, limit: 8 })
        ));
        assert_eq!(wal.append(b"ok").unwrap(), 1);
        wal.sync().unwrap();
        drop(wal);
        let (_, recs, _) = Wal::open(dir.path(), opts).unwrap();
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            segment_path(dir.path(), 1),
            b"this is not a wal segment at all",
        )
        .unwrap();
        assert!(matches!(
            Wal::open(dir.path(), WalOptions::default()),
            Err(WalError::Corrupt {
                offset: 0,
                damage: WalDamage::BadHeader,
                ..
            })
        ));
    }
}
