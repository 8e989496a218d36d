//! The key/value cache: f16 (as llama.cpp's default cache type), one (n_ctx, n_head_kv * head_dim)
//! buffer per layer for K and one for V, indexed by position.

use half::f16;
use half::vec::HalfBitsVecExt;

pub struct KvCache {
    pub n_ctx: usize,
    pub kv_dim: usize,
    pub k: Vec<Vec<f16>>,
    pub v: Vec<Vec<f16>>,
    /// Positions 0..n_past hold valid entries.
    pub n_past: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> KvCache {
        // Zeroed u16 buffers come from the allocator's zeroed pages, which the OS maps only
        // when written: the cache costs resident memory for the positions used, not for n_ctx
        // (`vec![f16::ZERO; n]` wrote every element).
        let zeros = || vec![0u16; n_ctx * kv_dim].reinterpret_into::<f16>();
        KvCache {
            n_ctx,
            kv_dim,
            k: (0..n_layer).map(|_| zeros()).collect(),
            v: (0..n_layer).map(|_| zeros()).collect(),
            n_past: 0,
        }
    }

    pub fn clear(&mut self) {
        self.n_past = 0;
    }

    /// Forgets everything from position `n` on (to rewind or to reuse a shared prefix).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Stores the K and V rows of positions `pos..pos + n` of layer `il` (rounded to f16).
    pub fn store(&mut self, il: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (a, b) = (pos * self.kv_dim, pos * self.kv_dim + k.len());
        for (d, &s) in self.k[il][a..b].iter_mut().zip(k) {
            *d = f16::from_f32(s);
        }
        for (d, &s) in self.v[il][a..b].iter_mut().zip(v) {
            *d = f16::from_f32(s);
        }
    }

    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_ctx * self.kv_dim * 2
    }
}
