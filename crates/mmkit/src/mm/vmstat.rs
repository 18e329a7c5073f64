//! VM counters (`mm/vmstat.c`, `include/linux/vmstat.h`): per-CPU event counters
//! (`count_vm_events`, summed by `all_vm_events`), per-CPU NUMA allocation statistics
//! (`zone_statistics`), and the zone and node counters that live in the zone/node.
//!
//! Per-CPU counters are written only by the CPU that owns them (through its `CpuGuard`), so
//! an increment is a relaxed load and store with no atomic read-modify-write; readers sum
//! every CPU's copy, as `/proc/vmstat` does in Linux.
//!
//! Node counters work as Linux's: `__mod_node_page_state` adds to this CPU's differential
//! (`vm_node_stat_diff`) and folds it into the node's atomic counter only when it passes the
//! node's `stat_threshold` (`refresh_zone_stat_thresholds`: the largest of its zones'
//! `calculate_normal_threshold`); `refresh_cpu_vm_stats`, run from each CPU's periodic
//! vmstat work, folds the rest. Readers here take `node_page_state_snapshot` — the counter
//! plus every CPU's differential — so the `/proc` views are exact whenever the CPUs are
//! quiet, as after a write to `/proc/sys/vm/stat_refresh` in Linux. The LRU sizes are the
//! exception: they change under the node's `lru_lock`, exactly. Zone counters
//! (`NR_FREE_PAGES`) change under the zone lock and are exact too, so the watermark checks
//! need no `zone_page_state_snapshot`.

pub use super::vmstat_names::*;
use crate::cpu::CpuGuard;
use crate::mm::page::Page;
use crate::Kernel;
use core::sync::atomic::Ordering::Relaxed;

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

impl Kernel {
    /// `__mod_node_page_state` for the node of `page`: this CPU's differential takes
    /// `delta`; past the node's threshold it is folded into the node's counter.
    #[inline]
    pub(crate) fn mod_node_page_state(
        &self,
        cpu: &CpuGuard<'_>,
        page: &Page,
        item: usize,
        delta: i64,
    ) {
        let nid = page.nid();
        let d = &cpu.state().vmstat.node_diff[nid].0[item];
        let x = d.load(Relaxed) + delta;
        let node = &self.nodes[nid];
        if x.abs() > node.stat_threshold.load(Relaxed) {
            node.vm_stat[item].fetch_add(x, Relaxed);
            d.store(0, Relaxed);
        } else {
            d.store(x, Relaxed);
        }
    }

    /// `node_page_state_snapshot`: node `nid`'s counter plus every CPU's differential.
    pub fn node_page_state(&self, nid: usize, item: usize) -> i64 {
        let diffs: i64 = (0..self.nr_cpus())
            .map(|c| self.cpus.get(c).vmstat.node_diff[nid].0[item].load(Relaxed))
            .sum();
        self.nodes[nid].vm_stat[item].load(Relaxed) + diffs
    }

    /// `global_node_page_state(item)` (from the snapshots): the sum over nodes, never
    /// negative.
    pub fn global_node_page_state(&self, item: usize) -> u64 {
        (0..self.nodes.len())
            .map(|n| self.node_page_state(n, item))
            .sum::<i64>()
            .max(0) as u64
    }

    /// `refresh_cpu_vm_stats`: fold this CPU's node differentials into the node counters
    /// (the periodic `vmstat_update` work).
    pub fn refresh_cpu_vm_stats(&self, cpu: &CpuGuard<'_>) {
        for (nid, diffs) in cpu.state().vmstat.node_diff.iter().enumerate() {
            for (item, d) in diffs.0.iter().enumerate() {
                let x = d.load(Relaxed);
                if x != 0 {
                    self.nodes[nid].vm_stat[item].fetch_add(x, Relaxed);
                    d.store(0, Relaxed);
                }
            }
        }
    }

    /// `refresh_zone_stat_thresholds`: each node folds at the largest of its zones'
    /// `calculate_normal_threshold`.
    pub(crate) fn refresh_zone_stat_thresholds(&self) {
        let nr_cpus = self.nr_cpus();
        for n in self.nodes.iter() {
            let t = n
                .zones
                .iter()
                .filter(|z| z.managed() > 0)
                .map(|z| z.stat_threshold(nr_cpus))
                .max()
                .unwrap_or(0);
            n.stat_threshold.store(i64::from(t), Relaxed);
        }
    }
}

/// The per-size statistics of `/sys/kernel/mm/transparent_hugepage/hugepages-<N>kB/stats/`
/// (`enum mthp_stat_item`), in Linux's order.
pub const MTHP_STAT_NAMES: &[&str] = &[
    "anon_fault_alloc",
    "anon_fault_fallback",
    "anon_fault_fallback_charge",
    "zswpout",
    "swpin",
    "swpin_fallback",
    "swpin_fallback_charge",
    "swpout",
    "swpout_fallback",
    "shmem_alloc",
    "shmem_fallback",
    "shmem_fallback_charge",
    "split",
    "split_failed",
    "split_deferred",
    "nr_anon",
    "nr_anon_partially_mapped",
];
/// `MTHP_STAT_ANON_FAULT_ALLOC`.
pub const MTHP_STAT_ANON_FAULT_ALLOC: usize = index_of(MTHP_STAT_NAMES, "anon_fault_alloc");
/// `MTHP_STAT_ANON_FAULT_FALLBACK`.
pub const MTHP_STAT_ANON_FAULT_FALLBACK: usize = index_of(MTHP_STAT_NAMES, "anon_fault_fallback");
/// `MTHP_STAT_ANON_FAULT_FALLBACK_CHARGE`.
pub const MTHP_STAT_ANON_FAULT_FALLBACK_CHARGE: usize =
    index_of(MTHP_STAT_NAMES, "anon_fault_fallback_charge");
/// `MTHP_STAT_SPLIT`.
pub const MTHP_STAT_SPLIT: usize = index_of(MTHP_STAT_NAMES, "split");
/// `MTHP_STAT_SPLIT_FAILED`.
pub const MTHP_STAT_SPLIT_FAILED: usize = index_of(MTHP_STAT_NAMES, "split_failed");
/// `MTHP_STAT_SPLIT_DEFERRED`.
pub const MTHP_STAT_SPLIT_DEFERRED: usize = index_of(MTHP_STAT_NAMES, "split_deferred");
/// `MTHP_STAT_NR_ANON`.
pub const MTHP_STAT_NR_ANON: usize = index_of(MTHP_STAT_NAMES, "nr_anon");
/// `MTHP_STAT_NR_ANON_PARTIALLY_MAPPED`.
pub const MTHP_STAT_NR_ANON_PARTIALLY_MAPPED: usize =
    index_of(MTHP_STAT_NAMES, "nr_anon_partially_mapped");
/// Orders with statistics (`PMD_ORDER + 1`).
pub const MTHP_ORDERS: usize = 10;

/// `mthp_stats`: one counter per (order, item). Linux keeps them per CPU and sums them on
/// read; these are shared atomics (one relaxed add per large-folio event, never per page).
pub struct MthpStats {
    stats: [[core::sync::atomic::AtomicI64; MTHP_STAT_NAMES.len()]; MTHP_ORDERS],
}

impl Default for MthpStats {
    fn default() -> Self {
        Self {
            stats: core::array::from_fn(|_| core::array::from_fn(|_| Default::default())),
        }
    }
}

impl MthpStats {
    /// `count_mthp_stat` / `mod_mthp_stat`: add `n` to `item` of `order` (orders without
    /// statistics are ignored, as Linux's are).
    #[inline]
    pub fn add(&self, order: u32, item: usize, n: i64) {
        if let Some(s) = self.stats.get(order as usize) {
            s[item].fetch_add(n, Relaxed);
        }
    }
    /// The value of `item` for `order`.
    pub fn get(&self, order: u32, item: usize) -> i64 {
        self.stats
            .get(order as usize)
            .map_or(0, |s| s[item].load(Relaxed))
    }
}

impl Kernel {
    /// The mTHP statistics (`/sys/kernel/mm/transparent_hugepage/hugepages-*/stats/`).
    pub fn mthp_stats(&self) -> &MthpStats {
        &self.mthp_stats
    }

    /// `hugepages-<size>kB/stats/<name>` for `order`; `None` for an unknown name.
    pub fn mthp_stat(&self, order: u32, name: &str) -> Option<i64> {
        let i = MTHP_STAT_NAMES.iter().position(|n| *n == name)?;
        Some(self.mthp_stats.get(order, i))
    }
}
