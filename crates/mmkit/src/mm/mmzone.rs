//! Nodes, zones and zonelists (`include/linux/mmzone.h`; `mm/mm_init.c`'s
//! `calculate_node_totalpages`, `mm/page_alloc.c`'s `build_zonelists`,
//! `__setup_per_zone_wmarks`, `setup_per_zone_lowmem_reserve`, `calculate_min_free_kbytes`,
//! `calculate_totalreserve_pages`).
//!
//! A [`Zone`] owns its buddy free lists (behind the zone lock), its pageblock migrate types,
//! its per-CPU page lists and its counters. A [`PglistData`] (node) owns `MAX_NR_ZONES` zones
//! and its zonelists.

use crate::addr::{fls, int_sqrt, Pfn, PAGE_SHIFT};
use crate::mm::list::PageList;
use crate::mm::page_alloc::pcp::PerCpuPages;
use crate::mm::page_alloc::{MigrateType, MIGRATE_TYPES, NR_PAGE_ORDERS, PAGEBLOCK_ORDER};
use crate::mm::vmstat_names::{NODE_STAT_NAMES, ZONE_STAT_NAMES};
use crate::sync::{PerCpu, SpinLock};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};

/// `enum zone_type` for x86-64 (no highmem).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[repr(u8)]
pub enum ZoneType {
    /// Below 16 MiB, for ISA DMA.
    Dma = 0,
    /// Below 4 GiB, for 32-bit DMA.
    Dma32 = 1,
    /// Everything else.
    Normal = 2,
    /// Only movable allocations (`movablecore=`/`kernelcore=`).
    Movable = 3,
    /// Device memory (never populated here, present like a kernel with `CONFIG_ZONE_DEVICE`).
    Device = 4,
}

/// `MAX_NR_ZONES`.
pub const MAX_NR_ZONES: usize = 5;
/// Zone types in index order.
pub const ZONE_TYPES: [ZoneType; MAX_NR_ZONES] = [
    ZoneType::Dma,
    ZoneType::Dma32,
    ZoneType::Normal,
    ZoneType::Movable,
    ZoneType::Device,
];

impl ZoneType {
    /// The zone type with index `i` (`i < MAX_NR_ZONES`).
    #[inline]
    pub fn from_index(i: usize) -> Self {
        ZONE_TYPES[i]
    }
    /// `zone_names[]`.
    pub fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
            ZoneType::Movable => "Movable",
            ZoneType::Device => "Device",
        }
    }
    /// Lowercase name for vmstat events (`pgalloc_dma32`).
    pub fn lower_name(self) -> &'static str {
        match self {
            ZoneType::Dma => "dma",
            ZoneType::Dma32 => "dma32",
            ZoneType::Normal => "normal",
            ZoneType::Movable => "movable",
            ZoneType::Device => "device",
        }
    }
}

/// Watermark indices (`enum zone_watermarks`).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(usize)]
pub enum Wmark {
    /// `WMARK_MIN`.
    Min = 0,
    /// `WMARK_LOW`.
    Low = 1,
    /// `WMARK_HIGH`.
    High = 2,
    /// `WMARK_PROMO`.
    Promo = 3,
}

/// Index of `NR_FREE_PAGES` in the zone counters.
pub const NR_FREE_PAGES: usize = 0;
/// `NR_ZONE_LRU_BASE`: `nr_zone_inactive_anon`, the first of the zone's five LRU counters
/// (in `enum lru_list` order, as the node's `nr_inactive_anon`..).
pub const NR_ZONE_LRU_BASE: usize = 2;
/// Index of `NR_FREE_PAGES_BLOCKS` (free pages in blocks of at least pageblock order).
pub const NR_FREE_PAGES_BLOCKS: usize = 1;

/// `struct free_area` for every order: the buddy free lists of a zone, protected by the
/// zone lock.
pub struct FreeArea {
    /// `free_area[order].free_list[migratetype]`.
    pub lists: [[PageList; MIGRATE_TYPES]; NR_PAGE_ORDERS],
    /// `free_area[order].nr_free`: blocks (not pages) of each order.
    pub nr_free: [u64; NR_PAGE_ORDERS],
}

impl FreeArea {
    fn new() -> Self {
        Self {
            lists: [[PageList::new(); MIGRATE_TYPES]; NR_PAGE_ORDERS],
            nr_free: [0; NR_PAGE_ORDERS],
        }
    }
}

/// `struct zone`.
pub struct Zone {
    /// Node this zone belongs to.
    pub node: usize,
    /// Which zone.
    pub zone_type: ZoneType,
    /// First pfn of the span.
    pub zone_start_pfn: u64,
    /// Pages spanned, holes included.
    pub spanned_pages: u64,
    /// Pages of RAM in the span.
    pub present_pages: u64,
    /// Pages the buddy allocator manages (present minus boot reservations).
    pub managed_pages: AtomicU64,
    /// min/low/high/promo, in pages.
    pub watermark: [AtomicU64; 4],
    /// `lowmem_reserve[]`: pages kept back from allocations that could use a higher zone.
    pub lowmem_reserve: [AtomicU64; MAX_NR_ZONES],
    /// Pages in MIGRATE_HIGHATOMIC pageblocks.
    pub nr_reserved_highatomic: AtomicU64,
    /// The zone lock and what it protects.
    pub free_area: SpinLock<FreeArea>,
    /// Migrate type of each pageblock (`pageblock_flags`).
    pub pageblock_mt: Box<[AtomicU8]>,
    /// Per-CPU page lists (`zone->per_cpu_pageset`).
    pub pcp: PerCpu<SpinLock<PerCpuPages>>,
    /// Zone counters (`vm_stat[]`), in `ZONE_STAT_NAMES` order.
    pub vm_stat: Box<[AtomicI64]>,
}

impl Zone {
    pub(crate) fn new(
        node: usize,
        zone_type: ZoneType,
        start: u64,
        spanned: u64,
        present: u64,
        nr_cpus: usize,
    ) -> Self {
        let first_block = start >> PAGEBLOCK_ORDER;
        let nblocks = if spanned == 0 {
            0
        } else {
            ((start + spanned - 1) >> PAGEBLOCK_ORDER) - first_block + 1
        };
        Self {
            node,
            zone_type,
            zone_start_pfn: start,
            spanned_pages: spanned,
            present_pages: present,
            managed_pages: AtomicU64::new(0),
            watermark: Default::default(),
            lowmem_reserve: Default::default(),
            nr_reserved_highatomic: AtomicU64::new(0),
            free_area: SpinLock::new(FreeArea::new()),
            pageblock_mt: (0..nblocks)
                .map(|_| AtomicU8::new(MigrateType::Movable as u8))
                .collect(),
            pcp: PerCpu::new(nr_cpus, |_| SpinLock::new(PerCpuPages::new())),
            vm_stat: (0..ZONE_STAT_NAMES.len())
                .map(|_| AtomicI64::new(0))
                .collect(),
        }
    }

    /// `zone_end_pfn()`.
    #[inline]
    pub fn end_pfn(&self) -> u64 {
        self.zone_start_pfn + self.spanned_pages
    }
    /// `zone_spans_pfn()`.
    #[inline]
    pub fn spans(&self, pfn: Pfn) -> bool {
        pfn.0 >= self.zone_start_pfn && pfn.0 < self.end_pfn()
    }
    /// `populated_zone()`.
    #[inline]
    pub fn populated(&self) -> bool {
        self.present_pages != 0
    }
    /// `zone_managed_pages()`.
    #[inline]
    pub fn managed(&self) -> u64 {
        self.managed_pages.load(Relaxed)
    }
    /// A watermark in pages.
    #[inline]
    pub fn wmark(&self, w: Wmark) -> u64 {
        self.watermark[w as usize].load(Relaxed)
    }
    /// `zone_page_state(zone, item)`.
    #[inline]
    pub fn stat(&self, item: usize) -> i64 {
        self.vm_stat[item].load(Relaxed)
    }
    /// `__mod_zone_page_state()`: callers hold the zone lock, so load+store is enough.
    #[inline]
    pub(crate) fn mod_stat_locked(&self, item: usize, delta: i64) {
        let s = &self.vm_stat[item];
        s.store(s.load(Relaxed) + delta, Relaxed);
    }
    /// Free pages in the buddy lists (`NR_FREE_PAGES`).
    #[inline]
    pub fn free_pages(&self) -> i64 {
        self.stat(NR_FREE_PAGES)
    }
    /// `get_pageblock_migratetype()`.
    #[inline]
    pub fn pageblock_migratetype(&self, pfn: Pfn) -> MigrateType {
        let i = (pfn.0 >> PAGEBLOCK_ORDER) - (self.zone_start_pfn >> PAGEBLOCK_ORDER);
        MigrateType::from_index(self.pageblock_mt[i as usize].load(Relaxed) as usize)
    }
    /// `set_pageblock_migratetype()`.
    #[inline]
    pub fn set_pageblock_migratetype(&self, pfn: Pfn, mt: MigrateType) {
        let i = (pfn.0 >> PAGEBLOCK_ORDER) - (self.zone_start_pfn >> PAGEBLOCK_ORDER);
        self.pageblock_mt[i as usize].store(mt as u8, Relaxed);
    }
    /// `calculate_normal_threshold()`: the per-CPU vmstat fold threshold Linux would use.
    pub fn stat_threshold(&self, nr_cpus: usize) -> u32 {
        let mem = self.managed() >> (27 - PAGE_SHIFT);
        (2 * fls(nr_cpus as u64) * (1 + fls(mem))).min(125)
    }
}

/// Which zonelist (`ZONELIST_FALLBACK` / `ZONELIST_NOFALLBACK`).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum ZonelistKind {
    /// All nodes by distance.
    Fallback,
    /// This node only (`__GFP_THISNODE`).
    NoFallback,
}

/// `struct pglist_data`: one NUMA node.
pub struct PglistData {
    /// Node id.
    pub node_id: usize,
    /// First pfn of the node.
    pub node_start_pfn: u64,
    /// Pages spanned.
    pub node_spanned_pages: u64,
    /// Pages present.
    pub node_present_pages: u64,
    /// The zones, indexed by `ZoneType`.
    pub zones: Vec<Zone>,
    /// `node_zonelists[ZONELIST_FALLBACK]`: (node, zone) from the highest zone of the nearest
    /// node down, populated zones only.
    pub zonelist_fallback: Vec<(usize, ZoneType)>,
    /// `node_zonelists[ZONELIST_NOFALLBACK]`: this node's zones only.
    pub zonelist_nofallback: Vec<(usize, ZoneType)>,
    /// Node counters, in `NODE_STAT_NAMES` order (each CPU also holds a differential).
    pub vm_stat: Box<[AtomicI64]>,
    /// `per_cpu_nodestats.stat_threshold`: how far a CPU's differential may drift.
    pub stat_threshold: AtomicI64,
    /// The LRU lists (`lruvec`) under `lru_lock`.
    pub lru: crate::sync::SpinLock<Lruvec>,
    /// kswapd has been woken (`kswapd_wait` with work pending).
    pub kswapd_wait: core::sync::atomic::AtomicBool,
    /// Times kswapd was woken.
    pub kswapd_wakeups: core::sync::atomic::AtomicU64,
    /// `kswapd_highest_zoneidx`: the highest zone the allocations that woke kswapd could
    /// use (`MAX_NR_ZONES`: none asked since its last run).
    pub kswapd_highest_zoneidx: core::sync::atomic::AtomicUsize,
    /// `pgdat->deferred_split_queue`: large anonymous folios waiting to be split.
    pub deferred_split: crate::sync::SpinLock<DeferredSplit>,
}

/// `struct deferred_split`: the node's queue of partially mapped large folios (linked
/// through their third page, see [`crate::mm::page`]) and the shrinker's deferred work.
#[derive(Default)]
pub struct DeferredSplit {
    /// `split_queue`: pfns of the folios' third pages.
    pub(crate) queue: crate::mm::list::PageList,
    /// `split_queue_len`.
    pub len: u64,
    /// The shrinker's `nr_deferred` for this node (scan work carried to the next call).
    pub(crate) nr_deferred: u64,
}

impl PglistData {
    pub(crate) fn new(node_id: usize, zones: Vec<Zone>) -> Self {
        let populated: Vec<&Zone> = zones.iter().filter(|z| z.populated()).collect();
        let start = populated.first().map_or(0, |z| z.zone_start_pfn);
        let end = populated.iter().map(|z| z.end_pfn()).max().unwrap_or(start);
        let present = zones.iter().map(|z| z.present_pages).sum();
        Self {
            node_id,
            node_start_pfn: start,
            node_spanned_pages: end - start,
            node_present_pages: present,
            zones,
            zonelist_fallback: Vec::new(),
            zonelist_nofallback: Vec::new(),
            vm_stat: (0..NODE_STAT_NAMES.len())
                .map(|_| AtomicI64::new(0))
                .collect(),
            stat_threshold: AtomicI64::new(0),
            lru: crate::sync::SpinLock::new(Default::default()),
            kswapd_wait: Default::default(),
            kswapd_wakeups: Default::default(),
            kswapd_highest_zoneidx: MAX_NR_ZONES.into(),
            deferred_split: crate::sync::SpinLock::new(Default::default()),
        }
    }

    /// The zone of type `t`.
    #[inline]
    pub fn zone(&self, t: ZoneType) -> &Zone {
        &self.zones[t as usize]
    }
}

/// The NUMA distance table (`node_distance()`), `LOCAL_DISTANCE` 10 on the diagonal.
#[derive(Clone, Debug)]
pub struct NumaDistance {
    n: usize,
    d: Vec<u8>,
}

/// `LOCAL_DISTANCE`.
pub const LOCAL_DISTANCE: u8 = 10;
/// `REMOTE_DISTANCE`, what `numa=fake` uses between emulated nodes.
pub const REMOTE_DISTANCE: u8 = 20;

impl NumaDistance {
    /// Local 10 and remote 20 for `n` nodes, as `numa=fake=N` sets it up.
    pub fn uniform(n: usize) -> Self {
        let d = (0..n * n)
            .map(|i| {
                if i / n == i % n {
                    LOCAL_DISTANCE
                } else {
                    REMOTE_DISTANCE
                }
            })
            .collect();
        Self { n, d }
    }
    /// A table from explicit rows; `None` unless square with `LOCAL_DISTANCE` on the diagonal
    /// and remote distances above it.
    pub fn from_rows(rows: &[Vec<u8>]) -> Option<Self> {
        let n = rows.len();
        let mut d = Vec::with_capacity(n * n);
        for (i, r) in rows.iter().enumerate() {
            if r.len() != n {
                return None;
            }
            for (j, &v) in r.iter().enumerate() {
                if (i == j) != (v == LOCAL_DISTANCE) || v < LOCAL_DISTANCE {
                    return None;
                }
                d.push(v);
            }
        }
        Some(Self { n, d })
    }
    /// `node_distance(a, b)`.
    pub fn get(&self, a: usize, b: usize) -> u8 {
        self.d[a * self.n + b]
    }
    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.n
    }
}

/// `build_zonelists()`'s node order for `local`: nearest first, ties broken by node id
/// (`find_next_best_node` with equal loads).
pub fn node_order(dist: &NumaDistance, local: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dist.nodes()).collect();
    order.sort_by_key(|&n| (n != local, dist.get(local, n), n));
    order
}

/// Tunables that shape watermarks (the `vm.*` sysctls and their boot-time equivalents).
#[derive(Clone, Debug)]
pub struct WmarkTunables {
    /// `vm.min_free_kbytes`; `None` computes it from memory size.
    pub min_free_kbytes: Option<u64>,
    /// `vm.watermark_scale_factor` (default 10, i.e. 0.1% of the zone).
    pub watermark_scale_factor: u64,
    /// `vm.lowmem_reserve_ratio` for DMA, DMA32, Normal, Movable, Device.
    pub lowmem_reserve_ratio: [u64; MAX_NR_ZONES],
}

impl Default for WmarkTunables {
    fn default() -> Self {
        Self {
            min_free_kbytes: None,
            watermark_scale_factor: 10,
            lowmem_reserve_ratio: [256, 256, 32, 0, 0],
        }
    }
}

/// `calculate_min_free_kbytes()`: `int_sqrt(lowmem_kbytes * 16)` clamped to [128, 262144].
pub fn calculate_min_free_kbytes(lowmem_kbytes: u64) -> u64 {
    int_sqrt(lowmem_kbytes * 16).clamp(128, 262_144)
}

/// `SWAP_CLUSTER_MAX`.
pub const SWAP_CLUSTER_MAX: u64 = 32;

/// `__setup_per_zone_wmarks()` over every zone of every node: `min_free_kbytes` shared out in
/// proportion to managed pages, then low/high/promo spaced by
/// `max(min / 4, managed * watermark_scale_factor / 10000)`.
pub fn setup_per_zone_wmarks(nodes: &[PglistData], min_free_kbytes: u64, scale: u64) {
    let pages_min = min_free_kbytes >> (PAGE_SHIFT - 10);
    let lowmem_pages: u64 = nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .filter(|z| z.zone_type != ZoneType::Movable)
        .map(|z| z.managed())
        .sum();
    for z in nodes.iter().flat_map(|n| n.zones.iter()) {
        let managed = z.managed();
        let share = if lowmem_pages == 0 {
            0
        } else {
            (pages_min as u128 * managed as u128 / lowmem_pages as u128) as u64
        };
        let min = if z.zone_type == ZoneType::Movable {
            (managed / 1024).clamp(SWAP_CLUSTER_MAX, 128)
        } else {
            share
        };
        let tmp = (share >> 2).max((managed as u128 * scale as u128 / 10_000) as u64);
        z.watermark[Wmark::Min as usize].store(min, Relaxed);
        z.watermark[Wmark::Low as usize].store(min + tmp, Relaxed);
        z.watermark[Wmark::High as usize].store(min + tmp * 2, Relaxed);
        z.watermark[Wmark::Promo as usize].store(min + tmp * 3, Relaxed);
    }
}

/// `setup_per_zone_lowmem_reserve()`: zone i keeps back (managed pages of the zones above it)
/// / `ratio[i]` from allocations that could have used those zones.
pub fn setup_per_zone_lowmem_reserve(nodes: &[PglistData], ratio: &[u64; MAX_NR_ZONES]) {
    for n in nodes {
        for (i, (z, &r)) in n.zones.iter().zip(ratio.iter()).enumerate() {
            let clear = r == 0 || z.managed() == 0;
            let mut upper = 0;
            z.lowmem_reserve[i].store(0, Relaxed);
            for j in i + 1..MAX_NR_ZONES {
                upper += n.zones[j].managed();
                z.lowmem_reserve[j].store(if clear { 0 } else { upper / r }, Relaxed);
            }
        }
    }
}

/// `calculate_totalreserve_pages()`: per zone, the largest lowmem reserve plus the high
/// watermark, capped at the zone's managed pages.
pub fn totalreserve_pages(nodes: &[PglistData]) -> u64 {
    nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .map(|z| {
            let max = z
                .lowmem_reserve
                .iter()
                .map(|r| r.load(Relaxed))
                .max()
                .unwrap_or(0)
                + z.wmark(Wmark::High);
            max.min(z.managed())
        })
        .sum()
}

/// `LRU_INACTIVE_ANON` … `LRU_UNEVICTABLE`, also the indices of their node counters.
pub const LRU_INACTIVE_ANON: usize = 0;
/// `LRU_ACTIVE_ANON`.
pub const LRU_ACTIVE_ANON: usize = 1;
/// `LRU_INACTIVE_FILE`.
pub const LRU_INACTIVE_FILE: usize = 2;
/// `LRU_ACTIVE_FILE`.
pub const LRU_ACTIVE_FILE: usize = 3;
/// `LRU_UNEVICTABLE`.
pub const LRU_UNEVICTABLE: usize = 4;
/// `NR_LRU_LISTS`.
pub const NR_LRU_LISTS: usize = 5;
/// `struct lruvec` of a node.
#[derive(Default)]
pub struct Lruvec {
    /// The lists, by `LRU_*` index; the head is the young end.
    pub lists: [PageList; NR_LRU_LISTS],
    /// Pages on each list.
    pub nr: [u64; NR_LRU_LISTS],
}

impl crate::Kernel {
    /// `folio_unqueue_deferred_split`: take the large folio `folio` off its node's deferred
    /// split queue if it is on it, and clear `PG_partially_mapped` (when it is split, and
    /// when its last reference goes).
    pub(crate) fn folio_unqueue_deferred_split(&self, folio: &crate::mm::page::Page) {
        if folio.folio_order() < 2 {
            return;
        }
        let third = folio.folio_page(2);
        if !third.test(crate::mm::page::PG_ON_DEFERRED) && !folio.folio_test_partially_mapped() {
            return;
        }
        let mut q = self.nodes[folio.nid()].deferred_split.lock();
        if folio.folio_test_partially_mapped() {
            folio.set_partially_mapped(false);
            self.mthp_stats.add(
                folio.folio_order(),
                crate::mm::vmstat::MTHP_STAT_NR_ANON_PARTIALLY_MAPPED,
                -1,
            );
        }
        if third.test(crate::mm::page::PG_ON_DEFERRED) {
            third.clear(crate::mm::page::PG_ON_DEFERRED);
            q.queue.remove(&self.mem_map, self.page_to_pfn(third));
            q.len -= 1;
        }
    }
}
