//! `switchyard eval score`: the selector's predictions for a file of prompts, per candidate:
//! quality, cost (through the gateway's own pricing of a prediction) and latency.

use std::io::Write;
use std::path::Path;

use router_model::policy::{self, Candidate, Tradeoff};
use router_model::{Checkpoint, Embedder, RequestFeatures};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::prices::PriceTable;

/// Prompts embedded per batch.
const BATCH: usize = 32;

/// One input line.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreInput {
    /// Any JSON scalar the caller uses as an id (echoed back as given).
    pub id: Value,
    pub prompt: String,
}

/// Reads `{"id", "prompt"}` JSON lines; a line that is not JSON, lacks either field, or has
/// a non-string prompt is an error naming its 1-based number.
pub fn read_inputs(path: &Path) -> Result<Vec<ScoreInput>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bad = |line: usize, reason: String| Error::Line {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            return Err(bad(n, "empty line (want {\"id\": ..., \"prompt\": \"...\"})".into()));
        }
        let value: Value = serde_json::from_str(line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(bad(n, "not a JSON object".into()));
        };
        let id = match object.remove("id") {
            None | Some(Value::Null) => return Err(bad(n, "no `id`".into())),
            Some(id @ (Value::Object(_) | Value::Array(_))) => return Err(bad(n, format!("`id` must be a string or number, got {id}"))),
            Some(id) => id,
        };
        let prompt = match object.remove("prompt") {
            None | Some(Value::Null) => return Err(bad(n, "no `prompt`".into())),
            Some(Value::String(p)) => p,
            Some(other) => return Err(bad(n, format!("`prompt` must be a string, got {other}"))),
        };
        out.push(ScoreInput { id, prompt });
    }
    Ok(out)
}

/// The route the scores are for: `names`, or every checkpoint candidate the price table
/// prices. A name the checkpoint has no head for, or that has no price, is an error.
pub fn candidates(checkpoint: &Checkpoint, prices: &PriceTable, names: Option<&[String]>) -> Result<(Vec<String>, Vec<Candidate>)> {
    let names: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => checkpoint.candidates().iter().filter(|c| prices.get(c).is_some()).cloned().collect(),
    };
    if names.is_empty() {
        return Err(Error::InvalidInput("no candidates: none of the checkpoint's models has a price".into()));
    }
    let mut route = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let head = checkpoint
            .resolve_candidate(name, None)
            .ok_or_else(|| Error::InvalidInput(format!("candidate `{name}` is not in the checkpoint ({})", checkpoint.candidates().join(", "))))?
            .index;
        let price = prices
            .get(name)
            .ok_or_else(|| Error::InvalidInput(format!("candidate `{name}` has no price (add it to a --prices file)")))?;
        route.push(Candidate { index, head, price });
    }
    Ok((names, route))
}

/// One output object per input, in input order.
pub fn score(checkpoint: &Checkpoint, embedder: &dyn Embedder, names: &[String], route: &[Candidate], inputs: &[ScoreInput]) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(BATCH) {
        let texts: Vec<&str> = chunk.iter().map(|i| i.prompt.as_str()).collect();
        let vectors = embedder.embed_batch(&texts)?;
        for (input, vector) in chunk.iter().zip(vectors) {
            let features = RequestFeatures::for_prompt(&input.prompt);
            let predictions = checkpoint.predict(&vector, &features)?;
            let scored = policy::score(&predictions, route, features.prompt_tokens, Tradeoff::BEST);
            let (mut quality, mut cost, mut latency) = (Map::new(), Map::new(), Map::new());
            for s in &scored {
                let name = names[s.candidate].clone();
                quality.insert(name.clone(), json!(s.quality));
                cost.insert(name.clone(), json!(s.cost_usd));
                latency.insert(name, json!(s.latency_ms));
            }
            out.push(json!({"id": input.id, "quality": quality, "cost": cost, "latency_ms": latency}));
        }
    }
    Ok(out)
}

/// Writes JSON lines.
pub fn write_lines(path: &Path, lines: &[Value]) -> Result<()> {
    let io = |e| Error::io(format!("writing {}", path.display()), e);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for line in lines {
        writeln!(file, "{line}").map_err(io)?;
    }
    file.flush().map_err(io)
}
