// Matrix products y[z][r] = W[r] . x[z] for one weight type: the type's block_dot (prepended
// from matvec_<type>.wgsl) dots block b of row r with the activations at x_base.
// One workgroup per (row, z); its threads stride over the row's blocks and sum in workgroup
// memory (reduce.wgsl, prepended with the type's snippet). Rows are spread over dispatch x and y
// (a dimension holds at most 65535); z is dispatch z.
//
// `main`: z is the token; the matrix may be one part (rows y_off..y_off + n_rows) of a larger
// one whose rows are y_stride apart in y. `main_ids`: z is (token, slot) of an MoE layer; the
// rows are those of expert ids[z] in the stacked expert tensor (n_rows rows per expert), and
// x[z / x_div] is the input (x_div = experts per token for gate/up, 1 for down).
// With `accumulate` the product is added to y (a residual) instead of stored.

struct Params {
    n_rows: u32,
    n_cols: u32,
    rows_per_y: u32,
    y_stride: u32,
    y_off: u32,
    accumulate: u32,
    x_div: u32,
    _pad: u32,
}

@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;
@group(0) @binding(5) var<storage, read> ids: array<u32>;

fn row_dot(w_row: u32, x_base: u32, lid: u32) -> f32 {
    let nb = params.n_cols / BLOCK;
    var acc = 0.0;
    for (var b = lid; b < nb; b += WG) {
        acc += block_dot(w_row * nb + b, x_base + b * BLOCK);
    }
    return wg_sum(lid, acc);
}

fn store(i: u32, v: f32) {
    if (params.accumulate != 0u) {
        y[i] += v;
    } else {
        y[i] = v;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let tok = wid.z;
    // The whole workgroup takes the same branch, so returning before the barriers is uniform.
    if (row >= params.n_rows) {
        return;
    }
    let total = row_dot(row, tok * params.n_cols, lid.x);
    if (lid.x == 0u) {
        store(tok * params.y_stride + params.y_off + row, total);
    }
}

@compute @workgroup_size(64)
fn main_ids(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let z = wid.z;
    if (row >= params.n_rows) {
        return;
    }
    let w_row = ids[z] * params.n_rows + row;
    let total = row_dot(w_row, (z / params.x_div) * params.n_cols, lid.x);
    if (lid.x == 0u) {
        store(z * params.y_stride + row, total);
    }
}
