//! The reference file of `--kl-divergence-base`: the tokens of every chunk and, for every scored
//! position, the reference model's log-probabilities (f16), so a later run of another model or
//! setting on the same tokens can be compared with it.
//!
//! Layout (little-endian): magic `DSKL`, version u32 = 1, n_ctx u32, n_vocab u32, n_chunks u32,
//! then per chunk: n_ctx u32 tokens, then (n_ctx - 1 - n_ctx/2) rows of n_vocab f16.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"DSKL";

pub fn scored_per_chunk(n_ctx: usize) -> usize {
    n_ctx - 1 - n_ctx / 2
}

/// Writes a base file chunk by chunk, into `PATH.tmp` renamed by `finish`.
pub struct BaseWriter {
    w: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    n_vocab: usize,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

impl BaseWriter {
    pub fn create(path: &Path, n_ctx: usize, n_vocab: usize, n_chunks: usize) -> Result<Self> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut head = MAGIC.to_vec();
        for v in [1u32, n_ctx as u32, n_vocab as u32, n_chunks as u32] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&head).map_err(|e| io(&tmp, e))?;
        Ok(BaseWriter {
            w,
            tmp,
            path: path.to_path_buf(),
            n_vocab,
        })
    }

    /// One chunk: its tokens and the log-probs of its scored positions.
    pub fn add_chunk(&mut self, tokens: &[u32], logps: &[Vec<f32>]) -> Result<()> {
        let mut buf = Vec::with_capacity(tokens.len() * 4 + logps.len() * self.n_vocab * 2);
        for t in tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        for row in logps {
            for &v in row {
                buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        let r = self.w.write_all(&buf);
        r.map_err(|e| io(&self.tmp, e))
    }

    pub fn finish(self) -> Result<()> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, e))
    }

    /// Removes the unfinished file (on error or interruption).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads a base file chunk by chunk.
pub struct BaseReader {
    r: BufReader<File>,
    path: PathBuf,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunks: usize,
}

impl BaseReader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| io(path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut head = [0u8; 20];
        r.read_exact(&mut head).map_err(|e| io(path, e))?;
        if &head[..4] != MAGIC {
            return Err(Error::Invalid(format!(
                "{} is not a dsrun KL-divergence base file",
                path.display()
            )));
        }
        let u = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap()) as usize;
        if u(4) != 1 {
            return Err(Error::Invalid(format!(
                "{}: base file version {} is not supported",
                path.display(),
                u(4)
            )));
        }
        let (n_ctx, n_vocab, n_chunks) = (u(8), u(12), u(16));
        if n_ctx < 4 || n_vocab == 0 || n_vocab > 1 << 24 || n_ctx > 1 << 20 {
            return Err(Error::Invalid(format!(
                "{}: corrupt header",
                path.display()
            )));
        }
        Ok(BaseReader {
            r,
            path: path.to_path_buf(),
            n_ctx,
            n_vocab,
            n_chunks,
        })
    }

    /// The next chunk's tokens and scored log-prob rows.
    pub fn next_chunk(&mut self) -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
        let mut tb = vec![0u8; self.n_ctx * 4];
        let short = |e| {
            Error::Invalid(format!(
                "{}: truncated base file ({e})",
                self.path.display()
            ))
        };
        self.r.read_exact(&mut tb).map_err(short)?;
        let tokens = tb
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let mut rows = Vec::with_capacity(scored_per_chunk(self.n_ctx));
        let mut rb = vec![0u8; self.n_vocab * 2];
        for _ in 0..scored_per_chunk(self.n_ctx) {
            self.r.read_exact(&mut rb).map_err(|e| {
                Error::Invalid(format!(
                    "{}: truncated base file ({e})",
                    self.path.display()
                ))
            })?;
            rows.push(
                rb.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            );
        }
        Ok((tokens, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("dsrun-kl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("base.kld");
        let mut w = BaseWriter::create(&p, 8, 3, 1).unwrap();
        let rows: Vec<Vec<f32>> = (0..scored_per_chunk(8))
            .map(|i| vec![-(i as f32), -1.5, -2.0])
            .collect();
        w.add_chunk(&[1, 2, 3, 4, 5, 6, 7, 8], &rows).unwrap();
        w.finish().unwrap();
        let mut r = BaseReader::open(&p).unwrap();
        assert_eq!((r.n_ctx, r.n_vocab, r.n_chunks), (8, 3, 1));
        let (t, got) = r.next_chunk().unwrap();
        assert_eq!(t, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(got, rows);
        assert!(r.next_chunk().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
