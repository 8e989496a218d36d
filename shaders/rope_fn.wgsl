// RoPE's angles, shared by rope.wgsl and the windowed attention (attention_stream.wgsl), which
// turns keys back to their pre-RoPE values. theta_i = pos * base^(-2i/n_rot) by repeated
// multiplication, as ggml and the CPU path do; `factor` is pair i's divisor (ggml's
// freq_factors; 1 when the model has none), applied to theta before the scaling. YaRN as ggml's
// rope_yarn (ext_factor 0: plain or linear): the ramp over [corr_lo, corr_hi] mixes interpolated
// and original angles, cos/sin times attn_factor * (1 + 0.1 ln(1/scale)).

struct Rope {
    n_head: u32,
    head_dim: u32,
    n_rot: u32,
    mode: u32,
    freq_base: f32,
    freq_scale: f32,
    ext_factor: f32,
    attn_factor: f32,
    corr_lo: f32,
    corr_hi: f32,
    // Positions past pos_max rotate as pos_max (the windowed path's queries for the sinks).
    pos_max: u32,
    _pad: u32,
}

// cos and sin of pair i at position pos, times the magnitude YaRN gives them.
fn rope_cs(r: Rope, pos: u32, i: u32, factor: f32) -> vec2<f32> {
    let theta_scale = pow(r.freq_base, -2.0 / f32(r.n_rot));
    var theta = f32(pos);
    for (var k = 0u; k < i; k++) {
        theta *= theta_scale;
    }
    theta = theta / factor;
    let interp = r.freq_scale * theta;
    var t = interp;
    var mscale = r.attn_factor;
    if (r.ext_factor != 0.0) {
        let ramp = (f32(i) - r.corr_lo) / max(0.001, r.corr_hi - r.corr_lo);
        let mix = (1.0 - clamp(ramp, 0.0, 1.0)) * r.ext_factor;
        t = interp * (1.0 - mix) + theta * mix;
        mscale *= 1.0 + 0.1 * log(1.0 / r.freq_scale);
    }
    return vec2<f32>(cos(t), sin(t)) * mscale;
}

// The two dims of a head that pair i rotates: adjacent ones (mode 0, ggml's "norm") or i and
// i + n_rot/2 (mode 2, "neox").
fn rope_dims(r: Rope, i: u32) -> vec2<u32> {
    if (r.mode == 2u) {
        return vec2<u32>(i, i + r.n_rot / 2u);
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}
