//! `swapon` of a swap file whose header page and size are arbitrary: refused or accepted as
//! Linux's `read_swap_header` decides, never sizing anything by the header alone; an area
//! that is accepted takes pages out and gives them back, and goes away with `swapoff`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::fs::inode::RamFile;
use mmkit_sim::{Machine, MachineSpec};
use std::sync::{Arc, OnceLock};

fn machine() -> &'static Machine {
    static M: OnceLock<Machine> = OnceLock::new();
    M.get_or_init(|| {
        Machine::boot(&MachineSpec {
            e820: E820Table::for_mem_size(64 << 20).expect("64 MiB is a machine"),
            cpus: 1,
            cmdline: String::new(),
        })
        .expect("the fuzz machine boots")
    })
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes give the file's size in pages (at most 16 MiB); the rest is the
    // start of the file (the header page), zero-padded.
    if data.len() < 2 {
        return;
    }
    let pages = (u16::from_le_bytes([data[0], data[1]]) % 4097) as usize;
    let mut bytes = vec![0u8; pages * 4096];
    let n = (data.len() - 2).min(bytes.len());
    bytes[..n].copy_from_slice(&data[2..2 + n]);
    let m = machine();
    let k = &m.kernel;
    let Ok(_) = k.swapon(Arc::new(RamFile::new(bytes)), "/fuzz/swap", 0) else {
        k.check_swap_invariants().unwrap();
        return;
    };
    k.check_swap_invariants().unwrap();
    let (total, free, _) = k.swap_totals();
    assert!(
        total < pages as u64,
        "{total} swap pages from a {pages}-page file"
    );
    assert_eq!(total, free);
    m.on_cpu(0, |cpu| k.swapoff(cpu, "/fuzz/swap")).unwrap();
    k.check_swap_invariants().unwrap();
    assert_eq!(k.swap_totals().0, 0);
});
