//! Mutation testing of the GGUF reader: thousands of corrupted files (truncations, byte flips in
//! the header and tensor table, huge counts and lengths, wrong magic, misaligned offsets) must each
//! give an error or a valid parse — never a panic, never a huge allocation. Longer, coverage-guided
//! runs: `cargo +nightly fuzz run gguf_header` in `fuzz/`.

mod common;

use dsrun::gguf::writer::{string_array, GgufWriter};
use dsrun::gguf::{GgufFile, GgufHeader, Value, ValueType};
use dsrun::tensor::GgmlType;
use std::panic;
use std::path::Path;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A small file with every value type, a nested array and tensors of several types.
fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.alignment", Value::U32(32));
    w.set("llama.block_count", Value::U32(2));
    w.set("llama.embedding_length", Value::U64(64));
    w.set("llama.rope.freq_base", Value::F32(10000.0));
    w.set("x.i8", Value::I8(-1));
    w.set("x.u16", Value::U16(3));
    w.set("x.i16", Value::I16(-3));
    w.set("x.i32", Value::I32(-9));
    w.set("x.bool", Value::Bool(true));
    w.set("x.i64", Value::I64(-5));
    w.set("x.f64", Value::F64(0.5));
    w.set("x.u8", Value::U8(1));
    w.set(
        "tokenizer.ggml.tokens",
        string_array(&["a", "bc", "<s>", "ü"]),
    );
    w.set(
        "x.nested",
        Value::Array(
            ValueType::Array,
            vec![Value::Array(
                ValueType::U32,
                vec![Value::U32(1), Value::U32(2)],
            )],
        ),
    );
    w.add_tensor("token_embd.weight", GgmlType::Q8_0, &[64, 4]);
    w.add_tensor("blk.0.attn_q.weight", GgmlType::Q4K, &[256, 2]);
    w.add_tensor("output_norm.weight", GgmlType::F32, &[64]);
    w.add_tensor("blk.0.ffn_up.weight", GgmlType::F16, &[64, 3]);
    let sizes: Vec<u64> = w.tensors.iter().map(|t| t.n_bytes().unwrap()).collect();
    w.to_bytes(|i| Ok(vec![0x11; sizes[i] as usize])).unwrap()
}

/// Parses `buf`, turning a panic into a test failure that names the mutation.
fn check(buf: &[u8], what: &str) -> bool {
    let r = panic::catch_unwind(|| GgufHeader::parse(buf));
    match r {
        Err(_) => panic!("reader panicked on {what}"),
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.len() > 10 && !msg.contains('\n'),
                "unclear error for {what}: {msg:?}"
            );
            false
        }
    }
}

/// Byte position of the offset field of tensor `name` in a file written by `GgufWriter`.
fn tensor_offset_field(buf: &[u8], name: &str) -> usize {
    let needle = name.as_bytes();
    let at = buf.windows(needle.len()).position(|w| w == needle).unwrap();
    let n_dims_at = at + needle.len();
    let n_dims = u32::from_le_bytes(buf[n_dims_at..n_dims_at + 4].try_into().unwrap()) as usize;
    n_dims_at + 4 + 8 * n_dims + 4
}

const INTERESTING: &[u64] = &[
    0,
    1,
    3,
    5,
    31,
    33,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 7,
];

#[test]
fn mutations_of_a_generated_file() {
    let good = sample_file();
    let h = GgufHeader::parse(&good).unwrap();
    let header_len = h.data_offset as usize;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut n = 0;
    let mut rejected = 0;

    // Every truncation point.
    for len in 0..good.len() {
        if !check(&good[..len], &format!("truncation at {len}")) {
            rejected += 1;
        }
        n += 1;
    }
    // Random byte flips in the header and tensor table.
    for i in 0..6000 {
        let mut buf = good.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(header_len);
            buf[at] ^= 1 << rng.below(8);
        }
        if !check(&buf, &format!("bit flips, case {i}")) {
            rejected += 1;
        }
        n += 1;
    }
    // Interesting values written as u32 and u64 at every header position: hits every count,
    // length, type and dimension field.
    for at in 0..header_len.saturating_sub(8) {
        for &v in INTERESTING {
            let mut buf = good.clone();
            if rng.below(2) == 0 {
                buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                buf[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
            if !check(&buf, &format!("value {v:#x} at byte {at}")) {
                rejected += 1;
            }
            n += 1;
        }
    }
    assert!(n >= 10_000, "only {n} cases");
    assert!(
        rejected > n / 2,
        "only {rejected} of {n} corrupted files were rejected"
    );
}

#[test]
fn specific_corruptions_give_specific_errors() {
    let good = sample_file();
    let err = |buf: &[u8]| GgufHeader::parse(buf).unwrap_err().to_string();

    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    assert!(err(&b).contains("not a GGUF file"), "{}", err(&b));

    for v in [1u32, 4, 0xffff_ffff] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(err(&b).contains("version"), "{}", err(&b));
    }

    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("tensor count"), "{}", err(&b));

    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(&b).contains("metadata count"), "{}", err(&b));

    let mut b = good.clone();
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(err(&b).contains("key of metadata entry 0"), "{}", err(&b));

    let at = tensor_offset_field(&good, "blk.0.attn_q.weight");
    let mut b = good.clone();
    let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    b[at..at + 8].copy_from_slice(&(off + 4).to_le_bytes());
    let e = err(&b);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("alignment"),
        "{e}"
    );

    let mut b = good.clone();
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = err(&b);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("past the end"),
        "{e}"
    );

    // Unknown tensor type id.
    let mut b = good.clone();
    b[at - 4..at].copy_from_slice(&1000u32.to_le_bytes());
    let e = err(&b);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("dsrun does not support"),
        "{e}"
    );

    // Truncated inside the data.
    let e = err(&good[..good.len() - 1]);
    assert!(e.contains("truncated"), "{e}");
}

/// The reader on real model files: truncation anywhere and byte flips in the header.
#[test]
fn mutations_of_a_real_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tiny-qwen3moe/tiny-qwen3moe-q4_k_m.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    let mut buf = std::fs::read(&path).unwrap();
    let h = GgufHeader::parse(&buf).unwrap();
    let header_len = h.data_offset as usize;
    let mut rng = Rng(0xfeed_beef_0000_0002);
    for i in 0..1000 {
        let len = if i % 2 == 0 {
            rng.below(header_len)
        } else {
            rng.below(buf.len())
        };
        assert!(!check(&buf[..len], &format!("truncation at {len}")));
    }
    for i in 0..1000 {
        let at = rng.below(header_len);
        let bit = 1 << rng.below(8);
        buf[at] ^= bit;
        check(&buf, &format!("flip at {at}, case {i}"));
        buf[at] ^= bit;
    }
}

#[test]
fn files_that_are_not_gguf_give_one_line() {
    let dir = common::scratch("fuzz", "");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.join("text.gguf");
    std::fs::write(&text, b"Hello, this is not a model.\n").unwrap();
    for (p, want) in [
        (dir.join("missing.gguf"), "No such file"),
        (dir.clone(), "directory"),
        (empty, "empty"),
        (text, "not a GGUF file"),
    ] {
        let e = match GgufFile::open(&p) {
            Ok(_) => panic!("{} opened", p.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(want) && !e.contains('\n'),
            "{}: {e}",
            p.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
