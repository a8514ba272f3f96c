//! Errors with stable codes. The codes cross N-API unchanged and become `KVR_*` codes in TS.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A configuration value is out of range or unknown (block size 0, unknown algorithm...).
    InvalidConfig,
    /// An input value is malformed (bad token id, bad hash length...).
    InvalidInput,
    /// A tokenizer folder cannot be used (a file missing or malformed, a chat template that does
    /// not compile); the message names the file and the cause.
    TokenizerLoad,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidConfig => "KVR_INVALID_CONFIG",
            ErrorCode::InvalidInput => "KVR_INVALID_INPUT",
            ErrorCode::TokenizerLoad => "KVR_TOKENIZER_LOAD",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn config(message: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::InvalidConfig,
            message: message.into(),
        }
    }
    pub fn tokenizer_load(message: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::TokenizerLoad,
            message: message.into(),
        }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Error {
            code: ErrorCode::InvalidInput,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
