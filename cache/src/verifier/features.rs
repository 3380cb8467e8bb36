//! Pair features: what mean pooling loses, cheaply.

use foldhash::HashSet;

use super::text::{kendall_tau, shared_order, unmatched_entities, Analysed};

/// Last-layer token vectors of both texts (unit rows), for BERTScore-style alignment.
#[derive(Debug, Clone, Copy)]
pub struct TokenPair<'a> {
    pub query: &'a [Vec<f32>],
    pub cached: &'a [Vec<f32>],
}

/// Names of the lexical + embedding features, in vector order.
pub const BASE_FEATURES: &[&str] = &[
    "cos",
    "cos_sq",
    "lemma_jaccard",
    "content_jaccard",
    "content_cover_min",
    "content_cover_max",
    "unshared_content_min",
    "unshared_content_max",
    "order_tau",
    "length_ratio",
    "abs_log_length_ratio",
    "entities_unmatched_min",
    "entities_unmatched_max",
    "wh_mismatch",
    "content_bigram_jaccard",
    "char_trigram_jaccard",
    "cos_x_content_jaccard",
];

/// Extra features from token alignment (need [`TokenPair`]).
pub const TOKEN_FEATURES: &[&str] = &[
    "align_precision",
    "align_recall",
    "align_f1",
    "align_min",
    "align_worst_token",
];

fn jaccard<T: Eq + std::hash::Hash>(a: &HashSet<T>, b: &HashSet<T>) -> f32 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f32 / union as f32
}

fn bigrams(words: &[String]) -> HashSet<(&str, &str)> {
    words
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect()
}

fn trigrams(text: &str) -> HashSet<[char; 3]> {
    let chars: Vec<char> = text
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    chars.windows(3).map(|w| [w[0], w[1], w[2]]).collect()
}

/// Base features of a pair (see [`BASE_FEATURES`]).
pub(crate) fn base_features(
    qa: &Analysed,
    ca: &Analysed,
    query: &str,
    cached: &str,
    cos: f32,
) -> Vec<f32> {
    let la = qa.lemma_set();
    let lb = ca.lemma_set();
    let sa = qa.content_set();
    let sb = ca.content_set();
    let shared = sa.intersection(&sb).count() as f32;
    let cover_a = if sa.is_empty() {
        1.0
    } else {
        shared / sa.len() as f32
    };
    let cover_b = if sb.is_empty() {
        1.0
    } else {
        shared / sb.len() as f32
    };
    let un_a = (sa.len() as f32 - shared).max(0.0);
    let un_b = (sb.len() as f32 - shared).max(0.0);
    let order = shared_order(qa, ca);
    let na = qa.words.len().max(1) as f32;
    let nb = ca.words.len().max(1) as f32;
    let ea = unmatched_entities(qa, ca) as f32;
    let eb = unmatched_entities(ca, qa) as f32;
    let wh_mismatch = match (qa.wh, ca.wh) {
        (Some(x), Some(y)) if x != y => 1.0,
        _ => 0.0,
    };
    let content_j = jaccard(&sa, &sb);
    vec![
        cos,
        cos * cos,
        jaccard(&la, &lb),
        content_j,
        cover_a.min(cover_b),
        cover_a.max(cover_b),
        (1.0 + un_a.min(un_b)).ln(),
        (1.0 + un_a.max(un_b)).ln(),
        kendall_tau(&order),
        na.min(nb) / na.max(nb),
        (na / nb).ln().abs(),
        ea.min(eb),
        ea.max(eb),
        wh_mismatch,
        jaccard(&bigrams(&qa.content), &bigrams(&ca.content)),
        jaccard(&trigrams(query), &trigrams(cached)),
        cos * content_j,
    ]
}

/// Greedy token alignment (BERTScore without idf): for each token of one text, its best
/// cosine in the other. A word with no counterpart shows up as a low maximum, which a mean
/// over all tokens hides.
pub(crate) fn token_features(tokens: TokenPair<'_>) -> Vec<f32> {
    let (a, b) = (tokens.query, tokens.cached);
    if a.is_empty() || b.is_empty() {
        return vec![0.0; TOKEN_FEATURES.len()];
    }
    let mut best_a = vec![f32::MIN; a.len()];
    let mut best_b = vec![f32::MIN; b.len()];
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            let s = crate::semantic::dot(x, y);
            if s > best_a[i] {
                best_a[i] = s;
            }
            if s > best_b[j] {
                best_b[j] = s;
            }
        }
    }
    let p = best_a.iter().sum::<f32>() / a.len() as f32;
    let r = best_b.iter().sum::<f32>() / b.len() as f32;
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    let worst = best_a
        .iter()
        .chain(best_b.iter())
        .copied()
        .fold(f32::MAX, f32::min);
    vec![p.max(r), p.min(r), f1, p.min(r) - p.max(r), worst]
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_have_full_overlap() {
        let a = Analysed::new("How do I learn Rust quickly?");
        let f = base_features(
            &a,
            &a,
            "How do I learn Rust quickly?",
            "How do I learn Rust quickly?",
            1.0,
        );
        assert_eq!(f.len(), BASE_FEATURES.len());
        assert_eq!(f[2], 1.0);
        assert_eq!(f[3], 1.0);
        assert_eq!(f[8], 1.0);
        assert_eq!(f[12], 0.0);
    }

    #[test]
    fn alignment_flags_an_unmatched_token() {
        let e = |i: usize| {
            let mut v = vec![0.0f32; 4];
            v[i] = 1.0;
            v
        };
        let a = vec![e(0), e(1)];
        let b = vec![e(0), e(2)];
        let f = token_features(TokenPair {
            query: &a,
            cached: &b,
        });
        assert_eq!(f.len(), TOKEN_FEATURES.len());
        assert!((f[0] - 0.5).abs() < 1e-6);
        assert!((f[4] - 0.0).abs() < 1e-6);
        let same = token_features(TokenPair {
            query: &a,
            cached: &a,
        });
        assert!((same[2] - 1.0).abs() < 1e-6);
    }
}
