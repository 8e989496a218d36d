//! Pre-tokenization of byte-level BPE vocabularies: the text is cut into words before BPE
//! merges run inside each word. llama.cpp picks a list of regexes by `tokenizer.ggml.pre` and
//! applies them one after another, each one cutting the pieces the previous ones left; the
//! common regexes it runs through hand-written matchers (`unicode_regex_split_custom_*`), the
//! rest through `std::regex` on a "collapsed" text. Each pass here is a hand-written matcher with
//! exactly the semantics llama.cpp gives that regex, on llama.cpp's own Unicode tables, so that
//! the words (and hence the token ids) are the same.

use super::unicode::{flags, Flags};

/// One regex pass, by the regex llama.cpp runs for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|`
    /// ` ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// As `Llama3` with `\p{N}` (one digit per piece).
    Qwen2,
    /// As `Qwen2` with `[\p{L}\p{M}]+` for words (combining marks stay with their letters).
    Qwen35,
    /// `\p{N}`: every number codepoint alone.
    EachNumber,
    /// `\p{N}+`
    NumberRuns,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
    /// `[\p{P}\$\+<=>\^~\|]+`, with the backtick too for Falcon.
    PunctRuns { backtick: bool },
    /// `[^\n]+|[\n]+`
    NewlineRuns,
}

/// What a `tokenizer.ggml.pre` value means to llama.cpp (`llama_vocab::impl::load` and
/// `llm_tokenizer_bpe`): its passes and the flags it sets.
pub(super) struct PreRow {
    pub names: &'static [&'static str],
    pub passes: &'static [Pass],
    /// Look a whole word up in the vocabulary before merging (llama3 and others).
    pub ignore_merges: bool,
    /// Default for `add_bos` when the file does not say.
    pub add_bos: bool,
    /// The vocabulary has no BOS unless the file names one (ChatGLM).
    pub no_default_bos: bool,
}

use Pass::*;

const DEFAULT_PASSES: &[Pass] = &[
    PunctRuns { backtick: false },
    Gpt2,
    NumberRuns,
    AsciiDigitTriples,
];

const fn row(names: &'static [&'static str], passes: &'static [Pass]) -> PreRow {
    PreRow {
        names,
        passes,
        ignore_merges: false,
        add_bos: false,
        no_default_bos: false,
    }
}

/// The pre-tokenizers dsrun implements. Others (deepseek, tekken, gpt-4o, bloom, ...) use regexes
/// with lookaheads or literal non-ASCII classes and are refused by name.
#[rustfmt::skip]
pub(super) const TABLE: &[PreRow] = &[
    row(&["default"], DEFAULT_PASSES),
    PreRow {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                 "lfm2", "jina-v5-nano"],
        passes: &[Llama3], ignore_merges: true, add_bos: true, no_default_bos: false,
    },
    row(&["dbrx", "smaug-bpe"], &[Llama3]),
    PreRow { names: &["chatglm-bpe"], passes: &[Llama3], ignore_merges: false, add_bos: false, no_default_bos: true },
    PreRow { names: &["glm4", "glm5"], passes: &[Llama3], ignore_merges: true, add_bos: false, no_default_bos: true },
    row(&["falcon"], &[PunctRuns { backtick: true }, Gpt2, AsciiDigitTriples]),
    row(&["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
          "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais",
          "exaone4", "trillion", "granite-docling"], &[Gpt2]),
    row(&["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
        &[EachNumber, Gpt2]),
    row(&["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
          "solar-open", "grok-2"], &[Qwen2]),
    row(&["qwen35"], &[Qwen35]),
    row(&["laguna"], &[NewlineRuns, Qwen2]),
    // Gemma 4's SentencePiece-style BPE: the only split is at newlines (tokenizer.ggml.model
    // "gemma4" selects this row whatever `pre` says).
    PreRow { names: &["gemma4"], passes: &[NewlineRuns], ignore_merges: false, add_bos: true, no_default_bos: false },
];

pub(super) fn lookup(pre: &str) -> Option<&'static PreRow> {
    TABLE.iter().find(|r| r.names.contains(&pre))
}

/// Cuts `text` into words by running `passes` in turn. Every byte of `text` is in exactly one
/// word; words are never empty.
pub(super) fn split<'t>(passes: &[Pass], text: &'t str) -> Vec<&'t str> {
    if text.is_empty() {
        return Vec::new();
    }
    let cps: Vec<u32> = text.chars().map(u32::from).collect();
    let fls: Vec<Flags> = cps.iter().map(|&c| flags(c)).collect();
    // Pieces as lengths in codepoints, like llama.cpp's offsets.
    let mut pieces = vec![cps.len()];
    for &pass in passes {
        let mut next = Vec::with_capacity(pieces.len() * 2);
        let mut start = 0;
        for &len in &pieces {
            let frag = Frag {
                cp: &cps[start..start + len],
                fl: &fls[start..start + len],
            };
            run_pass(pass, &frag, &mut next);
            start += len;
        }
        pieces = next;
    }
    let mut words = Vec::with_capacity(pieces.len());
    let mut chars = text.char_indices();
    let mut byte = 0;
    for len in pieces {
        let begin = byte;
        for _ in 0..len {
            let (i, c) = chars.next().expect("pieces cover the text");
            byte = i + c.len_utf8();
        }
        words.push(&text[begin..byte]);
    }
    words
}

const OUT_OF_RANGE: u32 = u32::MAX;

/// One fragment: its codepoints and their flags. Positions past the end read as
/// `OUT_OF_RANGE` / `Flags::NONE`, as llama.cpp's `_get_cpt` / `_get_flags` do.
struct Frag<'a> {
    cp: &'a [u32],
    fl: &'a [Flags],
}

impl Frag<'_> {
    fn len(&self) -> usize {
        self.cp.len()
    }
    fn cpt(&self, pos: usize) -> u32 {
        self.cp.get(pos).copied().unwrap_or(OUT_OF_RANGE)
    }
    fn flags(&self, pos: usize) -> Flags {
        self.fl.get(pos).copied().unwrap_or(Flags::NONE)
    }
}

/// Collects piece lengths; `add(end)` closes the piece running from the previous end.
struct Pieces<'a> {
    out: &'a mut Vec<usize>,
    prev: usize,
}

impl Pieces<'_> {
    fn add(&mut self, end: usize) {
        if end > self.prev {
            self.out.push(end - self.prev);
        }
        self.prev = end;
    }
}

fn run_pass(pass: Pass, f: &Frag, out: &mut Vec<usize>) {
    match pass {
        Gpt2 => gpt2(f, out),
        Llama3 => llama3_like(f, out, 3, false),
        Qwen2 => llama3_like(f, out, 1, false),
        Qwen35 => llama3_like(f, out, 1, true),
        EachNumber => runs(f, out, |_, fl| fl.is_number(), true),
        NumberRuns => runs(f, out, |_, fl| fl.is_number(), false),
        PunctRuns { backtick } => runs(f, out, |c, fl| in_punct_class(c, fl, backtick), false),
        NewlineRuns => newline_runs(f, out),
        AsciiDigitTriples => ascii_digit_triples(f, out),
    }
}

const fn ch(c: char) -> u32 {
    c as u32
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (case-insensitive when `fold`): the match length.
fn contraction(f: &Frag, pos: usize, fold: bool) -> Option<usize> {
    let lower = |c: u32| {
        // llama.cpp's unicode_tolower maps to an ASCII letter only from ASCII capitals (and
        // U+0130, U+212A, which lower to 'i' and 'k', letters no contraction uses).
        if fold && (ch('A')..=ch('Z')).contains(&c) {
            c + 32
        } else {
            c
        }
    };
    let n = f.len();
    if f.cpt(pos) != ch('\'') || pos + 1 >= n {
        return None;
    }
    let c1 = lower(f.cpt(pos + 1));
    if [ch('s'), ch('t'), ch('m'), ch('d')].contains(&c1) {
        return Some(2);
    }
    if pos + 2 < n {
        let c2 = lower(f.cpt(pos + 2));
        if (c1 == ch('r') && c2 == ch('e'))
            || (c1 == ch('v') && c2 == ch('e'))
            || (c1 == ch('l') && c2 == ch('l'))
        {
            return Some(3);
        }
    }
    None
}

/// llama.cpp's `unicode_regex_split_custom_gpt2`.
fn gpt2(f: &Frag, out: &mut Vec<usize>) {
    let n = f.len();
    let mut p = Pieces { out, prev: 0 };
    let mut pos = 0;
    let other = |x: Flags| !(x.is_whitespace() || x.is_letter() || x.is_number()) && x.is_some();
    while pos < n {
        let c = f.cpt(pos);
        if let Some(len) = contraction(f, pos, false) {
            pos += len;
            p.add(pos);
            continue;
        }
        let space = c == ch(' ');
        let mut f2 = if space {
            f.flags(pos + 1)
        } else {
            f.flags(pos)
        };
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let class: Option<fn(Flags) -> bool> = if f2.is_letter() {
            Some(Flags::is_letter)
        } else if f2.is_number() {
            Some(Flags::is_number)
        } else if other(f2) {
            Some(other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += space as usize;
            while class(f2) {
                pos += 1;
                f2 = f.flags(pos);
            }
            p.add(pos);
            continue;
        }
        let mut n_ws = 0;
        while f.flags(pos + n_ws).is_whitespace() {
            n_ws += 1;
        }
        if n_ws > 1 && f.cpt(pos + n_ws) != OUT_OF_RANGE {
            // `\s+(?!\S)`: leave the last space to the word that follows
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        p.add(pos);
    }
}

/// llama.cpp's `unicode_regex_split_custom_llama3` (`max_digits` 3), `_qwen2` (1) and `_qwen35`
/// (1, with `marks`: combining marks count as letters).
fn llama3_like(f: &Frag, out: &mut Vec<usize>, max_digits: usize, marks: bool) {
    let n = f.len();
    let mut p = Pieces { out, prev: 0 };
    let mut pos = 0;
    let word = |x: Flags| x.is_letter() || (marks && x.is_accent_mark());
    let other = |x: Flags| !(x.is_whitespace() || word(x) || x.is_number());
    let is_cr_lf = |c: u32| c == ch('\r') || c == ch('\n');
    while pos < n {
        let c = f.cpt(pos);
        let fl = f.flags(pos);
        if let Some(len) = contraction(f, pos, true) {
            pos += len;
            p.add(pos);
            continue;
        }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(is_cr_lf(c) || fl.is_number()) && (word(fl) || word(f.flags(pos + 1))) {
            pos += 1;
            while word(f.flags(pos)) {
                pos += 1;
            }
            p.add(pos);
            continue;
        }
        // `\p{N}{1,3}` or `\p{N}`
        if fl.is_number() {
            let mut ini = pos;
            while f.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= max_digits {
                    p.add(pos);
                    ini = pos;
                }
            }
            p.add(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; llama.cpp tests the first codepoint's flags for
        // "defined" here, not the second's
        let space = c == ch(' ');
        let mut f2 = if space { f.flags(pos + 1) } else { fl };
        if other(f2) && fl.is_some() {
            pos += space as usize;
            while other(f2) && f2.is_some() {
                pos += 1;
                f2 = f.flags(pos);
            }
            while is_cr_lf(f.cpt(pos)) {
                pos += 1;
            }
            p.add(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut last_cr_lf_end = 0;
        while f.flags(pos + n_ws).is_whitespace() {
            if is_cr_lf(f.cpt(pos + n_ws)) {
                last_cr_lf_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        if last_cr_lf_end > 0 {
            // `\s*[\r\n]+`
            pos = last_cr_lf_end;
        } else if n_ws > 1 && f.cpt(pos + n_ws) != OUT_OF_RANGE {
            // `\s+(?!\S)`
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        p.add(pos);
    }
}

/// A `std::regex` split by one character class: runs of class members are pieces (each member
/// alone when `single`), and so are the gaps between them.
fn runs(f: &Frag, out: &mut Vec<usize>, class: impl Fn(u32, Flags) -> bool, single: bool) {
    let n = f.len();
    let mut p = Pieces { out, prev: 0 };
    let mut pos = 0;
    while pos < n {
        if !class(f.cpt(pos), f.flags(pos)) {
            pos += 1;
            continue;
        }
        p.add(pos);
        pos += 1;
        while !single && pos < n && class(f.cpt(pos), f.flags(pos)) {
            pos += 1;
        }
        p.add(pos);
    }
    p.add(n);
}

/// Membership in `[\p{P}\$\+<=>\^~\|]` as llama.cpp's collapsed `std::regex` sees it: ASCII by
/// its fixed list, other codepoints by category (non-ASCII whitespace is never punctuation).
fn in_punct_class(c: u32, fl: Flags, backtick: bool) -> bool {
    if c < 128 {
        let b = c as u8;
        matches!(b, b'!'..=b'#' | b'%'..=b'*' | b','..=b'/' | b':' | b';' | b'?' | b'@'
            | b'['..=b']' | b'_' | b'{' | b'}' | b'$' | b'+' | b'<'..=b'>' | b'^' | b'~' | b'|')
            || (backtick && b == b'`')
    } else {
        !fl.is_whitespace() && fl.is_punctuation()
    }
}

/// llama.cpp's `unicode_regex_split_custom_newlines`.
fn newline_runs(f: &Frag, out: &mut Vec<usize>) {
    let n = f.len();
    let mut pos = 0;
    while pos < n {
        let nl = f.cpt(pos) == ch('\n');
        let start = pos;
        while pos < n && (f.cpt(pos) == ch('\n')) == nl {
            pos += 1;
        }
        out.push(pos - start);
    }
}

/// `[0-9][0-9][0-9]`, searched left to right without overlaps.
fn ascii_digit_triples(f: &Frag, out: &mut Vec<usize>) {
    let n = f.len();
    let digit = |pos: usize| (ch('0')..=ch('9')).contains(&f.cpt(pos));
    let mut p = Pieces { out, prev: 0 };
    let mut pos = 0;
    while pos + 3 <= n {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            p.add(pos);
            pos += 3;
            p.add(pos);
        } else {
            pos += 1;
        }
    }
    p.add(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(passes: &[Pass], s: &str) -> Vec<String> {
        split(passes, s).into_iter().map(String::from).collect()
    }

    #[test]
    fn gpt2_regex() {
        assert_eq!(
            words(&[Gpt2], "Hello world's  end 123\n\n x"),
            ["Hello", " world", "'s", " ", " end", " 123", "\n\n", " x"]
        );
        assert_eq!(words(&[Gpt2], "a  "), ["a", "  "]);
    }

    #[test]
    fn llama3_and_qwen2_regexes() {
        assert_eq!(
            words(&[Llama3], "I'M 12345 (ok)\r\n  y"),
            ["I", "'M", " ", "123", "45", " (", "ok", ")\r\n", " ", " y"]
        );
        assert_eq!(words(&[Qwen2], "x 123"), ["x", " ", "1", "2", "3"]);
        assert_eq!(words(&[Qwen2], "a \n\n b"), ["a", " \n\n", " b"]);
    }

    #[test]
    fn number_and_punct_passes() {
        assert_eq!(words(&[EachNumber, Gpt2], "ab 12"), ["ab", " ", "1", "2"]);
        assert_eq!(words(&[AsciiDigitTriples], "1234567"), ["123", "456", "7"]);
        assert_eq!(
            words(&[PunctRuns { backtick: false }], "a+=b!"),
            ["a", "+=", "b", "!"]
        );
        assert_eq!(words(&[NewlineRuns], "a\n\nb"), ["a", "\n\n", "b"]);
        assert!(words(&[Gpt2], "").is_empty());
    }
}
