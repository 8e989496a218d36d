// F32 weights for matvec.wgsl: w is (n_rows, n_cols) row-major, taken 32 values a block.
const BLOCK: u32 = 32u;

@group(0) @binding(0) var<storage, read> w: array<f32>;

fn block_dot(blk: u32, x_base: u32) -> f32 {
    let w_base = blk * BLOCK;
    var s = 0.0;
    for (var i = 0u; i < BLOCK; i++) {
        s += w[w_base + i] * x[x_base + i];
    }
    return s;
}
