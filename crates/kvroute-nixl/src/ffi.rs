//! The slice of NIXL's C API (`libnixl_capi.so`, declared in nixl-sys 1.5's `wrapper.h`) that
//! kvroute calls, resolved with `dlsym` when the library is loaded. Declaring the signatures
//! here instead of depending on `nixl-sys` keeps the build free of bindgen/libclang and lets a
//! missing library be an error instead of the stub's `abort()`.

use std::ffi::{c_char, c_int, c_void};

pub type Status = c_int;
pub const SUCCESS: Status = 0;
pub const IN_PROG: Status = 1;

pub type Handle = *mut c_void;

pub const MEM_DRAM: c_int = 0;
pub const MEM_VRAM: c_int = 1;

pub const THREAD_SYNC_RW: c_int = 2;

/// wrapper.h's `nixl_capi_agent_config_t`.
#[repr(C)]
pub struct AgentConfig {
    pub enable_prog_thread: bool,
    pub enable_listen_thread: bool,
    pub listen_port: c_int,
    pub thread_sync: c_int,
    pub num_workers: std::ffi::c_uint,
    pub pthr_delay_us: u64,
    pub lthr_delay_us: u64,
    pub capture_telemetry: bool,
}

pub const OP_READ: c_int = 0;
pub const OP_WRITE: c_int = 1;

/// Human-readable NIXL C API status (wrapper.h's `nixl_capi_status_t`).
pub fn status_name(status: Status) -> &'static str {
    match status {
        0 => "SUCCESS",
        1 => "IN_PROG",
        -1 => "ERROR_INVALID_PARAM",
        -2 => "ERROR_BACKEND",
        -3 => "ERROR_INVALID_STATE",
        -4 => "ERROR_EXCEPTION",
        -5 => "ERROR_NO_TELEMETRY",
        -6 => "ERROR_NOT_FOUND",
        _ => "ERROR_UNKNOWN",
    }
}

macro_rules! capi {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// Function pointers resolved from one loaded `libnixl_capi.so`.
        pub struct Capi {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Capi {
            /// # Safety
            /// `lib` must be NIXL's C API library, whose symbols have the signatures above.
            pub unsafe fn resolve(lib: &libloading::Library) -> Result<Capi, String> {
                Ok(Capi {
                    $($name: *lib
                        .get::<unsafe extern "C" fn($($arg),*) -> $ret>(
                            concat!("nixl_capi_", stringify!($name), "\0").as_bytes(),
                        )
                        .map_err(|e| format!("symbol nixl_capi_{} missing: {e}", stringify!($name)))?,)*
                })
            }
        }
    };
}

capi! {
    create_configured_agent: fn(*const c_char, *const AgentConfig, *mut Handle) -> Status;
    destroy_agent: fn(Handle) -> Status;
    get_local_md: fn(Handle, *mut *mut c_void, *mut usize) -> Status;
    load_remote_md: fn(Handle, *const c_void, usize, *mut *mut c_char) -> Status;
    invalidate_remote_md: fn(Handle, *const c_char) -> Status;
    get_plugin_params: fn(Handle, *const c_char, *mut Handle, *mut Handle) -> Status;
    destroy_mem_list: fn(Handle) -> Status;
    destroy_params: fn(Handle) -> Status;
    create_params: fn(*mut Handle) -> Status;
    params_add: fn(Handle, *const c_char, *const c_char) -> Status;
    create_backend: fn(Handle, *const c_char, Handle, *mut Handle) -> Status;
    destroy_backend: fn(Handle) -> Status;
    create_opt_args: fn(*mut Handle) -> Status;
    destroy_opt_args: fn(Handle) -> Status;
    opt_args_set_notif_msg: fn(Handle, *const c_void, usize) -> Status;
    opt_args_set_has_notif: fn(Handle, bool) -> Status;
    register_mem: fn(Handle, Handle, Handle) -> Status;
    deregister_mem: fn(Handle, Handle, Handle) -> Status;
    create_reg_dlist: fn(c_int, *mut Handle) -> Status;
    destroy_reg_dlist: fn(Handle) -> Status;
    reg_dlist_add_desc: fn(Handle, usize, usize, u64, *const c_void, usize) -> Status;
    create_xfer_dlist: fn(c_int, *mut Handle) -> Status;
    destroy_xfer_dlist: fn(Handle) -> Status;
    xfer_dlist_add_desc: fn(Handle, usize, usize, u64) -> Status;
    create_xfer_req: fn(Handle, c_int, Handle, Handle, *const c_char, *mut Handle, Handle) -> Status;
    post_xfer_req: fn(Handle, Handle, Handle) -> Status;
    get_xfer_status: fn(Handle, Handle) -> Status;
    release_xfer_req: fn(Handle, Handle) -> Status;
    destroy_xfer_req: fn(Handle) -> Status;
    create_notif_map: fn(*mut Handle) -> Status;
    destroy_notif_map: fn(Handle) -> Status;
    get_notifs: fn(Handle, Handle, Handle) -> Status;
    notif_map_size: fn(Handle, *mut usize) -> Status;
    notif_map_get_agent_at: fn(Handle, usize, *mut *const c_char) -> Status;
    notif_map_get_notifs_size: fn(Handle, *const c_char, *mut usize) -> Status;
    notif_map_get_notif: fn(Handle, *const c_char, usize, *mut *const c_void, *mut usize) -> Status;
    gen_notif: fn(Handle, *const c_char, *const c_void, usize, Handle) -> Status;
}
