//! `dsrun perplexity` against llama.cpp's logits on the same chunks: within 0.5%. CI scores a few
//! chunks per model; `scripts/perplexity.sh` runs the reference sizes (figures in README.md).

mod common;

use dsrun::engine::{Model, Session};
use dsrun::gguf::GgufFile;
use dsrun::perplexity::{chunks, score_chunk, PplStats};
use dsrun_quantize::llama::{LlamaContext, LlamaModel};
use std::process::Command;

fn corpus(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (dsrun PPL, llama.cpp PPL) on the first `n_chunks` chunks of 512 tokens of `text`.
fn both(name: &str, text: &str, n_chunks: usize) -> (f64, f64) {
    let path = common::model(name);
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let tok = &model.tokenizer;
    let tokens = tok.encode(text, true, false).unwrap();
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let chunks = chunks(&tokens, 512, Some(n_chunks), bos);
    let n_vocab = model.hp.n_vocab;
    let mut ours = PplStats::default();
    let mut session = Session::new(&model, 512, 512).unwrap();
    let lm = LlamaModel::load(&path).unwrap();
    let mut ctx = LlamaContext::new(&lm, 512, 512, 2).unwrap();
    let mut theirs = PplStats::default();
    for c in &chunks {
        session.clear();
        ours.add(&score_chunk(c, &session.eval_all(c).unwrap(), n_vocab));
        ctx.clear();
        let ids: Vec<i32> = c.iter().map(|&t| t as i32).collect();
        theirs.add(&score_chunk(c, &ctx.eval(&ids, true).unwrap(), n_vocab));
    }
    (ours.ppl(), theirs.ppl())
}

fn check(name: &str, text: &str, n_chunks: usize) {
    check_within(name, text, n_chunks, 0.005)
}

fn check_within(name: &str, text: &str, n_chunks: usize, tol: f64) {
    let (ours, theirs) = both(name, text, n_chunks);
    let rel = (ours - theirs).abs() / theirs;
    eprintln!(
        "{name}: {n_chunks} chunks: dsrun {ours:.4}, llama.cpp {theirs:.4} ({:.3}%)",
        rel * 100.0
    );
    assert!(rel < tol, "{name}: dsrun {ours} vs llama.cpp {theirs}");
}

#[test]
fn tiny_moe_heldout_and_wikitext() {
    let heldout = std::fs::read_to_string(common::model("tiny-qwen3moe/heldout.txt")).unwrap();
    check(common::TINY_F16, &heldout, 4);
    check(common::TINY_Q4KM, &heldout, 4);
    check(
        common::TINY_Q8,
        &corpus("corpora/wikitext-2-raw/wiki.test.raw"),
        4,
    );
}

#[test]
fn smollm2_wikitext() {
    check(
        common::SMOLLM2,
        &corpus("corpora/wikitext-2-raw/wiki.test.raw"),
        2,
    );
}

/// gemma3's first wikitext chunk is numerically touchy: dsrun 11.527, the llama.cpp linked here
/// 11.346, the llama.cpp of the PyPI source package (AVX-512 build) 11.465 — the two llama.cpp
/// builds are 1% apart themselves. Over 4 chunks dsrun and that llama.cpp are 0.4% apart (15.328
/// and 15.266), over 100 chunks 0.09% (18.718 and 18.736, `scripts/perplexity.sh`). The bound
/// for this one chunk is therefore 2%; the model itself agrees to rounding in f32
/// (`gemma3_in_f32_agrees_to_rounding`).
#[test]
fn gemma3_wikitext() {
    check_within(
        common::GEMMA3,
        &corpus("corpora/wikitext-2-raw/wiki.test.raw"),
        1,
        0.02,
    );
}

/// The command itself: its final line, and the KL-divergence round trip of a model with itself.
#[test]
fn cli_perplexity_and_kld() {
    let m = common::model(common::TINY_Q8);
    let heldout = common::model("tiny-qwen3moe/heldout.txt");
    let dir = common::scratch("ppl", "");
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.kld");
    let out = Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args([
            "perplexity",
            "-m",
            m.to_str().unwrap(),
            "-f",
            heldout.to_str().unwrap(),
        ])
        .args([
            "--chunks",
            "2",
            "--kl-divergence-base",
            base.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("Final estimate: PPL = "), "{stdout}");
    let ppl: f64 = last.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(ppl > 20.0 && ppl < 200.0, "{last}");
    assert!(base.exists());

    let out = Command::new(env!("CARGO_BIN_EXE_dsrun"))
        .args(["perplexity", "-m", m.to_str().unwrap(), "--kl-divergence"])
        .args(["--kl-divergence-base", base.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mean: f64 = stdout
        .lines()
        .find(|l| l.starts_with("Mean    KLD:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .parse()
        .unwrap();
    // The same model against itself: only the f16 rounding of the stored log-probs remains.
    assert!(mean < 1e-3, "{stdout}");
    // f16 storage can break near-ties of the top token, so not quite 100%.
    let same: f64 = stdout
        .lines()
        .find(|l| l.starts_with("Same top p:"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    assert!(same > 98.0, "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
