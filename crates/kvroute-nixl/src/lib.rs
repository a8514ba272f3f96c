//! NIXL transfer bindings for kvroute (DESIGN.md: optional at build and at run time).
//!
//! Nothing of NIXL is needed to build: `libnixl_capi.so` is found and loaded when the first
//! agent is created (see [`library`]), and a missing library is an `KVR_NIXL_UNAVAILABLE`
//! error, never an abort.

mod agent;
mod error;
mod ffi;
pub mod library;

pub use agent::{Agent, MemType, Notification, Region, XferOp, XferState, MAX_PENDING_XFERS};
pub use error::{NixlError, NixlErrorKind};
pub use library::{availability, LIB_DIR_ENV};
