//! The file types `llama-quantize` offers, by its names: a preset is a default tensor type plus
//! the per-tensor rules of `recipe` (which read the preset to bump sensitive tensors).
//!
//! Ids are llama.cpp's `enum llama_ftype` (stored as `general.file_type`).

use crate::tensor::GgmlType;

/// ggml type ids dsrun names but does not decode (it can still write them through ggml).
pub const IQ2_XXS: GgmlType = GgmlType::Other(16);
pub const IQ2_XS: GgmlType = GgmlType::Other(17);
pub const IQ3_XXS: GgmlType = GgmlType::Other(18);
pub const IQ1_S: GgmlType = GgmlType::Other(19);
pub const IQ3_S: GgmlType = GgmlType::Other(21);
pub const IQ2_S: GgmlType = GgmlType::Other(22);
pub const IQ1_M: GgmlType = GgmlType::Other(29);
pub const TQ1_0: GgmlType = GgmlType::Other(34);
pub const TQ2_0: GgmlType = GgmlType::Other(35);

/// A `llama_ftype`: what `TYPE` on the command line selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ftype {
    AllF32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q2KS,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    Iq2Xxs,
    Iq2Xs,
    Iq2S,
    Iq2M,
    Iq3Xxs,
    Iq3Xs,
    Iq3S,
    Iq3M,
    Iq1S,
    Iq1M,
    Iq4Nl,
    Iq4Xs,
    Tq1_0,
    Tq2_0,
    Mxfp4Moe,
}

struct Row {
    ftype: Ftype,
    name: &'static str,
    id: u32,
    default: GgmlType,
}

/// llama-quantize's `QUANT_OPTIONS` (names, llama_ftype ids) and `llama_ftype_get_default_type`.
/// Q1_0, Q2_0 and NVFP4 are left out: dsrun's type table does not size them yet.
#[rustfmt::skip]
const FTYPES: &[Row] = &[
    Row { ftype: Ftype::Q4_0,     name: "Q4_0",      id: 2,  default: GgmlType::Q4_0 },
    Row { ftype: Ftype::Q4_1,     name: "Q4_1",      id: 3,  default: GgmlType::Q4_1 },
    Row { ftype: Ftype::Mxfp4Moe, name: "MXFP4_MOE", id: 38, default: GgmlType::Mxfp4 },
    Row { ftype: Ftype::Q5_0,     name: "Q5_0",      id: 8,  default: GgmlType::Q5_0 },
    Row { ftype: Ftype::Q5_1,     name: "Q5_1",      id: 9,  default: GgmlType::Q5_1 },
    Row { ftype: Ftype::Iq2Xxs,   name: "IQ2_XXS",   id: 19, default: IQ2_XXS },
    Row { ftype: Ftype::Iq2Xs,    name: "IQ2_XS",    id: 20, default: IQ2_XS },
    Row { ftype: Ftype::Iq2S,     name: "IQ2_S",     id: 28, default: IQ2_XS },
    Row { ftype: Ftype::Iq2M,     name: "IQ2_M",     id: 29, default: IQ2_S },
    Row { ftype: Ftype::Iq1S,     name: "IQ1_S",     id: 24, default: IQ1_S },
    Row { ftype: Ftype::Iq1M,     name: "IQ1_M",     id: 31, default: IQ1_M },
    Row { ftype: Ftype::Tq1_0,    name: "TQ1_0",     id: 36, default: TQ1_0 },
    Row { ftype: Ftype::Tq2_0,    name: "TQ2_0",     id: 37, default: TQ2_0 },
    Row { ftype: Ftype::Q2K,      name: "Q2_K",      id: 10, default: GgmlType::Q2K },
    Row { ftype: Ftype::Q2KS,     name: "Q2_K_S",    id: 21, default: GgmlType::Q2K },
    Row { ftype: Ftype::Iq3Xxs,   name: "IQ3_XXS",   id: 23, default: IQ3_XXS },
    Row { ftype: Ftype::Iq3S,     name: "IQ3_S",     id: 26, default: IQ3_S },
    Row { ftype: Ftype::Iq3M,     name: "IQ3_M",     id: 27, default: IQ3_S },
    Row { ftype: Ftype::Q3KM,     name: "Q3_K",      id: 12, default: GgmlType::Q3K },
    Row { ftype: Ftype::Iq3Xs,    name: "IQ3_XS",    id: 22, default: IQ3_S },
    Row { ftype: Ftype::Q3KS,     name: "Q3_K_S",    id: 11, default: GgmlType::Q3K },
    Row { ftype: Ftype::Q3KM,     name: "Q3_K_M",    id: 12, default: GgmlType::Q3K },
    Row { ftype: Ftype::Q3KL,     name: "Q3_K_L",    id: 13, default: GgmlType::Q3K },
    Row { ftype: Ftype::Iq4Nl,    name: "IQ4_NL",    id: 25, default: GgmlType::Iq4Nl },
    Row { ftype: Ftype::Iq4Xs,    name: "IQ4_XS",    id: 30, default: GgmlType::Iq4Xs },
    Row { ftype: Ftype::Q4KM,     name: "Q4_K",      id: 15, default: GgmlType::Q4K },
    Row { ftype: Ftype::Q4KS,     name: "Q4_K_S",    id: 14, default: GgmlType::Q4K },
    Row { ftype: Ftype::Q4KM,     name: "Q4_K_M",    id: 15, default: GgmlType::Q4K },
    Row { ftype: Ftype::Q5KM,     name: "Q5_K",      id: 17, default: GgmlType::Q5K },
    Row { ftype: Ftype::Q5KS,     name: "Q5_K_S",    id: 16, default: GgmlType::Q5K },
    Row { ftype: Ftype::Q5KM,     name: "Q5_K_M",    id: 17, default: GgmlType::Q5K },
    Row { ftype: Ftype::Q6K,      name: "Q6_K",      id: 18, default: GgmlType::Q6K },
    Row { ftype: Ftype::Q8_0,     name: "Q8_0",      id: 7,  default: GgmlType::Q8_0 },
    Row { ftype: Ftype::F16,      name: "F16",       id: 1,  default: GgmlType::F16 },
    Row { ftype: Ftype::Bf16,     name: "BF16",      id: 32, default: GgmlType::Bf16 },
    Row { ftype: Ftype::AllF32,   name: "F32",       id: 0,  default: GgmlType::F32 },
];

impl Ftype {
    /// The preset llama-quantize names `name` (case-insensitive, aliases such as `Q4_K`
    /// included) or whose `llama_ftype` number is `name`.
    pub fn parse(name: &str) -> Option<Ftype> {
        let by_name = FTYPES.iter().find(|r| r.name.eq_ignore_ascii_case(name));
        let by_id = || {
            let id: u32 = name.parse().ok()?;
            FTYPES.iter().find(|r| r.id == id)
        };
        by_name.or_else(by_id).map(|r| r.ftype)
    }

    fn row(self) -> &'static Row {
        // Every variant has a row (checked by a test); the canonical name is the last row.
        FTYPES
            .iter()
            .rev()
            .find(|r| r.ftype == self)
            .unwrap_or(&FTYPES[0])
    }

    /// llama-quantize's name for the preset ("Q4_K_M").
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// The `general.file_type` value.
    pub fn id(self) -> u32 {
        self.row().id
    }

    /// The type of every tensor the preset's rules do not change.
    pub fn default_type(self) -> GgmlType {
        self.row().default
    }

    /// Every name accepted on the command line, for the usage error.
    pub fn names() -> Vec<&'static str> {
        FTYPES.iter().map(|r| r.name).collect()
    }
}

impl std::fmt::Display for Ftype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_aliases() {
        assert_eq!(Ftype::parse("q4_k_m"), Some(Ftype::Q4KM));
        assert_eq!(Ftype::parse("Q4_K"), Some(Ftype::Q4KM));
        assert_eq!(Ftype::parse("15"), Some(Ftype::Q4KM));
        assert_eq!(Ftype::parse("Q3_K"), Some(Ftype::Q3KM));
        assert_eq!(Ftype::parse("Q9_K"), None);
        assert_eq!(Ftype::Q4KM.name(), "Q4_K_M");
        assert_eq!(Ftype::Q3KM.name(), "Q3_K_M");
        assert_eq!(Ftype::Q8_0.id(), 7);
        for r in FTYPES {
            assert_eq!(Ftype::parse(r.name), Some(r.ftype));
            assert!(r.ftype.default_type().is_known(), "{}", r.name);
        }
    }
}
