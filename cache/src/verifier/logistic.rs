//! Logistic regression over standardised pair features, fitted by Newton's method.
//!
//! Twenty-odd features and a few thousand pairs: a closed-form-ish fit that converges in a
//! handful of iterations, is deterministic, and stores as a JSON list of coefficients.

use serde::{Deserialize, Serialize};

/// A fitted model: `p = σ(bias + Σ wᵢ·(xᵢ − meanᵢ)/stdᵢ)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Logistic {
    /// Probability of label 1 for one feature vector.
    pub fn predict(&self, x: &[f32]) -> f32 {
        let mut z = f64::from(self.bias);
        for (i, v) in x.iter().enumerate() {
            let s = (f64::from(*v) - f64::from(self.mean[i])) / f64::from(self.std[i]);
            z += f64::from(self.weights[i]) * s;
        }
        sigmoid(z) as f32
    }

    /// Fits on rows `x` with labels `y` and L2 penalty `l2` (on standardised weights, not on
    /// the bias). Returns `None` for empty input or ragged rows.
    pub fn fit(x: &[Vec<f32>], y: &[bool], l2: f64, iterations: usize) -> Option<Self> {
        let n = x.len();
        let d = x.first()?.len();
        if n == 0 || y.len() != n || x.iter().any(|r| r.len() != d) {
            return None;
        }
        let mut mean = vec![0f64; d];
        for r in x {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += f64::from(*v) / n as f64;
            }
        }
        let mut std = vec![0f64; d];
        for r in x {
            for ((s, v), m) in std.iter_mut().zip(r).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2) / n as f64;
            }
        }
        for s in &mut std {
            *s = s.sqrt().max(1e-6);
        }
        // Design matrix with a leading 1 for the bias.
        let rows: Vec<Vec<f64>> = x
            .iter()
            .map(|r| {
                std::iter::once(1.0)
                    .chain(
                        r.iter()
                            .zip(&mean)
                            .zip(&std)
                            .map(|((v, m), s)| (f64::from(*v) - m) / s),
                    )
                    .collect()
            })
            .collect();
        let k = d + 1;
        let mut w = vec![0f64; k];
        for _ in 0..iterations {
            let mut grad = vec![0f64; k];
            let mut hess = vec![0f64; k * k];
            for (r, &label) in rows.iter().zip(y) {
                let z: f64 = r.iter().zip(&w).map(|(a, b)| a * b).sum();
                let p = sigmoid(z);
                let err = p - if label { 1.0 } else { 0.0 };
                let h = (p * (1.0 - p)).max(1e-9);
                for i in 0..k {
                    grad[i] += err * r[i];
                    let hi = h * r[i];
                    for j in i..k {
                        hess[i * k + j] += hi * r[j];
                    }
                }
            }
            for i in 0..k {
                for j in 0..i {
                    hess[i * k + j] = hess[j * k + i];
                }
            }
            for i in 1..k {
                grad[i] += l2 * w[i];
                hess[i * k + i] += l2;
            }
            let step = solve(&mut hess, &grad, k)?;
            let mut change = 0f64;
            for (wi, si) in w.iter_mut().zip(&step) {
                *wi -= si;
                change = change.max(si.abs());
            }
            if change < 1e-7 {
                break;
            }
        }
        Some(Self {
            mean: mean.iter().map(|&v| v as f32).collect(),
            std: std.iter().map(|&v| v as f32).collect(),
            weights: w[1..].iter().map(|&v| v as f32).collect(),
            bias: w[0] as f32,
        })
    }
}

/// Solves `a · x = b` (a: k×k symmetric positive definite) by Gaussian elimination with
/// partial pivoting. `None` when singular.
fn solve(a: &mut [f64], b: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut b = b.to_vec();
    for col in 0..k {
        let pivot =
            (col..k).max_by(|&i, &j| a[i * k + col].abs().total_cmp(&a[j * k + col].abs()))?;
        if a[pivot * k + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for j in 0..k {
                a.swap(col * k + j, pivot * k + j);
            }
            b.swap(col, pivot);
        }
        for row in col + 1..k {
            let f = a[row * k + col] / a[col * k + col];
            if f == 0.0 {
                continue;
            }
            for j in col..k {
                a[row * k + j] -= f * a[col * k + j];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f64; k];
    for row in (0..k).rev() {
        let mut s = b[row];
        for j in row + 1..k {
            s -= a[row * k + j] * x[j];
        }
        x[row] = s / a[row * k + row];
    }
    Some(x)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn fit_separates_a_noisy_threshold() {
        // Label is 1 when x0 > 0.5, with x1 pure noise: the model must weight x0 and barely x1.
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut state = 12345u64;
        let mut rand = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f32 / (1u64 << 31) as f32
        };
        for _ in 0..2000 {
            let a = rand();
            let b = rand();
            let flip = rand() < 0.05;
            x.push(vec![a, b]);
            y.push((a > 0.5) != flip);
        }
        let m = Logistic::fit(&x, &y, 1e-3, 50).expect("fit");
        assert!(m.weights[0] > 5.0 * m.weights[1].abs(), "{m:?}");
        assert!(m.predict(&[0.9, 0.5]) > 0.8);
        assert!(m.predict(&[0.1, 0.5]) < 0.2);
    }

    #[test]
    fn fit_rejects_ragged_rows() {
        assert!(Logistic::fit(&[vec![1.0], vec![1.0, 2.0]], &[true, false], 0.0, 5).is_none());
        assert!(Logistic::fit(&[], &[], 0.0, 5).is_none());
    }
}
