//! The experts of a layer whose expert tensors stay in RAM (`--n-cpu-moe`): the GPU has routed
//! the batch (ids and weights per token, best first); the CPU's own MoE path
//! (`model::moe::swiglu_experts`) runs the chosen experts and returns the weighted sum.

use crate::error::{Error, Result};
use crate::model::weights::Ffn;

/// `h` (n, n_embd) → (n, n_embd): sum over each token's k slots of weight × expert output, but
/// for the slots `served` marks (the GPU's expert cache runs those).
pub fn experts(
    ffn: &Ffn,
    n_embd: usize,
    h: &[f32],
    ids: &[u32],
    wts: &[f32],
    served: &[bool],
) -> Result<Vec<f32>> {
    let Ffn::Moe {
        gate,
        up,
        down,
        n_ff,
        ..
    } = ffn
    else {
        return Err(Error::Invalid("CPU experts asked of a dense layer".into()));
    };
    let (e, n_ff) = (n_embd, *n_ff);
    let n = h.len() / e;
    let k = ids.len() / n.max(1);
    let n_expert = gate.n_rows / n_ff;
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_expert];
    for (z, (&x, &wt)) in ids.iter().zip(wts).enumerate() {
        if served.get(z) == Some(&true) {
            continue;
        }
        let slot = routed
            .get_mut(x as usize)
            .ok_or_else(|| Error::Invalid(format!("GPU routing chose expert {x} of {n_expert}")))?;
        slot.push((z / k, wt));
    }
    Ok(crate::model::moe::swiglu_experts(
        (gate, up, down),
        n_ff,
        h,
        e,
        &routed,
    ))
}
