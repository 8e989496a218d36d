// Q6_K weights for matvec.wgsl (see src/gpu/repack.rs): d holds each block's d widened to f32,
// qs its ql[128], qh[64] and 16 signed scales (52 words a block). Each half of 128 values takes
// 64 ql bytes, 32 qh bytes and 8 scales; q = (4 low bits | 2 high bits << 4) - 32.
const BLOCK: u32 = 256u;
const WORDS: u32 = 52u;

@group(0) @binding(0) var<storage, read> d: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<u32>;

fn qbyte(base: u32, i: u32) -> u32 {
    return (qs[base + i / 4u] >> ((i % 4u) * 8u)) & 255u;
}

fn scale(base: u32, i: u32) -> f32 {
    // Sign-extend the byte.
    return f32(i32(qbyte(base, 192u + i) << 24u) >> 24u);
}

fn block_dot(blk: u32, x_base: u32) -> f32 {
    let base = blk * WORDS;
    var s = 0.0;
    for (var n = 0u; n < 2u; n++) {
        let ql = 64u * n;
        let qh = 128u + 32u * n;
        let sc = 8u * n;
        let xb = x_base + 128u * n;
        for (var l = 0u; l < 32u; l++) {
            let is = l / 16u;
            let a = qbyte(base, ql + l);
            let b = qbyte(base, ql + l + 32u);
            let h = qbyte(base, qh + l);
            let q1 = f32(i32((a & 15u) | ((h & 3u) << 4u)) - 32);
            let q2 = f32(i32((b & 15u) | (((h >> 2u) & 3u) << 4u)) - 32);
            let q3 = f32(i32((a >> 4u) | (((h >> 4u) & 3u) << 4u)) - 32);
            let q4 = f32(i32((b >> 4u) | (((h >> 6u) & 3u) << 4u)) - 32);
            s += scale(base, sc + is) * q1 * x[xb + l]
                + scale(base, sc + is + 2u) * q2 * x[xb + l + 32u]
                + scale(base, sc + is + 4u) * q3 * x[xb + l + 64u]
                + scale(base, sc + is + 6u) * q4 * x[xb + l + 96u];
        }
    }
    return d[blk] * s;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read): in each half of 128 values,
// quarter r takes ql bytes l (r even) or l + 32 (r odd), low nibbles for r < 2, and qh bits 2r.
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let base = blk * WORDS;
    let n = g / 32u;
    let r = (g % 32u) / 8u;
    let l = 4u * (g % 8u);
    let ql = unpack4xU8(qs[base + (64u * n + l + 32u * (r % 2u)) / 4u]);
    let qh = unpack4xU8(qs[base + (128u + 32u * n + l) / 4u]);
    let lo = select(ql & vec4<u32>(15u), ql >> vec4<u32>(4u), r >= 2u);
    let q = vec4<i32>(lo | (((qh >> vec4<u32>(2u * r)) & vec4<u32>(3u)) << vec4<u32>(4u)));
    return d[blk] * scale(base, 8u * n + l / 16u + 2u * r) * vec4<f32>(q - vec4<i32>(32));
}
