// Q·K of one key for attention.wgsl, the f32 path (every adapter): K's f16 pairs widened to f32,
// Q as it is (the CPU's arithmetic). attention_kq_f16.wgsl is the shader-f16 variant.

fn kq_dot(q_base: u32, kb: u32, n2: u32) -> f32 {
    var acc = 0.0;
    for (var d = 0u; d < n2; d++) {
        let k2 = unpack2x16float(kc[kb + d]);
        acc += q[q_base + 2u * d] * k2.x + q[q_base + 2u * d + 1u] * k2.y;
    }
    return acc;
}
