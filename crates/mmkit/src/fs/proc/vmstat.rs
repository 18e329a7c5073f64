//! `/proc/vmstat` (`vmstat_start`/`vmstat_show`): zone counters summed over zones, NUMA
//! counters, node counters, writeback thresholds, memmap counters, then events summed over
//! CPUs, one `name value` per line in Linux 6.x's order.

use crate::mm::mmzone::MAX_NR_ZONES;
use crate::mm::vmstat_names::*;
use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering::Relaxed;

/// `all_vm_events()`: each event summed over CPUs.
pub fn all_vm_events(k: &Kernel) -> alloc::vec::Vec<u64> {
    (0..VM_EVENT_NAMES.len())
        .map(|i| {
            (0..k.nr_cpus())
                .map(|c| k.cpus.get(c).vmstat.events.0[i].load(Relaxed))
                .sum()
        })
        .collect()
}

/// One event, summed over CPUs, by name; `None` for a name Linux does not have.
pub fn vm_event(k: &Kernel, name: &str) -> Option<u64> {
    let i = VM_EVENT_NAMES.iter().position(|n| *n == name)?;
    Some(
        (0..k.nr_cpus())
            .map(|c| k.cpus.get(c).vmstat.events.0[i].load(Relaxed))
            .sum(),
    )
}

/// `/proc/vmstat`.
pub fn vmstat(k: &Kernel) -> String {
    let mut s = String::new();
    let zones = || k.nodes.iter().flat_map(|n| n.zones.iter());
    for (i, name) in ZONE_STAT_NAMES.iter().enumerate() {
        let v: i64 = zones().map(|z| z.stat(i)).sum();
        let _ = writeln!(s, "{name} {}", v.max(0));
    }
    for (i, name) in NUMA_STAT_NAMES.iter().enumerate() {
        let v: u64 = (0..k.nr_cpus())
            .flat_map(|c| (0..k.nodes.len() * MAX_NR_ZONES).map(move |z| (c, z)))
            .map(|(c, z)| k.cpus.get(c).vmstat.numa[z].0[i].load(Relaxed))
            .sum();
        let _ = writeln!(s, "{name} {v}");
    }
    for (i, name) in NODE_STAT_NAMES.iter().enumerate() {
        let mut v: i64 = (0..k.nodes.len()).map(|n| k.node_page_state(n, i)).sum();
        // vmstat_item_print_in_thp: these count pages but print huge pages.
        if matches!(
            *name,
            "nr_anon_transparent_hugepages"
                | "nr_shmem_hugepages"
                | "nr_shmem_pmdmapped"
                | "nr_file_hugepages"
                | "nr_file_pmdmapped"
        ) {
            v /= crate::arch::x86_64::pgtable::HPAGE_PMD_NR as i64;
        }
        let _ = writeln!(s, "{name} {}", v.max(0));
    }
    for name in GLOBAL_STAT_NAMES {
        let v = match *name {
            "nr_memmap_boot_pages" => k.boot.memmap_pages,
            _ => 0,
        };
        let _ = writeln!(s, "{name} {v}");
    }
    for (name, v) in VM_EVENT_NAMES.iter().zip(all_vm_events(k)) {
        let _ = writeln!(s, "{name} {v}");
    }
    s
}
