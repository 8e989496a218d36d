//! The WGSL sources, embedded at build time, and the composition of typed variants: a weight
//! type's matrix product is `matvec_<type>.wgsl` (its block layout and `block_dot`) followed by
//! the shared reductions (`reduce.wgsl`) and `matvec.wgsl`.

use crate::tensor::GgmlType;

pub const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
pub const MATVEC_F32: &str = include_str!("../../shaders/matvec_f32.wgsl");
pub const MATVEC_F16: &str = include_str!("../../shaders/matvec_f16.wgsl");
pub const MATVEC_Q8_0: &str = include_str!("../../shaders/matvec_q8_0.wgsl");
pub const MATVEC_Q4_0: &str = include_str!("../../shaders/matvec_q4_0.wgsl");
pub const MATVEC_Q4_1: &str = include_str!("../../shaders/matvec_q4_1.wgsl");
pub const MATVEC_MXFP4: &str = include_str!("../../shaders/matvec_mxfp4.wgsl");
pub const MATVEC_Q4_K: &str = include_str!("../../shaders/matvec_q4_k.wgsl");
pub const MATVEC_Q6_K: &str = include_str!("../../shaders/matvec_q6_k.wgsl");
pub const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
pub const REDUCE_SUBGROUP: &str = include_str!("../../shaders/reduce_subgroup.wgsl");
const NORM: &str = include_str!("../../shaders/norm.wgsl");
const SOFTMAX: &str = include_str!("../../shaders/softmax.wgsl");
const ROPE: &str = include_str!("../../shaders/rope.wgsl");
const ROPE_FN: &str = include_str!("../../shaders/rope_fn.wgsl");
pub const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
pub const QUANTIZE: &str = include_str!("../../shaders/quantize.wgsl");
pub const MOE: &str = include_str!("../../shaders/moe.wgsl");
const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
const ATTENTION_KQ: &str = include_str!("../../shaders/attention_kq.wgsl");
const ATTENTION_KQ_F16: &str = include_str!("../../shaders/attention_kq_f16.wgsl");
const ATTENTION_STREAM: &str = include_str!("../../shaders/attention_stream.wgsl");
const SUMMARY_ROUND: &str = include_str!("../../shaders/summary_round.wgsl");

/// Weight types with a GPU matrix product, and their type snippet.
pub const MATVEC_TYPES: &[(GgmlType, &str)] = &[
    (GgmlType::F32, MATVEC_F32),
    (GgmlType::F16, MATVEC_F16),
    (GgmlType::Q8_0, MATVEC_Q8_0),
    (GgmlType::Q4_0, MATVEC_Q4_0),
    (GgmlType::Q4_1, MATVEC_Q4_1),
    (GgmlType::Mxfp4, MATVEC_MXFP4),
    (GgmlType::Q4K, MATVEC_Q4_K),
    (GgmlType::Q6K, MATVEC_Q6_K),
];

/// The full source of the matrix product for `ty`, or `None` if the GPU has none yet.
pub fn matvec_source(ty: GgmlType) -> Option<String> {
    matvec_variant(ty, false).map(|(_, s)| s)
}

/// The shared reductions: subgroup operations (`subgroups`, where the adapter offers them;
/// pipeline key suffix `_sg`) or workgroup memory alone.
fn reduce(subgroups: bool) -> (&'static str, &'static str) {
    match subgroups {
        true => ("_sg", REDUCE_SUBGROUP),
        false => ("", REDUCE),
    }
}

/// The matrix product for `ty` with its rows summed by subgroup operations (`subgroups`) or by
/// workgroup memory alone: (pipeline key suffix, source).
pub fn matvec_variant(ty: GgmlType, subgroups: bool) -> Option<(&'static str, String)> {
    let (suffix, reduce) = reduce(subgroups);
    MATVEC_TYPES
        .iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, snippet)| (suffix, format!("{snippet}\n{reduce}\n{MATVEC}")))
}

/// RMS norm: `norm.wgsl` after the shared reductions: (pipeline key suffix, source).
pub fn norm_variant(subgroups: bool) -> (&'static str, String) {
    let (sg, r) = reduce(subgroups);
    (sg, format!("{r}\n{NORM}"))
}

/// Softmax: `softmax.wgsl` after the shared reductions: (pipeline key suffix, source).
pub fn softmax_variant(subgroups: bool) -> (&'static str, String) {
    let (sg, r) = reduce(subgroups);
    (sg, format!("{r}\n{SOFTMAX}"))
}

/// RoPE: `rope.wgsl` after the angles of `rope_fn.wgsl`.
pub fn rope_source() -> String {
    format!("{ROPE_FN}\n{ROPE}")
}

/// Windowed attention (`--kv-window`, sinks, the KV summary): `attention_stream.wgsl` after the
/// shared reductions, RoPE's angles and the summary's stochastic rounding: (pipeline key
/// suffix, source).
pub fn attention_stream_variant(subgroups: bool) -> (&'static str, String) {
    let (sg, r) = reduce(subgroups);
    (
        sg,
        format!("{r}\n{ROPE_FN}\n{SUMMARY_ROUND}\n{ATTENTION_STREAM}"),
    )
}

/// Attention and the KV cache store with the Q·K dot in f16 (`f16`: needs the adapter's
/// shader-f16) or f32, after the shared reductions: (pipeline key suffix, source).
pub fn attention_variant(f16: bool, subgroups: bool) -> (String, String) {
    let (sg, r) = reduce(subgroups);
    match f16 {
        true => (
            format!("_f16{sg}"),
            format!("enable f16;\n{r}\n{ATTENTION_KQ_F16}\n{ATTENTION}"),
        ),
        false => (sg.to_string(), format!("{r}\n{ATTENTION_KQ}\n{ATTENTION}")),
    }
}

/// Every complete module with its entry point, for validation.
pub fn all_modules() -> Vec<(String, String, &'static str)> {
    let mut v: Vec<(String, String, &'static str)> = MATVEC_TYPES
        .iter()
        .map(|(t, _)| {
            (
                format!("matvec_{}", t.name()),
                matvec_source(*t).unwrap(),
                "main",
            )
        })
        .collect();
    for (t, _) in MATVEC_TYPES {
        let (_, source) = matvec_variant(*t, true).unwrap();
        v.push((format!("matvec_{}_sg", t.name()), source, "main"));
    }
    for sg in [false, true] {
        let name = |base: &str| format!("{base}{}", reduce(sg).0);
        v.push((name("norm"), norm_variant(sg).1, "rms_norm"));
        v.push((name("softmax"), softmax_variant(sg).1, "softmax"));
        for entry in ["stream_store", "absorb", "attention_stream"] {
            let src = attention_stream_variant(sg).1;
            v.push((name(&format!("attention_stream {entry}")), src, entry));
        }
        for f16 in [false, true] {
            let (key, src) = attention_variant(f16, sg);
            v.push((format!("attention{key}"), src, "attention"));
        }
    }
    v.push(("rope".into(), rope_source(), "rope"));
    v.push(("elementwise".into(), ELEMENTWISE.into(), "glu"));
    v.push(("moe".into(), MOE.into(), "route"));
    v.push(("moe_group".into(), MOE.into(), "group"));
    for (t, _) in MATVEC_TYPES {
        let source = matvec_source(*t).unwrap();
        v.push((format!("matmat_{}", t.name()), source.clone(), "main_tiled"));
        v.push((
            format!("matvec4_{}", t.name()),
            source.clone(),
            "main_strided",
        ));
        v.push((
            format!("matvec4_ids_{}", t.name()),
            source.clone(),
            "main_ids_strided",
        ));
        v.push((format!("matmat_ids_{}", t.name()), source, "main_ids_tiled"));
    }
    v.push(("quantize".into(), QUANTIZE.into(), "q8_k"));
    v
}
