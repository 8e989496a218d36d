//! Rotary position embedding. Two layouts, as in ggml: `Norm` rotates adjacent pairs
//! `(x[2i], x[2i+1])` (llama, whose converter permutes Q/K to match), `Neox` rotates
//! `(x[i], x[i + d/2])` (qwen2, qwen3, gemma3, …). Only the first `n_rot` dims of a head rotate.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    Norm,
    Neox,
}

/// Precomputed angles for one position: `cos/sin(pos * base^(-2i/n_rot) * freq_scale)`.
pub struct RopeParams {
    pub kind: RopeKind,
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
}

impl RopeParams {
    /// Rotates every head of `x` (`n_head` heads of `head_dim`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let half = self.n_rot / 2;
        // theta_i = pos * base^(-2i/n_rot), computed as ggml does: repeated multiplication.
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let mut cs = Vec::with_capacity(half);
        let mut theta = pos as f32;
        for _ in 0..half {
            let t = theta * self.freq_scale;
            cs.push((t.cos(), t.sin()));
            theta *= theta_scale;
        }
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = match self.kind {
                    RopeKind::Norm => (2 * i, 2 * i + 1),
                    RopeKind::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for kind in [RopeKind::Norm, RopeKind::Neox] {
            let p = RopeParams {
                kind,
                n_rot: 8,
                freq_base: 10000.0,
                freq_scale: 1.0,
            };
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 1.0).collect();
            let mut x = orig.clone();
            p.apply(&mut x, 8, 0);
            assert_eq!(x, orig);
            p.apply(&mut x, 8, 17);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
        }
    }
}
