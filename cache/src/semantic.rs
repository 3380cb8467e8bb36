//! Nearest-neighbour search over cached questions, one index per scope.
//!
//! A scope (tenant + model/route + answer-changing parameters + conversation so far) is the
//! unit of search: a query only ever sees entries of its own scope, so isolation does not
//! depend on a similarity threshold. Within a scope, small indexes are scanned exactly;
//! large ones are first narrowed by the Hamming distance between sign bits of the vectors
//! (48 bytes per entry at 384 dimensions, so 100k entries fit in L2/L3), then the best
//! `RESCORE` candidates are scored exactly. Entries can be removed at once (TTL, eviction),
//! which graph indexes such as HNSW make awkward.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::answer::CachedAnswer;
use crate::key::Digest;

/// Scopes up to this size are scanned exactly (the scan costs less than the prefilter).
pub const EXACT_SCAN_MAX: usize = 2048;
/// Candidates kept by the Hamming prefilter and scored exactly.
pub const RESCORE: usize = 64;

/// One cached question and its answer.
#[derive(Debug)]
pub struct SemanticEntry {
    /// The exact key of the request that produced it (identifies the row in the database).
    pub exact_key: Digest,
    /// The last user message it answered: what the verifier compares.
    pub query: String,
    pub answer: Arc<CachedAnswer>,
    /// Unix ms after which the entry is never served.
    pub expires_at_ms: u64,
}

/// The nearest entry of a scope.
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub entry: Arc<SemanticEntry>,
    pub cosine: f32,
    /// The entry's embedding (for the verifier).
    pub embedding: Vec<f32>,
}

#[derive(Default)]
struct ScopeIndex {
    entries: Vec<Arc<SemanticEntry>>,
    /// Row-major vectors, `dim` per entry.
    vectors: Vec<f32>,
    /// Sign bits, `words` u64 per entry.
    bits: Vec<u64>,
    /// Insertion sequence, for evicting the oldest.
    sequence: Vec<u64>,
}

impl ScopeIndex {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Grows by an eighth (at least 256 entries) rather than doubling: at 100k entries a
    /// doubled vector buffer would waste up to 150 MB.
    fn reserve_one(&mut self, dim: usize, words: usize) {
        if self.entries.len() == self.entries.capacity() {
            let more = (self.entries.len() / 8).max(256);
            self.entries.reserve_exact(more);
            self.sequence.reserve_exact(more);
            self.vectors.reserve_exact(more * dim);
            self.bits.reserve_exact(more * words);
        }
    }

    fn remove(&mut self, i: usize, dim: usize, words: usize) {
        let last = self.entries.len() - 1;
        self.entries.swap(i, last);
        self.entries.pop();
        self.sequence.swap(i, last);
        self.sequence.pop();
        if i != last {
            self.vectors.copy_within(last * dim..(last + 1) * dim, i * dim);
            self.bits.copy_within(last * words..(last + 1) * words, i * words);
        }
        self.vectors.truncate(last * dim);
        self.bits.truncate(last * words);
    }
}

/// All scopes' indexes.
pub struct SemanticIndex {
    dim: usize,
    words: usize,
    max_entries: usize,
    max_per_scope: usize,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    scopes: HashMap<Digest, ScopeIndex>,
    total: usize,
    next_sequence: u64,
}

impl SemanticIndex {
    pub fn new(dim: usize, max_entries: usize, max_per_scope: usize) -> Self {
        Self {
            dim,
            words: dim.div_ceil(64),
            max_entries: max_entries.max(1),
            max_per_scope: max_per_scope.max(1),
            state: RwLock::new(State::default()),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.state.read().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an entry. An entry with the same exact key in the scope is replaced; when the
    /// scope or the whole index is full, expired entries go first, then the oldest.
    pub fn insert(&self, scope: Digest, embedding: &[f32], entry: SemanticEntry, now_ms: u64) -> bool {
        if embedding.len() != self.dim || embedding.iter().any(|x| !x.is_finite()) {
            return false;
        }
        let (dim, words) = (self.dim, self.words);
        let mut state = self.state.write();
        let state = &mut *state;
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let index = state.scopes.entry(scope).or_default();
        if let Some(i) = index.entries.iter().position(|e| e.exact_key == entry.exact_key) {
            index.remove(i, dim, words);
            state.total -= 1;
        }
        if index.len() >= self.max_per_scope {
            state.total -= evict(index, dim, words, now_ms, index.len() + 1 - self.max_per_scope);
        }
        index.reserve_one(dim, words);
        index.entries.push(Arc::new(entry));
        index.vectors.extend_from_slice(embedding);
        push_sign_bits(&mut index.bits, embedding, words);
        index.sequence.push(sequence);
        state.total += 1;
        if state.total > self.max_entries {
            self.shrink(state, now_ms);
        }
        true
    }

    /// Removes expired entries everywhere, then the oldest tenth of all entries until the
    /// index is under its limit. Runs only when an insert overflows the index, so its
    /// O(n log n) cost is spread over many inserts.
    fn shrink(&self, state: &mut State, now_ms: u64) {
        let (dim, words) = (self.dim, self.words);
        for index in state.scopes.values_mut() {
            state.total -= evict_expired(index, dim, words, now_ms);
        }
        if state.total > self.max_entries {
            let target = self.max_entries - self.max_entries / 10;
            let mut sequences: Vec<u64> = state.scopes.values().flat_map(|s| s.sequence.iter().copied()).collect();
            let remove = state.total.saturating_sub(target);
            if remove > 0 && remove <= sequences.len() {
                let (_, cutoff, _) = sequences.select_nth_unstable(remove - 1);
                let cutoff = *cutoff;
                for index in state.scopes.values_mut() {
                    let mut i = 0;
                    while i < index.len() {
                        if index.sequence[i] <= cutoff {
                            index.remove(i, dim, words);
                            state.total -= 1;
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
        state.scopes.retain(|_, index| index.len() > 0);
    }

    /// Removes every expired entry; returns how many went.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let (dim, words) = (self.dim, self.words);
        let mut state = self.state.write();
        let state = &mut *state;
        let mut removed = 0;
        for index in state.scopes.values_mut() {
            removed += evict_expired(index, dim, words, now_ms);
        }
        state.total -= removed;
        state.scopes.retain(|_, index| index.len() > 0);
        removed
    }

    /// The live entry of `scope` nearest to `query`, if its cosine is at least `min_cosine`.
    pub fn nearest(&self, scope: &Digest, query: &[f32], min_cosine: f32, now_ms: u64) -> Option<Neighbour> {
        if query.len() != self.dim {
            return None;
        }
        let state = self.state.read();
        let index = state.scopes.get(scope)?;
        let dim = self.dim;
        let live = |i: usize| index.entries[i].expires_at_ms > now_ms;
        let mut best: Option<(usize, f32)> = None;
        let mut consider = |i: usize| {
            if !live(i) {
                return;
            }
            let cosine = dot(query, &index.vectors[i * dim..(i + 1) * dim]);
            if cosine >= min_cosine && best.is_none_or(|(_, b)| cosine > b) {
                best = Some((i, cosine));
            }
        };
        if index.len() <= EXACT_SCAN_MAX {
            (0..index.len()).for_each(&mut consider);
        } else {
            for i in hamming_candidates(&index.bits, &sign_bits(query, self.words), self.words, RESCORE) {
                consider(i);
            }
        }
        let (i, cosine) = best?;
        Some(Neighbour {
            entry: index.entries[i].clone(),
            cosine,
            embedding: index.vectors[i * dim..(i + 1) * dim].to_vec(),
        })
    }

    /// The exact nearest neighbour by full scan, whatever the scope's size (for measuring the
    /// prefilter's recall).
    pub fn nearest_exact(&self, scope: &Digest, query: &[f32]) -> Option<(Digest, f32)> {
        let state = self.state.read();
        let index = state.scopes.get(scope)?;
        let dim = self.dim;
        (0..index.len())
            .map(|i| (i, dot(query, &index.vectors[i * dim..(i + 1) * dim])))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, c)| (index.entries[i].exact_key, c))
    }

    /// Bytes held by the index itself (vectors, bits, bookkeeping), not by the answers.
    pub fn index_bytes(&self) -> usize {
        let state = self.state.read();
        state
            .scopes
            .values()
            .map(|s| {
                s.vectors.capacity() * 4
                    + s.bits.capacity() * 8
                    + s.sequence.capacity() * 8
                    + s.entries.capacity() * std::mem::size_of::<Arc<SemanticEntry>>()
                    + 32
                    + 64
            })
            .sum()
    }
}

fn evict_expired(index: &mut ScopeIndex, dim: usize, words: usize, now_ms: u64) -> usize {
    let mut removed = 0;
    let mut i = 0;
    while i < index.len() {
        if index.entries[i].expires_at_ms <= now_ms {
            index.remove(i, dim, words);
            removed += 1;
        } else {
            i += 1;
        }
    }
    removed
}

/// Frees at least `needed` slots in one scope: expired entries, then the oldest.
fn evict(index: &mut ScopeIndex, dim: usize, words: usize, now_ms: u64, needed: usize) -> usize {
    let mut removed = evict_expired(index, dim, words, now_ms);
    while removed < needed && index.len() > 0 {
        let oldest = (0..index.len()).min_by_key(|&i| index.sequence[i]).unwrap_or(0);
        index.remove(oldest, dim, words);
        removed += 1;
    }
    removed
}

fn sign_bits(vector: &[f32], words: usize) -> Vec<u64> {
    let mut bits = Vec::with_capacity(words);
    push_sign_bits(&mut bits, vector, words);
    bits
}

fn push_sign_bits(out: &mut Vec<u64>, vector: &[f32], words: usize) {
    for w in 0..words {
        let mut word = 0u64;
        for (b, x) in vector.iter().skip(w * 64).take(64).enumerate() {
            if *x > 0.0 {
                word |= 1 << b;
            }
        }
        out.push(word);
    }
}

/// Indexes of the `keep` entries with the smallest Hamming distance to `query` (ties at the
/// cut-off included). One pass computes every distance (2 bytes per entry, in a buffer kept
/// per thread) and their histogram; the cut-off comes from the histogram, and a pass over
/// the distances selects.
fn hamming_candidates(bits: &[u64], query: &[u64], words: usize, keep: usize) -> Vec<usize> {
    thread_local! {
        static DISTANCES: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let n = bits.len() / words.max(1);
    DISTANCES.with(|cell| {
        let mut distances = cell.borrow_mut();
        distances.clear();
        distances.resize(n, 0);
        let mut histogram = vec![0usize; words * 64 + 1];
        hamming_all(bits, query, words, &mut distances, &mut histogram);
        let mut cutoff = 0u16;
        let mut count = 0;
        for (distance, c) in histogram.iter().enumerate() {
            count += c;
            cutoff = u16::try_from(distance).unwrap_or(u16::MAX);
            if count >= keep {
                break;
            }
        }
        distances.iter().enumerate().filter(|(_, &d)| d <= cutoff).map(|(i, _)| i).collect()
    })
}

/// Distances from `query` to every entry, with the hardware `popcnt` when the CPU has it
/// (without `-C target-cpu`, `count_ones` compiles to a bit-twiddling sequence).
fn hamming_all(bits: &[u64], query: &[u64], words: usize, distances: &mut [u16], histogram: &mut [usize]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports popcnt (checked just above).
            unsafe { hamming_all_popcnt(bits, query, words, distances, histogram) };
            return;
        }
    }
    hamming_all_portable(bits, query, words, distances, histogram);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn hamming_all_popcnt(bits: &[u64], query: &[u64], words: usize, distances: &mut [u16], histogram: &mut [usize]) {
    hamming_all_portable(bits, query, words, distances, histogram);
}

#[inline(always)]
fn hamming_all_portable(bits: &[u64], query: &[u64], words: usize, distances: &mut [u16], histogram: &mut [usize]) {
    for (entry, distance) in bits.chunks_exact(words).zip(distances.iter_mut()) {
        let d: u32 = entry.iter().zip(query).map(|(x, y)| (x ^ y).count_ones()).sum();
        *distance = d as u16;
        histogram[d as usize] += 1;
    }
}

/// Dot product: AVX2+FMA when the CPU has them, else eight independent accumulators, which
/// compile to packed SSE.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks_a = a.chunks_exact(16);
    let chunks_b = b.chunks_exact(16);
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn unit(rng: &mut rand::rngs::StdRng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        normalise(v)
    }

    fn normalise(v: Vec<f32>) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    fn entry(n: u8, expires_at_ms: u64) -> SemanticEntry {
        SemanticEntry {
            exact_key: [n; 32],
            query: format!("q{n}"),
            answer: Arc::new(CachedAnswer { model: "m".into(), json: Some("{}".into()), chunks: None, usage_chunk: None }),
            expires_at_ms,
        }
    }

    #[test]
    fn finds_the_nearest_in_its_own_scope_only() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let index = SemanticIndex::new(16, 100, 100);
        let (a, b) = (unit(&mut rng, 16), unit(&mut rng, 16));
        assert!(index.insert([1; 32], &a, entry(1, u64::MAX), 0));
        assert!(index.insert([2; 32], &b, entry(2, u64::MAX), 0));
        let hit = index.nearest(&[1; 32], &a, 0.9, 0).expect("same vector, same scope");
        assert_eq!(hit.entry.query, "q1");
        assert!((hit.cosine - 1.0).abs() < 1e-5);
        // Scope 2 holds only b: a query equal to a finds nothing above 0.9 there.
        assert!(index.nearest(&[2; 32], &a, 0.9, 0).is_none());
        assert!(index.nearest(&[3; 32], &a, -1.0, 0).is_none());
    }

    #[test]
    fn expired_entries_are_never_returned_and_purged() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let index = SemanticIndex::new(16, 100, 100);
        let a = unit(&mut rng, 16);
        index.insert([1; 32], &a, entry(1, 1_000), 0);
        assert!(index.nearest(&[1; 32], &a, 0.5, 999).is_some());
        assert!(index.nearest(&[1; 32], &a, 0.5, 1_000).is_none());
        assert_eq!(index.purge_expired(1_000), 1);
        assert!(index.is_empty());
    }

    #[test]
    fn full_scopes_and_indexes_evict_the_oldest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let index = SemanticIndex::new(8, 10, 3);
        let vectors: Vec<Vec<f32>> = (0..4).map(|_| unit(&mut rng, 8)).collect();
        for (n, v) in vectors.iter().enumerate() {
            index.insert([0; 32], v, entry(n as u8, u64::MAX), 0);
        }
        assert_eq!(index.len(), 3);
        let first = index.nearest(&[0; 32], &vectors[0], 0.999, 0);
        assert!(first.is_none(), "the oldest entry was evicted");
        assert!(index.nearest(&[0; 32], &vectors[3], 0.999, 0).is_some());
        for n in 0..20u8 {
            index.insert([n; 32], &unit(&mut rng, 8), entry(100 + n, u64::MAX), 0);
        }
        assert!(index.len() <= 10);
    }

    #[test]
    fn same_key_replaces_its_entry() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let index = SemanticIndex::new(8, 10, 10);
        let v = unit(&mut rng, 8);
        index.insert([0; 32], &v, entry(1, u64::MAX), 0);
        index.insert([0; 32], &v, entry(1, u64::MAX), 0);
        assert_eq!(index.len(), 1);
    }

    /// Large scopes go through the Hamming prefilter: a near-copy of a stored vector must
    /// still be found, as the exact scan finds it.
    #[test]
    fn prefilter_finds_near_duplicates_in_a_large_scope() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let dim = 384;
        let index = SemanticIndex::new(dim, 20_000, 20_000);
        let mut stored = Vec::new();
        for n in 0..(EXACT_SCAN_MAX * 3) {
            let v = unit(&mut rng, dim);
            let mut e = entry(0, u64::MAX);
            e.exact_key[..8].copy_from_slice(&(n as u64).to_le_bytes());
            index.insert([9; 32], &v, e, 0);
            stored.push(v);
        }
        let mut found = 0;
        for target in stored.iter().step_by(97) {
            // Cosine ~0.9 to its target.
            let noise = unit(&mut rng, dim);
            let query = normalise(target.iter().zip(&noise).map(|(t, z)| t + 0.48 * z).collect());
            let exact = index.nearest_exact(&[9; 32], &query).expect("non-empty");
            let approximate = index.nearest(&[9; 32], &query, -1.0, 0).expect("non-empty");
            if approximate.entry.exact_key == exact.0 {
                found += 1;
            }
        }
        let queries = stored.iter().step_by(97).count();
        assert_eq!(found, queries, "prefilter must keep the true neighbour at cosine ~0.9");
    }

    #[test]
    fn rejects_bad_vectors() {
        let index = SemanticIndex::new(4, 10, 10);
        assert!(!index.insert([0; 32], &[1.0, 0.0], entry(0, u64::MAX), 0));
        assert!(!index.insert([0; 32], &[f32::NAN, 0.0, 0.0, 0.0], entry(0, u64::MAX), 0));
        assert!(index.nearest(&[0; 32], &[1.0], 0.0, 0).is_none());
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..13).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..13).map(|i| 1.0 - i as f32 * 0.1).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }
}
