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

/// GELU as ggml's CPU backend computes it for f32 activations (`GGML_GELU_FP16`, on by default
/// in ggml-cpu, for `gelu` and the fused `geglu` alike): 0 below -10, `x` above 10, else the
/// argument rounded to f16 and looked up in a table of [`gelu`] rounded to f16. Matching it
/// brings Gemma's logits nearer llama.cpp's, and a lookup is far cheaper than `tanh`.
pub fn gelu_f16_table(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[half::f16::from_f32(x).to_bits() as usize]
    }
}

/// `f16(gelu(f16 value))` widened, for every f16 bit pattern.
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                half::f16::from_f32(gelu(x)).to_f32()
            })
            .collect()
    })
}

/// Gated unit: `gate[i] = act(gate[i]) * up[i]`.
pub fn glu(gate: &mut [f32], up: &[f32], act: fn(f32) -> f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = act(*g) * u;
    }
}

/// [`glu`] with [`gelu_f16_table`], sixteen values at a time where the CPU has AVX-512 (the
/// argument rounded to f16 by `vcvtps2ph`, the table read by a gather): equal to the scalar
/// loop bit for bit (NaN arguments give NaN either way). Gemma's GeGLU spent 8% of its prompt
/// time in the scalar loop (pp512, 1 thread, `perf record`, 2026-11-29).
pub fn glu_gelu_f16(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "glu: gate and up lengths");
    #[cfg(target_arch = "x86_64")]
    if super::qdot::selected_level() >= super::qdot::SimdLevel::Avx512Vnni {
        let n = gate.len() / 16 * 16;
        // SAFETY: the level's features (AVX-512 F/BW/VL, F16C) were detected.
        unsafe { glu_gelu_f16_avx512(&mut gate[..n], &up[..n], gelu_table()) };
        glu(&mut gate[n..], &up[n..], gelu_f16_table);
        return;
    }
    glu(gate, up, gelu_f16_table);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn glu_gelu_f16_avx512(gate: &mut [f32], up: &[f32], table: &[f32]) {
    use std::arch::x86_64::*;
    assert!(table.len() == 1 << 16 && gate.len() == up.len() && gate.len().is_multiple_of(16));
    for (g, u) in gate.chunks_exact_mut(16).zip(up.chunks_exact(16)) {
        // SAFETY: 16 values read and written per chunk; every gather index is a u16, inside the
        // 65536-entry table.
        unsafe {
            let x = _mm512_loadu_ps(g.as_ptr());
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
            let idx = _mm512_cvtepu16_epi32(h);
            let y = _mm512_i32gather_ps::<4>(idx, table.as_ptr());
            let low = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, _mm512_set1_ps(-10.0));
            let high = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(10.0));
            let y = _mm512_mask_mov_ps(y, high, x);
            let y = _mm512_mask_mov_ps(y, low, _mm512_setzero_ps());
            let r = _mm512_mul_ps(y, _mm512_loadu_ps(u.as_ptr()));
            _mm512_storeu_ps(g.as_mut_ptr(), r);
        }
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
    fn gelu_table_is_gelu_at_f16_precision() {
        assert_eq!(gelu_f16_table(-10.5), 0.0);
        assert_eq!(gelu_f16_table(12.0), 12.0);
        assert_eq!(gelu_f16_table(0.0), 0.0);
        for i in -2000..2000 {
            let x = i as f32 * 0.00493;
            let (want, got) = (gelu(x), gelu_f16_table(x));
            // Two f16 roundings: of the argument (gelu' is at most about 1.13) and of the value.
            let tol = 2.0 * 1.13 * x.abs().max(6.1e-5) / 1024.0 + want.abs() / 1024.0;
            assert!((got - want).abs() <= tol, "gelu({x}): {got} vs {want}");
        }
        assert!(gelu_f16_table(f32::NAN).is_nan());
    }

    #[test]
    fn simd_gelu_glu_matches_scalar() {
        let mut rng = crate::rng::Rng::new(4);
        let mut gate = rng.vec(16 * 200 + 7, 6.0);
        // Edges: the cut-offs, f16 ties and subnormals, huge values.
        let edges = [
            -10.0,
            10.0,
            -9.999,
            9.999,
            6.1e-5,
            -3.0e-8,
            1e-3 + 2.4e-7,
            60000.0,
            -1e9,
        ];
        gate[..edges.len()].copy_from_slice(&edges);
        let up = rng.vec(gate.len(), 2.0);
        let mut want = gate.clone();
        glu(&mut want, &up, gelu_f16_table);
        glu_gelu_f16(&mut gate, &up);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&gate), bits(&want));
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
