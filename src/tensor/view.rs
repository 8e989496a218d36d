//! A tensor borrowed from a mapped GGUF file: its type, shape and bytes, with rows addressable
//! without copying.

use super::{dequantize, GgmlType};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};

/// A matrix view: `n_rows` rows of `n_cols` elements of type `ty` (ggml's `ne[0]` is `n_cols`;
/// every higher dimension is folded into rows).
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub n_cols: usize,
    pub n_rows: usize,
    pub row_bytes: usize,
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub fn new(file: &'a GgufFile, info: &'a TensorInfo) -> Result<TensorView<'a>> {
        if !info.ty.is_supported() {
            return Err(Error::UnsupportedType {
                tensor: info.name.clone(),
                type_name: info.ty.name(),
            });
        }
        let n_cols = info.dims.first().copied().unwrap_or(1) as usize;
        let n_rows = info.dims.iter().skip(1).product::<u64>() as usize;
        let row_bytes = info.ty.row_bytes(n_cols as u64).ok_or_else(|| {
            Error::Invalid(format!("tensor {}: bad row length {n_cols}", info.name))
        })? as usize;
        Ok(TensorView {
            name: &info.name,
            ty: info.ty,
            n_cols,
            n_rows,
            row_bytes,
            data: file.tensor_data(info)?,
        })
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Rows `start..start + count` as a matrix of their own (one expert of a stacked tensor).
    pub fn rows(&self, start: usize, count: usize) -> TensorView<'a> {
        TensorView {
            n_rows: count,
            data: &self.data[start * self.row_bytes..(start + count) * self.row_bytes],
            ..*self
        }
    }

    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.ty, self.row(r), out).expect("row length matches the view");
    }

    /// The whole tensor as f32 (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n_rows * self.n_cols];
        for (r, chunk) in out.chunks_exact_mut(self.n_cols.max(1)).enumerate() {
            self.dequantize_row(r, chunk);
        }
        out
    }
}
