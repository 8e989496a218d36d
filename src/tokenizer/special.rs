//! Special tokens found in the raw text before tokenization, as llama.cpp's
//! `tokenizer_st_partition` finds them: for each special token in turn, longest first, every
//! non-overlapping occurrence that lies wholly inside text no earlier token has claimed becomes
//! that token. Control and unknown tokens are matched only when `parse_special` is set;
//! user-defined ones always. A token with the LSTRIP / RSTRIP attribute also swallows the
//! whitespace beside it, up to the neighbouring claimed span.
//!
//! llama.cpp scans the text once per special token (thousands for Gemma). Here one Aho-Corasick
//! pass finds every occurrence of every special token, and the claims are replayed in llama.cpp's
//! order against a map of claimed spans: the same result at a fraction of the cost.

use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::BTreeMap;
use std::ops::Range;

/// A piece of the text to tokenize, or a special token matched in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

pub(super) struct SpecialToken {
    pub id: u32,
    /// Matched only when parse_special (control and unknown tokens).
    pub needs_parse_special: bool,
    pub lstrip: bool,
    pub rstrip: bool,
}

pub(super) struct Specials {
    /// In llama.cpp's order: longest text first. llama.cpp's `std::sort` leaves equal lengths in
    /// an unspecified order; we keep id order. Two equal-length specials that can overlap would
    /// make the order matter; no vocabulary we test has such a pair.
    tokens: Vec<SpecialToken>,
    /// Pattern i is the text of `tokens[i]`.
    automaton: Option<AhoCorasick>,
}

/// `isspace` in the C locale, which llama.cpp's strip loops use.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// What a claimed span holds: a token, or whitespace stripped away.
#[derive(Clone, Copy)]
enum Claim {
    Token(u32),
    Stripped,
}

impl Specials {
    /// `tokens` with their texts, in any order.
    pub fn new(mut tokens: Vec<(SpecialToken, &str)>) -> Result<Specials, String> {
        tokens.retain(|(_, text)| !text.is_empty());
        tokens.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.id.cmp(&b.0.id)));
        let automaton = if tokens.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(tokens.iter().map(|(_, t)| t.as_bytes()))
                .map_err(|e| format!("cannot index the special tokens: {e}"))?;
            Some(ac)
        };
        Ok(Specials {
            tokens: tokens.into_iter().map(|(t, _)| t).collect(),
            automaton,
        })
    }

    /// The fragments of `text` in order; none for the empty text.
    pub fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let whole = || vec![Fragment::Text(0..text.len())];
        let Some(ac) = &self.automaton else {
            return whole();
        };
        // (priority, start, end) of every occurrence of a token that may match
        let mut found: Vec<(u32, usize, usize)> = ac
            .find_overlapping_iter(text.as_bytes())
            .filter(|m| parse_special || !self.tokens[m.pattern().as_usize()].needs_parse_special)
            .map(|m| (m.pattern().as_u32(), m.start(), m.end()))
            .collect();
        if found.is_empty() {
            return whole();
        }
        found.sort_unstable();

        let bytes = text.as_bytes();
        let mut claims: BTreeMap<usize, (usize, Claim)> = BTreeMap::new();
        // The claimed span nearest before `pos` ends at the returned offset (0 if none).
        let free_start = |claims: &BTreeMap<usize, (usize, Claim)>, pos: usize| {
            claims
                .range(..=pos)
                .next_back()
                .map_or(0, |(_, &(end, _))| end)
        };
        let free_end = |claims: &BTreeMap<usize, (usize, Claim)>, pos: usize| {
            claims
                .range(pos..)
                .next()
                .map_or(bytes.len(), |(&start, _)| start)
        };
        for &(prio, start, end) in &found {
            // Free when the last claim starting before `end` ends at or before `start`: claims
            // never overlap, so no earlier one can reach further.
            if let Some((_, &(claim_end, _))) = claims.range(..end).next_back() {
                if claim_end > start {
                    continue;
                }
            }
            let tok = &self.tokens[prio as usize];
            if tok.lstrip {
                let limit = free_start(&claims, start);
                let mut s = start;
                while s > limit && is_c_space(bytes[s - 1]) {
                    s -= 1;
                }
                if s < start {
                    claims.insert(s, (start, Claim::Stripped));
                }
            }
            if tok.rstrip {
                let limit = free_end(&claims, end);
                let mut e = end;
                while e < limit && is_c_space(bytes[e]) {
                    e += 1;
                }
                if e > end {
                    claims.insert(end, (e, Claim::Stripped));
                }
            }
            claims.insert(start, (end, Claim::Token(tok.id)));
        }

        let mut out = Vec::with_capacity(claims.len() * 2 + 1);
        let mut pos = 0;
        for (&start, &(end, claim)) in &claims {
            if start > pos {
                out.push(Fragment::Text(pos..start));
            }
            if let Claim::Token(id) = claim {
                out.push(Fragment::Token(id));
            }
            pos = end;
        }
        if pos < text.len() {
            out.push(Fragment::Text(pos..text.len()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, needs: bool) -> SpecialToken {
        SpecialToken {
            id,
            needs_parse_special: needs,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn longest_first_then_left_to_right() {
        let s = Specials::new(vec![
            (tok(1, true), "<a>"),
            (tok(2, true), "<a><a>"),
            (tok(3, false), "\n"),
        ])
        .unwrap();
        use Fragment::*;
        assert_eq!(
            s.partition("x<a><a><a>\ny", true),
            [Text(0..1), Token(2), Token(1), Token(3), Text(11..12)]
        );
        // control tokens stay text without parse_special; user-defined ones still match
        assert_eq!(s.partition("x<a>\n", false), [Text(0..4), Token(3)]);
        assert!(s.partition("", true).is_empty());
    }

    #[test]
    fn rstrip_swallows_following_spaces() {
        let mut t = tok(7, false);
        t.rstrip = true;
        let s = Specials::new(vec![(t, "<e>")]).unwrap();
        use Fragment::*;
        assert_eq!(
            s.partition("a<e>  b", false),
            [Text(0..1), Token(7), Text(6..7)]
        );
    }
}
