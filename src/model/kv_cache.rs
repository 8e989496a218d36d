//! The key/value cache: one (n_ctx, n_head_kv * head_dim) buffer per layer for K and one for V,
//! indexed by position, each in its own type: f16 (llama.cpp's default), or q8_0 / q4_0 (its
//! `-ctk` / `-ctv`), encoded with dsrun's bit-exact quantizers and widened to f32 for attention.
//!
//! A sliding-window layer (gemma3's local layers) keeps only its window: a ring of `w` rows,
//! position `p` in slot `p % w`. A batch attends over the ring's rows of the `w - 1` positions
//! before it and its own rows (rounded through the cache type exactly as storing and reading
//! them back would), so the result is the same as with a full cache masked by the window.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::kv_window::{StreamConfig, StreamLayer};
use crate::error::{Error, Result};
use crate::kernels::attention;
use crate::tensor::quants;
use crate::tensor::GgmlType;

/// The storage types of the K and V caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvTypes {
    pub k: GgmlType,
    pub v: GgmlType,
}

impl Default for KvTypes {
    fn default() -> Self {
        KvTypes {
            k: GgmlType::F16,
            v: GgmlType::F16,
        }
    }
}

/// The cache types dsrun stores, by llama.cpp's names for `-ctk` / `-ctv`.
pub const KV_TYPES: [GgmlType; 3] = [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0];

/// Parses a cache type name as llama.cpp spells it ("f16", "q8_0", "q4_0").
pub fn parse_kv_type(name: &str) -> Result<GgmlType> {
    GgmlType::from_name(name)
        .filter(|t| KV_TYPES.contains(t))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "unknown KV cache type {name:?}: expected one of f16, q8_0, q4_0"
            ))
        })
}

/// One layer's rows of K or V.
enum Rows {
    F16(Vec<f16>),
    /// Whole blocks of a quantized type, `row_bytes` per position.
    Quant(Vec<u8>),
}

struct Buf {
    ty: GgmlType,
    row_bytes: usize,
    /// Positions each layer holds.
    caps: Vec<usize>,
    rows: Vec<Rows>,
}

impl Buf {
    /// Layer `il` holds `caps[il]` positions.
    fn new(ty: GgmlType, caps: &[usize], kv_dim: usize) -> Result<Buf> {
        let row_bytes = ty
            .row_bytes(kv_dim as u64)
            .filter(|_| KV_TYPES.contains(&ty))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "a {} KV cache needs rows of whole blocks: {kv_dim} values per position \
                     do not split into blocks of {}",
                    ty.name().to_lowercase(),
                    ty.block_size().unwrap_or(0)
                ))
            })? as usize;
        // Zeroed buffers come from the allocator's zeroed pages, which the OS maps only when
        // written: the cache costs resident memory for the positions used, not for n_ctx
        // (`vec![f16::ZERO; n]` wrote every element).
        let rows = caps
            .iter()
            .map(|&n_ctx| match ty {
                GgmlType::F16 => Rows::F16(vec![0u16; n_ctx * kv_dim].reinterpret_into::<f16>()),
                _ => Rows::Quant(vec![0u8; n_ctx * row_bytes]),
            })
            .collect();
        Ok(Buf {
            ty,
            row_bytes,
            caps: caps.to_vec(),
            rows,
        })
    }

    fn store(&mut self, il: usize, pos: usize, kv_dim: usize, x: &[f32]) {
        match &mut self.rows[il] {
            Rows::F16(d) => d[pos * kv_dim..pos * kv_dim + x.len()].convert_from_f32_slice(x),
            Rows::Quant(d) => {
                let n = x.len() / kv_dim;
                let dst = &mut d[pos * self.row_bytes..(pos + n) * self.row_bytes];
                quants::quantize(self.ty, x, dst).expect("row size checked in KvCache::new");
            }
        }
    }

    fn widen(&self, il: usize, n_pos: usize, out: &mut [f32]) {
        self.widen_from(il, 0, n_pos, out)
    }

    /// The first `n_pos` rows of layer `il` as stored, for attention to read in place.
    fn view(&self, il: usize, n_pos: usize, kv_dim: usize) -> attention::Rows<'_> {
        match &self.rows[il] {
            Rows::F16(d) => attention::Rows::F16(&d[..n_pos * kv_dim]),
            Rows::Quant(d) => attention::Rows::Quant {
                ty: self.ty,
                data: &d[..n_pos * self.row_bytes],
                row_bytes: self.row_bytes,
            },
        }
    }

    /// Widens `n_pos` rows from slot `slot` on.
    fn widen_from(&self, il: usize, slot: usize, n_pos: usize, out: &mut [f32]) {
        match &self.rows[il] {
            Rows::F16(d) => {
                let a = slot * out.len() / n_pos.max(1);
                d[a..a + out.len()].convert_to_f32_slice(out)
            }
            Rows::Quant(d) => {
                let src = &d[slot * self.row_bytes..(slot + n_pos) * self.row_bytes];
                quants::dequantize(self.ty, src, out).expect("row size checked in KvCache::new")
            }
        }
    }

    /// `x` as storing it and reading it back gives.
    fn round_trip(&self, x: &[f32], kv_dim: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        if self.ty == GgmlType::F16 {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = f16::from_f32(v).to_f32();
            }
        } else {
            let mut enc = vec![0u8; x.len() / kv_dim * self.row_bytes];
            quants::quantize(self.ty, x, &mut enc).expect("row size checked in KvCache::new");
            quants::dequantize(self.ty, &enc, &mut out).expect("row size checked");
        }
        out
    }
}

pub struct KvCache {
    pub n_ctx: usize,
    pub kv_dim: usize,
    k: Buf,
    v: Buf,
    /// Per layer: `Some(w)` for a sliding-window layer kept as a ring of `w` positions.
    windows: Vec<Option<usize>>,
    /// `--kv-window`: the settings, and per layer the sinks and summary of a stream layer (a
    /// layer without a native window, whose ring of `window` rows is in `k` / `v`).
    stream: Option<(StreamConfig, Vec<Option<StreamLayer>>)>,
    /// Positions 0..n_past hold valid entries.
    pub n_past: usize,
}

impl KvCache {
    /// An f16 cache.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> KvCache {
        Self::with_types(n_layer, n_ctx, kv_dim, KvTypes::default()).expect("f16 has no blocks")
    }

    /// A cache whose K and V rows are stored as `types`; an error when a type is not one of
    /// [`KV_TYPES`] or `kv_dim` is not a whole number of its blocks.
    pub fn with_types(
        n_layer: usize,
        n_ctx: usize,
        kv_dim: usize,
        types: KvTypes,
    ) -> Result<KvCache> {
        Self::with_windows(n_ctx, kv_dim, types, &vec![None; n_layer])
    }

    /// A cache with one entry of `windows` per layer: `Some(w)` keeps only the last `w`
    /// positions of that layer (a ring), for layers whose queries see only that far back.
    /// Windows of `n_ctx` or more keep everything.
    pub fn with_windows(
        n_ctx: usize,
        kv_dim: usize,
        types: KvTypes,
        windows: &[Option<usize>],
    ) -> Result<KvCache> {
        Self::with_stream(n_ctx, kv_dim, types, windows, None)
    }

    /// [`KvCache::with_windows`], and with `stream` (its settings, and the layer's KV heads and
    /// head size) every layer without a native window keeps only `S` sinks, a ring of the last
    /// `W` positions and, if asked, `M` summary slots per KV head (see `kv_window`).
    pub fn with_stream(
        n_ctx: usize,
        kv_dim: usize,
        types: KvTypes,
        windows: &[Option<usize>],
        stream: Option<(StreamConfig, usize, usize)>,
    ) -> Result<KvCache> {
        let windows: Vec<Option<usize>> = windows
            .iter()
            .map(|w| w.filter(|&w| w > 0 && w < n_ctx))
            .collect();
        let stream = match stream {
            None => None,
            Some((cfg, n_head_kv, head_dim)) => {
                if cfg.window == 0 {
                    return Err(Error::Invalid("--kv-window must be at least 1".into()));
                }
                if n_head_kv * head_dim != kv_dim {
                    return Err(Error::Invalid(format!(
                        "--kv-window: {n_head_kv} heads of {head_dim} are not {kv_dim} values"
                    )));
                }
                if let Some(s) = &cfg.summary {
                    if s.n_slot == 0 {
                        return Err(Error::Invalid("--kv-summary needs at least 1 slot".into()));
                    }
                }
                let layers = windows
                    .iter()
                    .map(|w| {
                        w.is_none()
                            .then(|| StreamLayer::new(&cfg, n_head_kv, head_dim))
                    })
                    .collect();
                Some((cfg, layers))
            }
        };
        let caps: Vec<usize> = windows
            .iter()
            .map(|w| match (w, &stream) {
                (None, Some((c, _))) => c.window.min(n_ctx),
                _ => w.unwrap_or(n_ctx),
            })
            .collect();
        Ok(KvCache {
            n_ctx,
            kv_dim,
            k: Buf::new(types.k, &caps, kv_dim)?,
            v: Buf::new(types.v, &caps, kv_dim)?,
            windows,
            stream,
            n_past: 0,
        })
    }

    /// The `--kv-window` settings, if any.
    pub fn stream_config(&self) -> Option<&StreamConfig> {
        self.stream.as_ref().map(|(c, _)| c)
    }

    /// Whether layer `il` keeps sinks, a window and a summary (`kv_window::attend`).
    pub fn is_stream(&self, il: usize) -> bool {
        self.stream.as_ref().is_some_and(|(_, l)| l[il].is_some())
    }

    pub(crate) fn stream_layer(&mut self, il: usize) -> &mut StreamLayer {
        self.stream
            .as_mut()
            .and_then(|(_, l)| l[il].as_mut())
            .expect("a stream layer")
    }

    /// The Hadamard block sizes of K and V for heads of `head_dim` (None: not turned).
    pub(crate) fn rotations(&self, head_dim: usize) -> (Option<usize>, Option<usize>) {
        (rot_k(self.k.ty, head_dim), rot_v(self.v.ty, head_dim))
    }

    /// Widens `n` rows of layer `il` from slot `slot` on.
    pub(crate) fn ring_read(&self, il: usize, slot: usize, n: usize, k: &mut [f32], v: &mut [f32]) {
        self.k.widen_from(il, slot, n, k);
        self.v.widen_from(il, slot, n, v);
    }

    /// Stores one row of K and V in slot `slot` of layer `il`.
    pub(crate) fn ring_store(&mut self, il: usize, slot: usize, k: &[f32], v: &[f32]) {
        self.k.store(il, slot, self.kv_dim, k);
        self.v.store(il, slot, self.kv_dim, v);
    }

    /// K and V rows as storing and reading them back gives.
    pub(crate) fn round_trip(&self, k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        (
            self.k.round_trip(k, self.kv_dim),
            self.v.round_trip(v, self.kv_dim),
        )
    }

    /// From now on, stream layers keep every token's raw (pre-RoPE) K, for calibration: see
    /// [`KvCache::take_keys`].
    pub fn record_keys(&mut self) {
        if let Some((_, layers)) = &mut self.stream {
            layers.iter_mut().flatten().for_each(StreamLayer::record);
        }
    }

    /// The raw K recorded in layer `il` since the cache was last cleared, (n, kv_dim).
    pub fn take_keys(&mut self, il: usize) -> Vec<f32> {
        match self.stream.as_mut().and_then(|(_, l)| l[il].as_mut()) {
            Some(l) => l.take_keys(),
            None => Vec::new(),
        }
    }

    /// Fills every slot of the cache with NaN (f16 NaN, or quantized blocks whose scale is
    /// NaN), and the sinks too, so that a test sees any read of a slot never written.
    pub fn poison(&mut self) {
        for b in [&mut self.k, &mut self.v] {
            for r in b.rows.iter_mut() {
                match r {
                    Rows::F16(d) => d.iter_mut().for_each(|x| *x = f16::NAN),
                    Rows::Quant(d) => d.iter_mut().for_each(|x| *x = 0xff),
                }
            }
        }
        if let Some((_, layers)) = &mut self.stream {
            layers.iter_mut().flatten().for_each(StreamLayer::poison);
        }
    }

    /// The ring size of layer `il`, if it keeps only a window.
    pub fn window(&self, il: usize) -> Option<usize> {
        self.windows[il]
    }

    /// The K and V rows of positions `0..n` of full layer `il` as stored (f16 or quantized),
    /// for attention to read in place: widening a 32K-position cache to f32 for every layer of
    /// every decoded token cost more than the attention itself.
    pub fn view(&self, il: usize, n: usize) -> (attention::Rows<'_>, attention::Rows<'_>) {
        assert!(
            self.windows[il].is_none(),
            "layer {il} keeps a ring, not every position"
        );
        (
            self.k.view(il, n, self.kv_dim),
            self.v.view(il, n, self.kv_dim),
        )
    }

    /// Stores the batch's K and V rows (positions `pos0..pos0 + n`) of layer `il` and returns
    /// the rows its queries may see, widened to f32, as (k, v, first position): every position
    /// from 0 for a full layer, the `w - 1` before the batch and the batch for a ring layer.
    pub fn store_and_view(
        &mut self,
        il: usize,
        pos0: usize,
        k: &[f32],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>, usize) {
        let kv_dim = self.kv_dim;
        let n = k.len() / kv_dim;
        let Some(w) = self.windows[il] else {
            self.store(il, pos0, k, v);
            let mut kc = vec![0.0f32; (pos0 + n) * kv_dim];
            let mut vc = vec![0.0f32; (pos0 + n) * kv_dim];
            self.widen_k(il, &mut kc);
            self.widen_v(il, &mut vc);
            return (kc, vc, 0);
        };
        let base = pos0.saturating_sub(w - 1);
        let mut kc = vec![0.0f32; (pos0 - base) * kv_dim];
        let mut vc = vec![0.0f32; (pos0 - base) * kv_dim];
        // Positions base..pos0 from the ring, in at most two runs of slots.
        let mut p = base;
        while p < pos0 {
            let slot = p % w;
            let run = (w - slot).min(pos0 - p);
            let o = (p - base) * kv_dim..(p - base + run) * kv_dim;
            self.k.widen_from(il, slot, run, &mut kc[o.clone()]);
            self.v.widen_from(il, slot, run, &mut vc[o]);
            p += run;
        }
        kc.extend(self.k.round_trip(k, kv_dim));
        vc.extend(self.v.round_trip(v, kv_dim));
        // The batch's last w rows into the ring.
        for t in n.saturating_sub(w)..n {
            let slot = (pos0 + t) % w;
            let r = t * kv_dim..(t + 1) * kv_dim;
            self.k.store(il, slot, kv_dim, &k[r.clone()]);
            self.v.store(il, slot, kv_dim, &v[r]);
        }
        (kc, vc, base)
    }

    pub fn types(&self) -> KvTypes {
        KvTypes {
            k: self.k.ty,
            v: self.v.ty,
        }
    }

    pub fn clear(&mut self) {
        self.n_past = 0;
        if let Some((_, layers)) = &mut self.stream {
            layers.iter_mut().flatten().for_each(StreamLayer::reset);
        }
    }

    /// Forgets everything from position `n` on (to rewind or to reuse a shared prefix). A ring
    /// layer has overwritten the rows a rewind would need, so with one the cache empties
    /// instead: check `n_past` afterwards.
    pub fn truncate(&mut self, n: usize) {
        if n < self.n_past && (self.windows.iter().any(Option::is_some) || self.stream.is_some()) {
            self.clear();
        }
        self.n_past = self.n_past.min(n);
    }

    /// Stores the K and V rows of positions `pos..pos + n` of layer `il` (rounded to the
    /// cache's types).
    pub fn store(&mut self, il: usize, pos: usize, k: &[f32], v: &[f32]) {
        self.k.store(il, pos, self.kv_dim, k);
        self.v.store(il, pos, self.kv_dim, v);
    }

    /// With a quantized K (V), turns the queries and keys (values) of heads of `head_dim` by an
    /// orthonormal Walsh-Hadamard rotation before they are stored, as llama.cpp does since its
    /// attention-rotation change: a rotation spreads outlier channels over the block, so q8_0 /
    /// q4_0 scales fit better, and it leaves `q · k` unchanged. K's blocks are the largest power
    /// of two (from 64) dividing `head_dim`, V's are 64; heads of other sizes are not rotated.
    pub fn rotate_in(&self, q: &mut [f32], k: &mut [f32], v: &mut [f32], head_dim: usize) {
        if let Some(n) = rot_k(self.k.ty, head_dim) {
            hadamard_blocks(q, n);
            hadamard_blocks(k, n);
        }
        if let Some(n) = rot_v(self.v.ty, head_dim) {
            hadamard_blocks(v, n);
        }
    }

    /// Undoes the rotation of V on the attention output (the rotation is its own inverse).
    pub fn rotate_out(&self, out: &mut [f32], head_dim: usize) {
        if let Some(n) = rot_v(self.v.ty, head_dim) {
            hadamard_blocks(out, n);
        }
    }

    /// With a quantized K, rounds the queries as llama.cpp's flash attention does before its
    /// quantized dot products: to q8_0 blocks (its `vec_dot_type` for q8_0 and q4_0 keys).
    /// Nothing with an f16 K (there llama.cpp rounds Q to f16, which dsrun leaves out as it
    /// always has).
    pub fn round_queries(&self, q: &mut [f32]) {
        if self.k.ty == GgmlType::F16 || !q.len().is_multiple_of(32) {
            return;
        }
        let mut enc = vec![0u8; q.len() / 32 * 34];
        quants::quantize(GgmlType::Q8_0, q, &mut enc).expect("whole blocks");
        quants::dequantize(GgmlType::Q8_0, &enc, q).expect("whole blocks");
    }

    /// Widens the K rows of positions `0..out.len() / kv_dim` of layer `il` to f32.
    pub fn widen_k(&self, il: usize, out: &mut [f32]) {
        self.k.widen(il, out.len() / self.kv_dim, out)
    }

    /// Widens the V rows of positions `0..out.len() / kv_dim` of layer `il` to f32.
    pub fn widen_v(&self, il: usize, out: &mut [f32]) {
        self.v.widen(il, out.len() / self.kv_dim, out)
    }

    /// Bytes the whole cache takes (K and V, every layer, `n_ctx` positions or its window;
    /// with `--kv-window`, the ring and the f32 sinks and summary).
    pub fn bytes(&self) -> usize {
        let positions: usize = self.k.caps.iter().sum();
        let extra = self.stream.as_ref().map_or(0, |(_, layers)| {
            layers
                .iter()
                .flatten()
                .map(StreamLayer::bytes)
                .sum::<usize>()
        });
        positions * (self.k.row_bytes + self.v.row_bytes) + extra
    }
}

fn rot_k(ty: GgmlType, head_dim: usize) -> Option<usize> {
    if ty == GgmlType::F16 || !head_dim.is_multiple_of(64) {
        return None;
    }
    let mut n = 64;
    while head_dim.is_multiple_of(2 * n) {
        n *= 2;
    }
    Some(n)
}

fn rot_v(ty: GgmlType, head_dim: usize) -> Option<usize> {
    (ty != GgmlType::F16 && head_dim.is_multiple_of(64)).then_some(64)
}

/// Multiplies each block of `n` values (a power of two) by the orthonormal Sylvester-Hadamard
/// matrix (`H_1 = [1]`, `H_2s = [[H_s, H_s], [H_s, -H_s]]`, over `sqrt(n)`), by the fast
/// butterfly.
pub fn hadamard_blocks(x: &mut [f32], n: usize) {
    let scale = 1.0 / (n as f32).sqrt();
    for b in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for i in (0..n).step_by(2 * h) {
                for j in i..i + h {
                    let (a, c) = (b[j], b[j + h]);
                    b[j] = a + c;
                    b[j + h] = a - c;
                }
            }
            h *= 2;
        }
        b.iter_mut().for_each(|v| *v *= scale);
    }
}

/// Bytes that `n_ctx` positions of K and V take in `n_layer` layers of `kv_dim` values each,
/// or `None` when `kv_dim` is not a whole number of a type's blocks.
pub fn kv_bytes(n_layer: usize, n_ctx: usize, kv_dim: usize, types: KvTypes) -> Option<u64> {
    let row = types.k.row_bytes(kv_dim as u64)? + types.v.row_bytes(kv_dim as u64)?;
    Some(row * (n_layer * n_ctx) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(k: &str, v: &str) -> KvTypes {
        KvTypes {
            k: parse_kv_type(k).unwrap(),
            v: parse_kv_type(v).unwrap(),
        }
    }

    /// Each type widens to what its own decoder gives for the encoded row: f16 rounding, and
    /// ggml's q8_0 / q4_0 blocks.
    #[test]
    fn stores_and_widens_each_type() {
        let kv_dim = 64;
        let x: Vec<f32> = (0..3 * kv_dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for (name, ty) in [
            ("f16", GgmlType::F16),
            ("q8_0", GgmlType::Q8_0),
            ("q4_0", GgmlType::Q4_0),
        ] {
            let mut c = KvCache::with_types(2, 8, kv_dim, types(name, name)).unwrap();
            c.store(1, 2, &x, &x);
            let mut enc = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
            quants::quantize(ty, &x, &mut enc).unwrap();
            let mut want = vec![0.0f32; x.len()];
            quants::dequantize(ty, &enc, &mut want).unwrap();
            let (mut k, mut v) = (vec![0.0; 5 * kv_dim], vec![0.0; 5 * kv_dim]);
            c.widen_k(1, &mut k);
            c.widen_v(1, &mut v);
            assert!(
                k[..2 * kv_dim].iter().all(|&a| a == 0.0),
                "{name}: untouched rows"
            );
            assert_eq!(&k[2 * kv_dim..], &want[..], "{name}: K");
            assert_eq!(&v[2 * kv_dim..], &want[..], "{name}: V");
        }
    }

    /// The butterfly is the Sylvester matrix (checked against it written out for n = 4), its
    /// own inverse, and keeps dot products.
    #[test]
    fn hadamard_is_an_orthonormal_involution() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        hadamard_blocks(&mut x, 4);
        assert_eq!(x, [5.0, -1.0, -2.0, 0.0]);
        let a: Vec<f32> = (0..256)
            .map(|i| ((i * 7919 % 97) as f32 - 48.0) / 9.0)
            .collect();
        let b: Vec<f32> = (0..256)
            .map(|i| ((i * 104729 % 89) as f32 - 44.0) / 5.0)
            .collect();
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let (mut ra, mut rb) = (a.clone(), b.clone());
        hadamard_blocks(&mut ra, 128);
        hadamard_blocks(&mut rb, 128);
        assert!((dot(&ra, &rb) - dot(&a, &b)).abs() < 1e-3 * dot(&a, &a));
        hadamard_blocks(&mut ra, 128);
        assert!(ra.iter().zip(&a).all(|(p, q)| (p - q).abs() < 1e-4));
        assert_eq!(
            (rot_k(GgmlType::Q8_0, 128), rot_v(GgmlType::Q8_0, 128)),
            (Some(128), Some(64))
        );
        assert_eq!(
            (rot_k(GgmlType::Q4_0, 192), rot_k(GgmlType::F16, 128)),
            (Some(64), None)
        );
        assert_eq!(rot_v(GgmlType::Q4_0, 96), None);
    }

    /// A ring layer gives exactly the rows of positions `max(0, pos0 + 1 - w)..pos0 + n`, the
    /// values of those positions (never a slot not yet written or already overwritten): from the
    /// first token, across the moment the window fills, and long after; batches smaller and
    /// larger than the window. Each position's row is its own constant, as the type rounds it.
    #[test]
    fn ring_views_hold_exactly_the_window() {
        let (kv_dim, w) = (32, 5);
        let row = |p: usize, sign: f32| vec![sign * (p % 100) as f32; kv_dim];
        for t in ["f16", "q8_0"] {
            let mut c = KvCache::with_windows(64, kv_dim, types(t, t), &[Some(w), None]).unwrap();
            assert_eq!(c.bytes(), (w + 64) * 2 * c.k.row_bytes);
            let mut pos0 = 0;
            for n in [1, 1, 2, 1, 3, 7, 1, 1, 4, 12, 1, 2] {
                let k: Vec<f32> = (pos0..pos0 + n).flat_map(|p| row(p, 1.0)).collect();
                let v: Vec<f32> = (pos0..pos0 + n).flat_map(|p| row(p, -1.0)).collect();
                let (kc, vc, base) = c.store_and_view(0, pos0, &k, &v);
                assert_eq!(base, (pos0 + 1).saturating_sub(w), "{t} at {pos0}");
                let want_k: Vec<f32> = (base..pos0 + n).flat_map(|p| row(p, 1.0)).collect();
                let want_v: Vec<f32> = (base..pos0 + n).flat_map(|p| row(p, -1.0)).collect();
                assert_eq!(
                    kc,
                    c.k.round_trip(&want_k, kv_dim),
                    "{t}: K at {pos0} + {n}"
                );
                assert_eq!(
                    vc,
                    c.v.round_trip(&want_v, kv_dim),
                    "{t}: V at {pos0} + {n}"
                );
                let (kf, _, b) = c.store_and_view(1, pos0, &k, &v);
                assert_eq!(
                    (b, kf.len()),
                    (0, (pos0 + n) * kv_dim),
                    "{t}: the full layer"
                );
                pos0 += n;
            }
            c.n_past = pos0;
            c.truncate(pos0 - 3);
            assert_eq!(c.n_past, 0, "a ring cannot rewind: the cache empties");
        }
    }

    #[test]
    fn sizes_and_bad_types() {
        let t = types("q8_0", "q4_0");
        let c = KvCache::with_types(3, 10, 128, t).unwrap();
        // q8_0: 34 bytes per 32 values, q4_0: 18.
        assert_eq!(c.bytes(), 3 * 10 * (4 * 34 + 4 * 18));
        assert_eq!(kv_bytes(3, 10, 128, t), Some(c.bytes() as u64));
        assert_eq!(KvCache::new(2, 4, 8).bytes(), 2 * 4 * 8 * 2 * 2);
        assert!(
            KvCache::with_types(1, 4, 48, t).is_err(),
            "48 is not whole q8_0 blocks"
        );
        assert!(parse_kv_type("q4_k").is_err());
        assert!(parse_kv_type("bogus").is_err());
        assert_eq!(parse_kv_type("Q8_0").unwrap(), GgmlType::Q8_0);
    }
}
