//! Quantized dot products, ggml's way: activations are quantized on the fly to an 8-bit block
//! type (Q8_0, Q8_1 or Q8_K: ggml's `vec_dot_type` of the weight type), then each weight row is
//! dotted with them block by block in integer arithmetic, with one float multiply per block.
//!
//! Every kernel has a plain twin in [`plain`], written for clarity; the SIMD ones (AVX2,
//! AVX-512 VNNI, NEON) are chosen once at run time and tested against it. `DSRUN_SIMD=plain`,
//! `avx2` or `avx512` (read once) forces a lower level than the CPU offers. No kernel needs a
//! compile-time CPU flag: the binary runs on any x86-64 or aarch64 machine.
//!
//! | weights                              | activations | AVX2 | AVX-512 VNNI   | NEON  |
//! |--------------------------------------|-------------|------|----------------|-------|
//! | Q4_0 Q5_0 Q8_0 IQ4_NL                | Q8_0        | yes  | yes, 8-token   | yes   |
//! | MXFP4                                | Q8_0        | yes  | AVX2's (1)     | yes   |
//! | Q4_1 Q5_1                            | Q8_1        | yes  | yes, 8-token   | yes   |
//! | Q4_K Q5_K Q6_K IQ4_XS                | Q8_K        | yes  | yes, 8-token   | yes   |
//! | Q2_K Q3_K                            | Q8_K        | plain| plain          | plain |
//! | F32 BF16                             | f32         | yes  | AVX2's         | yes   |
//! | F16                                  | f32         | yes  | AVX2's         | plain |
//! | Q8_1 Q8_K (not weight types in ggml) | f32         | plain decode-to-f32 fallback       |
//!
//! (1) The AVX-512 MXFP4 kernel was off the plain twin by up to 1e-5 relative (a scale that was
//! not exactly the plain one's); until that is found, AVX-512 CPUs use the AVX2 kernel.
//!
//! "8-token": a twin kernel that unpacks each weight block once for eight activation rows, used
//! by [`qmatmul`] for prompts; its results equal the single-row kernel's bit for bit.
//!
//! Decode (one activation row) of Q4_0 and Q4_1 on AVX-512 VNNI CPUs takes four weight rows per
//! call ([`avx512_rows`]: loads interleaved, prefetched, one shared reduction); its results equal
//! the single-row kernel's bit for bit too.
//!
//! Products of 16 tokens or more (4 for some, see [`gemm::min_tok`]) of Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, IQ4_NL, Q4_K and Q6_K on AVX-512 VNNI and AVX2 CPUs go through [`gemm`]
//! instead: weights unpacked per task into panels of 32 interleaved rows and multiplied by
//! register tiles of 32 rows x 4 tokens, with the plain kernels' arithmetic (results equal to
//! them bit for bit). The activations are quantized by AVX-512 twins of the reference
//! quantizers there ([`q8_avx512`], equal bit for bit).
//!
//! Layout of the quantized activations ([`QuantizedActs`]): struct-of-arrays rather than ggml's
//! packed blocks, so SIMD loads are contiguous and scales are already f32. The values are exactly
//! ggml's (see [`QuantizedActs::to_ggml_row`]); the per-block sums are extras that let VNNI
//! kernels use unsigned weights (`sum((q + c) * y) - c * sum(y)`).

mod gemm;
mod plain;
mod q8;
mod qmatmul;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_gemm;
#[cfg(target_arch = "x86_64")]
mod avx2_gemm_k;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_gemm;
#[cfg(target_arch = "x86_64")]
mod avx512_gemm_k;
#[cfg(target_arch = "x86_64")]
mod avx512_k;
#[cfg(target_arch = "x86_64")]
mod avx512_rows;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod q8_avx512;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use crate::tensor::GgmlType;

pub use gemm::uses_gemm;
pub use qmatmul::{
    qmatmul, qmatmul_acts, qmatmul_acts_at, qmatmul_batch, qmatmul_batch_at, Product, Tokens,
};

/// Values per block of Q8_0 / Q8_1.
pub const QK8_0: usize = 32;
/// Values per block of Q8_K (and of the k-quants).
pub const QK_K: usize = 256;

/// The form activations take for a weight type: ggml's `vec_dot_type`, except that F16 and BF16
/// weights are widened to f32 and dotted with f32 activations (ggml rounds the activations to
/// f16 / bf16 instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActKind {
    /// Blocks of 32 i8 with an f16 scale.
    Q8_0,
    /// Q8_0 plus `s = d * sum(q)` rounded to f16 (for weights with an offset: Q4_1, Q5_1).
    Q8_1,
    /// Blocks of 256 i8 with an f32 scale and sums of each 16.
    Q8K,
    /// The f32 activations themselves.
    F32,
}

/// The activation form `weight_ty` is dotted against.
pub fn act_kind(weight_ty: GgmlType) -> ActKind {
    use GgmlType::*;
    match weight_ty {
        Q4_0 | Q5_0 | Q8_0 | Iq4Nl | Mxfp4 => ActKind::Q8_0,
        Q4_1 | Q5_1 => ActKind::Q8_1,
        Q2K | Q3K | Q4K | Q5K | Q6K | Iq4Xs => ActKind::Q8K,
        // F32/F16/BF16 natively; Q8_1 and Q8_K (never weights in practice) and anything else
        // through the decode-to-f32 fallback.
        _ => ActKind::F32,
    }
}

/// A kernel family, from slowest to fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable Rust, the reference twins.
    Plain,
    /// AArch64 Advanced SIMD (every aarch64 CPU has it).
    Neon,
    /// x86-64 AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (Ice Lake, Cascade Lake, Zen 4 and later), plus the AVX2 set.
    Avx512Vnni,
}

impl SimdLevel {
    /// The name used in reports and in `DSRUN_SIMD`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Plain => "plain",
            SimdLevel::Neon => "neon",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the level's kernels.
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Plain => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Vnni => {
                SimdLevel::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every level this CPU can run, slowest first.
    pub fn available() -> Vec<SimdLevel> {
        [
            SimdLevel::Plain,
            SimdLevel::Neon,
            SimdLevel::Avx2,
            SimdLevel::Avx512Vnni,
        ]
        .into_iter()
        .filter(|l| l.is_available())
        .collect()
    }

    /// The level to use given `DSRUN_SIMD` (`env`) and the levels this CPU has (slowest
    /// first): the named level if available, else the fastest available one below it of the
    /// same architecture (so `avx2` on aarch64 gives plain), else (unset or not a level name)
    /// the fastest of all. `avx512` and `avx512vnni` are the same.
    fn choose(env: Option<&str>, available: &[SimdLevel]) -> SimdLevel {
        let best = *available.last().unwrap_or(&SimdLevel::Plain);
        let forced = env.and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
            "plain" => Some(SimdLevel::Plain),
            "neon" => Some(SimdLevel::Neon),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx512vnni" => Some(SimdLevel::Avx512Vnni),
            _ => None,
        });
        match forced {
            None => best,
            Some(level) => available
                .iter()
                .copied()
                .filter(|&l| l <= level && (l == level || l != SimdLevel::Neon))
                .max()
                .unwrap_or(SimdLevel::Plain),
        }
    }
}

/// The level [`vec_dot`] and [`qmatmul`] use: detected once, on first use.
pub fn selected_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let env = std::env::var("DSRUN_SIMD").ok();
        SimdLevel::choose(env.as_deref(), &SimdLevel::available())
    })
}

/// Name of the chosen SIMD level, for reports: "avx512vnni", "avx2", "neon" or "plain".
pub fn simd_level() -> &'static str {
    selected_level().name()
}

/// Activations quantized for one weight type: `n_tok` rows of `k` values in the weight type's
/// [`ActKind`]. Arrays are (n_tok, …) row-major; which are filled depends on the kind.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    kind: ActKind,
    n_tok: usize,
    k: usize,
    /// (n_tok, k) quants (Q8 kinds).
    qs: Vec<i8>,
    /// (n_tok, k / block) scales: Q8_0/Q8_1 the f16 scale widened, Q8_K the f32 one.
    d: Vec<f32>,
    /// (n_tok, k / 32) sum of each block's quants (Q8_0/Q8_1).
    sums: Vec<i32>,
    /// (n_tok, k / 16) sum of each 16 quants (Q8_K's `bsums`).
    bsums: Vec<i16>,
    /// (n_tok, k / 32) Q8_1's f16 `s = d * sum(q)`, widened.
    s: Vec<f32>,
    /// (n_tok, k) the activations themselves (F32).
    f: Vec<f32>,
}

/// One activation row as the kernels see it; slices a kind does not use are empty.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    /// Only the AVX-512 kernels read the block sums.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub sums: &'a [i32],
    pub bsums: &'a [i16],
    pub s: &'a [f32],
    pub f: &'a [f32],
}

impl QuantizedActs {
    pub fn kind(&self) -> ActKind {
        self.kind
    }

    pub fn n_tok(&self) -> usize {
        self.n_tok
    }

    pub fn k(&self) -> usize {
        self.k
    }

    fn block(&self) -> usize {
        match self.kind {
            ActKind::Q8_0 | ActKind::Q8_1 => QK8_0,
            ActKind::Q8K => QK_K,
            ActKind::F32 => 1,
        }
    }

    pub(crate) fn row(&self, t: usize) -> ActRow<'_> {
        assert!(t < self.n_tok, "token {t} of {}", self.n_tok);
        let k = self.k;
        let part = |len: usize, per_row: usize| {
            if len == 0 {
                0..0
            } else {
                t * per_row..(t + 1) * per_row
            }
        };
        let nb = k / self.block();
        ActRow {
            qs: &self.qs[part(self.qs.len(), k)],
            d: &self.d[part(self.d.len(), nb)],
            sums: &self.sums[part(self.sums.len(), k / QK8_0)],
            bsums: &self.bsums[part(self.bsums.len(), k / 16)],
            s: &self.s[part(self.s.len(), k / QK8_0)],
            f: &self.f[part(self.f.len(), k)],
        }
    }

    /// The rows `tokens`, in that order, as activations of their own (each row is quantized on
    /// its own, so this equals quantizing the gathered f32 rows).
    pub(crate) fn select(&self, tokens: impl Iterator<Item = usize> + Clone) -> QuantizedActs {
        fn gather<T: Copy>(v: &[T], n_tok: usize, tokens: impl Iterator<Item = usize>) -> Vec<T> {
            if v.is_empty() {
                return Vec::new();
            }
            let per = v.len() / n_tok;
            let mut out = Vec::new();
            for t in tokens {
                out.extend_from_slice(&v[t * per..(t + 1) * per]);
            }
            out
        }
        let n = self.n_tok;
        QuantizedActs {
            kind: self.kind,
            n_tok: tokens.clone().count(),
            k: self.k,
            qs: gather(&self.qs, n, tokens.clone()),
            d: gather(&self.d, n, tokens.clone()),
            sums: gather(&self.sums, n, tokens.clone()),
            bsums: gather(&self.bsums, n, tokens.clone()),
            s: gather(&self.s, n, tokens.clone()),
            f: gather(&self.f, n, tokens),
        }
    }

    /// Row `t` as ggml's own blocks (`block_q8_0`, `block_q8_1`, `block_q8_K`, or f32), for
    /// comparing with ggml's quantizers byte for byte.
    pub fn to_ggml_row(&self, t: usize) -> Vec<u8> {
        q8::to_ggml_row(self.kind, &self.row(t))
    }
}

/// Quantizes `n_tok` rows of `k` activations (`x` is (n_tok, k)) into the form `weight_ty` is
/// dotted against, exactly as ggml's `quantize_row_q8_0_ref` / `_q8_1_ref` / `_q8_K_ref` do.
///
/// Panics if `x.len() != n_tok * k` or `k` is not a whole number of the weight type's blocks.
pub fn quantize_acts(weight_ty: GgmlType, x: &[f32], n_tok: usize, k: usize) -> QuantizedActs {
    assert_eq!(x.len(), n_tok * k, "quantize_acts: x is not (n_tok, k)");
    let bs = weight_ty
        .block_size()
        .unwrap_or_else(|| panic!("quantize_acts: unknown type {weight_ty}"));
    assert!(
        weight_ty.is_supported(),
        "quantize_acts: {weight_ty} is not supported"
    );
    assert!(
        k.is_multiple_of(bs),
        "quantize_acts: {k} values is not a whole number of {weight_ty} blocks"
    );
    let kind = act_kind(weight_ty);
    let mut a = QuantizedActs {
        kind,
        n_tok,
        k,
        qs: Vec::new(),
        d: Vec::new(),
        sums: Vec::new(),
        bsums: Vec::new(),
        s: Vec::new(),
        f: Vec::new(),
    };
    let nb32 = n_tok * k / QK8_0;
    match kind {
        ActKind::F32 => a.f = x.to_vec(),
        ActKind::Q8_0 => (a.qs, a.d, a.sums) = (vec![0; n_tok * k], vec![0.0; nb32], vec![0; nb32]),
        ActKind::Q8_1 => {
            (a.qs, a.d, a.sums) = (vec![0; n_tok * k], vec![0.0; nb32], vec![0; nb32]);
            a.s = vec![0.0; nb32];
        }
        ActKind::Q8K => {
            let nb = n_tok * k / QK_K;
            (a.qs, a.d, a.bsums) = (vec![0; n_tok * k], vec![0.0; nb], vec![0; nb * 16]);
        }
    }
    if kind != ActKind::F32 {
        let parts = Parts {
            x,
            qs: &mut a.qs,
            d: &mut a.d,
            sums: &mut a.sums,
            bsums: &mut a.bsums,
            s: &mut a.s,
        };
        parts.quantize(kind, n_tok);
    }
    a
}

/// Rows of activations and the arrays their quantized form goes to (unused ones empty).
struct Parts<'a> {
    x: &'a [f32],
    qs: &'a mut [i8],
    d: &'a mut [f32],
    sums: &'a mut [i32],
    bsums: &'a mut [i16],
    s: &'a mut [f32],
}

impl Parts<'_> {
    /// Quantizes `n_rows` rows: here for short inputs, else in pieces of rows on the threads of
    /// `crate::pool` (long prompts; with rayon's `join` the second half mostly waited for a
    /// sleeping worker and ran on the caller after the first).
    fn quantize(self, kind: ActKind, n_rows: usize) {
        let threads = crate::pool::threads();
        if threads > 1 && n_rows > 1 && self.x.len() > 1 << 15 {
            let n_pieces = n_rows.min(threads * 4);
            let mut pieces = Vec::with_capacity(n_pieces);
            let (mut rest, mut left) = (self, n_rows);
            for i in 0..n_pieces {
                let take = left / (n_pieces - i);
                let (a, b) = rest.split(take, left);
                pieces.push((a, take));
                (rest, left) = (b, left - take);
            }
            crate::pool::for_each_owned(pieces, |(p, rows)| p.quantize_here(kind, rows));
            return;
        }
        self.quantize_here(kind, n_rows);
    }

    /// Quantizes all rows on the calling thread.
    fn quantize_here(self, kind: ActKind, _n_rows: usize) {
        let fast = q8::fast();
        if kind == ActKind::Q8K {
            let blocks = self
                .x
                .chunks_exact(QK_K)
                .zip(self.qs.chunks_exact_mut(QK_K));
            for (i, (xb, qb)) in blocks.enumerate() {
                let bsums = &mut self.bsums[16 * i..16 * i + 16];
                self.d[i] = q8::q8_k_block(fast, xb, qb, bsums);
            }
            return;
        }
        let with_s = kind == ActKind::Q8_1;
        let blocks = self
            .x
            .chunks_exact(QK8_0)
            .zip(self.qs.chunks_exact_mut(QK8_0));
        for (i, (xb, qb)) in blocks.enumerate() {
            let (d, sum, s) = q8::q8_0_block(fast, xb, qb, with_s);
            (self.d[i], self.sums[i]) = (d, sum);
            if let Some(s) = s {
                self.s[i] = s;
            }
        }
    }

    /// The first `at` of `n_rows` rows, and the rest.
    fn split(self, at: usize, n_rows: usize) -> (Self, Self) {
        fn cut<T>(v: &mut [T], at: usize, n_rows: usize) -> (&mut [T], &mut [T]) {
            v.split_at_mut(v.len() / n_rows * at)
        }
        let x = self.x.split_at(self.x.len() / n_rows * at);
        let qs = cut(self.qs, at, n_rows);
        let d = cut(self.d, at, n_rows);
        let sums = cut(self.sums, at, n_rows);
        let bsums = cut(self.bsums, at, n_rows);
        let s = cut(self.s, at, n_rows);
        (
            Parts {
                x: x.0,
                qs: qs.0,
                d: d.0,
                sums: sums.0,
                bsums: bsums.0,
                s: s.0,
            },
            Parts {
                x: x.1,
                qs: qs.1,
                d: d.1,
                sums: sums.1,
                bsums: bsums.1,
                s: s.1,
            },
        )
    }
}

/// Dot of one weight row (`w_row`: `k` values of `weight_ty`, as stored) with activation row
/// `t`, at the selected SIMD level.
pub fn vec_dot(weight_ty: GgmlType, w_row: &[u8], acts: &QuantizedActs, t: usize) -> f32 {
    vec_dot_at(selected_level(), weight_ty, w_row, acts, t)
}

/// [`vec_dot`] at a given level (which must be available: see [`SimdLevel::available`]).
pub fn vec_dot_at(
    level: SimdLevel,
    weight_ty: GgmlType,
    w_row: &[u8],
    acts: &QuantizedActs,
    t: usize,
) -> f32 {
    let dot = Kernel::new(level, weight_ty, acts);
    assert_eq!(
        Some(w_row.len() as u64),
        weight_ty.row_bytes(acts.k as u64),
        "vec_dot: weight row is not {} values of {weight_ty}",
        acts.k
    );
    dot.call(w_row, &acts.row(t))
}

/// A row kernel: `unsafe` only because SIMD kernels need their CPU features. Every kernel reads
/// whole blocks of the row it is given and the matching parts of the activation row, and
/// nothing else.
pub(crate) type DotFn = unsafe fn(&[u8], &ActRow<'_>) -> f32;

/// Tokens a multi-token kernel takes at once.
pub(crate) const MULTI: usize = 8;

/// A kernel for [`MULTI`] activation rows at once: each weight block is unpacked once for all of
/// them. Its results equal the single-token kernel's bit for bit.
pub(crate) type DotMultiFn = unsafe fn(&[u8], &[ActRow<'_>; MULTI]) -> [f32; MULTI];

/// Weight rows a multi-row kernel takes at once.
pub(crate) const ROWS: usize = 4;

/// A kernel for [`ROWS`] consecutive weight rows (`w`: that many rows of `row_bytes` bytes)
/// against one activation row, for decode: the rows' loads overlap and the activation loads are
/// shared. Its results equal the single-row kernel's bit for bit.
pub(crate) type DotRowsFn = unsafe fn(&[u8], usize, &ActRow<'_>) -> [f32; ROWS];

/// A checked kernel choice: the level is available and the activations fit the weight type.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    f: DotFn,
    multi: Option<DotMultiFn>,
    rows: Option<DotRowsFn>,
}

impl Kernel {
    pub(crate) fn new(level: SimdLevel, weight_ty: GgmlType, acts: &QuantizedActs) -> Kernel {
        assert!(level.is_available(), "SIMD level {level:?} not available");
        assert!(
            weight_ty.is_supported(),
            "vec_dot: {weight_ty} is not supported"
        );
        assert_eq!(
            acts.kind,
            act_kind(weight_ty),
            "vec_dot: activations quantized for another kind than {weight_ty} needs"
        );
        Kernel {
            f: kernel_for(level, weight_ty),
            multi: multi_kernel_for(level, weight_ty),
            rows: rows_kernel_for(level, weight_ty),
        }
    }

    /// Whether [`Kernel::call_rows`] has a multi-row kernel behind it.
    pub(crate) fn has_rows(&self) -> bool {
        self.rows.is_some()
    }

    /// [`Kernel::call`] for the [`ROWS`] rows of `row_bytes` bytes each in `w`, through the
    /// multi-row kernel where there is one.
    pub(crate) fn call_rows(&self, w: &[u8], row_bytes: usize, a: &ActRow<'_>) -> [f32; ROWS] {
        assert_eq!(w.len(), ROWS * row_bytes, "call_rows: not {ROWS} rows");
        match self.rows {
            // SAFETY: as in `call`; the multi-row kernel was chosen with the single one.
            Some(f) => unsafe { f(w, row_bytes, a) },
            None => std::array::from_fn(|r| self.call(&w[r * row_bytes..(r + 1) * row_bytes], a)),
        }
    }

    /// `w_row` must hold exactly one row of the activations' length (callers check it).
    pub(crate) fn call(&self, w_row: &[u8], a: &ActRow<'_>) -> f32 {
        // SAFETY: `Kernel::new` checked that the CPU has the level's features, and the kernel
        // was chosen for this weight type and these activations.
        unsafe { (self.f)(w_row, a) }
    }

    /// [`Kernel::call`] for [`MULTI`] rows, through the multi-token kernel where there is one.
    pub(crate) fn call_multi(&self, w_row: &[u8], a: &[ActRow<'_>; MULTI]) -> [f32; MULTI] {
        match self.multi {
            // SAFETY: as in `call`; the multi-token kernel was chosen with the single one.
            Some(f) => unsafe { f(w_row, a) },
            None => std::array::from_fn(|t| self.call(w_row, &a[t])),
        }
    }
}

/// The level's multi-token kernel for `ty`, if it has one.
fn multi_kernel_for(level: SimdLevel, ty: GgmlType) -> Option<DotMultiFn> {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni => avx512::kernel_multi(ty).or_else(|| avx512_k::kernel_multi(ty)),
        _ => {
            let _ = ty;
            None
        }
    }
}

/// The level's multi-row kernel for `ty`, if it has one.
fn rows_kernel_for(level: SimdLevel, ty: GgmlType) -> Option<DotRowsFn> {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni => avx512_rows::kernel_rows(ty),
        _ => {
            let _ = ty;
            None
        }
    }
}

/// The level's kernel for `ty`, or the plain twin where the level has none.
fn kernel_for(level: SimdLevel, ty: GgmlType) -> DotFn {
    let simd: Option<DotFn> = match level {
        SimdLevel::Plain => None,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => avx2::kernel(ty).or_else(|| avx2_k::kernel(ty)),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni => avx512::kernel(ty)
            .or_else(|| avx512_k::kernel(ty))
            .or_else(|| avx2::kernel(ty))
            .or_else(|| avx2_k::kernel(ty)),
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => neon::kernel(ty),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    simd.unwrap_or_else(|| plain::kernel(ty))
}
