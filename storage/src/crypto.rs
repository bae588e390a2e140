//! Encryption at rest (A4.2): every value this node writes — Raft log entries, state-machine table
//! values, the snapshot file — is sealed with AES-256-GCM under a data key (DEK); the DEKs are kept
//! in `keyring.pb`, each wrapped (sealed) by the node's master key, which never touches the data
//! directory (a file elsewhere, or an environment variable; see `docs/security.md`). A stolen disk
//! holds only ciphertext and wrapped keys.
//!
//! A sealed value is `MAGIC | key id (u32 BE) | nonce (12 bytes) | ciphertext | tag`, with the
//! sled key as associated data, so a value moved to another key does not open. Nonces are random
//! (96 bits) for every seal. Rotation adds a new DEK and seals new writes with it; older DEKs stay
//! in the keyring, so everything written before still opens.
//!
//! A value of at least `COMPRESS_MIN_BYTES` is compressed (zstd) before it is sealed when that
//! saves at least a tenth, since ciphertext does not compress: such a value starts with
//! `MAGIC_COMPRESSED` instead of `MAGIC`, and its plaintext is `length (u64 BE) | zstd frame`.
//! Values written before compression existed keep `MAGIC` and open as before.
//!
//! Keys of the tables are not encrypted (they must sort): they hold ids, log indexes, time points,
//! dimension values and HMACs, never a record's payload or personal data.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::RwLock;

use dtm_model::pb;
use prost::Message;
use ring::aead;
use ring::rand::SecureRandom;
use ring::rand::SystemRandom;

use crate::error::StoreError;

const MAGIC: u8 = 0xD7;
/// A sealed value whose plaintext is compressed (`seal_value`).
const MAGIC_COMPRESSED: u8 = 0xD8;
/// Values shorter than this are sealed as they are: zstd's frame costs more than it saves.
const COMPRESS_MIN_BYTES: usize = 256;
/// zstd's fastest level: a 1,000-record log entry (~450 KB) compresses in about a millisecond.
pub(crate) const COMPRESS_LEVEL: i32 = 1;
/// The largest plaintext a compressed value may claim (guards the allocation made to open it).
const COMPRESSED_PLAIN_MAX_BYTES: u64 = crate::limits::SNAPSHOT_BYTES_MAX as u64;
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const HEADER_BYTES: usize = 1 + 4 + NONCE_BYTES;
/// What the master key seals in the keyring so that a wrong master key is recognised as such.
const MASTER_CHECK: &[u8] = b"dtm master key check v1";
const MASTER_AAD: &[u8] = b"dtm keyring";

/// The node's master key: wraps the data keys. 32 bytes.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_BYTES]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never appear in logs.
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    pub fn from_bytes(b: &[u8]) -> Result<MasterKey, StoreError> {
        let k: [u8; KEY_BYTES] =
            b.try_into().map_err(|_| StoreError::Invalid(format!("a master key has {KEY_BYTES} bytes")))?;
        Ok(MasterKey(k))
    }

    /// A master key as written in a key file or the environment: 64 hex digits (surrounding
    /// whitespace ignored).
    pub fn parse(text: &str) -> Result<MasterKey, StoreError> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| StoreError::Invalid("a master key is 64 hexadecimal digits".into()))?;
        MasterKey::from_bytes(&bytes)
    }

    /// A fresh random master key as text (for `dtm certs init` and tests).
    pub fn generate_text() -> Result<String, StoreError> {
        let mut k = [0u8; KEY_BYTES];
        SystemRandom::new().fill(&mut k).map_err(|_| StoreError::Invalid("no system randomness".into()))?;
        Ok(hex::encode(k))
    }

    fn sealing_key(&self) -> Result<aead::LessSafeKey, StoreError> {
        less_safe_key(&self.0)
    }

    /// The key as 64 hex digits (for deriving the key of the node's scheduled backups).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Seals a small secret kept beside the store (the node's signing key): nonce ‖ ciphertext+tag,
    /// with `aad` naming what it is.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (nonce, sealed) = seal_with(&self.sealing_key()?, &SystemRandom::new(), aad, plain)?;
        Ok([nonce, sealed].concat())
    }

    /// Opens what [`MasterKey::seal`] sealed with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_BYTES {
            return Err(StoreError::Invalid("a sealed secret is too short".into()));
        }
        let (nonce, rest) = sealed.split_at(NONCE_BYTES);
        open_with(&self.sealing_key()?, nonce, aad, rest)
    }
}

fn less_safe_key(bytes: &[u8]) -> Result<aead::LessSafeKey, StoreError> {
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, bytes)
        .map_err(|_| StoreError::Invalid("not an AES-256 key".into()))?;
    Ok(aead::LessSafeKey::new(unbound))
}

fn seal_with(
    key: &aead::LessSafeKey,
    rng: &SystemRandom,
    aad: &[u8],
    plain: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill(&mut nonce).map_err(|_| StoreError::Invalid("no system randomness".into()))?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(aad), &mut buf)
        .map_err(|_| StoreError::Invalid("sealing failed".into()))?;
    Ok((nonce.to_vec(), buf))
}

fn open_with(key: &aead::LessSafeKey, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
    let nonce: [u8; NONCE_BYTES] =
        nonce.try_into().map_err(|_| StoreError::Invalid("a sealed value's nonce has the wrong length".into()))?;
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(aad), &mut buf)
        .map_err(|_| StoreError::Invalid("a sealed value does not open: damaged, moved, or another key".into()))?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

struct Keys {
    /// Data keys by id.
    by_id: BTreeMap<u32, aead::LessSafeKey>,
    current: u32,
    /// The stored form, rewritten on rotation.
    ring: pb::Keyring,
}

/// The data keys of one node and the operations on sealed values.
pub struct Cipher {
    keys: RwLock<Keys>,
    master: MasterKey,
    path: PathBuf,
    rng: SystemRandom,
    nonces: NonceSource,
}

/// Random nonces for data values, drawn from the operating system's generator in blocks: one
/// `getrandom` call per value sealed was about 1 % of the machine under load (three nodes sealing
/// every record). The bytes are the same system randomness, handed out once each.
struct NonceSource {
    pool: std::sync::Mutex<([u8; NONCE_POOL_BYTES], usize)>,
}

/// 341 nonces per system call.
const NONCE_POOL_BYTES: usize = 4096;

impl NonceSource {
    fn new() -> NonceSource {
        // Empty: the first nonce fills it.
        NonceSource { pool: std::sync::Mutex::new(([0; NONCE_POOL_BYTES], NONCE_POOL_BYTES)) }
    }

    fn next(&self, rng: &SystemRandom) -> Result<[u8; NONCE_BYTES], StoreError> {
        // A panic while it was held leaves bytes not yet handed out, or a position past them.
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, used) = &mut *pool;
        if *used + NONCE_BYTES > NONCE_POOL_BYTES {
            rng.fill(bytes).map_err(|_| StoreError::Invalid("no system randomness".into()))?;
            *used = 0;
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&bytes[*used..*used + NONCE_BYTES]);
        *used += NONCE_BYTES;
        Ok(nonce)
    }
}

/// What `GET /keys` shows about a node's keyring (never key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringStatus {
    pub current_key_id: u32,
    pub key_ids: Vec<u32>,
    /// The replicated rotation epoch this keyring has caught up with.
    pub epoch: u64,
}

impl Cipher {
    /// Opens the keyring in `dir` (creating it with a first data key if the store is new). A
    /// keyring that the master key does not open is refused with an error saying so.
    pub fn load(dir: &Path, master: MasterKey, created_at_ms: u64) -> Result<Cipher, StoreError> {
        let path = dir.join("keyring.pb");
        let rng = SystemRandom::new();
        let ring = match std::fs::read(&path) {
            Ok(bytes) => pb::Keyring::decode(bytes.as_slice())
                .map_err(|e| StoreError::Invalid(format!("{} is damaged: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (nonce, check) = seal_with(&master.sealing_key()?, &rng, MASTER_AAD, MASTER_CHECK)?;
                pb::Keyring { keys: vec![], current: 0, check_nonce: nonce, check_sealed: check, epoch: 0 }
            }
            Err(e) => return Err(e.into()),
        };
        let check = open_with(&master.sealing_key()?, &ring.check_nonce, MASTER_AAD, &ring.check_sealed);
        if check.ok().as_deref() != Some(MASTER_CHECK) {
            return Err(StoreError::Invalid(format!(
                "the master key does not open {}: it is not the key this node's data was written with, or \
                 the file is damaged",
                path.display()
            )));
        }
        let mut cipher = Cipher {
            keys: RwLock::new(Keys { by_id: BTreeMap::new(), current: 0, ring: ring.clone() }),
            master,
            path,
            rng,
            nonces: NonceSource::new(),
        };
        let by_id = cipher
            .unwrap_all(&ring)
            .map_err(|e| StoreError::Invalid(format!("{}: a data key does not open: {e}", cipher.path.display())))?;
        let first = by_id.is_empty();
        {
            let keys = cipher.keys.get_mut().unwrap_or_else(|p| p.into_inner());
            keys.by_id = by_id;
            keys.current = ring.current;
        }
        if first {
            cipher.rotate(0, created_at_ms)?;
        }
        Ok(cipher)
    }

    fn unwrap_all(&self, ring: &pb::Keyring) -> Result<BTreeMap<u32, aead::LessSafeKey>, StoreError> {
        let master = self.master.sealing_key()?;
        let mut by_id = BTreeMap::new();
        for k in &ring.keys {
            let aad = k.id.to_be_bytes();
            let bytes = open_with(&master, &k.nonce, &aad, &k.sealed_key)?;
            by_id.insert(k.id, less_safe_key(&bytes)?);
        }
        if !ring.keys.is_empty() && !by_id.contains_key(&ring.current) {
            return Err(StoreError::Invalid("the keyring's current key is missing".into()));
        }
        Ok(by_id)
    }

    /// Adds a new data key, makes it current and writes the keyring (temp file, fsync, rename,
    /// directory fsync) before any value is sealed with it. `epoch` is the replicated rotation
    /// epoch that caused it (0 for the first key).
    pub fn rotate(&self, epoch: u64, created_at_ms: u64) -> Result<u32, StoreError> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let id = keys.by_id.keys().next_back().map_or(1, |last| last + 1);
        let mut dek = [0u8; KEY_BYTES];
        self.rng.fill(&mut dek).map_err(|_| StoreError::Invalid("no system randomness".into()))?;
        let (nonce, sealed_key) = seal_with(&self.master.sealing_key()?, &self.rng, &id.to_be_bytes(), &dek)?;
        let mut ring = keys.ring.clone();
        ring.keys.push(pb::WrappedKey { id, nonce, sealed_key, created_at_ms });
        ring.current = id;
        ring.epoch = ring.epoch.max(epoch);
        write_atomically(&self.path, &ring.encode_to_vec())?;
        keys.by_id.insert(id, less_safe_key(&dek)?);
        keys.current = id;
        keys.ring = ring;
        Ok(id)
    }

    /// Removes from the keyring every data key older than `below` (never the current one), once
    /// nothing sealed with them is left (the caller proved that). Returns the ids removed.
    pub fn retire_below(&self, below: u32) -> Result<Vec<u32>, StoreError> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let retired: Vec<u32> = keys.by_id.keys().copied().filter(|id| *id < below && *id != keys.current).collect();
        if retired.is_empty() {
            return Ok(retired);
        }
        let mut ring = keys.ring.clone();
        ring.keys.retain(|k| !retired.contains(&k.id));
        write_atomically(&self.path, &ring.encode_to_vec())?;
        for id in &retired {
            keys.by_id.remove(id);
        }
        keys.ring = ring;
        Ok(retired)
    }

    pub fn status(&self) -> KeyringStatus {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        KeyringStatus {
            current_key_id: keys.current,
            key_ids: keys.by_id.keys().copied().collect(),
            epoch: keys.ring.epoch,
        }
    }

    /// Seals `plain` under the current data key, bound to `aad` (the sled key).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.seal_parts(aad, &[plain])
    }

    /// Seals a table value or log entry: compressed first when it is long enough and compresses by
    /// at least a tenth (records and log entries are JSON and prost; ciphertext cannot be
    /// compressed afterwards, by sled or anything else).
    pub fn seal_value(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.seal_value_parts(aad, &[plain])
    }

    /// `seal_value` of the concatenation of `parts` (the snapshot file: its header and its body).
    pub fn seal_value_parts(&self, aad: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, StoreError> {
        match pack(parts)? {
            Some(packed) => self.seal_packed(aad, &packed),
            None => self.seal_parts(aad, parts),
        }
    }

    /// `seal_value` of `prefix ‖ buf`, giving `buf` up: sealed in place when it does not compress.
    pub fn seal_value_owned(&self, aad: &[u8], prefix: &[u8], buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match pack(&[prefix, &buf])? {
            Some(packed) => {
                drop(buf);
                self.seal_packed(aad, &packed)
            }
            None => self.seal_owned(aad, prefix, buf),
        }
    }

    fn seal_packed(&self, aad: &[u8], packed: &Packed) -> Result<Vec<u8>, StoreError> {
        self.seal_framed_as(MAGIC_COMPRESSED, aad, |header| {
            let mut out = Vec::with_capacity(HEADER_BYTES + 8 + packed.frame.len() + aead::AES_256_GCM.tag_len());
            out.extend_from_slice(header);
            out.extend_from_slice(&packed.len.to_be_bytes());
            out.extend_from_slice(&packed.frame);
            out
        })
    }

    /// Seals the concatenation of `parts`, written once into the buffer that is sealed in place:
    /// for values of hundreds of MB (the snapshot file) no copy is made beyond the sealed one.
    pub fn seal_parts(&self, aad: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, StoreError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.seal_framed(aad, |header| {
            let mut out = Vec::with_capacity(HEADER_BYTES + len + aead::AES_256_GCM.tag_len());
            out.extend_from_slice(header);
            for p in parts {
                out.extend_from_slice(p);
            }
            out
        })
    }

    /// Seals `prefix ‖ buf` in `buf` itself (the header and prefix are moved in front of it, which
    /// needs no second buffer when `buf` has the room, as a received snapshot usually has).
    pub fn seal_owned(&self, aad: &[u8], prefix: &[u8], mut buf: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.seal_framed(aad, |header| {
            buf.reserve(HEADER_BYTES + prefix.len() + aead::AES_256_GCM.tag_len());
            buf.splice(0..0, header.iter().chain(prefix).copied());
            buf
        })
    }

    /// Seals in place: `layout` gets the header (magic, current key id, a fresh nonce) and answers
    /// a buffer that starts with it, followed by the plaintext; the tag is appended.
    fn seal_framed(&self, aad: &[u8], layout: impl FnOnce(&[u8]) -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.seal_framed_as(MAGIC, aad, layout)
    }

    fn seal_framed_as(
        &self,
        magic: u8,
        aad: &[u8],
        layout: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.by_id.get(&keys.current).ok_or_else(|| StoreError::Invalid("no current data key".into()))?;
        let nonce = self.nonces.next(&self.rng)?;
        let mut header = [0u8; HEADER_BYTES];
        header[0] = magic;
        header[1..5].copy_from_slice(&keys.current.to_be_bytes());
        header[5..].copy_from_slice(&nonce);
        let mut buf = layout(&header);
        let aad = bound_aad(magic, aad);
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad.as_ref()),
                &mut buf[HEADER_BYTES..],
            )
            .map_err(|_| StoreError::Invalid("sealing failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(buf)
    }

    /// Opens a value sealed by `seal` or `seal_value` with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (magic, id, nonce) = header_of(sealed)?;
        let mut buf = sealed[HEADER_BYTES..].to_vec();
        let n = self.open_body(magic, id, nonce, aad, &mut buf)?;
        buf.truncate(n);
        unpack(magic, buf)
    }

    /// `open`, in the buffer the value came in (for values of hundreds of MB).
    pub fn open_owned(&self, aad: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let (magic, id, nonce) = header_of(&sealed)?;
        let n = self.open_body(magic, id, nonce, aad, &mut sealed[HEADER_BYTES..])?;
        sealed.truncate(HEADER_BYTES + n);
        sealed.drain(..HEADER_BYTES);
        unpack(magic, sealed)
    }

    /// Opens ciphertext and tag in place with data key `id`; answers the plaintext's length.
    fn open_body(
        &self,
        magic: u8,
        id: u32,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        body: &mut [u8],
    ) -> Result<usize, StoreError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key =
            keys.by_id.get(&id).ok_or_else(|| StoreError::Invalid(format!("data key {id} is not in the keyring")))?;
        let aad = bound_aad(magic, aad);
        let plain =
            key.open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(aad.as_ref()), body).map_err(
                |_| StoreError::Invalid("a sealed value does not open: damaged, moved, or another key".into()),
            )?;
        Ok(plain.len())
    }

    /// The id of the data key a sealed value was written with.
    pub fn key_id_of(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= HEADER_BYTES && matches!(sealed[0], MAGIC | MAGIC_COMPRESSED))
            .then(|| u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]))
    }
}

/// The concatenation of `parts` compressed, when it is long enough and that makes it at least a
/// tenth shorter (None: seal it as it is).
fn pack(parts: &[&[u8]]) -> Result<Option<Packed>, StoreError> {
    use std::io::Write;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len < COMPRESS_MIN_BYTES {
        return Ok(None);
    }
    let failed = |e: std::io::Error| StoreError::Invalid(format!("compressing a value: {e}"));
    let frame = match parts {
        // One value (a table value, a log entry): a context kept per thread, sized to the input by
        // zstd. A new context per value would allocate and clear its tables each time.
        [one] => with_context(&COMPRESSOR, || zstd::bulk::Compressor::new(COMPRESS_LEVEL), |c| c.compress(one))
            .map_err(failed)?,
        // A snapshot file of plain data (an older leader's, `snapshot_body`; its header and a body
        // of up to GBs): streamed, the size pledged.
        _ => {
            let mut encoder =
                zstd::stream::write::Encoder::new(Vec::with_capacity(len / 4), COMPRESS_LEVEL).map_err(failed)?;
            encoder.set_pledged_src_size(Some(len as u64)).map_err(failed)?;
            for p in parts {
                encoder.write_all(p).map_err(failed)?;
            }
            encoder.finish().map_err(failed)?
        }
    };
    Ok((frame.len() + 8 <= len - len / 10).then_some(Packed { len: len as u64, frame }))
}

/// A compressed plaintext: its length and the zstd frame (sealed as `length (u64 BE) | frame`).
struct Packed {
    len: u64,
    frame: Vec<u8>,
}

/// Runs `f` with this thread's zstd context in `cell`, made by `make` on first use.
fn with_context<T: 'static, R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    make: impl FnOnce() -> std::io::Result<T>,
    f: impl FnOnce(&mut T) -> std::io::Result<R>,
) -> std::io::Result<R> {
    cell.with(|c| {
        let mut c = c.borrow_mut();
        let context = match c.as_mut() {
            Some(context) => context,
            None => c.insert(make()?),
        };
        f(context)
    })
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The associated data a value is sealed with: its key, and for a compressed value a marker too, so
/// that a changed magic byte makes the value fail to open instead of being read the other way.
fn bound_aad(magic: u8, aad: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if magic == MAGIC_COMPRESSED {
        std::borrow::Cow::Owned([aad, b"\0zstd"].concat())
    } else {
        std::borrow::Cow::Borrowed(aad)
    }
}

/// The plaintext of an opened value: as it is, or decompressed when its magic says so.
fn unpack(magic: u8, opened: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    if magic != MAGIC_COMPRESSED {
        return Ok(opened);
    }
    let Some((len, frame)) = opened.split_first_chunk::<8>() else {
        return Err(StoreError::Invalid("a compressed value is shorter than its length".into()));
    };
    let len = u64::from_be_bytes(*len);
    if len > COMPRESSED_PLAIN_MAX_BYTES {
        return Err(StoreError::Invalid(format!("a compressed value claims {len} bytes")));
    }
    let failed = |e: std::io::Error| StoreError::Invalid(format!("a compressed value does not decompress: {e}"));
    // A context kept per thread: creating one per value cost 5 % of a leader's time (its log entries
    // are opened again for every follower).
    let plain = with_context(&DECOMPRESSOR, zstd::bulk::Decompressor::new, |d| d.decompress(frame, len as usize))
        .map_err(failed)?;
    if plain.len() as u64 != len {
        return Err(StoreError::Invalid("a compressed value decompresses to another length".into()));
    }
    Ok(plain)
}

/// The magic, data key id and nonce of a value sealed by `Cipher::seal` or `Cipher::seal_value`.
fn header_of(sealed: &[u8]) -> Result<(u8, u32, [u8; NONCE_BYTES]), StoreError> {
    if sealed.len() < HEADER_BYTES || !matches!(sealed[0], MAGIC | MAGIC_COMPRESSED) {
        return Err(StoreError::Invalid(
            "a stored value is not sealed (damaged, or written without encryption)".into(),
        ));
    }
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&sealed[5..HEADER_BYTES]);
    Ok((sealed[0], u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]), nonce))
}

/// Temp file, fsync, rename, directory fsync: a crash leaves the old file or the new one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every nonce is handed out once, across refills of the pool.
    #[test]
    fn nonces_are_never_handed_out_twice() {
        let source = NonceSource::new();
        let rng = SystemRandom::new();
        let n = 3 * NONCE_POOL_BYTES / NONCE_BYTES + 7;
        let nonces = (0..n).map(|_| source.next(&rng).expect("nonce")).collect::<std::collections::HashSet<_>>();
        assert_eq!(nonces.len(), n);
        assert!(!nonces.contains(&[0u8; NONCE_BYTES]), "the empty pool is filled before use");
    }

    fn master() -> MasterKey {
        MasterKey::parse(&MasterKey::generate_text().expect("key")).expect("parse")
    }

    #[test]
    fn sealed_values_open_with_their_key_only_and_survive_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = master();
        let c = Cipher::load(dir.path(), m.clone(), 1).expect("open");
        let a = c.seal(b"k1", b"secret marker").expect("seal");
        assert!(!a.windows(13).any(|w| w == b"secret marker"), "ciphertext holds no plaintext");
        assert_eq!(c.open(b"k1", &a).expect("open"), b"secret marker");
        assert!(c.open(b"k2", &a).is_err(), "a value moved to another key does not open");
        let mut flipped = a.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(c.open(b"k1", &flipped).is_err(), "a flipped byte is detected");

        assert_eq!(Cipher::key_id_of(&a), Some(1));
        assert_eq!(c.rotate(1, 2).expect("rotate"), 2);
        let b = c.seal(b"k1", b"new").expect("seal");
        assert_eq!(Cipher::key_id_of(&b), Some(2), "new writes use the new key");
        assert_eq!(c.open(b"k1", &a).expect("old data still opens"), b"secret marker");

        // Reopened with the same master key: both keys, current is the newest.
        drop(c);
        let c = Cipher::load(dir.path(), m, 3).expect("reopen");
        assert_eq!(c.status(), KeyringStatus { current_key_id: 2, key_ids: vec![1, 2], epoch: 1 });
        assert_eq!(c.open(b"k1", &a).expect("open"), b"secret marker");
        // Another master key is refused, naming the keyring.
        let err = Cipher::load(dir.path(), master(), 4).err().expect("refused").to_string();
        assert!(err.contains("keyring.pb"), "{err}");
    }

    /// The in-place variants for large values read and write the same format as `seal`/`open`.
    #[test]
    fn values_sealed_in_place_open_either_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cipher::load(dir.path(), master(), 1).expect("open");
        let built = c.seal_parts(b"k", &[b"secret ", b"marker"]).expect("seal");
        assert!(!built.windows(13).any(|w| w == b"secret marker"), "ciphertext holds no plaintext");
        assert_eq!(built.len(), HEADER_BYTES + 13 + 16, "header, ciphertext, tag");
        assert_eq!(c.open(b"k", &built).expect("open"), b"secret marker");
        assert_eq!(c.open_owned(b"k", built.clone()).expect("open"), b"secret marker");
        let sealed = c.seal(b"k", b"other").expect("seal");
        assert_eq!(c.open_owned(b"k", sealed.clone()).expect("open"), b"other");
        assert!(c.open_owned(b"j", sealed).is_err(), "bound to its key");
        let mut flipped = built;
        flipped[HEADER_BYTES] ^= 1;
        assert!(c.open_owned(b"k", flipped).is_err(), "a flipped byte is detected");
        assert!(c.open_owned(b"k", vec![MAGIC; 3]).is_err(), "too short");
        assert_eq!(c.open_owned(b"k", c.seal_parts(b"k", &[]).expect("seal")).expect("open"), b"");
        let owned = c.seal_owned(b"k", b"secret ", b"marker".to_vec()).expect("seal");
        assert!(!owned.windows(6).any(|w| w == b"marker"), "ciphertext holds no plaintext");
        assert_eq!(c.open(b"k", &owned).expect("open"), b"secret marker");
    }

    /// Long values are compressed before sealing and open to the same bytes; short or incompressible
    /// ones are sealed as they are; a compressed value moved to another key, or with its magic byte
    /// changed, does not open.
    #[test]
    fn long_values_are_compressed_then_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cipher::load(dir.path(), master(), 1).expect("open");
        let text: Vec<u8> =
            (0..200).flat_map(|i| format!("{{\"province\":\"Ha Noi\",\"n\":{i}}},").into_bytes()).collect();
        let packed = c.seal_value(b"k", &text).expect("seal");
        assert_eq!(packed[0], MAGIC_COMPRESSED);
        assert!(packed.len() * 4 < text.len(), "{} bytes sealed from {}", packed.len(), text.len());
        assert_eq!(c.open(b"k", &packed).expect("open"), text);
        assert_eq!(c.open_owned(b"k", packed.clone()).expect("open"), text);
        assert!(c.open(b"j", &packed).is_err(), "bound to its key");
        let mut as_plain = packed.clone();
        as_plain[0] = MAGIC;
        assert!(c.open(b"k", &as_plain).is_err(), "the magic byte is bound too");

        let short = c.seal_value(b"k", b"short value").expect("seal");
        assert_eq!(short[0], MAGIC);
        assert_eq!(c.open(b"k", &short).expect("open"), b"short value");
        let mut as_packed = short;
        as_packed[0] = MAGIC_COMPRESSED;
        assert!(c.open(b"k", &as_packed).is_err(), "a plain value does not open as a compressed one");

        let mut noise = vec![0u8; 4096];
        SystemRandom::new().fill(&mut noise).expect("random");
        let sealed = c.seal_value(b"k", &noise).expect("seal");
        assert_eq!(sealed[0], MAGIC, "incompressible values are sealed as they are");
        assert_eq!(c.open(b"k", &sealed).expect("open"), noise);
        assert_eq!(Cipher::key_id_of(&packed), Some(1));
    }
}
