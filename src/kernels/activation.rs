//! Activation functions, in the forms ggml computes them.

/// SiLU, `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (ggml's `gelu`, used by Gemma's GeGLU).
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// Gated unit: `gate[i] = act(gate[i]) * up[i]`.
pub fn glu(gate: &mut [f32], up: &[f32], act: fn(f32) -> f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = act(*g) * u;
    }
}

/// gpt-oss's clamped SwiGLU, as ggml's `swiglu_oai` (alpha 1.702, limit 7):
/// `gate[i] = x * sigmoid(1.702 x) * (clamp(up[i], ±7) + 1)` with `x = min(gate[i], 7)`.
pub fn swiglu_oai(gate: &mut [f32], up: &[f32]) {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = g.min(LIMIT);
        let y = u.clamp(-LIMIT, LIMIT);
        *g = x / (1.0 + (ALPHA * -x).exp()) * (y + 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(silu(0.0), 0.0);
    }

    #[test]
    fn swiglu_oai_clamps() {
        let mut g = [1.0, 20.0, -3.0];
        swiglu_oai(&mut g, &[0.5, 100.0, -100.0]);
        let s = |x: f32| x / (1.0 + (-1.702 * x).exp());
        assert!((g[0] - s(1.0) * 1.5).abs() < 1e-6);
        assert!((g[1] - s(7.0) * 8.0).abs() < 1e-5);
        assert!((g[2] - s(-3.0) * -6.0).abs() < 1e-6);
    }
}
