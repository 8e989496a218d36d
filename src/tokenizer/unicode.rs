//! Codepoint flags exactly as llama.cpp's `unicode_cpt_flags` gives them: one general category
//! bit (`\p{N}`, `\p{L}`, ...) plus a whitespace bit, from llama.cpp's own tables (see
//! `unicode_data.rs`). The pre-tokenizers ask only these questions of a codepoint.

use super::unicode_data::{CATEGORY_RUNS, WHITESPACE};

const UNDEFINED: u16 = 0x0001;
const NUMBER: u16 = 0x0002;
const LETTER: u16 = 0x0004;
const ACCENT_MARK: u16 = 0x0010;
const PUNCTUATION: u16 = 0x0020;
const WHITESPACE_BIT: u16 = 0x0100;
const CATEGORIES: u16 = 0x00FF;

/// The flags of one codepoint. `Flags::NONE` (all bits clear) stands for "past the end of the
/// fragment", as llama.cpp's out-of-range lookups return; a real codepoint always has a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);

    pub fn is_number(self) -> bool {
        self.0 & NUMBER != 0
    }
    pub fn is_letter(self) -> bool {
        self.0 & LETTER != 0
    }
    pub fn is_accent_mark(self) -> bool {
        self.0 & ACCENT_MARK != 0
    }
    pub fn is_whitespace(self) -> bool {
        self.0 & WHITESPACE_BIT != 0
    }
    /// Any bit set: false only for `Flags::NONE`.
    pub fn is_some(self) -> bool {
        self.0 != 0
    }
    /// Exactly the punctuation category (`\p{P}`), as the collapsed-regex path tests it.
    pub fn is_punctuation(self) -> bool {
        self.0 & CATEGORIES == PUNCTUATION
    }
}

/// Flags of the first 256 codepoints, computed at compile time from the same table.
const LATIN1: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < CATEGORY_RUNS.len() && CATEGORY_RUNS[i].0 < 256 {
        let end = if i + 1 < CATEGORY_RUNS.len() {
            CATEGORY_RUNS[i + 1].0
        } else {
            256
        };
        let mut cp = CATEGORY_RUNS[i].0;
        while cp < end && cp < 256 {
            t[cp as usize] = CATEGORY_RUNS[i].1 as u16;
            cp += 1;
        }
        i += 1;
    }
    let mut w = 0;
    while w < WHITESPACE.len() {
        if WHITESPACE[w] < 256 {
            t[WHITESPACE[w] as usize] |= WHITESPACE_BIT;
        }
        w += 1;
    }
    t
};

pub(super) fn flags(cp: u32) -> Flags {
    if cp < 256 {
        return Flags(LATIN1[cp as usize]);
    }
    if cp >= 0x110000 {
        return Flags(UNDEFINED);
    }
    // The run holding `cp` is the last one starting at or before it; the table starts at 0.
    let i = CATEGORY_RUNS.partition_point(|&(start, _)| start <= cp) - 1;
    let mut f = CATEGORY_RUNS[i].1 as u16;
    if WHITESPACE.binary_search(&cp).is_ok() {
        f |= WHITESPACE_BIT;
    }
    Flags(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_match_llama_cpp_tables() {
        assert!(flags('a' as u32).is_letter());
        assert!(flags('7' as u32).is_number());
        assert!(flags(' ' as u32).is_whitespace());
        assert!(flags('\n' as u32).is_whitespace());
        assert!(!flags(0x1C).is_whitespace()); // Python's isspace says yes; llama.cpp says no
        assert!(flags(0x3000).is_whitespace());
        assert!(flags('é' as u32).is_letter());
        assert!(flags('中' as u32).is_letter());
        assert!(flags('٣' as u32).is_number());
        assert!(flags(0x0301).is_accent_mark());
        assert!(flags('!' as u32).is_punctuation());
        assert!(!flags('$' as u32).is_punctuation());
        assert!(flags(0x1F600).is_some() && !flags(0x1F600).is_letter());
        assert!(flags(0x10FFFF).is_some());
        assert!(!Flags::NONE.is_some());
    }
}
