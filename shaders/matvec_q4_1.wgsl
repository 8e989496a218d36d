// Q4_1 weights for matvec.wgsl (see src/gpu/repack.rs): d holds each block's scale and minimum
// widened to f32 (2 per block), qs its 16 nibble bytes packed four to a u32. Byte j holds value
// j in its low nibble and value j + 16 in its high nibble; x = d * q + m.
const BLOCK: u32 = 32u;

@group(0) @binding(0) var<storage, read> d: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<u32>;

fn block_dot(blk: u32, x_base: u32) -> f32 {
    var s = 0.0;
    var sx = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let bytes = unpack4xU8(qs[blk * 4u + j]);
        let lo = vec4<f32>(bytes & vec4<u32>(15u));
        let hi = vec4<f32>(bytes >> vec4<u32>(4u));
        let i = x_base + 4u * j;
        let xl = vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
        let xh = vec4<f32>(x[i + 16u], x[i + 17u], x[i + 18u], x[i + 19u]);
        s += dot(lo, xl) + dot(hi, xh);
        sx += dot(xl + xh, vec4<f32>(1.0));
    }
    return d[2u * blk] * s + d[2u * blk + 1u] * sx;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read): low nibbles for g < 4.
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let bytes = unpack4xU8(qs[blk * 4u + g % 4u]);
    let q = select(bytes & vec4<u32>(15u), bytes >> vec4<u32>(4u), g >= 4u);
    return d[2u * blk] * vec4<f32>(q) + vec4<f32>(d[2u * blk + 1u]);
}
