//! Importance-matrix files as llama.cpp writes and reads them.
//!
//! - GGUF (llama-imatrix's default): `general.type = "imatrix"`, `imatrix.datasets`,
//!   `imatrix.chunk_count`, `imatrix.chunk_size`; per weight `W`, the F32 tensors `W.in_sum2`
//!   (n_cols, n_mat: the sum over tokens of each input column squared, per expert),
//!   `W.counts` (1, n_mat: tokens seen by each expert) and `W.in_sum` (the plain sums). llama.cpp
//!   also writes `W.stats` (summary statistics for `--show-statistics`, which its quantizer does
//!   not read); dsrun does not.
//! - Legacy `.dat` (`--output-format dat`): i32 entry count; per entry an i32-length name, i32
//!   `ncall`, i32 value count and the values `sum2 / count * ncall`; then the i32 chunk count and
//!   an i32-length dataset name.

use super::{Entry, Imatrix};
use crate::error::{Error, Result};
use crate::gguf::writer::{string_array, tmp_path, GgufWriter};
use crate::gguf::{GgufFile, Value};
use crate::tensor::GgmlType;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Caps for the legacy format, whose counts are unchecked 32-bit integers.
const MAX_NAME: usize = 1 << 12;
const MAX_VALUES: usize = 1 << 28;

impl Imatrix {
    /// Writes the GGUF format llama-imatrix writes by default (temporary file, then renamed).
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        let mut w = GgufWriter::new();
        w.set("general.type", Value::String("imatrix".into()));
        w.set("imatrix.datasets", string_array(&self.datasets));
        w.set("imatrix.chunk_count", Value::U32(self.chunk_count));
        w.set("imatrix.chunk_size", Value::U32(self.chunk_size));
        let mut data: Vec<Vec<f32>> = Vec::new();
        for (name, e) in &self.entries {
            let n_mat = e.counts.len() as u64;
            let n_cols = e.n_cols() as u64;
            w.add_tensor(&format!("{name}.in_sum2"), GgmlType::F32, &[n_cols, n_mat]);
            data.push(e.sum2.clone());
            w.add_tensor(&format!("{name}.counts"), GgmlType::F32, &[1, n_mat]);
            data.push(e.counts.iter().map(|&c| c as f32).collect());
            if e.sum.len() == e.sum2.len() {
                w.add_tensor(&format!("{name}.in_sum"), GgmlType::F32, &[n_cols, n_mat]);
                data.push(e.sum.clone());
            }
        }
        w.write_file(path, |i| {
            Ok(data[i].iter().flat_map(|v| v.to_le_bytes()).collect())
        })
    }

    /// Writes llama.cpp's legacy `.dat` format (entries no token reached are left out, as
    /// llama-imatrix leaves them out).
    pub fn write_dat(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::new();
        let stored: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.counts.iter().any(|&c| c > 0))
            .collect();
        put_i32(&mut buf, stored.len() as i32);
        let chunk = self.chunk_size.max(1) as i64;
        for (name, e) in stored {
            put_i32(&mut buf, name.len() as i32);
            buf.extend_from_slice(name.as_bytes());
            let max = e.counts.iter().copied().max().unwrap_or(0);
            let ncall = ((max + chunk - 1) / chunk) as i32;
            put_i32(&mut buf, ncall);
            put_i32(&mut buf, e.sum2.len() as i32);
            let n_cols = e.n_cols();
            for (i, &v) in e.sum2.iter().enumerate() {
                let (mut v, mut c) = (v, e.counts[i / n_cols] as f32);
                if c == 0.0 {
                    (v, c) = (1.0, 1.0);
                }
                buf.extend_from_slice(&((v / c) * ncall as f32).to_le_bytes());
            }
        }
        put_i32(&mut buf, self.chunk_count as i32);
        let dataset = self.datasets.last().map(String::as_str).unwrap_or("");
        put_i32(&mut buf, dataset.len() as i32);
        buf.extend_from_slice(dataset.as_bytes());
        let tmp = tmp_path(path);
        let shown = tmp.display().to_string();
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&shown, e))?;
            f.write_all(&buf).map_err(|e| Error::io(&shown, e))?;
            f.sync_all().map_err(|e| Error::io(&shown, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display().to_string(), e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Reads either format (GGUF when the file starts with its magic, else legacy `.dat`).
    pub fn read(path: &Path) -> Result<Imatrix> {
        let shown = path.display().to_string();
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(&shown, e))?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                return Err(Error::Invalid(format!("{shown}: is a directory")));
            }
            let _ = f.read(&mut magic).map_err(|e| Error::io(&shown, e))?;
        }
        if &magic == GGUF_MAGIC {
            read_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(&shown, e))?;
            read_dat(&bytes).map_err(|m| Error::Invalid(format!("{shown}: {m}")))
        }
    }
}

fn put_i32(buf: &mut Vec<u8>, v: i32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_gguf(path: &Path) -> Result<Imatrix> {
    let shown = path.display().to_string();
    let file = GgufFile::open(path)?;
    let bad = |m: String| Error::Invalid(format!("{shown}: {m}"));
    let mut m = Imatrix {
        legacy: false,
        ..Imatrix::default()
    };
    let has = |k: &str| file.get(k).is_some();
    m.has_metadata =
        has("imatrix.datasets") && has("imatrix.chunk_count") && has("imatrix.chunk_size");
    if let Some(items) = file.get("imatrix.datasets").and_then(Value::as_array) {
        m.datasets = items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    let u32_key = |k: &str| -> Result<u32> {
        Ok(file
            .get_u64(k)?
            .map(|v| v.min(u32::MAX as u64) as u32)
            .unwrap_or(0))
    };
    m.chunk_count = u32_key("imatrix.chunk_count")?;
    m.chunk_size = u32_key("imatrix.chunk_size")?;

    // Per weight: (in_sum2, counts, in_sum).
    type Parts<'a> = (
        Option<&'a crate::gguf::TensorInfo>,
        Option<&'a crate::gguf::TensorInfo>,
        Option<&'a crate::gguf::TensorInfo>,
    );
    let mut parts: BTreeMap<&str, Parts> = BTreeMap::new();
    for t in &file.tensors {
        if let Some(w) = t.name.strip_suffix(".in_sum2") {
            parts.entry(w).or_default().0 = Some(t);
        } else if let Some(w) = t.name.strip_suffix(".counts") {
            parts.entry(w).or_default().1 = Some(t);
        } else if let Some(w) = t.name.strip_suffix(".in_sum") {
            parts.entry(w).or_default().2 = Some(t);
        }
    }
    if parts.is_empty() {
        return Err(bad(
            "no importance-matrix tensors (NAME.in_sum2 and NAME.counts)".into(),
        ));
    }
    for (name, (sum2, counts, sum)) in parts {
        let (Some(sum2), Some(counts)) = (sum2, counts) else {
            return Err(bad(format!(
                "{name}: needs both {name}.in_sum2 and {name}.counts"
            )));
        };
        for t in [Some(sum2), Some(counts), sum].into_iter().flatten() {
            if t.ty != GgmlType::F32 {
                return Err(bad(format!("tensor {} is {}, not F32", t.name, t.ty)));
            }
        }
        let sum2_v = f32s(file.tensor_data(sum2)?);
        let counts_v: Vec<i64> = f32s(file.tensor_data(counts)?)
            .iter()
            .map(|&c| c.round() as i64)
            .collect();
        if counts_v.is_empty() || !sum2_v.len().is_multiple_of(counts_v.len()) {
            return Err(bad(format!(
                "{name}: {} sums do not divide among {} counts",
                sum2_v.len(),
                counts_v.len()
            )));
        }
        let sum_v = match sum {
            Some(t) => {
                let v = f32s(file.tensor_data(t)?);
                if v.len() != sum2_v.len() {
                    return Err(bad(format!(
                        "{name}: {} sums but {} sums of squares",
                        v.len(),
                        sum2_v.len()
                    )));
                }
                v
            }
            None => Vec::new(),
        };
        m.entries.insert(
            name.to_string(),
            Entry {
                sum2: sum2_v,
                sum: sum_v,
                counts: counts_v,
            },
        );
    }
    Ok(m)
}

/// A little-endian reader over the legacy format that fails with the byte offset.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("truncated: {what} at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn i32(&mut self, what: &str) -> std::result::Result<i32, String> {
        let s = self.take(4, what)?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn len(&mut self, what: &str, max: usize) -> std::result::Result<usize, String> {
        let at = self.at;
        let n = self.i32(what)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("{what} {n} at byte {at} is out of range"))
    }
}

fn read_dat(bytes: &[u8]) -> std::result::Result<Imatrix, String> {
    let mut c = Cursor { b: bytes, at: 0 };
    let n_entries = c.len("entry count", 1 << 20)?;
    if n_entries == 0 {
        return Err(
            "not a GGUF file, and as a legacy .dat importance matrix it has no entries".into(),
        );
    }
    let mut m = Imatrix {
        legacy: true,
        ..Imatrix::default()
    };
    for i in 0..n_entries {
        let len = c.len("name length", MAX_NAME)?;
        let name = String::from_utf8_lossy(c.take(len, "name")?).into_owned();
        let ncall = c.i32("call count")?;
        let nval = c.len("value count", MAX_VALUES)?;
        if nval == 0 {
            return Err(format!("entry {} ({name}) has no values", i + 1));
        }
        let sum2 = f32s(c.take(nval * 4, "values")?);
        m.entries.insert(
            name,
            Entry {
                sum2,
                sum: Vec::new(),
                counts: vec![ncall as i64],
            },
        );
    }
    // Optional trailer: chunk count and the dataset's name.
    if c.at < bytes.len() {
        if let Ok(n) = c.i32("chunk count") {
            m.chunk_count = n.max(0) as u32;
            if let Ok(len) = c.len("dataset name length", MAX_NAME) {
                if let Ok(s) = c.take(len, "dataset name") {
                    if len > 0 {
                        m.datasets.push(String::from_utf8_lossy(s).into_owned());
                    }
                }
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["calib.txt".into()],
            chunk_count: 2,
            chunk_size: 4,
            ..Imatrix::default()
        };
        m.entries.insert(
            "blk.0.attn_q.weight".into(),
            Entry {
                sum2: vec![1.0, 4.0, 9.0],
                sum: vec![1.0, 2.0, 3.0],
                counts: vec![8],
            },
        );
        m.entries.insert(
            "blk.0.ffn_down_exps.weight".into(),
            Entry {
                sum2: vec![2.0, 2.0, 0.0, 0.0],
                sum: vec![1.0, 1.0, 0.0, 0.0],
                counts: vec![2, 0],
            },
        );
        m
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dsrun-imatrix-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn gguf_round_trip() {
        let p = dir().join("m.gguf");
        sample().write_gguf(&p).unwrap();
        let r = Imatrix::read(&p).unwrap();
        assert!(r.has_metadata && !r.legacy);
        assert_eq!(r.entries, sample().entries);
        assert_eq!((r.chunk_count, r.chunk_size), (2, 4));
        assert_eq!(r.datasets, vec!["calib.txt".to_string()]);
        let w = r.quant_weights();
        assert_eq!(w["blk.0.attn_q.weight"], vec![0.125, 0.5, 1.125]);
        // An expert no token reached gets weight 1, as llama-quantize gives it.
        assert_eq!(w["blk.0.ffn_down_exps.weight"], vec![1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn dat_round_trip_gives_the_same_weights() {
        let p = dir().join("m.dat");
        sample().write_dat(&p).unwrap();
        let r = Imatrix::read(&p).unwrap();
        assert!(r.legacy);
        assert_eq!(r.datasets, vec!["calib.txt".to_string()]);
        assert_eq!(r.chunk_count, 2);
        let (a, b) = (r.quant_weights(), sample().quant_weights());
        assert_eq!(a.len(), 2);
        for (k, v) in &b {
            for (x, y) in a[k].iter().zip(v) {
                assert!((x - y).abs() < 1e-6, "{k}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn corrupt_files_are_errors() {
        let d = dir();
        for (name, bytes) in [
            ("empty.dat", vec![]),
            ("neg.dat", (-1i32).to_le_bytes().to_vec()),
            (
                "trunc.dat",
                [1i32.to_le_bytes(), 1000i32.to_le_bytes()].concat(),
            ),
        ] {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            assert!(Imatrix::read(&p).is_err(), "{name}");
        }
        assert!(Imatrix::read(&d.join("missing")).is_err());
    }
}
