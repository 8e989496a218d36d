//! The key/value cache of the reference path: f32, one (n_ctx, n_head_kv * head_dim) buffer per
//! layer for K and one for V, indexed by position.

pub struct KvCache {
    pub n_ctx: usize,
    pub kv_dim: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Positions 0..n_past hold valid entries.
    pub n_past: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> KvCache {
        KvCache {
            n_ctx,
            kv_dim,
            k: (0..n_layer).map(|_| vec![0.0; n_ctx * kv_dim]).collect(),
            v: (0..n_layer).map(|_| vec![0.0; n_ctx * kv_dim]).collect(),
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

    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_ctx * self.kv_dim * 4
    }
}
