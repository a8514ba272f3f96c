//! One NIXL agent: memory registration, metadata exchange, READ/WRITE transfers and
//! notifications. The agent is created with NIXL's reader-writer thread sync, so the data path
//! (posting and polling a transfer, notifications) runs from any thread without blocking the
//! others; the mutex here guards only kvroute's own tables. A transfer request is touched by one
//! thread at a time: the one running it (`run_transfer`), or whoever releases it when nobody is.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_void, CStr, CString};
use std::path::Path;
use std::ptr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::NixlError;
use crate::ffi::{self, Handle, Status};
use crate::library::{self, NixlLibrary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    Dram,
    Vram,
}

impl MemType {
    fn raw(self) -> i32 {
        match self {
            MemType::Dram => ffi::MEM_DRAM,
            MemType::Vram => ffi::MEM_VRAM,
        }
    }
}

/// A span of memory: host address (DRAM) or device pointer (VRAM) and the device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub addr: usize,
    pub len: usize,
    pub dev_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XferOp {
    /// Pull: remote memory into local memory.
    Read,
    /// Push: local memory into remote memory.
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub agent: String,
    pub message: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XferState {
    InProgress,
    Done,
}

/// Transfers and notifications the agent holds at most at once (a bound on what a caller that
/// never waits can pin).
pub const MAX_PENDING_XFERS: usize = 4096;

/// A created transfer request: `running` while a thread posts and polls it; `abort` asks that
/// thread to release it.
struct Xfer {
    req: Handle,
    running: bool,
    abort: bool,
}

struct Inner {
    agent: Handle,
    backend: Handle,
    registrations: HashMap<u32, (MemType, Vec<Region>)>,
    next_registration: u32,
    xfers: HashMap<u32, Xfer>,
    next_xfer: u32,
    remotes: HashSet<String>,
}

// SAFETY: the handles are plain pointers into NIXL's heap; NIXL allows any thread to use them
// as long as calls are serialised, which the `Mutex<Inner>` in `Agent` guarantees.
unsafe impl Send for Inner {}

pub struct Agent {
    lib: &'static NixlLibrary,
    name: String,
    backend_name: String,
    inner: Mutex<Inner>,
}

fn check(what: &str, status: Status) -> Result<(), NixlError> {
    if status == ffi::SUCCESS {
        Ok(())
    } else {
        Err(NixlError::failed(what, status))
    }
}

fn c_string(what: &str, s: &str) -> Result<CString, NixlError> {
    CString::new(s).map_err(|_| NixlError::invalid(format!("{what} contains a NUL byte")))
}

impl Agent {
    /// Creates an agent named `name` with one backend (`UCX` unless named), loading NIXL from
    /// `lib_dir`, `KVROUTE_NIXL_LIB_DIR` or the system search path.
    pub fn new(name: &str, backend: &str, lib_dir: Option<&Path>) -> Result<Agent, NixlError> {
        if name.is_empty() {
            return Err(NixlError::invalid("agent name is empty"));
        }
        let c_name = c_string("agent name", name)?;
        let c_backend = c_string("backend name", backend)?;
        let lib = library::load(lib_dir)?;
        let api = &lib.capi;
        let mut agent: Handle = ptr::null_mut();
        // nixlAgentConfig's defaults (progress thread on, no listener), with RW thread sync.
        let config = ffi::AgentConfig {
            enable_prog_thread: true,
            enable_listen_thread: false,
            listen_port: 0,
            thread_sync: ffi::THREAD_SYNC_RW,
            num_workers: 1,
            pthr_delay_us: 0,
            lthr_delay_us: 100_000,
            capture_telemetry: false,
        };
        // SAFETY: valid C string, config struct laid out as wrapper.h's, and out-pointer; the C
        // API copies both.
        check("create agent", unsafe {
            (api.create_configured_agent)(c_name.as_ptr(), &config, &mut agent)
        })?;
        let backend_handle = match Self::create_backend(lib, agent, &c_backend) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `agent` was created above and is used nowhere else.
                unsafe { (api.destroy_agent)(agent) };
                return Err(e);
            }
        };
        Ok(Agent {
            lib,
            name: name.to_string(),
            backend_name: backend.to_string(),
            inner: Mutex::new(Inner {
                agent,
                backend: backend_handle,
                registrations: HashMap::new(),
                next_registration: 1,
                xfers: HashMap::new(),
                next_xfer: 1,
                remotes: HashSet::new(),
            }),
        })
    }

    /// The backend with the plugin's default parameters (as NIXL's Python agent does).
    fn create_backend(
        lib: &NixlLibrary,
        agent: Handle,
        plugin: &CStr,
    ) -> Result<Handle, NixlError> {
        let api = &lib.capi;
        let (mut mems, mut params): (Handle, Handle) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: live agent, valid C string, out-pointers; the lists are destroyed below.
        let status =
            unsafe { (api.get_plugin_params)(agent, plugin.as_ptr(), &mut mems, &mut params) };
        if status != ffi::SUCCESS {
            return Err(NixlError::unavailable(format!(
                "backend plugin {} not found ({}); is NIXL_PLUGIN_DIR right?",
                plugin.to_string_lossy(),
                ffi::status_name(status)
            )));
        }
        let mut backend: Handle = ptr::null_mut();
        // SAFETY: live agent and params from get_plugin_params.
        let status = unsafe { (api.create_backend)(agent, plugin.as_ptr(), params, &mut backend) };
        // SAFETY: both came from get_plugin_params and are not used again.
        unsafe {
            (api.destroy_mem_list)(mems);
            (api.destroy_params)(params);
        }
        if status != ffi::SUCCESS || backend.is_null() {
            return Err(NixlError::unavailable(format!(
                "backend {} could not start ({})",
                plugin.to_string_lossy(),
                ffi::status_name(status)
            )));
        }
        Ok(backend)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> &str {
        &self.backend_name
    }

    pub fn library_path(&self) -> &Path {
        &self.lib.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reg_dlist(&self, mem: MemType, regions: &[Region]) -> Result<Handle, NixlError> {
        let api = &self.lib.capi;
        let mut list: Handle = ptr::null_mut();
        // SAFETY: out-pointer; the caller destroys the list.
        check("create registration list", unsafe {
            (api.create_reg_dlist)(mem.raw(), &mut list)
        })?;
        for r in regions {
            // SAFETY: live list; no per-descriptor metadata.
            let status =
                unsafe { (api.reg_dlist_add_desc)(list, r.addr, r.len, r.dev_id, ptr::null(), 0) };
            if status != ffi::SUCCESS {
                // SAFETY: created above.
                unsafe { (api.destroy_reg_dlist)(list) };
                return Err(NixlError::failed("add registration descriptor", status));
            }
        }
        Ok(list)
    }

    fn xfer_dlist(&self, mem: MemType, regions: &[Region]) -> Result<Handle, NixlError> {
        let api = &self.lib.capi;
        let mut list: Handle = ptr::null_mut();
        // SAFETY: out-pointer; the caller destroys the list.
        check("create transfer list", unsafe {
            (api.create_xfer_dlist)(mem.raw(), &mut list)
        })?;
        for r in regions {
            // SAFETY: live list.
            let status = unsafe { (api.xfer_dlist_add_desc)(list, r.addr, r.len, r.dev_id) };
            if status != ffi::SUCCESS {
                // SAFETY: created above.
                unsafe { (api.destroy_xfer_dlist)(list) };
                return Err(NixlError::failed("add transfer descriptor", status));
            }
        }
        Ok(list)
    }

    /// Registers memory with the backend; returns the registration's id.
    ///
    /// The memory must stay valid until `deregister` (or the agent's drop).
    pub fn register(&self, mem: MemType, regions: &[Region]) -> Result<u32, NixlError> {
        if regions.is_empty() || regions.iter().any(|r| r.len == 0 || r.addr == 0) {
            return Err(NixlError::invalid(
                "register needs at least one region, each with an address and a length",
            ));
        }
        let mut inner = self.lock();
        let list = self.reg_dlist(mem, regions)?;
        // SAFETY: live agent and list; NIXL copies the descriptors.
        let status = unsafe { (self.lib.capi.register_mem)(inner.agent, list, ptr::null_mut()) };
        // SAFETY: created by reg_dlist, not used again.
        unsafe { (self.lib.capi.destroy_reg_dlist)(list) };
        check("register memory", status)?;
        let id = inner.next_registration;
        inner.next_registration = inner.next_registration.wrapping_add(1).max(1);
        inner.registrations.insert(id, (mem, regions.to_vec()));
        Ok(id)
    }

    pub fn deregister(&self, id: u32) -> Result<(), NixlError> {
        let mut inner = self.lock();
        let Some((mem, regions)) = inner.registrations.remove(&id) else {
            return Err(NixlError::invalid(format!("no registration {id}")));
        };
        self.deregister_regions(inner.agent, mem, &regions)
    }

    /// Deregisters with the agent's lock held (or from drop, where nothing else can call).
    fn deregister_regions(
        &self,
        agent: Handle,
        mem: MemType,
        regions: &[Region],
    ) -> Result<(), NixlError> {
        let list = self.reg_dlist(mem, regions)?;
        // SAFETY: live agent and list.
        let status = unsafe { (self.lib.capi.deregister_mem)(agent, list, ptr::null_mut()) };
        // SAFETY: created by reg_dlist.
        unsafe { (self.lib.capi.destroy_reg_dlist)(list) };
        check("deregister memory", status)
    }

    /// This agent's metadata (connection info and registered memory), to hand to peers.
    pub fn local_metadata(&self) -> Result<Vec<u8>, NixlError> {
        let inner = self.lock();
        let mut data: *mut c_void = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: live agent and out-pointers.
        check("get local metadata", unsafe {
            (self.lib.capi.get_local_md)(inner.agent, &mut data, &mut len)
        })?;
        if data.is_null() {
            return Err(NixlError::failed("get local metadata", -2));
        }
        // SAFETY: NIXL returned `len` bytes at `data`, allocated with malloc (owned by us).
        let bytes = unsafe { std::slice::from_raw_parts(data as *const u8, len).to_vec() };
        // SAFETY: as above; freed once.
        unsafe { libc::free(data) };
        Ok(bytes)
    }

    /// Loads a peer's metadata; returns the peer's agent name.
    pub fn load_remote_metadata(&self, metadata: &[u8]) -> Result<String, NixlError> {
        if metadata.is_empty() {
            return Err(NixlError::invalid("remote metadata is empty"));
        }
        let mut inner = self.lock();
        let mut name: *mut std::ffi::c_char = ptr::null_mut();
        // SAFETY: live agent; NIXL parses (and validates) the bytes and copies what it keeps.
        let status = unsafe {
            (self.lib.capi.load_remote_md)(
                inner.agent,
                metadata.as_ptr() as *const c_void,
                metadata.len(),
                &mut name,
            )
        };
        if status != ffi::SUCCESS {
            return Err(NixlError {
                kind: crate::error::NixlErrorKind::InvalidInput,
                message: format!(
                    "remote metadata rejected by NIXL ({})",
                    ffi::status_name(status)
                ),
            });
        }
        if name.is_null() {
            return Err(NixlError::failed("load remote metadata", -2));
        }
        // SAFETY: NIXL returned a malloc'd NUL-terminated string that we own.
        let remote = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above; freed once.
        unsafe { libc::free(name as *mut c_void) };
        inner.remotes.insert(remote.clone());
        Ok(remote)
    }

    /// Forgets a peer's metadata (after it went away, or before loading a fresh copy).
    pub fn forget_remote(&self, remote: &str) -> Result<(), NixlError> {
        let c_remote = c_string("remote agent", remote)?;
        let mut inner = self.lock();
        if !inner.remotes.remove(remote) {
            return Err(NixlError::invalid(format!(
                "no remote agent {remote:?} loaded"
            )));
        }
        // SAFETY: live agent, valid C string.
        check("invalidate remote metadata", unsafe {
            (self.lib.capi.invalidate_remote_md)(inner.agent, c_remote.as_ptr())
        })
    }

    /// Creates a transfer between local and remote regions (pairwise, equal lengths); returns
    /// its id for `run_transfer` (or `post_transfer` then `transfer_status`).
    pub fn create_transfer(
        &self,
        op: XferOp,
        local: (MemType, &[Region]),
        remote: (MemType, &[Region]),
        remote_agent: &str,
        notification: Option<&[u8]>,
    ) -> Result<u32, NixlError> {
        if local.1.is_empty() || local.1.len() != remote.1.len() {
            return Err(NixlError::invalid(format!(
                "a transfer pairs local and remote regions one to one ({} local, {} remote)",
                local.1.len(),
                remote.1.len()
            )));
        }
        if let Some(i) = (0..local.1.len()).find(|&i| local.1[i].len != remote.1[i].len) {
            return Err(NixlError::invalid(format!(
                "region {i}: local length {} differs from remote length {}",
                local.1[i].len, remote.1[i].len
            )));
        }
        let c_remote = c_string("remote agent", remote_agent)?;
        let mut inner = self.lock();
        if inner.xfers.len() >= MAX_PENDING_XFERS {
            return Err(NixlError::invalid(format!(
                "{MAX_PENDING_XFERS} transfers are pending; wait for some first"
            )));
        }
        let api = &self.lib.capi;
        let local_list = self.xfer_dlist(local.0, local.1)?;
        let remote_list = match self.xfer_dlist(remote.0, remote.1) {
            Ok(l) => l,
            Err(e) => {
                // SAFETY: created above.
                unsafe { (api.destroy_xfer_dlist)(local_list) };
                return Err(e);
            }
        };
        let mut opt: Handle = ptr::null_mut();
        let mut req: Handle = ptr::null_mut();
        let raw_op = match op {
            XferOp::Read => ffi::OP_READ,
            XferOp::Write => ffi::OP_WRITE,
        };
        // SAFETY: every handle is live (created above), the message is copied by NIXL, and
        // each list/opt-args handle is destroyed exactly once below.
        let result = unsafe {
            let mut status = (api.create_opt_args)(&mut opt);
            if status == ffi::SUCCESS {
                if let Some(msg) = notification {
                    status =
                        (api.opt_args_set_notif_msg)(opt, msg.as_ptr() as *const c_void, msg.len());
                    if status == ffi::SUCCESS {
                        status = (api.opt_args_set_has_notif)(opt, true);
                    }
                }
            }
            let result = if status != ffi::SUCCESS {
                Err(NixlError::failed("transfer options", status))
            } else {
                let status = (api.create_xfer_req)(
                    inner.agent,
                    raw_op,
                    local_list,
                    remote_list,
                    c_remote.as_ptr(),
                    &mut req,
                    opt,
                );
                if status != ffi::SUCCESS || req.is_null() {
                    Err(NixlError {
                        kind: crate::error::NixlErrorKind::InvalidInput,
                        message: format!(
                            "NIXL refused the transfer to {remote_agent:?} ({}): are both sides registered and the remote metadata loaded?",
                            ffi::status_name(status)
                        ),
                    })
                } else {
                    Ok(())
                }
            };
            if !opt.is_null() {
                (api.destroy_opt_args)(opt);
            }
            (api.destroy_xfer_dlist)(local_list);
            (api.destroy_xfer_dlist)(remote_list);
            result
        };
        result?;
        let id = inner.next_xfer;
        inner.next_xfer = inner.next_xfer.wrapping_add(1).max(1);
        inner.xfers.insert(
            id,
            Xfer {
                req,
                running: false,
                abort: false,
            },
        );
        Ok(id)
    }

    /// Creates and posts a transfer (single-threaded use: poll it with `transfer_status`).
    pub fn post_transfer(
        &self,
        op: XferOp,
        local: (MemType, &[Region]),
        remote: (MemType, &[Region]),
        remote_agent: &str,
        notification: Option<&[u8]>,
    ) -> Result<u32, NixlError> {
        let id = self.create_transfer(op, local, remote, remote_agent, notification)?;
        let req = self.checkout(id)?;
        // SAFETY: live agent and request, checked out to this thread.
        let status = unsafe { (self.lib.capi.post_xfer_req)(self.agent(), req, ptr::null_mut()) };
        self.checkin(id);
        if status == ffi::SUCCESS || status == ffi::IN_PROG {
            Ok(id)
        } else {
            self.release(id);
            Err(NixlError::failed("post transfer", status))
        }
    }

    fn agent(&self) -> Handle {
        self.lock().agent
    }

    /// Marks the transfer as being run by this thread; its handle.
    fn checkout(&self, id: u32) -> Result<Handle, NixlError> {
        let mut inner = self.lock();
        match inner.xfers.get_mut(&id) {
            None => Err(NixlError::invalid(format!("no pending transfer {id}"))),
            Some(x) if x.running => Err(NixlError::invalid(format!(
                "transfer {id} is already being waited for"
            ))),
            Some(x) => {
                x.running = true;
                Ok(x.req)
            }
        }
    }

    fn checkin(&self, id: u32) {
        if let Some(x) = self.lock().xfers.get_mut(&id) {
            x.running = false;
        }
    }

    /// Forgets and releases a transfer.
    fn release(&self, id: u32) {
        let mut inner = self.lock();
        if let Some(x) = inner.xfers.remove(&id) {
            // SAFETY: removed from the table, so no other thread can reach it: released once.
            unsafe {
                (self.lib.capi.release_xfer_req)(inner.agent, x.req);
                (self.lib.capi.destroy_xfer_req)(x.req);
            }
        }
    }

    /// Polls a posted transfer once (single-threaded use). A finished (or failed) transfer is
    /// released and its id forgotten.
    pub fn transfer_status(&self, id: u32) -> Result<XferState, NixlError> {
        let req = self.checkout(id)?;
        // SAFETY: live agent and request, checked out to this thread.
        let status = unsafe { (self.lib.capi.get_xfer_status)(self.agent(), req) };
        self.checkin(id);
        if status == ffi::IN_PROG {
            return Ok(XferState::InProgress);
        }
        self.release(id);
        check("transfer", status).map(|_| XferState::Done)
    }

    /// Posts a created transfer and blocks the calling thread until it finishes (spins briefly,
    /// then backs off to at most 200 µs between polls), then releases it. Call it off the event
    /// loop: posting may itself move the bytes. `timeout` and `abort_transfer` end it early.
    pub fn run_transfer(&self, id: u32, timeout: Option<Duration>) -> Result<(), NixlError> {
        let req = self.checkout(id)?;
        let api = &self.lib.capi;
        let agent = self.agent();
        let start = Instant::now();
        // SAFETY: live agent and request, checked out to this thread until released below.
        let mut status = unsafe { (api.post_xfer_req)(agent, req, ptr::null_mut()) };
        let mut polls: u32 = 0;
        let outcome = loop {
            if status != ffi::IN_PROG {
                break check("transfer", status);
            }
            if self.lock().xfers.get(&id).is_some_and(|x| x.abort) {
                break Err(NixlError::invalid(format!("transfer {id} aborted")));
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                break Err(NixlError::failed("transfer (timed out)", ffi::IN_PROG));
            }
            polls += 1;
            if polls < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros((polls - 63).min(200) as u64));
            }
            // SAFETY: as above.
            status = unsafe { (api.get_xfer_status)(agent, req) };
        };
        self.release(id);
        outcome
    }

    /// Single-threaded use: polls a posted transfer until done (see `run_transfer`).
    pub fn wait_transfer(&self, id: u32, timeout: Option<Duration>) -> Result<(), NixlError> {
        let start = Instant::now();
        let mut polls: u32 = 0;
        loop {
            if self.transfer_status(id)? == XferState::Done {
                return Ok(());
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                self.release(id);
                return Err(NixlError::failed("transfer (timed out)", ffi::IN_PROG));
            }
            polls += 1;
            if polls < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros((polls - 63).min(200) as u64));
            }
        }
    }

    /// Cancels a transfer: released now, or by the thread running it at its next poll.
    pub fn abort_transfer(&self, id: u32) -> Result<(), NixlError> {
        let running = {
            let mut inner = self.lock();
            let Some(x) = inner.xfers.get_mut(&id) else {
                return Err(NixlError::invalid(format!("no pending transfer {id}")));
            };
            x.abort = true;
            x.running
        };
        if !running {
            self.release(id);
        }
        Ok(())
    }

    pub fn pending_transfers(&self) -> usize {
        self.lock().xfers.len()
    }

    /// Notifications received since the last call (drained).
    pub fn notifications(&self) -> Result<Vec<Notification>, NixlError> {
        let inner = self.lock();
        let api = &self.lib.capi;
        let mut map: Handle = ptr::null_mut();
        // SAFETY: out-pointer; destroyed below.
        check("create notification map", unsafe {
            (api.create_notif_map)(&mut map)
        })?;
        // SAFETY: live agent and map; strings and bytes read from the map are copied before
        // the map is destroyed.
        let result = unsafe {
            let mut out = Vec::new();
            let mut status = (api.get_notifs)(inner.agent, map, ptr::null_mut());
            let mut agents = 0usize;
            if status == ffi::SUCCESS {
                status = (api.notif_map_size)(map, &mut agents);
            }
            for a in 0..agents {
                if status != ffi::SUCCESS {
                    break;
                }
                let mut agent_name: *const std::ffi::c_char = ptr::null();
                status = (api.notif_map_get_agent_at)(map, a, &mut agent_name);
                if status != ffi::SUCCESS || agent_name.is_null() {
                    break;
                }
                let name = CStr::from_ptr(agent_name).to_string_lossy().into_owned();
                let mut count = 0usize;
                status = (api.notif_map_get_notifs_size)(map, agent_name, &mut count);
                for i in 0..count {
                    if status != ffi::SUCCESS {
                        break;
                    }
                    let mut data: *const c_void = ptr::null();
                    let mut len = 0usize;
                    status = (api.notif_map_get_notif)(map, agent_name, i, &mut data, &mut len);
                    if status == ffi::SUCCESS {
                        let message = if data.is_null() || len == 0 {
                            Vec::new()
                        } else {
                            std::slice::from_raw_parts(data as *const u8, len).to_vec()
                        };
                        out.push(Notification {
                            agent: name.clone(),
                            message,
                        });
                    }
                }
            }
            (api.destroy_notif_map)(map);
            if status == ffi::SUCCESS {
                Ok(out)
            } else {
                Err(NixlError::failed("get notifications", status))
            }
        };
        result
    }

    /// Sends a notification to a peer whose metadata is loaded.
    pub fn send_notification(&self, remote: &str, message: &[u8]) -> Result<(), NixlError> {
        let c_remote = c_string("remote agent", remote)?;
        let inner = self.lock();
        // SAFETY: live agent, valid C string; NIXL copies the message.
        check("send notification", unsafe {
            (self.lib.capi.gen_notif)(
                inner.agent,
                c_remote.as_ptr(),
                message.as_ptr() as *const c_void,
                message.len(),
                ptr::null_mut(),
            )
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let api = &self.lib.capi;
        // SAFETY: every handle below is owned by this agent and released exactly once; the
        // agent is destroyed last, after everything that refers to it.
        unsafe {
            for (_, x) in inner.xfers.drain() {
                (api.release_xfer_req)(inner.agent, x.req);
                (api.destroy_xfer_req)(x.req);
            }
        }
        let regs: Vec<_> = inner.registrations.drain().map(|(_, r)| r).collect();
        let remotes: Vec<_> = inner.remotes.drain().collect();
        let (agent, backend) = (inner.agent, inner.backend);
        for (mem, regions) in regs {
            let _ = self.deregister_regions(agent, mem, &regions);
        }
        // SAFETY: as above.
        unsafe {
            for remote in remotes {
                if let Ok(c) = CString::new(remote) {
                    (api.invalidate_remote_md)(agent, c.as_ptr());
                }
            }
            (api.destroy_backend)(backend);
            (api.destroy_agent)(agent);
        }
    }
}
