//! Nearest rows by prompt embedding, the one notion of "what the log says about prompts like
//! this" that the learner (its smoothed rating targets) and the gate (its reward model) share.

/// At most this share of the rows a model served make one neighbourhood, so a model explored
/// on a few dozen rows is not flattened to its mean. Measured on the learning bench's logs
/// (bench/README.md, "The learner"): at 5% the 2,205-row log lost most of the gain of 40
/// neighbours; with no cap a 386-row log routed worse than the start.
pub const LOCAL_SHARE: f64 = 0.2;

/// Neighbours a neighbourhood of `k` holds among `served` rows.
pub fn neighbourhood(k: usize, served: usize) -> usize {
    k.min((served as f64 * LOCAL_SHARE).round() as usize).max(1)
}

/// The embeddings scaled to unit length, one after another (cosine becomes a dot product).
pub fn unit_length<'e>(embeddings: impl IntoIterator<Item = &'e [f32]>) -> Vec<f32> {
    let mut unit = Vec::new();
    for e in embeddings {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        unit.extend(e.iter().map(|x| x / norm));
    }
    unit
}

/// Leaves the `take` rows most similar first in `order` (indices into `similarity`), ties by
/// index, and returns them.
pub fn most_similar<'o>(similarity: &[f32], take: usize, order: &'o mut Vec<u32>) -> &'o [u32] {
    order.clear();
    order.extend(0..similarity.len() as u32);
    let take = take.min(order.len());
    if take == 0 {
        return &order[..0];
    }
    order.select_nth_unstable_by(take - 1, |&a, &b| similarity[b as usize].total_cmp(&similarity[a as usize]).then(a.cmp(&b)));
    &order[..take]
}

/// Calls `visit(i, nearest)` for every row `i` of `queries` (m × dim) with the `take` rows of
/// `reference` (n × dim) most similar to it by dot product ([`most_similar`]). One matrix
/// product per block of query rows, so memory stays at a block × n.
pub fn each_nearest(queries: &candle_core::Tensor, reference: &candle_core::Tensor, take: usize, mut visit: impl FnMut(usize, &[u32])) -> crate::error::Result<()> {
    const BLOCK: usize = 1024;
    let transposed = reference.t()?.contiguous()?;
    let m = queries.dim(0)?;
    let mut order = Vec::new();
    for first in (0..m).step_by(BLOCK) {
        let rows = BLOCK.min(m - first);
        let similarity = queries.narrow(0, first, rows)?.matmul(&transposed)?.to_vec2::<f32>()?;
        for (offset, row) in similarity.iter().enumerate() {
            visit(first + offset, most_similar(row, take, &mut order));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbourhood_is_at_most_a_fifth_of_what_a_model_served() {
        assert_eq!(neighbourhood(40, 1_000), 40);
        assert_eq!(neighbourhood(40, 50), 10);
        assert_eq!(neighbourhood(40, 2), 1);
    }

    #[test]
    fn the_most_similar_rows_come_first_ties_by_index() {
        let mut order = Vec::new();
        let mut picked = most_similar(&[0.1, 0.9, 0.5, 0.9], 3, &mut order).to_vec();
        picked.sort_unstable();
        assert_eq!(picked, vec![1, 2, 3]);
        assert_eq!(most_similar(&[0.7, 0.7, 0.7], 1, &mut order), &[0]);
        assert_eq!(most_similar(&[], 3, &mut order), &[] as &[u32]);
        let unit = unit_length([&[3.0f32, 4.0][..], &[0.0, 2.0][..]]);
        assert_eq!(unit, vec![0.6, 0.8, 0.0, 1.0]);
    }
}
