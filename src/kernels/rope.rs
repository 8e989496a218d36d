//! Rotary position embedding. Two layouts, as in ggml: `Norm` rotates adjacent pairs
//! `(x[2i], x[2i+1])` (llama, whose converter permutes Q/K to match), `Neox` rotates
//! `(x[i], x[i + d/2])` (qwen2, qwen3, gemma3, …). Only the first `n_rot` dims of a head rotate.
//!
//! Context extension follows ggml's `rope_yarn`: `freq_scale` (1/factor) interpolates every
//! angle (linear scaling); with YaRN (`ext_factor` > 0) the fast dims, below the correction
//! range fixed by `beta_fast`/`beta_slow` over `n_ctx_orig`, keep their original angle, the
//! slow dims are interpolated, a ramp mixes the ones between, and cos/sin are multiplied by
//! `attn_factor * (1 + 0.1 ln(1/freq_scale))`.

use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    Norm,
    Neox,
}

/// YaRN's parameters as ggml's rope op takes them (`ext_factor` 0: plain or linear RoPE).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// The context the model was trained for (llama.cpp's `n_ctx_orig_yarn`).
    pub n_ctx_orig: usize,
}

impl Yarn {
    /// No extrapolation mix and no magnitude change: plain (or linearly scaled) RoPE.
    pub const NONE: Yarn = Yarn {
        ext_factor: 0.0,
        attn_factor: 1.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        n_ctx_orig: 0,
    };

    /// The dims `[low, high]` between which the ramp mixes interpolated and original angles
    /// (ggml_rope_yarn_corr_dims, in f32 as there).
    pub fn corr_dims(&self, n_rot: usize, freq_base: f32) -> [f32; 2] {
        let corr_dim = |beta: f32| {
            n_rot as f32 * (self.n_ctx_orig as f32 / (beta * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * freq_base.ln())
        };
        let start = corr_dim(self.beta_fast).floor();
        let end = corr_dim(self.beta_slow).ceil();
        [start.max(0.0), end.min(n_rot as f32 - 1.0)]
    }
}

/// Precomputed angles for one position: `cos/sin(pos * base^(-2i/n_rot) / factor_i *
/// freq_scale)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub kind: RopeKind,
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub yarn: Yarn,
    /// Per-pair frequency divisors (`rope_freqs.weight`, ggml's `freq_factors`: Llama 3.1's
    /// long-context RoPE), `n_rot / 2` of them; `None`: all 1.
    pub factors: Option<Arc<[f32]>>,
}

impl RopeParams {
    /// `(cos, sin)` of each of the `n_rot / 2` pairs at position `pos`, times YaRN's magnitude.
    pub fn angles(&self, pos: usize) -> Vec<(f32, f32)> {
        let half = self.n_rot / 2;
        // theta_i = pos * base^(-2i/n_rot), computed as ggml does: repeated multiplication.
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let y = &self.yarn;
        let corr = if y.ext_factor != 0.0 {
            y.corr_dims(self.n_rot, self.freq_base)
        } else {
            [0.0; 2]
        };
        let mut cs = Vec::with_capacity(half);
        let mut theta_base = pos as f32;
        for i in 0..half {
            // ggml divides the extrapolated angle by the pair's factor before YaRN's mix.
            let theta = self
                .factors
                .as_ref()
                .map_or(theta_base, |f| theta_base / f[i]);
            let interp = self.freq_scale * theta;
            let (mut t, mut mscale) = (interp, y.attn_factor);
            if y.ext_factor != 0.0 {
                let ramp = (i as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
                let mix = (1.0 - ramp.clamp(0.0, 1.0)) * y.ext_factor;
                t = interp * (1.0 - mix) + theta * mix;
                mscale *= 1.0 + 0.1 * (1.0 / self.freq_scale).ln();
            }
            cs.push((t.cos() * mscale, t.sin() * mscale));
            theta_base *= theta_scale;
        }
        cs
    }

    /// Rotates every head of `x` (`n_head` heads of `head_dim`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let cs = self.angles(pos);
        let half = self.n_rot / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = self.pair(i, half);
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }

    /// The inverse of [`RopeParams::apply`] at `pos`: rotates back and divides out YaRN's
    /// magnitude (exactly 1 without YaRN, so plain RoPE is only rotated back).
    pub fn unapply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let cs = self.angles(pos);
        let half = self.n_rot / 2;
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = self.pair(i, half);
                let m2 = c * c + s * s;
                let (c, s) = if self.yarn.ext_factor != 0.0 || self.yarn.attn_factor != 1.0 {
                    (c / m2, s / m2)
                } else {
                    (c, s)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c + x1 * s;
                head[b] = x1 * c - x0 * s;
            }
        }
    }

    /// The magnitude cos/sin carry: 1 without YaRN.
    pub fn mscale(&self) -> f32 {
        let (c, s) = self.angles(0).first().copied().unwrap_or((1.0, 0.0));
        (c * c + s * s).sqrt()
    }

    fn pair(&self, i: usize, half: usize) -> (usize, usize) {
        match self.kind {
            RopeKind::Norm => (2 * i, 2 * i + 1),
            RopeKind::Neox => (i, i + half),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: RopeKind, freq_scale: f32, yarn: Yarn) -> RopeParams {
        RopeParams {
            kind,
            n_rot: 64,
            freq_base: 1_000_000.0,
            freq_scale,
            yarn,
            factors: None,
        }
    }

    fn yarn4() -> Yarn {
        // What llama.cpp resolves for --rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 32768:
        // attn_factor = get_mscale(4) / (1 + 0.1 ln 4) = 1; the kernel applies 1 + 0.1 ln 4.
        Yarn {
            ext_factor: 1.0,
            attn_factor: 1.0,
            n_ctx_orig: 32768,
            ..Yarn::NONE
        }
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for kind in [RopeKind::Norm, RopeKind::Neox] {
            let p = RopeParams {
                kind,
                n_rot: 8,
                freq_base: 10000.0,
                freq_scale: 1.0,
                yarn: Yarn::NONE,
                factors: None,
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

    /// Linear scaling by 1/4 at position 4p is plain RoPE at position p.
    #[test]
    fn linear_scaling_divides_positions() {
        let lin = params(RopeKind::Neox, 0.25, Yarn::NONE);
        let plain = params(RopeKind::Neox, 1.0, Yarn::NONE);
        for p in [1usize, 7, 1000] {
            let (a, b) = (lin.angles(4 * p), plain.angles(p));
            for ((c0, s0), (c1, s1)) in a.iter().zip(&b) {
                assert!((c0 - c1).abs() < 2e-3 && (s0 - s1).abs() < 2e-3, "{p}");
            }
        }
    }

    /// YaRN keeps the fastest dims' angles, interpolates the slowest, and scales cos/sin by
    /// 1 + 0.1 ln 4 once llama.cpp's attn_factor has cancelled its own copy of that factor.
    #[test]
    fn yarn_keeps_fast_dims_and_interpolates_slow_ones() {
        let y = params(RopeKind::Neox, 0.25, yarn4());
        let [lo, hi] = y.yarn.corr_dims(64, 1_000_000.0);
        // n_rot * ln(32768 / (beta * 2 pi)) / (2 ln 1e6), floored / ceiled.
        assert_eq!((lo, hi), (11.0, 20.0));
        let ms = 1.0 + 0.1 * 4f32.ln();
        assert!((y.mscale() - ms).abs() < 1e-6);
        let pos = 12345;
        let plain = params(RopeKind::Neox, 1.0, Yarn::NONE).angles(pos);
        let lin = params(RopeKind::Neox, 0.25, Yarn::NONE).angles(pos);
        let got = y.angles(pos);
        for i in 0..32 {
            let want = if i <= 11 {
                plain[i]
            } else if i >= 20 {
                lin[i]
            } else {
                continue;
            };
            assert!((got[i].0 - ms * want.0).abs() < 1e-5, "dim {i}");
            assert!((got[i].1 - ms * want.1).abs() < 1e-5, "dim {i}");
        }
    }

    #[test]
    fn unapply_inverts_apply() {
        for (scale, yarn) in [(1.0, Yarn::NONE), (0.5, Yarn::NONE), (0.25, yarn4())] {
            for kind in [RopeKind::Norm, RopeKind::Neox] {
                let mut y = yarn;
                y.attn_factor *= 1.3; // a magnitude that does not cancel
                let p = params(kind, scale, y);
                let orig: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
                let mut x = orig.clone();
                p.apply(&mut x, 64, 40_000);
                p.unapply(&mut x, 64, 40_000);
                for (a, b) in x.iter().zip(&orig) {
                    assert!((a - b).abs() < 1e-5, "{scale} {kind:?}");
                }
            }
        }
    }
}
