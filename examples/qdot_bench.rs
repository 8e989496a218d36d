//! Times `qmatmul` (quantized activations, integer dot products) at every SIMD level this CPU
//! has against the f32 `matmul`, on a 1536 x 1536 weight matrix.
//!
//! ```text
//! cargo run --release --example qdot_bench [-- TYPE ...]   # default: Q4_K
//! ```
//!
//! For each n_tok (1: decode, 64: prefill) it prints GFLOP/s (2 * rows * cols * n_tok per call)
//! and GB/s of weights read (one pass over the matrix per call). The "cold" decode line cycles
//! through enough copies of the matrix to overflow the last-level cache, so it measures memory
//! bandwidth rather than cache bandwidth. Times include quantizing the activations.

use std::time::{Duration, Instant};

use dsrun::kernels::matmul::matmul;
use dsrun::kernels::qdot::{qmatmul_acts_at, quantize_acts, SimdLevel};
use dsrun::tensor::{GgmlType, TensorView};

const N: usize = 1536;
/// Copies of the matrix for the cold run: about 64 MB of Q4_K.
const COLD_BYTES: usize = 64 << 20;

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

/// Seconds per call of `f`, the best of a few runs of about 0.3 s each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut calls = 0u32;
        while start.elapsed() < Duration::from_millis(300) {
            f();
            calls += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / calls as f64);
    }
    best
}

fn report(what: &str, n_tok: usize, bytes: usize, secs: f64) {
    let flops = 2.0 * (N * N * n_tok) as f64;
    println!(
        "{what:<22} n_tok={n_tok:<3} {:>9.1} us {:>8.1} GFLOP/s {:>7.1} GB/s",
        secs * 1e6,
        flops / secs / 1e9,
        bytes as f64 / secs / 1e9
    );
}

fn main() {
    let types: Vec<GgmlType> = std::env::args()
        .skip(1)
        .map(|a| GgmlType::from_name(&a).unwrap_or_else(|| panic!("unknown type {a}")))
        .collect();
    let types = if types.is_empty() {
        vec![GgmlType::Q4K]
    } else {
        types
    };
    println!(
        "threads: {}, levels: {:?}, selected: {}",
        rayon::current_num_threads(),
        SimdLevel::available(),
        dsrun::kernels::qdot::simd_level()
    );
    for ty in types {
        let w = pseudo_random(N * N, 1);
        let bytes = dsrun_quantize::ggml_quantize(ty.id(), &w, N).expect("ggml quantizes it");
        let row_bytes = bytes.len() / N;
        let view = TensorView {
            name: "w",
            ty,
            n_cols: N,
            n_rows: N,
            row_bytes,
            data: &bytes,
        };
        println!("\n{ty}: {N} x {N}, {:.2} MB", bytes.len() as f64 / 1e6);
        for n_tok in [1, 64] {
            let x = pseudo_random(N * n_tok, 2);
            let mut out = vec![0.0f32; N * n_tok];
            let secs = time(|| matmul(&view, &x, n_tok, &mut out));
            report("f32 matmul", n_tok, bytes.len(), secs);
            for level in SimdLevel::available() {
                let secs = time(|| {
                    let acts = quantize_acts(ty, &x, n_tok, N);
                    qmatmul_acts_at(level, &view, &acts, &mut out);
                });
                report(
                    &format!("qmatmul {}", level.name()),
                    n_tok,
                    bytes.len(),
                    secs,
                );
            }
        }

        // Cold decode: a different copy of the matrix each call.
        let copies = COLD_BYTES.div_ceil(bytes.len()).max(2);
        let big: Vec<u8> = bytes.repeat(copies);
        let views: Vec<TensorView> = big
            .chunks_exact(bytes.len())
            .map(|data| TensorView { data, ..view })
            .collect();
        let x = pseudo_random(N, 3);
        let mut out = vec![0.0f32; N];
        for level in SimdLevel::available() {
            let mut i = 0;
            let secs = time(|| {
                let acts = quantize_acts(ty, &x, 1, N);
                qmatmul_acts_at(level, &views[i % copies], &acts, &mut out);
                i += 1;
            });
            report(
                &format!("cold qmatmul {}", level.name()),
                1,
                bytes.len(),
                secs,
            );
        }
    }
}
