//! The journal's file format: a 16-byte header (`HTEXJRNL`, the format version, zero), then
//! records, each a little-endian `u32` length, a `u32` CRC-32 of the payload, and the payload
//! (one MessagePack [`Record`]).
//!
//! Reading stops at the first record that is not whole. Where that can only be a write cut
//! short (the last record runs past the end of the file, its checksum fails and nothing follows
//! it, or only zeros follow), the journal is recovered up to the last whole record and the rest
//! is cut off when it is opened for appending. Anything else (a bad header, a checksum that
//! fails with records after it, a length no record can have, a payload that does not decode) is
//! refused with the byte offset, and nothing is thrown away.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::Record;

pub(crate) const MAGIC: &[u8; 8] = b"HTEXJRNL";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_BYTES: u64 = 16;
/// Length and checksum before each payload.
pub(crate) const RECORD_HEADER_BYTES: u64 = 8;
/// No record is larger: a length beyond it is damage, not a record.
pub(crate) const MAX_RECORD_BYTES: u32 = 1 << 30;

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not an htex journal (its first bytes are not `HTEXJRNL`); refusing to \
         write over it"
    )]
    Foreign { path: PathBuf },
    #[error(
        "the journal {path} has format version {found}; this htex reads version {VERSION} only"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "the journal {path} is damaged at byte {offset}: {reason}; nothing was discarded. Move \
         the file aside to start with an empty journal"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// A record's bytes as the file holds them: length, checksum, payload.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn header() -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// What reading a journal found.
pub(crate) struct Scan {
    /// Where the whole records end: appends go here.
    pub end: u64,
    /// Bytes after `end` that were a torn write (cut off when the journal is opened).
    pub torn_bytes: u64,
    pub records: u64,
}

/// Reads every whole record of `path` in order, handing each to `each`. A missing or empty
/// file is an empty journal.
pub(crate) fn scan(
    path: &Path,
    mut each: impl FnMut(Record) -> Result<(), String>,
) -> Result<Scan, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Scan {
                end: 0,
                torn_bytes: 0,
                records: 0,
            })
        }
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    if len < HEADER_BYTES {
        // A header cut short is a journal that never got its first record.
        let mut start = vec![0u8; len as usize];
        reader.read_exact(&mut start).map_err(io)?;
        if !header().starts_with(&start) {
            return Err(JournalError::Foreign {
                path: path.to_path_buf(),
            });
        }
        return Ok(Scan {
            end: 0,
            torn_bytes: len,
            records: 0,
        });
    }
    let mut head = [0u8; HEADER_BYTES as usize];
    reader.read_exact(&mut head).map_err(io)?;
    if &head[..8] != MAGIC {
        return Err(JournalError::Foreign {
            path: path.to_path_buf(),
        });
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(JournalError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let corrupt = |offset, reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut at = HEADER_BYTES;
    let mut records = 0;
    let mut payload = Vec::new();
    loop {
        let left = len - at;
        if left == 0 {
            return Ok(Scan {
                end: at,
                torn_bytes: 0,
                records,
            });
        }
        let torn = Ok(Scan {
            end: at,
            torn_bytes: left,
            records,
        });
        if left < RECORD_HEADER_BYTES {
            return torn;
        }
        let mut rh = [0u8; RECORD_HEADER_BYTES as usize];
        reader.read_exact(&mut rh).map_err(io)?;
        let length = u32::from_le_bytes(rh[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rh[4..].try_into().expect("4 bytes"));
        if length == 0 && crc == 0 {
            // Zeros where a record should start: a file extended but never written, unless
            // anything but zeros follows.
            if rest_is_zero(&mut reader).map_err(io)? {
                return torn;
            }
            return Err(corrupt(
                at,
                "a record of length 0 with more data after it".into(),
            ));
        }
        if length > MAX_RECORD_BYTES {
            return Err(corrupt(
                at,
                format!("a record claims {length} bytes, more than any record has"),
            ));
        }
        let end = at + RECORD_HEADER_BYTES + u64::from(length);
        if end > len {
            return torn;
        }
        payload.resize(length as usize, 0);
        reader.read_exact(&mut payload).map_err(io)?;
        if crc32fast::hash(&payload) != crc {
            if end == len {
                return torn;
            }
            return Err(corrupt(
                at,
                format!("the checksum of a {length}-byte record does not match"),
            ));
        }
        let record: Record = rmp_serde::from_slice(&payload)
            .map_err(|e| corrupt(at, format!("a record does not decode: {e}")))?;
        each(record).map_err(|reason| corrupt(at, reason))?;
        records += 1;
        at = end;
    }
}

fn rest_is_zero(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}
