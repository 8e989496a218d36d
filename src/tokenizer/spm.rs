//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`) as llama.cpp tokenizes them
//! (`llm_tokenizer_spm_session`), which is its own algorithm rather than SentencePiece's: start
//! from single UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is the
//! token with the highest score (leftmost on ties), and spell any final piece that is not a
//! token as byte tokens (`<0xXX>`). There is no Unicode normalisation; spaces have already been
//! replaced by `▁` by the caller.

use super::FastMap;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy)]
struct Sym {
    /// Byte range in the text; a merged-away symbol has `start == end`.
    start: u32,
    end: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

// Highest score first, then the leftmost pair: llama.cpp's `llm_bigram_spm::comparator`, which
// compares scores with `<` (so -0.0 and 0.0 tie, as here).
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Appends the tokens of `text` to `out`. `byte_token[b]` is the token for byte `b` (`<0xXX>`,
/// else the one-byte string), `None` when the vocabulary has neither.
pub(super) fn encode(
    text: &str,
    token_id: &FastMap<String, u32>,
    scores: &[f32],
    byte_token: &[Option<u32>; 256],
    out: &mut Vec<u32>,
) {
    if text.is_empty() {
        return;
    }
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let k = syms.len() as i32;
        syms.push(Sym {
            start: i as u32,
            end: (i + c.len_utf8()) as u32,
            prev: k - 1,
            next: k + 1,
        });
    }
    syms.last_mut().expect("text is not empty").next = -1;

    let mut queue = BinaryHeap::new();
    let try_add = |queue: &mut BinaryHeap<Bigram>, syms: &[Sym], l: i32, r: i32| {
        if l < 0 || r < 0 {
            return;
        }
        let (ls, rs) = (syms[l as usize], syms[r as usize]);
        // adjacent live symbols cover contiguous bytes
        let piece = &text[ls.start as usize..rs.end as usize];
        if let Some(&id) = token_id.get(piece) {
            let score = scores.get(id as usize).copied().unwrap_or(0.0);
            queue.push(Bigram {
                score,
                left: l as u32,
                right: r as u32,
                size: piece.len() as u32,
            });
        }
    };
    for i in 1..syms.len() as i32 {
        try_add(&mut queue, &syms, i - 1, i);
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (b.left as usize, b.right as usize);
        let (ln, rn) = (syms[l].end - syms[l].start, syms[r].end - syms[r].start);
        // Symbols only grow, so a changed side shows as a changed total size.
        if ln == 0 || rn == 0 || ln + rn != b.size {
            continue;
        }
        syms[l].end = syms[r].end;
        syms[r].end = syms[r].start;
        syms[l].next = syms[r].next;
        let after = syms[r].next;
        if after >= 0 {
            syms[after as usize].prev = l as i32;
        }
        let (prev, next) = (syms[l].prev, syms[l].next);
        try_add(&mut queue, &syms, prev, l as i32);
        try_add(&mut queue, &syms, l as i32, next);
    }

    let mut i = 0;
    while i >= 0 {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..s.end as usize];
        match token_id.get(piece) {
            Some(&id) => out.push(id),
            // Only a single character can be no token (every merge made a token); llama.cpp
            // spells it in bytes and aborts on a byte it has no token for: we skip that byte.
            None => out.extend(piece.bytes().filter_map(|b| byte_token[b as usize])),
        }
        i = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let vocab = ["▁", "a", "b", "ab", "▁a", "▁ab", "<0xC3>", "<0xA9>"];
        let scores = [-1.0, -1.0, -1.0, -2.0, -3.0, -0.5, 0.0, 0.0];
        let token_id: FastMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        let mut bytes = [None; 256];
        bytes[0xC3] = Some(6);
        bytes[0xA9] = Some(7);
        let mut out = Vec::new();
        encode("▁ab", &token_id, &scores, &bytes, &mut out);
        assert_eq!(out, [5]); // a+b (-2) beats ▁+a (-3), then ▁+ab (-0.5)
        out.clear();
        encode("é", &token_id, &scores, &bytes, &mut out);
        assert_eq!(out, [6, 7]);
    }
}
