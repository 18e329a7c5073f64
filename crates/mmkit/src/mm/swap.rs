//! The LRU lists (`mm/swap.c`, `include/linux/mm_inline.h`, `include/linux/mmzone.h`'s
//! `lruvec`): per node, inactive/active × anon/file plus unevictable, threaded through
//! `page->lru`; `folio_add_lru` with a per-CPU batch of `LRU_BATCH` (31) pages that holds a
//! reference on each until it is drained under the node's `lru_lock`; `folio_mark_accessed`'s
//! PG_referenced → PG_active promotion; `lru_add_drain(_all)`; and removal when the last
//! reference to a page goes (`__page_cache_release`).
//!
//! A page is "file" for the LRU when it is not swap-backed (`page_is_file_lru`). The lists'
//! sizes are the node counters `nr_inactive_anon` … `nr_unevictable`.

use crate::cpu::CpuGuard;
use crate::mm::page::{Page, PageFlags};
use crate::mm::vmstat::{index_of, VM_EVENT_NAMES};
use crate::Kernel;
use core::sync::atomic::Ordering::Relaxed;

pub use crate::mm::mmzone::{
    Lruvec, LRU_ACTIVE_ANON, LRU_ACTIVE_FILE, LRU_INACTIVE_ANON, LRU_INACTIVE_FILE,
    LRU_UNEVICTABLE, NR_LRU_LISTS,
};
pub use crate::mm::pagevec::{FolioBatch, LRU_BATCH};

/// `PGLAZYFREE`: pages `MADV_FREE` marked lazily freed.
pub const PGLAZYFREE: usize = index_of(VM_EVENT_NAMES, "pglazyfree");
/// `PGLAZYFREED`: lazily freed pages reclaim dropped.
pub const PGLAZYFREED: usize = index_of(VM_EVENT_NAMES, "pglazyfreed");

/// `page_is_file_lru`.
#[inline]
pub fn page_is_file_lru(page: &Page) -> bool {
    !page.test(PageFlags::SWAPBACKED)
}

/// `folio_lru_list`: the list a page belongs on.
#[inline]
pub fn page_lru(page: &Page) -> usize {
    if page.test(PageFlags::UNEVICTABLE) {
        return LRU_UNEVICTABLE;
    }
    let base = if page_is_file_lru(page) {
        LRU_INACTIVE_FILE
    } else {
        LRU_INACTIVE_ANON
    };
    base + page.test(PageFlags::ACTIVE) as usize
}

impl Kernel {
    /// `lruvec_add_folio` with the node's `lru_lock` held: onto the head of its list.
    pub(crate) fn lru_add_locked(&self, lru: &mut Lruvec, page: &Page) {
        let pfn = self.page_to_pfn(page);
        let l = page_lru(page);
        lru.lists[l].push_front(&self.mem_map, pfn);
        let nr = page.folio_nr_pages();
        lru.nr[l] += nr;
        self.mod_lru_size_locked(page, l, nr as i64);
        page.set(PageFlags::LRU);
    }

    /// `lruvec_del_folio` with the lock held.
    pub(crate) fn lru_del_locked(&self, lru: &mut Lruvec, page: &Page) {
        let pfn = self.page_to_pfn(page);
        let l = page_lru(page);
        lru.lists[l].remove(&self.mem_map, pfn);
        let nr = page.folio_nr_pages();
        lru.nr[l] -= nr;
        self.mod_lru_size_locked(page, l, -(nr as i64));
        page.clear(PageFlags::LRU);
    }

    /// `update_lru_size`: the node's `nr_inactive_anon`.. and the page's zone's
    /// `nr_zone_inactive_anon`.. counters change only under the node's `lru_lock`, which the
    /// caller holds, so a plain load and store do.
    #[inline]
    fn mod_lru_size_locked(&self, page: &Page, l: usize, delta: i64) {
        let node = &self.nodes[page.nid()];
        let s = &node.vm_stat[l];
        s.store(s.load(Relaxed) + delta, Relaxed);
        let z = &node.zone(page.zonenum()).vm_stat[crate::mm::mmzone::NR_ZONE_LRU_BASE + l];
        z.store(z.load(Relaxed) + delta, Relaxed);
    }

    /// `folio_add_lru`: queue a new page for its LRU list on this CPU's batch (taking a
    /// reference the drain drops); a full batch is drained.
    pub fn lru_cache_add(&self, cpu: &CpuGuard<'_>, page: &Page) {
        page.get();
        let full = cpu.state().lru_add.lock().add(self.page_to_pfn(page)) == 0;
        // folio_batch_add_and_move: a large folio is moved onto its list at once.
        if full || page.folio_test_large() {
            self.lru_add_drain(cpu);
        }
    }

    /// Drain one CPU's add batch onto the LRU lists.
    fn drain_batch(&self, cpu: &CpuGuard<'_>, batch: FolioBatch) {
        let pfns = batch.pfns();
        // One lock round per node for the whole batch (folio_batch_move_lru).
        let mut i = 0;
        while i < pfns.len() {
            let nid = self.mem_map.page(pfns[i]).nid();
            let mut lru = self.nodes[nid].lru.lock();
            while i < pfns.len() && self.mem_map.page(pfns[i]).nid() == nid {
                let page = self.mem_map.page(pfns[i]);
                // A page whose other references went while it sat in the batch is freed by
                // the put below, never listed.
                if page.refcount() > 1 && !page.test(PageFlags::LRU) {
                    self.lru_add_locked(&mut lru, page);
                }
                i += 1;
            }
        }
        for &pfn in pfns {
            self.folio_put(cpu, self.mem_map.page(pfn));
        }
    }

    /// `folios_put_refs` (`release_pages` of an `mmu_gather`'s encoded pages): drop
    /// `refs[i]` references on the folio `folios[i]` (its head) — a batch of PTEs of one
    /// folio gives back all of its references at once —; the folios whose last references
    /// those were come off their LRU lists under one lock round per node and are freed.
    pub(crate) fn folios_put_refs(&self, cpu: &CpuGuard<'_>, folios: &[&Page], refs: &[u32]) {
        debug_assert_eq!(folios.len(), refs.len());
        let mut last: alloc::vec::Vec<&Page> = alloc::vec::Vec::new();
        for (&p, &nr) in folios.iter().zip(refs) {
            let nr = nr.min(i32::MAX as u32) as i32;
            if p.refcount() < nr {
                // A bad put: let __free_pages report it, one reference at a time (the ones
                // that are there go, the first missing one is reported once).
                for _ in 0..nr {
                    let underflow = p.refcount() <= 0;
                    self.folio_put(cpu, p);
                    if underflow {
                        break;
                    }
                }
            } else if p.ref_sub_and_test(nr) {
                last.push(p);
            }
        }
        let mut i = 0;
        while i < last.len() {
            let nid = last[i].nid();
            let mut lru = self.nodes[nid].lru.lock();
            while i < last.len() && last[i].nid() == nid {
                let p = last[i];
                if p.test(PageFlags::LRU) {
                    self.lru_del_locked(&mut lru, p);
                }
                p.clear(PageFlags::ACTIVE | PageFlags::UNEVICTABLE | PageFlags::MLOCKED);
                i += 1;
            }
        }
        for p in last {
            self.free_unref_page(cpu, p);
        }
    }

    /// `folio_put_refs`: drop `nr` references on the folio `page` belongs to at once,
    /// freeing it when they were the last.
    pub(crate) fn folio_put_refs(&self, cpu: &CpuGuard<'_>, page: &Page, nr: u32) {
        self.folios_put_refs(cpu, &[page.compound_head()], &[nr]);
    }

    /// `lru_add_drain`: this CPU's batch onto the lists.
    pub fn lru_add_drain(&self, cpu: &CpuGuard<'_>) {
        let batch = cpu.state().lru_add.lock().take();
        self.drain_batch(cpu, batch);
    }

    /// `lru_add_drain_all`: every CPU's batch (taken remotely under its lock).
    pub fn lru_add_drain_all(&self, cpu: &CpuGuard<'_>) {
        for c in 0..self.nr_cpus() {
            let batch = self.cpus.get(c).lru_add.lock().take();
            self.drain_batch(cpu, batch);
        }
    }

    /// `folio_mark_lazyfree` + `lru_lazyfree`: each page that is anonymous, swap-backed, not
    /// in the swap cache, evictable and on its LRU list moves to the inactive file list,
    /// unreferenced and no longer swap-backed (`pglazyfree`). A page reclaim has isolated
    /// meanwhile is left as it is.
    pub(crate) fn mark_pages_lazyfree(&self, cpu: &CpuGuard<'_>, pages: &[&Page]) {
        let mut moved = 0;
        for &p in pages {
            let candidate = crate::mm::page::page_anon(p)
                && p.test(PageFlags::SWAPBACKED)
                && !p.test(crate::mm::page::PG_SWAPCACHE)
                && !p.test(PageFlags::UNEVICTABLE);
            if !candidate {
                continue;
            }
            let mut lru = self.nodes[p.nid()].lru.lock();
            if !p.test(PageFlags::LRU) {
                continue;
            }
            self.lru_del_locked(&mut lru, p);
            p.clear(PageFlags::ACTIVE | PageFlags::REFERENCED | PageFlags::SWAPBACKED);
            self.lru_add_locked(&mut lru, p);
            moved += 1;
        }
        if moved > 0 {
            cpu.state().vmstat.count(PGLAZYFREE, moved);
        }
    }

    /// `__page_cache_release` on the free path: a page whose last reference goes leaves its
    /// LRU list.
    pub(crate) fn lru_release(&self, page: &Page) {
        if page.test(PageFlags::LRU) {
            let mut lru = self.nodes[page.nid()].lru.lock();
            if page.test(PageFlags::LRU) {
                self.lru_del_locked(&mut lru, page);
            }
        }
        page.clear(PageFlags::ACTIVE | PageFlags::UNEVICTABLE | PageFlags::MLOCKED);
    }

    /// `folio_mark_accessed`: a second access while inactive and referenced promotes the page
    /// to the active list; otherwise it becomes referenced.
    pub fn mark_page_accessed(&self, page: &Page) {
        if page.test(PageFlags::UNEVICTABLE) {
            return;
        }
        if !page.test(PageFlags::ACTIVE) && page.test(PageFlags::REFERENCED) {
            let mut lru = self.nodes[page.nid()].lru.lock();
            if page.test(PageFlags::LRU) && !page.test(PageFlags::ACTIVE) {
                self.lru_del_locked(&mut lru, page);
                page.set(PageFlags::ACTIVE);
                self.lru_add_locked(&mut lru, page);
            }
            page.clear(PageFlags::REFERENCED);
        } else if !page.test(PageFlags::REFERENCED) {
            page.set(PageFlags::REFERENCED);
        }
    }

    /// Pages on node `nid`'s list `l`.
    pub fn lru_size(&self, nid: usize, l: usize) -> u64 {
        self.nodes[nid].lru.lock().nr[l]
    }

    /// The LRU invariants: each list's pages (a large folio counts `folio_nr_pages`) match
    /// its count and counters, and every folio on it is flagged LRU, belongs on that list, is
    /// referenced and is a folio head (never a tail page).
    pub fn check_lru_invariants(&self) -> Result<(), alloc::string::String> {
        for n in &self.nodes {
            let lru = n.lru.lock();
            for l in 0..NR_LRU_LISTS {
                let mut count = 0;
                for pfn in lru.lists[l].iter(&self.mem_map) {
                    let p = self.mem_map.page(pfn);
                    if !p.test(PageFlags::LRU)
                        || page_lru(p) != l
                        || p.refcount() < 1
                        || p.test(PageFlags::TAIL)
                    {
                        return Err(alloc::format!(
                            "node {}: pfn {pfn:#x} on list {l} with flags {:?} refcount {}",
                            n.node_id,
                            p.flags(),
                            p.refcount()
                        ));
                    }
                    count += p.folio_nr_pages();
                }
                let zones: i64 = n
                    .zones
                    .iter()
                    .map(|z| z.stat(crate::mm::mmzone::NR_ZONE_LRU_BASE + l))
                    .sum();
                if count != lru.nr[l]
                    || n.vm_stat[l].load(Relaxed) != count as i64
                    || zones != count as i64
                {
                    return Err(alloc::format!(
                        "node {}: list {l} has {count} pages, counted {} / node {} / zones {zones}",
                        n.node_id,
                        lru.nr[l],
                        n.vm_stat[l].load(Relaxed)
                    ));
                }
            }
        }
        Ok(())
    }
}
