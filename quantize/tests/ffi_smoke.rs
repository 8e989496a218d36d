//! Smoke tests that the FFI to ggml works: a quantize/dequantize round trip, and ggml's GGUF
//! reader on a small file built by hand.

use dsrun_quantize::{
    ggml_blck_size, ggml_dequantize, ggml_quantize, ggml_type_name, ggml_type_size, read_gguf,
    read_gguf_bytes, GgufValue,
};

const Q4_K: u32 = 12;
const Q8_0: u32 = 8;

/// xorshift64*, mapped to [-1, 1).
fn random_floats(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545F4914F6CDD1D);
            (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn q4_k_round_trip_through_ggml() {
    assert_eq!(ggml_type_name(Q4_K), "q4_K");
    assert_eq!(
        (ggml_blck_size(Q4_K), ggml_type_size(Q4_K)),
        (Some(256), Some(144))
    );

    let (n_rows, n_per_row) = (4, 512);
    let x = random_floats(42, n_rows * n_per_row);
    let q = ggml_quantize(Q4_K, &x, n_per_row).expect("ggml quantizes Q4_K");
    assert_eq!(q.len(), n_rows * n_per_row / 256 * 144);
    let y = ggml_dequantize(Q4_K, &q, x.len()).expect("ggml dequantizes Q4_K");

    // 4-bit quants over [-1, 1): a step of about 2/15, so errors stay well under 0.1 and the
    // RMS error near step / sqrt(12).
    let max_err = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let rms = (x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        / x.len() as f32)
        .sqrt();
    assert!(max_err < 0.1, "max error {max_err}");
    assert!(rms < 0.05, "rms error {rms}");
}

/// Appends a GGUF string (u64 length, bytes).
fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file: four KVs and one 32x2 Q8_0 tensor.
fn small_gguf() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&4u64.to_le_bytes()); // kvs

    put_str(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut b, "llama");

    put_str(&mut b, "x.u32");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&7u32.to_le_bytes());

    put_str(&mut b, "x.i16s");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&(-1i16).to_le_bytes());
    b.extend_from_slice(&2i16.to_le_bytes());

    put_str(&mut b, "x.strs");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    put_str(&mut b, "a");
    put_str(&mut b, "bc");

    put_str(&mut b, "t");
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&32u64.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&Q8_0.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());

    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, 2 * 34));
    b
}

#[test]
fn gguf_reader_sees_hand_built_file() {
    let bytes = small_gguf();
    let path = std::env::temp_dir().join(format!("dsrun-quantize-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let from_file = read_gguf(&path);
    std::fs::remove_file(&path).unwrap();
    let g = from_file.expect("ggml reads the file");
    assert_eq!(read_gguf_bytes(&bytes).as_ref(), Some(&g));

    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset, (bytes.len() - 68) as u64);
    let kv: Vec<_> = g
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.type_id, &kv.value))
        .collect();
    assert_eq!(
        kv[0],
        ("general.architecture", 8, &GgufValue::Str("llama".into()))
    );
    assert_eq!(kv[1], ("x.u32", 4, &GgufValue::U64(7)));
    assert_eq!(
        kv[2],
        (
            "x.i16s",
            9,
            &GgufValue::Array {
                elem_type: 3,
                values: vec![GgufValue::I64(-1), GgufValue::I64(2)]
            }
        )
    );
    assert_eq!(
        kv[3],
        (
            "x.strs",
            9,
            &GgufValue::Array {
                elem_type: 8,
                values: vec![GgufValue::Str("a".into()), GgufValue::Str("bc".into())]
            }
        )
    );
    assert_eq!(g.tensors.len(), 1);
    let t = &g.tensors[0];
    assert_eq!((t.name.as_str(), t.type_id), ("t", Q8_0));
    assert_eq!((t.ne, t.dims.as_slice()), ([32, 2, 1, 1], &[32u64, 2][..]));
    assert_eq!((t.offset, t.size), (0, 68));
}

#[test]
fn gguf_reader_rejects_garbage() {
    assert!(read_gguf_bytes(b"GGUF\x03\0\0\0").is_none());
    assert!(read_gguf_bytes(b"nope").is_none());
    assert!(read_gguf_bytes(&[]).is_none());
    assert!(read_gguf(std::path::Path::new("/nonexistent/file.gguf")).is_none());
}
