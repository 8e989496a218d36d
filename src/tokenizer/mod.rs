//! The tokenizer of a GGUF model, built from its `tokenizer.ggml.*` metadata, giving the same
//! token ids as llama.cpp's `llama_tokenize` and the same bytes as its `llama_token_to_piece`.
//!
//! Kinds (`tokenizer.ggml.model`):
//! - `gpt2`: byte-level BPE over `tokenizer.ggml.merges`, after a pre-tokenizer chosen by
//!   `tokenizer.ggml.pre` (`pretok.rs`, `bpe.rs`);
//! - `llama`: SentencePiece vocabularies with scores and byte fallback, tokenized by llama.cpp's
//!   own merge-by-score algorithm (`spm.rs`);
//! - `gemma4`: SentencePiece-style BPE over merges (`bpe.rs` without byte-level encoding).
//!
//! Other kinds (BERT word pieces, T5 unigram, RWKV, ...) are refused with a metadata error.
//!
//! Everything here is plain Rust rather than the `tokenizers` crate: llama.cpp's ids come from
//! its own SentencePiece algorithm (scores, no merges), its own hand-written pre-tokenizers on
//! its own Unicode tables, and its own special-token matching, none of which that crate
//! reproduces; what would remain (the BPE merge loop) is a hundred lines.

mod bpe;
mod pretok;
mod special;
mod spm;
mod unicode;
mod unicode_data;
mod vocab;

use crate::error::{Error, Result};
use crate::gguf::GgufHeader;
use special::{Fragment, Specials};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A small fast hash for token strings and symbol pairs (the vocabularies are not adversarial
/// in a way that matters: a slow lookup is the worst an odd file can cause).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ rest.len() as u64);
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Token attributes, llama.cpp's `llama_token_attr` bits.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// How raw text becomes tokens between the special tokens.
enum Model {
    Spm {
        scores: Vec<f32>,
        /// `<0xXX>` (else the one-byte string) for each byte.
        byte_token: Box<[Option<u32>; 256]>,
        add_space_prefix: bool,
    },
    Bpe {
        bpe: bpe::Bpe,
        passes: &'static [pretok::Pass],
        /// Spaces become `▁` before splitting (Gemma 4); the vocabulary is not byte-level.
        escape_whitespaces: bool,
    },
}

/// A model's tokenizer. Cheap to share between threads (`encode` takes `&self`).
pub struct Tokenizer {
    model: Model,
    /// Token texts by id (an empty text reads `[EMPTY_<id>]`, as llama.cpp renames it).
    texts: Vec<String>,
    attrs: Vec<u16>,
    /// Text to id; of duplicate texts the last id wins, as in llama.cpp.
    token_id: FastMap<String, u32>,
    specials: Specials,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer that the file's metadata describes.
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer> {
        vocab::build(h)
    }

    /// Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`:
    /// `add_special` adds BOS (and EOS) where the vocabulary asks for them; `parse_special`
    /// turns control-token texts such as `<|im_start|>` into those tokens (user-defined tokens
    /// are always matched).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        // positions inside the merge loops are u32, and escaping spaces can triple the text
        if text.len() > (u32::MAX / 4) as usize {
            return Err(Error::Invalid(format!(
                "cannot tokenize {} bytes at once (the limit is 1 GiB)",
                text.len()
            )));
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.push(self.bos.ok_or_else(|| {
                Error::Invalid("the vocabulary asks for a BOS token but names none".into())
            })?);
        }
        let fragments = self.specials.partition(text, parse_special);
        match &self.model {
            Model::Spm {
                scores,
                byte_token,
                add_space_prefix,
            } => {
                // llama.cpp puts the space prefix before the text and after every special token
                let mut after_special = true;
                for f in fragments {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Fragment::Text(r) => {
                            let mut s = String::with_capacity(r.len() + 3);
                            if *add_space_prefix && after_special {
                                s.push(' ');
                            }
                            s.push_str(&text[r]);
                            let s = s.replace(' ', "\u{2581}");
                            spm::encode(&s, &self.token_id, scores, byte_token, &mut out);
                            after_special = false;
                        }
                    }
                }
            }
            Model::Bpe {
                bpe,
                passes,
                escape_whitespaces,
            } => {
                for f in fragments {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(r) => {
                            let escaped;
                            let piece = if *escape_whitespaces {
                                escaped = text[r].replace(' ', "\u{2581}");
                                escaped.as_str()
                            } else {
                                &text[r]
                            };
                            self.encode_words(bpe, passes, piece, &mut out);
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(self.eos.ok_or_else(|| {
                Error::Invalid("the vocabulary asks for an EOS token but names none".into())
            })?);
        }
        Ok(out)
    }

    /// Pre-tokenizes `piece` and merges each word, remembering the tokens of words already seen
    /// (a text repeats its words: this halves the time on prose).
    fn encode_words(
        &self,
        bpe: &bpe::Bpe,
        passes: &[pretok::Pass],
        piece: &str,
        out: &mut Vec<u32>,
    ) {
        let mut seen: FastMap<&str, (usize, usize)> = FastMap::default();
        for word in pretok::split(passes, piece) {
            if let Some(&(start, len)) = seen.get(word) {
                out.extend_from_within(start..start + len);
                continue;
            }
            let start = out.len();
            bpe.encode_word(&self.token_id, word, out);
            seen.insert(word, (start, out.len() - start));
        }
    }

    /// The bytes of one token, as llama.cpp's `llama_token_to_piece(id, lstrip 0, special)`:
    /// control and unknown tokens render only when `special`; unused tokens and ids out of range
    /// render as nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        let (Some(text), Some(&a)) = (self.texts.get(id as usize), self.attrs.get(id as usize))
        else {
            return Vec::new();
        };
        if !special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return Vec::new();
        }
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if a & attr::NORMAL != 0 {
            return match &self.model {
                Model::Spm { .. }
                | Model::Bpe {
                    escape_whitespaces: true,
                    ..
                } => text.replace('\u{2581}', " ").into_bytes(),
                Model::Bpe { .. } => byte_level_decode(text),
            };
        }
        if a & attr::BYTE != 0 {
            // llama.cpp reads the two hex digits of `<0xXX>` with strtol (0 when malformed)
            let hex = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok());
            return vec![hex.unwrap_or(0)];
        }
        Vec::new()
    }

    /// The text of `ids`: their pieces (control tokens not rendered, as llama.cpp prints a
    /// generation) concatenated, then read as UTF-8 with invalid bytes replaced. No space
    /// clean-up is applied.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_to_piece(id, false));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generation stops at `id`, as llama.cpp's `llama_vocab_is_eog`: EOS, EOT, EOM and
    /// the tokens llama.cpp recognises by text (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`,
    /// the FIM pad/repo/separator tokens, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The id of the token whose text is exactly `text` (for chat-template specials).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_id.get(text).copied()
    }
}

/// A normal byte-level BPE token's bytes: each character maps back to one byte. llama.cpp
/// renders a character outside the byte map as `[UNK_BYTE_0x<hex>` + the token text + `]`.
fn byte_level_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match bpe::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// Removes and returns the complete UTF-8 text at the front of `pending` (invalid bytes become
/// U+FFFD), leaving an incomplete sequence at its end in place.
fn take_complete(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).expect("valid up to here"));
                match e.error_len() {
                    // an incomplete sequence at the end: wait for the next token
                    None => {
                        rest = bad;
                        break;
                    }
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &bad[n..];
                    }
                }
            }
        }
    }
    let keep = rest.len();
    pending.drain(..pending.len() - keep);
    out
}

/// Turns a stream of token ids into text as it is generated: each `push` returns the text that
/// became complete, holding back the bytes of a UTF-8 sequence split across tokens.
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// `special`: render control tokens (`<|im_end|>` ...) as text.
    pub fn new(special: bool) -> StreamDecoder {
        StreamDecoder {
            pending: Vec::new(),
            special,
        }
    }

    /// Adds one token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend(tok.token_to_piece(id, self.special));
        take_complete(&mut self.pending)
    }

    /// Whatever is held back at the end of the stream, with invalid bytes replaced.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Tokenizer>();
    }

    #[test]
    fn complete_text_replaces_invalid_bytes_and_holds_incomplete_ones() {
        let mut pending = vec![b'a', 0xFF, b'b', 0xE4, 0xB8];
        assert_eq!(take_complete(&mut pending), "a\u{FFFD}b");
        assert_eq!(pending, [0xE4, 0xB8]);
        pending.push(0xAD);
        assert_eq!(take_complete(&mut pending), "中");
        assert!(pending.is_empty());
    }
}
