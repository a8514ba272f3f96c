//! Finding and loading `libnixl_capi.so` at run time. Where to look: the folder the caller names,
//! else `KVROUTE_NIXL_LIB_DIR`, else the system search path. A folder may be the library folder
//! itself or an unpacked `nixl-cu12`/`nixl-cu13` wheel (its `.nixl_cu*.mesonpy.libs/`).
//! A loaded library stays loaded for the life of the process: NIXL starts threads and plugins
//! that must not outlive their code.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::NixlError;
use crate::ffi::Capi;

pub const LIB_DIR_ENV: &str = "KVROUTE_NIXL_LIB_DIR";
const CAPI_FILE: &str = "libnixl_capi.so";

pub struct NixlLibrary {
    pub capi: Capi,
    /// The file loaded, or the bare name when the system search path found it.
    pub path: PathBuf,
    _lib: libloading::Library,
}

static LOADED: Mutex<Vec<&'static NixlLibrary>> = Mutex::new(Vec::new());

/// Where `libnixl_capi.so` lies under `dir`, if anywhere.
fn find_in(dir: &Path) -> Option<PathBuf> {
    let direct = dir.join(CAPI_FILE);
    if direct.is_file() {
        return Some(direct);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut wheel_libs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".nixl") && n.ends_with(".mesonpy.libs"))
        })
        .map(|p| p.join(CAPI_FILE))
        .filter(|p| p.is_file())
        .collect();
    wheel_libs.sort();
    wheel_libs.into_iter().next()
}

/// The library to open: an explicit file, or the bare name for the system search path.
fn resolve(dir: Option<&Path>) -> Result<PathBuf, NixlError> {
    let from_env = std::env::var_os(LIB_DIR_ENV).filter(|v| !v.is_empty());
    let dir: Option<PathBuf> = dir.map(Path::to_path_buf).or(from_env.map(PathBuf::from));
    match dir {
        Some(dir) => find_in(&dir)
            .ok_or_else(|| NixlError::unavailable(format!("no {CAPI_FILE} in {}", dir.display()))),
        None => Ok(PathBuf::from(CAPI_FILE)),
    }
}

/// Loads (once per file) NIXL's C API library.
pub fn load(dir: Option<&Path>) -> Result<&'static NixlLibrary, NixlError> {
    let path = resolve(dir)?;
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = loaded.iter().find(|l| l.path == path) {
        return Ok(lib);
    }
    // NIXL looks for its backend plugins in NIXL_PLUGIN_DIR; the wheels keep them in
    // `plugins/` beside the library. Set it before the first agent exists (the only reader).
    if let Some(plugins) = path.parent().map(|p| p.join("plugins")) {
        if plugins.is_dir() && std::env::var_os("NIXL_PLUGIN_DIR").is_none() {
            std::env::set_var("NIXL_PLUGIN_DIR", &plugins);
        }
    }
    // UCX's memory hooks replace malloc and, in its default "bistro" mode, rewrite the code of
    // libc's mmap/munmap at run time while V8's and libuv's threads may be running it: a race
    // that can crash the host process. Malloc hooks off, and mmap hooked through the relocation
    // tables instead (pointer writes), unless the user chose. Memory events stay on: with them
    // off, UCX's registration cache goes too, and a GPU READ over its host path ran 7x slower.
    for (name, value) in [
        ("UCX_MEM_MALLOC_HOOKS", "n"),
        ("UCX_MEM_MMAP_HOOK_MODE", "reloc"),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
    // SAFETY: loading runs the library's initialisers; NIXL's are ordinary C++ static
    // constructors with no preconditions on the host process.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| NixlError::unavailable(format!("cannot load {}: {e}", path.display())))?;
    // SAFETY: the file is NIXL's C API library; `Capi` declares the signatures of wrapper.h.
    let capi = unsafe { Capi::resolve(&lib) }.map_err(NixlError::unavailable)?;
    let lib: &'static NixlLibrary = Box::leak(Box::new(NixlLibrary {
        capi,
        path,
        _lib: lib,
    }));
    loaded.push(lib);
    Ok(lib)
}

/// Whether NIXL can be loaded from `dir` (or the default places), and why not.
pub fn availability(dir: Option<&Path>) -> Result<PathBuf, NixlError> {
    load(dir).map(|lib| lib.path.clone())
}
