//! Random access for Parquet and XLSX: the node's spool implements [`RandomRead`]; adapters here
//! give parquet its `ChunkReader` and calamine/zip their `Read + Seek`.

use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::sync::Arc;

/// A file of known length readable at any offset (`pread`-style, no shared cursor).
pub trait RandomRead: Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads up to `buf.len()` bytes at `offset`; 0 only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl RandomRead for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.as_slice().len());
        let n = buf.len().min(self.as_slice().len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// A cursor over a [`RandomRead`].
#[derive(Clone)]
pub struct At {
    src: Arc<dyn RandomRead>,
    pos: u64,
}

impl At {
    pub fn new(src: Arc<dyn RandomRead>) -> At {
        At { src, pos: 0 }
    }
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.src.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for At {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let len = self.src.len() as i128;
        let next = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if next < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = u64::try_from(next).map_err(|_| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// Parquet's view of a [`RandomRead`].
pub struct Chunks(pub Arc<dyn RandomRead>);

impl ::parquet::file::reader::Length for Chunks {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl ::parquet::file::reader::ChunkReader for Chunks {
    type T = At;

    fn get_read(&self, start: u64) -> ::parquet::errors::Result<At> {
        Ok(At { src: self.0.clone(), pos: start })
    }

    fn get_bytes(&self, start: u64, length: usize) -> ::parquet::errors::Result<bytes::Bytes> {
        if start.saturating_add(length as u64) > self.0.len() {
            return Err(::parquet::errors::ParquetError::EOF(format!(
                "a read of {length} bytes at {start} goes past the end of the file"
            )));
        }
        let mut buf = vec![0u8; length];
        let mut at = At { src: self.0.clone(), pos: start };
        at.read_exact(&mut buf).map_err(|e| ::parquet::errors::ParquetError::External(Box::new(e)))?;
        Ok(buf.into())
    }
}
