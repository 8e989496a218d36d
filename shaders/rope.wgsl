// Rotary position embedding in place over x (n_tok, n_head, head_dim), token t at position
// step.pos0 + t; only the first n_rot dims of a head rotate. mode 0 rotates adjacent pairs
// (x[2i], x[2i+1]) as ggml's "norm" RoPE, mode 2 rotates (x[i], x[i + n_rot/2]) as "neox".
// theta_i = pos * base^(-2i/n_rot) by repeated multiplication, as ggml and the CPU path do.
// YaRN as ggml's rope_yarn (ext_factor 0: plain or linear): the ramp over [corr_lo, corr_hi]
// mixes interpolated and original angles, cos/sin times attn_factor * (1 + 0.1 ln(1/scale)).
// factors: one divisor per pair (ggml's freq_factors, Llama 3.1's rope_freqs.weight; all 1
// when the model has none), applied to theta before the scaling.
// One invocation per (token, head, pair).

struct Params {
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
}

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read> factors: array<f32>;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = params.n_rot / 2u;
    let idx = gid.x;
    if (idx >= step.n_tok * params.n_head * half) {
        return;
    }
    let i = idx % half;
    let head = (idx / half) % params.n_head;
    let tok = idx / (half * params.n_head);
    let theta_scale = pow(params.freq_base, -2.0 / f32(params.n_rot));
    var theta = f32(step.pos0 + tok);
    for (var k = 0u; k < i; k++) {
        theta *= theta_scale;
    }
    theta = theta / factors[i];
    let interp = params.freq_scale * theta;
    var t = interp;
    var mscale = params.attn_factor;
    if (params.ext_factor != 0.0) {
        let ramp = (f32(i) - params.corr_lo) / max(0.001, params.corr_hi - params.corr_lo);
        let mix = (1.0 - clamp(ramp, 0.0, 1.0)) * params.ext_factor;
        t = interp * (1.0 - mix) + theta * mix;
        mscale *= 1.0 + 0.1 * log(1.0 / params.freq_scale);
    }
    let c = cos(t) * mscale;
    let s = sin(t) * mscale;
    let base = (tok * params.n_head + head) * params.head_dim;
    var a = base + 2u * i;
    var b = a + 1u;
    if (params.mode == 2u) {
        a = base + i;
        b = base + i + half;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
