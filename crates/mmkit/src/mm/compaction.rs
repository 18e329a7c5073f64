//! Direct compaction (`mm/compaction.c`, `mm/migrate.c`): a migrate scanner walks a zone's
//! pageblocks upward isolating movable LRU folios, a free scanner walks down from the end
//! isolating free buddy blocks, and each isolated folio is moved to a free block of its
//! order until the scanners meet or a free block of the wanted order exists (`compact_zone`,
//! `isolate_migratepages_block`, `isolate_freepages_block`, `compaction_alloc`,
//! `compaction_free`, `release_free_list`, `migrate_pages` → `migrate_pages_batch`).
//! Counted in `compact_stall`/`compact_success`/`compact_fail`, `compact_migrate_scanned`,
//! `compact_free_scanned`, `compact_isolated` (pages), `pgmigrate_success`/`pgmigrate_fail`
//! (pages) and `thp_migration_success`/`thp_migration_fail`/`thp_migration_split` (PMD-sized
//! folios).
//!
//! Large folios, as Linux 6.10+ ("enable compaction for high-order folios"): the migrate
//! scanner passes over a folio whose order is at least the order compaction works for or at
//! least `pageblock_order` (`skip_isolation_on_order`: moving it cannot make the block
//! wanted, and compaction never builds blocks above a pageblock), so a PMD-sized THP (order
//! 9 = `pageblock_order` on x86-64) is never moved by compaction, whatever the order asked
//! for — only anonymous mTHP folios (16 KiB … 1 MiB) are. A folio with references beyond
//! its mappings (pinned, held by the deferred split shrinker or a split) is not isolated.
//! The free scanner keeps the free blocks it takes whole, one list per order
//! (`cc->freepages[order]`), and `compaction_alloc` hands out a block of the folio's order,
//! splitting a larger one. `migrate_pages_batch`'s rules for large folios: a folio on the
//! deferred split queue and partially mapped is split first (its mapped pages then move as
//! 4 KiB pages in a second, single pass, as Linux's `split_folios`); a large folio for which
//! no free block of its order can be had is split the same way (`migrate_pages_batch` splits
//! on `-ENOMEM` for every reason but `MR_NUMA_MISPLACED`, compaction included) and otherwise
//! stops the round; a split of a PMD-sized folio counts `thp_migration_split` (and, as
//! Linux's statistics do, `thp_migration_fail`).
//!
//! Moving a folio (`migrate_folio_unmap` + `migrate_folio_move` + `remove_migration_ptes`),
//! one mechanism for every order: with the folio locked, every PTE mapping any of its pages
//! is write-protected through the reverse map (remembering its permission), the bytes of all
//! `2^order` pages are copied, the folio's state moves to the new frames — flags,
//! `mapping`/`index`, each page's `_mapcount`, `_nr_pages_mapped`, `PG_partially_mapped`
//! and deferred-split-queue membership (the destination requeued, as `migrate_folio_move`
//! does since the fix of the deferred split queue races during migration), the
//! page-cache slot of a file page — and every PTE is pointed at the same page of the new
//! folio with its old permission; the old folio is freed as one block. There are no
//! migration entries: a racing write fault that copies a page away changes the folio's
//! references, and the folio is left where it was (the write-protect is undone). The
//! isolation reference keeps a write fault from reusing the folio in place
//! (`wp_can_reuse_anon_folio` wants no reference but the mappings'), so no write lands in
//! the old frames after the copy. Anonymous and page-cache folios of any order below
//! `pageblock_order` move (a page-cache folio's `i_pages` slots, one per page, are repointed
//! under the file's lock, and only while the folio holds nothing but the cache's, its
//! mappings' and our references); swap-cache, unevictable and unmapped anonymous ones are
//! skipped; a folio mapped by a PMD is never isolated (only order-9 folios are, anonymous
//! or file THPs, and compaction skips them).
//!
//! Not done: `fast_isolate_freepages`/`fast_find_migrateblock`, the pageblock skip hints,
//! `suitable_migration_target`'s migrate-type test, retries of busy folios
//! (`NR_MAX_MIGRATE_PAGES_RETRY`), `/proc/sys/vm/compact_memory` (order -1).

use crate::addr::Pfn;
use crate::arch::x86_64::pgtable::{PgTable, Pte, PteFlags, HPAGE_PMD_ORDER, PTE_PFN_MASK};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mmu_gather::MmuGather;
use crate::mm::mmzone::Zone;
use crate::mm::page::{Page, PageFlags};
use crate::mm::page_alloc::{buddy, NR_PAGE_ORDERS, PAGEBLOCK_ORDER};
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
ev!(THP_MIGRATION_SUCCESS, "thp_migration_success");
ev!(THP_MIGRATION_FAIL, "thp_migration_fail");
ev!(THP_MIGRATION_SPLIT, "thp_migration_split");

/// `COMPACT_CLUSTER_MAX`: pages isolated per round.
const COMPACT_CLUSTER_MAX: u64 = 32;
const PAGEBLOCK: u64 = 1 << PAGEBLOCK_ORDER;

/// The state flags that move with a folio's contents (`folio_migrate_flags`), a page-cache
/// folio's readahead marker among them: left on the old folio it would be freed with
/// `PG_readahead` (= `PG_reclaim`) set, a bad page, and the next window would never start.
const MOVED_FLAGS: PageFlags = PageFlags::DIRTY
    .union(PageFlags::UPTODATE)
    .union(PageFlags::REFERENCED)
    .union(PageFlags::ACTIVE)
    .union(PageFlags::SWAPBACKED)
    .union(PageFlags::WORKINGSET)
    .union(crate::mm::readahead::PG_READAHEAD);

/// `skip_isolation_on_order`: a folio of `order` is not isolated when compacting for
/// `target` — it is at least as large as the block wanted (no free block of that order
/// exists, so none of its own would either), or at least a pageblock.
pub fn skip_isolation_on_order(order: u32, target: u32) -> bool {
    order >= target || order >= PAGEBLOCK_ORDER
}

/// `struct compact_control`: one zone's compaction.
struct CompactControl {
    /// The order compaction works for.
    order: u32,
    /// `cc->freepages[order]`: isolated free blocks, kept whole (refcount 0, no flags).
    freepages: [Vec<Pfn>; NR_PAGE_ORDERS],
    /// Pages on `freepages`.
    nr_freepages: u64,
    /// Isolated pages not yet given a destination.
    nr_migratepages: u64,
    /// Where the migrate scanner resumes.
    migrate_pfn: Pfn,
    /// The start of the pageblock the free scanner scans next.
    free_pfn: Pfn,
    /// One past the zone's last pfn.
    end_pfn: Pfn,
}

impl CompactControl {
    /// `compact_scanners_met`.
    fn scanners_met(&self) -> bool {
        self.free_pfn.0 >> PAGEBLOCK_ORDER <= self.migrate_pfn.0 >> PAGEBLOCK_ORDER
    }
}

/// `struct migrate_pages_stats`.
#[derive(Default)]
struct MigrateStats {
    nr_succeeded: u64,
    nr_failed_pages: u64,
    nr_thp_succeeded: u64,
    nr_thp_failed: u64,
    nr_thp_split: u64,
}

impl Kernel {
    /// Whether `zone` has a free block of at least `order`.
    fn zone_has_order(&self, zone: &Zone, order: u32) -> bool {
        let fa = zone.free_area.lock();
        (order as usize..fa.nr_free.len()).any(|o| fa.nr_free[o] > 0)
    }

    /// `isolate_migratepages_block` over `[lo, hi)`: movable LRU folios, each off its list
    /// with a reference held, until `COMPACT_CLUSTER_MAX` pages are isolated. Returns where
    /// the scan stopped.
    fn isolate_migratepages_block(
        &self,
        cpu: &CpuGuard<'_>,
        cc: &mut CompactControl,
        lo: Pfn,
        hi: Pfn,
        out: &mut Vec<Pfn>,
    ) -> Pfn {
        let (mut scanned, mut isolated) = (0u64, 0u64);
        let mut pfn = lo;
        while pfn < hi {
            let Some(page) = self.pfn_to_page(pfn) else {
                pfn += 1;
                continue;
            };
            // A large folio compaction does not move is passed over whole (the read is
            // racy, as Linux's: a folio split or freed meanwhile is only skipped too far).
            if page.test(PageFlags::HEAD) {
                let order = page.folio_order();
                if skip_isolation_on_order(order, cc.order) {
                    let nr = (1u64 << order.min(PAGEBLOCK_ORDER)).min(hi.0 - pfn.0);
                    scanned += nr;
                    pfn += nr;
                    continue;
                }
            }
            scanned += 1;
            let Some(nr) = self.isolate_folio(cpu, cc, page) else {
                pfn += 1;
                continue;
            };
            out.push(pfn);
            isolated += nr;
            scanned += nr - 1;
            pfn += nr;
            if cc.nr_migratepages >= COMPACT_CLUSTER_MAX {
                break;
            }
        }
        cpu.state().vmstat.count(COMPACT_MIGRATE_SCANNED, scanned);
        cpu.state().vmstat.count(COMPACT_ISOLATED, isolated);
        pfn
    }

    /// One folio of `isolate_migratepages_block`: take `page`'s folio (of which it is the
    /// head or a single page) off its LRU list with a reference, if compaction may move it.
    /// Returns its pages.
    fn isolate_folio(
        &self,
        cpu: &CpuGuard<'_>,
        cc: &mut CompactControl,
        page: &Page,
    ) -> Option<u64> {
        if !page.test(PageFlags::LRU)
            || page.test(PageFlags::UNEVICTABLE)
            || page.test(PageFlags::TAIL)
        {
            return None;
        }
        let large = page.folio_test_large();
        // A folio some PMD maps whole is never isolated (nor, below, one of pageblock
        // order: every PMD-sized folio).
        let movable = page.entire_mapcount() == 0
            && if page_anon(page) {
                !page.test(PG_SWAPCACHE) && page.folio_mapcount() > 0
            } else {
                self.page_is_file(page)
            };
        if !movable {
            return None;
        }
        if !page.try_get() {
            return None;
        }
        // Migration fails for an anonymous folio held by anything but its mappings (a pin,
        // the deferred split shrinker, a split, a fault copying from it): leave it alone.
        if page_anon(page) && page.refcount() - 1 > page.folio_mapcount() {
            self.folio_put(cpu, page);
            return None;
        }
        let mut lru = self.nodes[page.nid()].lru.lock();
        // Under the lock: still listed, still the folio (and order) it was.
        let ok = page.test(PageFlags::LRU)
            && page.folio_test_large() == large
            && !skip_isolation_on_order(page.folio_order(), cc.order);
        if ok {
            self.lru_del_locked(&mut lru, page);
        }
        drop(lru);
        if !ok {
            self.folio_put(cpu, page);
            return None;
        }
        let nr = page.folio_nr_pages();
        cc.nr_migratepages += nr;
        Some(nr)
    }

    /// `isolate_freepages`: scan pageblocks downward from the free scanner's position
    /// (at least one, while the scanners have not met) until as many free pages are held as
    /// isolated pages wait for a destination.
    fn isolate_freepages(&self, cpu: &CpuGuard<'_>, zone: &Zone, cc: &mut CompactControl) {
        let mut scanned = 0;
        loop {
            if cc.free_pfn <= cc.migrate_pfn {
                break;
            }
            let lo = cc.free_pfn.max(cc.migrate_pfn);
            let hi = Pfn((cc.free_pfn.0 + PAGEBLOCK).min(cc.end_pfn.0));
            scanned += self.isolate_freepages_block(zone, cc, lo, hi);
            if cc.free_pfn.0 < PAGEBLOCK {
                cc.free_pfn = Pfn(0);
            } else {
                cc.free_pfn -= PAGEBLOCK;
            }
            if cc.nr_freepages >= cc.nr_migratepages {
                break;
            }
        }
        cpu.state().vmstat.count(COMPACT_FREE_SCANNED, scanned);
    }

    /// `isolate_freepages_block`: take the free buddy blocks of `[lo, hi)` off the free
    /// lists onto `cc->freepages` at their own order. Returns the pages scanned.
    fn isolate_freepages_block(
        &self,
        zone: &Zone,
        cc: &mut CompactControl,
        lo: Pfn,
        hi: Pfn,
    ) -> u64 {
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
            cc.freepages[order as usize].push(pfn);
            cc.nr_freepages += 1 << order;
            scanned += (1 << order) - 1;
            pfn += 1 << order;
        }
        scanned
    }

    /// `compaction_alloc`: a free block of `order` from the isolated ones (the smallest that
    /// will do, its unused halves kept on the lists of their orders), scanning for more
    /// once if there is none; the block comes back as a new folio of one reference.
    fn compaction_alloc<'k>(
        &'k self,
        cpu: &CpuGuard<'_>,
        zone: &Zone,
        cc: &mut CompactControl,
        order: u32,
    ) -> Option<&'k Page> {
        let mut isolated_more = false;
        let (pfn, mut have) = loop {
            let found = (order as usize..NR_PAGE_ORDERS)
                .find_map(|o| cc.freepages[o].pop().map(|p| (p, o as u32)));
            match found {
                Some(f) => break f,
                None if isolated_more => return None,
                None => {
                    self.isolate_freepages(cpu, zone, cc);
                    isolated_more = true;
                }
            }
        };
        while have > order {
            have -= 1;
            cc.freepages[have as usize].push(pfn + (1 << have));
        }
        cc.nr_freepages -= 1 << order;
        cc.nr_migratepages = cc.nr_migratepages.saturating_sub(1 << order);
        // post_alloc_hook + prep_compound_page.
        let page = self.mem_map.page(pfn);
        page.set_private(0);
        page.set_index(0);
        page.set_refcount(1);
        if order > 0 {
            self.prep_compound_page(pfn, order);
        }
        Some(page)
    }

    /// `compaction_free`: a destination the migration did not use goes back on the
    /// isolated lists (it was never seen by anyone else).
    fn compaction_free(&self, cpu: &CpuGuard<'_>, cc: &mut CompactControl, dst: &Page) {
        let order = dst.folio_order();
        let pfn = self.page_to_pfn(dst);
        if dst.put_testzero() && self.free_pages_prepare(cpu, dst, pfn, order) {
            cc.freepages[order as usize].push(pfn);
            cc.nr_freepages += 1 << order;
        }
        cc.nr_migratepages += 1 << order;
    }

    /// `release_free_list`: every isolated free block goes back to the buddy allocator.
    fn release_free_list(&self, cpu: &CpuGuard<'_>, cc: &mut CompactControl) {
        for order in 0..NR_PAGE_ORDERS {
            for pfn in core::mem::take(&mut cc.freepages[order]) {
                let page = self.mem_map.page(pfn);
                page.set_refcount(1);
                self.__free_pages(cpu, page, order as u32);
            }
        }
        cc.nr_freepages = 0;
    }

    /// `folio_putback_lru`: a folio compaction isolated but did not move goes back on its
    /// list (unless its other references went meanwhile) and our reference is dropped.
    fn putback_folio(&self, cpu: &CpuGuard<'_>, folio: &Page) {
        let mut lru = self.nodes[folio.nid()].lru.lock();
        if folio.refcount() > 1 && !folio.test(PageFlags::LRU) {
            self.lru_add_locked(&mut lru, folio);
        }
        drop(lru);
        self.folio_put(cpu, folio);
    }

    /// `try_split_folio` (asynchronous mode): split the isolated large folio `folio`
    /// (ours by one reference) to order 0; its pages that are still mapped, and the head,
    /// go on `list` isolated, one reference each.
    fn try_split_folio(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        list: &mut Vec<Pfn>,
    ) -> Result<(), Errno> {
        if !folio.trylock() {
            return Err(Errno::EAGAIN);
        }
        let r = self.split_folio_to_list(cpu, folio, Some(list));
        folio.unlock();
        if r.is_ok() {
            list.push(self.page_to_pfn(folio));
        }
        r
    }

    /// `migrate_pages` → `migrate_pages_batch` of the isolated folios `list`
    /// (`MR_COMPACTION`): see the module doc. Every folio of `list` is moved, split or put
    /// back. `ENOMEM` when a folio found no destination (the round stops there).
    fn migrate_pages(
        &self,
        cpu: &CpuGuard<'_>,
        zone: &Zone,
        cc: &mut CompactControl,
        list: Vec<Pfn>,
        stats: &mut MigrateStats,
    ) -> Result<(), Errno> {
        let mut split = Vec::new();
        let mut rc = self.migrate_pages_batch(cpu, zone, cc, list, Some(&mut split), stats);
        if rc.is_ok() {
            // The pages of split folios: one more pass, without splitting.
            rc = self.migrate_pages_batch(cpu, zone, cc, split, None, stats);
        } else {
            for pfn in split {
                self.putback_folio(cpu, self.mem_map.page(pfn));
            }
        }
        rc
    }

    /// One pass of `migrate_pages_batch` over `list`; split folios' pages go on `split`
    /// (`None`: the pass over those pages, which splits nothing).
    fn migrate_pages_batch(
        &self,
        cpu: &CpuGuard<'_>,
        zone: &Zone,
        cc: &mut CompactControl,
        list: Vec<Pfn>,
        mut split: Option<&mut Vec<Pfn>>,
        stats: &mut MigrateStats,
    ) -> Result<(), Errno> {
        let mut rc = Ok(());
        for pfn in list {
            let folio = self.mem_map.page(pfn);
            if rc.is_err() {
                self.putback_folio(cpu, folio);
                continue;
            }
            let nr = folio.folio_nr_pages();
            let large = folio.folio_test_large();
            let is_thp = large && folio.folio_order() == HPAGE_PMD_ORDER;
            // The rare folio on the deferred split queue, partially mapped, is split now.
            if nr > 2 && folio.folio_on_deferred_list() && folio.folio_test_partially_mapped() {
                if let Some(l) = split.as_deref_mut() {
                    if self.try_split_folio(cpu, folio, l).is_ok() {
                        stats.nr_thp_failed += is_thp as u64;
                        stats.nr_thp_split += is_thp as u64;
                        continue;
                    }
                }
            }
            // Freed under us: nothing maps it any more, ours is the last reference.
            if folio.refcount() == 1 {
                folio.clear(PageFlags::ACTIVE | PageFlags::UNEVICTABLE);
                self.folio_put(cpu, folio);
                stats.nr_succeeded += nr;
                stats.nr_thp_succeeded += is_thp as u64;
                continue;
            }
            let Some(dst) = self.compaction_alloc(cpu, zone, cc, folio.folio_order()) else {
                // -ENOMEM: a large folio is split for its pages to move one by one;
                // otherwise the round stops.
                stats.nr_thp_failed += is_thp as u64;
                if large {
                    if let Some(l) = split.as_deref_mut() {
                        if self.try_split_folio(cpu, folio, l).is_ok() {
                            stats.nr_thp_split += is_thp as u64;
                            continue;
                        }
                    }
                }
                stats.nr_failed_pages += nr;
                self.putback_folio(cpu, folio);
                rc = Err(Errno::ENOMEM);
                continue;
            };
            if self.migrate_folio(cpu, folio, dst) {
                stats.nr_succeeded += nr;
                stats.nr_thp_succeeded += is_thp as u64;
                // The old folio: our reference is the last; it goes back as one block.
                self.folio_put(cpu, folio);
            } else {
                self.compaction_free(cpu, cc, dst);
                stats.nr_failed_pages += nr;
                stats.nr_thp_failed += is_thp as u64;
                self.putback_folio(cpu, folio);
            }
        }
        rc
    }

    /// `migrate_folio_unmap` + `migrate_folio_move` of the isolated folio `src` (one
    /// reference ours) to the new folio `dst` of the same order: see the module doc. On
    /// success `src` is left holding only our reference (the caller frees it) and `dst` is
    /// on the LRU; on failure nothing has changed but `dst`'s bytes.
    fn migrate_folio(&self, cpu: &CpuGuard<'_>, src: &Page, dst: &Page) -> bool {
        debug_assert_eq!(src.folio_order(), dst.folio_order());
        if !src.trylock() {
            return false;
        }
        let ok = self.move_folio_locked(cpu, src, dst);
        src.unlock();
        ok
    }

    fn move_folio_locked(&self, cpu: &CpuGuard<'_>, src: &Page, dst: &Page) -> bool {
        let spfn = self.page_to_pfn(src);
        let dpfn = self.page_to_pfn(dst);
        let nr = src.folio_nr_pages();
        let large = src.folio_test_large();
        let file = !page_anon(src);
        let inode = if file { self.inode_of_page(src) } else { None };
        if file && inode.is_none() {
            return false;
        }
        if src.entire_mapcount() != 0 {
            return false; // mapped by a PMD: compaction never isolates such a folio
        }
        // Each page's PTE mappings (a PTE holds one reference on the folio), and the page
        // cache's reference per page (`folio_expected_ref_count`).
        let mapcounts: Vec<i32> = (0..nr).map(|i| src.folio_page(i).mapcount()).collect();
        let mapcount: i32 = mapcounts.iter().sum();
        let expected = 1 + mapcount + if file { nr as i32 } else { 0 };
        if src.refcount() != expected {
            return false;
        }
        let queued = src.folio_on_deferred_list();
        let partially = src.folio_test_partially_mapped();
        // The reverse map stays locked for reading from the first write-protect to the last
        // repointed PTE, so no mapping's tables go away in between.
        self.with_rmap_vmas(src, |vmas| {
            // Every PTE of every page write-protected (its permission remembered by address
            // space and address) so no write is lost between the copy and the switch.
            let mut wp: Vec<(*const PgTable, u64, bool)> = Vec::new();
            for (i, _) in mapcounts.iter().enumerate().filter(|(_, &m)| m > 0) {
                self.walk_vmas(vmas, src.folio_page(i as u64), |r, c| {
                    let mut tlb = MmuGather::new(self, cpu, r.pt());
                    let old = c.update(&mut tlb, |p| p.wrprotect());
                    tlb.finish();
                    wp.push((Arc::as_ptr(r.pt()), c.va(), old.writable()));
                    true
                });
            }
            let was_rw = |r: &VmaRef, va: u64| {
                wp.iter()
                    .any(|&(pt, a, rw)| rw && a == va && core::ptr::eq(pt, Arc::as_ptr(r.pt())))
            };
            let restore = || {
                for i in 0..nr {
                    self.walk_vmas(vmas, src.folio_page(i), |r, c| {
                        if was_rw(r, c.va()) {
                            c.set_flags(PteFlags::RW);
                        }
                        true
                    });
                }
            };
            if wp.len() as i32 != mapcount {
                restore();
                return false;
            }
            for i in 0..nr {
                self.copy_highpage(dpfn + i, spfn + i);
            }
            let unchanged = src.refcount() == expected
                && (0..nr).all(|i| src.folio_page(i).mapcount() == mapcounts[i as usize]);
            if !unchanged {
                restore();
                return false;
            }
            // The page-cache slots follow the pages (`__folio_migrate_mapping`: every slot
            // of a large folio, under the xa_lock, only if each still names its page).
            if let Some(inode) = &inode {
                let mut pages = inode.i_pages.lock();
                let index = src.index();
                if (0..nr).any(|i| pages.get(index + i) != Some(spfn + i))
                    || src.refcount() != expected
                {
                    drop(pages);
                    restore();
                    return false;
                }
                for i in 0..nr {
                    pages.insert(index + i, dpfn + i);
                }
            }
            // No turning back: the state moves (__folio_migrate_mapping,
            // folio_migrate_flags; the mapcounts as remove_migration_ptes rebuilds them).
            if queued {
                self.folio_unqueue_deferred_split(src);
            }
            dst.set_mapping(src.mapping());
            dst.set_index(src.index());
            dst.set(src.flags() & MOVED_FLAGS);
            for i in 0..nr {
                dst.folio_page(i).set_mapcount(mapcounts[i as usize]);
            }
            if large {
                dst.add_nr_pages_mapped(src.nr_pages_mapped());
            }
            dst.set_refcount(expected - 1);
            // remove_migration_ptes: each PTE now maps the same page of the copy, with its
            // old permission.
            for i in (0..nr).filter(|&i| mapcounts[i as usize] > 0) {
                let to = dpfn + i;
                self.walk_vmas(vmas, src.folio_page(i), |r, c| {
                    let rw = if was_rw(r, c.va()) {
                        PteFlags::RW.bits()
                    } else {
                        0
                    };
                    let mut tlb = MmuGather::new(self, cpu, r.pt());
                    c.update(&mut tlb, |p| {
                        Pte((p.0 & !PTE_PFN_MASK) | (to.0 << crate::PAGE_SHIFT) | rw)
                    });
                    tlb.finish();
                    true
                });
            }
            for i in 0..nr {
                src.folio_page(i).set_mapcount(0);
            }
            if large {
                src.add_nr_pages_mapped(-src.nr_pages_mapped());
            }
            src.set_mapping(0);
            src.set_index(0);
            src.clear(MOVED_FLAGS);
            src.set_refcount(1);
            // migrate_folio_move: the destination takes the source's place on the deferred split
            // queue.
            if queued {
                self.deferred_split_folio(cpu, dst, partially);
            }
            let mut lru = self.nodes[dst.nid()].lru.lock();
            self.lru_add_locked(&mut lru, dst);
            true
        })
    }

    /// `compact_zone`: migrate movable folios from the bottom of `zone` to free blocks at
    /// its top until a free block of `order` exists or the scanners meet. Returns success.
    pub fn compact_zone(&self, cpu: &CpuGuard<'_>, zone: &Zone, order: u32) -> bool {
        if zone.managed() == 0 {
            return false;
        }
        let end = Pfn(zone.end_pfn());
        let mut cc = CompactControl {
            order,
            freepages: Default::default(),
            nr_freepages: 0,
            nr_migratepages: 0,
            migrate_pfn: Pfn(zone.zone_start_pfn),
            free_pfn: Pfn((end.0 - 1) & !(PAGEBLOCK - 1)),
            end_pfn: end,
        };
        let mut stats = MigrateStats::default();
        let mut last_migrated_pfn: Option<Pfn> = None;
        self.lru_add_drain_all(cpu);
        while cc.migrate_pfn < cc.free_pfn {
            if self.zone_has_order(zone, order) {
                break;
            }
            let block_end = Pfn((cc.migrate_pfn.0 | (PAGEBLOCK - 1)) + 1).min(cc.free_pfn);
            let mut isolated = Vec::new();
            let from = cc.migrate_pfn;
            cc.migrate_pfn =
                self.isolate_migratepages_block(cpu, &mut cc, from, block_end, &mut isolated);
            if !isolated.is_empty() {
                last_migrated_pfn.get_or_insert(Pfn(from.0 & !(PAGEBLOCK - 1)));
                let rc = self.migrate_pages(cpu, zone, &mut cc, isolated, &mut stats);
                cc.nr_migratepages = 0;
                // -ENOMEM before the scanners met: contended (COMPACT_CONTENDED).
                if rc.is_err() || cc.scanners_met() {
                    break;
                }
            }
            // check_drain: once the migrate scanner has left the order-aligned block it
            // migrated from, what was freed there goes back from this CPU's lists so it can
            // merge and the next check sees the block.
            if let Some(last) = last_migrated_pfn {
                if order > 0 && last.0 < cc.migrate_pfn.0 & !((1u64 << order) - 1) {
                    self.drain_local_zone_pages(cpu, zone);
                    last_migrated_pfn = None;
                }
            }
        }
        self.release_free_list(cpu, &mut cc);
        self.drain_all_pages(cpu);
        let v = &cpu.state().vmstat;
        v.count(PGMIGRATE_SUCCESS, stats.nr_succeeded);
        v.count(PGMIGRATE_FAIL, stats.nr_failed_pages);
        v.count(THP_MIGRATION_SUCCESS, stats.nr_thp_succeeded);
        v.count(THP_MIGRATION_FAIL, stats.nr_thp_failed);
        v.count(THP_MIGRATION_SPLIT, stats.nr_thp_split);
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
