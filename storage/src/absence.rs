//! Which keys are certainly not in the tables, without asking sled.
//!
//! Most lookups of some tables miss: every new record looks up its natural key, every submission
//! its idempotency key, and neither is usually there. sled answers a miss by walking its tree
//! (8–9 µs on the project machine, `dtm bench --ceilings`), on every node, once per record; in a
//! batch upload that was 15 % of the machine. The applier names those tables' key prefixes
//! (`Applier::lookup_filtered_prefixes`) and this filter keeps every key under them in a Bloom
//! filter, so that a miss it can prove costs about 0.1 µs.
//!
//! A Bloom filter has false positives (then sled is asked, as before) and no false negatives, so
//! the filter changes how fast `apply` is, never what it does: every key written through a `Txn`
//! is noted before it can be read back, and the keys already on disk are noted by a build that
//! scans them. Until that build is done (after opening the store, or after a snapshot or backup
//! replaced the tables) the filter proves nothing and every lookup goes to sled.
//!
//! The build runs on `apply`'s own thread, a slice of at most `ABSENCE_BUILD_SLICE` after each
//! `apply` call: no thread holds the store open behind its owner's back, and an idle node, which
//! looks nothing up, builds nothing. Keys written during the build are noted in both the filter
//! being served and the one being built, so the new filter is complete when its scan ends. Keys
//! removed from the tables (expired idempotency entries) stay in the filter as false positives
//! until the next build, which starts once twice as many keys were noted as the last build found.
//!
//! Memory: about 1.5 bytes per key (12 bits), at most `ABSENCE_FILTER_BYTES_MAX` per filter and
//! two filters while one is built. A filter that would outgrow it stops proving anything (every
//! lookup goes to sled, as without it) and is not built again until the node restarts.

use std::hash::Hasher;
use std::sync::Mutex;
use std::time::Instant;

use crate::limits::ABSENCE_BUILD_SLICE;
use crate::limits::ABSENCE_FILTER_BYTES_MAX;
use crate::limits::ABSENCE_FIRST_LAYER_KEYS;

/// Bits per key of each layer: with `PROBES` probes in one 512-bit block, 0.42 % false positives
/// at full capacity (measured in the tests below). A key may be in any layer, so a filter of L
/// full layers claims about L × 0.42 % of absent keys; a rebuilt filter has one or two layers.
const BITS_PER_KEY: u64 = 12;
const PROBES: u32 = 7;
const BLOCK_BITS: u64 = 512;
/// Keys read from sled between two looks at the clock while building.
const BUILD_CLOCK_EVERY_KEYS: usize = 256;

/// One cache line of bits: a key's probes all fall in one block, so a lookup costs one miss.
type Block = [u64; 8];

fn hash(key: &[u8]) -> u64 {
    // SipHash-1-3 with fixed keys: the same on every node and run. The keys under the filtered
    // prefixes are HMACs or ids chosen by the system; a caller who crafted collisions would only
    // turn provable misses into sled lookups.
    let mut h = std::hash::DefaultHasher::new();
    h.write(key);
    h.finish()
}

/// The probe bits of a hash, independent of the bits that chose its block (splitmix64's mixer).
fn probe_bits(h: u64) -> u64 {
    let mut z = h ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A blocked Bloom filter for up to `capacity` keys.
struct Layer {
    blocks: Vec<Block>,
    capacity: u64,
    len: u64,
}

impl Layer {
    fn bytes_for(capacity: u64) -> usize {
        Self::blocks_for(capacity) * std::mem::size_of::<Block>()
    }

    fn blocks_for(capacity: u64) -> usize {
        usize::try_from(capacity.saturating_mul(BITS_PER_KEY).div_ceil(BLOCK_BITS).max(1)).unwrap_or(usize::MAX)
    }

    fn new(capacity: u64) -> Layer {
        Layer { blocks: vec![[0; 8]; Self::blocks_for(capacity)], capacity, len: 0 }
    }

    fn block(&self, h: u64) -> usize {
        // Multiply-shift: maps the hash onto the blocks without a division.
        ((u128::from(h) * self.blocks.len() as u128) >> 64) as usize
    }

    fn insert(&mut self, h: u64) {
        let i = self.block(h);
        let mut bits = probe_bits(h);
        if let Some(block) = self.blocks.get_mut(i) {
            for _ in 0..PROBES {
                let bit = (bits % BLOCK_BITS) as usize;
                block[bit / 64] |= 1 << (bit % 64);
                bits >>= 9;
            }
        }
        self.len += 1;
    }

    fn may_contain(&self, h: u64) -> bool {
        let Some(block) = self.blocks.get(self.block(h)) else { return true };
        let mut bits = probe_bits(h);
        for _ in 0..PROBES {
            let bit = (bits % BLOCK_BITS) as usize;
            if block[bit / 64] & (1 << (bit % 64)) == 0 {
                return false;
            }
            bits >>= 9;
        }
        true
    }
}

/// Layers of doubling capacity (a scalable Bloom filter): it grows with the keys without knowing
/// their number beforehand, and a key may be in any layer.
struct Bloom {
    layers: Vec<Layer>,
    bytes: usize,
    /// Keys noted (with repeats): what the next build is sized and triggered by.
    noted: u64,
    /// It outgrew `ABSENCE_FILTER_BYTES_MAX` and missed keys: it proves nothing any more.
    saturated: bool,
}

impl Bloom {
    fn new(first_layer_keys: u64) -> Bloom {
        let first = Layer::new(first_layer_keys.max(1));
        Bloom { bytes: Layer::bytes_for(first.capacity), layers: vec![first], noted: 0, saturated: false }
    }

    fn insert(&mut self, h: u64) {
        self.noted = self.noted.saturating_add(1);
        if self.saturated {
            return;
        }
        let full = self.layers.last().is_none_or(|l| l.len >= l.capacity);
        if full {
            let capacity = self.layers.last().map_or(ABSENCE_FIRST_LAYER_KEYS, |l| l.capacity.saturating_mul(2));
            let bytes = Layer::bytes_for(capacity);
            if self.bytes.saturating_add(bytes) > ABSENCE_FILTER_BYTES_MAX {
                self.saturated = true;
                self.layers = Vec::new();
                self.bytes = 0;
                return;
            }
            self.layers.push(Layer::new(capacity));
            self.bytes += bytes;
        }
        if let Some(l) = self.layers.last_mut() {
            l.insert(h);
        }
    }

    fn may_contain(&self, h: u64) -> bool {
        // The newest layer is the largest and holds the most keys.
        self.saturated || self.layers.iter().rev().any(|l| l.may_contain(h))
    }
}

/// A build in progress: the filter being filled and where its scan stands.
struct Build {
    bloom: Bloom,
    /// Index into `prefixes` of the prefix being scanned.
    prefix: usize,
    /// The last key scanned under it (`None`: the scan of this prefix has not begun).
    after: Option<sled::IVec>,
    /// Keys found by the scan.
    scanned: u64,
    started: Instant,
    /// Which build this is (`State::builds`): a scan slice whose build was replaced meanwhile is
    /// dropped.
    id: u64,
}

#[derive(Default)]
struct State {
    /// The filter lookups are answered from (`None`: none is complete; every lookup goes to sled).
    serving: Option<Bloom>,
    building: Option<Build>,
    /// Keys the last completed build found.
    built_keys: u64,
    builds: u64,
    builds_completed: u64,
    /// Lookups answered "absent" without sled since the store opened.
    misses_proved: u64,
    /// A filter outgrew its bytes: no further build until the node restarts.
    gave_up: bool,
}

/// Whether the filter proves misses, and how often it did (the build's keys, bytes and time are
/// logged: `lookup filter built`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AbsenceStats {
    /// Whether misses are being proved (a complete filter is served).
    pub serving: bool,
    pub builds_completed: u64,
    /// Lookups answered "absent" without sled since the store opened.
    pub misses_proved: u64,
}

/// The filter of the state machine's miss-heavy key prefixes (see the module header).
pub(crate) struct AbsenceFilter {
    prefixes: Vec<Vec<u8>>,
    state: Mutex<State>,
}

impl AbsenceFilter {
    /// A filter of the keys under `prefixes`, to be built from the tables (none: a filter that
    /// covers nothing and costs nothing).
    pub(crate) fn new(prefixes: Vec<Vec<u8>>) -> AbsenceFilter {
        let f = AbsenceFilter { prefixes, state: Mutex::new(State::default()) };
        f.reset();
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a cache of the tables: a panic while it was held leaves at worst a filter
        // with extra keys, which is still correct.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// Whether `key` is certainly not in the tables (nor written by a transaction since).
    pub(crate) fn certainly_absent(&self, key: &[u8]) -> bool {
        if !self.covers(key) {
            return false;
        }
        let h = hash(key);
        let mut s = self.lock();
        let absent = s.serving.as_ref().is_some_and(|b| !b.may_contain(h));
        s.misses_proved += u64::from(absent);
        absent
    }

    /// Notes a key about to be written, before any reader can look for it.
    pub(crate) fn note(&self, key: &[u8]) {
        if !self.covers(key) {
            return;
        }
        let h = hash(key);
        let mut s = self.lock();
        if let Some(b) = s.serving.as_mut() {
            b.insert(h);
        }
        if let Some(b) = s.building.as_mut() {
            b.bloom.insert(h);
        }
    }

    /// The tables were replaced (or are about to be): nothing is proved until a new build,
    /// started here, has scanned them.
    pub(crate) fn reset(&self) {
        if self.prefixes.is_empty() {
            return;
        }
        let mut s = self.lock();
        s.serving = None;
        s.gave_up = false;
        let first = s.built_keys.max(ABSENCE_FIRST_LAYER_KEYS);
        Self::start_build(&mut s, first);
    }

    fn start_build(s: &mut State, first_layer_keys: u64) {
        s.builds += 1;
        s.building = Some(Build {
            bloom: Bloom::new(first_layer_keys),
            prefix: 0,
            after: None,
            scanned: 0,
            started: Instant::now(),
            id: s.builds,
        });
    }

    /// Advances the build by one slice of at most `ABSENCE_BUILD_SLICE`, and starts a new build
    /// when the served filter holds twice the keys the last build found (removed keys linger in a
    /// Bloom filter). Called after each `apply` call. A failing scan ends the build (lookups keep
    /// going to sled); it never fails the `apply`.
    pub(crate) fn advance(&self, tree: &sled::Tree) {
        if self.prefixes.is_empty() {
            return;
        }
        let (id, prefix, after) = {
            let mut s = self.lock();
            if s.building.is_none() {
                let noted = s.serving.as_ref().map_or(0, |b| b.noted);
                if s.gave_up || noted <= s.built_keys.max(ABSENCE_FIRST_LAYER_KEYS).saturating_mul(2) {
                    return;
                }
                let first = s.built_keys.saturating_mul(2).max(ABSENCE_FIRST_LAYER_KEYS);
                Self::start_build(&mut s, first);
            }
            let Some(b) = s.building.as_ref() else { return };
            (b.id, b.prefix, b.after.clone())
        };
        let Some(p) = self.prefixes.get(prefix) else { return };
        let scan = match &after {
            Some(k) => tree.range::<&[u8], _>((std::ops::Bound::Excluded(k.as_ref()), std::ops::Bound::Unbounded)),
            None => tree.range::<&[u8], _>(p.as_slice()..),
        };
        let deadline = Instant::now() + ABSENCE_BUILD_SLICE;
        let mut hashes = Vec::new();
        let mut last = None;
        // The scan of this prefix ends unless the slice's time runs out first.
        let mut done = true;
        for (i, kv) in scan.keys().enumerate() {
            let key = match kv {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "the lookup filter's scan failed; lookups go to sled until the next start");
                    let mut s = self.lock();
                    s.building = None;
                    s.gave_up = true;
                    return;
                }
            };
            if !key.starts_with(p) {
                break;
            }
            hashes.push(hash(&key));
            last = Some(key);
            if i % BUILD_CLOCK_EVERY_KEYS == BUILD_CLOCK_EVERY_KEYS - 1 && Instant::now() >= deadline {
                done = false;
                break;
            }
        }

        let mut s = self.lock();
        let Some(b) = s.building.as_mut().filter(|b| b.id == id) else { return };
        b.scanned += hashes.len() as u64;
        for h in hashes {
            b.bloom.insert(h);
        }
        if b.bloom.saturated {
            tracing::warn!(
                keys = b.scanned,
                bytes_max = ABSENCE_FILTER_BYTES_MAX,
                "the lookup filter outgrew its memory; lookups go to sled until the next start"
            );
            s.building = None;
            s.gave_up = true;
            return;
        }
        match done {
            false => b.after = last,
            true if prefix + 1 < self.prefixes.len() => {
                b.prefix += 1;
                b.after = None;
            }
            true => {
                let Some(b) = s.building.take() else { return };
                tracing::info!(
                    keys = b.scanned,
                    bytes = b.bloom.bytes,
                    ms = b.started.elapsed().as_millis() as u64,
                    "lookup filter built"
                );
                s.built_keys = b.scanned;
                s.serving = Some(b.bloom);
                s.builds_completed += 1;
            }
        }
    }

    pub(crate) fn stats(&self) -> AbsenceStats {
        let s = self.lock();
        AbsenceStats {
            serving: s.serving.as_ref().is_some_and(|b| !b.saturated),
            builds_completed: s.builds_completed,
            misses_proved: s.misses_proved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &[u8], i: u64) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn a_bloom_never_forgets_a_key_and_rarely_claims_an_absent_one() {
        let mut b = Bloom::new(1000);
        for i in 0..50_000u64 {
            b.insert(hash(&key(b"nk/", i)));
        }
        assert!(b.layers.len() > 1, "it grew by layers");
        for i in 0..50_000u64 {
            assert!(b.may_contain(hash(&key(b"nk/", i))), "key {i} was noted and must be kept");
        }
        let false_positives = (50_000..250_000u64).filter(|&i| b.may_contain(hash(&key(b"nk/", i)))).count();
        let rate = false_positives as f64 / 200_000.0;
        // A key may be in any layer, so the layers' rates add up.
        assert!(rate < 0.006 * b.layers.len() as f64, "false-positive rate {rate} with {} layers", b.layers.len());
    }

    #[test]
    fn one_full_layer_claims_under_six_in_a_thousand_absent_keys() {
        let mut l = Layer::new(ABSENCE_FIRST_LAYER_KEYS);
        for i in 0..ABSENCE_FIRST_LAYER_KEYS {
            l.insert(hash(&key(b"nk/", i)));
        }
        let n = 500_000u64;
        let claimed = (0..n).filter(|i| l.may_contain(hash(&key(b"nk/", i + ABSENCE_FIRST_LAYER_KEYS)))).count();
        let rate = claimed as f64 / n as f64;
        assert!(rate < 0.006, "false-positive rate {rate} (0.42 % when measured)");
    }

    #[test]
    fn nothing_is_proved_absent_before_the_build_has_scanned_the_tables() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for i in 0..5_000u64 {
            tree.insert(key(b"nk/", i), b"v").unwrap();
        }
        tree.insert(b"other", b"v").unwrap();
        let f = AbsenceFilter::new(vec![b"idem/".to_vec(), b"nk/".to_vec()]);
        assert!(!f.certainly_absent(&key(b"nk/", 999_999)), "no build yet: sled must be asked");
        // Keys written while the build runs are noted, in front of and behind its scan.
        f.note(&key(b"nk/", 10_000));
        f.note(b"idem/a");
        let mut rounds = 0;
        while !f.stats().serving {
            f.advance(&tree);
            rounds += 1;
            assert!(rounds < 1_000, "the build must end");
        }
        for i in (0..5_000u64).chain([10_000]) {
            assert!(!f.certainly_absent(&key(b"nk/", i)), "key {i} is in the tables");
        }
        assert!(!f.certainly_absent(b"idem/a"));
        assert!(!f.certainly_absent(b"other"), "keys outside the prefixes are never claimed");
        let proved = (20_000..30_000u64).filter(|&i| f.certainly_absent(&key(b"nk/", i))).count();
        assert!(proved > 9_800, "most misses are proved: {proved} of 10,000");
        // A reset (the tables replaced) proves nothing until the next build.
        f.reset();
        assert!(!f.certainly_absent(&key(b"nk/", 25_000)));
    }

    #[test]
    fn the_filter_is_rebuilt_once_twice_the_keys_were_noted() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let f = AbsenceFilter::new(vec![b"idem/".to_vec()]);
        f.advance(&tree);
        assert!(f.stats().serving);
        assert_eq!(f.stats().builds_completed, 1);
        // Keys noted and then removed from the tables (expired) linger until the next build.
        for i in 0..=2 * ABSENCE_FIRST_LAYER_KEYS {
            f.note(&key(b"idem/", i));
        }
        assert!(!f.certainly_absent(&key(b"idem/", 7)));
        f.advance(&tree);
        assert_eq!(f.stats().builds_completed, 2);
        assert!(f.certainly_absent(&key(b"idem/", 7)), "the removed key is forgotten by the rebuild");
    }
}
