//! Adaptive precision (`--target-bpw`, `--target-size`): measure how much each tensor's
//! quantization to each candidate type moves the model's output, then choose one type per tensor
//! so that the file meets the size target at the least total damage.
//!
//! Sensitivity is measured directly as the KL divergence of the next-token distribution from the
//! unquantized model's, on calibration text, with only that one tensor quantized (every other
//! tensor as in the input). Treating those divergences as additive, the choice is a knapsack,
//! solved greedily on each tensor's lower convex hull of (bytes, KLD): repeatedly take the
//! upgrade that buys the most KLD per byte and still fits.

use super::recipe::{self, RecipeOptions, TensorDesc};
use super::source::{GgufSource, Source};
use crate::engine::{layer_windows, Model};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::forward::forward_moe;
use crate::model::moe_select::MoeState;
use crate::model::{KvCache, KvTypes, Weights};
use crate::perplexity::{chunks, kl_divergence, log_softmax};
use crate::tensor::{GgmlType, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How sensitivity is measured.
#[derive(Debug, Clone)]
pub struct CalibrationOptions {
    /// Types each quantizable tensor may get.
    pub candidates: Vec<GgmlType>,
    /// Tokens per calibration chunk (every position is compared).
    pub n_ctx: usize,
    pub n_chunks: usize,
    /// Importance weights: trials quantize with them, as the final file will be.
    pub imatrix: Option<super::ImatrixWeights>,
    /// Run the model only with these types (one or two) per tensor and estimate the other
    /// candidates' divergences from their importance-weighted errors: in proportion to the one
    /// probe's, or on the line through the two probes' (error, divergence) points. Empty: run
    /// every candidate.
    pub probe: Vec<GgmlType>,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        CalibrationOptions {
            candidates: vec![
                GgmlType::Q3K,
                GgmlType::Q4K,
                GgmlType::Q5K,
                GgmlType::Q6K,
                GgmlType::Q8_0,
            ],
            n_ctx: 256,
            n_chunks: 4,
            imatrix: None,
            probe: Vec::new(),
        }
    }
}

/// One candidate type of one tensor, measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: u64,
    /// Mean KL divergence from the input model with only this tensor quantized to this type
    /// (scaled from the probe type's when not `measured`).
    pub kld: f64,
    /// The importance-weighted squared error of the quantized tensor (see `weighted_error`).
    #[serde(default)]
    pub weighted_error: f64,
    /// Whether `kld` was measured by running the model (else estimated).
    #[serde(default = "yes")]
    pub measured: bool,
}

fn yes() -> bool {
    true
}

/// The measurement of a whole model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sensitivity {
    /// Quantizable tensor -> its candidates.
    pub tensors: BTreeMap<String, Vec<Candidate>>,
    /// Bytes of the tensors that keep their type (norms, router, 1-D).
    pub fixed_bytes: u64,
    pub n_elements: u64,
}

/// The chosen types, and what they were chosen from; written and read as JSON (`--recipe`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    #[serde(default)]
    pub target_bytes: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Sum of the chosen candidates' KLDs (the additive estimate the choice minimises).
    #[serde(default)]
    pub estimated_kld: f64,
    /// Tensor name -> type name; the only field a hand-written recipe needs.
    pub tensors: BTreeMap<String, String>,
    #[serde(default)]
    pub sensitivity: Option<Sensitivity>,
}

impl Recipe {
    /// The recipe as `RecipeOptions::overrides`.
    pub fn overrides(&self) -> Result<Vec<(String, GgmlType)>> {
        self.tensors
            .iter()
            .map(|(n, t)| {
                GgmlType::from_name(t)
                    .map(|ty| (n.clone(), ty))
                    .ok_or_else(|| {
                        Error::Invalid(format!("recipe: tensor {n}: unknown type {t:?}"))
                    })
            })
            .collect()
    }

    pub fn read(path: &Path) -> Result<Recipe> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not a dsrun recipe: {e}", path.display())))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("recipe: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path.display().to_string(), e))
    }
}

/// Measures every (quantizable tensor, candidate type) of the unquantized GGUF model at `path`
/// on `text`. `on_trial(done, total, tensor)` reports progress.
///
/// Each trial runs the model from the input file's map with that one tensor's view pointed at
/// its quantized bytes (no file is written). With `opts.probe`, only the probe type is run per
/// tensor; the other candidates' divergences are scaled from it by their importance-weighted
/// squared errors (`Candidate::weighted_error`), one model evaluation per tensor instead of one
/// per candidate.
pub fn measure(
    path: &Path,
    text: &str,
    opts: &CalibrationOptions,
    on_trial: &dyn Fn(usize, usize, &str),
) -> Result<Sensitivity> {
    let source = GgufSource::open(path)?;
    let file = GgufFile::open(path)?;
    let model = Model::load(&file)?;
    let hp = &model.hp;
    let tok = &model.tokenizer;
    let tokens = tok.encode(text, true, false)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let n_ctx = opts.n_ctx.max(8);
    let calib = chunks(&tokens, n_ctx, Some(opts.n_chunks), bos);
    if calib.is_empty() {
        return Err(Error::Invalid(format!(
            "the calibration text is {} tokens, less than one chunk of {n_ctx}",
            tokens.len()
        )));
    }
    let n_vocab = hp.n_vocab;
    // Log-probabilities at every calibration position, as Session::eval_all gives them.
    let eval = |w: &Weights| -> Result<Vec<Vec<f32>>> {
        let kv_dim = hp.n_head_kv * hp.head_dim;
        let mut kv = KvCache::with_windows(n_ctx, kv_dim, KvTypes::default(), &layer_windows(hp))?;
        let mut moe = MoeState::default();
        let mut out = Vec::new();
        for c in &calib {
            kv.clear();
            let logits = forward_moe(hp, w, &mut kv, c, true, &mut moe);
            out.extend((0..n_ctx).map(|j| log_softmax(&logits[j * n_vocab..(j + 1) * n_vocab])));
        }
        Ok(out)
    };
    // The reference pass also gathers each input column's mean square, the weights of the
    // weighted errors.
    let (inputs, reference) = crate::imatrix::gather(false, || eval(&model.weights))?;
    let col_weights = crate::imatrix::Imatrix {
        entries: inputs,
        ..Default::default()
    }
    .quant_weights();

    let tensors = source.tensors();
    let default = RecipeOptions::default();
    let mut fixed_bytes = 0;
    // (tensor, candidate types, the types to run the model with)
    let mut todo: Vec<(usize, Vec<GgmlType>, Vec<GgmlType>)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let desc = TensorDesc {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
        };
        if !recipe::allows_quantization(&desc, &default) {
            fixed_bytes += t.ty.row_bytes(t.n_elements()).unwrap_or(0);
            continue;
        }
        if recipe::is_quantized(t.ty) {
            return Err(Error::Invalid(format!(
                "tensor {} is already {}: --target-bpw measures against the unquantized model, give an F16, BF16 or F32 GGUF",
                t.name, t.ty
            )));
        }
        // Rows that are not whole 256-blocks get llama.cpp's fallbacks (Q3_K -> Q4_0, Q4_K ->
        // Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), as the quantizer would give them.
        let mut cands: Vec<GgmlType> = Vec::new();
        for &c in &opts.candidates {
            let c = recipe::fallback(&desc, c)?;
            if !cands.contains(&c) && c.row_bytes(t.dims[0]).is_some() {
                cands.push(c);
            }
        }
        let mut probes: Vec<GgmlType> = Vec::new();
        for &p in &opts.probe {
            let p = recipe::fallback(&desc, p)?;
            if cands.contains(&p) && !probes.contains(&p) {
                probes.push(p);
            }
        }
        if probes.is_empty() {
            probes = cands.clone();
        }
        if !cands.is_empty() {
            todo.push((i, cands, probes));
        }
    }
    let n_trials: usize = todo.iter().map(|(_, _, p)| p.len()).sum();
    let mut done = 0;
    let mut out: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for (i, cands, run_types) in &todo {
        let t = &tensors[*i];
        let data = source.read(*i)?;
        let n = t.n_elements() as usize;
        let x = super::to_f32(data.ty.id(), &data.bytes, n).ok_or_else(|| {
            Error::Invalid(format!("tensor {}: cannot decode {}", t.name, data.ty))
        })?;
        let weights = match &opts.imatrix {
            Some(m) => m.for_tensor(&t.name, &t.dims)?,
            None => None,
        };
        let row_len = t.dims[0] as usize;
        let per_expert = t.dims.get(1).copied().unwrap_or(1).max(1) as usize;
        let mut measured: Vec<Candidate> = Vec::new();
        for &ty in cands {
            let q = super::quantize_rows(ty.id(), &x, row_len, 0, per_expert, weights).ok_or_else(
                || Error::Invalid(format!("tensor {}: ggml cannot quantize to {ty}", t.name)),
            )?;
            let err = weighted_error(&x, ty, &q, row_len, per_expert, col_weights.get(&t.name))
                .ok_or_else(|| Error::Invalid(format!("tensor {}: cannot decode {ty}", t.name)))?;
            let run = run_types.contains(&ty);
            let kld = if run {
                on_trial(done, n_trials, &t.name);
                done += 1;
                let mut w = Weights::load(&file, hp)?;
                for v in w.views_mut().into_iter().filter(|v| v.name == t.name) {
                    *v = TensorView {
                        ty,
                        row_bytes: q.len() / v.n_rows.max(1),
                        data: &q,
                        ..*v
                    };
                }
                let got = eval(&w)?;
                reference
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| kl_divergence(a, b))
                    .sum::<f64>()
                    / reference.len().max(1) as f64
            } else {
                f64::NAN
            };
            measured.push(Candidate {
                ty: ty.name(),
                bytes: q.len() as u64,
                kld,
                weighted_error: err,
                measured: run,
            });
        }
        estimate(&mut measured);
        out.insert(t.name.clone(), measured);
    }
    on_trial(n_trials, n_trials, "");
    Ok(Sensitivity {
        tensors: out,
        fixed_bytes,
        n_elements: tensors.iter().map(|t| t.n_elements()).sum(),
    })
}

/// Fills in the divergences of the candidates that were not run, from those that were: `kld =
/// a * err + b` through two measured points (the slope at least 0: b is the part every
/// quantized type pays, e.g. for quantizing the activations), or `kld = a * err` through one.
fn estimate(cands: &mut [Candidate]) {
    let pts: Vec<(f64, f64)> = cands
        .iter()
        .filter(|c| c.measured)
        .map(|c| (c.weighted_error, c.kld))
        .collect();
    let (a, b) = match pts[..] {
        [(e0, k0)] => (
            if e0 > 0.0 { k0 / e0 } else { 0.0 },
            if e0 > 0.0 { 0.0 } else { k0 },
        ),
        [(e0, k0), (e1, k1), ..] if (e0 - e1).abs() > 0.0 => {
            let a = ((k0 - k1) / (e0 - e1)).max(0.0);
            (a, (k0 - a * e0).max(0.0))
        }
        [(_, k0), ..] => (0.0, k0),
        [] => return,
    };
    for c in cands.iter_mut().filter(|c| !c.measured) {
        c.kld = a * c.weighted_error + b;
    }
}

/// `sum over rows r, columns j of w_j (x_rj - q_rj)^2`, with `w` the column weights of the row's
/// expert (1 without weights): the expected squared error of the product with inputs whose
/// columns have mean squares `w`. `None` when `q` does not decode.
fn weighted_error(
    x: &[f32],
    ty: GgmlType,
    q: &[u8],
    row_len: usize,
    rows_per_expert: usize,
    col_weights: Option<&Vec<f32>>,
) -> Option<f64> {
    let y = super::to_f32(ty.id(), q, x.len())?;
    let mut sum = 0.0f64;
    for (r, (xr, yr)) in x.chunks(row_len).zip(y.chunks(row_len)).enumerate() {
        let e = r / rows_per_expert.max(1);
        let w = col_weights
            .and_then(|w| w.get(e * row_len..(e + 1) * row_len))
            .filter(|w| w.len() == row_len);
        for (j, (a, b)) in xr.iter().zip(yr).enumerate() {
            let d = (a - b) as f64;
            sum += d * d * w.map_or(1.0, |w| w[j] as f64);
        }
    }
    Some(sum)
}

/// Chooses one candidate per tensor so that all tensors together take at most `target_bytes`,
/// minimising the summed KLD (greedy on each tensor's lower convex hull).
pub fn choose(sens: &Sensitivity, target_bytes: u64) -> Result<Recipe> {
    // Per tensor: candidates on the lower convex hull of (bytes, kld), cheapest first.
    let hulls: Vec<(&String, Vec<&Candidate>)> = sens
        .tensors
        .iter()
        .map(|(name, cands)| {
            let mut c: Vec<&Candidate> = cands.iter().collect();
            c.sort_by(|a, b| a.bytes.cmp(&b.bytes).then(a.kld.total_cmp(&b.kld)));
            let mut hull: Vec<&Candidate> = Vec::new();
            for x in c {
                if hull.last().is_some_and(|l| x.kld >= l.kld) {
                    continue; // more bytes, no better
                }
                while hull.len() >= 2 {
                    let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                    // slope a->b must be steeper (more KLD saved per byte) than b->x
                    let s_ab = (a.kld - b.kld) / (b.bytes - a.bytes).max(1) as f64;
                    let s_bx = (b.kld - x.kld) / (x.bytes - b.bytes).max(1) as f64;
                    if s_ab <= s_bx {
                        hull.pop();
                    } else {
                        break;
                    }
                }
                hull.push(x);
            }
            (name, hull)
        })
        .collect();
    let mut at: Vec<usize> = vec![0; hulls.len()];
    let mut bytes: u64 = sens.fixed_bytes + hulls.iter().map(|(_, h)| h[0].bytes).sum::<u64>();
    if bytes > target_bytes {
        return Err(Error::Invalid(format!(
            "the target {} bytes ({:.3} BPW) is below the smallest candidate types' {} bytes ({:.3} BPW)",
            target_bytes,
            target_bytes as f64 * 8.0 / sens.n_elements as f64,
            bytes,
            bytes as f64 * 8.0 / sens.n_elements as f64
        )));
    }
    loop {
        let mut best: Option<(usize, f64)> = None;
        for (k, (_, h)) in hulls.iter().enumerate() {
            let Some(next) = h.get(at[k] + 1) else {
                continue;
            };
            let cur = h[at[k]];
            let extra = next.bytes - cur.bytes;
            if bytes + extra > target_bytes {
                continue;
            }
            let gain = (cur.kld - next.kld) / extra.max(1) as f64;
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((k, gain));
            }
        }
        let Some((k, _)) = best else { break };
        let h = &hulls[k].1;
        bytes += h[at[k] + 1].bytes - h[at[k]].bytes;
        at[k] += 1;
    }
    let mut tensors = BTreeMap::new();
    let mut estimated_kld = 0.0;
    for (k, (name, h)) in hulls.iter().enumerate() {
        tensors.insert((*name).clone(), h[at[k]].ty.clone());
        estimated_kld += h[at[k]].kld;
    }
    Ok(Recipe {
        target_bytes,
        bytes,
        estimated_kld,
        tensors,
        sensitivity: Some(sens.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(ty: &str, bytes: u64, kld: f64) -> Candidate {
        Candidate {
            ty: ty.into(),
            bytes,
            kld,
            weighted_error: 0.0,
            measured: true,
        }
    }

    #[test]
    fn greedy_spends_bytes_where_they_buy_most() {
        let mut tensors = BTreeMap::new();
        // a: sensitive; b: insensitive. Both 100 bytes at Q4, 150 at Q6.
        tensors.insert(
            "a".to_string(),
            vec![cand("Q4_K", 100, 0.10), cand("Q6_K", 150, 0.01)],
        );
        tensors.insert(
            "b".to_string(),
            vec![cand("Q4_K", 100, 0.02), cand("Q6_K", 150, 0.001)],
        );
        let sens = Sensitivity {
            tensors,
            fixed_bytes: 10,
            n_elements: 400,
        };
        let r = choose(&sens, 260).unwrap();
        assert_eq!(r.tensors["a"], "Q6_K");
        assert_eq!(r.tensors["b"], "Q4_K");
        assert_eq!(r.bytes, 260);
        assert!(choose(&sens, 150).is_err());
        let all = choose(&sens, 1000).unwrap();
        assert_eq!(all.bytes, 310);
    }

    #[test]
    fn unmeasured_candidates_are_estimated_from_the_probes() {
        let c = |ty: &str, err: f64, kld: f64, measured: bool| Candidate {
            ty: ty.into(),
            bytes: 0,
            kld,
            weighted_error: err,
            measured,
        };
        // Two probes: the line through (8, 0.5) and (1, 0.15) is kld = 0.05 err + 0.1.
        let mut v = vec![
            c("Q3_K", 8.0, 0.5, true),
            c("Q5_K", 2.0, f64::NAN, false),
            c("Q8_0", 1.0, 0.15, true),
        ];
        estimate(&mut v);
        assert!((v[1].kld - 0.2).abs() < 1e-12, "{}", v[1].kld);
        // One probe: proportional.
        let mut v = vec![c("Q4_K", 4.0, 0.2, true), c("Q6_K", 1.0, f64::NAN, false)];
        estimate(&mut v);
        assert!((v[1].kld - 0.05).abs() < 1e-12);
    }

    #[test]
    fn dominated_candidates_are_never_chosen() {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "a".to_string(),
            vec![
                cand("Q3_K", 80, 0.2),
                cand("Q4_K", 100, 0.3),
                cand("Q5_K", 120, 0.1),
            ],
        );
        let sens = Sensitivity {
            tensors,
            fixed_bytes: 0,
            n_elements: 100,
        };
        assert_eq!(choose(&sens, 110).unwrap().tensors["a"], "Q3_K");
        assert_eq!(choose(&sens, 120).unwrap().tensors["a"], "Q5_K");
    }
}
