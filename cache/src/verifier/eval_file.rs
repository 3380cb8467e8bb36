//! `switchyard eval cache`: score a labelled pairs file with plain cosine and the verifier.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use router_model::{BertEmbedder, Embedder};
use serde::Deserialize;

use super::eval::{pair_scores, pr_at, pr_curve, pr_svg, thresholds, EvalPair, PrPoint};
use super::{Verifier, VerifierError};

/// What to evaluate and where to write it.
#[derive(Debug, Clone, Default)]
pub struct EvalCacheOptions {
    /// JSONL of `{"text_a", "text_b", "label"}` (label 1 = same question).
    pub pairs: PathBuf,
    /// Per-pair `{"i": line_index, "sim": score}` lines are written here.
    pub output: Option<PathBuf>,
    /// Precision–recall SVG (cosine and, when enabled, the verifier).
    pub plot: Option<PathBuf>,
    /// Verifier checkpoint; `None` scores with plain cosine only.
    pub verifier_dir: Option<PathBuf>,
    /// Embedder model directory; `None` uses the default one.
    pub embedder_dir: Option<PathBuf>,
    /// Read at most this many pairs.
    pub limit: Option<usize>,
}

/// Results of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalCacheReport {
    pub pairs: usize,
    pub positives: usize,
    /// `"verifier"` or `"cosine"`: what `sim` and `curve` are.
    pub score_kind: &'static str,
    pub curve: Vec<PrPoint>,
    /// Plain cosine on the same pairs, always computed (free beside the embeddings).
    pub cosine_curve: Vec<PrPoint>,
    /// The verifier at its shipped threshold.
    pub operating_point: Option<PrPoint>,
}

#[derive(Deserialize)]
struct Line {
    text_a: String,
    text_b: String,
    label: serde_json::Value,
}

fn data_err(path: &Path, reason: impl Into<String>) -> VerifierError {
    VerifierError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn label_of(v: &serde_json::Value) -> Option<bool> {
    match v {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_f64().map(|x| x >= 0.5),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().map(|x| x >= 0.5),
        _ => None,
    }
}

/// Embeds every pair, scores it, writes `output`/`plot` when asked, returns the curves.
pub fn eval_cache(options: &EvalCacheOptions) -> Result<EvalCacheReport, VerifierError> {
    let path = &options.pairs;
    let file = std::fs::File::open(path).map_err(|source| VerifierError::Io {
        path: path.clone(),
        source,
    })?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if options.limit.is_some_and(|n| lines.len() >= n) {
            break;
        }
        let line = line.map_err(|source| VerifierError::Io {
            path: path.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&line)
            .map_err(|e| data_err(path, format!("line {}: {e}", i + 1)))?;
        let label = label_of(&parsed.label).ok_or_else(|| {
            data_err(path, format!("line {}: label must be 0/1 or a bool", i + 1))
        })?;
        lines.push((i, parsed, label));
    }
    if lines.is_empty() {
        return Err(data_err(path, "no pairs"));
    }
    let embedder = match &options.embedder_dir {
        Some(dir) => BertEmbedder::from_dir(dir),
        None => BertEmbedder::load_default(),
    }
    .map_err(VerifierError::Embedder)?;
    let verifier = options
        .verifier_dir
        .as_deref()
        .map(Verifier::load)
        .transpose()?;

    let mut embeddings = Vec::with_capacity(lines.len());
    // Drawn on stderr only when it is a terminal.
    let bar = indicatif::ProgressBar::new(lines.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("embedding pairs {bar:30} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for chunk in lines.chunks(32) {
        bar.inc(chunk.len() as u64);
        let texts: Vec<&str> = chunk
            .iter()
            .flat_map(|(_, l, _)| [l.text_a.as_str(), l.text_b.as_str()])
            .map(|t| if t.trim().is_empty() { "?" } else { t })
            .collect();
        let mut vs = embedder
            .embed_batch(&texts)
            .map_err(VerifierError::Embedder)?
            .into_iter();
        while let (Some(a), Some(b)) = (vs.next(), vs.next()) {
            embeddings.push((a, b));
        }
    }
    bar.finish_and_clear();
    let pairs: Vec<EvalPair<'_>> = lines
        .iter()
        .zip(&embeddings)
        .map(|((_, l, _), (a, b))| EvalPair {
            text_a: &l.text_a,
            text_b: &l.text_b,
            emb_a: a,
            emb_b: b,
        })
        .collect();
    let labels: Vec<bool> = lines.iter().map(|(_, _, l)| *l).collect();
    let cos = pair_scores(&pairs, None);
    let scores = match &verifier {
        Some(v) => pair_scores(&pairs, Some(v)),
        None => cos.clone(),
    };
    if let Some(out) = &options.output {
        let io = |source| VerifierError::Io {
            path: out.clone(),
            source,
        };
        let mut w = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
        for ((i, _, _), s) in lines.iter().zip(&scores) {
            writeln!(w, "{}", serde_json::json!({"i": i, "sim": s})).map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    let grid = thresholds(0.0, 1.0, 100);
    let curve = pr_curve(&scores, &labels, &grid);
    let cosine_curve = pr_curve(&cos, &labels, &grid);
    let operating_point = verifier
        .as_ref()
        .map(|v| pr_at(&scores, &labels, v.threshold()));
    let score_kind = if verifier.is_some() {
        "verifier"
    } else {
        "cosine"
    };
    if let Some(plot) = &options.plot {
        let mut curves: Vec<(&str, &[PrPoint])> = vec![("plain cosine", &cosine_curve)];
        if verifier.is_some() {
            curves.push(("verifier", &curve));
        }
        let svg = pr_svg(
            &format!("{} pairs: precision vs recall", lines.len()),
            &curves,
        )
        .map_err(|e| data_err(plot, e))?;
        std::fs::write(plot, svg).map_err(|source| VerifierError::Io {
            path: plot.clone(),
            source,
        })?;
    }
    Ok(EvalCacheReport {
        pairs: lines.len(),
        positives: labels.iter().filter(|&&l| l).count(),
        score_kind,
        curve,
        cosine_curve,
        operating_point,
    })
}
