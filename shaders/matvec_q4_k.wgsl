// Q4_K weights for matvec.wgsl (see src/gpu/repack.rs): d holds each block's d and dmin widened
// to f32, qs its 12 packed 6-bit scale/min bytes then its 128 nibble bytes (35 words a block).
// Each 64 values share two sub-blocks: low nibbles with scale/min pair 2j, high with 2j + 1;
// x = d * scale * q - dmin * min.
const BLOCK: u32 = 256u;
const WORDS: u32 = 35u;

@group(0) @binding(0) var<storage, read> d: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<u32>;

fn qbyte(base: u32, i: u32) -> u32 {
    return (qs[base + i / 4u] >> ((i % 4u) * 8u)) & 255u;
}

// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j.
fn scale_min(base: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(qbyte(base, j) & 63u), f32(qbyte(base, j + 4u) & 63u));
    }
    let sc = (qbyte(base, j + 4u) & 15u) | ((qbyte(base, j - 4u) >> 6u) << 4u);
    let m = (qbyte(base, j + 4u) >> 4u) | ((qbyte(base, j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

fn block_dot(blk: u32, x_base: u32) -> f32 {
    let base = blk * WORDS;
    let dd = d[2u * blk];
    let dmin = d[2u * blk + 1u];
    var s = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let sm1 = scale_min(base, 2u * j);
        let sm2 = scale_min(base, 2u * j + 1u);
        var s1 = 0.0;
        var s2 = 0.0;
        var x1 = 0.0;
        var x2 = 0.0;
        for (var w = 0u; w < 8u; w++) {
            // 4 nibble bytes: values 64j + 4w + k (low) and 64j + 32 + 4w + k (high).
            let bytes = unpack4xU8(qs[base + 3u + 8u * j + w]);
            let i = x_base + 64u * j + 4u * w;
            let xl = vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
            let xh = vec4<f32>(x[i + 32u], x[i + 33u], x[i + 34u], x[i + 35u]);
            s1 += dot(vec4<f32>(bytes & vec4<u32>(15u)), xl);
            s2 += dot(vec4<f32>(bytes >> vec4<u32>(4u)), xh);
            x1 += dot(xl, vec4<f32>(1.0));
            x2 += dot(xh, vec4<f32>(1.0));
        }
        s += dd * (sm1.x * s1 + sm2.x * s2) - dmin * (sm1.y * x1 + sm2.y * x2);
    }
    return s;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read): in each 64 values, the first 32
// are the low nibbles of 8 words (sub-block 2j), the next 32 their high nibbles (2j + 1).
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let base = blk * WORDS;
    let j = g / 16u;
    let hi = (g % 16u) >= 8u;
    let sm = scale_min(base, 2u * j + u32(hi));
    let bytes = unpack4xU8(qs[base + 3u + 8u * j + g % 8u]);
    let q = select(bytes & vec4<u32>(15u), bytes >> vec4<u32>(4u), hi);
    return d[2u * blk] * sm.x * vec4<f32>(q) - vec4<f32>(d[2u * blk + 1u] * sm.y);
}
