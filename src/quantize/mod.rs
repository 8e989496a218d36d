//! `dsrun quantize`: a GGUF file or a Hugging Face folder in, a GGUF file of another type out,
//! with exactly the bytes llama.cpp's tools would write.
//!
//! - [`ftype`]: llama-quantize's presets by name (`Q4_K_M`, ...).
//! - [`recipe`]: the per-tensor type rules of llama.cpp's quantizer.
//! - [`source`]: the input as a list of named tensors; [`hf`] reads Hugging Face folders.
//! - this file: plan the types, then quantize with ggml's reference quantizers (through the
//!   `dsrun-quantize` crate) on a rayon pool, several tensors at a time, and stream the result
//!   into a temporary file that is renamed only when complete.

pub mod adaptive;
pub mod ftype;
pub mod hf;

pub mod recipe;
pub mod source;

pub use ftype::Ftype;
pub use recipe::{ModelFacts, RecipeOptions, TensorDesc};
pub use source::{GgufSource, Source, SourceTensor, TensorData};

use crate::error::{Error, Result};
use crate::gguf::writer::GgufWriter;
use crate::gguf::Value;
use crate::tensor::GgmlType;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Everything `dsrun quantize` was asked, besides the input and output paths.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub ftype: Ftype,
    pub recipe: RecipeOptions,
    /// Allow requantizing tensors that are already quantized (llama-quantize's
    /// `--allow-requantize`): the result is worse than quantizing from the original weights.
    pub allow_requantize: bool,
    /// Threads of the rayon pool (0: all cores).
    pub n_threads: usize,
    /// Bytes of f32 values being quantized at once (bounds memory): tensors are taken in order
    /// until their f32 size reaches this.
    pub batch_bytes: u64,
    /// Importance weights for the quantizers (`--imatrix`); set `recipe.has_imatrix` with it.
    pub imatrix: Option<ImatrixWeights>,
}

/// An importance matrix as llama-quantize hands it to ggml: per weight name, one weight per
/// input column (per expert, for stacked expert tensors), with what it writes into the output's
/// metadata (`quantize.imatrix.*`).
#[derive(Debug, Clone)]
pub struct ImatrixWeights {
    /// The file as the user named it (stored as `quantize.imatrix.file`).
    pub file: String,
    /// The first calibration dataset the file names.
    pub dataset: Option<String>,
    /// Chunks it was computed on (0: unknown).
    pub chunk_count: u32,
    pub weights: HashMap<String, Vec<f32>>,
}

impl ImatrixWeights {
    /// Reads a GGUF or legacy `.dat` importance matrix and checks it as llama-quantize does.
    pub fn load(path: &Path) -> Result<ImatrixWeights> {
        let m = crate::imatrix::Imatrix::read(path)?;
        let shown = path.display();
        if !m.legacy && !m.has_metadata {
            return Err(Error::Invalid(format!(
                "{shown}: missing the imatrix.datasets, imatrix.chunk_count or imatrix.chunk_size key"
            )));
        }
        let weights = m.quant_weights();
        for (name, w) in &weights {
            if let Some(v) = w.iter().find(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "{shown}: the importance matrix of {name} holds the non-finite value {v}"
                )));
            }
        }
        Ok(ImatrixWeights {
            file: path.display().to_string(),
            dataset: m.datasets.first().cloned(),
            chunk_count: m.chunk_count,
            weights,
        })
    }

    /// The weights for tensor `name` of shape `dims`: `Ok(None)` when the matrix has none for
    /// it; an error when their size does not fit the tensor (except for the token embeddings,
    /// which llama-quantize then quantizes without them).
    pub fn for_tensor(&self, name: &str, dims: &[u64]) -> Result<Option<&[f32]>> {
        let Some(w) = self.weights.get(name) else {
            return Ok(None);
        };
        let want = dims.first().copied().unwrap_or(1) * dims.get(2).copied().unwrap_or(1);
        if w.len() as u64 == want {
            return Ok(Some(w));
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Ok(None);
        }
        Err(Error::Invalid(format!(
            "the importance matrix of {name} has {} values, the tensor needs {want} (shape {dims:?})",
            w.len()
        )))
    }
}

impl QuantizeOptions {
    pub fn new(ftype: Ftype) -> Self {
        QuantizeOptions {
            ftype,
            recipe: RecipeOptions::default(),
            allow_requantize: false,
            n_threads: 0,
            batch_bytes: 1 << 30,
            imatrix: None,
        }
    }
}

/// Progress callbacks, called from worker threads; the CLI draws bars with them.
pub trait Progress: Sync {
    /// Before the first tensor: how many tensors and weights there are.
    fn begin(&self, _n_tensors: usize, _n_elements: u64) {}
    /// Tensor `i` (of the output order) starts.
    fn tensor_begin(&self, _i: usize, _name: &str, _n_elements: u64) {}
    /// `n` more weights of tensor `i` are done.
    fn advance(&self, _i: usize, _n: u64) {}
    /// Tensor `i` is done.
    fn tensor_end(&self, _i: usize, _plan: &PlannedTensor) {}
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// One tensor of the output: where it comes from and what it becomes.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub dims: Vec<u64>,
    /// Index in the source's tensor list.
    pub source: usize,
    pub from: GgmlType,
    pub to: GgmlType,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Report {
    pub tensors: Vec<PlannedTensor>,
    pub n_elements: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Report {
    pub fn bpw_in(&self) -> f64 {
        self.bytes_in as f64 * 8.0 / self.n_elements.max(1) as f64
    }
    pub fn bpw_out(&self) -> f64 {
        self.bytes_out as f64 * 8.0 / self.n_elements.max(1) as f64
    }
}

/// The output tensors in llama.cpp's order with their types, checked: every error that can be
/// known before writing (a tensor that needs an importance matrix, a disallowed requantization,
/// a shape no type fits) is found here.
pub fn plan(source: &dyn Source, opts: &QuantizeOptions) -> Result<Vec<PlannedTensor>> {
    let tensors = source.tensors();
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let order = recipe::llama_order(&names);
    let descs: Vec<TensorDesc> = order
        .iter()
        .map(|&i| TensorDesc {
            name: tensors[i].name.clone(),
            dims: tensors[i].dims.clone(),
            ty: tensors[i].ty,
        })
        .collect();
    let types = recipe::plan(&source.facts(), &opts.recipe, opts.ftype, &descs)?;
    let mut out = Vec::with_capacity(order.len());
    for (&i, to) in order.iter().zip(types) {
        let t = &tensors[i];
        let n = t.n_elements();
        let size = |ty: GgmlType| {
            ty.row_bytes(n).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor {}: {:?} is not a whole number of {ty} blocks",
                    t.name, t.dims
                ))
            })
        };
        if to != t.ty {
            if recipe::is_quantized(t.ty) && !opts.allow_requantize {
                return Err(Error::Invalid(format!(
                    "tensor {} is already {}: requantizing loses quality, pass --allow-requantize to do it anyway",
                    t.name, t.ty
                )));
            }
            let weights = match &opts.imatrix {
                Some(m) => m.for_tensor(&t.name, &t.dims)?,
                None => None,
            };
            if needs_imatrix(&t.name, to, opts.ftype) && weights.is_none() {
                return Err(Error::Invalid(match &opts.imatrix {
                    None => format!(
                        "tensor {} would be {to}, which needs an importance matrix (--imatrix)",
                        t.name
                    ),
                    Some(m) => format!(
                        "tensor {} would be {to}, which needs an importance matrix, and {} has none for it",
                        t.name, m.file
                    ),
                }));
            }
        }
        out.push(PlannedTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            source: i,
            from: t.ty,
            to,
            bytes_in: size(t.ty)?,
            bytes_out: size(to)?,
        });
    }
    Ok(out)
}

/// `tensor_requires_imatrix`.
fn needs_imatrix(name: &str, ty: GgmlType, ftype: Ftype) -> bool {
    use ftype::*;
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return false;
    }
    if name == "output.weight" {
        return false;
    }
    [IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_M, IQ1_S].contains(&ty)
        || (ty == GgmlType::Q2K && ftype == Ftype::Q2KS)
}

/// Quantizes `source` into a GGUF file at `out` (written as `out.tmp`, renamed when complete).
pub fn quantize(
    source: &dyn Source,
    out: &Path,
    opts: &QuantizeOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let planned = plan(source, opts)?;
    let mut writer = GgufWriter::new();
    for (k, v) in source.metadata() {
        writer.set(k, v.clone());
    }
    writer.set("general.quantization_version", Value::U32(2));
    writer.set("general.file_type", Value::U32(opts.ftype.id()));
    if let Some(m) = &opts.imatrix {
        // llama-quantize's metadata overrides: strings cut to 127 bytes, moved to the end.
        let mut put = |k: &str, v: Value| {
            writer.metadata.retain(|(key, _)| key != k);
            writer.set(k, v);
        };
        put("quantize.imatrix.file", Value::String(cut_127(&m.file)));
        if let Some(d) = &m.dataset {
            put("quantize.imatrix.dataset", Value::String(cut_127(d)));
        }
        put(
            "quantize.imatrix.entries_count",
            Value::U32(m.weights.len() as u32),
        );
        if m.chunk_count > 0 {
            put("quantize.imatrix.chunks_count", Value::U32(m.chunk_count));
        }
    }
    for p in &planned {
        writer.add_tensor(&p.name, p.to, &p.dims);
    }
    let n_elements: u64 = planned.iter().map(|p| p.dims.iter().product::<u64>()).sum();
    progress.begin(planned.len(), n_elements);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.n_threads)
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start {} threads: {e}", opts.n_threads)))?;
    let mut done: HashMap<usize, Vec<u8>> = HashMap::new();
    pool.install(|| {
        writer.write_file(out, |i| {
            if let Some(bytes) = done.remove(&i) {
                return Ok(bytes);
            }
            // Tensors i.. up to the batch budget, quantized in parallel (and each by rows).
            let mut end = i + 1;
            let mut budget = f32_bytes(&planned[i]);
            while end < planned.len() && budget + f32_bytes(&planned[end]) <= opts.batch_bytes {
                budget += f32_bytes(&planned[end]);
                end += 1;
            }
            let results: Vec<Result<Vec<u8>>> = (i..end)
                .into_par_iter()
                .map(|j| {
                    progress.tensor_begin(j, &planned[j].name, n_elems(&planned[j]));
                    let weights = match &opts.imatrix {
                        Some(m) => m.for_tensor(&planned[j].name, &planned[j].dims)?,
                        None => None,
                    };
                    let bytes = convert(source, &planned[j], j, weights, progress)?;
                    progress.tensor_end(j, &planned[j]);
                    Ok(bytes)
                })
                .collect();
            let mut first = None;
            for (j, r) in (i..end).zip(results) {
                let bytes = r?;
                if j == i {
                    first = Some(bytes);
                } else {
                    done.insert(j, bytes);
                }
            }
            first.ok_or_else(|| Error::Invalid("internal: empty batch".into()))
        })
    })?;
    Ok(Report {
        n_elements,
        bytes_in: planned.iter().map(|p| p.bytes_in).sum(),
        bytes_out: planned.iter().map(|p| p.bytes_out).sum(),
        tensors: planned,
    })
}

/// `strncpy(.., 127)`: llama-quantize's metadata overrides hold at most 127 bytes.
fn cut_127(s: &str) -> String {
    let b = s.as_bytes();
    String::from_utf8_lossy(&b[..b.len().min(127)]).into_owned()
}

fn n_elems(p: &PlannedTensor) -> u64 {
    p.dims.iter().product()
}

fn f32_bytes(p: &PlannedTensor) -> u64 {
    n_elems(p) * 4
}

/// Rows per parallel task: about 64K values, at least one row.
fn rows_per_task(row_len: usize) -> usize {
    (65536 / row_len.max(1)).max(1)
}

/// The bytes of one output tensor: copied when the type does not change, else decoded to f32
/// and encoded with ggml's quantizer, by rows in parallel; ggml validates what it wrote.
/// `imatrix`: importance weights, `dims[0]` per expert (`dims[1]` rows each).
fn convert(
    source: &dyn Source,
    p: &PlannedTensor,
    i: usize,
    imatrix: Option<&[f32]>,
    progress: &dyn Progress,
) -> Result<Vec<u8>> {
    let data = source.read(p.source)?;
    let n = n_elems(p) as usize;
    let row_len = p.dims[0] as usize;
    let n_rows = n / row_len.max(1);
    let src_row = data.ty.row_bytes(row_len as u64).ok_or_else(|| {
        Error::Invalid(format!(
            "tensor {}: rows do not fit type {}",
            p.name, data.ty
        ))
    })? as usize;
    if src_row * n_rows != data.bytes.len() {
        return Err(Error::Invalid(format!(
            "tensor {}: {} bytes of {} data, expected {}",
            p.name,
            data.bytes.len(),
            data.ty,
            src_row * n_rows
        )));
    }
    let dst_row = p.to.row_bytes(row_len as u64).ok_or_else(|| {
        Error::Invalid(format!("tensor {}: rows do not fit type {}", p.name, p.to))
    })? as usize;
    let per_task = rows_per_task(row_len);
    let rows_per_expert = p.dims.get(1).copied().unwrap_or(1).max(1) as usize;
    let src_id = data.ty.id();
    let dst_id = p.to.id();
    let chunks: Vec<Result<Vec<u8>>> = data
        .bytes
        .par_chunks(src_row * per_task)
        .enumerate()
        .map(|(c, src)| {
            let rows = src.len() / src_row;
            let first_row = c * per_task;
            let bad = |what: &str| {
                Error::Invalid(format!(
                    "tensor {}: {what} in rows {first_row}..{} ({} data)",
                    p.name,
                    first_row + rows,
                    data.ty
                ))
            };
            if !dsrun_quantize::ggml_validate_row_data(src_id, src) {
                return Err(bad("NaN, infinity or a corrupt block"));
            }
            let out = if data.ty == p.to {
                src.to_vec()
            } else {
                let x = to_f32(src_id, src, rows * row_len).ok_or_else(|| bad("undecodable"))?;
                let q = quantize_rows(dst_id, &x, row_len, first_row, rows_per_expert, imatrix)
                    .ok_or_else(|| bad(&format!("ggml cannot quantize to {}", p.to)))?;
                if !dsrun_quantize::ggml_validate_row_data(dst_id, &q) {
                    return Err(bad("quantized data failed ggml's validation"));
                }
                q
            };
            debug_assert_eq!(out.len(), rows * dst_row);
            progress.advance(i, (rows * row_len) as u64);
            Ok(out)
        })
        .collect();
    let mut out = Vec::with_capacity(n_rows * dst_row);
    for c in chunks {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// Quantizes rows `first_row..` (`x` holds whole rows of `row_len`), each with its expert's
/// importance weights when there are any (runs of rows that share an expert go together).
pub(crate) fn quantize_rows(
    type_id: u32,
    x: &[f32],
    row_len: usize,
    first_row: usize,
    rows_per_expert: usize,
    imatrix: Option<&[f32]>,
) -> Option<Vec<u8>> {
    let Some(w) = imatrix else {
        return dsrun_quantize::ggml_quantize(type_id, x, row_len);
    };
    let n_rows = x.len() / row_len.max(1);
    let mut out = Vec::new();
    let mut r = 0;
    while r < n_rows {
        let expert = (first_row + r) / rows_per_expert;
        let end = ((expert + 1) * rows_per_expert - first_row).min(n_rows);
        let weights = w.get(expert * row_len..(expert + 1) * row_len)?;
        out.extend(dsrun_quantize::ggml_quantize_imatrix(
            type_id,
            &x[r * row_len..end * row_len],
            row_len,
            Some(weights),
        )?);
        r = end;
    }
    Some(out)
}

/// Values of `n` elements stored as type `type_id`, decoded by ggml (F32 read directly).
pub(crate) fn to_f32(type_id: u32, src: &[u8], n: usize) -> Option<Vec<f32>> {
    if type_id == GgmlType::F32.id() {
        return Some(
            src.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    dsrun_quantize::ggml_dequantize(type_id, src, n)
}
