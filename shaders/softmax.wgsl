// Softmax of each row in place, max-subtracted. One workgroup per row; reduce.wgsl is prepended.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;

@compute @workgroup_size(64)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wid.x * params.n;
    var m = -3.4028235e38;
    for (var i = lid.x; i < params.n; i += WG) {
        m = max(m, x[base + i]);
    }
    let row_max = wg_max(lid.x, m);
    var acc = 0.0;
    for (var i = lid.x; i < params.n; i += WG) {
        let e = exp(x[base + i] - row_max);
        x[base + i] = e;
        acc += e;
    }
    let inv = 1.0 / wg_sum(lid.x, acc);
    for (var i = lid.x; i < params.n; i += WG) {
        x[base + i] = x[base + i] * inv;
    }
}
