//! The zoned buddy page allocator (`mm/page_alloc.c`): `alloc_pages` →
//! `__alloc_pages` → `get_page_from_freelist` (zonelist walk, `zone_watermark_fast` /
//! `__zone_watermark_ok`, `rmqueue` through the per-CPU lists or the buddy lists) →
//! `__alloc_pages_slowpath`; and `__free_pages` → `free_unref_page` (pcp) or
//! `__free_pages_ok` (buddy). Bad frees are caught by `free_page_is_bad` and reported as
//! `bad_page` does, without touching allocator state; failures print `warn_alloc`'s report.
//!
//! The slow path follows Linux's order: wake kswapd (`wake_all_kswapds`), retry at the min
//! watermark with the reserves the mask allows (`gfp_to_alloc_flags`), `__GFP_MEMALLOC`'s
//! no-watermark attempt, release of the per-CPU lists and the HighAtomic reserve, direct
//! compaction for higher orders (`__alloc_pages_direct_compact`, `mm/compaction.rs`), then
//! direct reclaim (`__alloc_pages_direct_reclaim` → `try_to_free_pages`, `mm/vmscan.rs`)
//! retried while it makes progress up to `MAX_RECLAIM_RETRIES` rounds without any (a
//! simplified `should_reclaim_retry`), and one more compaction. `__GFP_NORETRY` stops after
//! the first round of reclaim and compaction; costly orders are not retried. The allocator
//! never calls the OOM killer itself: a fault that cannot get memory returns the OOM outcome
//! and the task table kills (see `kernel/task.rs`). Not built: watermark boosting,
//! `ALLOC_NOFRAGMENT`, compaction deferral.

pub mod buddy;
pub mod check;
pub mod pcp;

use crate::addr::{Pfn, PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::clear_page::clear_pages;
use crate::arch::x86_64::layout::PAGE_OFFSET;
use crate::cpu::CpuGuard;
use crate::gfp::Gfp;
use crate::mm::mmzone::{Wmark, Zone, ZoneType, NR_FREE_PAGES};
use crate::mm::page::{Page, PageFlags, PAGE_FLAGS_CHECK_AT_FREE, PAGE_FLAGS_CHECK_AT_PREP};
use crate::mm::vmstat::{
    NUMA_FOREIGN, NUMA_HIT, NUMA_LOCAL, NUMA_MISS, NUMA_OTHER, PGALLOC_DMA, PGFREE,
};
use crate::Kernel;
use alloc::format;
use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering::Relaxed;
use pcp::{alloc_batch, order_to_pindex, pcp_allowed_order, pindex_to_order, NR_PCP_LISTS};

/// `MAX_PAGE_ORDER`: the largest block is 2^10 pages (4 MiB).
pub const MAX_PAGE_ORDER: u32 = 10;
/// `NR_PAGE_ORDERS`.
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER as usize + 1;
/// `pageblock_order` (= `HUGETLB_PAGE_ORDER` on x86-64).
pub const PAGEBLOCK_ORDER: u32 = 9;
/// `pageblock_nr_pages`.
pub const PAGEBLOCK_NR_PAGES: u64 = 1 << PAGEBLOCK_ORDER;
/// `PAGE_ALLOC_COSTLY_ORDER`.
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;

/// `enum migratetype` (no CMA).
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MigrateType {
    /// Kernel allocations that cannot move.
    Unmovable = 0,
    /// User pages and page cache: can be migrated.
    Movable = 1,
    /// Slab caches that shrink under pressure.
    Reclaimable = 2,
    /// The reserve for high-order atomic allocations.
    HighAtomic = 3,
    /// Pageblocks being isolated (memory hot-remove, compaction, CMA).
    Isolate = 4,
}

/// `MIGRATE_PCPTYPES`: the types with per-CPU lists.
pub const MIGRATE_PCPTYPES: usize = 3;
/// `MIGRATE_TYPES`.
pub const MIGRATE_TYPES: usize = 5;
/// All migrate types in index order.
pub const MIGRATE_TYPE_LIST: [MigrateType; MIGRATE_TYPES] = [
    MigrateType::Unmovable,
    MigrateType::Movable,
    MigrateType::Reclaimable,
    MigrateType::HighAtomic,
    MigrateType::Isolate,
];

impl MigrateType {
    /// The type with index `i`.
    #[inline]
    pub fn from_index(i: usize) -> Self {
        MIGRATE_TYPE_LIST[i]
    }
    /// `migratetype_names[]`.
    pub fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::HighAtomic => "HighAtomic",
            MigrateType::Isolate => "Isolate",
        }
    }
    /// `migratetype_is_mergeable`.
    #[inline]
    pub fn is_mergeable(self) -> bool {
        (self as usize) < MIGRATE_PCPTYPES
    }
}

pub use self::flag_defs::*;
#[allow(missing_docs)] // the flag names are Linux's own; see the kernel headers named above
mod flag_defs {
    bitflags::bitflags! {
        /// Internal allocation flags (`mm/internal.h`'s `ALLOC_*`); the low two bits pick the
        /// watermark.
        #[derive(Copy, Clone, PartialEq, Eq, Debug)]
        pub struct AllocFlags: u32 {
            const WMARK_LOW = 0x01;
            const WMARK_HIGH = 0x02;
            const NO_WATERMARKS = 0x04;
            const OOM = 0x08;
            const NON_BLOCK = 0x10;
            const MIN_RESERVE = 0x20;
            const CPUSET = 0x40;
            const HIGHATOMIC = 0x200;
            const KSWAPD = 0x800;
        }
    }
}

const ALLOC_RESERVES: AllocFlags = AllocFlags::NON_BLOCK
    .union(AllocFlags::MIN_RESERVE)
    .union(AllocFlags::HIGHATOMIC)
    .union(AllocFlags::OOM);

impl AllocFlags {
    fn wmark(self) -> Wmark {
        match self.bits() & 3 {
            0 => Wmark::Min,
            1 => Wmark::Low,
            _ => Wmark::High,
        }
    }
}

/// The allocator's readings of a GFP mask (`include/linux/gfp.h`).
impl Gfp {
    /// `gfp_zone()`: the highest zone this mask may allocate from, or `None` for the
    /// combinations Linux's `GFP_ZONE_BAD` table rejects (e.g. `__GFP_DMA | __GFP_DMA32`).
    /// x86-64 has no highmem, so `__GFP_HIGHMEM` means NORMAL (MOVABLE with `__GFP_MOVABLE`).
    pub fn zone(self) -> Option<ZoneType> {
        let dma = self.contains(Gfp::__GFP_DMA);
        let dma32 = self.contains(Gfp::__GFP_DMA32);
        let high = self.contains(Gfp::__GFP_HIGHMEM);
        let movable = self.contains(Gfp::__GFP_MOVABLE);
        match (dma, dma32, high) {
            (false, false, false) => Some(ZoneType::Normal),
            (true, false, false) => Some(ZoneType::Dma),
            (false, true, false) => Some(ZoneType::Dma32),
            (false, false, true) if movable => Some(ZoneType::Movable),
            (false, false, true) => Some(ZoneType::Normal),
            _ => None,
        }
    }

    /// `gfp_migratetype()`: the free lists an allocation with this mask prefers.
    pub fn migratetype(self) -> MigrateType {
        let m = self.contains(Gfp::__GFP_MOVABLE);
        let r = self.contains(Gfp::__GFP_RECLAIMABLE);
        match (m, r) {
            (true, false) => MigrateType::Movable,
            (false, true) => MigrateType::Reclaimable,
            // Both set is a caller bug Linux only VM_WARNs about; treat it as unmovable.
            _ => MigrateType::Unmovable,
        }
    }
}

/// `gfp_to_alloc_flags`: what the slow path may dip into.
pub fn gfp_to_alloc_flags(gfp: Gfp, order: u32) -> AllocFlags {
    let mut f = AllocFlags::CPUSET; // WMARK_MIN is 0
    if gfp.contains(Gfp::__GFP_HIGH) {
        f |= AllocFlags::MIN_RESERVE;
    }
    if gfp.contains(Gfp::__GFP_KSWAPD_RECLAIM) {
        f |= AllocFlags::KSWAPD;
    }
    if !gfp.contains(Gfp::__GFP_DIRECT_RECLAIM) && !gfp.contains(Gfp::__GFP_NOMEMALLOC) {
        f |= AllocFlags::NON_BLOCK;
        // Only a high-order request that may dip into the reserves (`__GFP_HIGH`: GFP_ATOMIC)
        // is a "high-order atomic" one; a GFP_NOWAIT or bare zone-modifier request must not
        // turn a pageblock into a HighAtomic reserve (Linux 6.17's 6a204d4b14c9, "only set
        // ALLOC_HIGHATOMIC for __GFP_HIGH allocations").
        if order > 0 && f.contains(AllocFlags::MIN_RESERVE) {
            f |= AllocFlags::HIGHATOMIC;
        }
    }
    f
}

/// `__zone_watermark_ok`: would `zone` stay above `mark` after handing out 2^`order` pages
/// to an allocation whose highest usable zone is `highest`?
pub fn zone_watermark_ok(
    zone: &Zone,
    order: u32,
    mark: u64,
    highest: ZoneType,
    flags: AllocFlags,
    free: i64,
) -> bool {
    let mut min = mark as i64;
    let mut free = free - ((1i64 << order) - 1);
    if !flags.intersects(ALLOC_RESERVES) {
        free -= zone.nr_reserved_highatomic.load(Relaxed) as i64;
    } else {
        if flags.contains(AllocFlags::MIN_RESERVE) {
            min -= min / 2;
            if flags.contains(AllocFlags::NON_BLOCK) {
                min -= min / 4;
            }
        }
        if flags.contains(AllocFlags::OOM) {
            min -= min / 2;
        }
    }
    if free <= min + zone.lowmem_reserve[highest as usize].load(Relaxed) as i64 {
        return false;
    }
    if order == 0 {
        return true;
    }
    // A high-order request also needs a free block big enough, of a usable type.
    let fa = zone.free_area.lock();
    for o in order as usize..NR_PAGE_ORDERS {
        if fa.nr_free[o] == 0 {
            continue;
        }
        if fa.lists[o][..MIGRATE_PCPTYPES]
            .iter()
            .any(|l| !l.is_empty())
        {
            return true;
        }
        if flags.intersects(AllocFlags::HIGHATOMIC | AllocFlags::OOM)
            && !fa.lists[o][MigrateType::HighAtomic as usize].is_empty()
        {
            return true;
        }
    }
    false
}

/// `zone_watermark_fast`: the order-0 check inline, everything else via `__zone_watermark_ok`.
#[inline]
fn zone_watermark_fast(
    zone: &Zone,
    order: u32,
    mark: u64,
    highest: ZoneType,
    flags: AllocFlags,
) -> bool {
    let free = zone.free_pages();
    if order == 0 {
        let reserved = if flags.intersects(ALLOC_RESERVES) {
            0
        } else {
            zone.nr_reserved_highatomic.load(Relaxed) as i64
        };
        if free - reserved > (mark + zone.lowmem_reserve[highest as usize].load(Relaxed)) as i64 {
            return true;
        }
    }
    zone_watermark_ok(zone, order, mark, highest, flags, free)
}

/// `struct alloc_context`.
#[derive(Copy, Clone)]
struct AllocContext {
    nid: usize,
    highest: ZoneType,
    mt: MigrateType,
    thisnode: bool,
}

/// `MAX_RECLAIM_RETRIES`: direct reclaim rounds without progress before giving up.
pub const MAX_RECLAIM_RETRIES: u32 = 16;
impl Kernel {
    /// `alloc_pages(gfp, order)`: 2^`order` contiguous pages from the local node's zonelist.
    /// `None` on failure (with `warn_alloc`'s report in the log unless `__GFP_NOWARN`).
    #[inline]
    pub fn alloc_pages(&self, cpu: &CpuGuard<'_>, gfp: Gfp, order: u32) -> Option<&Page> {
        self.alloc_pages_node(cpu, cpu.node(), gfp, order)
    }

    /// `alloc_page(gfp)`.
    #[inline]
    pub fn alloc_page(&self, cpu: &CpuGuard<'_>, gfp: Gfp) -> Option<&Page> {
        self.alloc_pages(cpu, gfp, 0)
    }

    /// `alloc_pages_node(nid, gfp, order)`: as `alloc_pages` but preferring node `nid`
    /// (only `nid` with `__GFP_THISNODE`).
    pub fn alloc_pages_node(
        &self,
        cpu: &CpuGuard<'_>,
        nid: usize,
        gfp: Gfp,
        order: u32,
    ) -> Option<&Page> {
        if order > MAX_PAGE_ORDER {
            if !gfp.contains(Gfp::__GFP_NOWARN) {
                self.printk(&format!(
                    "WARNING: alloc_pages: order {order} exceeds MAX_PAGE_ORDER {MAX_PAGE_ORDER}"
                ));
            }
            return None;
        }
        let Some(highest) = gfp.zone() else {
            self.printk(&format!(
                "WARNING: alloc_pages: invalid zone modifiers in gfp mode {gfp}"
            ));
            return None;
        };
        if nid >= self.nodes.len() {
            self.printk(&format!("WARNING: alloc_pages_node: no node {nid}"));
            return None;
        }
        let ac = AllocContext {
            nid,
            highest,
            mt: gfp.migratetype(),
            thisnode: gfp.contains(Gfp::__GFP_THISNODE),
        };
        let pfn = match self.get_page_from_freelist(
            cpu,
            gfp,
            order,
            AllocFlags::WMARK_LOW | AllocFlags::CPUSET,
            &ac,
        ) {
            Some(p) => p,
            None => self.alloc_pages_slowpath(cpu, gfp, order, &ac)?,
        };
        let page = self.mem_map.page(pfn);
        self.post_alloc_hook(pfn, page, gfp, order);
        Some(page)
    }

    /// `__get_free_pages`: the direct-map address of a fresh allocation.
    pub fn __get_free_pages(&self, cpu: &CpuGuard<'_>, gfp: Gfp, order: u32) -> Option<VirtAddr> {
        self.alloc_pages(cpu, gfp & !Gfp::__GFP_HIGHMEM, order)
            .map(|p| self.page_address(p))
    }

    /// `get_zeroed_page`.
    pub fn get_zeroed_page(&self, cpu: &CpuGuard<'_>, gfp: Gfp) -> Option<VirtAddr> {
        self.__get_free_pages(cpu, gfp | Gfp::__GFP_ZERO, 0)
    }

    /// `__get_dma_pages`.
    pub fn __get_dma_pages(&self, cpu: &CpuGuard<'_>, gfp: Gfp, order: u32) -> Option<VirtAddr> {
        self.__get_free_pages(cpu, gfp | Gfp::GFP_DMA, order)
    }

    fn zonelist(&self, ac: &AllocContext) -> &[(usize, ZoneType)] {
        let n = &self.nodes[ac.nid];
        if ac.thisnode {
            &n.zonelist_nofallback
        } else {
            &n.zonelist_fallback
        }
    }

    /// `get_page_from_freelist`: the first zone in the zonelist (at or below the highest
    /// allowed zone) that passes its watermark and has the pages.
    #[inline]
    fn get_page_from_freelist(
        &self,
        cpu: &CpuGuard<'_>,
        gfp: Gfp,
        order: u32,
        flags: AllocFlags,
        ac: &AllocContext,
    ) -> Option<Pfn> {
        let zl = self.zonelist(ac);
        let preferred = zl
            .iter()
            .find(|(_, t)| *t <= ac.highest)
            .map(|&(n, t)| (n, t))?;
        for &(nid, zt) in zl {
            if zt > ac.highest {
                continue;
            }
            let zone = self.nodes[nid].zone(zt);
            if !flags.contains(AllocFlags::NO_WATERMARKS) {
                let mark = zone.wmark(flags.wmark());
                if !zone_watermark_fast(zone, order, mark, ac.highest, flags) {
                    continue;
                }
            }
            if let Some(pfn) = self.rmqueue(cpu, zone, order, ac.mt, flags) {
                if order > 0 && flags.contains(AllocFlags::HIGHATOMIC) {
                    buddy::reserve_highatomic_pageblock(&self.mem_map, zone, pfn);
                }
                let st = &cpu.state().vmstat;
                st.count(PGALLOC_DMA + zt as usize, 1 << order);
                self.zone_statistics(cpu, preferred, (nid, zt));
                let _ = gfp;
                return Some(pfn);
            }
        }
        None
    }

    /// `zone_statistics`: numa_hit/miss/foreign and local/other.
    #[inline]
    fn zone_statistics(
        &self,
        cpu: &CpuGuard<'_>,
        preferred: (usize, ZoneType),
        z: (usize, ZoneType),
    ) {
        let st = &cpu.state().vmstat;
        let zi = z.0 * crate::mm::mmzone::MAX_NR_ZONES + z.1 as usize;
        let local = if z.0 == cpu.node() {
            NUMA_LOCAL
        } else {
            NUMA_OTHER
        };
        if z.0 == preferred.0 {
            st.count_numa(zi, NUMA_HIT);
        } else {
            st.count_numa(zi, NUMA_MISS);
            st.count_numa(
                preferred.0 * crate::mm::mmzone::MAX_NR_ZONES + preferred.1 as usize,
                NUMA_FOREIGN,
            );
        }
        st.count_numa(zi, local);
    }

    /// `rmqueue`: small orders through this CPU's pcp list, the rest (or when the pcp lock
    /// is busy being drained) from the buddy lists.
    #[inline]
    fn rmqueue(
        &self,
        cpu: &CpuGuard<'_>,
        zone: &Zone,
        order: u32,
        mt: MigrateType,
        flags: AllocFlags,
    ) -> Option<Pfn> {
        if pcp_allowed_order(order) && (mt as usize) < MIGRATE_PCPTYPES {
            if let Some(p) = self.rmqueue_pcplist(cpu, zone, order, mt, flags) {
                return Some(p);
            }
        }
        let mut fa = zone.free_area.lock();
        buddy::rmqueue_buddy_locked(&self.mem_map, zone, &mut fa, order, mt, flags)
    }

    /// `rmqueue_pcplist`: pop from the pcp list, refilling it with a batch from the buddy
    /// lists (`rmqueue_bulk`) when empty.
    #[inline]
    fn rmqueue_pcplist(
        &self,
        cpu: &CpuGuard<'_>,
        zone: &Zone,
        order: u32,
        mt: MigrateType,
        flags: AllocFlags,
    ) -> Option<Pfn> {
        let mut pcp = zone.pcp.get(cpu.id()).try_lock()?;
        let idx = order_to_pindex(mt, order);
        pcp.free_count >>= 1;
        if pcp.lists[idx].is_empty() {
            pcp.grow_for_refill(zone.free_pages() < zone.wmark(Wmark::High) as i64);
            let batch = alloc_batch(pcp.batch, order);
            let mut fa = zone.free_area.lock();
            let mut got = 0;
            for _ in 0..batch {
                match buddy::rmqueue(&self.mem_map, zone, &mut fa, order, mt) {
                    Some(pfn) => {
                        pcp.lists[idx].push_back(&self.mem_map, pfn);
                        got += 1;
                    }
                    None => break,
                }
            }
            if got == 0 && flags.intersects(AllocFlags::OOM | AllocFlags::NON_BLOCK) {
                // The buddy path would dip into HighAtomic; let it.
                return None;
            }
            pcp.count += got << order;
        }
        let pfn = pcp.lists[idx].pop_front(&self.mem_map)?;
        pcp.count -= 1 << order;
        Some(pfn)
    }

    /// `__alloc_pages_slowpath`: the min watermark and the reserves the GFP mask allows,
    /// then (for blocking allocations) draining the per-CPU lists and the HighAtomic reserve,
    /// direct compaction and direct reclaim (see the module doc). With `__GFP_NORETRY` one
    /// round of reclaim and compaction is all: the allocation then fails (quietly with
    /// `__GFP_NOWARN`) so the caller can fall back, as `kvmalloc` does.
    #[cold]
    fn alloc_pages_slowpath(
        &self,
        cpu: &CpuGuard<'_>,
        gfp: Gfp,
        order: u32,
        ac: &AllocContext,
    ) -> Option<Pfn> {
        let flags = gfp_to_alloc_flags(gfp, order);
        // wake_all_kswapds: the fast path found the zones below their low watermark.
        if gfp.contains(Gfp::__GFP_KSWAPD_RECLAIM) {
            for &(nid, zt) in self.zonelist(ac) {
                if zt <= ac.highest {
                    self.wakeup_kswapd(nid, ac.highest);
                }
            }
        }
        if let Some(p) = self.get_page_from_freelist(cpu, gfp, order, flags, ac) {
            return Some(p);
        }
        if gfp.contains(Gfp::__GFP_MEMALLOC) && !gfp.contains(Gfp::__GFP_NOMEMALLOC) {
            if let Some(p) =
                self.get_page_from_freelist(cpu, gfp, order, flags | AllocFlags::NO_WATERMARKS, ac)
            {
                return Some(p);
            }
        }
        if gfp.allows_blocking() {
            // __alloc_pages_direct_reclaim's "pages may be pinned on the per-cpu lists or in
            // high alloc reserves": release them and retry once.
            for &(nid, zt) in self.zonelist(ac) {
                if zt <= ac.highest {
                    buddy::unreserve_highatomic_pageblock(
                        &self.mem_map,
                        self.nodes[nid].zone(zt),
                        ac.mt,
                        false,
                    );
                }
            }
            self.drain_all_pages(cpu);
            if let Some(p) = self.get_page_from_freelist(cpu, gfp, order, flags, ac) {
                return Some(p);
            }
        }
        // Direct compaction and reclaim, never from inside reclaim (PF_MEMALLOC).
        let may_compact = order > 0 && gfp.contains(Gfp::__GFP_DIRECT_RECLAIM);
        // __alloc_pages_direct_compact before reclaim for higher orders.
        if may_compact && !cpu.state().in_reclaim() {
            cpu.state().set_in_reclaim(true);
            let ok = self.try_to_compact_pages(cpu, ac.nid, ac.highest, order);
            cpu.state().set_in_reclaim(false);
            if ok {
                if let Some(p) = self.get_page_from_freelist(cpu, gfp, order, flags, ac) {
                    return Some(p);
                }
            }
        }
        if gfp.contains(Gfp::__GFP_DIRECT_RECLAIM) && !cpu.state().in_reclaim() {
            let mut no_progress = 0;
            loop {
                cpu.state().set_in_reclaim(true);
                let freed = self.try_to_free_pages(cpu, gfp);
                cpu.state().set_in_reclaim(false);
                if let Some(p) = self.get_page_from_freelist(cpu, gfp, order, flags, ac) {
                    return Some(p);
                }
                // "Do not loop if specifically requested"; costly orders are not retried.
                if gfp.contains(Gfp::__GFP_NORETRY) || order > PAGE_ALLOC_COSTLY_ORDER {
                    break;
                }
                no_progress = if freed == 0 { no_progress + 1 } else { 0 };
                if no_progress >= MAX_RECLAIM_RETRIES {
                    break;
                }
            }
            // Reclaim freed pages; compaction may now assemble the block.
            if may_compact {
                cpu.state().set_in_reclaim(true);
                let ok = self.try_to_compact_pages(cpu, ac.nid, ac.highest, order);
                cpu.state().set_in_reclaim(false);
                if ok {
                    if let Some(p) = self.get_page_from_freelist(cpu, gfp, order, flags, ac) {
                        return Some(p);
                    }
                }
            }
        }
        if gfp.contains(Gfp::__GFP_NOFAIL) {
            // nopage with __GFP_NOFAIL (which overrides __GFP_NORETRY, as in Linux): the
            // allocator does not call the OOM killer here, so the way forward is another CPU
            // freeing memory; keep trying with the min reserve, as Linux's NOFAIL loop does.
            loop {
                self.drain_all_pages(cpu);
                if let Some(p) = self.get_page_from_freelist(
                    cpu,
                    gfp,
                    order,
                    flags | AllocFlags::MIN_RESERVE,
                    ac,
                ) {
                    return Some(p);
                }
                crate::sync::relax();
            }
        }
        if !gfp.contains(Gfp::__GFP_NOWARN) {
            self.warn_alloc(cpu, gfp, order);
        }
        None
    }

    /// Number of bad-page reports so far.
    pub fn bad_page_reports(&self) -> u64 {
        self.bad_pages.load(Relaxed)
    }

    /// `warn_alloc` + `show_free_areas`: Linux's page allocation failure report.
    #[cold]
    fn warn_alloc(&self, cpu: &CpuGuard<'_>, gfp: Gfp, order: u32) {
        self.printk(&format!(
            "swapper/{}: page allocation failure: order:{}, mode:{}, nodemask=(null)",
            cpu.id(),
            order,
            gfp
        ));
        self.printk("Mem-Info:");
        for line in crate::mm::show_mem::show_free_areas(self).lines() {
            self.printk(line);
        }
    }

    /// `post_alloc_hook` + `prep_new_page`: refcount 1, checks, zeroing, compound setup.
    #[inline]
    fn post_alloc_hook(&self, pfn: Pfn, page: &Page, gfp: Gfp, order: u32) {
        page.set_private(0);
        page.set_index(0);
        page.set_refcount(1);
        if gfp.contains(Gfp::__GFP_ZERO) {
            // SAFETY: the 2^order pages at `pfn` are RAM below ram_end (they came off a free
            // list) and were just handed to this caller, so nobody else accesses them.
            unsafe { clear_pages(self.pfn_ptr(pfn), (PAGE_SIZE << order) as usize) };
        }
        if order > 0 && gfp.contains(Gfp::__GFP_COMP) {
            self.prep_compound_page(pfn, order);
        }
    }

    /// `prep_compound_page`: the `2^order` pages at `pfn` (just handed to their one owner)
    /// become one compound block: the head carries `PG_head` and the order, each tail
    /// `PG_tail` and its distance from the head.
    pub(crate) fn prep_compound_page(&self, pfn: Pfn, order: u32) {
        let page = self.mem_map.page(pfn);
        page.set_nonatomic(PageFlags::HEAD);
        page.set_private(order);
        for i in 1..(1u64 << order) {
            let t = self.mem_map.page(pfn + i);
            t.set_nonatomic(PageFlags::TAIL);
            t.set_private(i as u32);
            // prep_compound_head: the first tail's word is the folio's entire mapcount.
            t.set_index(0);
        }
    }

    /// `__free_pages(page, order)`: drop a reference; free the block when it was the last.
    /// A page that is not ours, already free, still mapped or flagged in use is reported
    /// (`BUG: Bad page state`) and left alone.
    pub fn __free_pages(&self, cpu: &CpuGuard<'_>, page: &Page, order: u32) {
        if !self.mem_map.owns(page) {
            self.printk(&format!(
                "BUG: __free_pages: {:p} is not a struct page of this machine",
                page
            ));
            return;
        }
        let pfn = self.mem_map.page_to_pfn(page);
        if order > MAX_PAGE_ORDER || pfn.0 & ((1 << order) - 1) != 0 {
            self.bad_page(
                cpu,
                page,
                pfn,
                "free of a misaligned block or an order above MAX_PAGE_ORDER",
            );
            return;
        }
        if page.refcount() <= 0 {
            self.bad_page(cpu, page, pfn, "VM_BUG_ON_PAGE(page_ref_count(page) == 0)");
            return;
        }
        let head = page.test(PageFlags::HEAD);
        if page.put_testzero() {
            self.free_the_page(cpu, page, pfn, order);
        } else if !head {
            // Someone else holds a reference to the first page of a non-compound block:
            // free the rest now, they free the first page later.
            let mut o = order;
            while o > 0 {
                o -= 1;
                let p = self.mem_map.page(pfn + (1 << o));
                if p.put_testzero() {
                    self.free_the_page(cpu, p, pfn + (1 << o), o);
                }
            }
        }
    }

    /// `free_pages(addr, order)`: free by direct-map address; 0 is a no-op.
    pub fn free_pages(&self, cpu: &CpuGuard<'_>, addr: VirtAddr, order: u32) {
        if addr.0 == 0 {
            return;
        }
        match self.virt_to_page(addr) {
            Some(p) => self.__free_pages(cpu, p, order),
            None => self.printk(&format!(
                "BUG: free_pages: {:#x} is not a direct-map address of RAM",
                addr.0
            )),
        }
    }

    /// `free_page(addr)`.
    pub fn free_page(&self, cpu: &CpuGuard<'_>, addr: VirtAddr) {
        self.free_pages(cpu, addr, 0)
    }

    /// `decay_pcp_high` for this CPU's lists in every zone (the vmstat worker's periodic
    /// step): `high` shrinks by an eighth toward `high_min` and pages above it go back.
    pub fn decay_pcp_high(&self, cpu: &CpuGuard<'_>) {
        for zone in self.nodes.iter().flat_map(|n| n.zones.iter()) {
            let Some(mut pcp) = zone.pcp.get(cpu.id()).try_lock() else {
                continue;
            };
            if pcp.high > pcp.high_min {
                let floor = pcp
                    .count
                    .saturating_sub(pcp.batch << pcp::PCP_BATCH_SCALE_MAX);
                pcp.high = floor.max(pcp.high - (pcp.high >> 3)).max(pcp.high_min);
            }
            if pcp.count > pcp.high {
                let todo = (pcp.count - pcp.high).min(pcp.batch << pcp::PCP_BATCH_SCALE_MAX);
                self.free_pcppages_bulk(zone, &mut pcp, todo, 0);
            }
        }
    }

    /// Free a folio whose last reference the caller already dropped (and which is off the
    /// LRU): `free_unref_folios`' per-folio step, at the folio's order.
    pub(crate) fn free_unref_page(&self, cpu: &CpuGuard<'_>, page: &Page) {
        let pfn = self.mem_map.page_to_pfn(page);
        self.free_the_page(cpu, page, pfn, page.folio_order());
    }

    /// `folio_put` / `put_page`: drop a reference on the folio `page` belongs to, freeing
    /// the whole folio (at its order) when it was the last.
    pub fn folio_put(&self, cpu: &CpuGuard<'_>, page: &Page) {
        let head = page.compound_head();
        self.__free_pages(cpu, head, head.folio_order());
    }

    fn free_the_page(&self, cpu: &CpuGuard<'_>, page: &Page, pfn: Pfn, order: u32) {
        if page.test(PageFlags::HEAD)
            && page.private() == order
            && order >= 2
            && page.mapping() & crate::mm::page::PAGE_MAPPING_ANON != 0
        {
            // __folio_put of a large anonymous folio: off the deferred split queue, out of
            // its size's nr_anon.
            self.folio_unqueue_deferred_split(page);
            self.mthp_stats
                .add(order, crate::mm::vmstat::MTHP_STAT_NR_ANON, -1);
        }
        if page
            .flags()
            .intersects(PageFlags::LRU | PageFlags::ACTIVE | PageFlags::UNEVICTABLE)
        {
            self.lru_release(page);
        }
        if !self.free_pages_prepare(cpu, page, pfn, order) {
            return;
        }
        cpu.state().vmstat.count(PGFREE, 1 << order);
        let zone = self.page_zone(page);
        let mt = zone.pageblock_migratetype(pfn);
        if pcp_allowed_order(order) && mt != MigrateType::Isolate {
            let mt = if mt.is_mergeable() {
                mt
            } else {
                MigrateType::Movable
            };
            if let Some(mut pcp) = zone.pcp.get(cpu.id()).try_lock() {
                let idx = order_to_pindex(mt, order);
                page.set_index(mt as u64);
                pcp.lists[idx].push_front(&self.mem_map, pfn);
                pcp.count += 1 << order;
                pcp.free_count = pcp.free_count.saturating_add(1 << order);
                if pcp.count >= pcp.high {
                    let below = zone.free_pages() < zone.wmark(Wmark::High) as i64;
                    let high = pcp.nr_pcp_high(below);
                    if pcp.count >= high {
                        let n = pcp.nr_pcp_free(high);
                        self.free_pcppages_bulk(zone, &mut pcp, n, idx);
                    }
                }
                return;
            }
        }
        let mut fa = zone.free_area.lock();
        buddy::free_one_page(&self.mem_map, zone, &mut fa, pfn, order, mt, false);
    }

    /// `free_pages_prepare` + `free_page_is_bad`: true when the block may be freed.
    #[inline]
    pub(crate) fn free_pages_prepare(
        &self,
        cpu: &CpuGuard<'_>,
        page: &Page,
        pfn: Pfn,
        order: u32,
    ) -> bool {
        let compound = page.test(PageFlags::HEAD);
        if compound {
            if page.private() != order {
                self.bad_page(cpu, page, pfn, "compound page freed with the wrong order");
                return false;
            }
            let mut ok = true;
            for i in 1..(1u64 << order) {
                let t = self.mem_map.page(pfn + i);
                if !t.test(PageFlags::TAIL) || t.private() != i as u32 {
                    self.bad_page(cpu, t, pfn + i, "corrupted compound tail page");
                    ok = false;
                } else if t.mapcount() != 0 || (i == 1 && t.index() != 0) {
                    self.bad_page(cpu, t, pfn + i, "nonzero mapcount in a compound page");
                    ok = false;
                } else if i == 1 && t.mapping() != 0 {
                    self.bad_page(cpu, t, pfn + i, "nonzero nr_pages_mapped");
                    ok = false;
                }
                t.set_index(0);
                t.set_mapping(0);
                t.clear_nonatomic(PageFlags::TAIL);
                t.set_private(0);
            }
            page.clear_nonatomic(PageFlags::HEAD);
            page.set_private(0);
            if !ok {
                return false;
            }
        }
        if page.mapcount() != 0 {
            self.bad_page(cpu, page, pfn, "nonzero mapcount");
            return false;
        }
        // An anonymous page's mapping (the anon bit) is cleared at free, as Linux clears
        // PageMappingFlags; any other mapping is a page still in a file's cache.
        if page.mapping() & crate::mm::page::PAGE_MAPPING_ANON != 0 {
            page.set_mapping(0);
        }
        if page.mapping() != 0 {
            self.bad_page(cpu, page, pfn, "non-NULL mapping");
            return false;
        }
        if page
            .flags()
            .intersects(PAGE_FLAGS_CHECK_AT_FREE | PageFlags::TAIL)
        {
            self.bad_page(cpu, page, pfn, "PAGE_FLAGS_CHECK_AT_FREE flag(s) set");
            return false;
        }
        // Every flag goes, on every page of the block, so that nothing the pages were
        // (swap-backed anonymous memory, say) is seen by their next user.
        page.reset_flags(page.flags() & !PAGE_FLAGS_CHECK_AT_PREP);
        for i in 1..(1u64 << order) {
            let t = self.mem_map.page(pfn + i);
            t.reset_flags(t.flags() & !PAGE_FLAGS_CHECK_AT_PREP);
        }
        page.set_private(0);
        true
    }

    /// `free_pcppages_bulk`: return `count` pages from the pcp lists to the buddy lists,
    /// round-robin over the lists starting at `pindex`, oldest pages first.
    pub(crate) fn free_pcppages_bulk(
        &self,
        zone: &Zone,
        pcp: &mut pcp::PerCpuPages,
        count: u32,
        mut pindex: usize,
    ) {
        let mut left = count.min(pcp.count) as i64;
        if left == 0 {
            return;
        }
        let mut fa = zone.free_area.lock();
        while left > 0 && pcp.count > 0 {
            // Find the next non-empty list.
            let mut tries = 0;
            while pcp.lists[pindex].is_empty() {
                pindex = (pindex + 1) % NR_PCP_LISTS;
                tries += 1;
                if tries > NR_PCP_LISTS {
                    return;
                }
            }
            let order = pindex_to_order(pindex);
            let Some(pfn) = pcp.lists[pindex].pop_back(&self.mem_map) else {
                continue;
            };
            pcp.count -= 1 << order;
            left -= 1 << order;
            let mt = zone.pageblock_migratetype(pfn);
            buddy::free_one_page(&self.mem_map, zone, &mut fa, pfn, order, mt, false);
            pindex = (pindex + 1) % NR_PCP_LISTS;
        }
    }

    /// `drain_pages_zone`: everything on `cpu`'s pcp lists of `zone` back to the buddy lists.
    fn drain_pages_zone(&self, cpu_id: usize, zone: &Zone) {
        let mut pcp = zone.pcp.get(cpu_id).lock();
        let n = pcp.count;
        self.free_pcppages_bulk(zone, &mut pcp, n, 0);
    }

    /// `drain_local_pages(zone)`: this CPU's pcp lists of `zone`.
    pub(crate) fn drain_local_zone_pages(&self, cpu: &CpuGuard<'_>, zone: &Zone) {
        self.drain_pages_zone(cpu.id(), zone);
    }

    /// `drain_local_pages`: this CPU's pcp lists, every zone.
    pub fn drain_local_pages(&self, cpu: &CpuGuard<'_>) {
        for z in self
            .nodes
            .iter()
            .flat_map(|n| n.zones.iter())
            .filter(|z| z.populated())
        {
            self.drain_pages_zone(cpu.id(), z);
        }
    }

    /// `drain_all_pages(NULL)`: every CPU's pcp lists, drained remotely under their locks.
    pub fn drain_all_pages(&self, _cpu: &CpuGuard<'_>) {
        for c in 0..self.nr_cpus() {
            for z in self
                .nodes
                .iter()
                .flat_map(|n| n.zones.iter())
                .filter(|z| z.populated())
            {
                self.drain_pages_zone(c, z);
            }
        }
    }

    /// `bad_page`: Linux's report, then leave the page alone (it is leaked, as Linux does).
    #[cold]
    fn bad_page(&self, cpu: &CpuGuard<'_>, page: &Page, pfn: Pfn, reason: &str) {
        let mut s = String::new();
        let _ = write!(
            s,
            "BUG: Bad page state in process swapper/{}  pfn:{:05x}",
            cpu.id(),
            pfn
        );
        self.printk(&s);
        self.printk(&dump_page(page, pfn));
        self.printk(&format!("page dumped because: {reason}"));
        self.bad_pages.fetch_add(1, Relaxed);
    }

    /// `page_zone()`.
    #[inline]
    pub fn page_zone(&self, page: &Page) -> &Zone {
        self.nodes[page.nid()].zone(page.zonenum())
    }

    /// `page_to_pfn()`.
    #[inline]
    pub fn page_to_pfn(&self, page: &Page) -> Pfn {
        self.mem_map.page_to_pfn(page)
    }

    /// `pfn_to_page()`: `None` for a pfn with no `struct page`.
    #[inline]
    pub fn pfn_to_page(&self, pfn: Pfn) -> Option<&Page> {
        self.mem_map.pfn_to_page(pfn)
    }

    /// `page_address()`: the page's address in the direct map (`PAGE_OFFSET + phys`).
    #[inline]
    pub fn page_address(&self, page: &Page) -> VirtAddr {
        VirtAddr(PAGE_OFFSET + self.page_to_pfn(page).phys().0)
    }

    /// `virt_to_page()`: `None` unless `va` is a direct-map address of a page with a
    /// `struct page`.
    pub fn virt_to_page(&self, va: VirtAddr) -> Option<&Page> {
        let pa = va.0.checked_sub(PAGE_OFFSET)?;
        if pa >= self.mem_map.max_pfn() << PAGE_SHIFT {
            return None;
        }
        self.mem_map.pfn_to_page(PhysAddr(pa).pfn_down())
    }

    /// Host pointer to the first byte of frame `pfn` (the simulator's direct map).
    #[inline]
    pub(crate) fn pfn_ptr(&self, pfn: Pfn) -> *mut u8 {
        self.direct_map.ptr(pfn.phys().0)
    }
}

/// `dump_page`: `page:… refcount:… mapcount:… mapping:… index:… pfn:…` and the flags.
pub fn dump_page(page: &Page, pfn: Pfn) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "page: refcount:{} mapcount:{} mapping:{:016x} index:{:#x} pfn:{:#x}\nflags: {:#x}({})",
        page.refcount(),
        page.mapcount(),
        page.mapping(),
        page.index(),
        pfn,
        page.flags().bits(),
        flag_names(page.flags())
    );
    s
}

/// `%pGp`: flag names joined by `|`.
pub fn flag_names(f: PageFlags) -> String {
    let mut s = String::new();
    for (name, flag) in f.iter_names() {
        let _ = flag;
        if !s.is_empty() {
            s.push('|');
        }
        s.push_str(&name.to_ascii_lowercase());
    }
    s
}

/// Free pages of `zone` counted by the allocator (`NR_FREE_PAGES`).
pub fn zone_free(zone: &Zone) -> i64 {
    zone.stat(NR_FREE_PAGES)
}
