// MXFP4 weights for matvec.wgsl (see src/gpu/repack.rs): d holds each block's E8M0 scale as
// ggml's half-scale f32, qs its 16 nibble bytes packed four to a u32 (laid out as Q4_0); a
// nibble indexes ggml's doubled E2M1 levels.
const BLOCK: u32 = 32u;

const KVALUES: array<f32, 16> = array<f32, 16>(0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0);

@group(0) @binding(0) var<storage, read> d: array<f32>;
@group(0) @binding(1) var<storage, read> qs: array<u32>;

fn block_dot(blk: u32, x_base: u32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let bytes = unpack4xU8(qs[blk * 4u + j]);
        let i = x_base + 4u * j;
        for (var k = 0u; k < 4u; k++) {
            s += KVALUES[bytes[k] & 15u] * x[i + k] + KVALUES[bytes[k] >> 4u] * x[i + 16u + k];
        }
    }
    return d[blk] * s;
}

// Values 4g .. 4g + 3 of block blk (the tiled product's read): low nibbles for g < 4.
fn dequant4(blk: u32, g: u32) -> vec4<f32> {
    let bytes = unpack4xU8(qs[blk * 4u + g % 4u]);
    let q = select(bytes & vec4<u32>(15u), bytes >> vec4<u32>(4u), g >= 4u);
    return d[blk] * vec4<f32>(KVALUES[q.x], KVALUES[q.y], KVALUES[q.z], KVALUES[q.w]);
}
