//! The library's one error type. Every variant carries enough context (file, key or tensor name,
//! byte offset) for the CLI to print a single clear line.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// An operating-system error on a path (open, map, create, rename, write).
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A malformed GGUF file: what was wrong and where.
    Gguf { offset: u64, msg: String },
    /// A tensor whose type dsrun cannot decode yet.
    UnsupportedType { tensor: String, type_name: String },
    /// Metadata a model needs is missing or has the wrong type.
    Metadata { key: String, msg: String },
    /// Anything else the caller asked for that cannot be done (bad arguments, shapes).
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn gguf(offset: u64, msg: impl Into<String>) -> Self {
        Error::Gguf {
            offset,
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn metadata(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Metadata {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Gguf { offset, msg } => write!(f, "{msg} (GGUF byte {offset})"),
            Error::UnsupportedType { tensor, type_name } => write!(
                f,
                "tensor {tensor} has type {type_name}, which dsrun does not support yet"
            ),
            Error::Metadata { key, msg } => write!(f, "metadata key {key}: {msg}"),
            Error::Invalid(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
