// F16 weights for matvec.wgsl, kept as f16 (see src/gpu/repack.rs): w holds the row's values two
// to a word (value 2i in the low half), taken 32 values (16 words) a block; unpack2x16float
// widens them exactly, so no shader-f16 is needed.
const BLOCK: u32 = 32u;

@group(0) @binding(0) var<storage, read> w: array<u32>;

fn block_dot(blk: u32, x_base: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let p = unpack2x16float(w[blk * 16u + i]);
        s += p.x * x[x_base + 2u * i] + p.y * x[x_base + 2u * i + 1u];
    }
    return s;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read).
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let i = blk * 16u + 2u * g;
    return vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));
}
