//! Trains the semantic-cache verifier on Quora question pairs and writes its checkpoint.
//!
//! ```text
//! cargo run -p cache --release --example train_verifier -- \
//!     [--pairs /work/shared/data/qqp-pairs/pairs.jsonl] [--out models/verifier/default] \
//!     [--token-alignment] [--max-pairs 16000]
//! ```
//!
//! Pairs are split by question (see `cache::verifier::pair_split`): fit 50 %, calibrate 20 %,
//! validate 30 % of question hashes; a pair whose two questions fall in different parts is
//! dropped. The model is fitted on the fit part (pairs the lexical guards do not veto), the
//! threshold is the lowest one reaching 0.95 precision on the calibration part, and the
//! figures reported are on the validation part, beside plain cosine.
//!
//! Features (including the token alignment, which needs BERT token vectors) are cached under
//! `target/verifier-features/` keyed by the data hash, so refits do not re-embed; both texts'
//! pooled embeddings go beside them (`.emb`, f32 little-endian, row after row) for trying
//! models over the embeddings themselves.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // benchmark harness: abort loudly

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use cache::verifier::{
    cosine, feature_names, lexical_veto, normalise_question, pair_features, pair_split, pr_at,
    threshold_for_precision, Logistic, Split, TokenPair, VerifierCheckpoint, BASE_FEATURES,
    FORMAT_VERSION, TOKEN_FEATURES,
};
use router_model::{BertEmbedder, Embedder};
use serde::{Deserialize, Serialize};

const TARGET_PRECISION: f32 = 0.95;
/// Calibration pairs that must be predicted positive for a threshold to count.
const MIN_PREDICTED: usize = 40;
const L2: f64 = 1.0;

#[derive(Deserialize)]
struct Pair {
    text_a: String,
    text_b: String,
    label: u8,
}

#[derive(Serialize, Deserialize, Clone)]
struct Row {
    line: usize,
    split: Split,
    label: bool,
    cos: f32,
    veto: Option<String>,
    /// Base features followed by token features.
    x: Vec<f32>,
}

struct Args {
    pairs: PathBuf,
    out: PathBuf,
    token_alignment: bool,
    max_pairs: usize,
    min_cos: f32,
    target_precision: f32,
    dump_hits: Option<PathBuf>,
}

fn parse_args() -> anyhow_like::Result<Args> {
    let mut args = Args {
        pairs: PathBuf::from("/work/shared/data/qqp-pairs/pairs.jsonl"),
        out: PathBuf::from("models/verifier/default"),
        token_alignment: false,
        max_pairs: 16_000,
        min_cos: 0.0,
        target_precision: TARGET_PRECISION,
        dump_hits: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pairs" => args.pairs = it.next().ok_or("--pairs needs a path")?.into(),
            "--out" => args.out = it.next().ok_or("--out needs a path")?.into(),
            "--token-alignment" => args.token_alignment = true,
            "--max-pairs" => {
                args.max_pairs = it
                    .next()
                    .ok_or("--max-pairs needs a number")?
                    .parse()
                    .map_err(|_| "--max-pairs needs a number")?
            }
            "--dump-hits" => {
                args.dump_hits = Some(it.next().ok_or("--dump-hits needs a path")?.into())
            }
            "--min-cos" => {
                args.min_cos = it
                    .next()
                    .ok_or("--min-cos needs a number")?
                    .parse()
                    .map_err(|_| "--min-cos needs a number")?
            }
            "--target-precision" => {
                args.target_precision = it
                    .next()
                    .ok_or("--target-precision needs a number")?
                    .parse()
                    .map_err(|_| "--target-precision needs a number")?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// Tiny error plumbing for an example binary.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
}

fn load_rows(args: &Args, data_hash: &str) -> anyhow_like::Result<Vec<Row>> {
    let cache_dir = PathBuf::from("target/verifier-features");
    let cache_file = cache_dir.join(format!("{}-{}.jsonl", &data_hash[..16], args.max_pairs));
    if cache_file.is_file() {
        eprintln!("features from {}", cache_file.display());
        let f = std::io::BufReader::new(std::fs::File::open(&cache_file)?);
        let mut rows = Vec::new();
        for line in f.lines() {
            rows.push(serde_json::from_str(&line?)?);
        }
        return Ok(rows);
    }
    let f = std::io::BufReader::new(std::fs::File::open(&args.pairs)?);
    let mut kept: Vec<(usize, Split, Pair)> = Vec::new();
    for (i, line) in f.lines().enumerate() {
        let p: Pair = serde_json::from_str(&line?)?;
        if let Some(s) = pair_split(&p.text_a, &p.text_b) {
            kept.push((i, s, p));
        }
        if kept.len() >= args.max_pairs {
            break;
        }
    }
    eprintln!("{} pairs kept (both questions in one split)", kept.len());
    let embedder = BertEmbedder::load_default()?;
    eprintln!("embedder {}", embedder.id());
    std::fs::create_dir_all(&cache_dir)?;
    let tmp = cache_file.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    // Both texts' pooled embeddings, row after row (f32 little-endian), for models over them.
    let embeddings_tmp = cache_file.with_extension("emb.partial");
    let mut embeddings_out = std::io::BufWriter::new(std::fs::File::create(&embeddings_tmp)?);
    let mut rows = Vec::with_capacity(kept.len());
    let start = Instant::now();
    for (c, chunk) in kept.chunks(32).enumerate() {
        let texts: Vec<&str> = chunk
            .iter()
            .flat_map(|(_, _, p)| [p.text_a.as_str(), p.text_b.as_str()])
            .map(|t| if t.trim().is_empty() { "?" } else { t })
            .collect();
        let states = embedder.embed_with_token_states(&texts)?;
        for (k, (line, split, p)) in chunk.iter().enumerate() {
            let (a, b) = (&states[2 * k], &states[2 * k + 1]);
            let cos = cosine(&a.pooled, &b.pooled);
            for v in a.pooled.iter().chain(&b.pooled) {
                embeddings_out.write_all(&v.to_le_bytes())?;
            }
            let x = pair_features(
                &p.text_a,
                &p.text_b,
                cos,
                true,
                Some(TokenPair {
                    query: &a.tokens,
                    cached: &b.tokens,
                }),
            );
            let row = Row {
                line: *line,
                split: *split,
                label: p.label == 1,
                cos,
                veto: lexical_veto(&p.text_a, &p.text_b).map(str::to_string),
                x,
            };
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
            rows.push(row);
        }
        if c % 20 == 0 {
            let done = rows.len();
            eprintln!(
                "{done}/{} pairs, {:.1} pairs/s",
                kept.len(),
                done as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    out.flush()?;
    drop(out);
    embeddings_out.flush()?;
    drop(embeddings_out);
    std::fs::rename(&embeddings_tmp, cache_file.with_extension("emb"))?;
    std::fs::rename(&tmp, &cache_file)?;
    Ok(rows)
}

fn point_json(p: &cache::verifier::PrPoint) -> serde_json::Value {
    serde_json::json!({
        "threshold": p.threshold, "precision": p.precision, "recall": p.recall, "f1": p.f1,
        "true_pos": p.true_pos, "false_pos": p.false_pos, "false_neg": p.false_neg,
    })
}

fn main() -> anyhow_like::Result<()> {
    let args = parse_args()?;
    let data = std::fs::read(&args.pairs)?;
    let data_hash = blake3::hash(&data).to_hex().to_string();
    let mut rows = load_rows(&args, &data_hash)?;
    // Lexical features and guards are cheap: recompute them from the texts so that changes
    // to them need no re-embedding (the cache keeps cosine and token alignment).
    let texts: Vec<Pair> = std::io::BufReader::new(std::fs::File::open(&args.pairs)?)
        .lines()
        .map(|l| Ok(serde_json::from_str(&l?)?))
        .collect::<anyhow_like::Result<_>>()?;
    for r in &mut rows {
        let p = texts
            .get(r.line)
            .ok_or("feature cache does not match the pairs file")?;
        // The cache's last TOKEN_FEATURES entries are the token alignment.
        let tokens =
            r.x.split_off(r.x.len().saturating_sub(TOKEN_FEATURES.len()));
        r.x = pair_features(&p.text_a, &p.text_b, r.cos, false, None);
        r.x.extend(tokens);
        r.veto = lexical_veto(&p.text_a, &p.text_b).map(str::to_string);
    }
    let width = feature_names(args.token_alignment).len();
    let part = |s: Split| rows.iter().filter(move |r| r.split == s);
    let count = |s: Split| part(s).count();
    eprintln!(
        "fit {} / calibrate {} / validate {} pairs",
        count(Split::Fit),
        count(Split::Calibrate),
        count(Split::Validate)
    );

    // Veto statistics: how many duplicates the guards throw away, how many non-duplicates.
    let mut veto_reasons: HashMap<String, (usize, usize)> = HashMap::new();
    for r in &rows {
        if let Some(v) = &r.veto {
            let e = veto_reasons.entry(v.clone()).or_default();
            if r.label {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    let mut reasons: Vec<_> = veto_reasons.into_iter().collect();
    reasons.sort();
    for (reason, (dup, non)) in &reasons {
        eprintln!("veto {reason:32} duplicates {dup:5}  non-duplicates {non:5}");
    }

    let fit: Vec<&Row> = part(Split::Fit)
        .filter(|r| r.veto.is_none() && r.cos >= args.min_cos)
        .collect();
    let x: Vec<Vec<f32>> = fit.iter().map(|r| r.x[..width].to_vec()).collect();
    let y: Vec<bool> = fit.iter().map(|r| r.label).collect();
    let model = Logistic::fit(&x, &y, L2, 50).ok_or("logistic fit failed")?;
    for (name, w) in feature_names(args.token_alignment)
        .iter()
        .zip(&model.weights)
    {
        eprintln!("  {name:28} {w:+.3}");
    }

    // Exactly what `Verifier::verdict` does, on cached features.
    let score = |r: &Row| -> f32 {
        let p = &texts[r.line];
        let (na, nb) = (normalise_question(&p.text_a), normalise_question(&p.text_b));
        if r.veto.is_some() {
            0.0
        } else if na == nb && !na.is_empty() {
            1.0
        } else if r.cos < args.min_cos {
            0.0
        } else {
            model.predict(&r.x[..width])
        }
    };
    let eval = |s: Split| -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<bool>) {
        let rs: Vec<&Row> = part(s).collect();
        (
            rs.iter().map(|r| score(r)).collect(),
            rs.iter().map(|r| r.cos).collect(),
            // Cosine with the lexical guards only: what the guards alone add.
            rs.iter()
                .map(|r| if r.veto.is_some() { 0.0 } else { r.cos })
                .collect(),
            rs.iter().map(|r| r.label).collect(),
        )
    };
    let (cal_v, cal_c, cal_g, cal_y) = eval(Split::Calibrate);
    let (val_v, val_c, val_g, val_y) = eval(Split::Validate);
    for (name, sc, ys) in [
        ("calibration verifier", &cal_v, &cal_y),
        ("calibration cosine", &cal_c, &cal_y),
        ("calibration guards+cos", &cal_g, &cal_y),
        ("validation verifier", &val_v, &val_y),
        ("validation cosine", &val_c, &val_y),
        ("validation guards+cos", &val_g, &val_y),
    ] {
        let mut order: Vec<usize> = (0..sc.len()).collect();
        order.sort_by(|&a, &b| sc[b].total_cmp(&sc[a]));
        let pos = ys.iter().filter(|&&l| l).count();
        let mut line = format!("{name:24} precision@k:");
        for k in [25usize, 50, 100, 200, 400, 800] {
            let tp = order.iter().take(k).filter(|&&i| ys[i]).count();
            line += &format!(
                "  {k}:{:.3} (R {:.3})",
                tp as f32 / k as f32,
                tp as f32 / pos as f32
            );
        }
        eprintln!("{line}");
    }
    let threshold = threshold_for_precision(&cal_v, &cal_y, args.target_precision, MIN_PREDICTED)
        .ok_or("verifier never reaches the target precision on calibration")?;
    if let Some(path) = &args.dump_hits {
        // Every validation pair served at the operating point, with Quora's label, for a
        // hand audit of what a hit would really serve.
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        for r in part(Split::Validate) {
            let s = score(r);
            if s >= threshold {
                let p = &texts[r.line];
                writeln!(
                    w,
                    "{}",
                    serde_json::json!({"line": r.line, "label": u8::from(r.label), "score": s, "cos": r.cos, "text_a": p.text_a, "text_b": p.text_b})
                )?;
            }
        }
        w.flush()?;
    }
    let cos_threshold =
        threshold_for_precision(&cal_c, &cal_y, args.target_precision, MIN_PREDICTED);
    let guard_threshold =
        threshold_for_precision(&cal_g, &cal_y, args.target_precision, MIN_PREDICTED);
    let v_cal = pr_at(&cal_v, &cal_y, threshold);
    let v_val = pr_at(&val_v, &val_y, threshold);
    println!("verifier   threshold {threshold:.4}  calibration P {:.3} R {:.3} | validation P {:.3} R {:.3} F1 {:.3} (tp {} fp {})",
        v_cal.precision, v_cal.recall, v_val.precision, v_val.recall, v_val.f1, v_val.true_pos, v_val.false_pos);
    let cos_val = cos_threshold.map(|t| pr_at(&val_c, &val_y, t));
    match (cos_threshold, &cos_val) {
        (Some(t), Some(p)) => println!(
            "cosine     threshold {t:.4}  validation P {:.3} R {:.3} F1 {:.3} (tp {} fp {})",
            p.precision, p.recall, p.f1, p.true_pos, p.false_pos
        ),
        _ => println!(
            "cosine     never reaches {} precision on calibration with ≥ {MIN_PREDICTED} hits",
            args.target_precision
        ),
    }
    let guard_val = guard_threshold.map(|t| pr_at(&val_g, &val_y, t));
    if let (Some(t), Some(p)) = (guard_threshold, &guard_val) {
        println!(
            "guards+cos threshold {t:.4}  validation P {:.3} R {:.3} F1 {:.3}",
            p.precision, p.recall, p.f1
        );
    }
    // Plain cosine at the verifier's validation recall, and at its own best F1.
    let mut cos_sorted = val_c.clone();
    cos_sorted.sort_by(|a, b| b.total_cmp(a));
    let positives = val_y.iter().filter(|&&l| l).count();
    let want = (v_val.recall * positives as f32).ceil() as usize;
    let same_recall = cos_sorted
        .iter()
        .map(|&t| pr_at(&val_c, &val_y, t))
        .find(|p| p.true_pos >= want);
    if let Some(p) = &same_recall {
        println!(
            "cosine at the verifier's recall: threshold {:.4} P {:.3} R {:.3} (fp {})",
            p.threshold, p.precision, p.recall, p.false_pos
        );
    }
    let grid: Vec<f32> = (0..=100).map(|i| 0.5 + 0.005 * i as f32).collect();
    let best_cos_f1 = grid
        .iter()
        .map(|&t| pr_at(&val_c, &val_y, t))
        .max_by(|a, b| a.f1.total_cmp(&b.f1));
    if let Some(p) = &best_cos_f1 {
        println!(
            "cosine best F1 on validation: threshold {:.3} P {:.3} R {:.3} F1 {:.3}",
            p.threshold, p.precision, p.recall, p.f1
        );
    }
    for t in [0.90f32, 0.95, 0.97] {
        let p = pr_at(&val_c, &val_y, t);
        println!(
            "cosine {t:.2} on validation: P {:.3} R {:.3}",
            p.precision, p.recall
        );
    }
    for t in [0.5f32, 0.7, 0.8, 0.9, 0.95] {
        let p = pr_at(&val_v, &val_y, t);
        println!(
            "verifier {t:.2} on validation: P {:.3} R {:.3}",
            p.precision, p.recall
        );
    }

    let checkpoint = VerifierCheckpoint {
        format_version: FORMAT_VERSION,
        features: feature_names(args.token_alignment),
        token_alignment: args.token_alignment,
        lexical_veto: true,
        min_cos: args.min_cos,
        model,
        threshold,
        embedder: format!(
            "{}#max_tokens={}",
            router_model::DEFAULT_MODEL_NAME,
            router_model::DEFAULT_MAX_TOKENS
        ),
        training: serde_json::json!({
            "data": args.pairs.display().to_string(),
            "data_blake3": data_hash,
            "source": "Quora Question Pairs via GPTCache's similiar_qqp_full.json (see the data folder's SOURCE.txt)",
            "split": "blake3 of the normalised question text mod 100: 0-49 fit, 50-69 calibrate, 70-99 validate; a pair is kept only when both questions fall in the same part",
            "max_pairs_read": args.max_pairs,
            "pairs": {"fit": count(Split::Fit), "calibrate": count(Split::Calibrate), "validate": count(Split::Validate)},
            "fit_pairs_after_veto": fit.len(),
            "model": "logistic regression, Newton's method, L2 on standardised weights",
            "l2": L2,
            "target_precision": args.target_precision,
            "min_cos": args.min_cos,
            "min_predicted_for_threshold": MIN_PREDICTED,
            "base_features": BASE_FEATURES.len(),
        }),
        metrics: serde_json::json!({
            "calibration": point_json(&v_cal),
            "validation": point_json(&v_val),
            "cosine_at_095_precision_on_calibration": cos_val.as_ref().map(point_json),
            "guards_plus_cosine_at_095_precision_on_calibration": guard_val.as_ref().map(point_json),
            "cosine_at_verifier_recall": same_recall.as_ref().map(point_json),
            "cosine_best_f1": best_cos_f1.as_ref().map(point_json),
            "veto_counts_all_splits": reasons.iter().map(|(r, (d, n))| serde_json::json!({"reason": r, "duplicates": d, "non_duplicates": n})).collect::<Vec<_>>(),
        }),
    };
    checkpoint.write(&args.out)?;
    println!("wrote {}", args.out.join("verifier.json").display());
    Ok(())
}
