//! A Hugging Face `tokenizer.json` (byte-level BPE) and `tokenizer_config.json` as GGUF
//! `tokenizer.*` metadata, as llama.cpp's converter writes it (`gguf-py`'s `SpecialVocab` and
//! `_set_vocab_gpt2`), except that the pre-tokenizer is recognised from its definition in
//! tokenizer.json rather than from a hash of token ids.

use crate::error::{Error, Result};
use crate::gguf::writer::string_array;
use crate::gguf::{Value, ValueType};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// The pre-tokenizers llama.cpp implements, by what tokenizer.json says: a `Split` regex, or
/// the byte-level splitter's own (GPT-2) regex, optionally after single digits are split off.
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[rustfmt::skip]
const PRE_TOKENIZERS: &[(&str, &str)] = &[
    // (signature of the pre_tokenizer, tokenizer.ggml.pre)
    ("split:qwen2+bytelevel", "qwen2"),
    ("split:llama3+bytelevel", "llama-bpe"),
    ("bytelevel:regex", "gpt-2"),
    ("digits+bytelevel:regex", "smollm"),
];

/// A short description of a pre_tokenizer: the parts that decide how text is split.
fn signature(pre: &Json) -> Result<String> {
    let one = |p: &Json| -> Result<String> {
        let ty = p.get("type").and_then(Json::as_str).unwrap_or("");
        Ok(match ty {
            "ByteLevel" => {
                let regex = p.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
                if regex {
                    "bytelevel:regex"
                } else {
                    "bytelevel"
                }
                .to_string()
            }
            "Digits" => {
                let single = p.get("individual_digits").and_then(Json::as_bool);
                if single == Some(true) {
                    "digits"
                } else {
                    "digits:grouped"
                }
                .to_string()
            }
            "Split" => {
                let re = p
                    .get("pattern")
                    .and_then(|x| x.get("Regex"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                match re {
                    QWEN2_RE => "split:qwen2".to_string(),
                    LLAMA3_RE => "split:llama3".to_string(),
                    other => format!("split:{other}"),
                }
            }
            other => other.to_string(),
        })
    };
    match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => {
            let parts = pre
                .get("pretokenizers")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            Ok(parts.iter().map(one).collect::<Result<Vec<_>>>()?.join("+"))
        }
        Some(_) => one(pre),
        None => Ok("none".into()),
    }
}

/// `does_token_look_special` of the converter.
fn looks_special(t: &str) -> bool {
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(&t)
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<start_of_") && t.ends_with('>'))
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", path.display())))
}

/// GGUF token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `tokenizer.*` keys for the folder `dir`; `vocab_size` is config.json's (the table is
/// padded to it with `[PADn]` tokens, as the converter does).
pub fn tokenizer_metadata(dir: &Path, vocab_size: Option<u64>) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "{}: missing; only tokenizer.json (byte-level BPE) tokenizers are supported",
            path.display()
        )));
    }
    let shown = path.display().to_string();
    let tj = read_json(&path)?;
    let model = tj
        .get("model")
        .ok_or_else(|| Error::Invalid(format!("{shown}: no \"model\"")))?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("");
    if kind != "BPE" || model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(Error::Invalid(format!(
            "{shown}: a {kind} tokenizer{}; only byte-level BPE (GPT-2 style) is supported yet",
            if kind == "BPE" {
                " with byte fallback (SentencePiece style)"
            } else {
                ""
            }
        )));
    }
    let sig = signature(tj.get("pre_tokenizer").unwrap_or(&Json::Null))?;
    let pre = PRE_TOKENIZERS
        .iter()
        .find(|(s, _)| *s == sig)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{shown}: pre-tokenizer not recognised ({sig}); known: {}",
                PRE_TOKENIZERS
                    .iter()
                    .map(|(_, p)| *p)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;

    let mut vocab: HashMap<u64, String> = HashMap::new();
    let vocab_obj = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::Invalid(format!("{shown}: model.vocab is not an object")))?;
    for (tok, id) in vocab_obj {
        let id = id
            .as_u64()
            .ok_or_else(|| Error::Invalid(format!("{shown}: token {tok:?} has id {id}")))?;
        vocab.insert(id, tok.clone());
    }
    // Added tokens: id -> (content, special).
    let mut added: HashMap<u64, (String, bool)> = HashMap::new();
    for a in tj
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Json::as_u64),
            a.get("content").and_then(Json::as_str),
        ) else {
            return Err(Error::Invalid(format!(
                "{shown}: malformed added_tokens entry {a}"
            )));
        };
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        vocab.insert(id, content.to_string());
        added.insert(id, (content.to_string(), special));
    }
    let max_id = vocab.keys().max().copied().unwrap_or(0);
    let n_vocab = vocab_size.unwrap_or(vocab.len() as u64);
    if max_id >= n_vocab {
        return Err(Error::Invalid(format!(
            "{shown}: token id {max_id} is not below config.json's vocab_size {n_vocab}"
        )));
    }
    if n_vocab > 10_000_000 {
        return Err(Error::Invalid(format!(
            "vocab_size {n_vocab} is implausible"
        )));
    }
    let mut tokens = Vec::with_capacity(n_vocab as usize);
    let mut types = Vec::with_capacity(n_vocab as usize);
    for id in 0..n_vocab {
        match (vocab.get(&id), added.get(&id)) {
            (None, _) => {
                tokens.push(format!("[PAD{id}]"));
                types.push(UNUSED);
            }
            (Some(t), Some((_, special))) => {
                if *special || looks_special(t) {
                    tokens.push(t.clone());
                    types.push(CONTROL);
                } else {
                    tokens.push(t.replace('\u{2581}', " "));
                    types.push(USER_DEFINED);
                }
            }
            (Some(t), None) => {
                tokens.push(t.clone());
                types.push(NORMAL);
            }
        }
    }
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) => Ok(pair
                .iter()
                .filter_map(Json::as_str)
                .collect::<Vec<_>>()
                .join(" ")),
            other => Err(Error::Invalid(format!(
                "{shown}: merge {other} is not a pair"
            ))),
        })
        .collect::<Result<_>>()?;

    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), string_array(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), string_array(&merges)),
    ];
    md.extend(special_tokens(dir, &tj, &added)?);
    Ok(md)
}

/// Special token ids, whether to add BOS/EOS, and the chat template (`SpecialVocab`).
fn special_tokens(
    dir: &Path,
    tj: &Json,
    added: &HashMap<u64, (String, bool)>,
) -> Result<Vec<(String, Value)>> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    let config = read_json(&dir.join("config.json"))?;
    // (type in tokenizer_config, GGUF key)
    const TYPES: &[(&str, &str)] = &[
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("sep", "seperator_token_id"),
        ("pad", "padding_token_id"),
        ("cls", "cls_token_id"),
        ("mask", "mask_token_id"),
    ];
    let mut md = Vec::new();
    let mut add_special: HashMap<&str, bool> = HashMap::new();
    if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
        let list = match pp.get("processors").and_then(Json::as_array) {
            Some(l) => l.clone(),
            None => vec![pp.clone()],
        };
        for p in list {
            if p.get("type").and_then(Json::as_str) == Some("ByteLevel") {
                add_special.entry("bos").or_insert(false);
                add_special.entry("eos").or_insert(false);
            }
        }
    }
    for (ty, key) in TYPES {
        if let Some(b) = tc.get(format!("add_{ty}_token")).and_then(Json::as_bool) {
            add_special.entry(ty).or_insert(b);
        }
        let content = match tc.get(format!("{ty}_token")) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(String::from),
            _ => None,
        };
        let from_tc = content.and_then(|c| {
            let mut ids: Vec<u64> = added
                .iter()
                .filter(|(_, (t, _))| *t == c)
                .map(|(&id, _)| id)
                .collect();
            ids.sort();
            ids.first().copied()
        });
        let id = from_tc.or_else(|| config.get(format!("{ty}_token_id")).and_then(Json::as_u64));
        if let Some(id) = id {
            md.push((format!("tokenizer.ggml.{key}"), Value::U32(id as u32)));
        }
    }
    for ty in ["bos", "eos", "sep"] {
        if let Some(&b) = add_special.get(ty) {
            md.push((format!("tokenizer.ggml.add_{ty}_token"), Value::Bool(b)));
        }
    }
    let jinja = dir.join("chat_template.jinja");
    let template = match tc.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        _ if jinja.exists() => Some(
            std::fs::read_to_string(&jinja)
                .map_err(|e| Error::io(jinja.display().to_string(), e))?,
        ),
        _ => None,
    };
    if let Some(t) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizer_signatures() {
        let qwen: Json = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_RE}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]});
        assert_eq!(signature(&qwen).unwrap(), "split:qwen2+bytelevel");
        let gpt2: Json = serde_json::json!({"type": "ByteLevel", "use_regex": true});
        assert_eq!(signature(&gpt2).unwrap(), "bytelevel:regex");
        assert!(looks_special("<|im_end|>") && !looks_special("hello"));
    }
}
