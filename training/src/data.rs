//! Dataset importers: public routing datasets → full-information rows.
//!
//! A [`Row`] is one prompt with the outcome of every model the dataset ran on it (quality in
//! 0..1, missing allowed; cost and output length where the dataset has them). Importers keep
//! each dataset's own train/test split; datasets without one are split by a hash of the
//! prompt, so the split never changes between runs. [`reconcile_splits`] then makes sure no
//! question sits on the training side of one dataset and the test side of another (RouterDC's
//! ARC-Challenge and MBPP rows are RouterBench's questions, split differently).
//!
//! Held-out hygiene: GSM8K-test, MMLU and MT-Bench questions are never imported (the router is
//! scored on them independently); files named after them are refused.

use router_model::canonical_model_id;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Share of a dataset without its own split that goes to the test side.
pub const HASH_TEST_SHARE: f64 = 0.3;

/// Which importer reads a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// RouterBench 0-shot CSVs (`*_train.csv` / `*_test.csv`), 11 models, 0/1 correctness.
    Routerbench,
    /// LLMRouter's `train.json` / `test.json`, 9 open models, score 0..1.
    Llmrouter,
    /// RouterDC's `*.json`, 7 open 7-8B models, score 0..1.
    Routerdc,
    /// Early Arena-Hard: GPT-4 judge scores 1–10 for 15 models.
    ArenaHard,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Routerbench,
        DatasetKind::Llmrouter,
        DatasetKind::Routerdc,
        DatasetKind::ArenaHard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Routerbench => "routerbench",
            DatasetKind::Llmrouter => "llmrouter",
            DatasetKind::Routerdc => "routerdc",
            DatasetKind::ArenaHard => "arena-hard",
        }
    }

    /// Which dataset's split wins when a question appears in several (lower wins): the
    /// RouterBench test split is the one we report APGR on, so it is never touched.
    fn split_priority(self) -> u8 {
        match self {
            DatasetKind::Routerbench => 0,
            DatasetKind::Llmrouter => 1,
            DatasetKind::Routerdc => 2,
            DatasetKind::ArenaHard => 3,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown dataset kind `{s}` (routerbench, arena-hard, llmrouter, routerdc)"
                ))
            })
    }
}

/// `KIND:PATH`, as given to `switchyard train --dataset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    pub path: PathBuf,
}

impl FromStr for DatasetSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, path) = s.split_once(':').ok_or_else(|| {
            Error::InvalidInput(format!("`{s}`: a dataset is KIND:PATH, e.g. routerbench:../shared/data/routerbench-subset"))
        })?;
        Ok(Self {
            kind: kind.parse()?,
            path: PathBuf::from(path),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// What one model did on one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// 0..1 (correctness, fraction of tests passed, or a rescaled judge score); `None` when
    /// the dataset has the model but no usable score for this prompt.
    pub quality: Option<f32>,
    /// USD for this prompt, when the dataset records it.
    pub cost_usd: Option<f64>,
    /// Output tokens (estimated from the answer's length at ~4 characters a token).
    pub output_tokens: Option<f32>,
}

/// One prompt with every model's outcome on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The text the router sees (RouterBench's few-shot preamble removed).
    pub prompt: String,
    pub kind: DatasetKind,
    /// Task within the dataset, e.g. `arc-challenge`, `mbpp`, `gsm8k-train`.
    pub task: String,
    pub split: Split,
    /// Canonical model id → outcome.
    pub outcomes: BTreeMap<String, Outcome>,
}

impl Row {
    /// The prompt's mean quality over the models the dataset scored it on: the target of the
    /// auxiliary difficulty head.
    pub fn mean_quality(&self) -> Option<f32> {
        let scores: Vec<f32> = self.outcomes.values().filter_map(|o| o.quality).collect();
        (!scores.is_empty()).then(|| scores.iter().sum::<f32>() / scores.len() as f32)
    }

    pub fn quality(&self, model: &str) -> Option<f32> {
        self.outcomes.get(model).and_then(|o| o.quality)
    }

    /// Identity of the question across datasets (see [`question_key`]).
    pub fn key(&self) -> String {
        question_key(&self.prompt)
    }
}

/// Rows of one dataset, plus what it says about its models.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub path: PathBuf,
    pub rows: Vec<Row>,
    /// Canonical ids of the models the dataset scores.
    pub models: BTreeSet<String>,
    /// USD per million (input, output) tokens, where the dataset publishes prices.
    pub prices: BTreeMap<String, (f64, f64)>,
    /// Files that were not imported, with why (held-out filter or another shape).
    pub skipped: Vec<String>,
}

impl Dataset {
    pub fn count(&self, split: Split) -> usize {
        self.rows.iter().filter(|r| r.split == split).count()
    }
}

/// Imports one dataset.
pub fn load(spec: &DatasetSpec) -> Result<Dataset> {
    if !spec.path.exists() {
        return Err(Error::data(
            &spec.path,
            "not found (the shared datasets live in ../shared/data beside the checkout)",
        ));
    }
    let mut dataset = match spec.kind {
        DatasetKind::Routerbench => load_routerbench(&spec.path)?,
        DatasetKind::ArenaHard => load_arena_hard(&spec.path)?,
        DatasetKind::Llmrouter => load_llmrouter(&spec.path)?,
        DatasetKind::Routerdc => load_routerdc(&spec.path)?,
    };
    dataset.models = dataset
        .rows
        .iter()
        .flat_map(|r| r.outcomes.keys().cloned())
        .collect();
    if dataset.rows.is_empty() {
        return Err(Error::data(&spec.path, format!("no {} rows found", spec.kind)));
    }
    Ok(dataset)
}

/// Imports several datasets and reconciles their splits.
pub fn load_all(specs: &[DatasetSpec]) -> Result<Vec<Dataset>> {
    let mut datasets = specs.iter().map(load).collect::<Result<Vec<_>>>()?;
    reconcile_splits(&mut datasets);
    Ok(datasets)
}

// ---------------------------------------------------------------------------------------------
// Held-out hygiene

/// Files the router must never train on: GSM8K test, MMLU (every copy in these repositories
/// is drawn from MMLU's test split) and MT-Bench. RouterBench's own `gsm8k` is GSM8K test too.
fn held_out_reason(kind: DatasetKind, file_name: &str) -> Option<&'static str> {
    let name = file_name.to_ascii_lowercase();
    if name.contains("mmlu") {
        return Some("MMLU is held out");
    }
    if name.contains("mt_bench") || name.contains("mt-bench") || name.contains("mtbench") {
        return Some("MT-Bench is held out");
    }
    if name.contains("gsm8k") {
        let is_train_file = kind == DatasetKind::Routerdc
            && (name.contains("gsm8k-train") || name.contains("gsm8k_train"));
        if !is_train_file {
            return Some("GSM8K test is held out");
        }
    }
    None
}

/// Files of `dir` (or `path` itself) with extension `ext`, sorted, minus held-out ones.
fn data_files(kind: DatasetKind, path: &Path, ext: &str, skipped: &mut Vec<String>) -> Result<Vec<PathBuf>> {
    let candidates = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut kept = Vec::new();
    for file in candidates {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match held_out_reason(kind, &name) {
            Some(reason) => skipped.push(format!("{name}: {reason}")),
            None => kept.push(file),
        }
    }
    Ok(kept)
}

/// `foo_train.csv` → (`foo`, Some(Train)); `foo.json` → (`foo`, None).
fn task_and_split(file: &Path) -> (String, Option<Split>) {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for (suffix, split) in [("_train", Split::Train), ("_test", Split::Test)] {
        if let Some(task) = stem.strip_suffix(suffix) {
            return (task.replace('_', "-"), Some(split));
        }
    }
    (stem.replace('_', "-"), None)
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Estimated tokens of a text, at ~4 characters a token (as `RequestFeatures` estimates).
pub fn estimate_tokens(chars: usize) -> f32 {
    chars.div_ceil(4).max(1) as f32
}

// ---------------------------------------------------------------------------------------------
// RouterBench

fn load_routerbench(path: &Path) -> Result<Dataset> {
    let mut skipped = Vec::new();
    let files = data_files(DatasetKind::Routerbench, path, "csv", &mut skipped)?;
    let mut rows = Vec::new();
    for file in files {
        let (_, split) = task_and_split(&file);
        let Some(split) = split else {
            skipped.push(format!("{}: no _train/_test suffix", file.display()));
            continue;
        };
        let csv_err = |e: csv::Error| Error::data(&file, e.to_string());
        let mut reader = csv::Reader::from_path(&file).map_err(csv_err)?;
        let headers = reader.headers().map_err(csv_err)?.clone();
        let column = |name: &str| headers.iter().position(|h| h == name);
        let (Some(prompt_col), Some(eval_col)) = (column("prompt"), column("eval_name")) else {
            skipped.push(format!("{}: not a RouterBench CSV", file.display()));
            continue;
        };
        // Model columns: every header with a `<model>|total_cost` sibling.
        let models: Vec<(String, usize, Option<usize>, Option<usize>)> = headers
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.contains('|') && headers.iter().any(|o| o == format!("{h}|total_cost")))
            .map(|(i, h)| {
                (
                    canonical_model_id(h),
                    i,
                    column(&format!("{h}|total_cost")),
                    column(&format!("{h}|model_response")),
                )
            })
            .collect();
        for record in reader.records() {
            let record = record.map_err(csv_err)?;
            let field = |i: usize| record.get(i).unwrap_or_default().trim();
            let task = field(eval_col).to_owned();
            let prompt = strip_few_shot_preamble(&parse_python_str_list(field(prompt_col)));
            let mut outcomes = BTreeMap::new();
            for (model, score_col, cost_col, response_col) in &models {
                let outcome = Outcome {
                    quality: field(*score_col).parse::<f32>().ok().filter(|q| q.is_finite()),
                    cost_usd: cost_col.and_then(|c| field(c).parse::<f64>().ok()),
                    output_tokens: response_col
                        .map(|c| parse_python_str_list(field(c)))
                        .filter(|r| !r.is_empty())
                        .map(|r| estimate_tokens(r.chars().count())),
                };
                outcomes.insert(model.clone(), outcome);
            }
            rows.push(Row {
                prompt,
                kind: DatasetKind::Routerbench,
                task,
                split,
                outcomes,
            });
        }
    }
    Ok(Dataset {
        kind: DatasetKind::Routerbench,
        path: path.to_path_buf(),
        rows,
        models: BTreeSet::new(),
        prices: BTreeMap::new(),
        skipped,
    })
}

/// RouterBench's ARC-Challenge and Winogrande prompts carry the same few-shot examples in
/// front of every question (~1,650 and ~1,220 characters): they would fill the embedder's
/// token window and make every prompt look alike. Each example ends in `Answer:\n<letter>\n\n`;
/// the question is what follows the last one.
pub fn strip_few_shot_preamble(prompt: &str) -> String {
    let mut cut = None;
    let mut from = 0;
    while let Some(pos) = prompt[from..].find("Answer:\n") {
        let at = from + pos + "Answer:\n".len();
        let rest = &prompt.as_bytes()[at..];
        if rest.len() >= 3 && rest[0].is_ascii_uppercase() && rest[1] == b'\n' && rest[2] == b'\n' {
            cut = Some(at + 3);
        }
        from = at;
    }
    match cut {
        Some(at) if at < prompt.len() => prompt[at..].to_owned(),
        _ => prompt.to_owned(),
    }
}

/// RouterBench stores texts as Python list literals (`['first', 'second']`); returns the
/// strings joined by newlines (an item repeated verbatim is kept once: 14 ARC rows hold the
/// same question twice), or the input itself when it is not such a literal.
///
/// Copied from `gateway::mock::replay::parse_python_str_list` (the gateway depends on this
/// crate, not the other way round); the extra step is the de-duplication.
pub fn parse_python_str_list(literal: &str) -> String {
    let trimmed = literal.trim();
    if !(trimmed.starts_with('[') && trimmed.ends_with(']')) || trimmed.len() < 2 {
        return trimmed.to_owned();
    }
    let mut items: Vec<String> = Vec::new();
    let mut chars = trimmed[1..trimmed.len() - 1].chars();
    while let Some(c) = chars.next() {
        if c != '\'' && c != '"' {
            continue; // separators and whitespace between items
        }
        let quote = c;
        let mut item = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => item.push('\n'),
                    Some('t') => item.push('\t'),
                    Some('r') => item.push('\r'),
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            item.push(ch);
                        }
                    }
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            item.push(ch);
                        }
                    }
                    Some(other) => item.push(other),
                    None => {}
                },
                c if c == quote => break,
                c => item.push(c),
            }
        }
        if items.last() != Some(&item) {
            items.push(item);
        }
    }
    items.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Arena-Hard

/// Long-format scores file inside the arena-hard folder.
const ARENA_SCORES: &str = "arena_bench_v1_scores_long.csv";

fn load_arena_hard(path: &Path) -> Result<Dataset> {
    let file = if path.is_dir() { path.join(ARENA_SCORES) } else { path.to_path_buf() };
    let mut skipped = Vec::new();
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(reason) = held_out_reason(DatasetKind::ArenaHard, &name) {
        return Err(Error::data(&file, reason));
    }
    let csv_err = |e: csv::Error| Error::data(&file, e.to_string());
    let mut reader = csv::Reader::from_path(&file).map_err(csv_err)?;
    let headers = reader.headers().map_err(csv_err)?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::data(&file, format!("no `{name}` column")))
    };
    let (id_col, prompt_col, model_col, score_col, chars_col) = (
        column("question_id")?,
        column("prompt")?,
        column("model")?,
        column("gpt4_score_1to10")?,
        column("answer_chars")?,
    );
    // question_id → row, in first-seen order.
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<String, Row> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let field = |i: usize| record.get(i).unwrap_or_default();
        let id = field(id_col).to_owned();
        let row = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            let prompt = field(prompt_col).trim().to_owned();
            Row {
                split: hash_split(&question_key(&prompt)),
                prompt,
                kind: DatasetKind::ArenaHard,
                task: "arena-hard".into(),
                outcomes: BTreeMap::new(),
            }
        });
        // Judge score 1..10 → 0..1; blank (unparseable judgment) stays missing.
        let quality = field(score_col)
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|s| (1.0..=10.0).contains(s))
            .map(|s| (s - 1.0) / 9.0);
        let output_tokens = field(chars_col)
            .trim()
            .parse::<usize>()
            .ok()
            .map(estimate_tokens);
        row.outcomes.insert(
            canonical_model_id(field(model_col)),
            Outcome {
                quality,
                cost_usd: None,
                output_tokens,
            },
        );
    }
    if order.is_empty() {
        skipped.push(format!("{}: empty", file.display()));
    }
    let rows = order.into_iter().filter_map(|id| by_id.remove(&id)).collect();
    Ok(Dataset {
        kind: DatasetKind::ArenaHard,
        path: path.to_path_buf(),
        rows,
        models: BTreeSet::new(),
        prices: BTreeMap::new(),
        skipped,
    })
}

// ---------------------------------------------------------------------------------------------
// LLMRouter and RouterDC: JSON arrays of {question, scores{model: 0..1}}

#[derive(Deserialize)]
struct ScoredQuestion {
    question: String,
    scores: BTreeMap<String, Option<f64>>,
}

fn scored_rows(file: &Path, kind: DatasetKind, task: &str, split: Option<Split>) -> Result<Vec<Row>> {
    let items: Vec<ScoredQuestion> = serde_json::from_str(&read_to_string(file)?)
        .map_err(|e| Error::data(file, format!("expected [{{question, scores}}]: {e}")))?;
    Ok(items
        .into_iter()
        .map(|item| {
            let prompt = item.question.trim().to_owned();
            let outcomes = item
                .scores
                .into_iter()
                .map(|(model, score)| {
                    let quality = score.filter(|s| s.is_finite()).map(|s| s.clamp(0.0, 1.0) as f32);
                    (canonical_model_id(&model), Outcome { quality, ..Outcome::default() })
                })
                .collect();
            Row {
                split: split.unwrap_or_else(|| hash_split(&question_key(&prompt))),
                prompt,
                kind,
                task: task.to_owned(),
                outcomes,
            }
        })
        .collect())
}

fn load_llmrouter(path: &Path) -> Result<Dataset> {
    let mut skipped = Vec::new();
    let mut rows = Vec::new();
    for file in data_files(DatasetKind::Llmrouter, path, "json", &mut skipped)? {
        let (_, split) = task_and_split(&file);
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if stem == "default_llm" {
            continue; // the price list, read below
        }
        let split = match (split, stem.as_str()) {
            (Some(s), _) => s,
            (None, "train") => Split::Train,
            (None, "test") => Split::Test,
            _ => {
                skipped.push(format!("{}: not train.json/test.json", file.display()));
                continue;
            }
        };
        rows.extend(scored_rows(&file, DatasetKind::Llmrouter, "llmrouter", Some(split))?);
    }
    let mut prices = BTreeMap::new();
    let price_file = path.join("default_llm.json");
    if path.is_dir() && price_file.is_file() {
        let models: BTreeMap<String, Value> = serde_json::from_str(&read_to_string(&price_file)?)
            .map_err(|e| Error::data(&price_file, e.to_string()))?;
        for (model, info) in models {
            if let (Some(input), Some(output)) = (info["input_price"].as_f64(), info["output_price"].as_f64()) {
                prices.insert(canonical_model_id(&model), (input, output));
            }
        }
    }
    Ok(Dataset {
        kind: DatasetKind::Llmrouter,
        path: path.to_path_buf(),
        rows,
        models: BTreeSet::new(),
        prices,
        skipped,
    })
}

fn load_routerdc(path: &Path) -> Result<Dataset> {
    let mut skipped = Vec::new();
    let mut rows = Vec::new();
    for file in data_files(DatasetKind::Routerdc, path, "json", &mut skipped)? {
        let (task, split) = task_and_split(&file);
        let task = task.to_ascii_lowercase();
        rows.extend(scored_rows(&file, DatasetKind::Routerdc, &task, split)?);
    }
    Ok(Dataset {
        kind: DatasetKind::Routerdc,
        path: path.to_path_buf(),
        rows,
        models: BTreeSet::new(),
        prices: BTreeMap::new(),
        skipped,
    })
}

// ---------------------------------------------------------------------------------------------
// Model ids, question identity and splits

/// The question itself, stripped of the wrappers each dataset puts around it (`Question:` …
/// `Answer:`, answer options, `"""` and `assert` lines, the RouterBench instruction line),
/// lower-cased, punctuation and spacing removed. Two rows with the same key ask the same
/// question, whatever dataset they come from.
pub fn question_key(prompt: &str) -> String {
    let mut text = prompt.trim();
    for prefix in ["Question:", "Q:"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest;
        }
    }
    let text = text.split("\nA) ").next().unwrap_or(text);
    let text = text.split("\nAnswer:").next().unwrap_or(text);
    let kept: Vec<&str> = text
        .split('\n')
        .filter(|l| !l.trim_start().starts_with("assert ") && !l.starts_with("Print only"))
        .collect();
    let joined = kept.join("\n").replace("\"\"\"", "");
    let mapped: String = joined
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { ' ' })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A deterministic split for datasets that have none: the same question always lands on the
/// same side, whatever the order or the run.
pub fn hash_split(key: &str) -> Split {
    if unit_hash(key, 0) < HASH_TEST_SHARE {
        Split::Test
    } else {
        Split::Train
    }
}

/// A stable number in [0, 1) from a key and a salt.
pub fn unit_hash(key: &str, salt: u64) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(key.as_bytes());
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// What [`reconcile_splits`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Training rows dropped because the same question is in the dataset's own test split.
    pub dropped_train_duplicates: usize,
    /// Rows whose split was set by a higher-priority dataset holding the same question.
    pub moved_to_test: usize,
    pub moved_to_train: usize,
}

/// Makes every question sit on one side only, across all datasets:
/// 1. within a dataset, a training row whose question is also in its test split is dropped
///    (LLMRouter's test split repeats 119 training questions);
/// 2. across datasets, a question takes the split of the highest-priority dataset that has it
///    (RouterBench, then LLMRouter, RouterDC, Arena-Hard): RouterDC's ARC-Challenge and MBPP
///    questions follow RouterBench's split, so RouterBench's test split stays exactly its own.
pub fn reconcile_splits(datasets: &mut [Dataset]) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    for dataset in datasets.iter_mut() {
        let test_keys: std::collections::HashSet<String> = dataset
            .rows
            .iter()
            .filter(|r| r.split == Split::Test)
            .map(Row::key)
            .collect();
        let before = dataset.rows.len();
        dataset
            .rows
            .retain(|r| r.split == Split::Test || !test_keys.contains(&r.key()));
        report.dropped_train_duplicates += before - dataset.rows.len();
    }
    // key → (priority, split) of the highest-priority holder.
    let mut owner: HashMap<String, (u8, Split)> = HashMap::new();
    for dataset in datasets.iter() {
        let priority = dataset.kind.split_priority();
        for row in &dataset.rows {
            let entry = owner.entry(row.key()).or_insert((priority, row.split));
            if priority < entry.0 {
                *entry = (priority, row.split);
            }
        }
    }
    for dataset in datasets.iter_mut() {
        let priority = dataset.kind.split_priority();
        for row in &mut dataset.rows {
            let Some(&(owner_priority, split)) = owner.get(&row.key()) else { continue };
            if owner_priority < priority && split != row.split {
                match split {
                    Split::Test => report.moved_to_test += 1,
                    Split::Train => report.moved_to_train += 1,
                }
                row.split = split;
            }
        }
    }
    report
}

/// blake3 over the rows a model is trained on (prompt, split, outcomes), in order: tells two
/// training runs' data apart.
pub fn data_hash<'a>(rows: impl IntoIterator<Item = &'a Row>) -> String {
    let mut hasher = blake3::Hasher::new();
    for row in rows {
        hasher.update(row.kind.name().as_bytes());
        hasher.update(&[0]);
        hasher.update(row.prompt.as_bytes());
        hasher.update(&[0]);
        for (model, outcome) in &row.outcomes {
            hasher.update(model.as_bytes());
            hasher.update(&outcome.quality.map_or(-1.0f32, |q| q).to_le_bytes());
        }
        hasher.update(&[1]);
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_list_literals() {
        assert_eq!(parse_python_str_list(r#"['a\'b', "c\nd"]"#), "a'b\nc\nd");
        assert_eq!(parse_python_str_list("['same', 'same']"), "same");
        assert_eq!(parse_python_str_list("plain"), "plain");
        assert_eq!(parse_python_str_list(r"['caf\xe9 \\ ok']"), "café \\ ok");
    }

    #[test]
    fn strips_few_shot_examples() {
        let p = "Q1?\nA) x\nB) y\nAnswer:\nB\n\nQ2?\nA) z\nAnswer:\nA\n\nThe real one?\nA) u\nAnswer:";
        assert_eq!(strip_few_shot_preamble(p), "The real one?\nA) u\nAnswer:");
        assert_eq!(strip_few_shot_preamble("Write a function."), "Write a function.");
    }

    #[test]
    fn question_keys_match_across_wrappers() {
        let routerbench = "Which is an example of condensation?\nA) ice\nB) dew\nPrint only a single choice  from \"A\" or \"B\" without explanation.\nAnswer:";
        let routerdc = "Question:Which is an example of condensation?\nAnswer:";
        assert_eq!(question_key(routerbench), question_key(routerdc));
        let mbpp_dc = "\"\"\"\nWrite a python function to find the volume of a triangular prism.\nassert find_Volume(10,8,6) == 240\n\"\"\"\n";
        assert_eq!(question_key(mbpp_dc), question_key("Write a python function to find the volume of a triangular prism."));
    }

    #[test]
    fn held_out_files_are_refused() {
        assert!(held_out_reason(DatasetKind::Routerdc, "mmlu_train.json").is_some());
        assert!(held_out_reason(DatasetKind::Routerdc, "gsm8k-test.json").is_some());
        assert!(held_out_reason(DatasetKind::Routerdc, "gsm8k-train.json").is_none());
        assert!(held_out_reason(DatasetKind::Routerbench, "gsm8k_train.csv").is_some());
        assert!(held_out_reason(DatasetKind::Routerbench, "mt_bench.csv").is_some());
        assert!(held_out_reason(DatasetKind::Routerbench, "mbpp_test.csv").is_none());
    }

    #[test]
    fn hash_split_is_stable_and_near_its_share() {
        let test = (0..2000).filter(|i| hash_split(&format!("q{i}")) == Split::Test).count();
        assert!((500..700).contains(&test), "{test}");
        assert_eq!(hash_split("same"), hash_split("same"));
    }
}
