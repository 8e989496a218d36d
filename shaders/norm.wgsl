// RMS norm of rows: x / sqrt(mean(x^2) + eps) * w. One workgroup per row; reduce.wgsl is
// prepended. `rms_norm` works in place (rows of n, e.g. per-head Q/K norms); `rms_norm_to` reads
// row r of src and writes row r of x; `rms_norm_last` reads the batch's last row (step.n_tok - 1)
// into row 0 of x (the output norm when only the last token's logits are wanted).

struct Params {
    n: u32,
    eps: f32,
}

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read> src: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wid.x * params.n;
    var acc = 0.0;
    for (var i = lid.x; i < params.n; i += WG) {
        let v = x[base + i];
        acc += v * v;
    }
    let scale = 1.0 / sqrt(wg_sum(lid.x, acc) / f32(params.n) + params.eps);
    for (var i = lid.x; i < params.n; i += WG) {
        x[base + i] = x[base + i] * scale * w[i];
    }
}

fn norm_row(src_base: u32, dst_base: u32, lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < params.n; i += WG) {
        let v = src[src_base + i];
        acc += v * v;
    }
    let scale = 1.0 / sqrt(wg_sum(lid, acc) / f32(params.n) + params.eps);
    for (var i = lid; i < params.n; i += WG) {
        x[dst_base + i] = src[src_base + i] * scale * w[i];
    }
}

@compute @workgroup_size(64)
fn rms_norm_to(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    norm_row(wid.x * params.n, wid.x * params.n, lid.x);
}

@compute @workgroup_size(64)
fn rms_norm_last(@builtin(local_invocation_id) lid: vec3<u32>) {
    norm_row((step.n_tok - 1u) * params.n, 0u, lid.x);
}
