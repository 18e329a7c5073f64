//! VM counters (`mm/vmstat.c`, `include/linux/vmstat.h`): per-CPU event counters
//! (`count_vm_events`, summed by `all_vm_events`), per-CPU NUMA allocation statistics
//! (`zone_statistics`), and the zone and node counters that live in the zone/node.
//!
//! Per-CPU counters are written only by the CPU that owns them (through its `CpuGuard`), so
//! an increment is a relaxed load and store with no atomic read-modify-write; readers sum
//! every CPU's copy, as `/proc/vmstat` does in Linux.

pub use super::vmstat_names::*;
use crate::sync::CachePadded;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

const fn name_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Index of `name` in `list`; compile error if absent (used in consts).
pub const fn index_of(list: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < list.len() {
        if name_eq(list[i], name) {
            return i;
        }
        i += 1;
    }
    panic!("no such vmstat name")
}

/// Number of VM events.
pub const NR_VM_EVENTS: usize = VM_EVENT_NAMES.len();
/// `PGALLOC_DMA`: `pgalloc_<zone>` is this plus the zone index.
pub const PGALLOC_DMA: usize = index_of(VM_EVENT_NAMES, "pgalloc_dma");
/// `ALLOCSTALL_DMA`.
pub const ALLOCSTALL_DMA: usize = index_of(VM_EVENT_NAMES, "allocstall_dma");
/// `PGFREE`.
pub const PGFREE: usize = index_of(VM_EVENT_NAMES, "pgfree");
/// `NUMA_HIT` and friends, indices into `NUMA_STAT_NAMES`.
pub const NUMA_HIT: usize = 0;
/// `NUMA_MISS`.
pub const NUMA_MISS: usize = 1;
/// `NUMA_FOREIGN`.
pub const NUMA_FOREIGN: usize = 2;
/// `NUMA_LOCAL`.
pub const NUMA_LOCAL: usize = 4;
/// `NUMA_OTHER`.
pub const NUMA_OTHER: usize = 5;

/// One CPU's counters.
pub struct CpuVmStats {
    /// `vm_event_states.event[]`, on cache lines of its own.
    pub events: Box<CachePadded<[AtomicU64; NR_VM_EVENTS]>>,
    /// NUMA statistics per zone (`node * MAX_NR_ZONES + zone`), `NUMA_STAT_NAMES` order,
    /// a cache line per zone.
    pub numa: Box<[CachePadded<[AtomicU64; 6]>]>,
}

impl CpuVmStats {
    pub(crate) fn new(nr_zones_total: usize) -> Self {
        Self {
            events: Box::new(CachePadded(core::array::from_fn(|_| AtomicU64::new(0)))),
            numa: (0..nr_zones_total)
                .map(|_| CachePadded(Default::default()))
                .collect(),
        }
    }

    /// `__count_vm_events` by the owning CPU.
    #[inline]
    pub(crate) fn count(&self, item: usize, n: u64) {
        let e = &self.events.0[item];
        e.store(e.load(Relaxed) + n, Relaxed);
    }

    /// `__count_numa_event` by the owning CPU.
    #[inline]
    pub(crate) fn count_numa(&self, zone_idx: usize, item: usize) {
        let e = &self.numa[zone_idx].0[item];
        e.store(e.load(Relaxed) + 1, Relaxed);
    }
}
