//! Recorded answers for the mock upstream: a known prompt is answered with the text a real
//! model gave it in a public routing dataset, so routing can be exercised end to end.
//!
//! Reads RouterBench CSVs (`prompt` plus `<model>|model_response` columns) and Arena-Hard
//! folders (`question.jsonl` plus `model_answer/<model>.jsonl`).

use router_model::canonical_model_id;
use training::data::parse_python_str_list;
use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::Error;

/// Answers keyed by normalised prompt, then by canonical model id.
#[derive(Debug, Default)]
pub struct ReplayStore {
    answers: HashMap<String, HashMap<String, String>>,
}

impl ReplayStore {
    /// Loads every dataset found under `dir` (searched one level deep).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let mut store = Self::default();
        store.load_dir(dir)?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    store.load_dir(&entry.path())?;
                }
            }
        }
        if store.answers.is_empty() {
            return Err(Error::Config(format!("no replayable answers found under {}", dir.display())));
        }
        Ok(store)
    }

    /// Adds another store's answers (later ones win for the same prompt and model).
    pub fn merge(&mut self, other: ReplayStore) {
        for (prompt, answers) in other.answers {
            self.answers.entry(prompt).or_default().extend(answers);
        }
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    fn load_dir(&mut self, dir: &Path) -> Result<(), Error> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("csv") {
                self.load_routerbench_csv(&path)?;
            }
        }
        let questions = dir.join("question.jsonl");
        if questions.is_file() && dir.join("model_answer").is_dir() {
            self.load_arena(dir)?;
        }
        Ok(())
    }

    fn load_routerbench_csv(&mut self, path: &Path) -> Result<(), Error> {
        let io = |e: csv::Error| Error::Config(format!("{}: {e}", path.display()));
        let mut reader = csv::Reader::from_path(path).map_err(io)?;
        let headers = reader.headers().map_err(io)?.clone();
        let Some(prompt_column) = headers.iter().position(|h| h == "prompt") else {
            return Ok(()); // a CSV of another shape
        };
        let answer_columns: Vec<(usize, String)> = headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.strip_suffix("|model_response").map(|m| (i, canonical_model_id(m))))
            .collect();
        for record in reader.records() {
            let record = record.map_err(io)?;
            let prompt = parse_python_str_list(record.get(prompt_column).unwrap_or_default());
            let answers = self.answers.entry(normalise_prompt(&prompt)).or_default();
            for (column, model) in &answer_columns {
                let answer = parse_python_str_list(record.get(*column).unwrap_or_default());
                if !answer.is_empty() {
                    answers.insert(model.clone(), answer);
                }
            }
        }
        Ok(())
    }

    fn load_arena(&mut self, dir: &Path) -> Result<(), Error> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        };
        let mut prompts: HashMap<String, String> = HashMap::new();
        for line in read(&dir.join("question.jsonl"))?.lines() {
            let Ok(row) = serde_json::from_str::<Value>(line) else { continue };
            if let (Some(id), Some(turn)) = (row["question_id"].as_str(), row["turns"][0].as_str()) {
                prompts.insert(id.to_owned(), normalise_prompt(turn));
            }
        }
        let entries = std::fs::read_dir(dir.join("model_answer")).map_err(|e| Error::Config(e.to_string()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(model) = path.file_stem().and_then(|s| s.to_str()).map(canonical_model_id) else { continue };
            for line in read(&path)?.lines() {
                let Ok(row) = serde_json::from_str::<Value>(line) else { continue };
                let (Some(id), Some(answer)) = (row["question_id"].as_str(), row["choices"][0]["turns"][0].as_str()) else {
                    continue;
                };
                if let Some(prompt) = prompts.get(id) {
                    self.answers
                        .entry(prompt.clone())
                        .or_default()
                        .insert(model.clone(), answer.trim().to_owned());
                }
            }
        }
        Ok(())
    }

    /// The recorded answer of `model` to `prompt`, if the datasets have one.
    pub fn answer(&self, model: &str, prompt: &str) -> Option<&str> {
        let answers = self.answers.get(&normalise_prompt(prompt))?;
        answers.get(&canonical_model_id(model)).map(String::as_str)
    }
}

/// Whitespace-insensitive prompt key.
pub fn normalise_prompt(prompt: &str) -> String {
    prompt.split_whitespace().collect::<Vec<_>>().join(" ")
}
