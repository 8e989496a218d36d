//! Reading a tokenizer from GGUF metadata with llama.cpp's defaults and fix-ups
//! (`llama_vocab::impl::load`): default special ids per kind, `add_bos` defaults per
//! pre-tokenizer, end-of-generation tokens recognised by their text, and per-model attribute
//! patches. Where llama.cpp's choice depends on hash-map order (several tokens of the same role
//! in one vocabulary), we take the lowest id.

use super::special::{SpecialToken, Specials};
use super::{attr, bpe, pretok, FastMap, Model, Tokenizer};
use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, Value};

const K_MODEL: &str = "tokenizer.ggml.model";
const K_PRE: &str = "tokenizer.ggml.pre";
const K_TOKENS: &str = "tokenizer.ggml.tokens";
const K_SCORES: &str = "tokenizer.ggml.scores";
const K_TYPES: &str = "tokenizer.ggml.token_type";
const K_MERGES: &str = "tokenizer.ggml.merges";

/// Texts llama.cpp takes as EOT when the file names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation (llama.cpp's list in `load`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// llama.cpp's token types (`tokenizer.ggml.token_type`) to attributes.
fn type_to_attr(t: i64) -> u16 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0, // undefined
    }
}

/// An array key's elements, or `None` when the key is absent.
fn array<'h>(h: &'h GgufHeader, key: &str) -> Result<Option<&'h [Value]>> {
    match h.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(Some)
            .ok_or_else(|| Error::metadata(key, format!("expected an array, found {v}"))),
    }
}

fn get_bool(h: &GgufHeader, key: &str) -> Result<Option<bool>> {
    match h.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| Error::metadata(key, format!("expected a bool, found {v}"))),
    }
}

/// The role ids a vocabulary may name.
#[derive(Default)]
struct Roles {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

pub(super) fn build(h: &GgufHeader) -> Result<Tokenizer> {
    let kind = h
        .get_str(K_MODEL)?
        .ok_or_else(|| Error::metadata(K_MODEL, "missing: the file has no tokenizer"))?;
    let pre = h.get_str(K_PRE)?.unwrap_or("");

    let tokens = array(h, K_TOKENS)?
        .ok_or_else(|| Error::metadata(K_TOKENS, "missing: the file has no vocabulary"))?;
    let n = tokens.len();
    if n == 0 || n > i32::MAX as usize {
        return Err(Error::metadata(K_TOKENS, format!("{n} tokens")));
    }
    let mut texts = Vec::with_capacity(n);
    for (i, v) in tokens.iter().enumerate() {
        let s = v
            .as_str()
            .ok_or_else(|| Error::metadata(K_TOKENS, format!("token {i} is not a string: {v}")))?;
        texts.push(if s.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            s.to_string()
        });
    }
    let mut token_id: FastMap<String, u32> = FastMap::default();
    token_id.reserve(n);
    for (i, t) in texts.iter().enumerate() {
        token_id.insert(t.clone(), i as u32);
    }
    let scores: Vec<f32> = match array(h, K_SCORES)? {
        None => vec![0.0; n],
        Some(a) if a.len() < n => {
            return Err(Error::metadata(
                K_SCORES,
                format!("{} scores for {n} tokens", a.len()),
            ))
        }
        Some(a) => a[..n]
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::metadata(K_SCORES, "expected numbers"))?,
    };
    let mut attrs: Vec<u16> = match array(h, K_TYPES)? {
        None => vec![attr::NORMAL; n],
        Some(a) if a.len() < n => {
            return Err(Error::metadata(
                K_TYPES,
                format!("{} types for {n} tokens", a.len()),
            ))
        }
        Some(a) => a[..n]
            .iter()
            .map(|v| v.as_i64().map(type_to_attr))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::metadata(K_TYPES, "expected integers"))?,
    };

    // Kind-specific defaults, as llama.cpp sets them before reading the keys.
    let mut roles = Roles::default();
    let mut add_space_prefix = false;
    let (row, mut add_bos) = match kind {
        "llama" => {
            (roles.bos, roles.eos) = (Some(1), Some(2));
            add_space_prefix = true;
            (None, true)
        }
        "gpt2" | "gemma4" => {
            let name = if kind == "gemma4" {
                "gemma4"
            } else if pre.is_empty() {
                "default"
            } else {
                pre
            };
            let row = pretok::lookup(name).ok_or_else(|| {
                let known: Vec<&str> = pretok::TABLE
                    .iter()
                    .flat_map(|r| r.names.iter().copied())
                    .collect();
                Error::metadata(
                    K_PRE,
                    format!(
                        "pre-tokenizer '{name}' is not supported (supported: {})",
                        known.join(", ")
                    ),
                )
            })?;
            if kind == "gpt2" && !row.no_default_bos {
                (roles.bos, roles.eos) = (Some(11), Some(11));
            }
            (Some(row), row.add_bos)
        }
        other => {
            return Err(Error::metadata(
                K_MODEL,
                format!(
                    "tokenizer kind '{other}' is not supported (supported: llama, gpt2, gemma4)"
                ),
            ))
        }
    };
    if let Some(v) = get_bool(h, "tokenizer.ggml.add_space_prefix")? {
        add_space_prefix = v;
    }

    // Named ids: a default out of range is dropped, a named id out of range is ignored.
    let n32 = n as u32;
    let keep = |id: Option<u32>| id.filter(|&i| i < n32);
    let set = |slot: &mut Option<u32>, key: &str| -> Result<()> {
        *slot = keep(*slot);
        if let Some(v) = h.get_u64(&format!("tokenizer.ggml.{key}"))? {
            if v < n as u64 {
                *slot = Some(v as u32);
            }
        }
        Ok(())
    };
    set(&mut roles.bos, "bos_token_id")?;
    set(&mut roles.eos, "eos_token_id")?;
    set(&mut roles.eot, "eot_token_id")?;
    set(&mut roles.eom, "eom_token_id")?;
    set(&mut roles.fim_pre, "fim_pre_token_id")?;
    set(&mut roles.fim_suf, "fim_suf_token_id")?;
    set(&mut roles.fim_mid, "fim_mid_token_id")?;
    set(&mut roles.fim_pad, "fim_pad_token_id")?;
    set(&mut roles.fim_rep, "fim_rep_token_id")?;
    set(&mut roles.fim_sep, "fim_sep_token_id")?;
    set(&mut roles.fim_pre, "prefix_token_id")?;
    set(&mut roles.fim_suf, "suffix_token_id")?;
    set(&mut roles.fim_mid, "middle_token_id")?;
    if let Some(v) = get_bool(h, "tokenizer.ggml.add_bos_token")? {
        add_bos = v;
    }
    let add_eos = get_bool(h, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if kind == "gemma4" {
        add_bos = true; // llama.cpp overrides Gemma 4 files that say otherwise
    }

    // Roles recognised by text; each such token becomes a control token.
    for (id, t) in texts.iter().enumerate() {
        let id = id as u32;
        for (slot, list) in [
            (&mut roles.eot, EOT_TEXTS),
            (&mut roles.eom, EOM_TEXTS),
            (&mut roles.fim_pre, FIM_PRE_TEXTS),
            (&mut roles.fim_suf, FIM_SUF_TEXTS),
            (&mut roles.fim_mid, FIM_MID_TEXTS),
            (&mut roles.fim_pad, FIM_PAD_TEXTS),
            (&mut roles.fim_rep, FIM_REP_TEXTS),
            (&mut roles.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() && list.contains(&t.as_str()) {
                *slot = Some(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
    }
    for (a, t) in attrs.iter_mut().zip(&texts) {
        if *a & attr::CONTROL != 0 && t.contains("unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog: Vec<u32> = [roles.fim_pad, roles.fim_rep, roles.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    for (id, t) in texts.iter().enumerate() {
        if EOG_TEXTS.contains(&t.as_str()) {
            eog.push(id as u32);
            attrs[id] |= attr::CONTROL;
        }
        // gpt-oss: always render these
        if ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"].contains(&t.as_str()) {
            attrs[id] = attr::USER_DEFINED;
        }
    }
    eog.extend([roles.eos, roles.eot, roles.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();
    let eog_text = |eog: &[u32], s: &str| eog.iter().copied().find(|&i| texts[i as usize] == s);
    // o200k_harmony and solar-open: "<|end|>" is not an end of generation there
    let has = |eog: &[u32], s: &str| eog_text(eog, s).is_some();
    if let Some(end) = eog_text(&eog, "<|end|>") {
        let call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
        if call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
            eog.retain(|&i| i != end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // Gemma 4 and PLaMo: "</s>" is a normal token
    if let Some(s) = eog_text(&eog, "</s>") {
        if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
            eog.retain(|&i| i != s);
            attrs[s as usize] = attr::NORMAL;
        }
    }

    let special_ids: Vec<u32> = (0..n32)
        .filter(|&i| attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .collect();
    patch_strip_attrs(h, &token_id, &special_ids, &mut attrs)?;
    let specials = Specials::new(
        special_ids
            .iter()
            .map(|&id| {
                let a = attrs[id as usize];
                let tok = SpecialToken {
                    id,
                    needs_parse_special: a & (attr::CONTROL | attr::UNKNOWN) != 0,
                    lstrip: a & attr::LSTRIP != 0,
                    rstrip: a & attr::RSTRIP != 0,
                };
                (tok, texts[id as usize].as_str())
            })
            .collect(),
    )
    .map_err(|e| Error::metadata(K_TOKENS, e))?;

    let model = match row {
        None => {
            let mut byte_token = Box::new([None; 256]);
            for (b, slot) in byte_token.iter_mut().enumerate() {
                let one = if b < 0x80 {
                    Some((b as u8 as char).to_string())
                } else {
                    None
                };
                *slot = token_id
                    .get(&format!("<0x{b:02X}>"))
                    .or_else(|| one.and_then(|s| token_id.get(&s)))
                    .copied();
            }
            Model::Spm {
                scores,
                byte_token,
                add_space_prefix,
            }
        }
        Some(row) => {
            let merges = array(h, K_MERGES)?.ok_or_else(|| {
                Error::metadata(K_MERGES, "missing: a BPE vocabulary needs merges")
            })?;
            let merges: Vec<&str> = merges
                .iter()
                .map(|v| v.as_str())
                .collect::<Option<_>>()
                .ok_or_else(|| Error::metadata(K_MERGES, "expected strings"))?;
            let byte_encode = kind != "gemma4";
            let bpe = bpe::Bpe::new(&token_id, n32, &merges, byte_encode, row.ignore_merges);
            Model::Bpe {
                bpe,
                passes: row.passes,
                escape_whitespaces: !byte_encode,
            }
        }
    };

    Ok(Tokenizer {
        model,
        texts,
        attrs,
        token_id,
        specials,
        bos: roles.bos,
        eos: roles.eos,
        add_bos,
        add_eos,
        eog,
    })
}

/// llama.cpp's per-model LSTRIP / RSTRIP patches, chosen by model name, pre-tokenizer and
/// architecture (they decide whether whitespace beside a special token is swallowed).
fn patch_strip_attrs(
    h: &GgufHeader,
    token_id: &FastMap<String, u32>,
    special_ids: &[u32],
    attrs: &mut [u16],
) -> Result<()> {
    let name = h.get_str("general.name")?.unwrap_or("").to_lowercase();
    let pre = h.get_str(K_PRE)?.unwrap_or("");
    let arch = h.get_str("general.architecture")?.unwrap_or("");
    let any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
    let mask_lstrip = any(pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"])
        || any(arch, &["nomic-bert-moe", "jina-bert-v3"]);
    let phi3 = !mask_lstrip && any(&name, &["phi-3", "phi3"]);
    if phi3 {
        for &id in special_ids {
            attrs[id as usize] |= attr::RSTRIP;
        }
    }
    let mut set = |text: &str, bit: u16, on: bool| {
        if let Some(&id) = token_id.get(text) {
            let a = &mut attrs[id as usize];
            *a = if on { *a | bit } else { *a & !bit };
        }
    };
    if mask_lstrip {
        set("<mask>", attr::LSTRIP, true);
    } else if phi3 {
        set("</s>", attr::RSTRIP, true);
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            set(t, attr::RSTRIP, false);
        }
    } else if any(&name, &["modern-bert"]) {
        set("[MASK]", attr::LSTRIP, true);
    }
    Ok(())
}
