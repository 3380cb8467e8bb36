//! Text → L2-normalised sentence vector.
//!
//! The default model is all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) run with candle on the CPU,
//! pooled exactly like sentence-transformers does it (masked mean over the last hidden state,
//! then L2 normalisation), so vectors match the reference PyTorch model and a selector trained
//! on embeddings made in Python or in Rust is interchangeable.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::bert::{self, Bert};
use crate::error::{Error, Result};

/// Hub id of the default embedder.
pub const DEFAULT_MODEL_NAME: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Default token window. Routing needs the gist of a prompt, not all of it: on the
/// arena-hard prompts (median 57 tokens, p90 205) a 128-token window truncates 22% of them and
/// keeps the mean cosine to the full 512-token embedding at 0.97, at about a third of the cost
/// of a 256-token window for long prompts (router-model/README.md has the measurement).
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Environment variable naming the embedder's model directory (config.json, tokenizer.json,
/// model.safetensors).
pub const EMBEDDER_DIR_ENV: &str = "SWITCHYARD_EMBEDDER_DIR";

/// Also honoured, because `scripts/fetch-model.sh` writes to it.
pub const MODEL_DIR_ENV: &str = "SWITCHYARD_MODEL_DIR";

/// Where `scripts/fetch-model.sh` puts the model, relative to the repository root.
pub const DEFAULT_MODEL_SUBDIR: &str = ".cache/models/all-MiniLM-L6-v2";

const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const FETCH_HINT: &str =
    "run scripts/fetch-model.sh (or point SWITCHYARD_EMBEDDER_DIR at a model directory)";

/// Turns texts into unit vectors.
///
/// Split into [`Embedder::tokenize`] and [`Embedder::embed_tokens`] so that the embedding
/// service can tokenise texts as it takes them off its queue (skipping those whose callers
/// gave up) and batch them by token count.
pub trait Embedder: Send + Sync {
    /// Length of every vector this embedder returns.
    fn dim(&self) -> usize;

    /// Identifies the vector space: two embedders with the same id produce comparable
    /// vectors. Checkpoints record it and refuse to load under another embedder.
    fn id(&self) -> &str;

    /// Tokenises one text (truncating to the embedder's window).
    fn tokenize(&self, text: &str) -> Result<Tokens>;

    /// The part of `text` that can fall inside the embedder's token window (what
    /// [`Self::tokenize`] would look at); callers that copy a text for later tokenising
    /// copy only this.
    fn window_prefix<'a>(&self, text: &'a str) -> &'a str {
        text
    }

    /// Embeds already tokenised texts as one batch; returns one unit vector per input.
    fn embed_tokens(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>>;

    /// Tokenises and embeds in one call.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokens = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tokens> = tokens.iter().collect();
        self.embed_tokens(&refs)
    }

    /// Embeds one text.
    fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut out = self.embed_batch(&[text])?;
        out.pop()
            .ok_or_else(|| Error::InvalidInput("embedder returned no vector".into()))
    }
}

/// Token ids of one text, special tokens included, already truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    ids: Vec<u32>,
}

impl Tokens {
    /// Wraps raw ids (used by test doubles and benches).
    pub fn from_ids(ids: Vec<u32>) -> Self {
        Self { ids }
    }

    /// The ids, `[CLS] … [SEP]` for BERT.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Number of tokens; what the batcher budgets by.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Where the model files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A plain directory with config.json, tokenizer.json and model.safetensors.
    Dir(PathBuf),
    /// A model in a Hugging Face cache (`models--org--name/{refs,snapshots}`), as the Python
    /// `huggingface_hub` lays it out. Resolved without network; with the `hub-download`
    /// feature and without `HF_HUB_OFFLINE`, missing files are downloaded into that cache.
    HfHub {
        /// e.g. `sentence-transformers/all-MiniLM-L6-v2`.
        repo_id: String,
        /// Branch, tag or commit hash, e.g. `main`.
        revision: String,
        /// The hub cache directory; `None` means `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
        /// `~/.cache/huggingface/hub`.
        cache_dir: Option<PathBuf>,
    },
}

impl ModelSource {
    /// The default: [`default_model_dir`].
    pub fn default_dir() -> Self {
        ModelSource::Dir(default_model_dir())
    }

    /// The hub model `repo_id` at `revision`, from the default HF cache.
    pub fn hub(repo_id: impl Into<String>, revision: impl Into<String>) -> Self {
        ModelSource::HfHub {
            repo_id: repo_id.into(),
            revision: revision.into(),
            cache_dir: None,
        }
    }
}

/// Knobs for [`BertEmbedder::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderOptions {
    /// Token window, special tokens included; longer texts are truncated from the right.
    pub max_tokens: usize,
    /// Model name used in [`Embedder::id`]; `None` uses the hub repo id, or
    /// [`DEFAULT_MODEL_NAME`] for a directory.
    pub name: Option<String>,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            max_tokens: DEFAULT_MAX_TOKENS,
            name: None,
        }
    }
}

/// The three files a BERT embedder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
}

impl ModelFiles {
    /// The files inside a plain directory; errors (with a hint to fetch them) if any is
    /// missing.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let files = Self {
            config: dir.join(CONFIG_FILE),
            tokenizer: dir.join(TOKENIZER_FILE),
            weights: dir.join(WEIGHTS_FILE),
        };
        for path in [&files.config, &files.tokenizer, &files.weights] {
            if !path.is_file() {
                return Err(Error::NotFound {
                    what: "embedder model file",
                    path: path.clone(),
                    hint: FETCH_HINT.into(),
                });
            }
        }
        Ok(files)
    }

    /// Resolves `source` to local files.
    pub fn resolve(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Dir(dir) => Self::in_dir(dir),
            ModelSource::HfHub {
                repo_id,
                revision,
                cache_dir,
            } => {
                let cache_dir = cache_dir.clone().unwrap_or_else(hf_cache_dir);
                Ok(Self {
                    config: hub_file(&cache_dir, repo_id, revision, CONFIG_FILE)?,
                    tokenizer: hub_file(&cache_dir, repo_id, revision, TOKENIZER_FILE)?,
                    weights: hub_file(&cache_dir, repo_id, revision, WEIGHTS_FILE)?,
                })
            }
        }
    }
}

/// The model directory used when nothing is configured: `$SWITCHYARD_EMBEDDER_DIR`, else
/// `$SWITCHYARD_MODEL_DIR`, else `<repo root>/.cache/models/all-MiniLM-L6-v2` where the repo
/// root is the nearest ancestor of the working directory holding that model or a `.git`
/// (so tests, benches and binaries find the fetched model from any crate directory), else the
/// working directory itself.
pub fn default_model_dir() -> PathBuf {
    for var in [EMBEDDER_DIR_ENV, MODEL_DIR_ENV] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut git_root = None;
    for dir in cwd.ancestors() {
        let candidate = dir.join(DEFAULT_MODEL_SUBDIR);
        if candidate.join(CONFIG_FILE).is_file() {
            return candidate;
        }
        if git_root.is_none() && dir.join(".git").exists() {
            git_root = Some(dir.to_path_buf());
        }
    }
    git_root.unwrap_or(cwd).join(DEFAULT_MODEL_SUBDIR)
}

/// The Hugging Face hub cache, resolved the way `huggingface_hub` does.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// True when `HF_HUB_OFFLINE` asks for cache-only resolution.
pub fn hf_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One file of a hub repo from the local cache (or, with `hub-download`, from the hub).
fn hub_file(cache_dir: &Path, repo_id: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::new(cache_dir.to_path_buf());
    let repo = hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        return Ok(path);
    }
    // A pinned commit may have a snapshot without a ref pointing at it (that is how the Python
    // client stores `revision=<sha>` downloads); hf-hub only follows refs.
    let snapshot_file = cache_dir
        .join(repo.folder_name())
        .join("snapshots")
        .join(revision)
        .join(file);
    if is_commit_hash(revision) && snapshot_file.is_file() {
        return Ok(snapshot_file);
    }
    download_hub_file(cache, repo, file).map_err(|hint| Error::NotFound {
        what: "hub model file",
        path: cache_dir
            .join(format!("models--{}", repo_id.replace('/', "--")))
            .join("snapshots")
            .join(revision)
            .join(file),
        hint,
    })
}

#[cfg(feature = "hub-download")]
fn download_hub_file(
    cache: hf_hub::Cache,
    repo: hf_hub::Repo,
    file: &str,
) -> std::result::Result<PathBuf, String> {
    if hf_offline() {
        return Err("not in the local HF cache and HF_HUB_OFFLINE is set".into());
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(false)
        .build()
        .map_err(|e| format!("cannot start hub client: {e}"))?;
    api.repo(repo)
        .get(file)
        .map_err(|e| format!("download failed: {e}"))
}

#[cfg(not(feature = "hub-download"))]
fn download_hub_file(
    _cache: hf_hub::Cache,
    _repo: hf_hub::Repo,
    _file: &str,
) -> std::result::Result<PathBuf, String> {
    let why = if hf_offline() {
        "HF_HUB_OFFLINE is set"
    } else {
        "this build has no hub-download feature"
    };
    Err(format!(
        "not in the local HF cache and {why}; populate the cache or use a model directory"
    ))
}

/// all-MiniLM-L6-v2 (or any BERT sentence embedder) on candle, CPU.
pub struct BertEmbedder {
    model: Bert,
    tokenizer: Tokenizer,
    id: String,
    dim: usize,
    max_tokens: usize,
    device: Device,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("id", &self.id)
            .field("dim", &self.dim)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl BertEmbedder {
    /// Loads from [`default_model_dir`] with default options.
    pub fn load_default() -> Result<Self> {
        Self::load(&ModelSource::default_dir(), &EmbedderOptions::default())
    }

    /// Loads from a plain model directory with default options.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load(
            &ModelSource::Dir(dir.as_ref().to_path_buf()),
            &EmbedderOptions::default(),
        )
    }

    /// Resolves `source` and loads the model.
    pub fn load(source: &ModelSource, options: &EmbedderOptions) -> Result<Self> {
        let files = ModelFiles::resolve(source)?;
        let name = match (&options.name, source) {
            (Some(name), _) => name.clone(),
            (None, ModelSource::HfHub { repo_id, .. }) => repo_id.clone(),
            (None, ModelSource::Dir(_)) => DEFAULT_MODEL_NAME.to_string(),
        };
        Self::load_files(&files, &name, options)
    }

    /// Loads from explicit files (`options.name` is ignored in favour of `name`).
    pub fn load_files(files: &ModelFiles, name: &str, options: &EmbedderOptions) -> Result<Self> {
        let max_tokens = options.max_tokens;
        let config_text = std::fs::read_to_string(&files.config)
            .map_err(|e| Error::io(format!("reading {}", files.config.display()), e))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| Error::json(format!("parsing {}", files.config.display()), e))?;
        if max_tokens < 2 || max_tokens > config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "max_tokens {max_tokens} must be in 2..={}",
                config.max_position_embeddings
            )));
        }

        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| Error::Tokenizer(format!("loading {}: {e}", files.tokenizer.display())))?;
        // The shipped tokenizer.json pads every text to 128 and truncates there: padding is
        // done per batch here (to the longest member), and the window is ours to choose.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::Tokenizer(format!("setting truncation: {e}")))?;

        let device = Device::Cpu;
        // SAFETY: the weights file is memory-mapped only while the model is built (candle
        // copies every tensor into its own storage); it must not be modified meanwhile, which
        // holds for a model directory that nothing writes to while the process starts.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, &device)? };
        let model = Bert::load(vb, &config)?;

        Ok(Self {
            model,
            tokenizer,
            id: format!("{name}#max_tokens={max_tokens}"),
            dim: config.hidden_size,
            max_tokens,
            device,
        })
    }

    /// The token window this embedder truncates to.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Runs BERT and pools. Texts are grouped by length so that padding stays a small share
    /// of each forward pass (a 16-token prompt batched with a 128-token one would otherwise
    /// cost as much as a second long prompt); within a group, inputs are right-padded with
    /// id 0 and the mask keeps padding out of both attention and the mean.
    fn forward(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        if batch.iter().any(|t| t.is_empty()) {
            return Err(Error::InvalidInput(
                "cannot embed an empty token list".into(),
            ));
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); batch.len()];
        for group in length_groups(batch) {
            let rows: Vec<&[u32]> = group.iter().map(|&i| batch[i].ids()).collect();
            let (ids, mask) = bert::batch_inputs(&rows, &self.device)?;
            let hidden = self.model.forward(&ids, mask.as_ref())?;
            for (i, vector) in group.into_iter().zip(bert::pool(&hidden, mask.as_ref())?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }
}

/// One text's pooled unit vector and its last-layer token vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStates {
    /// The sentence embedding, exactly what [`Embedder::embed`] returns.
    pub pooled: Vec<f32>,
    /// Last hidden state of every token between `[CLS]` and `[SEP]` (those two are left
    /// out), in text order, each L2-normalised. What mean pooling averages away: which word
    /// sits where, used by the semantic cache's verifier for token alignment.
    pub tokens: Vec<Vec<f32>>,
}

impl BertEmbedder {
    /// Like [`Embedder::embed_batch`], also returning each text's token vectors. Same cost
    /// as embedding (one forward pass per length group) plus copying the hidden states out.
    pub fn embed_with_token_states(&self, texts: &[&str]) -> Result<Vec<TokenStates>> {
        let tokens = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let batch: Vec<&Tokens> = tokens.iter().collect();
        if batch.iter().any(|t| t.is_empty()) {
            return Err(Error::InvalidInput(
                "cannot embed an empty token list".into(),
            ));
        }
        let mut out: Vec<Option<TokenStates>> = vec![None; batch.len()];
        for group in length_groups(&batch) {
            let rows: Vec<&[u32]> = group.iter().map(|&i| batch[i].ids()).collect();
            let (ids, mask) = bert::batch_inputs(&rows, &self.device)?;
            let hidden = self.model.forward(&ids, mask.as_ref())?;
            let pooled = bert::pool(&hidden, mask.as_ref())?;
            let states: Vec<Vec<Vec<f32>>> = hidden.to_vec3()?;
            for ((k, &i), vector) in group.iter().enumerate().zip(pooled) {
                let len = batch[i].len();
                let inner = if len > 2 {
                    &states[k][1..len - 1]
                } else {
                    &states[k][..len]
                };
                let tokens = inner
                    .iter()
                    .map(|v| {
                        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        v.iter().map(|x| x / norm).collect()
                    })
                    .collect();
                out[i] = Some(TokenStates {
                    pooled: vector,
                    tokens,
                });
            }
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| Error::InvalidInput("embedder skipped a text".into())))
            .collect()
    }
}

/// Padded tokens allowed per real token in one forward pass.
const MAX_PADDING_RATIO: f64 = 1.25;

/// Splits a batch into groups of similar length (indices into `batch`, shortest first) such
/// that each group's padded size stays within [`MAX_PADDING_RATIO`] of its real tokens.
fn length_groups(batch: &[&Tokens]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = batch[i].len();
        let fits = groups.last().is_some_and(|g| {
            let padded = len * (g.len() + 1);
            padded as f64 <= MAX_PADDING_RATIO * (real + len) as f64
        });
        match groups.last_mut() {
            Some(group) if fits => {
                group.push(i);
                real += len;
            }
            _ => {
                groups.push(vec![i]);
                real = len;
            }
        }
    }
    groups
}

impl Embedder for BertEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn tokenize(&self, text: &str) -> Result<Tokens> {
        let encoding = self
            .tokenizer
            .encode_fast(window_prefix(text, self.max_tokens), true)
            .map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
        Ok(Tokens::from_ids(encoding.get_ids().to_vec()))
    }

    fn window_prefix<'a>(&self, text: &'a str) -> &'a str {
        window_prefix(text, self.max_tokens)
    }

    fn embed_tokens(&self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        self.forward(batch)
    }
}

/// Upper bound on characters per word piece that we budget for. Real text averages 3–5
/// characters per token; only runs of very long "words" (URLs, base64) come near this.
const MAX_CHARS_PER_TOKEN: usize = 32;

/// The prefix of `text` that can possibly fall inside a `max_tokens` window. The tokenizer
/// encodes the whole text before truncating, so a 1 MB prompt would otherwise cost tens of
/// milliseconds on the caller's (async) thread for tokens that are then thrown away.
fn window_prefix(text: &str, max_tokens: usize) -> &str {
    let budget = max_tokens.saturating_mul(MAX_CHARS_PER_TOKEN);
    if text.len() <= budget {
        return text;
    }
    match text.char_indices().nth(budget) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Cosine similarity of two vectors (plain dot product normalised; inputs need not be unit).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_padding_bounded_and_cover_every_text() {
        let lens = [16usize, 128, 17, 20, 120, 64, 16];
        let tokens: Vec<Tokens> = lens.iter().map(|&n| Tokens::from_ids(vec![1; n])).collect();
        let refs: Vec<&Tokens> = tokens.iter().collect();
        let groups = length_groups(&refs);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        for g in &groups {
            let longest = g.iter().map(|&i| lens[i]).max().unwrap_or(0);
            let real: usize = g.iter().map(|&i| lens[i]).sum();
            assert!(
                (longest * g.len()) as f64 <= MAX_PADDING_RATIO * real as f64,
                "{g:?}"
            );
        }
        assert_eq!(groups, vec![vec![0, 6, 2, 3], vec![5], vec![4, 1]]);
    }

    #[test]
    fn window_prefix_cuts_on_a_char_boundary() {
        let text = "é".repeat(10_000);
        let cut = window_prefix(&text, 4);
        assert_eq!(cut.chars().count(), 4 * MAX_CHARS_PER_TOKEN);
        assert_eq!(window_prefix("short", 4), "short");
    }
}
