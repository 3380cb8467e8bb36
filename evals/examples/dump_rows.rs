//! Writes every row of the shared routing datasets with its family, split and outcomes
//! (`rows.jsonl`) and its MiniLM embedding (`embeddings.f32`, row-major little-endian, one
//! 384-float vector per line of `rows.jsonl`), so that routing ideas can be tried in a few
//! lines of numpy before they are built into the selector (`bench/pair_routing.py` reads it).
//!
//! `cargo run --release -p evals --example dump_rows -- OUT_DIR KIND:PATH...`
//! (embeddings come from and go to the same cache as `switchyard eval lodo`).

use std::io::Write;
use std::path::PathBuf;

use router_model::{BertEmbedder, Embedder, EmbedderOptions, ModelSource};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: dump_rows OUT_DIR KIND:PATH...")?);
    let specs: Vec<training::data::DatasetSpec> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let datasets = training::data::load_all(&specs)?;
    let embedder = BertEmbedder::load(&ModelSource::default_dir(), &EmbedderOptions::default())?;
    let embeddings = training::embed_cache::embed_prompts(&datasets, &training::embed_cache::default_cache_root(), &embedder)?;

    std::fs::create_dir_all(&out)?;
    let mut rows = std::io::BufWriter::new(std::fs::File::create(out.join("rows.jsonl"))?);
    let mut vectors = std::io::BufWriter::new(std::fs::File::create(out.join("embeddings.f32"))?);
    for dataset in &datasets {
        for row in &dataset.rows {
            let outcomes: serde_json::Map<String, serde_json::Value> = row
                .outcomes
                .iter()
                .map(|(model, o)| (model.clone(), serde_json::json!({"quality": o.quality, "cost_usd": o.cost_usd, "output_tokens": o.output_tokens})))
                .collect();
            let line = serde_json::json!({
                "dataset": dataset.kind.name(),
                "task": row.task,
                "family": evals::lodo::family(row),
                "split": row.split,
                "key": row.key(),
                "chars": row.prompt.chars().count(),
                "outcomes": outcomes,
            });
            writeln!(rows, "{line}")?;
            let vector = embeddings.get(&row.prompt).ok_or("a prompt without an embedding")?;
            for x in vector {
                vectors.write_all(&x.to_le_bytes())?;
            }
        }
    }
    rows.flush()?;
    vectors.flush()?;
    eprintln!("dump_rows: {} rows, embedder {} ({} dims) → {}", datasets.iter().map(|d| d.rows.len()).sum::<usize>(), embedder.id(), embedder.dim(), out.display());
    Ok(())
}
