//! Expert routing as data: one token's router logits → its chosen experts and their weights, the
//! way llama.cpp's `build_moe_ffn` computes them for each `Routing` of the architecture table.
//!
//! Steps, in llama.cpp's order: score every expert (softmax, sigmoid, or the raw logits); add the
//! selection bias, which moves the choice but not the weights (DeepSeek V3); with expert groups,
//! keep only the groups whose two best (biased) scores sum highest; take the top k; take
//! the chosen scores as weights (a softmax over the k for top-k-then-softmax); divide by their sum
//! when the architecture normalises (the sum clamped below at f16's smallest normal, as ggml
//! does); multiply by the file's weight scale.

use super::arch::{Gating, Routing};
use super::moe::top_k;
use crate::kernels::softmax::softmax;

/// ggml's clamp of the weight sum before normalising (the smallest normal f16).
const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

/// Options of one routing step beyond the architecture's `Routing`.
#[derive(Debug, Clone, Copy)]
pub struct RouteParams<'a> {
    pub routing: Routing,
    /// Experts per token.
    pub k: usize,
    /// Added to the scores for choosing only (`exp_probs_b`), one per expert.
    pub selection_bias: Option<&'a [f32]>,
    /// Multiplies the final weights (`{arch}.expert_weights_scale`; 1 for none).
    pub scale: f32,
    /// Expert groups and how many of them a token may use (0 or 1 group: no limit).
    pub n_group: usize,
    pub n_group_used: usize,
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `logits` (n_expert) of one token → (expert, weight) pairs, best first.
pub fn route(p: &RouteParams, logits: &[f32]) -> Vec<(usize, f32)> {
    route_with(p, logits, &mut |select| top_k(select, p.k))
}

/// [`route`] with the experts chosen by `choose` from the selection scores (the scores after
/// gating, selection bias and group masking: what top-k ranks), best first. Dynamic expert
/// counts (`moe_select`) plug in here; weights then follow the architecture's own rule over
/// the chosen experts.
pub fn route_with(
    p: &RouteParams,
    logits: &[f32],
    choose: &mut dyn FnMut(&[f32]) -> Vec<usize>,
) -> Vec<(usize, f32)> {
    let mut scores = logits.to_vec();
    match p.routing.gating {
        Gating::Softmax => softmax(&mut scores),
        Gating::Sigmoid => scores.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Gating::TopKThenSoftmax => {}
    }
    let mut select: Vec<f32> = match p.selection_bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    if p.n_group > 1 {
        mask_groups(&mut select, p.n_group, p.n_group_used);
    }
    let chosen = choose(&select);
    let mut w: Vec<f32> = chosen.iter().map(|&x| scores[x]).collect();
    if p.routing.gating == Gating::TopKThenSoftmax {
        softmax(&mut w);
    }
    if p.routing.norm {
        let sum = w.iter().sum::<f32>().max(MIN_WEIGHT_SUM);
        w.iter_mut().for_each(|v| *v /= sum);
    }
    if p.scale != 0.0 && p.scale != 1.0 {
        w.iter_mut().for_each(|v| *v *= p.scale);
    }
    chosen.into_iter().zip(w).collect()
}

/// Group-limited routing: `select` is `n_group` consecutive groups; all but the `n_used` groups
/// with the highest sum of their two best scores are set to -inf.
fn mask_groups(select: &mut [f32], n_group: usize, n_used: usize) {
    let size = select.len() / n_group;
    let group_score: Vec<f32> = select
        .chunks_exact(size)
        .map(|g| top_k(g, 2).iter().map(|&i| g[i]).sum())
        .collect();
    let keep = top_k(&group_score, n_used);
    for (gi, g) in select.chunks_exact_mut(size).enumerate() {
        if !keep.contains(&gi) {
            g.fill(f32::NEG_INFINITY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(gating: Gating, norm: bool) -> RouteParams<'static> {
        RouteParams {
            routing: Routing {
                gating,
                norm,
                from_metadata: false,
            },
            k: 2,
            selection_bias: None,
            scale: 1.0,
            n_group: 0,
            n_group_used: 0,
        }
    }

    fn close(a: &[(usize, f32)], b: &[(usize, f32)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-6)
    }

    const LOGITS: [f32; 4] = [1.0, 3.0, -2.0, 2.0];

    #[test]
    fn softmax_then_top_k() {
        let e: Vec<f32> = LOGITS.iter().map(|v| v.exp()).collect();
        let z: f32 = e.iter().sum();
        let raw = route(&params(Gating::Softmax, false), &LOGITS);
        assert!(close(&raw, &[(1, e[1] / z), (3, e[3] / z)]));
        let norm = route(&params(Gating::Softmax, true), &LOGITS);
        let s = e[1] + e[3];
        assert!(close(&norm, &[(1, e[1] / s), (3, e[3] / s)]));
    }

    #[test]
    fn top_k_then_softmax_equals_normalised_softmax() {
        // Softmax over the chosen k is the normalised full softmax restricted to them.
        let a = route(&params(Gating::TopKThenSoftmax, false), &LOGITS);
        let b = route(&params(Gating::Softmax, true), &LOGITS);
        assert!(close(&a, &b));
    }

    #[test]
    fn sigmoid_bias_moves_choice_not_weight() {
        let bias = [0.0, 0.0, 5.0, 0.0];
        let p = RouteParams {
            selection_bias: Some(&bias),
            scale: 2.5,
            ..params(Gating::Sigmoid, true)
        };
        let r = route(&p, &LOGITS);
        let (s2, s1) = (sigmoid(-2.0), sigmoid(3.0));
        // Expert 2 is chosen for its bias, weighted by its unbiased score.
        assert!(close(
            &r,
            &[(2, 2.5 * s2 / (s2 + s1)), (1, 2.5 * s1 / (s2 + s1))]
        ));
    }

    #[test]
    fn tiny_sums_are_clamped_as_ggml_does() {
        let p = RouteParams {
            k: 1,
            ..params(Gating::Sigmoid, true)
        };
        let r = route(&p, &[-30.0, -40.0]);
        assert_eq!(r[0].0, 0);
        assert!((r[0].1 - sigmoid(-30.0) / MIN_WEIGHT_SUM).abs() < 1e-9);
    }

    #[test]
    fn groups_limit_the_choice() {
        // Groups {0,1} (best two sum 0.9 + 0.0), {2,3} (0.5 + 0.5): the second wins although
        // expert 0 is the best single expert.
        let logits = [0.9, 0.0, 0.5, 0.5];
        let p = RouteParams {
            n_group: 2,
            n_group_used: 1,
            ..params(Gating::TopKThenSoftmax, false)
        };
        let r = route(&p, &logits);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 3]);
    }
}
