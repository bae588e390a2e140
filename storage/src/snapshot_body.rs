//! A snapshot's data: the application tables as a `SnapshotBody` (format version, then one
//! `SnapshotPair` per key), compressed with zstd as it is encoded. This is what a leader keeps in
//! memory and sends to a follower, and what the snapshot file holds (sealed, not compressed again):
//! about a quarter of the tables' size, where the plain body had been sent and held whole.
//!
//! Data in the plain form (written by versions before the compressed one) is still read: a zstd
//! frame starts with its magic number, a body with the format version's key (`0x08`), so the two
//! cannot be mistaken for each other. Reading is one pair at a time from a streaming decoder,
//! bounded by `SNAPSHOT_BYTES_MAX` decoded bytes and `SNAPSHOT_PAIR_BYTES_MAX` per pair, so neither
//! a large state nor a damaged length makes a node allocate without bound.

use std::io::Read;
use std::io::Write;

use dtm_model::pb;
use prost::Message;

use crate::error::StoreError;
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::limits::SNAPSHOT_PAIR_BYTES_MAX;

pub(crate) const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Whether `data` is the compressed form (a zstd frame) rather than a plain `SnapshotBody`.
pub(crate) fn is_compressed(data: &[u8]) -> bool {
    data.starts_with(&ZSTD_MAGIC)
}

/// Snapshot data being built: a `SnapshotBody` compressed as its pairs are pushed, so the plain
/// body is never in memory whole.
pub(crate) struct Compressor {
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    scratch: Vec<u8>,
}

impl Compressor {
    /// `capacity`: the expected compressed size (the buffer grows beyond it when needed).
    pub(crate) fn new(capacity: usize) -> Result<Self, StoreError> {
        let mut encoder =
            zstd::stream::write::Encoder::new(Vec::with_capacity(capacity), crate::crypto::COMPRESS_LEVEL)?;
        // A checksum of the frame: the file is sealed and the transfer runs over TLS, but a frame
        // damaged by anything else must not decode into a different state.
        encoder.include_checksum(true)?;
        let header = pb::SnapshotBody { format_version: SNAPSHOT_FORMAT_VERSION, pairs: Vec::new() };
        encoder.write_all(&header.encode_to_vec())?;
        Ok(Compressor { encoder, scratch: Vec::new() })
    }

    pub(crate) fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.scratch.clear();
        prost::encoding::message::encode(2, &pb::SnapshotPair { key, value }, &mut self.scratch);
        Ok(self.encoder.write_all(&self.scratch)?)
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>, StoreError> {
        Ok(self.encoder.finish()?)
    }
}

/// The snapshot data of `pairs` (a backup being restored, tests).
pub(crate) fn compress_body(pairs: Vec<crate::Pair>) -> Result<Vec<u8>, StoreError> {
    let plain: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    let mut c = Compressor::new(plain / 4)?;
    for (k, v) in pairs {
        c.push(k, v)?;
    }
    c.finish()
}

/// Calls `f` with each pair of snapshot data (compressed or plain), decoding one at a time; returns
/// the body's format version. Errors name what is wrong: a cut, an oversized pair or body, a
/// damaged frame.
pub(crate) fn for_each_pair(
    data: &[u8],
    mut f: impl FnMut(pb::SnapshotPair) -> Result<(), StoreError>,
) -> Result<u32, StoreError> {
    let inner: Box<dyn Read + '_> =
        if is_compressed(data) { Box::new(zstd::stream::read::Decoder::with_buffer(data)?) } else { Box::new(data) };
    let mut r = Bounded { inner, read: 0 };
    let mut format = 0u32;
    let mut buf = Vec::new();
    while let Some(key) = read_varint(&mut r, true)? {
        let (tag, wire) = (key >> 3, key & 7);
        match (tag, wire) {
            (1, 0) => {
                let v = read_varint(&mut r, false)?.unwrap_or_default();
                format =
                    u32::try_from(v).map_err(|_| StoreError::Invalid("snapshot format version out of range".into()))?;
            }
            (2, 2) => {
                let len = read_len(&mut r)?;
                buf.resize(len, 0);
                read_exact(&mut r, &mut buf, "a pair")?;
                f(pb::SnapshotPair::decode(buf.as_slice())?)?;
            }
            (_, 0) => {
                read_varint(&mut r, false)?;
            }
            (_, 1 | 2 | 5) => {
                let len = match wire {
                    1 => 8,
                    5 => 4,
                    _ => read_len(&mut r)?,
                };
                let skipped = std::io::copy(&mut (&mut r).take(len as u64), &mut std::io::sink())?;
                if skipped != len as u64 {
                    return Err(StoreError::Invalid("snapshot truncated inside a field".into()));
                }
            }
            (tag, wire) => return Err(StoreError::Invalid(format!("snapshot field {tag} has wire type {wire}"))),
        }
    }
    Ok(format)
}

/// A reader that refuses to yield more than `SNAPSHOT_BYTES_MAX` bytes (a damaged or hostile
/// frame that decompresses without end).
struct Bounded<R> {
    inner: R,
    read: usize,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n);
        if self.read > SNAPSHOT_BYTES_MAX {
            return Err(std::io::Error::other(format!("snapshot larger than {SNAPSHOT_BYTES_MAX} bytes")));
        }
        Ok(n)
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), StoreError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StoreError::Invalid(format!("snapshot truncated inside {what}")),
        _ => StoreError::Io(e),
    })
}

/// A length-delimited field's length, at most `SNAPSHOT_PAIR_BYTES_MAX`.
fn read_len(r: &mut impl Read) -> Result<usize, StoreError> {
    let len = read_varint(r, false)?.unwrap_or_default();
    match usize::try_from(len) {
        Ok(len) if len <= SNAPSHOT_PAIR_BYTES_MAX => Ok(len),
        _ => Err(StoreError::Invalid(format!(
            "snapshot field of {len} bytes is larger than the limit of {SNAPSHOT_PAIR_BYTES_MAX}"
        ))),
    }
}

/// A protobuf varint; `None` at the end of the data when `end_ok` (between fields).
fn read_varint(r: &mut impl Read, end_ok: bool) -> Result<Option<u64>, StoreError> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        if r.read(&mut byte)? == 0 {
            return match (i, end_ok) {
                (0, true) => Ok(None),
                _ => Err(StoreError::Invalid("snapshot truncated inside a varint".into())),
            };
        }
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(StoreError::Invalid("snapshot holds a varint longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<crate::Pair> {
        vec![(b"t/a".to_vec(), vec![1; 300]), (b"t/b".to_vec(), Vec::new()), (vec![b'k'; 200], b"v".to_vec())]
    }

    fn read_all(data: &[u8]) -> Result<(u32, Vec<crate::Pair>), StoreError> {
        let mut out = Vec::new();
        let format = for_each_pair(data, |p| {
            out.push((p.key, p.value));
            Ok(())
        })?;
        Ok((format, out))
    }

    /// prost's encoding of the body: the plain form, as versions before compressed data sent it.
    fn plain(pairs: Vec<crate::Pair>) -> Vec<u8> {
        let pairs = pairs.into_iter().map(|(key, value)| pb::SnapshotPair { key, value }).collect();
        pb::SnapshotBody { format_version: SNAPSHOT_FORMAT_VERSION, pairs }.encode_to_vec()
    }

    /// Compressed data is a zstd frame of prost's encoding of the body, written pair by pair; both
    /// forms read back as the same pairs and format.
    #[test]
    fn the_body_is_prosts_encoding_and_reads_back_compressed_or_plain() {
        let plain = plain(pairs());
        let compressed = compress_body(pairs()).expect("compress");
        assert!(is_compressed(&compressed) && !is_compressed(&plain));
        assert_eq!(zstd::decode_all(compressed.as_slice()).expect("a zstd frame"), plain);
        for data in [&plain, &compressed] {
            assert_eq!(read_all(data).expect("read"), (SNAPSHOT_FORMAT_VERSION, pairs()));
        }
        assert_eq!(read_all(&compress_body(Vec::new()).expect("empty")).expect("read"), (1, vec![]));
    }

    /// Damaged data is an error that says what is wrong, in either form, never a shorter state.
    #[test]
    fn cut_oversized_and_damaged_data_is_refused() {
        let plain = plain(pairs());
        let compressed = compress_body(pairs()).expect("compress");
        let err = |data: &[u8]| read_all(data).expect_err("refused").to_string();
        assert!(
            err(&plain[..plain.len() - 1]).contains("truncated inside a pair"),
            "{}",
            err(&plain[..plain.len() - 1])
        );
        assert!(read_all(&compressed[..compressed.len() - 3]).is_err(), "a cut frame");
        // A flipped bit anywhere in the frame is refused, or (in header fields such as the window
        // size) changes nothing: it never decodes into another state.
        let mut refused = 0;
        for at in 4..compressed.len() {
            let mut flipped = compressed.clone();
            flipped[at] ^= 0x01;
            match read_all(&flipped) {
                Err(_) => refused += 1,
                Ok(read) => assert_eq!(read.1, pairs(), "byte {at} flipped decodes into another state"),
            }
        }
        assert!(refused + 4 > compressed.len() - 4, "{refused} of {} flips refused", compressed.len() - 4);
        // A pair whose length exceeds the limit is refused before anything is allocated for it.
        let mut huge = vec![0x08, 0x01, 0x12];
        prost::encoding::encode_varint(SNAPSHOT_PAIR_BYTES_MAX as u64 + 1, &mut huge);
        assert!(err(&huge).contains("larger than the limit"), "{}", err(&huge));
        // Fields a later version adds are skipped.
        let mut later = plain.clone();
        prost::encoding::encode_key(9, prost::encoding::WireType::LengthDelimited, &mut later);
        prost::encoding::encode_varint(3, &mut later);
        later.extend_from_slice(b"new");
        assert_eq!(read_all(&later).expect("read").1, pairs());
    }
}
