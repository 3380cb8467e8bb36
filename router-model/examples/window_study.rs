//! How much of a prompt does routing need? Embeds real prompts with the model's full window
//! (512 tokens) and with shorter windows, and reports how close the truncated embeddings stay
//! (cosine to the full one) and what each window costs.
//!
//!     cargo run --release -p router-model --example window_study [-- DATA_DIR]
//!
//! DATA_DIR defaults to ../shared/data beside the repository (arena-hard-v1 questions and
//! RouterBench MBPP prompts).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use router_model::{cosine, BertEmbedder, Embedder, EmbedderOptions, ModelSource};

// WINDOWS=64,128 limits the windows studied.

fn prompts(data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let arena = data.join("arena-hard-v1/arena-bench-v1/question.jsonl");
    let text =
        std::fs::read_to_string(&arena).unwrap_or_else(|e| panic!("{}: {e}", arena.display()));
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("jsonl");
        if let Some(s) = v["turns"][0].as_str() {
            out.push(s.to_string());
        }
    }
    out
}

fn main() {
    router_model::configure_cpu_threads();
    let data = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            router_model::default_model_dir()
                .ancestors()
                .nth(3)
                .map(|repo| repo.join("../shared/data"))
                .expect("repo root")
        });
    let prompts = prompts(&data);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let load = |max_tokens| {
        BertEmbedder::load(
            &ModelSource::default_dir(),
            &EmbedderOptions {
                max_tokens,
                ..EmbedderOptions::default()
            },
        )
        .expect("load")
    };
    let full = load(512);
    let lengths: Vec<usize> = refs
        .iter()
        .map(|p| full.tokenize(p).expect("tok").len())
        .collect();
    let mut sorted = lengths.clone();
    sorted.sort();
    println!(
        "{} arena-hard prompts; tokens p50 {} p90 {} max {}",
        refs.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 9 / 10],
        sorted[sorted.len() - 1]
    );
    let reference: Vec<Vec<f32>> = refs
        .chunks(8)
        .flat_map(|c| full.embed_batch(c).expect("embed"))
        .collect();
    let stats = |got: &[Vec<f32>]| {
        let mut cos: Vec<f32> = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| cosine(a, b))
            .collect();
        cos.sort_by(|a, b| a.total_cmp(b));
        (
            cos.iter().sum::<f32>() / cos.len() as f32,
            cos[cos.len() / 10],
            cos[0],
        )
    };
    let windows: Vec<usize> = match std::env::var("WINDOWS") {
        Ok(list) => list
            .split(',')
            .map(|w| w.trim().parse().expect("window"))
            .collect(),
        Err(_) => vec![32, 64, 96, 128, 192, 256, 512],
    };

    // Head + tail: keep the first and last halves of the window. Long prompts often put the
    // actual request after the material it is about.
    println!("| window | head+tail: mean cos vs 512 | p10 cos | min cos |");
    println!("|---|---|---|---|");
    let full_tokens: Vec<_> = refs
        .iter()
        .map(|p| full.tokenize(p).expect("tok"))
        .collect();
    for &window in windows.iter().filter(|w| **w < 512) {
        let cut: Vec<router_model::Tokens> = full_tokens
            .iter()
            .map(|t| {
                let ids = t.ids();
                if ids.len() <= window {
                    return t.clone();
                }
                let head = (window - 2) / 2;
                let tail = window - 2 - head;
                let mut out = vec![ids[0]];
                out.extend_from_slice(&ids[1..1 + head]);
                out.extend_from_slice(&ids[ids.len() - 1 - tail..]);
                router_model::Tokens::from_ids(out)
            })
            .collect();
        let got: Vec<Vec<f32>> = cut
            .chunks(8)
            .flat_map(|c| {
                full.embed_tokens(&c.iter().collect::<Vec<_>>())
                    .expect("embed")
            })
            .collect();
        let (mean, p10, min) = stats(&got);
        println!("| {window} | {mean:.4} | {p10:.4} | {min:.4} |");
    }
    println!();

    println!("| window | prompts truncated | mean cos vs 512 | p10 cos | min cos | ms/prompt (batch 8) |");
    println!("|---|---|---|---|---|---|");
    for window in windows {
        let e = load(window);
        let t = Instant::now();
        let got: Vec<Vec<f32>> = refs
            .chunks(8)
            .flat_map(|c| e.embed_batch(c).expect("embed"))
            .collect();
        let ms = t.elapsed().as_secs_f64() * 1000.0 / refs.len() as f64;
        let (mean, p10, min) = stats(&got);
        let truncated = lengths.iter().filter(|&&l| l > window).count();
        println!(
            "| {window} | {:.0}% | {mean:.4} | {p10:.4} | {min:.4} | {ms:.1} |",
            100.0 * truncated as f64 / refs.len() as f64,
        );
    }
}
