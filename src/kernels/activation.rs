//! Activation functions, in the forms ggml computes them.

/// SiLU, `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation, in f32.
pub fn gelu_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// GELU as ggml's CPU backend computes it (used by Gemma's GeGLU): 0 below -10, identity above
/// 10, and in between a lookup table indexed by `x` rounded to f16 whose entries are rounded to
/// f16 too. The rounding is small but systematic; matching it moved a gemma3 greedy token that
/// the exact function flipped against llama.cpp (logit gap 0.54).
pub fn gelu(x: f32) -> f32 {
    use half::f16;
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let xr = f16::from_f32(x).to_f32();
        f16::from_f32(gelu_f32(xr)).to_f32()
    }
}

/// Gated unit: `gate[i] = act(gate[i]) * up[i]`.
pub fn glu(gate: &mut [f32], up: &[f32], act: fn(f32) -> f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = act(*g) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_f32(1.0) - 0.841_192).abs() < 1e-5);
        // ggml's table form: f16 in, f16 out.
        assert_eq!(gelu(1.0), half::f16::from_f32(0.841_192).to_f32());
        assert_eq!(gelu(-11.0), 0.0);
        assert_eq!(gelu(12.5), 12.5);
        for i in -1000..1000 {
            let x = i as f32 * 0.01;
            assert!(
                (gelu(x) - gelu_f32(x)).abs() <= 2e-3 * (1.0 + x.abs()),
                "{x}"
            );
        }
        assert_eq!(silu(0.0), 0.0);
    }
}
