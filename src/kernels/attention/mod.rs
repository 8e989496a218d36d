//! Causal (and sliding-window) softmax attention over an f32 view of the KV cache, per query
//! and head: scores `q · k * scale`, softmax, then the probability-weighted sum of values.
//!
//! The plain twin ([`plain`]) is the obvious loop. The AVX2 kernels ([`avx2`], used on every
//! x86-64 CPU that has AVX2, including AVX-512 ones) compute the same values bit for bit:
//!
//! - a score is `dot_seq`: eight partial sums (lane `i` takes elements `i`, `i + 8`, ...),
//!   each a multiply then an add (no FMA), added in lane order at the end. That order is not an
//!   accident: SmolLM2 has query/key products of large magnitude that cancel, and this order
//!   lands nearest llama.cpp (perplexity 0.1% away where a pairwise order gives 0.4%). The SIMD
//!   kernel takes eight keys at once and transposes the eight accumulators, so the lane-order
//!   sum of all eight is seven vector adds;
//! - softmax is `softmax_lanes`: a polynomial `exp` and 16 partial sums, the same values from
//!   its scalar twin and its AVX-512 form (libm's `expf` and an in-order sum had been a third
//!   of a small model's prompt time);
//! - the value sum runs over keys in order for each output element, one vector of eight
//!   output elements at a time, or sixteen with AVX-512 ([`avx512`]), in passes of up to 64
//!   (AVX2) or 256 (AVX-512) elements whose accumulators stay in registers.
//!
//! With AVX2 or AVX-512 (head_dim a multiple of 8) work is split over (tile of up to 8 tokens,
//! key/value head) with `crate::pool`: the tile's heads and tokens go through the keys a block
//! of 256 at a time, so each block is read from memory once per tile (`grouped_tile`), and a
//! cache's own f16 or quantized rows are widened a block at a time inside it ([`Rows`]), never
//! as a whole. The plain level (the reference) splits work over (token, head) pairs, on rows
//! widened first. Either
//! way memory is a few rows of scores per task, never the whole (n, n_kv) matrix.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod group;
mod plain;
mod rows;

#[cfg(test)]
mod tests;

use super::qdot::{selected_level, SimdLevel};
use super::softmax_lanes;
pub use rows::Rows;

/// One batch of queries against the cache rows they may see.
#[derive(Debug, Clone, Copy)]
pub struct AttnInput<'a> {
    /// (n, n_head * head_dim): the batch's queries, after RoPE.
    pub q: &'a [f32],
    /// (pos0 + n, n_head_kv * head_dim): keys of every cached position up to the batch's end.
    pub k: Rows<'a>,
    /// (pos0 + n, n_head_kv * head_dim): values, as `k`.
    pub v: Rows<'a>,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Position of the batch's first token.
    pub pos0: usize,
    /// Sliding window: a query at position p sees p + 1 - w ..= p.
    pub window: Option<usize>,
    /// Multiplies every score (usually 1 / sqrt(head_dim)).
    pub scale: f32,
    /// Attention sinks (gpt-oss): per query head, a logit that joins each softmax but carries
    /// no value, so a head can attend to "nothing".
    pub sinks: Option<&'a [f32]>,
}

impl AttnInput<'_> {
    fn n_tok(&self) -> usize {
        self.q.len() / (self.n_head * self.head_dim)
    }

    fn check(&self, out: &[f32]) {
        let (hd, n) = (self.head_dim, self.n_tok());
        let kv_dim = self.n_head_kv * hd;
        assert!(hd > 0 && self.n_head_kv > 0, "attention: empty heads");
        assert!(
            self.n_head.is_multiple_of(self.n_head_kv),
            "attention: {} heads do not share {} key/value heads evenly",
            self.n_head,
            self.n_head_kv
        );
        assert_eq!(self.q.len(), n * self.n_head * hd, "attention: q shape");
        assert_eq!(out.len(), self.q.len(), "attention: out shape");
        if let Some(s) = self.sinks {
            assert_eq!(s.len(), self.n_head, "attention: one sink per head");
        }
        let seen = self.pos0 + n;
        assert!(
            self.k.len(kv_dim) >= seen && self.v.len(kv_dim) >= seen,
            "attention: the cache view holds fewer than pos0 + n positions"
        );
    }
}

/// Score and value-sum kernels of one SIMD family.
#[derive(Clone, Copy)]
struct Kernels {
    /// `s[j] = dot_seq(q, k_rows[lo + j]) * scale`; `k` starts at the first key's row (with the
    /// head's offset), rows `stride` apart.
    scores: fn(q: &[f32], k: &[f32], stride: usize, scale: f32, s: &mut [f32]),
    /// `o += sum_j p[j] * v_rows[j]`, keys in order; `v` as `k` above. Accumulating lets a
    /// caller split the keys into blocks: the same operations in the same order as one pass.
    values: fn(p: &[f32], v: &[f32], stride: usize, o: &mut [f32]),
    /// Softmax of a score row in place (`softmax_lanes`: the same values at every level).
    softmax: fn(&mut [f32]),
}

#[cfg(target_arch = "x86_64")]
fn softmax_avx512(x: &mut [f32]) {
    // SAFETY: selected only where AVX-512 F is available (`kernels_for`).
    unsafe { softmax_lanes::softmax_avx512(x) }
}

fn kernels_for(level: SimdLevel, head_dim: usize) -> Kernels {
    let plain = Kernels {
        scores: plain::scores,
        values: plain::values,
        softmax: softmax_lanes::softmax_plain,
    };
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 && level.is_available() && head_dim.is_multiple_of(8) {
        let wide = level >= SimdLevel::Avx512Vnni && head_dim.is_multiple_of(16);
        let avx512 = level >= SimdLevel::Avx512Vnni;
        return Kernels {
            scores: avx2::scores,
            values: if wide { avx512::values } else { avx2::values },
            softmax: if avx512 {
                softmax_avx512
            } else {
                softmax_lanes::softmax_plain
            },
        };
    }
    let _ = (level, head_dim);
    plain
}

/// Softmax of one score row in place with the selected SIMD level's form of `softmax_lanes`
/// (the same values at every level), for attention loops outside this module.
pub fn softmax_row(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if selected_level() >= SimdLevel::Avx512Vnni && selected_level().is_available() {
        return softmax_avx512(x);
    }
    softmax_lanes::softmax_plain(x)
}

/// Attention for every (token, head) of the batch into `out` (n, n_head * head_dim), with the
/// selected SIMD level.
pub fn attention(inp: &AttnInput<'_>, out: &mut [f32]) {
    attention_at(selected_level(), inp, out)
}

/// [`attention`] with the kernels of `level` (the plain ones where it has none).
pub fn attention_at(level: SimdLevel, inp: &AttnInput<'_>, out: &mut [f32]) {
    inp.check(out);
    let kern = kernels_for(level, inp.head_dim);
    let hd = inp.head_dim;
    let (q_dim, kv_dim) = (inp.n_head * hd, inp.n_head_kv * hd);
    let group = inp.n_head / inp.n_head_kv;
    // Small batches (decoding at short context) on the calling thread: rayon's wake-up costs
    // more than the work (the bound is qmatmul's, in multiply-adds).
    let n_tok = inp.n_tok();
    let serial = n_tok * inp.n_head * (inp.pos0 + n_tok) * hd < PAR_MIN_MACS;
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 && level.is_available() && hd.is_multiple_of(8) {
        // Tasks of a tile of tokens and one key/value head (`grouped_tile`): within one, each
        // block of keys and values is read from memory once for every head and token. Results
        // land key/value head after head, (token, group of heads) inside one, then in `out`.
        let tile = tile_tokens(inp, group);
        let gw = group * hd;
        // The AVX-512 kernels that take two or four heads of a group at once.
        let kern = Tiled {
            kern,
            wide: level >= SimdLevel::Avx512Vnni && hd.is_multiple_of(16),
        };
        let mut parts = vec![0.0f32; out.len()];
        let mut pieces = Vec::new();
        for (kvh, plane) in parts.chunks_mut(n_tok * gw).enumerate() {
            for (i, piece) in plane.chunks_mut(tile * gw).enumerate() {
                pieces.push((kvh, i * tile, piece));
            }
        }
        let task = |s: &mut Scratch, (kvh, t0, o): (usize, usize, &mut [f32])| {
            grouped_tile(inp, kern, s, kvh, t0, o)
        };
        if serial {
            let mut s = Scratch::default();
            pieces.into_iter().for_each(|p| task(&mut s, p));
        } else {
            crate::pool::for_each_owned(pieces, |p| task(&mut Scratch::default(), p));
        }
        for (kvh, plane) in parts.chunks_exact(n_tok * gw).enumerate() {
            for (t, r) in plane.chunks_exact(gw).enumerate() {
                out[t * q_dim + kvh * gw..][..gw].copy_from_slice(r);
            }
        }
        return;
    }
    // The per-head kernels read f32 rows: a cache's own rows are widened here, all at once.
    let (kw, vw);
    let (k, v) = match (inp.k.as_f32(), inp.v.as_f32()) {
        (Some(k), Some(v)) => (k, v),
        _ => {
            let seen = inp.pos0 + n_tok;
            kw = inp.k.widened(kv_dim, seen);
            vw = inp.v.widened(kv_dim, seen);
            (&kw[..], &vw[..])
        }
    };
    let one = |s: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
        let (t, head) = (idx / inp.n_head, idx % inp.n_head);
        let pos = inp.pos0 + t;
        let lo = inp.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let off = lo * kv_dim + (head / group) * hd;
        let q = &inp.q[t * q_dim + head * hd..t * q_dim + (head + 1) * hd];
        s.clear();
        s.resize(pos + 1 - lo, 0.0);
        (kern.scores)(q, &k[off..], kv_dim, inp.scale, s);
        o.fill(0.0);
        if let Some(sinks) = inp.sinks {
            s.push(sinks[head]);
            (kern.softmax)(s);
            s.pop();
        } else {
            (kern.softmax)(s);
        }
        (kern.values)(s, &v[off..], kv_dim, o);
    };
    if serial {
        let mut s = Vec::new();
        out.chunks_exact_mut(hd)
            .enumerate()
            .for_each(|item| one(&mut s, item));
    } else {
        // Tasks of the spinning pool (rayon's workers slept through half of a prompt's
        // attention); about 8 per thread, as causal rows grow in cost.
        let per_task = (out.len() / hd).div_ceil(crate::pool::threads() * 8).max(1);
        crate::pool::for_each_chunk_mut(out, per_task * hd, |c, o| {
            let mut s = Vec::new();
            for (i, oi) in o.chunks_exact_mut(hd).enumerate() {
                one(&mut s, (c * per_task + i, oi));
            }
        });
    }
}

/// Tokens per tile of [`grouped_tile`]: up to 8, fewer where the tile's score rows (one per
/// head and token, as long as the context) would pass 8 MiB.
#[cfg(target_arch = "x86_64")]
fn tile_tokens(inp: &AttnInput<'_>, group: usize) -> usize {
    let row = inp.pos0 + inp.n_tok() + 1;
    ((2 << 20) / (group * row)).clamp(1, 8)
}

/// The kernels of [`grouped_tile`]: the level's per-head ones, and with `wide` the AVX-512
/// ones for two or four heads of a group at once.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tiled {
    kern: Kernels,
    wide: bool,
}

/// Scratch of one task of [`grouped_tile`]: the tile's score rows, and a block of one head's
/// keys or values widened to f32 when the view is not f32.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    block: Vec<f32>,
}

/// Keys per block in [`grouped_tile`]: a block of one head's keys or values (256 rows of up to
/// 256 floats) stays in the core's L2 while every head and token of the tile uses it.
#[cfg(target_arch = "x86_64")]
const KEY_BLOCK: usize = 256;

/// The heads of key/value head `kvh` for the tokens `t0..t0 + o.len() / (group * head_dim)`
/// into `o` (token after token, head after head): scores (two heads at a time with `wide`),
/// block of keys by block of keys for every token of the tile, each (token, head)'s softmax
/// over its whole row, then the value sums, again block by block (four or two heads at a time
/// with `wide`, otherwise and for an odd head the per-head kernels). A score or an output
/// element sees the same operations in the same order as without tiles: tiling only changes
/// which work runs next to which, so each key and value row is read from memory once per tile
/// and not once per token (at 32K tokens one head's keys are 8 MiB: a per-token pass streamed
/// them from L3 or memory). `sc` holds the scores, one row of `n_keys + 1` per (token, head),
/// the last for a sink, and a widened block.
#[cfg(target_arch = "x86_64")]
fn grouped_tile(
    inp: &AttnInput<'_>,
    Tiled { kern, wide }: Tiled,
    sc: &mut Scratch,
    kvh: usize,
    t0: usize,
    o: &mut [f32],
) {
    let hd = inp.head_dim;
    let (q_dim, kv_dim) = (inp.n_head * hd, inp.n_head_kv * hd);
    let group = inp.n_head / inp.n_head_kv;
    let nt = o.len() / (group * hd);
    // The keys token i of the tile sees: lo..end.
    let span = |i: usize| {
        let pos = inp.pos0 + t0 + i;
        (
            inp.window.map_or(0, |w| (pos + 1).saturating_sub(w)),
            pos + 1,
        )
    };
    let (first, last) = (span(0).0, span(nt - 1).1);
    let row = last - first + 1;
    o.fill(0.0);
    let head0 = kvh * group;
    let q = |i: usize, h: usize| &inp.q[(t0 + i) * q_dim + (head0 + h) * hd..][..hd];
    let Scratch { scores: s, block } = &mut *sc;
    s.clear();
    s.resize(nt * group * row, 0.0);
    let mut rows: Vec<&mut [f32]> = s.chunks_exact_mut(row).collect();
    let cols = kvh * hd..(kvh + 1) * hd;
    let blocks = || {
        (first..last)
            .step_by(KEY_BLOCK)
            .map(|b| (b, (b + KEY_BLOCK).min(last)))
    };
    // The keys a..b of block (b0, b1) that token i sees, if any.
    let part = |i: usize, (b0, b1): (usize, usize)| {
        let (lo, end) = span(i);
        let (a, b) = (lo.max(b0), end.min(b1));
        (a < b).then_some((a, b, lo))
    };
    for blk in blocks() {
        // The block's keys of this head: the view itself, or widened into `block`.
        let (kb, stride) = inp.k.block(kv_dim, blk.0..blk.1, cols.clone(), block);
        for i in 0..nt {
            let Some((a, b, lo)) = part(i, blk) else {
                continue;
            };
            let k = &kb[(a - blk.0) * stride..];
            let r = &mut rows[i * group..(i + 1) * group];
            let mut h = 0;
            while h < group {
                if wide && h + 1 < group {
                    let (x, y) = r[h..h + 2].split_at_mut(1);
                    let pair = (&mut x[0][a - lo..b - lo], &mut y[0][a - lo..b - lo]);
                    group::scores_pair((q(i, h), q(i, h + 1)), k, stride, inp.scale, pair);
                    h += 2;
                } else {
                    (kern.scores)(q(i, h), k, stride, inp.scale, &mut r[h][a - lo..b - lo]);
                    h += 1;
                }
            }
        }
    }
    for i in 0..nt {
        let (lo, end) = span(i);
        let n = end - lo;
        for h in 0..group {
            let r = &mut rows[i * group + h];
            match inp.sinks {
                Some(sinks) => {
                    r[n] = sinks[head0 + h];
                    (kern.softmax)(&mut r[..=n]);
                }
                None => (kern.softmax)(&mut r[..n]),
            }
        }
    }
    for blk in blocks() {
        let (vb, stride) = inp.v.block(kv_dim, blk.0..blk.1, cols.clone(), block);
        for i in 0..nt {
            let Some((a, b, lo)) = part(i, blk) else {
                continue;
            };
            let v = &vb[(a - blk.0) * stride..];
            let p = |h: usize| &rows[i * group + h][a - lo..b - lo];
            let o = &mut o[i * group * hd..][..group * hd];
            let mut h = 0;
            while h < group {
                let left = group - h;
                let o = &mut o[h * hd..];
                if wide && left >= 4 {
                    let ps = [0, 1, 2, 3].map(|x| p(h + x));
                    group::values_group::<4>(ps, v, stride, &mut o[..4 * hd]);
                    h += 4;
                } else if wide && left >= 2 {
                    group::values_group::<2>([p(h), p(h + 1)], v, stride, &mut o[..2 * hd]);
                    h += 2;
                } else {
                    (kern.values)(p(h), v, stride, &mut o[..hd]);
                    h += 1;
                }
            }
        }
    }
}

/// Below this many multiply-adds (over scores and values together, roughly) attention runs on
/// the calling thread.
const PAR_MIN_MACS: usize = 1 << 17;
