// Q8_0 weights for matvec.wgsl, split into aligned segments at upload: d holds each block's
// scale widened to f32, qs its 32 signed bytes packed four to a u32 (little-endian).
const BLOCK: u32 = 32u;

@group(0) @binding(0) var<storage, read> d: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<u32>;

fn block_dot(blk: u32, x_base: u32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        let q = unpack4xI8(qs[blk * 8u + j]);
        let xv = vec4<f32>(x[x_base + 4u * j], x[x_base + 4u * j + 1u], x[x_base + 4u * j + 2u], x[x_base + 4u * j + 3u]);
        s += dot(vec4<f32>(q), xv);
    }
    return d[blk] * s;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read).
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    return d[blk] * vec4<f32>(unpack4xI8(qs[blk * 8u + g]));
}
