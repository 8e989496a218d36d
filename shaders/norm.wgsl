// RMS norm of each row in place: x = x / sqrt(mean(x^2) + eps) * w. One workgroup per row; reduce.wgsl is prepended.

struct Params {
    n: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

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
