//! BPE merges as llama.cpp's `llm_tokenizer_bpe_session` does them: inside one pre-tokenized
//! word, repeatedly merge the adjacent pair with the lowest merge rank (leftmost on ties); a
//! final piece that is not a token falls back to one token per byte.
//!
//! llama.cpp keys its ranks by the two strings, so a merge may involve strings that are not
//! tokens. Here every string that occurs in a merge is interned once: vocabulary strings keep
//! their token id as symbol id, the rest get ids from `n_vocab` up. The merge loop then works on
//! integer pairs, with no allocation per candidate pair.

use super::FastMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// GPT-2's byte-to-codepoint map: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order, so that every byte is a visible character in the vocabulary.
pub(super) fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("U+0100..U+0143 are chars")
}

/// The inverse of `byte_to_char`, for decoding.
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return (byte_to_char(b) == c).then_some(b);
    }
    (0..=255u8).find(|&b| byte_to_char(b) == c)
}

const NO_SYMBOL: u32 = u32::MAX;

pub(super) struct Bpe {
    /// Byte-level (GPT-2) encoding of the words; false for SentencePiece-style BPE (Gemma 4).
    byte_encode: bool,
    ignore_merges: bool,
    n_vocab: u32,
    /// Merge strings that are not tokens; symbol id `n_vocab + i`.
    extra: FastMap<Box<str>, u32>,
    /// (left symbol, right symbol) -> (rank, merged symbol); the first of duplicate merges wins.
    merges: FastMap<(u32, u32), (u32, u32)>,
    /// Symbol of each byte's GPT-2 character (byte-level only).
    byte_sym: Box<[u32; 256]>,
}

#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    /// Byte range in the word (of the raw word; byte-level symbols are whole bytes).
    start: u32,
    end: u32,
    prev: i32,
    next: i32,
}

impl Bpe {
    pub fn new(
        token_id: &FastMap<String, u32>,
        n_vocab: u32,
        merges: &[&str],
        byte_encode: bool,
        ignore_merges: bool,
    ) -> Bpe {
        let mut extra: FastMap<Box<str>, u32> = FastMap::default();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = token_id.get(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n_vocab + extra.len() as u32;
            extra.insert(s.into(), id);
            id
        };
        let mut table: FastMap<(u32, u32), (u32, u32)> = FastMap::default();
        table.reserve(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a merge without one
            // becomes the pair ("", ""), which no symbol can match.
            let Some(sp) = m.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1) else {
                continue;
            };
            let (l, r) = (&m[..sp], &m[sp + 1..]);
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            let key = (intern(l), intern(r));
            let merged = intern(&joined);
            table.entry(key).or_insert((rank as u32, merged));
        }
        let mut byte_sym = Box::new([NO_SYMBOL; 256]);
        for (b, slot) in byte_sym.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            let s = byte_to_char(b as u8).encode_utf8(&mut buf);
            *slot = token_id
                .get(&*s)
                .or_else(|| extra.get(&*s))
                .copied()
                .unwrap_or(NO_SYMBOL);
        }
        Bpe {
            byte_encode,
            ignore_merges,
            n_vocab,
            extra,
            merges: table,
            byte_sym,
        }
    }

    fn sym_of(&self, token_id: &FastMap<String, u32>, s: &str) -> u32 {
        token_id
            .get(s)
            .or_else(|| self.extra.get(s))
            .copied()
            .unwrap_or(NO_SYMBOL)
    }

    /// Tokens of one word (raw bytes of the text, before byte-level encoding).
    pub fn encode_word(&self, token_id: &FastMap<String, u32>, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        if self.byte_encode && self.ignore_merges {
            let encoded: String = bytes.iter().map(|&b| byte_to_char(b)).collect();
            if let Some(&id) = token_id.get(&encoded) {
                out.push(id);
                return;
            }
        }
        if !self.byte_encode && !word.is_empty() && bytes.iter().all(|&b| b == b'\n') {
            // Gemma 4: a run of newlines that is a token is taken whole
            if let Some(&id) = token_id.get(word) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(bytes.len());
        if self.byte_encode {
            for (i, &b) in bytes.iter().enumerate() {
                syms.push(Sym {
                    id: self.byte_sym[b as usize],
                    start: i as u32,
                    end: i as u32 + 1,
                    prev: i as i32 - 1,
                    next: i as i32 + 1,
                });
            }
        } else {
            for (i, c) in word.char_indices() {
                let s = &word[i..i + c.len_utf8()];
                let k = syms.len() as i32;
                syms.push(Sym {
                    id: self.sym_of(token_id, s),
                    start: i as u32,
                    end: (i + s.len()) as u32,
                    prev: k - 1,
                    next: k + 1,
                });
            }
        }
        if let Some(last) = syms.last_mut() {
            last.next = -1;
        }

        // (rank, left index, left symbol, right symbol): lowest rank first, then leftmost
        let mut queue: BinaryHeap<Reverse<(u32, u32, u32, u32)>> = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<_>, syms: &[Sym], l: i32, r: i32| {
            if l < 0 || r < 0 {
                return;
            }
            let (a, b) = (syms[l as usize].id, syms[r as usize].id);
            if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                queue.push(Reverse((rank, l as u32, a, b)));
            }
        };
        for i in 1..syms.len() as i32 {
            push(&mut queue, &syms, i - 1, i);
        }
        while let Some(Reverse((_, l, a, b))) = queue.pop() {
            let l = l as usize;
            let r = syms[l].next;
            // Stale when either side has changed since the pair was queued: symbols only grow,
            // so equal ids on both live sides mean equal text, llama.cpp's test.
            if syms[l].end == syms[l].start || r < 0 || syms[l].id != a || syms[r as usize].id != b
            {
                continue;
            }
            let r = r as usize;
            let (_, merged) = self.merges[&(a, b)];
            syms[l].id = merged;
            syms[l].end = syms[r].end;
            syms[r].end = syms[r].start;
            syms[l].next = syms[r].next;
            let after = syms[r].next;
            if after >= 0 {
                syms[after as usize].prev = l as i32;
            }
            let (prev, next) = (syms[l].prev, syms[l].next);
            push(&mut queue, &syms, prev, l as i32);
            push(&mut queue, &syms, l as i32, next);
        }

        let mut i = if syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = syms[i as usize];
            if s.id < self.n_vocab {
                out.push(s.id);
            } else {
                self.byte_fallback(token_id, &bytes[s.start as usize..s.end as usize], out);
            }
            i = s.next;
        }
    }

    /// A piece that is no token: llama.cpp looks up each byte of its text alone (byte-level:
    /// the bytes of the encoded text, as one-byte strings; otherwise `<0xXX>` tokens).
    fn byte_fallback(&self, token_id: &FastMap<String, u32>, raw: &[u8], out: &mut Vec<u32>) {
        if self.byte_encode {
            let encoded: String = raw.iter().map(|&b| byte_to_char(b)).collect();
            for &b in encoded.as_bytes() {
                if b < 0x80 {
                    if let Some(&id) = token_id.get(std::str::from_utf8(&[b]).unwrap_or("")) {
                        out.push(id);
                    }
                }
            }
        } else {
            for &b in raw {
                if let Some(&id) = token_id.get(&format!("<0x{b:02X}>")) {
                    out.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let vocab = ["a", "b", "c", "ab", "bc", "abc"];
        let token_id: FastMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        let bpe = Bpe::new(&token_id, 6, &["b c", "a b", "a bc"], true, false);
        let mut out = Vec::new();
        bpe.encode_word(&token_id, "abc", &mut out);
        assert_eq!(out, [5]); // b+c first (rank 0), then a+bc
        out.clear();
        bpe.encode_word(&token_id, "abab", &mut out);
        assert_eq!(out, [3, 3]);
        out.clear();
        bpe.encode_word(&token_id, "xa", &mut out); // 'x' is no token: dropped, as llama.cpp
        assert_eq!(out, [0]);
    }
}
