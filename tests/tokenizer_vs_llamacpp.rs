//! dsrun's tokenizer against llama.cpp's, id for id.
//!
//! Two oracles:
//! 1. llama.cpp's own tokenizer test vectors (`models/vocab/ggml-vocab-*.gguf` with `.inp` /
//!    `.out`, fetched by `scripts/fetch-vocab-tests.sh`), compared as llama.cpp's
//!    `tests/test-tokenizer-0.cpp` does: `add_special` and `parse_special` both false.
//! 2. llama.cpp in-process (`dsrun_quantize::llama::Vocab`): the whole wikitext-2 test file as
//!    one string (as llama-perplexity tokenizes it: add_special on, parse_special off) on every
//!    real model, tricky strings under all four flag combinations on every model and every
//!    supported test vocabulary, and `token_to_piece` of every id.
//!
//! Vocabularies whose kind dsrun does not implement are listed as skipped, by name; the ones
//! the real models use must pass.

mod common;

use dsrun::gguf::GgufFile;
use dsrun::tokenizer::{StreamDecoder, Tokenizer};
use dsrun_quantize::llama::Vocab;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Test vocabularies dsrun must tokenize exactly as llama.cpp.
const SUPPORTED_VOCABS: &[&str] = &[
    "command-r",
    "falcon",
    "gemma-4",
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "mpt",
    "phi-3",
    "qwen2",
    "qwen35",
    "refact",
    "starcoder",
    "aquila",
    "baichuan",
    "gpt-neox",
];
/// Test vocabularies of kinds dsrun refuses (BERT word pieces, T5 unigram, and pre-tokenizers
/// built on regexes with literal non-ASCII classes).
const UNSUPPORTED_VOCABS: &[&str] = &[
    "bert-bge",
    "deepseek-coder",
    "deepseek-llm",
    "nomic-bert-moe",
];

const REAL_MODELS: &[&str] = &[
    common::SMOLLM2,
    common::GEMMA3,
    common::QWEN05,
    common::QWEN15,
    common::TINY_Q8,
];

fn vocab_dir() -> PathBuf {
    let d = common::models_dir().join("vocab");
    assert!(
        d.join("ggml-vocab-qwen2.gguf").exists(),
        "{} is missing llama.cpp's vocab test files: run scripts/fetch-vocab-tests.sh",
        d.display()
    );
    d
}

/// (name, path) of every `ggml-vocab-<name>.gguf`.
fn vocab_files() -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(vocab_dir())
        .expect("read models/vocab")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let f = p.file_name()?.to_str()?;
            let name = f
                .strip_prefix("ggml-vocab-")?
                .strip_suffix(".gguf")?
                .to_string();
            Some((name, p))
        })
        .collect();
    v.sort();
    v
}

/// The real models, then every test vocabulary of a supported kind.
fn every_supported_vocab() -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = REAL_MODELS
        .iter()
        .map(|m| (m.to_string(), common::model(m)))
        .collect();
    v.extend(
        vocab_files()
            .into_iter()
            .filter(|(n, _)| !UNSUPPORTED_VOCABS.contains(&n.as_str())),
    );
    v
}

fn load(path: &Path) -> dsrun::Result<Tokenizer> {
    let f = GgufFile::open(path)?;
    Tokenizer::from_gguf(&f)
}

/// llama.cpp's test-tokenizer-0 format: inputs separated by "\n__ggml_vocab_test__\n", one
/// line of space-separated ids per input.
fn read_vectors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).expect("read .inp");
    let out = std::fs::read_to_string(path.with_extension("gguf.out")).expect("read .out");
    // as test-tokenizer-0.cpp splits: a separator at the very end opens no further input
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs: Vec<&str> = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(i) => {
                inputs.push(&rest[..i]);
                rest = &rest[i + sep.len()..];
            }
            None => {
                inputs.push(rest);
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("an id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: inputs and outputs differ in count",
        path.display()
    );
    inputs.into_iter().map(String::from).zip(outputs).collect()
}

fn to_i32(ids: &[u32]) -> Vec<i32> {
    ids.iter().map(|&i| i as i32).collect()
}

/// Where two id lists first differ, with some context, for a failure message.
fn first_diff(ours: &[i32], theirs: &[i32]) -> Option<String> {
    let i = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    if i == ours.len() && i == theirs.len() {
        return None;
    }
    let win = |v: &[i32]| v[i.saturating_sub(5)..(i + 6).min(v.len())].to_vec();
    Some(format!(
        "first difference at index {i} of {} (ours) / {} (llama.cpp): ours {:?}, llama.cpp {:?}",
        ours.len(),
        theirs.len(),
        win(ours),
        win(theirs)
    ))
}

#[test]
fn llama_cpp_test_vectors() {
    let mut passed = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    let mut n_ids = 0;
    for (name, path) in vocab_files() {
        if !path.with_extension("gguf.inp").exists() {
            // no vectors for this one; it is still used by `tricky_strings_every_vocab`
            continue;
        }
        let tok = match load(&path) {
            Ok(t) => t,
            Err(e) => {
                assert!(
                    UNSUPPORTED_VOCABS.contains(&name.as_str()),
                    "{name}: a supported vocabulary failed to load: {e}"
                );
                skipped.push(format!("{name} ({e})"));
                continue;
            }
        };
        assert!(
            !UNSUPPORTED_VOCABS.contains(&name.as_str()),
            "{name} loads now: move it to SUPPORTED_VOCABS"
        );
        let mut ok = true;
        for (text, want) in read_vectors(&path) {
            let got = tok.encode(&text, false, false).expect("encode");
            n_ids += want.len();
            if got != want {
                ok = false;
                failures.push(format!(
                    "{name}: {text:?}\n  ours      {got:?}\n  llama.cpp {want:?}"
                ));
            }
        }
        if ok {
            passed.push(name);
        }
    }
    eprintln!("test vectors passed: {} ({n_ids} ids)", passed.join(", "));
    eprintln!("skipped (unsupported kind): {}", skipped.join("; "));
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for name in SUPPORTED_VOCABS {
        let has_vectors = vocab_dir()
            .join(format!("ggml-vocab-{name}.gguf.inp"))
            .exists();
        assert!(
            !has_vectors || passed.iter().any(|p| p == name),
            "{name} was not tested"
        );
    }
}

/// Strings that exercise every branch of the pre-tokenizers and special-token matching.
fn tricky_strings() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n\n",
        " \n \n ",
        "\r\n",
        "a \n\n b",
        "Hello world",
        " Hello World!",
        "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
        "I'M DON'T we'll THEY'RE she'd",
        "' era",
        "3",
        "33",
        "3333333",
        "1234567890 3.14159 1,000,000",
        "нещо на Български",
        "ﬁ naïve café Ångström e\u{301}",
        "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅",
        "\u{3000}ideographic space\u{00A0}nbsp\u{2009}thin",
        "tab\tseparated\tvalues\r\nwindows\r\n",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "<s>[INST] hi [/INST]</s>",
        "<|endoftext|>",
        "a<|endoftext|>b",
        " <|im_end|> ",
        "<|im_start|><|im_start|>",
        "<|im_",
        "def f(x):\n    return x**2  # comment\n",
        "    indented\n\t\ttabs",
        "<table><tr><td>1</td></tr></table>",
        "\u{FFFD}",
        "\u{0}nul\u{7f}",
        "ｶﾀｶﾅ",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "안녕하세요",
        "สวัสดีครับ",
        "Ǆemal ǅ",
        "x\u{200d}y\u{200b}z",
        "$+<=>^~|`!@#%&*()[]{}",
        "...!!!???",
        "--- ===",
        "٣٤٥ ²³ ½ Ⅻ",
        "don’t",
        "A'B'C'",
        "'s's",
        " 's",
        "'S",
        "\u{85}next line",
        "\u{1C}\u{1D}\u{1E}\u{1F}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(5000));
    v.push("supercalifragilisticexpialidocious".repeat(40));
    v.push("\n".repeat(35));
    v.push(" ".repeat(40) + "x");
    v.push("\t".repeat(33));
    v.push("9".repeat(100));
    v
}

/// Compares our ids with llama.cpp's on the tricky strings under all four flag combinations.
fn compare_tricky(name: &str, ours: &Tokenizer, theirs: &Vocab) -> (usize, Vec<String>) {
    let mut n = 0;
    let mut failures = Vec::new();
    for text in tricky_strings() {
        for (add, parse) in [(false, false), (true, false), (false, true), (true, true)] {
            let got = to_i32(&ours.encode(&text, add, parse).expect("encode"));
            let want = theirs.tokenize(&text, add, parse);
            n += want.len();
            if got != want {
                failures.push(format!(
                    "{name} add_special={add} parse_special={parse} {text:?}\n  ours      {got:?}\n  llama.cpp {want:?}"
                ));
            }
        }
    }
    (n, failures)
}

#[test]
fn tricky_strings_every_vocab() {
    let mut total = 0;
    let mut failures = Vec::new();
    let mut tested = Vec::new();
    for (name, path) in every_supported_vocab() {
        let ours = load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = Vocab::load(&path).expect("llama.cpp loads the vocabulary");
        let (n, f) = compare_tricky(&name, &ours, &theirs);
        total += n;
        failures.extend(f);
        tested.push(name);
    }
    eprintln!(
        "tricky strings x 4 flag sets on {}: {total} ids compared",
        tested.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Random concatenations of awkward pieces (a tiny xorshift generator keeps the test
/// deterministic and dependency-free), in the spirit of llama.cpp's test-tokenizer-random.py.
fn random_strings(n: usize, seed: u64) -> Vec<String> {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "Z",
        "the",
        " the",
        "é",
        "ß",
        "中",
        "文",
        "😶",
        "🦙",
        "\u{301}",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\u{3000}",
        "\u{a0}",
        "0",
        "7",
        "42",
        "٣",
        "'s",
        "'LL",
        "'",
        "’",
        "!",
        "?",
        "...",
        "<",
        "|",
        ">",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<s>",
        "</s>",
        "<end_of_turn>",
        "<unk>",
        "▁",
        "Ġ",
        "\u{0}",
        "\u{85}",
        "ｱ",
        "\u{200d}",
        "¿",
        "$",
        "+",
        "=",
        "`",
        "_",
        "-",
        "/",
        "<table>",
        "\n\n\n",
        "    ",
        "\u{1F}",
        "x\u{FFFD}",
    ];
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = 1 + (next() % 24) as usize;
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn random_strings_every_vocab() {
    let mut total = 0;
    let mut failures = Vec::new();
    let paths = every_supported_vocab();
    for (k, (name, path)) in paths.iter().enumerate() {
        let ours = load(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = Vocab::load(path).expect("llama.cpp loads the vocabulary");
        for (i, text) in random_strings(300, 0x9E37_79B9_7F4A_7C15 ^ k as u64)
            .iter()
            .enumerate()
        {
            let (add, parse) = (i % 2 == 0, i % 4 < 2);
            let got = to_i32(&ours.encode(text, add, parse).expect("encode"));
            let want = theirs.tokenize(text, add, parse);
            total += want.len();
            if got != want && failures.len() < 20 {
                failures.push(format!(
                    "{name} add_special={add} parse_special={parse} {text:?}\n  ours      {got:?}\n  llama.cpp {want:?}"
                ));
            }
        }
    }
    eprintln!(
        "random strings: {total} ids compared on {} vocabularies",
        paths.len()
    );
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn wikitext_whole_file_real_models() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpora/wikitext-2-raw/wiki.test.raw");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the wikitext-2 test file, see MODELS.md)",
            path.display()
        )
    });
    let mut failures = Vec::new();
    for m in REAL_MODELS {
        let p = common::model(m);
        let t0 = Instant::now();
        let file = GgufFile::open(&p).expect("open");
        let ours = Tokenizer::from_gguf(&file).expect("tokenizer");
        let t_build = t0.elapsed();
        let t1 = Instant::now();
        let got = to_i32(&ours.encode(&text, true, false).expect("encode"));
        let t_ours = t1.elapsed();
        let theirs = Vocab::load(&p).expect("llama.cpp loads the vocabulary");
        let t2 = Instant::now();
        let want = theirs.tokenize(&text, true, false);
        let t_theirs = t2.elapsed();
        eprintln!(
            "{m}: {} ids; build {:.0} ms, encode {:.0} ms (llama.cpp {:.0} ms)",
            want.len(),
            t_build.as_secs_f64() * 1e3,
            t_ours.as_secs_f64() * 1e3,
            t_theirs.as_secs_f64() * 1e3
        );
        // Building the tokenizer stays well under the time a user notices at start-up. A guard
        // against a slow (e.g. quadratic) build, not a speed claim: gemma's 262,144 tokens take
        // about 0.17 s on a quiet 2-core machine and 1.7 s were seen at load average 18, so the
        // bound leaves room for a busy CI machine.
        assert!(
            t_build.as_secs_f64() < 5.0,
            "{m}: building the tokenizer took {t_build:?}"
        );
        if let Some(d) = first_diff(&got, &want) {
            failures.push(format!("{m}: {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn token_to_piece_every_id() {
    let paths = every_supported_vocab();
    for (m, p) in &paths {
        let ours = load(p).expect("tokenizer");
        let theirs = Vocab::load(p).expect("llama.cpp");
        assert_eq!(ours.n_vocab(), theirs.n_vocab(), "{m}");
        let mut bad = Vec::new();
        for id in 0..ours.n_vocab() as u32 {
            for special in [false, true] {
                let (a, b) = (
                    ours.token_to_piece(id, special),
                    theirs.token_to_piece(id as i32, special),
                );
                if a != b && bad.len() < 10 {
                    bad.push(format!(
                        "id {id} special={special}: ours {a:?}, llama.cpp {b:?}"
                    ));
                }
            }
        }
        assert!(bad.is_empty(), "{m}:\n{}", bad.join("\n"));
    }
}

#[test]
fn special_ids_and_end_of_generation() {
    let t = load(&common::model(common::SMOLLM2)).unwrap();
    assert_eq!((t.bos(), t.eos(), t.add_bos()), (Some(1), Some(2), false));
    assert!(t.is_eog(2) && t.is_eog(0) && !t.is_eog(1) && !t.is_eog(100));
    assert_eq!(t.token_id("<|im_start|>"), Some(1));

    let t = load(&common::model(common::GEMMA3)).unwrap();
    assert_eq!((t.bos(), t.eos(), t.add_bos()), (Some(2), Some(1), true));
    let eot = t.token_id("<end_of_turn>").unwrap();
    assert!(t.is_eog(eot) && t.is_eog(1) && !t.is_eog(2));
    assert_eq!(t.encode("hi", true, false).unwrap()[0], 2);

    let t = load(&common::model(common::QWEN05)).unwrap();
    assert_eq!((t.eos(), t.add_bos()), (Some(151645), false));
    for s in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ] {
        assert!(t.is_eog(t.token_id(s).unwrap()), "{s}");
    }
    assert!(!t.is_eog(t.token_id("<|im_start|>").unwrap()));

    let t = load(&common::model(common::TINY_Q8)).unwrap();
    assert_eq!((t.bos(), t.eos()), (Some(11), Some(8189)));
    assert!(t.is_eog(8189) && t.is_eog(8191) && !t.is_eog(8190));
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let text = "Grüße, 世界! 😶‍🌫️ ok\n";
    for m in [common::QWEN05, common::GEMMA3, common::SMOLLM2] {
        let t = load(&common::model(m)).unwrap();
        let ids = t.encode(text, false, false).unwrap();
        assert_eq!(t.decode(&ids), text, "{m}");
        let mut d = StreamDecoder::new(false);
        let mut out = String::new();
        for &id in &ids {
            out += &d.push(&t, id);
        }
        out += &d.finish();
        assert_eq!(out, text, "{m}");
    }
    // a byte-level vocabulary splits the emoji over several tokens: nothing partial comes out
    let t = load(&common::model(common::TINY_Q8)).unwrap();
    let ids = t.encode("😶", false, false).unwrap();
    assert!(ids.len() > 1);
    let mut d = StreamDecoder::new(false);
    let parts: Vec<String> = ids.iter().map(|&id| d.push(&t, id)).collect();
    assert!(
        parts[..parts.len() - 1].iter().all(|p| p.is_empty()),
        "{parts:?}"
    );
    assert_eq!(parts.last().unwrap(), "😶");
}

#[test]
fn unsupported_kinds_are_errors_not_panics() {
    for name in UNSUPPORTED_VOCABS {
        let p = vocab_dir().join(format!("ggml-vocab-{name}.gguf"));
        let e = load(&p)
            .err()
            .unwrap_or_else(|| panic!("{name} should be refused"));
        let msg = e.to_string();
        assert!(msg.contains("tokenizer.ggml"), "{name}: {msg}");
    }
}
