// Activations rounded to the 8-bit grid the CPU dots them on (ggml's `vec_dot_type` of the
// weight type), written back as f32: out = d * q. With them the GPU's products match the CPU's
// quantized kernels up to summation order rather than differing by the activations' rounding.
// One invocation per block; step.n_tok rows of `per_tok` values (whole blocks).
//
// q8_0: 32 values, d = amax / 127 kept as f16, q = round(x / d) halves away from zero
// (quantize_row_q8_0_ref; Q8_1's values are the same). q8_k: 256 values, iscale = -127 / max
// (the value of largest magnitude), q = nearest_int(iscale * x) (halves to even) at most 127,
// d = 1 / iscale (quantize_row_q8_K_ref).

struct Params {
    per_tok: u32,
}

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<uniform> step: Step;

fn block_index(gid: vec3<u32>) -> u32 {
    return gid.y * 4194240u + gid.x;
}

@compute @workgroup_size(64)
fn q8_0(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = block_index(gid);
    if (b >= step.n_tok * params.per_tok / 32u) {
        return;
    }
    let base = b * 32u;
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(x[base + i]));
    }
    let d = amax / 127.0;
    var id = 0.0;
    if (d != 0.0) {
        id = 1.0 / d;
    }
    let dh = unpack2x16float(pack2x16float(vec2<f32>(d, 0.0))).x;
    for (var i = 0u; i < 32u; i++) {
        let v = x[base + i] * id;
        out[base + i] = dh * (sign(v) * floor(abs(v) + 0.5));
    }
}

@compute @workgroup_size(64)
fn q8_k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = block_index(gid);
    if (b >= step.n_tok * params.per_tok / 256u) {
        return;
    }
    let base = b * 256u;
    var amax = 0.0;
    var mx = 0.0;
    for (var i = 0u; i < 256u; i++) {
        let v = x[base + i];
        if (abs(v) > amax) {
            amax = abs(v);
            mx = v;
        }
    }
    if (amax == 0.0) {
        for (var i = 0u; i < 256u; i++) {
            out[base + i] = 0.0;
        }
        return;
    }
    let iscale = -127.0 / mx;
    let d = 1.0 / iscale;
    for (var i = 0u; i < 256u; i++) {
        out[base + i] = d * min(round(iscale * x[base + i]), 127.0);
    }
}
