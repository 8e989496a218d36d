// Q4_0 weights for matvec.wgsl, split into aligned segments at upload: d holds each block's
// scale widened to f32, qs its 16 bytes packed four to a u32. Byte j holds value j in its low
// nibble and value j + 16 in its high nibble, both offset by 8.
const BLOCK: u32 = 32u;

@group(0) @binding(0) var<storage, read> d: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<u32>;

fn block_dot(blk: u32, x_base: u32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let bytes = unpack4xU8(qs[blk * 4u + j]);
        let lo = vec4<f32>(bytes & vec4<u32>(15u)) - vec4<f32>(8.0);
        let hi = vec4<f32>(bytes >> vec4<u32>(4u)) - vec4<f32>(8.0);
        let i = x_base + 4u * j;
        s += dot(lo, vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]));
        s += dot(hi, vec4<f32>(x[i + 16u], x[i + 17u], x[i + 18u], x[i + 19u]));
    }
    return d[blk] * s;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read): low nibbles for g < 4.
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let bytes = unpack4xU8(qs[blk * 4u + g % 4u]);
    let q = select(bytes & vec4<u32>(15u), bytes >> vec4<u32>(4u), g >= 4u);
    return d[blk] * (vec4<f32>(q) - vec4<f32>(8.0));
}
