//! Smoke check: two agents in one process, a DRAM READ and WRITE, bytes compared.
//! `cargo run -p kvroute-nixl --example loopback` (KVROUTE_NIXL_LIB_DIR set).

use kvroute_nixl::{Agent, MemType, Region, XferOp};

fn region(buf: &mut [u8]) -> Region {
    // From a mutable borrow: NIXL writes through this address.
    Region {
        addr: buf.as_mut_ptr() as usize,
        len: buf.len(),
        dev_id: 0,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let len = 4 << 20;
    let a = Agent::new("loop-a", "UCX", None)?;
    let b = Agent::new("loop-b", "UCX", None)?;
    let mut src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; len];
    a.register(MemType::Dram, &[region(&mut dst)])?;
    b.register(MemType::Dram, &[region(&mut src)])?;
    let md = b.local_metadata()?;
    let peer = a.load_remote_metadata(&md)?;
    println!("metadata {} bytes from {peer}", md.len());
    let id = a.post_transfer(
        XferOp::Read,
        (MemType::Dram, &[region(&mut dst)]),
        (MemType::Dram, &[region(&mut src)]),
        &peer,
        Some(b"done"),
    )?;
    a.wait_transfer(id, None)?;
    assert!(dst == src, "READ bytes differ");
    println!("read ok; notifications at b: {:?}", b.notifications()?);
    Ok(())
}
