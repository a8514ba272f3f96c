//! `NixlAgent`: kvroute-nixl's agent for JS. Converts only: descriptor lists cross as typed
//! arrays (one call per transfer, not per block), waiting for a transfer runs on the libuv
//! thread pool so the event loop never blocks, and registered `Buffer`s are pinned until the
//! agent itself is gone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvroute_nixl::{Agent, MemType, NixlError, Region, XferOp};
use napi::bindgen_prelude::{AsyncTask, BigInt, BigUint64Array, Buffer, Uint32Array};
use napi::{Env, Task};
use napi_derive::napi;

use crate::convert::invalid_input;

fn to_napi(err: NixlError) -> napi::Error {
    napi::Error::new(napi::Status::GenericFailure, err.to_string())
}

/// The agent and the JS buffers registered with it, dropped in that order (deregister first).
struct Shared {
    agent: Agent,
    pins: Mutex<HashMap<u32, Buffer>>,
}

#[napi(object)]
pub struct NixlAgentOptions {
    /// Backend plugin (default "UCX").
    pub backend: Option<String>,
    /// Folder holding libnixl_capi.so (or an unpacked nixl wheel); default KVROUTE_NIXL_LIB_DIR,
    /// then the system search path.
    pub lib_dir: Option<String>,
}

#[napi(object)]
pub struct NixlRegistration {
    pub id: u32,
    /// Start address (host address for DRAM, device pointer for VRAM).
    pub addr: BigInt,
    pub length: f64,
    pub dev_id: u32,
}

#[napi(object)]
pub struct NixlNotification {
    pub agent: String,
    pub message: Buffer,
}

#[napi(object)]
pub struct NixlAvailability {
    pub available: bool,
    /// The library that loaded.
    pub library: Option<String>,
    /// Why not, when not available.
    pub reason: Option<String>,
}

/// Whether NIXL's library loads from `lib_dir` (or the default places), without creating an agent.
#[napi]
pub fn nixl_availability(lib_dir: Option<String>) -> NixlAvailability {
    match kvroute_nixl::availability(lib_dir.as_deref().map(Path::new)) {
        Ok(path) => NixlAvailability {
            available: true,
            library: Some(path.display().to_string()),
            reason: None,
        },
        Err(e) => NixlAvailability {
            available: false,
            library: None,
            reason: Some(e.message),
        },
    }
}

fn mem_type(name: &str) -> napi::Result<MemType> {
    match name {
        "DRAM" => Ok(MemType::Dram),
        "VRAM" => Ok(MemType::Vram),
        other => Err(invalid_input(format!(
            "memory type must be DRAM or VRAM, not {other:?}"
        ))),
    }
}

fn regions(addrs: &[u64], lengths: &[u32], dev_id: u32) -> napi::Result<Vec<Region>> {
    if addrs.len() != lengths.len() {
        return Err(invalid_input(format!(
            "{} addresses but {} lengths",
            addrs.len(),
            lengths.len()
        )));
    }
    Ok(addrs
        .iter()
        .zip(lengths)
        .map(|(&addr, &len)| Region {
            addr: addr as usize,
            len: len as usize,
            dev_id: dev_id as u64,
        })
        .collect())
}

pub struct WaitTransfer {
    shared: Arc<Shared>,
    id: u32,
    timeout: Option<Duration>,
}

impl Task for WaitTransfer {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.shared
            .agent
            .run_transfer(self.id, self.timeout)
            .map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}

#[napi]
pub struct NativeNixlAgent {
    shared: Option<Arc<Shared>>,
}

impl NativeNixlAgent {
    fn shared(&self) -> napi::Result<&Arc<Shared>> {
        self.shared.as_ref().ok_or_else(|| {
            napi::Error::new(
                napi::Status::GenericFailure,
                "KVR_INVALID_INPUT: the NIXL agent is closed",
            )
        })
    }
}

#[napi]
impl NativeNixlAgent {
    /// Creates an agent; fails with `KVR_NIXL_UNAVAILABLE: NIXL not available: <why>` when the
    /// library or its backend cannot be loaded.
    #[napi(factory)]
    pub fn create(name: String, options: Option<NixlAgentOptions>) -> napi::Result<Self> {
        let (backend, lib_dir) = options
            .map(|o| (o.backend, o.lib_dir))
            .unwrap_or((None, None));
        let agent = Agent::new(
            &name,
            backend.as_deref().unwrap_or("UCX"),
            lib_dir.as_deref().map(Path::new),
        )
        .map_err(to_napi)?;
        Ok(NativeNixlAgent {
            shared: Some(Arc::new(Shared {
                agent,
                pins: Mutex::new(HashMap::new()),
            })),
        })
    }

    #[napi(getter)]
    pub fn name(&self) -> napi::Result<String> {
        Ok(self.shared()?.agent.name().to_string())
    }

    #[napi(getter)]
    pub fn library(&self) -> napi::Result<String> {
        Ok(self.shared()?.agent.library_path().display().to_string())
    }

    /// Registers a Node Buffer (DRAM); it stays pinned until deregistered or the agent closes.
    #[napi]
    pub fn register_buffer(&self, buffer: Buffer) -> napi::Result<NixlRegistration> {
        let shared = self.shared()?;
        let region = Region {
            addr: buffer.as_ptr() as usize,
            len: buffer.len(),
            dev_id: 0,
        };
        let id = shared
            .agent
            .register(MemType::Dram, &[region])
            .map_err(to_napi)?;
        shared
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, buffer);
        Ok(NixlRegistration {
            id,
            addr: BigInt::from(region.addr as u64),
            length: region.len as f64,
            dev_id: 0,
        })
    }

    /// Registers memory the caller owns: a device pointer (VRAM) or a host address (DRAM).
    #[napi]
    pub fn register_memory(
        &self,
        mem: String,
        addr: BigInt,
        length: f64,
        dev_id: u32,
    ) -> napi::Result<NixlRegistration> {
        let shared = self.shared()?;
        let (negative, addr_u64, lossless) = addr.get_u64();
        let whole = length >= 1.0 && length.fract() == 0.0 && length <= usize::MAX as f64;
        if negative || !lossless || !whole {
            return Err(invalid_input(
                "address and length must be positive integers",
            ));
        }
        let region = Region {
            addr: addr_u64 as usize,
            len: length as usize,
            dev_id: dev_id as u64,
        };
        let id = shared
            .agent
            .register(mem_type(&mem)?, &[region])
            .map_err(to_napi)?;
        Ok(NixlRegistration {
            id,
            addr: BigInt::from(addr_u64),
            length,
            dev_id,
        })
    }

    #[napi]
    pub fn deregister(&self, id: u32) -> napi::Result<()> {
        let shared = self.shared()?;
        shared.agent.deregister(id).map_err(to_napi)?;
        shared
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
    }

    #[napi]
    pub fn local_metadata(&self) -> napi::Result<Buffer> {
        Ok(self
            .shared()?
            .agent
            .local_metadata()
            .map_err(to_napi)?
            .into())
    }

    /// Loads a peer's metadata bytes; returns the peer's agent name.
    #[napi]
    pub fn load_remote_metadata(&self, metadata: Buffer) -> napi::Result<String> {
        self.shared()?
            .agent
            .load_remote_metadata(&metadata)
            .map_err(to_napi)
    }

    #[napi]
    pub fn forget_remote(&self, remote: String) -> napi::Result<()> {
        self.shared()?.agent.forget_remote(&remote).map_err(to_napi)
    }

    /// Creates a READ or WRITE (regions pair one to one); `runTransfer` posts and awaits it.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn create_transfer(
        &self,
        op: String,
        local_mem: String,
        local_addrs: BigUint64Array,
        local_lengths: Uint32Array,
        local_dev_id: u32,
        remote_mem: String,
        remote_addrs: BigUint64Array,
        remote_lengths: Uint32Array,
        remote_dev_id: u32,
        remote_agent: String,
        notification: Option<Buffer>,
    ) -> napi::Result<u32> {
        let op = match op.as_str() {
            "READ" => XferOp::Read,
            "WRITE" => XferOp::Write,
            other => {
                return Err(invalid_input(format!(
                    "transfer operation must be READ or WRITE, not {other:?}"
                )))
            }
        };
        let local = regions(&local_addrs, &local_lengths, local_dev_id)?;
        let remote = regions(&remote_addrs, &remote_lengths, remote_dev_id)?;
        self.shared()?
            .agent
            .create_transfer(
                op,
                (mem_type(&local_mem)?, &local),
                (mem_type(&remote_mem)?, &remote),
                &remote_agent,
                notification.as_deref(),
            )
            .map_err(to_napi)
    }

    /// Posts the transfer and resolves when it finishes, on the libuv thread pool (posting can
    /// itself move the bytes, e.g. UCX's cma): the event loop never waits for NIXL.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn run_transfer(
        &self,
        id: u32,
        timeout_ms: Option<u32>,
    ) -> napi::Result<AsyncTask<WaitTransfer>> {
        Ok(AsyncTask::new(WaitTransfer {
            shared: Arc::clone(self.shared()?),
            id,
            timeout: timeout_ms.map(|ms| Duration::from_millis(ms as u64)),
        }))
    }

    #[napi]
    pub fn abort_transfer(&self, id: u32) -> napi::Result<()> {
        self.shared()?.agent.abort_transfer(id).map_err(to_napi)
    }

    /// Notifications received since the last call.
    #[napi]
    pub fn notifications(&self) -> napi::Result<Vec<NixlNotification>> {
        Ok(self
            .shared()?
            .agent
            .notifications()
            .map_err(to_napi)?
            .into_iter()
            .map(|n| NixlNotification {
                agent: n.agent,
                message: n.message.into(),
            })
            .collect())
    }

    #[napi]
    pub fn send_notification(&self, remote: String, message: Buffer) -> napi::Result<()> {
        self.shared()?
            .agent
            .send_notification(&remote, &message)
            .map_err(to_napi)
    }

    /// Releases the agent (its memory is deregistered once no wait is in flight).
    #[napi]
    pub fn close(&mut self) {
        self.shared = None;
    }
}
