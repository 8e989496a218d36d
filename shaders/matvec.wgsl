// Matrix products y[t][r] = W[r] . x[t] for one weight type: the type's block_dot (prepended
// from matvec_<type>.wgsl) dots block b of row r with the activations at x_base.
// One workgroup per (row, token); its threads stride over the row's blocks and sum in
// workgroup memory (reduce.wgsl, prepended with the type's snippet). Rows are spread over dispatch x and y (a dimension holds at most 65535).

struct Params {
    n_rows: u32,
    n_cols: u32,
    n_tok: u32,
    rows_per_y: u32,
}

@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let tok = wid.z;
    // The whole workgroup takes the same branch, so returning before the barriers is uniform.
    if (row >= params.n_rows) {
        return;
    }
    let nb = params.n_cols / BLOCK;
    var acc = 0.0;
    for (var b = lid.x; b < nb; b += WG) {
        acc += block_dot(row * nb + b, tok * params.n_cols + b * BLOCK);
    }
    let total = wg_sum(lid.x, acc);
    if (lid.x == 0u) {
        y[tok * params.n_rows + row] = total;
    }
}
