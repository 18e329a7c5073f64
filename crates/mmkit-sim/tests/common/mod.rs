//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
