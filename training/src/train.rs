//! Fitting a [`Selector`]: candle-nn AdamW over minibatches, a validation split held out by
//! question, early stopping on the validation loss, and a fixed seed.
//!
//! Reproducibility: candle's CPU random generator cannot be seeded, so the weights are
//! initialised here from a seeded generator (PyTorch's default `Linear` init, U(±1/√fan_in)),
//! the trunk's built-in dropout is off, and regularisation is a seeded dropout on the
//! embedding part of the input plus AdamW's weight decay. Same data + same seed → same weights.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use router_model::selector::{input_row, loss};
use router_model::{Architecture, FeatureNorm, LossWeights, RequestFeatures, Selector, Targets};
use serde::Serialize;

use crate::data::unit_hash;
use crate::error::{Error, Result};

/// Latency every candidate is given when the training data has no latency at all (the public
/// datasets have none): one constant for all, so it cannot change a ranking. Replaced by
/// learned values once `--from-db` brings real latencies.
pub const NEUTRAL_LATENCY_MS: f32 = 1000.0;

/// One training example: an embedded prompt and what each candidate did on it.
#[derive(Debug, Clone)]
pub struct Example {
    pub embedding: Vec<f32>,
    pub features: RequestFeatures,
    /// Per candidate, quality in 0..1 where observed.
    pub quality: Vec<Option<f32>>,
    /// Per candidate, weight of the quality loss (1 for full-information data, the clipped
    /// inverse propensity for logged traffic).
    pub quality_weight: Vec<f32>,
    /// Per candidate, ln(latency ms) where observed.
    pub log_latency_ms: Vec<Option<f32>>,
    /// Per candidate, ln(output tokens) where observed.
    pub log_output_tokens: Vec<Option<f32>>,
    /// Mean quality over the models the source scored (the difficulty head's target).
    pub difficulty: Option<f32>,
    /// Rows with the same group stay on one side of the validation split (the question key).
    pub group: String,
}

impl Example {
    /// An example with nothing observed yet for `num_candidates` candidates.
    pub fn empty(
        embedding: Vec<f32>,
        features: RequestFeatures,
        num_candidates: usize,
        group: String,
    ) -> Self {
        Self {
            embedding,
            features,
            quality: vec![None; num_candidates],
            quality_weight: vec![1.0; num_candidates],
            log_latency_ms: vec![None; num_candidates],
            log_output_tokens: vec![None; num_candidates],
            difficulty: None,
            group,
        }
    }
}

/// Neighbours whose ratings a logged row's quality target averages (see
/// [`TrainConfig::log_label_neighbours`]).
pub const DEFAULT_LOG_LABEL_NEIGHBOURS: usize = 40;

/// The share of a logged row's quality target that is its own rating (see
/// [`TrainConfig::log_label_own_share`]).
pub const DEFAULT_LOG_LABEL_OWN_SHARE: f32 = 0.0;

/// Knobs of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub hidden_dims: Vec<usize>,
    pub max_epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    pub seed: u64,
    /// Share of questions held out for early stopping.
    pub validation_share: f64,
    /// Dropout on the embedding part of the input while training.
    pub input_dropout: f32,
    pub loss_weights: LossWeights,
    /// Start from the serving checkpoint's weights when it has the same candidates (`learn`);
    /// `false` trains from random weights on the same rows.
    pub warm_start: bool,
    /// Logged feedback is a single 0/1-like rating of one model's answer: before training,
    /// each rated row's quality target becomes the mean rating of the `k` nearest rows (by
    /// embedding, itself included) the same model answered. The network then fits each
    /// model's local success rate instead of chasing single ratings; 0 keeps raw ratings.
    pub log_label_neighbours: usize,
    /// The share of that target which is the row's own rating, the rest being the
    /// neighbourhood's mean (0: the mean alone; 1: raw ratings).
    pub log_label_own_share: f32,
    /// Fit the log twice before the final fit, once on raw ratings and once on the
    /// neighbourhood targets above, and train on the mean of the two fits' predictions: raw
    /// ratings follow single answers, neighbourhoods borrow ratings across regions a model
    /// rarely served; their errors differ, and their mean routed better than either on the
    /// learning bench's logs (bench/README.md, "The learner across logs"). Skipped when the
    /// neighbourhood targets are the raw ratings (`log_label_neighbours` ≤ 1, own share 1).
    pub log_label_two_fits: bool,
    /// Show progress bars (off in tests).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden_dims: vec![256],
            max_epochs: 40,
            batch_size: 128,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            patience: 4,
            seed: 17,
            validation_share: 0.1,
            input_dropout: 0.1,
            loss_weights: LossWeights::default(),
            warm_start: true,
            log_label_neighbours: DEFAULT_LOG_LABEL_NEIGHBOURS,
            log_label_own_share: DEFAULT_LOG_LABEL_OWN_SHARE,
            log_label_two_fits: true,
            progress: true,
        }
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
}

/// A trained network and how it got there.
pub struct Trained {
    pub varmap: VarMap,
    pub selector: Selector,
    pub architecture: Architecture,
    pub feature_norm: FeatureNorm,
    pub history: Vec<EpochStats>,
    pub best_epoch: usize,
    pub fit_examples: usize,
    pub validation_examples: usize,
    pub seconds: f64,
    /// Notes on heads without data (e.g. constant latency), for the checkpoint's metrics.
    pub notes: Vec<String>,
}

/// Dense targets of a set of examples.
struct Batchable {
    inputs: Tensor,
    quality: Tensor,
    quality_mask: Tensor,
    latency: Tensor,
    latency_mask: Tensor,
    tokens: Tensor,
    tokens_mask: Tensor,
    difficulty: Tensor,
    difficulty_mask: Tensor,
}

impl Batchable {
    fn new(examples: &[&Example], norm: &FeatureNorm, c: usize) -> Result<Self> {
        let dev = Device::Cpu;
        let n = examples.len();
        let dim = examples
            .first()
            .map_or(0, |e| e.embedding.len() + RequestFeatures::LEN);
        let mut inputs = Vec::with_capacity(n * dim);
        let per_candidate =
            |get: &dyn Fn(&Example, usize) -> (f32, f32)| -> Result<(Tensor, Tensor)> {
                let mut values = Vec::with_capacity(n * c);
                let mut mask = Vec::with_capacity(n * c);
                for e in examples {
                    for j in 0..c {
                        let (v, m) = get(e, j);
                        values.push(v);
                        mask.push(m);
                    }
                }
                Ok((
                    Tensor::from_vec(values, (n, c), &dev)?,
                    Tensor::from_vec(mask, (n, c), &dev)?,
                ))
            };
        let observed = |o: Option<f32>, w: f32| o.map_or((0.0, 0.0), |v| (v, w));
        let (quality, quality_mask) =
            per_candidate(&|e, j| observed(e.quality[j], e.quality_weight[j]))?;
        let (latency, latency_mask) = per_candidate(&|e, j| observed(e.log_latency_ms[j], 1.0))?;
        let (tokens, tokens_mask) = per_candidate(&|e, j| observed(e.log_output_tokens[j], 1.0))?;
        let mut difficulty = Vec::with_capacity(n);
        let mut difficulty_mask = Vec::with_capacity(n);
        for e in examples {
            inputs.extend(input_row(&e.embedding, &e.features, norm));
            difficulty.push(e.difficulty.unwrap_or(0.0));
            difficulty_mask.push(if e.difficulty.is_some() { 1.0f32 } else { 0.0 });
        }
        Ok(Self {
            inputs: Tensor::from_vec(inputs, (n, dim), &dev)?,
            quality,
            quality_mask,
            latency,
            latency_mask,
            tokens,
            tokens_mask,
            difficulty: Tensor::from_vec(difficulty, n, &dev)?,
            difficulty_mask: Tensor::from_vec(difficulty_mask, n, &dev)?,
        })
    }

    fn len(&self) -> usize {
        self.inputs.dims()[0]
    }

    fn select(&self, idx: &Tensor) -> Result<(Tensor, Targets)> {
        let pick = |t: &Tensor| t.index_select(idx, 0);
        Ok((
            pick(&self.inputs)?,
            Targets {
                quality: pick(&self.quality)?,
                quality_mask: pick(&self.quality_mask)?,
                log_latency_ms: pick(&self.latency)?,
                latency_mask: pick(&self.latency_mask)?,
                log_output_tokens: pick(&self.tokens)?,
                tokens_mask: pick(&self.tokens_mask)?,
                difficulty: pick(&self.difficulty)?,
                difficulty_mask: pick(&self.difficulty_mask)?,
            },
        ))
    }

    fn all(&self) -> Result<(Tensor, Targets)> {
        Ok((
            self.inputs.clone(),
            Targets {
                quality: self.quality.clone(),
                quality_mask: self.quality_mask.clone(),
                log_latency_ms: self.latency.clone(),
                latency_mask: self.latency_mask.clone(),
                log_output_tokens: self.tokens.clone(),
                tokens_mask: self.tokens_mask.clone(),
                difficulty: self.difficulty.clone(),
                difficulty_mask: self.difficulty_mask.clone(),
            },
        ))
    }
}

/// Where the initial weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Init<'a> {
    /// Seeded random weights.
    Random,
    /// Continue from the weights of the checkpoint in this directory (same architecture and
    /// candidates).
    From(&'a std::path::Path),
}

/// Trains a selector for `num_candidates` candidates on `examples`.
pub fn train(
    examples: &[Example],
    num_candidates: usize,
    config: &TrainConfig,
    init: Init<'_>,
) -> Result<Trained> {
    let started = Instant::now();
    let first = examples
        .first()
        .ok_or_else(|| Error::InvalidInput("no training examples".into()))?;
    let embedding_dim = first.embedding.len();
    if examples.iter().any(|e| {
        e.embedding.len() != embedding_dim
            || e.quality.len() != num_candidates
            || e.quality_weight.len() != num_candidates
            || e.log_latency_ms.len() != num_candidates
            || e.log_output_tokens.len() != num_candidates
    }) {
        return Err(Error::InvalidInput(
            "examples disagree on embedding or candidate count".into(),
        ));
    }
    let (architecture, feature_norm) = match &init {
        Init::From(dir) => {
            let meta = router_model::Checkpoint::read_meta(dir)?;
            (meta.architecture, meta.feature_norm)
        }
        Init::Random => {
            let features: Vec<_> = examples.iter().map(|e| e.features.to_vec()).collect();
            let arch = Architecture {
                hidden_dims: config.hidden_dims.clone(),
                dropout: 0.0,
                ..Architecture::new(embedding_dim, num_candidates)
            };
            (arch, FeatureNorm::fit(&features))
        }
    };
    if architecture.num_candidates != num_candidates || architecture.embedding_dim != embedding_dim
    {
        return Err(Error::InvalidInput(format!(
            "initial checkpoint has {} candidates / {}-d embeddings, the data {num_candidates} / {embedding_dim}-d",
            architecture.num_candidates, architecture.embedding_dim
        )));
    }

    let (fit, validation): (Vec<&Example>, Vec<&Example>) = examples
        .iter()
        .partition(|e| unit_hash(&e.group, config.seed) >= config.validation_share);
    // Tiny sets (tests) may put everything on one side: then validate on the training data.
    let validation = if validation.is_empty() {
        fit.clone()
    } else {
        validation
    };
    let fit = if fit.is_empty() {
        validation.clone()
    } else {
        fit
    };
    let fit_data = Batchable::new(&fit, &feature_norm, num_candidates)?;
    let val_data = Batchable::new(&validation, &feature_norm, num_candidates)?;

    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let selector = Selector::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &architecture,
    )?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    match init {
        Init::Random => seeded_init(&varmap, &mut rng)?,
        Init::From(dir) => copy_weights(&varmap, dir)?,
    }
    let mut optimizer = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;

    let bar = if config.progress {
        ProgressBar::new(config.max_epochs as u64).with_style(
            ProgressStyle::with_template("training {bar:30} epoch {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let (val_inputs, val_targets) = val_data.all()?;
    let mut best = (f64::INFINITY, 0usize, snapshot(&varmap)?);
    let mut history = Vec::new();
    let mut order: Vec<u32> = (0..fit_data.len() as u32).collect();
    let input_dim = architecture.input_dim();
    for epoch in 1..=config.max_epochs {
        order.shuffle(&mut rng);
        let (mut total, mut batches) = (0.0, 0usize);
        for chunk in order.chunks(config.batch_size.max(1)) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev)?;
            let (inputs, targets) = fit_data.select(&idx)?;
            let inputs = input_dropout(
                &inputs,
                chunk.len(),
                input_dim,
                embedding_dim,
                config.input_dropout,
                &mut rng,
            )?;
            let out = selector.forward_t(&inputs, true)?;
            let l = loss(&out, &targets, &config.loss_weights)?;
            optimizer.backward_step(&l)?;
            total += f64::from(l.to_scalar::<f32>()?);
            batches += 1;
        }
        let out = selector.forward(&val_inputs)?;
        let validation_loss =
            f64::from(loss(&out, &val_targets, &config.loss_weights)?.to_scalar::<f32>()?);
        let train_loss = total / batches.max(1) as f64;
        history.push(EpochStats {
            epoch,
            train_loss,
            validation_loss,
        });
        bar.set_message(format!("train {train_loss:.4} val {validation_loss:.4}"));
        bar.inc(1);
        if validation_loss < best.0 - 1e-5 {
            best = (validation_loss, epoch, snapshot(&varmap)?);
        } else if epoch - best.1 >= config.patience {
            break;
        }
    }
    bar.finish_and_clear();
    restore(&varmap, &best.2)?;
    let notes = neutralise_unobserved_heads(&varmap, examples, num_candidates)?;
    Ok(Trained {
        varmap,
        selector,
        architecture,
        feature_norm,
        history,
        best_epoch: best.1,
        fit_examples: fit.len(),
        validation_examples: validation.len(),
        seconds: started.elapsed().as_secs_f64(),
        notes,
    })
}

/// Zeroes embedding columns with probability `p` (scaling the rest by 1/(1−p)); the request
/// features are left alone.
fn input_dropout(
    inputs: &Tensor,
    rows: usize,
    width: usize,
    embedding_dim: usize,
    p: f32,
    rng: &mut StdRng,
) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(inputs.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mut mask = Vec::with_capacity(rows * width);
    for _ in 0..rows {
        for j in 0..width {
            mask.push(if j >= embedding_dim || rng.random::<f32>() >= p {
                if j >= embedding_dim {
                    1.0
                } else {
                    keep
                }
            } else {
                0.0
            });
        }
    }
    Ok((inputs * Tensor::from_vec(mask, (rows, width), &Device::Cpu)?)?)
}

fn sorted_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidInput("variable map lock poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// PyTorch's default `Linear` initialisation, U(−1/√fan_in, 1/√fan_in) for weights and
/// biases, from the seeded generator.
fn seeded_init(varmap: &VarMap, rng: &mut StdRng) -> Result<()> {
    let vars = sorted_vars(varmap)?;
    let fan_in: HashMap<String, usize> = vars
        .iter()
        .filter_map(|(name, var)| {
            let prefix = name.strip_suffix(".weight")?;
            Some((prefix.to_owned(), *var.dims().get(1)?))
        })
        .collect();
    for (name, var) in &vars {
        let prefix = name.rsplit_once('.').map_or(name.as_str(), |(p, _)| p);
        let fan = fan_in.get(prefix).copied().unwrap_or(1).max(1);
        let bound = 1.0 / (fan as f32).sqrt();
        let n = var.elem_count();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

fn copy_weights(varmap: &VarMap, dir: &std::path::Path) -> Result<()> {
    let path = dir.join(router_model::checkpoint::WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    for (name, var) in sorted_vars(varmap)? {
        let t = tensors.get(&name).ok_or_else(|| {
            Error::InvalidInput(format!("{} has no tensor {name}", path.display()))
        })?;
        var.set(t)?;
    }
    Ok(())
}

fn snapshot(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    sorted_vars(varmap)?
        .into_iter()
        .map(|(name, var)| Ok((name, var.as_tensor().copy()?)))
        .collect()
}

fn restore(varmap: &VarMap, saved: &[(String, Tensor)]) -> Result<()> {
    let vars: HashMap<String, Var> = sorted_vars(varmap)?.into_iter().collect();
    for (name, tensor) in saved {
        if let Some(var) = vars.get(name) {
            var.set(tensor)?;
        }
    }
    Ok(())
}

/// A head output with no training target at all would serve whatever its random weights say.
/// For such a candidate the head's row becomes the average of the rows of the candidates that
/// did have data (so it predicts, per prompt, the mean of what those models do: short for a
/// multiple-choice question, long for code); when no candidate had data, a constant
/// ([`NEUTRAL_LATENCY_MS`], or 200 tokens) that cannot reorder candidates.
fn neutralise_unobserved_heads(
    varmap: &VarMap,
    examples: &[Example],
    c: usize,
) -> Result<Vec<String>> {
    let vars: HashMap<String, Var> = sorted_vars(varmap)?.into_iter().collect();
    let mut notes = Vec::new();
    type Getter = fn(&Example, usize) -> Option<f32>;
    let heads: [(&str, Getter, f32); 2] = [
        (
            "latency",
            |e, j| e.log_latency_ms[j],
            NEUTRAL_LATENCY_MS.ln(),
        ),
        ("tokens", |e, j| e.log_output_tokens[j], 200f32.ln()),
    ];
    for (head, get, fallback) in heads {
        let observed: Vec<bool> = (0..c)
            .map(|j| examples.iter().any(|e| get(e, j).is_some()))
            .collect();
        let unobserved: Vec<usize> = (0..c).filter(|&j| !observed[j]).collect();
        if unobserved.is_empty() {
            continue;
        }
        let (Some(weight), Some(bias)) = (
            vars.get(&format!("{head}.weight")),
            vars.get(&format!("{head}.bias")),
        ) else {
            continue;
        };
        let mut w = weight.as_tensor().to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut b = bias.as_tensor().to_vec1::<f32>()?;
        let donors: Vec<usize> = (0..c).filter(|&j| observed[j]).collect();
        let cols = w.first().map_or(0, Vec::len);
        let (row, constant) = if donors.is_empty() {
            (vec![0.0; cols], fallback)
        } else {
            let k = donors.len() as f32;
            let row = (0..cols)
                .map(|i| donors.iter().map(|&d| w[d][i]).sum::<f32>() / k)
                .collect();
            (row, donors.iter().map(|&d| b[d]).sum::<f32>() / k)
        };
        for &j in &unobserved {
            w[j].clone_from(&row);
            b[j] = constant;
        }
        let rows = w.len();
        weight.set(&Tensor::from_vec(
            w.into_iter().flatten().collect::<Vec<_>>(),
            (rows, cols),
            &Device::Cpu,
        )?)?;
        bias.set(&Tensor::from_vec(b, rows, &Device::Cpu)?)?;
        notes.push(if donors.is_empty() {
            format!(
                "{head} head: no data for any candidate; all predict the constant {:.0}{}",
                constant.exp(),
                if head == "latency" { " ms" } else { " tokens" }
            )
        } else {
            format!(
                "{head} head: no data for {} of {c} candidates; they predict the mean of the {} candidates with data",
                unobserved.len(),
                donors.len()
            )
        });
    }
    Ok(notes)
}
