//! Errors with kvroute's stable `KVR_*` codes as the message prefix (the TS layer maps them to
//! typed error classes).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NixlErrorKind {
    /// The NIXL library could not be found or loaded, or has no usable backend.
    Unavailable,
    /// The caller passed something NIXL cannot use (unknown region, bad descriptor...).
    InvalidInput,
    /// NIXL itself reported a failure.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixlError {
    pub kind: NixlErrorKind,
    pub message: String,
}

impl NixlError {
    pub fn unavailable(why: impl fmt::Display) -> Self {
        NixlError {
            kind: NixlErrorKind::Unavailable,
            message: format!("NIXL not available: {why}"),
        }
    }

    pub fn invalid(message: impl fmt::Display) -> Self {
        NixlError {
            kind: NixlErrorKind::InvalidInput,
            message: message.to_string(),
        }
    }

    pub fn failed(what: &str, status: crate::ffi::Status) -> Self {
        NixlError {
            kind: NixlErrorKind::Failed,
            message: format!("{what} failed: {}", crate::ffi::status_name(status)),
        }
    }

    pub fn code(&self) -> &'static str {
        match self.kind {
            NixlErrorKind::Unavailable => "KVR_NIXL_UNAVAILABLE",
            NixlErrorKind::InvalidInput => "KVR_INVALID_INPUT",
            NixlErrorKind::Failed => "KVR_NIXL_FAILED",
        }
    }
}

impl fmt::Display for NixlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}

impl std::error::Error for NixlError {}
