//! Per-CPU page lists (`struct per_cpu_pages`; `mm/page_alloc.c`'s `rmqueue_pcplist`,
//! `rmqueue_bulk`, `free_unref_page_commit`, `free_pcppages_bulk`, `drain_pages_zone`,
//! `zone_batchsize`, `zone_highsize`).
//!
//! Each zone has one `PerCpuPages` per CPU, for orders 0..=`PAGE_ALLOC_COSTLY_ORDER` and each
//! of the three PCP migrate types. As in Linux 6.x, each has its own spin lock: the owning CPU
//! takes it with a `trylock` on the fast path (uncontended, one atomic exchange), and
//! `drain_all_pages` takes it from another CPU to drain remotely, with no IPI. When the trylock
//! fails the allocation or free goes to the buddy lists directly, as Linux does.
//!
//! `high` adapts between `high_min` and `high_max` as in Linux 6.7+ (`nr_pcp_high`,
//! `nr_pcp_alloc`, `nr_pcp_free`, `decay_pcp_high`): a CPU that keeps freeing raises it to hold
//! its consecutive frees, one that refills from the buddy lists raises it by a batch, both
//! only while the zone is above its high watermark (else it shrinks back), drains give back
//! up to the run of consecutive frees, and the periodic decay brings it back toward
//! `high_min`.

use super::{MigrateType, MIGRATE_PCPTYPES, PAGE_ALLOC_COSTLY_ORDER};
use crate::mm::list::PageList;
use crate::mm::mmzone::{Wmark, Zone};

/// `NR_PCP_LISTS`: one per (order, pcp migrate type).
pub const NR_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER as usize + 1);
/// `MIN_PERCPU_PAGELIST_HIGH_FRACTION`: gives `high_max`.
pub const MIN_PERCPU_PAGELIST_HIGH_FRACTION: u64 = 8;

/// `struct per_cpu_pages`.
pub struct PerCpuPages {
    /// Pages (not blocks) on the lists.
    pub count: u32,
    /// Drain when `count` reaches this.
    pub high: u32,
    /// Pages moved to or from the buddy lists at a time.
    pub batch: u32,
    /// Lower bound of `high`.
    pub high_min: u32,
    /// Upper bound of `high`.
    pub high_max: u32,
    /// Pages freed since the last allocations (halved by each allocation).
    pub free_count: u32,
    /// The lists, by `order_to_pindex`.
    pub lists: [PageList; NR_PCP_LISTS],
}

impl Default for PerCpuPages {
    fn default() -> Self {
        Self::new()
    }
}

impl PerCpuPages {
    /// Empty lists, `batch` 1 and `high` 0 until the zone is set up (`pageset_init`).
    pub const fn new() -> Self {
        Self {
            count: 0,
            high: 0,
            batch: 1,
            high_min: 0,
            high_max: 0,
            free_count: 0,
            lists: [PageList::new(); NR_PCP_LISTS],
        }
    }
}

/// `order_to_pindex`.
#[inline]
pub fn order_to_pindex(mt: MigrateType, order: u32) -> usize {
    order as usize * MIGRATE_PCPTYPES + mt as usize
}

/// `pindex_to_order`.
#[inline]
pub fn pindex_to_order(pindex: usize) -> u32 {
    (pindex / MIGRATE_PCPTYPES) as u32
}

/// `pcp_allowed_order`.
#[inline]
pub fn pcp_allowed_order(order: u32) -> bool {
    order <= PAGE_ALLOC_COSTLY_ORDER
}

/// `zone_batchsize`: about a quarter of a megabyte's worth of pages, scaled down for small
/// zones, rounded to `2^n - 1` to avoid cache aliasing; at least 1.
pub fn zone_batchsize(zone: &Zone) -> u32 {
    let mut batch = (zone.managed() >> 10).min((1 << 20) / 4096);
    batch /= 4;
    batch = batch.max(1);
    let x = batch + batch / 2;
    let pow = 1u64 << (63 - x.leading_zeros());
    ((pow - 1) as u32).max(1)
}

/// `zone_highsize`: `total / (cpus local to the node)`, at least `4 * batch`, where `total`
/// is the low watermark (`high_fraction` 0) or `managed / high_fraction`.
pub fn zone_highsize(
    zone: &Zone,
    batch: u32,
    local_cpus: usize,
    nr_cpus: usize,
    high_fraction: u64,
) -> u32 {
    let total = zone
        .managed()
        .checked_div(high_fraction)
        .unwrap_or_else(|| zone.wmark(Wmark::Low));
    let split = if local_cpus == 0 { nr_cpus } else { local_cpus } as u64;
    ((total / split) as u32).max(batch << 2)
}

/// `CONFIG_PCP_BATCH_SCALE_MAX`.
pub const PCP_BATCH_SCALE_MAX: u32 = 5;

impl PerCpuPages {
    /// `nr_pcp_high` on a free: the `high` this free is judged against, adjusting `high` for
    /// the next ones. `below_high`: the zone is under its high watermark (`ZONE_BELOW_HIGH`).
    pub fn nr_pcp_high(&mut self, below_high: bool) -> u32 {
        let (lo, hi) = (self.high_min, self.high_max.max(self.high_min));
        let high = self.high.clamp(lo, hi);
        self.high = high;
        if high == 0 || lo == hi {
            return high;
        }
        if below_high {
            let fc = self.free_count.max(self.batch);
            self.high = high.saturating_sub(fc).max(lo);
            return self.count.max(lo);
        }
        if self.count >= high {
            let need = self.free_count + self.batch;
            if self.high < need {
                self.high = need.clamp(lo, hi);
            }
        }
        high
    }

    /// `nr_pcp_free`: pages to give back when `count` reached `high`: the run of consecutive
    /// frees, at least a batch, leaving a batch on the list.
    pub fn nr_pcp_free(&self, high: u32) -> u32 {
        let batch = self.batch;
        if high < batch {
            return 1;
        }
        let max = (high - batch).max(batch);
        self.free_count.clamp(batch, max)
    }

    /// `nr_pcp_alloc`'s `high` growth when a list must be refilled from the buddy lists.
    pub fn grow_for_refill(&mut self, below_high: bool) {
        if self.high_min != self.high_max && !below_high {
            self.high = (self.high + self.batch).min(self.high_max);
        }
    }
}

/// `nr_pcp_alloc`'s batch for an order: `batch` for order 0, `max(batch >> order, 2)` above.
#[inline]
pub fn alloc_batch(batch: u32, order: u32) -> u32 {
    if order == 0 {
        batch
    } else {
        (batch >> order).max(2)
    }
}
