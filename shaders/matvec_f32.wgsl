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

// Values 4g .. 4g + 3 of block blk (the tiled product's read).
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let i = blk * BLOCK + 4u * g;
    return vec4<f32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
}
