//! A memory-mapped GGUF file.

use super::reader::{GgufHeader, TensorInfo};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A GGUF file mapped read-only, with its parsed header. Dereferences to the header.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    header: GgufHeader,
}

impl GgufFile {
    /// Maps and parses `path`.
    ///
    /// The file must not be modified or truncated while the `GgufFile` lives: the map would change
    /// underneath the borrowed tensor slices (a truncation can even fault the process). Model
    /// files are treated as read-only, as llama.cpp treats them.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(&shown, e))?;
        let meta = file.metadata().map_err(|e| Error::io(&shown, e))?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{shown}: is a directory, not a GGUF file"
            )));
        }
        if meta.len() == 0 {
            return Err(Error::Invalid(format!(
                "{shown}: file is empty, not a GGUF file"
            )));
        }
        // SAFETY: the map is read-only and private to this struct; the documented contract above
        // (the file is not changed while mapped) is what makes reading it sound.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
        let header = GgufHeader::parse(&map).map_err(|e| match e {
            Error::Gguf { offset, msg } => Error::Gguf {
                offset,
                msg: format!("{shown}: {msg}"),
            },
            Error::UnsupportedType { tensor, type_name } => Error::UnsupportedType {
                tensor: format!("{tensor} in {shown}"),
                type_name,
            },
            other => other,
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The bytes of a tensor of this file. Bounds were checked when the header was parsed; the
    /// error can only come from a `TensorInfo` that belongs to another file.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8]> {
        let start = self.header.data_offset.saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes);
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.map.get(s..e))
            .ok_or_else(|| {
                Error::gguf(
                    start,
                    format!("tensor {} lies outside {}", t.name, self.path.display()),
                )
            })
    }
}

impl Deref for GgufFile {
    type Target = GgufHeader;
    fn deref(&self) -> &GgufHeader {
        &self.header
    }
}
