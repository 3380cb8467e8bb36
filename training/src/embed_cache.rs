//! Embeddings cached on disk by text hash: the shared datasets hold ~15,000 prompts, a few
//! minutes of MiniLM on two cores, and every training run, LODO fold and test needs them.
//!
//! Layout: `<root>/<blake3(embedder id), 16 hex>/vectors.bin`, an append-only sequence of
//! records `[32-byte blake3(text)][dim × f32 LE]`, plus `embedder.txt` naming the embedder.
//! A torn last record (a run killed mid-write) is ignored on load.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use router_model::Embedder;

use crate::error::{Error, Result};

/// Texts embedded per batch (sorted by length first, so batches pad little).
const BATCH: usize = 32;

/// Environment variable overriding the cache root.
pub const CACHE_DIR_ENV: &str = "SWITCHYARD_EMBEDDING_CACHE";

/// The default cache root: `$SWITCHYARD_EMBEDDING_CACHE`, else `.cache/embeddings` in the
/// current directory (the repository root when run as `switchyard train`).
pub fn default_cache_root() -> PathBuf {
    std::env::var_os(CACHE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache/embeddings"))
}

/// Embeddings of one embedder, loaded from and appended to disk.
pub struct EmbeddingCache {
    file: PathBuf,
    dim: usize,
    vectors: HashMap<[u8; 32], Vec<f32>>,
}

/// Every distinct prompt of `datasets` → its embedding, through the cache in `cache_dir`
/// (what `switchyard train` and `switchyard eval lodo` learn from).
pub fn embed_prompts(datasets: &[crate::Dataset], cache_dir: &Path, embedder: &dyn Embedder) -> Result<HashMap<String, Vec<f32>>> {
    let mut texts: Vec<&str> = datasets.iter().flat_map(|d| d.rows.iter().map(|r| r.prompt.as_str())).collect();
    texts.sort_unstable();
    texts.dedup();
    let mut cache = EmbeddingCache::open(cache_dir, embedder.id(), embedder.dim())?;
    let vectors = cache.embed_all(&texts, embedder)?;
    Ok(texts.iter().map(|t| (*t).to_owned()).zip(vectors).collect())
}

impl EmbeddingCache {
    /// Opens (creating if needed) the cache of the embedder `embedder_id` under `root`.
    pub fn open(root: &Path, embedder_id: &str, dim: usize) -> Result<Self> {
        let id_hash = blake3::hash(embedder_id.as_bytes()).to_hex();
        let dir = root.join(&id_hash.as_str()[..16]);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let _ = std::fs::write(dir.join("embedder.txt"), format!("{embedder_id}\n{dim}\n"));
        let file = dir.join("vectors.bin");
        let mut vectors = HashMap::new();
        if file.is_file() {
            let mut bytes = Vec::new();
            std::fs::File::open(&file)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            let record = 32 + 4 * dim;
            for chunk in bytes.chunks_exact(record) {
                let mut key = [0u8; 32];
                key.copy_from_slice(&chunk[..32]);
                let v = chunk[32..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                vectors.insert(key, v);
            }
        }
        Ok(Self { file, dim, vectors })
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    fn key(text: &str) -> [u8; 32] {
        *blake3::hash(text.as_bytes()).as_bytes()
    }

    /// The cached vector of `text`, if any.
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.vectors.get(&Self::key(text)).map(Vec::as_slice)
    }

    /// Vectors for `texts`, embedding (and caching) the ones not seen before.
    pub fn embed_all(&mut self, texts: &[&str], embedder: &dyn Embedder) -> Result<Vec<Vec<f32>>> {
        let mut missing: Vec<&str> = texts.iter().copied().filter(|t| self.get(t).is_none()).collect();
        missing.sort_by_key(|t| t.len());
        missing.dedup();
        if !missing.is_empty() {
            if embedder.dim() != self.dim {
                return Err(Error::InvalidInput(format!(
                    "embedder is {}-d, cache expects {}-d",
                    embedder.dim(),
                    self.dim
                )));
            }
            let bar = crate::progress::bar(missing.len(), "embedding");
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)
                .map_err(|e| Error::io(format!("opening {}", self.file.display()), e))?;
            for batch in missing.chunks(BATCH) {
                let vectors = embedder.embed_batch(batch)?;
                let mut bytes = Vec::with_capacity(batch.len() * (32 + 4 * self.dim));
                for (text, vector) in batch.iter().zip(vectors) {
                    let key = Self::key(text);
                    bytes.extend_from_slice(&key);
                    for x in &vector {
                        bytes.extend_from_slice(&x.to_le_bytes());
                    }
                    self.vectors.insert(key, vector);
                }
                out.write_all(&bytes)
                    .map_err(|e| Error::io(format!("writing {}", self.file.display()), e))?;
                bar.inc(batch.len() as u64);
            }
            bar.finish_and_clear();
        }
        texts
            .iter()
            .map(|t| {
                self.get(t)
                    .map(<[f32]>::to_vec)
                    .ok_or_else(|| Error::InvalidInput("embedding missing after embedding".into()))
            })
            .collect()
    }
}
