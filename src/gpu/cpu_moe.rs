//! The experts of a layer whose expert tensors stay in RAM (`--n-cpu-moe`): the GPU has routed
//! the batch (ids and weights per token, best first); the CPU kernels run the chosen experts,
//! each expert's tokens together as the reference MoE does, and return the weighted sum.

use crate::error::{Error, Result};
use crate::kernels::activation::{glu, silu};
use crate::kernels::linear;
use crate::model::weights::Ffn;

/// `h` (n, n_embd) → (n, n_embd): sum over each token's k slots of weight × expert output.
pub fn experts(ffn: &Ffn, n_embd: usize, h: &[f32], ids: &[u32], wts: &[f32]) -> Result<Vec<f32>> {
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
        let slot = routed
            .get_mut(x as usize)
            .ok_or_else(|| Error::Invalid(format!("GPU routing chose expert {x} of {n_expert}")))?;
        slot.push((z / k, wt));
    }
    let mut out = vec![0.0f32; n * e];
    for (x, toks) in routed.iter().enumerate() {
        if toks.is_empty() {
            continue;
        }
        let m = toks.len();
        let mut hx = Vec::with_capacity(m * e);
        for &(t, _) in toks {
            hx.extend_from_slice(&h[t * e..(t + 1) * e]);
        }
        let mut g = vec![0.0f32; m * n_ff];
        let mut u = vec![0.0f32; m * n_ff];
        linear(&gate.rows(x * n_ff, n_ff), &hx, m, &mut g);
        linear(&up.rows(x * n_ff, n_ff), &hx, m, &mut u);
        glu(&mut g, &u, silu);
        let mut d = vec![0.0f32; m * e];
        linear(&down.rows(x * e, e), &g, m, &mut d);
        for (i, &(t, wt)) in toks.iter().enumerate() {
            for (o, &v) in out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&d[i * e..(i + 1) * e])
            {
                *o += wt * v;
            }
        }
    }
    Ok(out)
}
