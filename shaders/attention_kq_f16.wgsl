// Q·K of one key for attention.wgsl with shader-f16 (`enable f16;` is put first in the module):
// Q rounded to f16 by the f16 type's own conversion, as ggml's CPU dots an f16 cache (Q
// converted to K's type, `ggml_vec_dot_f16`); K's pairs widened with unpack2x16float, the
// products and their sum in f32. Chosen with DSRUN_GPU_F16=1 where the adapter offers
// shader-f16 (pipeline key `attention_f16`). Reading K as `bitcast<vec2<f16>>` gave wrong scores
// on lavapipe (normalized MSE 0.08 against the CPU), so K is not read that way.

fn kq_dot(q_base: u32, kb: u32, n2: u32) -> f32 {
    var acc = 0.0;
    for (var d = 0u; d < n2; d++) {
        let k2 = unpack2x16float(kc[kb + d]);
        let q2 = vec2<f32>(vec2<f16>(vec2<f32>(q[q_base + 2u * d], q[q_base + 2u * d + 1u])));
        acc += q2.x * k2.x + q2.y * k2.y;
    }
    return acc;
}
