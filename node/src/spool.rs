//! Sealed spool files for batch uploads: a batch that must be read twice (all-or-nothing, a
//! manifest to check first) or read from its end (Parquet, XLSX) is written to an unnamed temporary
//! file under the node's data directory. Every 64 KiB chunk is sealed with AES-256-GCM under a key
//! that exists only in this process's memory, so no plaintext reaches the disk, and the file has no
//! name (it is unlinked at creation), so it disappears with its last handle, even after a crash.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::OnceLock;

use ring::aead::Aad;
use ring::aead::LessSafeKey;
use ring::aead::Nonce;
use ring::aead::UnboundKey;

use crate::limits::BATCH_SPOOL_CHUNK_BYTES;

const TAG_BYTES: usize = 16;

static SPOOL_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where spool files go (`DATA_DIR/spool`); set once at start-up. Unset (tests of parts), the
/// system's temporary directory is used.
pub fn use_dir(dir: PathBuf) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot create the batch spool directory");
    }
    let _ = SPOOL_DIR.set(dir);
}

fn dir() -> PathBuf {
    SPOOL_DIR.get().cloned().unwrap_or_else(std::env::temp_dir)
}

fn nonce(chunk: u64) -> Nonce {
    // The key is used for this one file only, so the chunk number is a unique nonce.
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&chunk.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Writes a spool front to back.
pub struct SpoolWriter {
    file: File,
    key: LessSafeKey,
    buf: Vec<u8>,
    chunks: u64,
    len: u64,
    limit: u64,
}

impl SpoolWriter {
    /// A new sealed spool of at most `limit` plaintext bytes.
    pub fn create(limit: u64) -> std::io::Result<SpoolWriter> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| std::io::Error::other("no randomness for the spool key"))?;
        let key = LessSafeKey::new(
            UnboundKey::new(&ring::aead::AES_256_GCM, &key).map_err(|_| std::io::Error::other("spool key"))?,
        );
        let file = tempfile::tempfile_in(dir())?;
        Ok(SpoolWriter {
            file,
            key,
            buf: Vec::with_capacity(BATCH_SPOOL_CHUNK_BYTES + TAG_BYTES),
            chunks: 0,
            len: 0,
            limit,
        })
    }

    /// Appends plaintext; fails past the limit.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if self.len + data.len() as u64 > self.limit {
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "spool limit"));
        }
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = (BATCH_SPOOL_CHUNK_BYTES - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == BATCH_SPOOL_CHUNK_BYTES {
                self.seal()?;
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.key
            .seal_in_place_append_tag(nonce(self.chunks), Aad::empty(), &mut self.buf)
            .map_err(|_| std::io::Error::other("sealing a spool chunk"))?;
        let at = self.chunks * (BATCH_SPOOL_CHUNK_BYTES + TAG_BYTES) as u64;
        self.file.write_all_at(&self.buf, at)?;
        self.buf.clear();
        self.chunks += 1;
        Ok(())
    }

    /// Seals the last chunk; the spool can now be read at any offset.
    pub fn finish(mut self) -> std::io::Result<Spool> {
        self.seal()?;
        Ok(Spool { file: self.file, key: self.key, len: self.len, cache: Mutex::new(None) })
    }
}

/// A finished spool, readable at any offset (`dtm_formats::RandomRead`).
pub struct Spool {
    file: File,
    key: LessSafeKey,
    len: u64,
    /// The last chunk opened: readers go mostly front to back.
    cache: Mutex<Option<(u64, Vec<u8>)>>,
}

impl Spool {
    fn open_chunk(&self, chunk: u64) -> std::io::Result<Vec<u8>> {
        let start = chunk * BATCH_SPOOL_CHUNK_BYTES as u64;
        let plain = (self.len - start).min(BATCH_SPOOL_CHUNK_BYTES as u64) as usize;
        let mut sealed = vec![0u8; plain + TAG_BYTES];
        self.file.read_exact_at(&mut sealed, chunk * (BATCH_SPOOL_CHUNK_BYTES + TAG_BYTES) as u64)?;
        let opened = self
            .key
            .open_in_place(nonce(chunk), Aad::empty(), &mut sealed)
            .map_err(|_| std::io::Error::other("a spool chunk does not open (changed on disk?)"))?;
        Ok(opened.to_vec())
    }
}

impl dtm_formats::RandomRead for Spool {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let chunk = offset / BATCH_SPOOL_CHUNK_BYTES as u64;
        let within = (offset % BATCH_SPOOL_CHUNK_BYTES as u64) as usize;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.as_ref().is_none_or(|(c, _)| *c != chunk) {
            *cache = Some((chunk, self.open_chunk(chunk)?));
        }
        let Some((_, data)) = cache.as_ref() else { return Ok(0) };
        let n = buf.len().min(data.len() - within);
        buf[..n].copy_from_slice(&data[within..within + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtm_formats::RandomRead;

    #[test]
    fn spool_round_trips_at_any_offset_and_holds_no_plaintext() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| format!("row {i} Hà Nội;").into_bytes()).collect();
        let mut w = SpoolWriter::create(u64::MAX).unwrap();
        for part in data.chunks(7_919) {
            w.write(part).unwrap();
        }
        let spool = w.finish().unwrap();
        assert_eq!(spool.len(), data.len() as u64);
        for offset in [0usize, 1, 65_535, 65_536, 100_000, data.len() - 3] {
            let mut buf = vec![0u8; 70_000];
            let mut got = Vec::new();
            let mut at = offset as u64;
            while got.len() < 70_000 {
                let n = spool.read_at(at, &mut buf[..70_000 - got.len()]).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                at += n as u64;
            }
            assert_eq!(got, &data[offset..(offset + 70_000).min(data.len())]);
        }
        let mut raw = vec![0u8; 4096];
        spool.file.read_exact_at(&mut raw, 0).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"row 1 "), "plaintext on disk");
    }

    #[test]
    fn spool_refuses_past_its_limit() {
        let mut w = SpoolWriter::create(10).unwrap();
        w.write(b"0123456789").unwrap();
        assert!(w.write(b"x").is_err());
    }
}
