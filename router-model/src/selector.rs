//! The selector network: embedding + request features → per-candidate predictions.
//!
//! One definition for training and serving (the candle-examples pattern):
//! [`Selector::new`] takes a `VarBuilder`, which a trainer backs with a `VarMap` and serving
//! backs with the checkpoint's safetensors.
//!
//! ```text
//! input = [embedding (384) | normalised features (6)]
//!   └─ trunk: Linear → GELU (→ dropout while training), once per hidden dim
//!        ├─ quality     Linear → C logits   (sigmoid = P(good answer) per candidate)
//!        ├─ latency     Linear → C values   (ln of end-to-end latency in ms)
//!        ├─ tokens      Linear → C values   (ln of output tokens)
//!        └─ difficulty  Linear → 1 logit    (sigmoid = mean quality over all models)
//! ```
//!
//! The difficulty head is auxiliary: it learns from every dataset, even those without the
//! candidate models, and regularises the shared trunk (the largest gain in our spikes).

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::RequestFeatures;

/// Nonlinearity of the trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Gelu,
    Relu,
}

/// Shape of the network; stored in the checkpoint so serving rebuilds the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Length of the embedding part of the input.
    pub embedding_dim: usize,
    /// Names of the feature part of the input, in order ([`RequestFeatures::NAMES`]).
    pub feature_names: Vec<String>,
    /// Widths of the trunk's hidden layers, e.g. `[256]`.
    pub hidden_dims: Vec<usize>,
    pub activation: Activation,
    /// Number of candidate models (one output per head each).
    pub num_candidates: usize,
    /// Dropout after each trunk layer while training; ignored in serving.
    #[serde(default)]
    pub dropout: f32,
}

impl Architecture {
    /// The default shape: one 256-wide GELU layer over embedding + the standard features.
    pub fn new(embedding_dim: usize, num_candidates: usize) -> Self {
        Self {
            embedding_dim,
            feature_names: RequestFeatures::NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            hidden_dims: vec![256],
            activation: Activation::Gelu,
            num_candidates,
            dropout: 0.1,
        }
    }

    /// Width of an input row.
    pub fn input_dim(&self) -> usize {
        self.embedding_dim + self.feature_names.len()
    }
}

/// Mean and standard deviation of each raw feature over the training set; applied to
/// serving inputs so they look like what the network was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl FeatureNorm {
    /// No-op normalisation for `len` features.
    pub fn identity(len: usize) -> Self {
        Self {
            mean: vec![0.0; len],
            std: vec![1.0; len],
        }
    }

    /// Fits mean/std over raw feature rows. A constant feature gets std 1 (so it maps to 0
    /// rather than dividing by zero).
    pub fn fit(rows: &[[f32; RequestFeatures::LEN]]) -> Self {
        let n = rows.len().max(1) as f64;
        let mut mean = [0f64; RequestFeatures::LEN];
        for row in rows {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += f64::from(*x) / n;
            }
        }
        let mut var = [0f64; RequestFeatures::LEN];
        for row in rows {
            for ((v, x), m) in var.iter_mut().zip(row).zip(&mean) {
                *v += (f64::from(*x) - m).powi(2) / n;
            }
        }
        Self {
            mean: mean.iter().map(|m| *m as f32).collect(),
            std: var
                .iter()
                .map(|v| {
                    let s = v.sqrt() as f32;
                    if s > 1e-6 {
                        s
                    } else {
                        1.0
                    }
                })
                .collect(),
        }
    }

    /// Normalises raw values in place.
    pub fn apply(&self, values: &mut [f32]) {
        for ((x, m), s) in values.iter_mut().zip(&self.mean).zip(&self.std) {
            *x = (*x - m) / s;
        }
    }

    /// Checks the lengths match and every std is usable.
    pub fn validate(&self, len: usize) -> std::result::Result<(), String> {
        if self.mean.len() != len || self.std.len() != len {
            return Err(format!(
                "feature normalisation has {}/{} values, expected {len}",
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("feature normalisation has a non-positive std".into());
        }
        Ok(())
    }
}

/// One selector input row: the embedding followed by the normalised features.
pub fn input_row(embedding: &[f32], features: &RequestFeatures, norm: &FeatureNorm) -> Vec<f32> {
    let mut row = Vec::with_capacity(embedding.len() + RequestFeatures::LEN);
    row.extend_from_slice(embedding);
    let mut f = features.to_vec();
    norm.apply(&mut f);
    row.extend_from_slice(&f);
    row
}

/// Raw outputs of a forward pass (batch `B`, candidates `C`).
#[derive(Debug, Clone)]
pub struct SelectorOutput {
    /// `[B, C]` logits of P(good answer).
    pub quality_logits: Tensor,
    /// `[B, C]` predicted ln(latency in ms).
    pub log_latency_ms: Tensor,
    /// `[B, C]` predicted ln(output tokens).
    pub log_output_tokens: Tensor,
    /// `[B]` logit of the prompt's mean quality across models.
    pub difficulty_logit: Tensor,
}

/// Per-candidate head values for one input, already on their natural scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadValues {
    /// P(good answer), 0..1.
    pub quality: f32,
    /// Expected latency in milliseconds.
    pub latency_ms: f32,
    /// Expected output tokens.
    pub output_tokens: f32,
}

/// The network. Build it with [`Selector::new`]; load a trained one with
/// [`crate::Checkpoint::load`].
#[derive(Debug, Clone)]
pub struct Selector {
    trunk: Vec<Linear>,
    quality: Linear,
    latency: Linear,
    tokens: Linear,
    difficulty: Linear,
    arch: Architecture,
}

impl Selector {
    /// Builds (training: initialises in the `VarMap`) or loads (serving) the network.
    /// Variable names: `trunk.{i}.{weight,bias}`, `quality.*`, `latency.*`, `tokens.*`,
    /// `difficulty.*`.
    pub fn new(vb: VarBuilder, arch: &Architecture) -> Result<Self> {
        if arch.num_candidates == 0 {
            return Err(Error::InvalidInput("a selector needs candidates".into()));
        }
        let mut trunk = Vec::with_capacity(arch.hidden_dims.len());
        let mut width = arch.input_dim();
        for (i, &hidden) in arch.hidden_dims.iter().enumerate() {
            trunk.push(linear(width, hidden, vb.pp(format!("trunk.{i}")))?);
            width = hidden;
        }
        let c = arch.num_candidates;
        Ok(Self {
            trunk,
            quality: linear(width, c, vb.pp("quality"))?,
            latency: linear(width, c, vb.pp("latency"))?,
            tokens: linear(width, c, vb.pp("tokens"))?,
            difficulty: linear(width, 1, vb.pp("difficulty"))?,
            arch: arch.clone(),
        })
    }

    /// The architecture this network was built with.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Serving forward pass over `[B, input_dim]` rows (no dropout).
    pub fn forward(&self, input: &Tensor) -> Result<SelectorOutput> {
        self.forward_t(input, false)
    }

    /// Forward pass; `train` enables dropout.
    pub fn forward_t(&self, input: &Tensor, train: bool) -> Result<SelectorOutput> {
        let mut h = input.clone();
        for layer in &self.trunk {
            h = layer.forward(&h)?;
            h = match self.arch.activation {
                Activation::Gelu => h.gelu_erf()?,
                Activation::Relu => h.relu()?,
            };
            if train && self.arch.dropout > 0.0 {
                h = candle_nn::ops::dropout(&h, self.arch.dropout)?;
            }
        }
        Ok(SelectorOutput {
            quality_logits: self.quality.forward(&h)?,
            log_latency_ms: self.latency.forward(&h)?,
            log_output_tokens: self.tokens.forward(&h)?,
            difficulty_logit: self.difficulty.forward(&h)?.squeeze(D::Minus1)?,
        })
    }

    /// Predictions for one prepared input row (see [`input_row`]), one per candidate in
    /// checkpoint order, plus the difficulty (predicted mean quality).
    pub fn predict_row(&self, row: &[f32]) -> Result<(Vec<HeadValues>, f32)> {
        if row.len() != self.arch.input_dim() {
            return Err(Error::InvalidInput(format!(
                "selector input has {} values, expected {}",
                row.len(),
                self.arch.input_dim()
            )));
        }
        let input = Tensor::from_slice(row, (1, row.len()), &Device::Cpu)?;
        let out = self.forward(&input)?;
        let quality = out.quality_logits.squeeze(0)?.to_vec1::<f32>()?;
        let latency = out.log_latency_ms.squeeze(0)?.to_vec1::<f32>()?;
        let tokens = out.log_output_tokens.squeeze(0)?.to_vec1::<f32>()?;
        let difficulty = out.difficulty_logit.to_vec1::<f32>()?;
        let values = quality
            .iter()
            .zip(&latency)
            .zip(&tokens)
            .map(|((q, l), t)| HeadValues {
                quality: sigmoid(*q),
                latency_ms: l.exp(),
                output_tokens: t.exp(),
            })
            .collect();
        Ok((values, difficulty.first().copied().map_or(0.5, sigmoid)))
    }
}

/// The selector's weights copied out of candle into plain row-major arrays, for serving.
///
/// A one-row forward pass through candle cost ~0.28 ms here, almost all of it dispatch (a
/// dozen tensor ops, each handing its tiny matmul to a thread pool); the same arithmetic as
/// plain loops takes ~0.03 ms. Built once when a checkpoint is loaded; it does not follow later
/// changes to the variables, so trainers use [`Selector::forward`] instead.
#[derive(Debug, Clone)]
pub struct FrozenSelector {
    trunk: Vec<Dense>,
    heads: Dense,
    num_candidates: usize,
    activation: Activation,
}

#[derive(Debug, Clone)]
struct Dense {
    /// `[out][in]`, row-major, as candle's `Linear` stores it.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl Dense {
    fn from_linears(layers: &[&Linear]) -> Result<Self> {
        let mut weight = Vec::new();
        let mut bias = Vec::new();
        let mut inputs = 0;
        for layer in layers {
            let (out, inp) = layer.weight().dims2()?;
            inputs = inp;
            weight.extend(layer.weight().flatten_all()?.to_vec1::<f32>()?);
            match layer.bias() {
                Some(b) => bias.extend(b.to_vec1::<f32>()?),
                None => bias.extend(std::iter::repeat_n(0.0, out)),
            }
        }
        Ok(Self {
            weight,
            bias,
            inputs,
        })
    }

    fn forward(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend(
            self.weight
                .chunks_exact(self.inputs)
                .zip(&self.bias)
                .map(|(row, b)| b + dot(row, x)),
        );
    }
}

/// Dot product with eight independent accumulators, so the compiler vectorises it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Exact GELU, 0.5·x·(1 + erf(x/√2)), matching candle's `gelu_erf`.
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// erf via Abramowitz–Stegun 7.1.26 refined in f64 (|error| < 1.5e-7, below f32 resolution
/// of the activations that follow).
fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (sign * (1.0 - poly * (-x * x).exp())) as f32
}

impl FrozenSelector {
    /// Copies the current weights of `selector`.
    pub fn new(selector: &Selector) -> Result<Self> {
        let trunk = selector
            .trunk
            .iter()
            .map(|l| Dense::from_linears(&[l]))
            .collect::<Result<Vec<_>>>()?;
        let heads = Dense::from_linears(&[
            &selector.quality,
            &selector.latency,
            &selector.tokens,
            &selector.difficulty,
        ])?;
        Ok(Self {
            trunk,
            heads,
            num_candidates: selector.arch.num_candidates,
            activation: selector.arch.activation,
        })
    }

    /// Same contract as [`Selector::predict_row`].
    pub fn predict_row(&self, row: &[f32]) -> Result<(Vec<HeadValues>, f32)> {
        let expected = self.trunk.first().map_or(self.heads.inputs, |d| d.inputs);
        if row.len() != expected {
            return Err(Error::InvalidInput(format!(
                "selector input has {} values, expected {expected}",
                row.len()
            )));
        }
        let mut x = row.to_vec();
        let mut y = Vec::new();
        for layer in &self.trunk {
            layer.forward(&x, &mut y);
            for v in y.iter_mut() {
                *v = match self.activation {
                    Activation::Gelu => gelu_erf(*v),
                    Activation::Relu => v.max(0.0),
                };
            }
            std::mem::swap(&mut x, &mut y);
        }
        self.heads.forward(&x, &mut y);
        let c = self.num_candidates;
        let values = (0..c)
            .map(|i| HeadValues {
                quality: sigmoid(y[i]),
                latency_ms: y[c + i].exp(),
                output_tokens: y[2 * c + i].exp(),
            })
            .collect();
        Ok((values, sigmoid(y[3 * c])))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Training targets for a batch. Every target has a mask (1 = observed, 0 = missing) because
/// datasets rarely have every model's quality, latency and length for every prompt.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `[B, C]` quality in 0..1 (0/1 labels or judge scores rescaled).
    pub quality: Tensor,
    pub quality_mask: Tensor,
    /// `[B, C]` ln(latency ms).
    pub log_latency_ms: Tensor,
    pub latency_mask: Tensor,
    /// `[B, C]` ln(output tokens).
    pub log_output_tokens: Tensor,
    pub tokens_mask: Tensor,
    /// `[B]` mean quality of the prompt across all models that answered it.
    pub difficulty: Tensor,
    pub difficulty_mask: Tensor,
}

/// Relative weights of the four losses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub quality: f64,
    pub latency: f64,
    pub tokens: f64,
    pub difficulty: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            quality: 1.0,
            latency: 0.1,
            tokens: 0.1,
            difficulty: 0.5,
        }
    }
}

/// The training loss: masked binary cross-entropy for quality and difficulty, masked mean
/// squared error for the log-scale regressions, weighted and summed. Defined here so every
/// trainer optimises the same objective the checkpoint's heads are read with.
pub fn loss(out: &SelectorOutput, t: &Targets, w: &LossWeights) -> Result<Tensor> {
    let quality = masked_mean(
        &bce_with_logits(&out.quality_logits, &t.quality)?,
        &t.quality_mask,
    )?;
    let latency = masked_mean(
        &(&out.log_latency_ms - &t.log_latency_ms)?.sqr()?,
        &t.latency_mask,
    )?;
    let tokens = masked_mean(
        &(&out.log_output_tokens - &t.log_output_tokens)?.sqr()?,
        &t.tokens_mask,
    )?;
    let difficulty = masked_mean(
        &bce_with_logits(&out.difficulty_logit, &t.difficulty)?,
        &t.difficulty_mask,
    )?;
    let total = ((quality * w.quality)? + (latency * w.latency)?)?;
    let total = ((total + (tokens * w.tokens)?)? + (difficulty * w.difficulty)?)?;
    Ok(total)
}

/// Numerically stable elementwise BCE with logits: max(x,0) − x·y + ln(1 + e^−|x|).
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let pos = logits.relu()?;
    let xy = (logits * targets)?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((pos - xy)? + soft)?)
}

/// Mean of `values` where `mask` is 1; 0 when nothing is observed.
fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    let total = (values * &mask)?.sum_all()?;
    let count = mask.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok((total / count)?)
}
