// Rotary position embedding in place over x (n_tok, n_head, head_dim), token t at position
// min(step.pos0 + t, params.pos_max); only the first n_rot dims of a head rotate, by the angles
// of rope_fn.wgsl (prepended). One invocation per (token, head, pair).

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> params: Rope;
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
    let cs = rope_cs(params, min(step.pos0 + tok, params.pos_max), i, factors[i]);
    let ab = rope_dims(params, i) + (tok * params.n_head + head) * params.head_dim;
    let x0 = x[ab.x];
    let x1 = x[ab.y];
    x[ab.x] = x0 * cs.x - x1 * cs.y;
    x[ab.y] = x0 * cs.y + x1 * cs.x;
}
