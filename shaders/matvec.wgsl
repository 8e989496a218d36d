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
//
// `main_strided` and `main_ids_strided` (one token; the default, DSRUN_GPU_DECODE=block takes
// `main` and `main_ids`): their grids,
// the threads striding over groups of 4 values as `main_tiled` does, so a row of few big blocks
// keeps all 64 busy (over blocks, a Q4_K row of 1536 values occupies 6 threads) and neighbouring
// threads read neighbouring bytes.
//
// `main_tiled` (prefill): z is a tile of TILE tokens (the batch's count in `step`), and the
// threads stride over the row in groups of 4 values (the type's dequant4), so each weight is
// read once for the tile instead of once per token, and short rows of big blocks (a Q4_K row of
// 1536 values is 6 blocks) still keep all 64 threads busy.

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

struct Step {
    n_tok: u32,
    pos0: u32,
}

@group(0) @binding(6) var<uniform> step: Step;
@group(0) @binding(7) var<storage, read> order: array<u32>;
@group(0) @binding(8) var<storage, read> offsets: array<u32>;

const TILE: u32 = 8u;
var<workgroup> tile_sums: array<vec4<f32>, 128>;

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

// 4 values of x row r from column c.
fn x4(r: u32, c: u32) -> vec4<f32> {
    let i = r * params.n_cols + c;
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

// The dot of weight row w_row with x row r, the threads over groups of 4 values.
fn row_dot4(w_row: u32, r: u32, lid: u32) -> f32 {
    let per_block = BLOCK / 4u;
    let nb = params.n_cols / BLOCK;
    var acc = 0.0;
    for (var g = lid; g < params.n_cols / 4u; g += WG) {
        acc += dot(dequant4(w_row * nb + g / per_block, g % per_block), x4(r, 4u * g));
    }
    return wg_sum(lid, acc);
}

@compute @workgroup_size(64)
fn main_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let tok = wid.z;
    if (row >= params.n_rows) {
        return;
    }
    let total = row_dot4(row, tok, lid.x);
    if (lid.x == 0u) {
        store(tok * params.y_stride + params.y_off + row, total);
    }
}

@compute @workgroup_size(64)
fn main_ids_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let z = wid.z;
    if (row >= params.n_rows) {
        return;
    }
    let total = row_dot4(ids[z] * params.n_rows + row, z / params.x_div, lid.x);
    if (lid.x == 0u) {
        store(z * params.y_stride + row, total);
    }
}

// The dots of weight row w_row with the eight x rows ra and rb (a partial tile repeats its last
// row; the spare sums are not stored), reduced over the workgroup into tile_sums[0] (rows ra)
// and tile_sums[WG] (rows rb): one tree reduction for the eight sums, not eight of wg_sum's.
fn tile_products(w_row: u32, ra: vec4<u32>, rb: vec4<u32>, lid: u32) {
    let per_block = BLOCK / 4u;
    let nb = params.n_cols / BLOCK;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var g = lid; g < params.n_cols / 4u; g += WG) {
        let w = dequant4(w_row * nb + g / per_block, g % per_block);
        let c = 4u * g;
        lo += vec4<f32>(dot(w, x4(ra.x, c)), dot(w, x4(ra.y, c)), dot(w, x4(ra.z, c)), dot(w, x4(ra.w, c)));
        hi += vec4<f32>(dot(w, x4(rb.x, c)), dot(w, x4(rb.y, c)), dot(w, x4(rb.z, c)), dot(w, x4(rb.w, c)));
    }
    // The previous tile's sums have been read.
    workgroupBarrier();
    tile_sums[lid] = lo;
    tile_sums[WG + lid] = hi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            tile_sums[lid] += tile_sums[lid + s];
            tile_sums[WG + lid] += tile_sums[WG + lid + s];
        }
        workgroupBarrier();
    }
}

// Sum t (0..8) of the last tile_products.
fn tile_sum(t: u32) -> f32 {
    return select(tile_sums[WG][t % 4u], tile_sums[0][t % 4u], t < 4u);
}

@compute @workgroup_size(64)
fn main_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let t0 = wid.z * TILE;
    if (row >= params.n_rows || t0 >= step.n_tok) {
        return;
    }
    let last = step.n_tok - 1u;
    let ra = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    let rb = min(vec4<u32>(t0) + vec4<u32>(4u, 5u, 6u, 7u), vec4<u32>(last));
    tile_products(row, ra, rb, lid.x);
    if (lid.x < min(TILE, step.n_tok - t0)) {
        store((t0 + lid.x) * params.y_stride + params.y_off + row, tile_sum(lid.x));
    }
}

// `main_ids_tiled` (prefill of an MoE layer): z is the expert; its (token, slot) pairs are
// order[offsets[e] .. offsets[e + 1]] (moe.wgsl's `group`), taken TILE at a time, so each
// expert's weights are read once per tile of its pairs instead of once per pair.
@compute @workgroup_size(64)
fn main_ids_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * params.rows_per_y + wid.x;
    let e = wid.z;
    if (row >= params.n_rows) {
        return;
    }
    let end = offsets[e + 1u];
    for (var s = offsets[e]; s < end; s += TILE) {
        let ia = min(vec4<u32>(s) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(end - 1u));
        let ib = min(vec4<u32>(s) + vec4<u32>(4u, 5u, 6u, 7u), vec4<u32>(end - 1u));
        let za = vec4<u32>(order[ia.x], order[ia.y], order[ia.z], order[ia.w]);
        let zb = vec4<u32>(order[ib.x], order[ib.y], order[ib.z], order[ib.w]);
        tile_products(e * params.n_rows + row, za / params.x_div, zb / params.x_div, lid.x);
        if (lid.x < min(TILE, end - s)) {
            store(order[s + lid.x] * params.y_stride + row, tile_sum(lid.x));
        }
    }
}
