//! Which type each tensor gets: llama.cpp's per-tensor rules (`src/llama-quant.cpp`,
//! `llama_tensor_get_type`) written as a small table of categories plus the preset's exceptions,
//! so that `dsrun quantize m.gguf out.gguf Q4_K_M` picks exactly the types llama-quantize picks.
//!
//! The rules depend on the order tensors are visited (a running count of `attn_v` tensors), which
//! is llama.cpp's loader order: by layer number, then by name ([`llama_order`]).

use super::ftype::{Ftype, IQ1_M, IQ1_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ3_S, IQ3_XXS, TQ1_0, TQ2_0};
use crate::error::{Error, Result};
use crate::tensor::GgmlType;

/// What the rules need to know about the model (llama.cpp reads these from its hparams).
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub arch: String,
    pub n_layer: u32,
    pub n_expert: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
}

impl ModelFacts {
    fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// llama.cpp's `LLM_TYPE_70B`: an 80-layer llama with grouped-query attention.
    fn is_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// Choices beside the preset, named after llama-quantize's flags.
#[derive(Debug, Clone, Default)]
pub struct RecipeOptions {
    /// `--pure`: the default type for every quantizable tensor, no per-tensor rules.
    pub pure: bool,
    /// `--leave-output-tensor`: keep `output.weight` as it is.
    pub leave_output_tensor: bool,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// Exact tensor names with the type they must get (a recipe file): applied like
    /// llama-quantize's `--tensor-type` overrides, before the shape fallback.
    pub overrides: Vec<(String, GgmlType)>,
    /// An importance matrix is given (some rules differ with one).
    pub has_imatrix: bool,
}

/// A tensor as the rules see it.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

/// Name patterns in the order llama.cpp tests them (`tensor_get_category`).
const CATEGORY_SUBSTRINGS: &[(&str, Category)] = &[
    ("attn_qkv.weight", Category::AttnQkv),
    ("attn_kv_b.weight", Category::AttnKvB),
    ("attn_v.weight", Category::AttnV),
    ("attn_k.weight", Category::AttnK),
    ("attn_q.weight", Category::AttnQ),
    ("attn_output.weight", Category::AttnOutput),
    ("ffn_up", Category::FfnUp),
    ("ffn_gate", Category::FfnGate),
    ("ffn_down", Category::FfnDown),
];

fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Category::TokenEmbd;
    }
    CATEGORY_SUBSTRINGS
        .iter()
        .find(|(s, _)| name.contains(s))
        .map_or(Category::Other, |&(_, c)| c)
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// Substrings of tensors llama.cpp never quantizes (`tensor_allows_quantization`), besides
/// norms, 1-D tensors and names not ending in `weight`.
const NEVER_QUANTIZED: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// ggml's `ggml_n_dims`: trailing dimensions of 1 do not count.
fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// Whether the rules may change this tensor's type at all.
pub fn allows_quantization(t: &TensorDesc, opts: &RecipeOptions) -> bool {
    n_dims(&t.dims) >= 2
        && t.name.ends_with("weight")
        && !(opts.leave_output_tensor && t.name == "output.weight")
        && t.name != "position_embd.weight"
        && t.name != "token_types.weight"
        && !NEVER_QUANTIZED.iter().any(|s| t.name.contains(s))
}

/// ggml's `ggml_is_quantized`: block types, not the float and integer types.
pub fn is_quantized(ty: GgmlType) -> bool {
    ty.block_size().is_some_and(|b| b > 1)
}

/// The visiting order of llama.cpp's loader: layer number (none first), then name.
pub fn llama_order(names: &[&str]) -> Vec<usize> {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(-1)
    };
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| {
        (layer(names[a]), names[a].as_bytes()).cmp(&(layer(names[b]), names[b].as_bytes()))
    });
    idx
}

/// Running counts over the tensors, as llama.cpp's `quantize_state_impl`.
struct State<'a> {
    facts: &'a ModelFacts,
    opts: &'a RecipeOptions,
    ftype: Ftype,
    tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

/// The type of every tensor, in the order given (which must be [`llama_order`] for the running
/// counts to match llama.cpp), for the preset `ftype`. Errors name the tensor.
pub fn plan(
    facts: &ModelFacts,
    opts: &RecipeOptions,
    ftype: Ftype,
    tensors: &[TensorDesc],
) -> Result<Vec<GgmlType>> {
    let mut st = State {
        facts,
        opts,
        ftype,
        tied_embeddings: !tensors.iter().any(|t| t.name == "output.weight"),
        n_attention_wv: tensors
            .iter()
            .filter(|t| is_attn_v(category(&t.name)))
            .count() as i64,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    tensors.iter().map(|t| st.tensor_type(t)).collect()
}

impl State<'_> {
    fn tensor_type(&mut self, t: &TensorDesc) -> Result<GgmlType> {
        if !allows_quantization(t, self.opts) {
            return Ok(t.ty);
        }
        let cat = category(&t.name);
        if let (Some(ty), Category::TokenEmbd) = (self.opts.token_embedding_type, cat) {
            return Ok(ty);
        }
        if let (Some(ty), Category::Output) = (self.opts.output_tensor_type, cat) {
            return Ok(ty);
        }
        let default = self.ftype.default_type();
        if !is_quantized(default) {
            return Ok(default);
        }
        let manual = self.opts.overrides.iter().find(|(n, _)| *n == t.name);
        let ty = match manual {
            Some(&(_, ty)) => ty,
            None if self.opts.pure => default,
            None => self.rules(t, cat, default)?,
        };
        fallback(t, ty)
    }

    fn layer(&self, t: &TensorDesc, counter: i64) -> Result<(i64, i64)> {
        let n_layer = self.facts.n_layer as i64;
        if self.facts.n_expert <= 1 {
            return Ok((counter, n_layer));
        }
        let i = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<i64>().ok())
            .ok_or_else(|| Error::Invalid(format!("tensor {}: no layer number", t.name)))?;
        if i >= n_layer {
            return Err(Error::Invalid(format!(
                "tensor {}: layer {i} is not below block_count {n_layer}",
                t.name
            )));
        }
        Ok((i, n_layer))
    }

    /// `llama_tensor_get_type_impl`, for a quantized default type.
    fn rules(&mut self, t: &TensorDesc, cat: Category, default: GgmlType) -> Result<GgmlType> {
        use Ftype as F;
        use GgmlType as T;
        let f = self.ftype;
        let facts = self.facts;
        let falcon = facts.arch == "falcon";
        let n_gqa = facts.n_gqa();
        let n_expert = facts.n_expert;
        let mut ty = default;
        let very_low = matches!(
            f,
            F::Iq2Xxs | F::Iq2Xs | F::Iq1S | F::Iq2S | F::Iq2M | F::Iq1M
        );
        if cat == Category::Output || (self.tied_embeddings && cat == Category::TokenEmbd) {
            let block = default.block_size().unwrap_or(1) as u64;
            if f == F::Mxfp4Moe || falcon || !t.dims[0].is_multiple_of(block) {
                ty = T::Q8_0;
            } else if very_low || f == F::Iq3Xxs {
                ty = T::Q5K;
            } else if ty != T::Q8_0 {
                ty = T::Q6K;
            }
        } else if f == F::Mxfp4Moe {
            let experts = t.dims.get(2).is_some_and(|&d| d > 1);
            ty = if experts { T::Mxfp4 } else { T::Q8_0 };
        } else if cat == Category::TokenEmbd {
            ty = match f {
                F::Iq2Xxs | F::Iq2Xs | F::Iq1S | F::Iq1M => T::Q2K,
                F::Iq2S | F::Iq2M | F::Iq3Xxs => IQ3_S,
                F::Tq1_0 | F::Tq2_0 => T::Q4K,
                _ => ty,
            };
        } else if very_low {
            let iq3 = matches!(f, F::Iq2S | F::Iq2M);
            if is_attn_v(cat) {
                ty = if n_gqa >= 4 || n_expert >= 4 {
                    T::Q4K
                } else if iq3 {
                    IQ3_S
                } else {
                    T::Q2K
                };
                self.i_attention_wv += 1;
            } else if n_expert == 8 && cat == Category::AttnK {
                ty = T::Q4K;
            } else if cat == Category::FfnDown {
                if self.i_ffn_down < facts.n_layer as i64 / 8 {
                    ty = if iq3 { IQ3_S } else { T::Q2K };
                }
                self.i_ffn_down += 1;
            } else if cat == Category::AttnOutput {
                if n_expert == 8 {
                    ty = T::Q5K;
                } else if matches!(f, F::Iq1S | F::Iq1M) {
                    ty = IQ2_XXS;
                } else if iq3 {
                    ty = IQ3_S;
                }
            }
        } else if is_attn_v(cat) {
            let i = self.i_attention_wv;
            match f {
                F::Q2K => ty = if n_gqa >= 4 { T::Q4K } else { T::Q3K },
                F::Q2KS if n_gqa >= 4 => ty = T::Q4K,
                F::Iq3Xxs => {
                    ty = if n_gqa >= 4 {
                        T::Q4K
                    } else if !self.opts.has_imatrix {
                        IQ3_S
                    } else {
                        IQ3_XXS
                    }
                }
                F::Iq3Xs | F::Iq3S if n_gqa >= 4 => ty = T::Q4K,
                F::Iq3M => ty = T::Q4K,
                F::Q3KM => ty = if i < 2 { T::Q5K } else { T::Q4K },
                F::Q3KL => ty = T::Q5K,
                F::Iq4Nl | F::Iq4Xs if n_gqa >= 4 => ty = T::Q5K,
                F::Q4KM | F::Q5KM if use_more_bits(i, self.n_attention_wv) => ty = T::Q6K,
                F::Q4KS if i < 4 => ty = T::Q5K,
                _ => {}
            }
            if facts.is_70b() && matches!(ty, T::Q3K | T::Q4K) {
                ty = T::Q5K;
            }
            if n_expert == 8 {
                ty = T::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if n_expert == 8 {
                ty = T::Q8_0;
            } else if f == F::Iq3Xs {
                ty = IQ3_XXS;
            } else if f == F::Iq3Xxs {
                ty = IQ2_S;
            }
        } else if cat == Category::AttnQ {
            if f == F::Iq3Xs {
                ty = IQ3_XXS;
            } else if f == F::Iq3Xxs {
                ty = IQ2_S;
            }
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer(t, self.i_ffn_down)?;
            let imatrix = self.opts.has_imatrix;
            if f == F::Q2K {
                ty = T::Q3K;
            } else if f == F::Q2KS {
                if i < n / 8 {
                    ty = T::Q4K;
                }
            } else if f == F::Iq3Xxs && !imatrix {
                ty = if i < n / 8 { T::Q4K } else { T::Q3K };
            } else if f == F::Q3KM {
                ty = if i < n / 16 {
                    T::Q5K
                } else if !falcon || use_more_bits(i, n) {
                    T::Q4K
                } else {
                    T::Q3K
                };
            } else if f == F::Iq3M && (i < n / 8 || (n_expert == 8 && use_more_bits(i, n))) {
                ty = T::Q4K;
            } else if f == F::Q3KL {
                ty = if falcon { T::Q4K } else { T::Q5K };
            } else if f == F::Q4KM {
                if falcon {
                    ty = if i < n / 16 {
                        T::Q6K
                    } else if use_more_bits(i, n) {
                        T::Q5K
                    } else {
                        T::Q4K
                    };
                } else if use_more_bits(i, n) {
                    ty = T::Q6K;
                }
            } else if i < n / 8 && matches!(f, F::Iq4Nl | F::Iq4Xs) && !imatrix {
                ty = T::Q5K;
            } else if f == F::Q5KM && use_more_bits(i, n) {
                ty = T::Q6K;
            } else if f == F::Q4KS && !falcon && i < n / 8 {
                ty = T::Q5K;
            } else if matches!(f, F::Q4_0 | F::Q5_0) && imatrix && i < n / 8 {
                ty = if f == F::Q4_0 { T::Q4_1 } else { T::Q5_1 };
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !falcon {
                if n_expert == 8 {
                    if matches!(
                        f,
                        F::Q2K
                            | F::Iq3Xs
                            | F::Iq3Xxs
                            | F::Q3KS
                            | F::Q3KM
                            | F::Iq4Nl
                            | F::Q4KS
                            | F::Q4KM
                            | F::Iq3S
                            | F::Iq3M
                            | F::Iq4Xs
                    ) {
                        ty = T::Q5K;
                    }
                } else {
                    ty = match f {
                        F::Q2K => T::Q3K,
                        F::Iq3Xxs => IQ3_S,
                        F::Q3KM | F::Iq3M => T::Q4K,
                        F::Q3KL => T::Q5K,
                        _ => ty,
                    };
                }
            } else if f == F::Q3KL {
                ty = T::Q4K;
            }
        } else if cat == Category::AttnQkv {
            ty = match f {
                F::Q3KM | F::Q3KL | F::Iq3M => T::Q4K,
                F::Q4KM => T::Q5K,
                F::Q5KM => T::Q6K,
                _ => ty,
            };
        } else if cat == Category::FfnGate || cat == Category::FfnUp {
            let counter = if cat == Category::FfnGate {
                self.i_ffn_gate
            } else {
                self.i_ffn_up
            };
            let (i, n) = self.layer(t, counter)?;
            if f == F::Iq3Xs && i >= n / 8 && i < 7 * n / 8 {
                ty = IQ3_XXS;
            }
            if cat == Category::FfnGate {
                self.i_ffn_gate += 1;
            } else {
                self.i_ffn_up += 1;
            }
        }
        Ok(ty)
    }
}

fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// `tensor_type_fallback`: a type whose block does not divide the row length falls back to a
/// 32-wide type of similar size, or to F16.
pub(crate) fn fallback(t: &TensorDesc, ty: GgmlType) -> Result<GgmlType> {
    use GgmlType as T;
    let ncols = t.dims[0];
    let block = ty.block_size().unwrap_or(1) as u64;
    if ncols.is_multiple_of(block) {
        return Ok(ty);
    }
    let mut out = match ty {
        x if [
            IQ1_S,
            IQ1_M,
            IQ2_XXS,
            IQ2_XS,
            IQ2_S,
            IQ3_XXS,
            IQ3_S,
            T::Iq4Xs,
        ]
        .contains(&x) =>
        {
            T::Iq4Nl
        }
        x if [T::Q2K, T::Q3K, TQ1_0, TQ2_0].contains(&x) => T::Q4_0,
        T::Q4K => T::Q5_0,
        T::Q5K => T::Q5_1,
        T::Q6K => T::Q8_0,
        other if block <= 32 => other,
        other => {
            return Err(Error::Invalid(format!(
                "tensor {}: no fallback is defined for type {other}",
                t.name
            )))
        }
    };
    if !ncols.is_multiple_of(out.block_size().unwrap_or(1) as u64) {
        out = T::F16;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, dims: &[u64]) -> TensorDesc {
        TensorDesc {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty: GgmlType::F16,
        }
    }

    #[test]
    fn order_is_by_layer_then_name() {
        let names = [
            "blk.10.attn_q.weight",
            "token_embd.weight",
            "blk.2.ffn_up.weight",
            "output.weight",
            "blk.2.attn_k.weight",
        ];
        let order: Vec<&str> = llama_order(&names).iter().map(|&i| names[i]).collect();
        assert_eq!(
            order,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn q4_k_m_bumps_v_and_down_in_the_right_layers() {
        let facts = ModelFacts {
            arch: "llama".into(),
            n_layer: 8,
            n_expert: 0,
            n_head: 8,
            n_head_kv: 8,
        };
        let mut ts = vec![desc("token_embd.weight", &[256, 100])];
        for i in 0..8 {
            ts.push(desc(&format!("blk.{i}.attn_norm.weight"), &[256]));
            ts.push(desc(&format!("blk.{i}.attn_v.weight"), &[256, 256]));
            ts.push(desc(&format!("blk.{i}.ffn_down.weight"), &[256, 256]));
        }
        let types = plan(&facts, &RecipeOptions::default(), Ftype::Q4KM, &ts).unwrap();
        // tied embeddings: the output rule (Q6_K)
        assert_eq!(types[0], GgmlType::Q6K);
        // use_more_bits(i, 8): i < 1 || i >= 7 || (i - 1) % 3 == 2 → layers 0, 3, 6, 7
        for i in 0..8 {
            let bumped = [0, 3, 6, 7].contains(&i);
            let want = if bumped { GgmlType::Q6K } else { GgmlType::Q4K };
            assert_eq!(types[1 + 3 * i], GgmlType::F16, "norm {i}");
            assert_eq!(types[2 + 3 * i], want, "attn_v {i}");
            assert_eq!(types[3 + 3 * i], want, "ffn_down {i}");
        }
    }

    #[test]
    fn shapes_fall_back() {
        let t = desc("blk.0.ffn_up.weight", &[96, 8]);
        assert_eq!(fallback(&t, GgmlType::Q4K).unwrap(), GgmlType::Q5_0);
        assert_eq!(fallback(&t, GgmlType::Q6K).unwrap(), GgmlType::Q8_0);
        let odd = desc("blk.0.ffn_up.weight", &[100, 8]);
        assert_eq!(fallback(&odd, GgmlType::Q4K).unwrap(), GgmlType::F16);
        assert_eq!(fallback(&odd, GgmlType::Q8_0).unwrap(), GgmlType::F16);
    }
}
