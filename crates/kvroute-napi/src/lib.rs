//! N-API bindings for kvroute-core. This crate only converts types and calls into the core:
//! batches cross the boundary as typed arrays, never one JS call per block. Errors carry the
//! core's stable code as a `KVR_*: ` message prefix, which the TS layer turns into typed errors.

mod convert;
pub mod embeds;
pub mod events;
mod front;
mod hasher;
mod indexer;
pub mod nixl;
pub mod openai;
mod router;
mod sim_engine;
mod tokenizer;
pub mod trace;

use napi_derive::napi;

/// The version of the native core.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Rust's allocations in this library (the native front's requests, event batches, tokenizer
/// caches) go to mimalloc: glibc's malloc was ~9% of the front's samples per request (bench:
/// gateway, RESULTS.md). Node's and V8's own allocations are not affected.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
