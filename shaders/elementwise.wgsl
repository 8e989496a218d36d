// Element-wise ops over the batch, one invocation per element; step.n_tok rows of `width`.
// glu: a = silu(a) * b (SwiGLU). copy: a = b. add_bias: a[i] += b[i % width]. add: a += b (a residual).
// moe_sum: a[t] += sum over the k slots s of w[t k + s] * b[t k + s] (rows of width), the
// weighted sum of a token's expert outputs.

struct Params {
    width: u32,
    k: u32,
}

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read> w: array<f32>;

fn index(gid: vec3<u32>) -> u32 {
    // Rows of 65535 * 64 invocations: x then y.
    return gid.y * 4194240u + gid.x;
}

@compute @workgroup_size(64)
fn glu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < step.n_tok * params.width) {
        let g = a[i];
        a[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

@compute @workgroup_size(64)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < step.n_tok * params.width) {
        a[i] += b[i % params.width];
    }
}

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < step.n_tok * params.width) {
        a[i] += b[i];
    }
}

@compute @workgroup_size(64)
fn moe_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < step.n_tok * params.width) {
        let t = i / params.width;
        let c = i % params.width;
        var s = 0.0;
        for (var j = 0u; j < params.k; j++) {
            let z = t * params.k + j;
            s += w[z] * b[z * params.width + c];
        }
        a[i] += s;
    }
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i < step.n_tok * params.width) {
        a[i] = b[i];
    }
}
