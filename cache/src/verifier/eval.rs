//! Scoring labelled pairs, precision/recall curves, operating points and the by-question
//! split shared by training and evals.

use serde::{Deserialize, Serialize};

use super::{cosine, Verifier};

/// One labelled pair with both texts' pooled embeddings.
#[derive(Debug, Clone)]
pub struct EvalPair<'a> {
    pub text_a: &'a str,
    pub text_b: &'a str,
    pub emb_a: &'a [f32],
    pub emb_b: &'a [f32],
}

/// Per-pair similarity: the verifier's probability when one is given, else plain cosine.
pub fn pair_scores(pairs: &[EvalPair<'_>], verifier: Option<&Verifier>) -> Vec<f32> {
    pairs
        .iter()
        .map(|p| match verifier {
            Some(v) => v.score(p.text_a, p.text_b, p.emb_a, p.emb_b),
            None => cosine(p.emb_a, p.emb_b),
        })
        .collect()
}

/// Precision, recall and F1 of "score ≥ threshold means duplicate".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    pub threshold: f32,
    pub precision: f32,
    pub recall: f32,
    pub f1: f32,
    pub true_pos: usize,
    pub false_pos: usize,
    pub false_neg: usize,
}

/// The point at one threshold. Precision is 1 when nothing is predicted (no wrong answer
/// served), which the recall of 0 makes plain.
pub fn pr_at(scores: &[f32], labels: &[bool], threshold: f32) -> PrPoint {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        match (s >= threshold, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let precision = if tp + fp == 0 {
        1.0
    } else {
        tp as f32 / (tp + fp) as f32
    };
    let recall = if tp + fn_ == 0 {
        0.0
    } else {
        tp as f32 / (tp + fn_) as f32
    };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    PrPoint {
        threshold,
        precision,
        recall,
        f1,
        true_pos: tp,
        false_pos: fp,
        false_neg: fn_,
    }
}

/// Points at each of `thresholds`.
pub fn pr_curve(scores: &[f32], labels: &[bool], thresholds: &[f32]) -> Vec<PrPoint> {
    thresholds
        .iter()
        .map(|&t| pr_at(scores, labels, t))
        .collect()
}

/// `steps + 1` evenly spaced thresholds from `lo` to `hi`.
pub fn thresholds(lo: f32, hi: f32, steps: usize) -> Vec<f32> {
    (0..=steps)
        .map(|i| lo + (hi - lo) * i as f32 / steps.max(1) as f32)
        .collect()
}

/// The lowest threshold (most recall) whose precision is at least `target`, with at least
/// `min_predicted` pairs predicted positive so that one lucky pair does not set it; `None`
/// when no such threshold exists. Candidate thresholds are the observed scores.
pub fn threshold_for_precision(
    scores: &[f32],
    labels: &[bool],
    target: f32,
    min_predicted: usize,
) -> Option<f32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best = None;
    let mut k = 0;
    while k < order.len() {
        // Take every pair tied at this score together.
        let s = scores[order[k]];
        while k < order.len() && scores[order[k]] == s {
            if labels[order[k]] {
                tp += 1;
            } else {
                fp += 1;
            }
            k += 1;
        }
        if tp + fp >= min_predicted && tp as f32 >= target * (tp + fp) as f32 {
            best = Some(s);
        }
    }
    best
}

/// Which part of the data a pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Fits the model.
    Fit,
    /// Picks the operating threshold.
    Calibrate,
    /// Measures; never seen by training.
    Validate,
}

/// Lower-cased alphanumeric words joined by single spaces: questions that differ only in case,
/// punctuation or spacing count as one question for the split.
pub fn normalise_question(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The split of one question: a hash of its normalised text into 100 buckets, 50 fit,
/// 20 calibrate, 30 validate.
pub fn question_split(text: &str) -> Split {
    let h = blake3::hash(normalise_question(text).as_bytes());
    let b = h.as_bytes();
    let bucket = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % 100;
    match bucket {
        0..=49 => Split::Fit,
        50..=69 => Split::Calibrate,
        _ => Split::Validate,
    }
}

/// A pair's split: both questions must hash to the same part; pairs straddling two parts are
/// dropped (`None`), so no question text appears on two sides.
pub fn pair_split(a: &str, b: &str) -> Option<Split> {
    let (sa, sb) = (question_split(a), question_split(b));
    (sa == sb).then_some(sa)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pr_counts_and_threshold_choice() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
        let labels = [true, true, false, true, false, false];
        let p = pr_at(&scores, &labels, 0.65);
        assert_eq!((p.true_pos, p.false_pos, p.false_neg), (2, 1, 1));
        assert!((p.precision - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(threshold_for_precision(&scores, &labels, 1.0, 1), Some(0.8));
        assert_eq!(
            threshold_for_precision(&scores, &labels, 0.75, 1),
            Some(0.6)
        );
        assert_eq!(threshold_for_precision(&scores, &labels, 1.0, 3), None);
        assert_eq!(pr_at(&scores, &labels, 2.0).precision, 1.0);
    }

    #[test]
    fn split_ignores_case_and_punctuation_and_keeps_questions_on_one_side() {
        assert_eq!(
            question_split("What is the purpose of life ?"),
            question_split("what is the purpose of life?")
        );
        let qs: Vec<String> = (0..1000).map(|i| format!("question number {i}")).collect();
        let val = qs
            .iter()
            .filter(|q| question_split(q) == Split::Validate)
            .count();
        assert!((220..380).contains(&val), "{val}");
        for q in &qs {
            if let Some(s) = pair_split(q, q) {
                assert_eq!(s, question_split(q));
            }
        }
    }
}

/// Precision–recall curves as an SVG document (x: recall, y: precision), one line per named
/// curve, for `switchyard eval cache`.
pub fn pr_svg(title: &str, curves: &[(&str, &[PrPoint])]) -> Result<String, String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f32..1f32, 0f32..1f32)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("recall")
            .y_desc("precision")
            .draw()
            .map_err(|e| e.to_string())?;
        let colours = [BLUE, RED, GREEN, MAGENTA, BLACK];
        for (k, (name, points)) in curves.iter().enumerate() {
            let colour = colours[k % colours.len()];
            let mut line: Vec<(f32, f32)> = points
                .iter()
                .filter(|p| p.true_pos + p.false_pos > 0)
                .map(|p| (p.recall, p.precision))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod svg_tests {
    use super::*;

    #[test]
    fn svg_has_one_path_per_curve() {
        let scores = [0.9, 0.8, 0.7, 0.6];
        let labels = [true, false, true, false];
        let pts = pr_curve(&scores, &labels, &thresholds(0.5, 1.0, 10));
        let svg = pr_svg("test", &[("a", &pts), ("b", &pts)]).expect("svg");
        assert!(svg.starts_with("<svg"));
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
    }
}
