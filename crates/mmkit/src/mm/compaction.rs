//! Direct compaction (`mm/compaction.c`, `mm/migrate.c`): a migrate scanner walks a zone's
//! pageblocks upward isolating movable LRU pages, a free scanner walks down from the end
//! isolating free buddy pages, and each isolated page is moved to a free one until the
//! scanners meet or a free block of the wanted order exists (`compact_zone`,
//! `isolate_migratepages_block`, `isolate_freepages_block`, `migrate_pages`). Counted in
//! `compact_stall`/`compact_success`/`compact_fail`, `compact_migrate_scanned`,
//! `compact_free_scanned`, `compact_isolated`, `pgmigrate_success`/`pgmigrate_fail`.
//!
//! Moving a page (`migrate_folio` + `remove_migration_ptes`): every PTE mapping it is
//! write-protected through the reverse map first, the bytes are copied, the page's state
//! (flags, mapping, index, counts, page-cache slot) moves to the new frame, and the PTEs are
//! pointed at it with their old permissions. A page whose references change meanwhile (a
//! racing write fault copies it away) is left where it was. Anonymous pages and page-cache
//! pages move; swap-cache, unevictable and unmapped-anonymous pages are skipped.

use crate::addr::Pfn;
use crate::arch::x86_64::pgtable::{PgTable, Pte, PteFlags, PTE_PFN_MASK};
use crate::cpu::CpuGuard;
use crate::mm::mmu_gather::MmuGather;
use crate::mm::mmzone::Zone;
use crate::mm::page::{Page, PageFlags};
use crate::mm::page_alloc::{buddy, PAGEBLOCK_ORDER};
use crate::mm::rmap::page_anon;
use crate::mm::swap_state::PG_SWAPCACHE;
use crate::mm::vma_tree::VmaRef;
use crate::mm::vmstat::{index_of, VM_EVENT_NAMES};
use crate::Kernel;
use alloc::sync::Arc;
use alloc::vec::Vec;

macro_rules! ev {
    ($name:ident, $s:expr) => {
        #[doc = concat!("`", $s, "`.")]
        pub const $name: usize = index_of(VM_EVENT_NAMES, $s);
    };
}
ev!(COMPACT_STALL, "compact_stall");
ev!(COMPACT_SUCCESS, "compact_success");
ev!(COMPACT_FAIL, "compact_fail");
ev!(COMPACT_MIGRATE_SCANNED, "compact_migrate_scanned");
ev!(COMPACT_FREE_SCANNED, "compact_free_scanned");
ev!(COMPACT_ISOLATED, "compact_isolated");
ev!(PGMIGRATE_SUCCESS, "pgmigrate_success");
ev!(PGMIGRATE_FAIL, "pgmigrate_fail");

/// `COMPACT_CLUSTER_MAX`: pages isolated per round.
const COMPACT_CLUSTER_MAX: usize = 32;
const PAGEBLOCK: u64 = 1 << PAGEBLOCK_ORDER;

/// The state flags that move with a page's contents.
const MOVED_FLAGS: PageFlags = PageFlags::DIRTY
    .union(PageFlags::UPTODATE)
    .union(PageFlags::REFERENCED)
    .union(PageFlags::ACTIVE)
    .union(PageFlags::SWAPBACKED)
    .union(PageFlags::WORKINGSET);

impl Kernel {
    /// Whether `zone` has a free block of at least `order`.
    fn zone_has_order(&self, zone: &Zone, order: u32) -> bool {
        let fa = zone.free_area.lock();
        (order as usize..fa.nr_free.len()).any(|o| fa.nr_free[o] > 0)
    }

    /// `isolate_migratepages_block`: movable LRU pages of `[lo, hi)`, each off its list with
    /// a reference held.
    fn isolate_migratepages(&self, cpu: &CpuGuard<'_>, lo: Pfn, hi: Pfn, out: &mut Vec<Pfn>) {
        let mut scanned = 0;
        for pfn in (lo.0..hi.0).map(Pfn) {
            let Some(page) = self.pfn_to_page(pfn) else {
                continue;
            };
            scanned += 1;
            // Large folios are not migrated here (their pages are skipped whole).
            if !page.test(PageFlags::LRU)
                || page.test(PageFlags::UNEVICTABLE)
                || page.test(PageFlags::HEAD)
            {
                continue;
            }
            let movable = if page_anon(page) {
                !page.test(PG_SWAPCACHE) && page.mapcount() > 0
            } else {
                self.page_is_file(page)
            };
            if !movable {
                continue;
            }
            let mut lru = self.nodes[page.nid()].lru.lock();
            if page.test(PageFlags::LRU) && !page.test(PageFlags::HEAD) && page.try_get() {
                self.lru_del_locked(&mut lru, page);
                out.push(pfn);
            }
            if out.len() >= COMPACT_CLUSTER_MAX {
                break;
            }
        }
        cpu.state().vmstat.count(COMPACT_MIGRATE_SCANNED, scanned);
    }

    /// `isolate_freepages_block`: take the free buddy blocks of `[lo, hi)` off the free lists,
    /// as order-0 pages each holding one reference.
    fn isolate_freepages(
        &self,
        cpu: &CpuGuard<'_>,
        zone: &Zone,
        lo: Pfn,
        hi: Pfn,
        out: &mut Vec<Pfn>,
    ) {
        let mut fa = zone.free_area.lock();
        let mut pfn = lo;
        let mut scanned = 0;
        while pfn < hi {
            let Some(page) = self.pfn_to_page(pfn) else {
                pfn += 1;
                continue;
            };
            scanned += 1;
            if !page.test(PageFlags::BUDDY) {
                pfn += 1;
                continue;
            }
            let order = page.buddy_order();
            buddy::del_from_free_list(&self.mem_map, zone, &mut fa, pfn, order);
            for p in (pfn.0..pfn.0 + (1 << order)).map(Pfn) {
                let pg = self.mem_map.page(p);
                pg.set_private(0);
                pg.set_index(0);
                pg.set_refcount(1);
                out.push(p);
            }
            pfn += 1 << order;
        }
        cpu.state().vmstat.count(COMPACT_FREE_SCANNED, scanned);
    }

    /// Move `src` (isolated, one reference ours) to the free page `dst`. On success `src` is
    /// left holding only our reference (the caller frees it) and `dst` is on the LRU. The
    /// reverse map stays locked for reading from the first write-protect to the last
    /// repointed PTE, so no mapping's tables go away in between.
    fn migrate_page(&self, cpu: &CpuGuard<'_>, src: &Page, dst: &Page) -> bool {
        let spfn = self.page_to_pfn(src);
        let dpfn = self.page_to_pfn(dst);
        let file = !page_anon(src);
        let inode = if file { self.inode_of_page(src) } else { None };
        if file && inode.is_none() {
            return false;
        }
        let mapcount = src.mapcount();
        let expected = 1 + mapcount + file as i32;
        if src.refcount() != expected {
            return false;
        }
        self.with_rmap_vmas(src, |vmas| {
            // Write-protect every mapping (remembering its permission by address space and
            // address) so no write is lost between the copy and the switch.
            let mut wp: Vec<(*const PgTable, u64, bool)> = Vec::new();
            self.walk_vmas(vmas, src, |r, c| {
                let mut tlb = MmuGather::new(self, cpu, r.pt());
                let old = c.update(&mut tlb, |p| p.wrprotect());
                tlb.finish();
                wp.push((Arc::as_ptr(r.pt()), c.va(), old.writable()));
                true
            });
            let was_rw = |r: &VmaRef, va: u64| {
                wp.iter()
                    .any(|&(pt, a, rw)| rw && a == va && core::ptr::eq(pt, Arc::as_ptr(r.pt())))
            };
            let restore = || {
                self.walk_vmas(vmas, src, |r, c| {
                    if was_rw(r, c.va()) {
                        c.set_flags(PteFlags::RW);
                    }
                    true
                });
            };
            if wp.len() as i32 != mapcount {
                restore();
                return false;
            }
            self.copy_highpage(dpfn, spfn);
            if src.refcount() != expected || src.mapcount() != mapcount {
                restore();
                return false;
            }
            // The page-cache slot follows the page.
            if let Some(inode) = &inode {
                let mut pages = inode.i_pages.lock();
                if pages.get(src.index()) != Some(spfn) {
                    drop(pages);
                    restore();
                    return false;
                }
                pages.insert(src.index(), dpfn);
            }
            dst.set_mapping(src.mapping());
            dst.set_index(src.index());
            dst.set(src.flags() & MOVED_FLAGS);
            dst.set_mapcount(mapcount);
            dst.set_refcount(expected - 1);
            // remove_migration_ptes: each PTE now maps the copy, with its old permission.
            self.walk_vmas(vmas, src, |r, c| {
                let rw = if was_rw(r, c.va()) {
                    PteFlags::RW.bits()
                } else {
                    0
                };
                let mut tlb = MmuGather::new(self, cpu, r.pt());
                c.update(&mut tlb, |p| {
                    Pte((p.0 & !PTE_PFN_MASK) | (dpfn.0 << crate::PAGE_SHIFT) | rw)
                });
                tlb.finish();
                true
            });
            src.set_mapcount(0);
            src.set_mapping(0);
            src.set_index(0);
            src.clear(MOVED_FLAGS);
            src.set_refcount(1);
            let mut lru = self.nodes[dst.nid()].lru.lock();
            self.lru_add_locked(&mut lru, dst);
            true
        })
    }

    /// `compact_zone`: migrate movable pages from the bottom of `zone` to free pages at its
    /// top until a free block of `order` exists or the scanners meet. Returns success.
    pub fn compact_zone(&self, cpu: &CpuGuard<'_>, zone: &Zone, order: u32) -> bool {
        if zone.managed() == 0 {
            return false;
        }
        let start = Pfn(zone.zone_start_pfn);
        let end = Pfn(zone.end_pfn());
        let mut migrate_pfn = start;
        let mut free_pfn = Pfn((end.0 - 1) & !(PAGEBLOCK - 1));
        let mut free: Vec<Pfn> = Vec::new();
        let (mut moved, mut failed) = (0u64, 0u64);
        self.lru_add_drain_all(cpu);
        while migrate_pfn < free_pfn {
            if self.zone_has_order(zone, order) {
                break;
            }
            let block_end = Pfn((migrate_pfn.0 | (PAGEBLOCK - 1)) + 1).min(free_pfn);
            let mut isolated = Vec::new();
            self.isolate_migratepages(cpu, migrate_pfn, block_end, &mut isolated);
            migrate_pfn = if isolated.len() >= COMPACT_CLUSTER_MAX {
                isolated.last().copied().unwrap_or(migrate_pfn) + 1
            } else {
                block_end
            };
            cpu.state()
                .vmstat
                .count(COMPACT_ISOLATED, isolated.len() as u64);
            while free.len() < isolated.len() && free_pfn > migrate_pfn {
                self.isolate_freepages(
                    cpu,
                    zone,
                    free_pfn,
                    (free_pfn + PAGEBLOCK).min(end),
                    &mut free,
                );
                if free_pfn.0 < PAGEBLOCK {
                    break;
                }
                free_pfn -= PAGEBLOCK;
            }
            for pfn in isolated {
                let src = self.mem_map.page(pfn);
                let ok = match free.pop() {
                    Some(d) => {
                        let dst = self.mem_map.page(d);
                        if self.migrate_page(cpu, src, dst) {
                            true
                        } else {
                            free.push(d);
                            false
                        }
                    }
                    None => false,
                };
                if ok {
                    moved += 1;
                    self.__free_pages(cpu, src, 0);
                } else {
                    failed += 1;
                    let mut lru = self.nodes[src.nid()].lru.lock();
                    if src.refcount() > 1 {
                        self.lru_add_locked(&mut lru, src);
                    }
                    drop(lru);
                    self.__free_pages(cpu, src, 0);
                }
            }
        }
        for d in free {
            self.__free_pages(cpu, self.mem_map.page(d), 0);
        }
        self.drain_all_pages(cpu);
        cpu.state().vmstat.count(PGMIGRATE_SUCCESS, moved);
        cpu.state().vmstat.count(PGMIGRATE_FAIL, failed);
        self.zone_has_order(zone, order)
    }

    /// `try_to_compact_pages`: compact each zone of `nid`'s fallback list up to `highest`
    /// for an allocation of `order`; counts a stall and its outcome.
    pub fn try_to_compact_pages(
        &self,
        cpu: &CpuGuard<'_>,
        nid: usize,
        highest: crate::mm::mmzone::ZoneType,
        order: u32,
    ) -> bool {
        cpu.state().vmstat.count(COMPACT_STALL, 1);
        let zones: Vec<(usize, crate::mm::mmzone::ZoneType)> =
            self.nodes[nid].zonelist_fallback.clone();
        for (n, zt) in zones {
            if zt > highest {
                continue;
            }
            if self.compact_zone(cpu, self.nodes[n].zone(zt), order) {
                cpu.state().vmstat.count(COMPACT_SUCCESS, 1);
                return true;
            }
        }
        cpu.state().vmstat.count(COMPACT_FAIL, 1);
        false
    }
}
