//! Weight blocks split into aligned segments for WGSL, which reads storage buffers as arrays of
//! 4-byte words: per block, `n_f` floats (scales widened to f32) into one buffer and the quant
//! bytes (`n_words` u32s) into another. One row per weight type; `shaders/matvec_<type>.wgsl`
//! reads exactly this layout.

use half::f16;

use crate::tensor::quants::mxfp4::e8m0_to_f32_half;
use crate::tensor::GgmlType;

/// How one weight type's blocks are split.
pub struct Layout {
    pub ty: GgmlType,
    /// Values per block.
    pub block: usize,
    /// Bytes per block in ggml's layout.
    pub block_bytes: usize,
    /// f32s per block in the float segment.
    pub n_f: usize,
    /// u32 words per block in the quant segment (0: no quant segment).
    pub n_words: usize,
    /// Appends one block's floats and quant bytes.
    split: fn(&[u8], &mut Vec<f32>, &mut Vec<u8>),
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub const LAYOUTS: &[Layout] = &[
    Layout {
        ty: GgmlType::F32,
        block: 32,
        block_bytes: 128,
        n_f: 32,
        n_words: 0,
        split: |b, f, _| {
            f.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
        },
    },
    // Kept as f16: the float segment carries each pair of values as one word, the bit patterns
    // of two f16 (not an f32 value); matvec_f16.wgsl reads it as u32 and widens with
    // unpack2x16float.
    Layout {
        ty: GgmlType::F16,
        block: 32,
        block_bytes: 64,
        n_f: 16,
        n_words: 0,
        split: |b, f, _| {
            f.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            )
        },
    },
    Layout {
        ty: GgmlType::Q8_0,
        block: 32,
        block_bytes: 34,
        n_f: 1,
        n_words: 8,
        split: |b, f, q| {
            f.push(h(b, 0));
            q.extend_from_slice(&b[2..34]);
        },
    },
    Layout {
        ty: GgmlType::Q4_0,
        block: 32,
        block_bytes: 18,
        n_f: 1,
        n_words: 4,
        split: |b, f, q| {
            f.push(h(b, 0));
            q.extend_from_slice(&b[2..18]);
        },
    },
    Layout {
        ty: GgmlType::Q4_1,
        block: 32,
        block_bytes: 20,
        n_f: 2,
        n_words: 4,
        split: |b, f, q| {
            f.extend([h(b, 0), h(b, 2)]);
            q.extend_from_slice(&b[4..20]);
        },
    },
    Layout {
        ty: GgmlType::Mxfp4,
        block: 32,
        block_bytes: 17,
        n_f: 1,
        n_words: 4,
        split: |b, f, q| {
            f.push(e8m0_to_f32_half(b[0]));
            q.extend_from_slice(&b[1..17]);
        },
    },
    // d, dmin | scales[12], qs[128]
    Layout {
        ty: GgmlType::Q4K,
        block: 256,
        block_bytes: 144,
        n_f: 2,
        n_words: 35,
        split: |b, f, q| {
            f.extend([h(b, 0), h(b, 2)]);
            q.extend_from_slice(&b[4..144]);
        },
    },
    // d | ql[128], qh[64], scales[16]
    Layout {
        ty: GgmlType::Q6K,
        block: 256,
        block_bytes: 210,
        n_f: 1,
        n_words: 52,
        split: |b, f, q| {
            f.push(h(b, 208));
            q.extend_from_slice(&b[0..208]);
        },
    },
];

pub fn layout(ty: GgmlType) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.ty == ty)
}

impl Layout {
    /// Splits whole blocks of `bytes`: (floats, quant bytes).
    pub fn split_all(&self, bytes: &[u8]) -> (Vec<f32>, Vec<u8>) {
        let nb = bytes.len() / self.block_bytes;
        let mut f = Vec::with_capacity(nb * self.n_f);
        let mut q = Vec::with_capacity(nb * self.n_words * 4);
        for blk in bytes.chunks_exact(self.block_bytes) {
            (self.split)(blk, &mut f, &mut q);
        }
        (f, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_agree_with_ggml_and_segments_fill_them() {
        for l in LAYOUTS {
            // ggml's blocks (F32's is one value; here it is taken 32 at a time).
            let (bs, ts) = (l.ty.block_size().unwrap(), l.ty.type_size().unwrap());
            assert_eq!(l.block % bs, 0, "{}", l.ty.name());
            assert_eq!(l.block / bs * ts, l.block_bytes, "{}", l.ty.name());
            let (f, q) = l.split_all(&vec![0u8; l.block_bytes * 3]);
            assert_eq!(f.len(), 3 * l.n_f, "{}", l.ty.name());
            assert_eq!(q.len(), 3 * l.n_words * 4, "{}", l.ty.name());
        }
    }
}
