//! A Hugging Face model folder as a [`Source`]: `config.json` to GGUF hyperparameters,
//! `*.safetensors` (memory-mapped) to tensors under llama.cpp's names, per-expert weights
//! stacked into `ffn_*_exps`, Q/K rows permuted where llama.cpp's converter permutes them, and
//! `tokenizer.json` to `tokenizer.*` metadata. The result is what `convert_hf_to_gguf.py` writes,
//! tensor for tensor.

mod arch;
mod rope;
mod safetensors;
mod tokenizer;

pub use arch::ARCHS;

use super::recipe::ModelFacts;
use super::source::{Source, SourceTensor, TensorData};
use super::Ftype;
use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::tensor::GgmlType;
use arch::HfArch;
use safetensors::{StFiles, StTensor};
use serde_json::Value as Json;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How to produce one GGUF tensor from the checkpoint.
enum Part {
    /// One checkpoint tensor; `permute` = the head count of a Q/K projection to reorder.
    Plain { name: String, permute: Option<u64> },
    /// Per-expert tensors, stacked in expert order.
    Stacked { names: Vec<String> },
    /// A tensor the converter computes (`rope_freqs.weight`): its f32 bytes.
    Generated(Vec<u8>),
}

pub struct HfSource {
    dir: PathBuf,
    st: StFiles,
    metadata: Vec<(String, Value)>,
    tensors: Vec<SourceTensor>,
    parts: Vec<Part>,
    facts: ModelFacts,
}

fn cfg_u64(cfg: &Json, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| cfg.get(*k).and_then(Json::as_u64))
}

fn cfg_f64(cfg: &Json, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| cfg.get(*k).and_then(Json::as_f64))
}

impl HfSource {
    /// Reads the folder; `ftype` decides which tensors the converter would keep in f32.
    pub fn open(dir: &Path, ftype: Ftype) -> Result<HfSource> {
        let shown = dir.display().to_string();
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::Invalid(format!(
                "{shown}: no config.json, so not a Hugging Face model folder"
            )));
        }
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| Error::io(cfg_path.display().to_string(), e))?;
        let cfg: Json = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", cfg_path.display())))?;
        let class = cfg
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Json::as_str)
            .ok_or_else(|| {
                Error::Invalid(format!("{}: no \"architectures\" list", cfg_path.display()))
            })?;
        let arch = arch::find(class).ok_or_else(|| {
            let known: Vec<&str> = ARCHS.iter().map(|a| a.hf_class).collect();
            Error::Invalid(format!(
                "{}: architecture {class} is not supported; supported: {}",
                cfg_path.display(),
                known.join(", ")
            ))
        })?;
        let need = |keys: &[&str]| {
            cfg_u64(&cfg, keys).ok_or_else(|| {
                Error::Invalid(format!("{}: no {} in it", cfg_path.display(), keys[0]))
            })
        };
        let n_layer = need(&["num_hidden_layers"])?;
        let n_embd = need(&["hidden_size"])?;
        let n_head = need(&["num_attention_heads"])?;
        let n_head_kv = cfg_u64(&cfg, &["num_key_value_heads"]).unwrap_or(n_head);
        let n_expert = cfg_u64(&cfg, &["num_local_experts", "num_experts"]).unwrap_or(0);
        if n_layer == 0 || n_layer > 4096 || n_head == 0 || n_expert > 65536 {
            return Err(Error::Invalid(format!(
                "{}: implausible sizes (num_hidden_layers {n_layer}, num_attention_heads {n_head}, experts {n_expert})",
                cfg_path.display()
            )));
        }
        let st = StFiles::open(dir)?;
        let mut src = HfSource {
            dir: dir.to_path_buf(),
            st,
            metadata: Vec::new(),
            tensors: Vec::new(),
            parts: Vec::new(),
            facts: ModelFacts {
                arch: arch.gguf.to_string(),
                n_layer: n_layer as u32,
                n_expert: n_expert as u32,
                n_head: n_head as u32,
                n_head_kv: n_head_kv as u32,
            },
        };
        // The converter yields its computed tensors first.
        if let Some(f) = rope::llama3_factors(&cfg, n_embd, arch.gguf == "llama")? {
            src.tensors.push(SourceTensor {
                name: "rope_freqs.weight".into(),
                dims: vec![f.len() as u64],
                ty: GgmlType::F32,
            });
            src.parts.push(Part::Generated(
                f.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        src.map_tensors(arch, n_layer, n_expert, n_head, n_head_kv, ftype)?;
        src.metadata = hparams_metadata(dir, &cfg, arch, n_embd)?;
        if let Some(label) = size_label(&src.tensors) {
            let at = src.metadata.iter().position(|(k, _)| k == "general.name");
            let at = at.map_or(src.metadata.len(), |i| i + 1);
            src.metadata
                .insert(at, ("general.size_label".into(), Value::String(label)));
        }
        let vocab = cfg_u64(&cfg, &["vocab_size"]);
        src.metadata
            .extend(tokenizer::tokenizer_metadata(dir, vocab)?);
        Ok(src)
    }

    fn map_tensors(
        &mut self,
        arch: &HfArch,
        n_layer: u64,
        n_expert: u64,
        n_head: u64,
        n_head_kv: u64,
        ftype: Ftype,
    ) -> Result<()> {
        let mut names: Vec<&String> = self.st.tensors.keys().collect();
        names.sort();
        // (layer, which of gate/up/down) -> expert -> checkpoint name
        let mut stacks: BTreeMap<(u64, usize), BTreeMap<u64, String>> = BTreeMap::new();
        let mut plain: Vec<(String, String, Option<u64>)> = Vec::new();
        for name in names {
            if arch::IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            if let Some(&(_, g)) = arch::GLOBAL_NAMES.iter().find(|(h, _)| h == name) {
                plain.push((name.clone(), g.to_string(), None));
                continue;
            }
            let unknown = || {
                Error::Invalid(format!(
                    "tensor {name} ({}): no GGUF name for {} checkpoints",
                    self.st.path(&self.st.tensors[name]).display(),
                    arch.hf_class
                ))
            };
            let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
            let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
            let layer: u64 = layer.parse().map_err(|_| unknown())?;
            if layer >= n_layer {
                return Err(Error::Invalid(format!(
                    "tensor {name}: layer {layer}, but config.json has num_hidden_layers {n_layer}"
                )));
            }
            if let Some(&(_, g)) = arch::LAYER_NAMES.iter().find(|(h, _)| *h == rest) {
                let permute = match rest {
                    _ if !arch.permute_qk => None,
                    "self_attn.q_proj.weight" | "self_attn.q_proj.bias" => Some(n_head),
                    "self_attn.k_proj.weight" | "self_attn.k_proj.bias" => Some(n_head_kv),
                    _ => None,
                };
                plain.push((name.clone(), format!("blk.{layer}.{g}"), permute));
                continue;
            }
            let (prefix, parts) = arch.experts.ok_or_else(unknown)?;
            let rest = rest.strip_prefix(prefix).ok_or_else(unknown)?;
            let (e, part) = rest.split_once('.').ok_or_else(unknown)?;
            let e: u64 = e.parse().map_err(|_| unknown())?;
            let which = parts.iter().position(|p| *p == part).ok_or_else(unknown)?;
            if e >= n_expert {
                return Err(Error::Invalid(format!(
                    "tensor {name}: expert {e}, but config.json has {n_expert} experts"
                )));
            }
            stacks
                .entry((layer, which))
                .or_default()
                .insert(e, name.clone());
        }
        for (st_name, gguf, permute) in plain {
            let t = self.st.tensors[&st_name].clone();
            let ty = nominal_type(&gguf, &t, &st_name, ftype)?;
            if let Some(h) = permute {
                let rows = t.shape.first().copied().unwrap_or(0);
                if h == 0 || rows % (2 * h) != 0 {
                    return Err(Error::Invalid(format!(
                        "tensor {st_name}: {rows} rows cannot be split into {h} heads of even size"
                    )));
                }
            }
            self.tensors.push(SourceTensor {
                name: gguf,
                dims: t.shape.iter().rev().copied().collect(),
                ty,
            });
            self.parts.push(Part::Plain {
                name: st_name,
                permute,
            });
        }
        for ((layer, which), experts) in stacks {
            let first = experts.values().next().cloned().unwrap_or_default();
            if experts.len() as u64 != n_expert {
                return Err(Error::Invalid(format!(
                    "layer {layer}: {} of {n_expert} experts have a {} tensor (e.g. {first})",
                    experts.len(),
                    arch.experts.map_or("", |e| e.1[which])
                )));
            }
            let t0 = self.st.tensors[&first].clone();
            for n in experts.values() {
                let t = &self.st.tensors[n];
                if t.shape != t0.shape || t.dtype != t0.dtype {
                    return Err(Error::Invalid(format!(
                        "tensor {n}: {:?} {:?}, but {first} is {:?} {:?}",
                        t.dtype, t.shape, t0.dtype, t0.shape
                    )));
                }
            }
            if t0.shape.len() != 2 {
                return Err(Error::Invalid(format!(
                    "tensor {first}: expert weights must be 2-D, not {:?}",
                    t0.shape
                )));
            }
            let gguf = format!("blk.{layer}.{}", arch::EXPERT_NAMES[which]);
            let ty = nominal_type(&gguf, &t0, &first, ftype)?;
            self.tensors.push(SourceTensor {
                name: gguf,
                dims: vec![t0.shape[1], t0.shape[0], n_expert],
                ty,
            });
            self.parts.push(Part::Stacked {
                names: experts.into_values().collect(),
            });
        }
        Ok(())
    }
}

/// The type llama.cpp's converter gives a tensor (`prepare_tensors`): f32 for 1-D tensors,
/// norms and the MoE router; for a float output type that type, else the stored one.
fn nominal_type(gguf: &str, t: &StTensor, st_name: &str, ftype: Ftype) -> Result<GgmlType> {
    let stored = t.ggml_type(st_name)?;
    let n_dims = t.shape.len();
    if n_dims <= 1 || gguf.ends_with("_norm.weight") || gguf.contains("ffn_gate_inp") {
        return Ok(GgmlType::F32);
    }
    Ok(match ftype {
        Ftype::AllF32 => GgmlType::F32,
        Ftype::F16 => GgmlType::F16,
        Ftype::Bf16 => GgmlType::Bf16,
        _ => stored,
    })
}

/// Reorders the rows of a Q/K projection ([rows, cols] in HF order) from HF's layout, where
/// each head's first half of rotary dims comes before the second, to llama.cpp's interleaved
/// pairs: `reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`.
fn permute_rows(bytes: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows.max(1);
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + j * half + i;
                out.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

impl Source for HfSource {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    fn read(&self, i: usize) -> Result<TensorData<'_>> {
        match &self.parts[i] {
            Part::Plain { name, permute } => {
                let t = &self.st.tensors[name];
                let ty = t.ggml_type(name)?;
                let bytes = self.st.bytes(t);
                let bytes = match permute {
                    None => Cow::Borrowed(bytes),
                    Some(h) => Cow::Owned(permute_rows(bytes, t.shape[0] as usize, *h as usize)),
                };
                Ok(TensorData { ty, bytes })
            }
            Part::Generated(bytes) => Ok(TensorData {
                ty: GgmlType::F32,
                bytes: Cow::Borrowed(bytes),
            }),
            Part::Stacked { names } => {
                let t0 = &self.st.tensors[&names[0]];
                let ty = t0.ggml_type(&names[0])?;
                let mut bytes = Vec::with_capacity(t0.range.len() * names.len());
                for n in names {
                    bytes.extend_from_slice(self.st.bytes(&self.st.tensors[n]));
                }
                Ok(TensorData {
                    ty,
                    bytes: Cow::Owned(bytes),
                })
            }
        }
    }

    fn facts(&self) -> ModelFacts {
        self.facts.clone()
    }
}

/// `general.size_label` as llama.cpp's converter computes it from the tensors it writes
/// (gguf-py's `get_total_parameter_count` and `size_label`): the parameter count rounded to two
/// significant digits with K/M/B/T, or for MoE models `{experts}x{shared + one expert}`.
fn size_label(tensors: &[SourceTensor]) -> Option<String> {
    let (mut total, mut shared, mut expert, mut expert_sum, mut n_expert_tensors) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for t in tensors {
        let size: u64 = t.dims.iter().product();
        let count_dim = if t.name.contains(".bias") { 1 } else { 2 };
        match t.dims.get(count_dim) {
            Some(&n) if t.name.contains("_exps.") && t.dims.len() >= 3 && n > 0 => {
                expert += size / n;
                expert_sum += n;
                n_expert_tensors += 1;
            }
            _ => shared += size,
        }
        total += size;
    }
    if total == 0 {
        return None;
    }
    Some(match expert_sum.checked_div(n_expert_tensors) {
        Some(count) => format!("{count}x{}", rounded_count(shared + expert)),
        None => rounded_count(total),
    })
}

/// gguf-py's `model_weight_count_rounded_notation(n, min_digits=2)`.
fn rounded_count(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = (scaled.round_ties_even() as u64).to_string();
    let fix = 2usize.saturating_sub(digits.trim_start_matches('0').len());
    format!("{scaled:.fix$}{suffix}")
}

/// `general.*` and `{arch}.*` keys, as the converter's `set_gguf_parameters` writes them.
fn hparams_metadata(
    dir: &Path,
    cfg: &Json,
    arch: &HfArch,
    n_embd: u64,
) -> Result<Vec<(String, Value)>> {
    let a = arch.gguf;
    let mut md: Vec<(String, Value)> = Vec::new();
    let mut put = |k: String, v: Value| md.push((k, v));
    put("general.architecture".into(), Value::String(a.into()));
    put("general.type".into(), Value::String("model".into()));
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    put("general.name".into(), Value::String(name));
    let u32v = |x: u64| Value::U32(x as u32);
    if let Some(n) = cfg_u64(cfg, &["num_hidden_layers"]) {
        put(format!("{a}.block_count"), u32v(n));
    }
    if let Some(n) = cfg_u64(cfg, &["max_position_embeddings"]) {
        put(format!("{a}.context_length"), u32v(n));
    }
    put(format!("{a}.embedding_length"), u32v(n_embd));
    if let Some(n) = cfg_u64(cfg, &["intermediate_size"]) {
        put(format!("{a}.feed_forward_length"), u32v(n));
    }
    if let Some(n) = cfg_u64(cfg, &["num_attention_heads"]) {
        put(format!("{a}.attention.head_count"), u32v(n));
    }
    if let Some(n) = cfg_u64(cfg, &["num_key_value_heads"]) {
        put(format!("{a}.attention.head_count_kv"), u32v(n));
    }
    for (k, v) in rope::scaling_metadata(cfg, a, a == "llama")? {
        put(k, v);
    }
    let theta = rope::params(cfg)
        .and_then(|r| cfg_f64(r, &["rope_theta"]))
        .or_else(|| cfg_f64(cfg, &["rope_theta"]));
    if let Some(t) = theta {
        put(format!("{a}.rope.freq_base"), Value::F32(t as f32));
    }
    let eps = arch
        .rms_eps
        .map(f64::from)
        .or_else(|| cfg_f64(cfg, &["rms_norm_eps"]));
    if let Some(e) = eps {
        put(
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(e as f32),
        );
    }
    if let Some(n) = cfg_u64(cfg, &["num_local_experts", "num_experts"]) {
        put(format!("{a}.expert_count"), u32v(n));
    }
    if let Some(n) = cfg_u64(cfg, &["num_experts_per_tok"]) {
        put(format!("{a}.expert_used_count"), u32v(n));
    }
    if let Some(h) = cfg_u64(cfg, &["head_dim"]) {
        put(format!("{a}.attention.key_length"), u32v(h));
        put(format!("{a}.attention.value_length"), u32v(h));
    }
    if let Some(key) = arch.expert_ff_key {
        if let Some(n) = cfg_u64(cfg, &[key]) {
            put(format!("{a}.expert_feed_forward_length"), u32v(n));
        }
    }
    if arch.llama_keys {
        if let Some(n) = cfg_u64(cfg, &["vocab_size"]) {
            put(format!("{a}.vocab_size"), u32v(n));
        }
        let n_head = cfg_u64(cfg, &["num_attention_heads"]).unwrap_or(1).max(1);
        let dim = cfg_u64(cfg, &["head_dim"]).unwrap_or(n_embd / n_head);
        put(format!("{a}.rope.dimension_count"), u32v(dim));
    }
    Ok(md)
}

#[cfg(test)]
mod size_label_tests {
    use super::*;

    #[test]
    fn size_labels_as_the_converter() {
        assert_eq!(rounded_count(6_390_000), "6.4M");
        assert_eq!(rounded_count(134_515_008), "135M");
        assert_eq!(rounded_count(494_032_768), "494M");
        assert_eq!(rounded_count(1_543_714_304), "1.5B");
        assert_eq!(rounded_count(400), "0.40K");
        let t = |name: &str, dims: &[u64]| SourceTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty: crate::tensor::GgmlType::F16,
        };
        let moe = [
            t("token_embd.weight", &[256, 8192]),
            t("blk.0.ffn_up_exps.weight", &[256, 256, 16]),
        ];
        // shared 2,097,152 + one expert 65,536
        assert_eq!(size_label(&moe).unwrap(), "16x2.2M");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_the_two_halves_of_each_head() {
        // 2 heads of 4 rows, one byte per row: HF [a0 a1 b0 b1] per head -> [a0 b0 a1 b1]
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 8, 2), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
