//! The learned KV summary's centroids as stored in a GGUF file under `dsrun.kv_summary.*` keys
//! (llama.cpp ignores them), and the k-means that `dsrun calibrate --kv-summary M` learns them
//! with from the pre-RoPE keys of a calibration text.
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `dsrun.kv_summary.n_slot` | u32 | slots per layer and KV head |
//! | `dsrun.kv_summary.centroids` | f32 array | (n_layer, n_head_kv, n_slot, head_dim) pre-RoPE keys |
//! | `dsrun.kv_summary.calib_tokens` | u32 | calibration tokens the keys came from |

use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, Value, ValueType};
use crate::rng::Rng;

pub const KEY_N_SLOT: &str = "dsrun.kv_summary.n_slot";
pub const KEY_CENTROIDS: &str = "dsrun.kv_summary.centroids";
const KEY_TOKENS: &str = "dsrun.kv_summary.calib_tokens";

#[derive(Debug, Clone, PartialEq)]
pub struct KvSummary {
    pub n_slot: usize,
    /// (n_layer, n_head_kv, n_slot, head_dim)
    pub centroids: Vec<f32>,
    pub calib_tokens: u32,
}

impl KvSummary {
    /// The centroids stored in `h`, checked against the model's shape; `None` when absent.
    pub fn from_gguf(
        h: &GgufHeader,
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Result<Option<KvSummary>> {
        let Some(n_slot) = h.get_u64(KEY_N_SLOT)? else {
            return Ok(None);
        };
        if n_slot == 0 || n_slot > 1 << 16 {
            return Err(Error::metadata(KEY_N_SLOT, format!("{n_slot} slots")));
        }
        let n_slot = n_slot as usize;
        let centroids = match h.get(KEY_CENTROIDS) {
            Some(Value::Array(ValueType::F32, items)) => items
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>(),
            Some(_) => None,
            None => return Err(Error::metadata(KEY_CENTROIDS, "missing")),
        }
        .ok_or_else(|| Error::metadata(KEY_CENTROIDS, "expected an array of f32"))?;
        let want = n_layer * n_head_kv * n_slot * head_dim;
        if centroids.len() != want || centroids.iter().any(|c| !c.is_finite()) {
            return Err(Error::metadata(
                KEY_CENTROIDS,
                format!(
                    "{} values, expected {want} finite ones ({n_layer} layers × {n_head_kv} KV \
                     heads × {n_slot} slots × {head_dim})",
                    centroids.len()
                ),
            ));
        }
        Ok(Some(KvSummary {
            n_slot,
            centroids,
            calib_tokens: h.get_u64(KEY_TOKENS)?.unwrap_or(0).min(u32::MAX as u64) as u32,
        }))
    }

    /// The keys and values to store, in order.
    pub fn to_metadata(&self) -> Vec<(&'static str, Value)> {
        vec![
            (KEY_N_SLOT, Value::U32(self.n_slot as u32)),
            (
                KEY_CENTROIDS,
                Value::Array(
                    ValueType::F32,
                    self.centroids.iter().map(|&c| Value::F32(c)).collect(),
                ),
            ),
            (KEY_TOKENS, Value::U32(self.calib_tokens)),
        ]
    }
}

/// Lloyd's k-means of `x` (rows of `dim`) into `k` centroids, seeded with `k` distinct rows
/// picked by a seeded generator, `iters` rounds; an empty cluster keeps its centroid.
pub fn kmeans(x: &[f32], dim: usize, k: usize, iters: usize, seed: u64) -> Vec<f32> {
    let n = x.len() / dim;
    let mut rng = Rng::new(seed);
    let mut c = Vec::with_capacity(k * dim);
    for i in 0..k {
        // Rows spread over the text (with a random offset), so no two seeds coincide for n >= k.
        let r = if n >= k {
            (i * n / k + (rng.next_u64() as usize % (n / k).max(1))).min(n - 1)
        } else {
            i % n.max(1)
        };
        c.extend_from_slice(&x[r * dim..(r + 1) * dim]);
    }
    let mut assign = vec![0usize; n];
    for _ in 0..iters {
        for (r, a) in assign.iter_mut().enumerate() {
            let row = &x[r * dim..(r + 1) * dim];
            let mut best = (f32::INFINITY, 0);
            for j in 0..k {
                let d: f32 = c[j * dim..(j + 1) * dim]
                    .iter()
                    .zip(row)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                if d < best.0 {
                    best = (d, j);
                }
            }
            *a = best.1;
        }
        let mut sum = vec![0.0f64; k * dim];
        let mut cnt = vec![0usize; k];
        for (r, &a) in assign.iter().enumerate() {
            cnt[a] += 1;
            for (s, &v) in sum[a * dim..(a + 1) * dim].iter_mut().zip(&x[r * dim..]) {
                *s += v as f64;
            }
        }
        for j in (0..k).filter(|&j| cnt[j] > 0) {
            for d in 0..dim {
                c[j * dim + d] = (sum[j * dim + d] / cnt[j] as f64) as f32;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated clouds give one centroid at each cloud's mean.
    #[test]
    fn kmeans_finds_separated_clusters() {
        let mut x = Vec::new();
        for i in 0..40 {
            let base = if i % 2 == 0 { 10.0 } else { -10.0 };
            x.extend([base + (i % 5) as f32 * 0.1, base]);
        }
        let mut c = kmeans(&x, 2, 2, 10, 7);
        if c[0] < 0.0 {
            c.swap(0, 2);
            c.swap(1, 3);
        }
        assert!(
            (c[0] - 10.2).abs() < 1e-4 && (c[1] - 10.0).abs() < 1e-4,
            "{c:?}"
        );
        assert!(
            (c[2] + 9.8).abs() < 1e-4 && (c[3] + 10.0).abs() < 1e-4,
            "{c:?}"
        );
    }
}
