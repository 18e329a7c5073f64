//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod files;
pub mod kvm;

use mmkit::arch::x86_64::e820::E820Table;
use mmkit::gfp::Gfp;
use mmkit::{CpuGuard, Kernel, Page};
use mmkit_sim::{Machine, MachineSpec};

/// Boot a generated PC map of `mib` MiB.
pub fn boot_mem(mib: u64, cpus: usize, cmdline: &str) -> Machine {
    let spec = MachineSpec {
        e820: E820Table::for_mem_size(mib << 20).unwrap(),
        cpus,
        cmdline: cmdline.into(),
    };
    Machine::boot(&spec).unwrap()
}

/// Allocate with `gfp` until it fails; the blocks obtained.
pub fn exhaust<'k>(k: &'k Kernel, cpu: &CpuGuard<'_>, gfp: Gfp, order: u32) -> Vec<&'k Page> {
    let mut v = Vec::new();
    while let Some(p) = k.alloc_pages(cpu, gfp | Gfp::__GFP_NOWARN, order) {
        v.push(p);
    }
    v
}

/// Free every block in `v`.
pub fn free_all(k: &Kernel, cpu: &CpuGuard<'_>, v: Vec<&Page>, order: u32) {
    for p in v {
        k.__free_pages(cpu, p, order);
    }
}

/// Free pages + pages on pcp lists, over all zones.
pub fn free_and_pcp(k: &Kernel) -> u64 {
    k.nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .map(|z| z.free_pages() as u64 + z.pcp.iter().map(|p| p.lock().count as u64).sum::<u64>())
        .sum()
}

/// One PT_LOAD for the ELF builders.
#[derive(Clone, Copy)]
pub struct Seg {
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// A minimal ELF file (64-bit when `class64`, else ia32): the header, the program headers
/// right after it (PT_INTERP first when given, the loads, PT_GNU_STACK with `gnu_stack`
/// flags when given), the interpreter path, and the file padded with `0xcc` to cover every
/// segment's file part. Never meant to run: the host kernel only execs it up to the exec
/// stop.
pub fn elf_file(
    class64: bool,
    e_type: u16,
    entry: u64,
    segs: &[Seg],
    interp: Option<&str>,
    gnu_stack: Option<u32>,
) -> Vec<u8> {
    let (ehsize, phsize) = if class64 {
        (64usize, 56usize)
    } else {
        (52, 32)
    };
    let nph = segs.len() + usize::from(interp.is_some()) + usize::from(gnu_stack.is_some());
    let interp_off = (ehsize + nph * phsize) as u64;
    let ipath = interp.map(|p| {
        let mut v = p.as_bytes().to_vec();
        v.push(0);
        v
    });
    let mut phs: Vec<(u32, u32, u64, u64, u64, u64, u64)> = Vec::new();
    if let Some(p) = &ipath {
        let n = p.len() as u64;
        phs.push((3, 4, interp_off, interp_off, n, n, 1));
    }
    for s in segs {
        phs.push((1, s.flags, s.offset, s.vaddr, s.filesz, s.memsz, s.align));
    }
    if let Some(f) = gnu_stack {
        phs.push((0x6474_e551, f, 0, 0, 0, 0, 16));
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF");
    b.extend_from_slice(&[if class64 { 2 } else { 1 }, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    let machine: u16 = if class64 { 62 } else { 3 };
    b.extend_from_slice(&e_type.to_le_bytes());
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    if class64 {
        b.extend_from_slice(&entry.to_le_bytes());
        b.extend_from_slice(&(ehsize as u64).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    } else {
        b.extend_from_slice(&(entry as u32).to_le_bytes());
        b.extend_from_slice(&(ehsize as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [ehsize as u16, phsize as u16, nph as u16, 0, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (t, f, off, va, fs, ms, al) in phs {
        if class64 {
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&f.to_le_bytes());
            for v in [off, va, va, fs, ms, al] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        } else {
            for v in [
                t, off as u32, va as u32, va as u32, fs as u32, ms as u32, f, al as u32,
            ] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    if let Some(p) = ipath {
        b.extend_from_slice(&p);
    }
    let end = segs
        .iter()
        .map(|s| (s.offset + s.filesz) as usize)
        .max()
        .unwrap_or(0)
        .max(b.len());
    b.resize(end, 0xcc);
    b
}

/// 8 bytes naming page `i` under `seed`.
pub fn tag(i: u64, seed: u64) -> [u8; 8] {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed).to_le_bytes()
}

/// Write `tag(i, seed)` at the start and the end of each page of `[base, base + pages)`.
pub fn fill(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut mmkit::mm::mm_types::MmStruct,
    base: u64,
    pages: u64,
    seed: u64,
) {
    for i in 0..pages {
        k.user_write(cpu, mm, base + (i << 12), &tag(i, seed))
            .unwrap();
        k.user_write(cpu, mm, base + (i << 12) + 4088, &tag(i, seed))
            .unwrap();
    }
}
