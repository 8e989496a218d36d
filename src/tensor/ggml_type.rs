//! ggml's tensor types as a table: id (as stored in GGUF), name, elements per block, bytes per
//! block. The numbering is ggml's `enum ggml_type`; gaps are types ggml has removed.

/// A tensor type dsrun knows by id. `Unknown(id)` is a type id that is valid in ggml's numbering
/// space but not decoded by dsrun (it still gets a name for error messages where ggml has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq4Nl,
    Iq4Xs,
    Bf16,
    Mxfp4,
    /// Any other id: known to ggml or not, dsrun cannot decode it.
    Other(u32),
}

/// One row of the type table.
struct TypeRow {
    ty: GgmlType,
    id: u32,
    name: &'static str,
    block_size: usize,
    type_size: usize,
}

const QK_K: usize = 256;

#[rustfmt::skip]
const TYPES: &[TypeRow] = &[
    TypeRow { ty: GgmlType::F32,   id: 0,  name: "F32",    block_size: 1,    type_size: 4 },
    TypeRow { ty: GgmlType::F16,   id: 1,  name: "F16",    block_size: 1,    type_size: 2 },
    TypeRow { ty: GgmlType::Q4_0,  id: 2,  name: "Q4_0",   block_size: 32,   type_size: 18 },
    TypeRow { ty: GgmlType::Q4_1,  id: 3,  name: "Q4_1",   block_size: 32,   type_size: 20 },
    TypeRow { ty: GgmlType::Q5_0,  id: 6,  name: "Q5_0",   block_size: 32,   type_size: 22 },
    TypeRow { ty: GgmlType::Q5_1,  id: 7,  name: "Q5_1",   block_size: 32,   type_size: 24 },
    TypeRow { ty: GgmlType::Q8_0,  id: 8,  name: "Q8_0",   block_size: 32,   type_size: 34 },
    TypeRow { ty: GgmlType::Q8_1,  id: 9,  name: "Q8_1",   block_size: 32,   type_size: 36 },
    TypeRow { ty: GgmlType::Q2K,   id: 10, name: "Q2_K",   block_size: QK_K, type_size: 84 },
    TypeRow { ty: GgmlType::Q3K,   id: 11, name: "Q3_K",   block_size: QK_K, type_size: 110 },
    TypeRow { ty: GgmlType::Q4K,   id: 12, name: "Q4_K",   block_size: QK_K, type_size: 144 },
    TypeRow { ty: GgmlType::Q5K,   id: 13, name: "Q5_K",   block_size: QK_K, type_size: 176 },
    TypeRow { ty: GgmlType::Q6K,   id: 14, name: "Q6_K",   block_size: QK_K, type_size: 210 },
    TypeRow { ty: GgmlType::Q8K,   id: 15, name: "Q8_K",   block_size: QK_K, type_size: 292 },
    TypeRow { ty: GgmlType::Iq4Nl, id: 20, name: "IQ4_NL", block_size: 32,   type_size: 18 },
    TypeRow { ty: GgmlType::Iq4Xs, id: 23, name: "IQ4_XS", block_size: QK_K, type_size: 136 },
    TypeRow { ty: GgmlType::Bf16,  id: 30, name: "BF16",   block_size: 1,    type_size: 2 },
    TypeRow { ty: GgmlType::Mxfp4, id: 39, name: "MXFP4",  block_size: 32,   type_size: 17 },
];

/// ggml types dsrun does not decode: (id, name, block size, type size). Their sizes let the
/// reader bounds-check such tensors and `dsrun info` describe the file; loading a model that
/// needs one is refused with a clear error.
#[rustfmt::skip]
const OTHER_TYPES: &[(u32, &str, usize, usize)] = &[
    (16, "IQ2_XXS", QK_K, 66), (17, "IQ2_XS", QK_K, 74), (18, "IQ3_XXS", QK_K, 98),
    (19, "IQ1_S", QK_K, 50), (21, "IQ3_S", QK_K, 110), (22, "IQ2_S", QK_K, 82),
    (24, "I8", 1, 1), (25, "I16", 1, 2), (26, "I32", 1, 4), (27, "I64", 1, 8), (28, "F64", 1, 8),
    (29, "IQ1_M", QK_K, 56), (34, "TQ1_0", QK_K, 54), (35, "TQ2_0", QK_K, 66),
];

impl GgmlType {
    /// Every type dsrun decodes, in id order.
    pub fn supported() -> impl Iterator<Item = GgmlType> {
        TYPES.iter().map(|r| r.ty)
    }

    pub fn from_id(id: u32) -> GgmlType {
        TYPES
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.ty)
            .unwrap_or(GgmlType::Other(id))
    }

    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))
            .map(|r| r.ty)
    }

    fn row(self) -> Option<&'static TypeRow> {
        TYPES.iter().find(|r| r.ty == self)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::Other(id) => id,
            t => t.row().map(|r| r.id).unwrap_or(u32::MAX),
        }
    }

    /// ggml's name ("Q4_K"), or "type N" for an id with no known name.
    pub fn name(self) -> String {
        match self {
            GgmlType::Other(id) => OTHER_TYPES
                .iter()
                .find(|r| r.0 == id)
                .map(|r| r.1.to_string())
                .unwrap_or_else(|| format!("type {id}")),
            t => t.row().map(|r| r.name.to_string()).unwrap_or_default(),
        }
    }

    pub fn is_supported(self) -> bool {
        !matches!(self, GgmlType::Other(_))
    }

    /// Whether ggml knows this type, so that its size is known even if dsrun cannot decode it.
    pub fn is_known(self) -> bool {
        self.block_size().is_some()
    }

    fn other_row(self) -> Option<&'static (u32, &'static str, usize, usize)> {
        match self {
            GgmlType::Other(id) => OTHER_TYPES.iter().find(|r| r.0 == id),
            _ => None,
        }
    }

    /// Elements per block (1 for plain float types). `None` for ids ggml does not know.
    pub fn block_size(self) -> Option<usize> {
        self.row()
            .map(|r| r.block_size)
            .or_else(|| self.other_row().map(|r| r.2))
    }

    /// Bytes per block. `None` for ids ggml does not know.
    pub fn type_size(self) -> Option<usize> {
        self.row()
            .map(|r| r.type_size)
            .or_else(|| self.other_row().map(|r| r.3))
    }

    /// Bytes that `n` elements take, or `None` when `n` is not a whole number of blocks, the
    /// type is unknown, or the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size()? as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size()? as u64)
    }

    /// Bits per weight, for reports.
    pub fn bits_per_weight(self) -> Option<f64> {
        Some(self.type_size()? as f64 * 8.0 / self.block_size()? as f64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::supported() {
            assert_eq!(GgmlType::from_id(t.id()), t);
            assert_eq!(GgmlType::from_name(&t.name()), Some(t));
        }
        assert_eq!(GgmlType::from_id(16).name(), "IQ2_XXS");
        assert_eq!(GgmlType::from_id(999).name(), "type 999");
        assert!(!GgmlType::from_id(999).is_supported());
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4K.row_bytes(100), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
        assert_eq!(GgmlType::Other(77).row_bytes(32), None);
        assert_eq!(GgmlType::from_id(16).row_bytes(256), Some(66));
        assert!(GgmlType::from_id(16).is_known() && !GgmlType::from_id(16).is_supported());
    }
}
