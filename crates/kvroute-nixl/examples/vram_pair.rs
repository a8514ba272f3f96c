//! VRAM to VRAM over NIXL between two processes on one GPU (the H200 run in
//! benchmarks/RESULTS.md). The parent allocates device memory with the CUDA driver API (loaded at
//! run time, like NIXL), starts itself again as the peer, exchanges metadata as bytes over the
//! child's pipes, then READs and WRITEs `--mib` MiB `--iters` times, verifies every byte by
//! copying back to the host, and prints GB/s.
//!
//! `KVROUTE_NIXL_LIB_DIR=<nixl-cu13 libs> cargo run --release -p kvroute-nixl --example vram_pair -- --mib 256 --iters 5`

use std::ffi::{c_int, c_void};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use kvroute_nixl::{Agent, MemType, Region, XferOp};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The few CUDA driver calls the run needs.
struct Cuda {
    _lib: libloading::Library,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> c_int,
    htod: unsafe extern "C" fn(u64, *const c_void, usize) -> c_int,
    dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> c_int,
}

fn ok(what: &str, rc: c_int) -> Res<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed: CUresult {rc}").into())
    }
}

impl Cuda {
    fn new() -> Res<Cuda> {
        // SAFETY: libcuda.so.1 is the CUDA driver; the signatures below are its documented C API
        // (CUdeviceptr is 64-bit, CUresult an int), and the context is made current before use.
        unsafe {
            let lib = libloading::Library::new("libcuda.so.1")?;
            let init: unsafe extern "C" fn(u32) -> c_int = *lib.get(b"cuInit\0")?;
            let device_get: unsafe extern "C" fn(*mut c_int, c_int) -> c_int =
                *lib.get(b"cuDeviceGet\0")?;
            let retain: unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int =
                *lib.get(b"cuDevicePrimaryCtxRetain\0")?;
            let set_current: unsafe extern "C" fn(*mut c_void) -> c_int =
                *lib.get(b"cuCtxSetCurrent\0")?;
            ok("cuInit", init(0))?;
            let mut dev = 0;
            ok("cuDeviceGet", device_get(&mut dev, 0))?;
            let mut ctx = std::ptr::null_mut();
            ok("cuDevicePrimaryCtxRetain", retain(&mut ctx, dev))?;
            ok("cuCtxSetCurrent", set_current(ctx))?;
            Ok(Cuda {
                mem_alloc: *lib.get(b"cuMemAlloc_v2\0")?,
                htod: *lib.get(b"cuMemcpyHtoD_v2\0")?,
                dtoh: *lib.get(b"cuMemcpyDtoH_v2\0")?,
                _lib: lib,
            })
        }
    }

    fn alloc(&self, len: usize) -> Res<u64> {
        let mut ptr = 0u64;
        // SAFETY: out-pointer; the context is current.
        ok("cuMemAlloc", unsafe { (self.mem_alloc)(&mut ptr, len) })?;
        Ok(ptr)
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Res<()> {
        // SAFETY: `dst` was allocated with at least src.len() bytes.
        ok("cuMemcpyHtoD", unsafe {
            (self.htod)(dst, src.as_ptr() as *const c_void, src.len())
        })
    }

    fn download(&self, src: u64, len: usize) -> Res<Vec<u8>> {
        let mut out = vec![0u8; len];
        // SAFETY: `src` holds at least `len` bytes; `out` has room for them.
        ok("cuMemcpyDtoH", unsafe {
            (self.dtoh)(out.as_mut_ptr() as *mut c_void, src, len)
        })?;
        Ok(out)
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Res<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.into()))
        .collect()
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The peer: VRAM filled with pattern(1); answers `fill <seed>`, `verify <seed>` and `notifs` on stdin.
fn peer(len: usize) -> Res<()> {
    let cuda = Cuda::new()?;
    let ptr = cuda.alloc(len)?;
    cuda.upload(ptr, &pattern(len, 1))?;
    let agent = Agent::new("vram-peer", "UCX", None)?;
    agent.register(
        MemType::Vram,
        &[Region {
            addr: ptr as usize,
            len,
            dev_id: 0,
        }],
    )?;
    println!("{} {}", ptr, hex(&agent.local_metadata()?));
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("verify") => {
                let seed: u64 = words.next().unwrap_or("0").parse()?;
                let same = cuda.download(ptr, len)? == pattern(len, seed);
                println!("verified {same}");
            }
            Some("fill") => {
                let seed: u64 = words.next().unwrap_or("0").parse()?;
                cuda.upload(ptr, &pattern(len, seed))?;
                println!("filled");
            }
            Some("notifs") => {
                let n = agent.notifications()?;
                println!(
                    "notifs {}",
                    n.iter()
                        .map(|n| String::from_utf8_lossy(&n.message).into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            _ => break,
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let len = arg("--mib", 256) << 20;
    let iters = arg("--iters", 5).max(1);
    if std::env::args().any(|a| a == "--peer") {
        return peer(len);
    }
    let cuda = Cuda::new()?;
    let local = cuda.alloc(len)?;
    let agent = Agent::new("vram-initiator", "UCX", None)?;
    agent.register(
        MemType::Vram,
        &[Region {
            addr: local as usize,
            len,
            dev_id: 0,
        }],
    )?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--peer", "--mib", &(len >> 20).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_peer = child.stdin.take().ok_or("no stdin")?;
    let mut from_peer = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    from_peer.read_line(&mut line)?;
    let (remote_ptr, md) = line.trim().split_once(' ').ok_or("bad peer line")?;
    let remote_ptr: u64 = remote_ptr.parse()?;
    let md = unhex(md)?;
    let peer_name = agent.load_remote_metadata(&md)?;
    println!(
        "metadata: {} bytes as bytes over a pipe, peer {peer_name}",
        md.len()
    );
    let l = [Region {
        addr: local as usize,
        len,
        dev_id: 0,
    }];
    let r = [Region {
        addr: remote_ptr as usize,
        len,
        dev_id: 0,
    }];
    let mut ask = |cmd: &str| -> Res<String> {
        writeln!(to_peer, "{cmd}")?;
        to_peer.flush()?;
        let mut answer = String::new();
        from_peer.read_line(&mut answer)?;
        Ok(answer.trim().to_string())
    };
    // Every iteration moves fresh bytes and checks them right after the transfer reports done,
    // so a completion reported early cannot pass.
    let zeros = vec![0u8; len];
    for (op, name) in [(XferOp::Read, "READ"), (XferOp::Write, "WRITE")] {
        let mut times = Vec::new();
        let mut all_ok = true;
        for i in 0..iters {
            let seed = 10 + i as u64;
            if op == XferOp::Write {
                cuda.upload(local, &pattern(len, seed))?;
            } else {
                cuda.upload(local, &zeros)?;
                ask(&format!("fill {seed}"))?;
            }
            // As the addon does: create, then post and poll to completion (run_transfer).
            let t = Instant::now();
            let id = agent.create_transfer(
                op,
                (MemType::Vram, &l),
                (MemType::Vram, &r),
                &peer_name,
                Some(format!("{name}-{i}").as_bytes()),
            )?;
            agent.run_transfer(id, None)?;
            times.push(t.elapsed().as_secs_f64());
            let ok = if op == XferOp::Read {
                cuda.download(local, len)? == pattern(len, seed)
            } else {
                ask(&format!("verify {seed}"))? == "verified true"
            };
            all_ok &= ok;
        }
        times.sort_by(f64::total_cmp);
        let gbs = |s: f64| len as f64 / s / 1e9;
        println!(
            "VRAM->VRAM {name} {} MiB x{iters}: every transfer's bytes verified={all_ok} best {:.2} GB/s median {:.2} GB/s worst {:.2} GB/s",
            len >> 20,
            gbs(times[0]),
            gbs(times[times.len() / 2]),
            gbs(times[times.len() - 1])
        );
        if !all_ok {
            return Err(format!("{name}: bytes differ").into());
        }
    }
    println!("peer {}", ask("notifs")?);
    drop(to_peer);
    child.wait()?;
    Ok(())
}
