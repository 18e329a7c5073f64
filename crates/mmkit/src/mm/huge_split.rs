//! Splitting large folios (anonymous and page cache) and the deferred split queue (the second half of
//! `mm/huge_memory.c`): `split_folio_to_list` (`__folio_split` → `__split_huge_page`),
//! `deferred_split_folio`, `folio_unqueue_deferred_split` and the `deferred_split` shrinker
//! (`deferred_split_count`/`deferred_split_scan`, run by reclaim's `shrink_slab` step and by
//! `drop_caches`).
//!
//! A large folio may be mapped by PMDs ([`crate::mm::huge_memory`]) and by PTEs — an mTHP
//! folio only by PTEs, a THP by PTEs after `split_huge_pmd`. Each PTE holds one reference
//! on the folio (its head) and counts in the `_mapcount` of the page it maps; the folio
//! keeps `_nr_pages_mapped`. When part of a folio is unmapped while the rest stays mapped
//! (`munmap`, `MADV_DONTNEED`, COW of one page, `mremap` of part of it), the unmap does not
//! split it: `folio_remove_rmap_*` sees the folio partially mapped and queues it on its
//! node's deferred split queue (`thp_deferred_split_page` for PMD-sized folios, the size's
//! `split_deferred`). The shrinker splits queued folios when reclaim runs, so the unmapped
//! pages go back to the allocator; reclaim also splits a large folio before it swaps it out.
//!
//! The split itself (Linux unmaps the folio into migration entries, freezes its refcount,
//! splits and remaps): every PMD mapping is split into PTEs first; then, with the folio
//! locked and the reverse map held for reading, the PTE tables of every VMA that may map
//! the folio are locked together (in pfn order, [`Kernel::lock_pte_tables`]), so no PTE
//! mapping it changes and no mapcount moves. The folio is split only if its references are
//! exactly one per PTE mapping plus the caller's (`folio_ref_freeze`'s expectation): any
//! other (a fork's pin on its way to becoming a child's mapping, a gather's pending put, a
//! pin of a COW fault) makes the split fail with `EAGAIN` (`thp_split_page_failed`, the
//! size's `split_failed`), to be tried again later. Each page then keeps the references of
//! the PTEs that map it, the head keeps the rest; pages nothing maps are freed.
//!
//! A page-cache folio splits the same way with the file's `i_pages` locked as well (the
//! `xa_lock` Linux holds across `__split_huge_page`, so no lookup takes a reference
//! meanwhile): the cache holds one reference per page, so the expected count has `nr` more,
//! and each page keeps the cache's reference besides its PTEs'; the cache's slots already
//! name each page (see `mm/filemap.rs`), so they stay as they are. Reclaim splits a large
//! file folio before it unmaps and frees its pages.
//!
//! Not done: `split_underused_thp` (Linux 6.12 queues every new PMD THP and splits those
//! mostly zero-filled), splitting to an order other than 0, and `THP_SWAP` (reclaim splits
//! before swap-out).

use crate::addr::Pfn;
use crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::huge_memory::THP_SPLIT_PAGE;
use crate::mm::page::{page_anon, Page, PageFlags, PG_ON_DEFERRED};
use crate::mm::vmstat::{
    index_of, MTHP_STAT_NR_ANON, MTHP_STAT_NR_ANON_PARTIALLY_MAPPED, MTHP_STAT_SPLIT,
    MTHP_STAT_SPLIT_DEFERRED, MTHP_STAT_SPLIT_FAILED, VM_EVENT_NAMES,
};
use crate::Kernel;
use alloc::vec::Vec;

/// `THP_SPLIT_PAGE_FAILED`.
pub const THP_SPLIT_PAGE_FAILED: usize = index_of(VM_EVENT_NAMES, "thp_split_page_failed");
/// `THP_DEFERRED_SPLIT_PAGE`.
pub const THP_DEFERRED_SPLIT_PAGE: usize = index_of(VM_EVENT_NAMES, "thp_deferred_split_page");
/// `DEFAULT_SEEKS`: the deferred split shrinker's cost.
const DEFAULT_SEEKS: u64 = 2;
/// `SHRINK_BATCH`.
const SHRINK_BATCH: u64 = 128;

impl Kernel {
    /// `deferred_split_folio`: queue the anonymous large folio `folio` (order 2 or more, not
    /// in the swap cache) on its node's deferred split queue, marking it partially mapped.
    pub(crate) fn deferred_split_folio(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        partially_mapped: bool,
    ) {
        if folio.folio_order() < 2 || !partially_mapped || !page_anon(folio) {
            return;
        }
        if folio.test(crate::mm::swap_state::PG_SWAPCACHE) {
            return;
        }
        let order = folio.folio_order();
        let mut q = self.nodes[folio.nid()].deferred_split.lock();
        if !folio.folio_test_partially_mapped() {
            folio.set_partially_mapped(true);
            if order == HPAGE_PMD_ORDER {
                cpu.state().vmstat.count(THP_DEFERRED_SPLIT_PAGE, 1);
            }
            self.mthp_stats.add(order, MTHP_STAT_SPLIT_DEFERRED, 1);
            self.mthp_stats
                .add(order, MTHP_STAT_NR_ANON_PARTIALLY_MAPPED, 1);
        }
        let third = folio.folio_page(2);
        if !third.test(PG_ON_DEFERRED) {
            third.set(PG_ON_DEFERRED);
            q.queue.push_back(&self.mem_map, self.page_to_pfn(third));
            q.len += 1;
        }
    }

    /// Folios on node `nid`'s deferred split queue (`deferred_split_count`).
    pub fn deferred_split_count(&self, nid: usize) -> u64 {
        self.nodes[nid].deferred_split.lock().len
    }

    /// `deferred_split_scan`: take up to `nr_to_scan` folios off node `nid`'s queue (each
    /// with a reference; one being freed is left to its free), split each partially mapped
    /// one that can be locked and split, and queue the others again. Returns the folios
    /// split.
    pub fn deferred_split_scan(&self, cpu: &CpuGuard<'_>, nid: usize, nr_to_scan: u64) -> u64 {
        let mut taken: Vec<&Page> = Vec::new();
        {
            let mut q = self.nodes[nid].deferred_split.lock();
            let mut cur = q.queue.first();
            while let Some(pfn) = cur {
                if taken.len() as u64 >= nr_to_scan {
                    break;
                }
                let third = self.mem_map.page(pfn);
                cur = {
                    let n = third.next();
                    (n != crate::mm::page::NIL).then_some(Pfn(u64::from(n)))
                };
                let folio = self.mem_map.page(Pfn(pfn.0 - 2));
                // folio_try_get: a folio whose last reference went is being freed, and its
                // free takes it off the queue (it waits for this lock).
                if folio.try_get() {
                    q.queue.remove(&self.mem_map, pfn);
                    q.len -= 1;
                    third.clear(PG_ON_DEFERRED);
                    taken.push(folio);
                }
            }
        }
        let mut split = 0;
        for folio in taken {
            let mut did_split = false;
            if folio.folio_test_partially_mapped() && folio.trylock() {
                did_split = self.split_folio_to_list(cpu, folio, None).is_ok();
                folio.unlock();
            }
            if did_split {
                split += 1;
            } else if folio.folio_test_large() && folio.folio_test_partially_mapped() {
                // Back on the queue for a later scan (unless something queued it meanwhile).
                let mut q = self.nodes[nid].deferred_split.lock();
                let third = folio.folio_page(2);
                if !third.test(PG_ON_DEFERRED) {
                    third.set(PG_ON_DEFERRED);
                    q.queue.push_back(&self.mem_map, self.page_to_pfn(third));
                    q.len += 1;
                }
            }
            self.folio_put(cpu, folio);
        }
        split
    }

    /// `shrink_slab` → `do_shrink_slab` for the deferred split shrinker on node `nid` at
    /// reclaim priority `priority`: scan `(count >> priority) * 4 / seeks` folios plus the
    /// work deferred from earlier calls, in batches of `SHRINK_BATCH`, at most twice the
    /// queue. Returns the folios split.
    pub(crate) fn shrink_deferred_split(
        &self,
        cpu: &CpuGuard<'_>,
        nid: usize,
        priority: u32,
    ) -> u64 {
        let (freeable, deferred) = {
            let mut q = self.nodes[nid].deferred_split.lock();
            (q.len, core::mem::take(&mut q.nr_deferred))
        };
        if freeable == 0 {
            return 0;
        }
        let delta = (freeable >> priority) * 4 / DEFAULT_SEEKS;
        let mut total_scan = (deferred >> priority)
            .saturating_add(delta)
            .min(2 * freeable);
        let next_deferred = deferred.saturating_add(delta);
        let mut scanned = 0;
        let mut split = 0;
        while total_scan >= SHRINK_BATCH || total_scan >= freeable {
            let n = SHRINK_BATCH.min(total_scan);
            split += self.deferred_split_scan(cpu, nid, n);
            total_scan -= n;
            scanned += n;
            if n == 0 {
                break;
            }
        }
        let left = next_deferred.saturating_sub(scanned).min(2 * freeable);
        self.nodes[nid].deferred_split.lock().nr_deferred += left;
        split
    }

    /// `drop_slab`'s turn for this shrinker: scan every node's whole queue until a pass
    /// splits nothing more.
    pub(crate) fn drop_deferred_split(&self, cpu: &CpuGuard<'_>) -> u64 {
        let mut total = 0;
        for nid in 0..self.nodes.len() {
            loop {
                let len = self.deferred_split_count(nid);
                if len == 0 {
                    break;
                }
                let n = self.deferred_split_scan(cpu, nid, len);
                total += n;
                if n == 0 {
                    break;
                }
            }
        }
        total
    }

    /// `split_folio_to_list` (to order 0) of the large anonymous or page-cache folio
    /// `folio`, locked by the caller, who holds one reference: see the module doc. With
    /// `list` (reclaim, which isolated the folio) the mapped pages (every page, for a
    /// page-cache folio) are isolated onto it with a reference each; otherwise they join the
    /// LRU beside the head. `EAGAIN` when a reference other than the mappings', the cache's
    /// and the caller's is held; `EBUSY` for a folio that is neither (or below order 2).
    pub(crate) fn split_folio_to_list(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        list: Option<&mut Vec<Pfn>>,
    ) -> Result<(), Errno> {
        debug_assert!(folio.folio_test_large() && folio.test(PageFlags::LOCKED));
        let order = folio.folio_order();
        let nr = folio.folio_nr_pages();
        let anon = page_anon(folio);
        let inode = if anon {
            None
        } else {
            Some(self.inode_of_page(folio).ok_or(Errno::EBUSY)?)
        };
        if order < 2 {
            return Err(Errno::EBUSY);
        }
        let index = folio.index();
        // unmap_folio's TTU_SPLIT_HUGE_PMD: every PMD mapping becomes PTEs first (again
        // until none is left: a fork may copy a huge PMD into a child VMA we already passed).
        let mut busy = false;
        while folio.entire_mapcount() > 0 {
            let mut split = Vec::new();
            let mut cleared = false;
            self.with_rmap_vmas(folio, |vmas| {
                for r in vmas {
                    let Some(a) = r.address(index) else {
                        continue;
                    };
                    if !anon {
                        // A file THP's PMD is cleared, not split (huge_file).
                        cleared |= self.split_file_pmd(cpu, r.pt(), r.rss(), a, folio);
                        continue;
                    }
                    if let Some((haddr, old, ptl)) = self.split_pmd_of_folio(cpu, r.pt(), a, folio)
                    {
                        drop(ptl);
                        split.push((r.pt().clone(), haddr, old));
                    }
                }
            });
            if split.is_empty() && !cleared {
                // No PMD mapping found where the count said there was one: a zap cleared
                // it since the count was read (or its VMA is leaving the reverse map).
                // Linux's unmap_folio passes over what it cannot find and its refcount
                // freeze fails; so does this split, unless the mapping has gone meanwhile.
                busy = folio.entire_mapcount() > 0;
                break;
            }
            for (pt, haddr, old) in split {
                self.flush_split_pmd(cpu, &pt, haddr, old);
            }
        }
        let mut unmapped: Vec<&Page> = Vec::new();
        let result = if busy {
            Err(Errno::EAGAIN)
        } else {
            self.with_rmap_vmas(folio, |vmas| {
                // The PTE tables where a page of the folio may be mapped: in each VMA on the
                // list, the addresses of the folio's indexes it covers.
                let mut tables = Vec::new();
                for r in vmas {
                    let v = r.vma();
                    let vma_pages = (v.vm_end - v.vm_start) >> crate::PAGE_SHIFT;
                    let lo = index.max(v.vm_pgoff);
                    let hi = (index + nr).min(v.vm_pgoff + vma_pages);
                    if lo >= hi {
                        continue;
                    }
                    let (Some(a), Some(b)) = (r.address(lo), r.address(hi - 1)) else {
                        continue;
                    };
                    self.pte_tables_of(r.pt(), a, b + crate::PAGE_SIZE, &mut tables);
                }
                let ptls = self.lock_pte_tables(&mut tables);
                // The file's xa_lock: no lookup takes a reference on the folio meanwhile.
                let xa = inode.as_ref().map(|i| i.i_pages.lock());
                // folio_ref_freeze's test: one reference per mapping, the cache's (one per
                // page) and the caller's.
                let mapped: i32 = (0..nr).map(|i| folio.folio_page(i).mapcount()).sum();
                let cache = if anon { 0 } else { nr as i32 };
                if folio.entire_mapcount() != 0
                    || folio.refcount() != mapped + cache + 1
                    || (!anon && folio.mapping() != inode.as_ref().map_or(0, |i| i.id))
                {
                    return Err(Errno::EAGAIN);
                }
                self.__split_huge_page(cpu, folio, list, &mut unmapped);
                drop(xa);
                drop(ptls);
                Ok(())
            })
        };
        if order == HPAGE_PMD_ORDER {
            cpu.state().vmstat.count(
                if result.is_ok() {
                    THP_SPLIT_PAGE
                } else {
                    THP_SPLIT_PAGE_FAILED
                },
                1,
            );
        }
        self.mthp_stats.add(
            order,
            if result.is_ok() {
                MTHP_STAT_SPLIT
            } else {
                MTHP_STAT_SPLIT_FAILED
            },
            1,
        );
        // Pages nothing maps go back (free_page_and_swap_cache of the tails).
        for p in unmapped {
            self.__free_pages(cpu, p, 0);
        }
        result
    }

    /// `__split_huge_page` under every PTE lock of the folio's mappings: off the deferred
    /// queue, then each page an order-0 page with the references of its PTEs (the head
    /// keeps every other one), the head's flags, `mapping` and consecutive `index`es, on the
    /// LRU beside the head or isolated onto `list`. Tails nothing maps are pushed on
    /// `unmapped` with one reference, to be freed by the caller.
    fn __split_huge_page<'k>(
        &'k self,
        cpu: &CpuGuard<'_>,
        folio: &'k Page,
        list: Option<&mut Vec<Pfn>>,
        unmapped: &mut Vec<&'k Page>,
    ) {
        let order = folio.folio_order();
        let nr = folio.folio_nr_pages();
        let index = folio.index();
        // A page-cache folio's pages each keep the cache's reference.
        let cache = i32::from(!page_anon(folio));
        self.folio_unqueue_deferred_split(folio);
        if cache == 0 {
            self.mthp_stats.add(order, MTHP_STAT_NR_ANON, -1);
        } else if order == HPAGE_PMD_ORDER {
            // The cache no longer holds a PMD-sized folio here (`FileHugePages`).
            self.mod_node_page_state(cpu, folio, crate::mm::filemap::NR_FILE_THPS, -(nr as i64));
        }
        let nid = folio.nid();
        let mut lru = self.nodes[nid].lru.lock();
        let on_lru = folio.test(PageFlags::LRU);
        if on_lru {
            self.lru_del_locked(&mut lru, folio);
        }
        let keep = folio.flags()
            & (PageFlags::REFERENCED
                | PageFlags::UPTODATE
                | PageFlags::DIRTY
                | PageFlags::ACTIVE
                | PageFlags::WORKINGSET
                | PageFlags::SWAPBACKED
                | PageFlags::UNEVICTABLE
                | PageFlags::MLOCKED);
        let mut moved = 0i32;
        let mut list = list;
        for i in 1..nr {
            let t = folio.folio_page(i);
            // The page's own references first: an MMU may be storing through a PTE that maps
            // it, and whoever looks at the page meanwhile (as a tail, through its head, or
            // as itself) finds it referenced.
            let refs = t.mapcount() + cache;
            t.set_refcount(refs);
            t.set_index(index + i);
            t.set_mapping(folio.mapping());
            // Whatever the tail carried for the folio (PG_partially_mapped, the deferred
            // list mark) goes; the folio's own flags come.
            t.reset_flags(PageFlags::TAIL | keep);
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            t.clear(PageFlags::TAIL);
            t.set_private(0);
            t.set_next(crate::mm::page::NIL);
            t.set_prev(crate::mm::page::NIL);
            moved += refs;
        }
        folio.clear_nonatomic(PageFlags::HEAD);
        folio.set_private(0);
        // The head keeps its own PTEs' references and every other one.
        folio.ref_add(-moved);
        for i in 1..nr {
            let t = self.mem_map.page(self.page_to_pfn(folio) + i);
            if t.refcount() == 0 {
                // Mapped by nothing (unmapped while the folio waited on the deferred queue).
                t.clear(keep);
                t.set_refcount(1);
                unmapped.push(t);
                continue;
            }
            match list.as_deref_mut() {
                Some(l) => {
                    t.get();
                    l.push(self.page_to_pfn(t));
                }
                None => self.lru_add_locked(&mut lru, t),
            }
        }
        if on_lru {
            self.lru_add_locked(&mut lru, folio);
        }
        drop(lru);
        let _ = cpu;
    }

    /// The deferred split queues' invariants: each entry is the third page of a large
    /// anonymous folio marked on the queue and partially mapped, each folio once, and the
    /// lengths agree.
    pub fn check_deferred_split_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        for (nid, node) in self.nodes.iter().enumerate() {
            let q = node.deferred_split.lock();
            let mut n = 0;
            for pfn in q.queue.iter(&self.mem_map) {
                n += 1;
                let folio = self.mem_map.page(Pfn(pfn.0 - 2));
                if !folio.folio_test_large()
                    || folio.folio_order() < 2
                    || !folio.folio_on_deferred_list()
                    || !page_anon(folio)
                    || folio.nid() != nid
                {
                    return Err(format!(
                        "node {nid}: deferred split entry {pfn:?} is not the third page of a queued large anonymous folio"
                    ));
                }
                if !folio.folio_test_partially_mapped() {
                    return Err(format!(
                        "node {nid}: folio {:?} on the deferred split queue is not partially mapped",
                        Pfn(pfn.0 - 2)
                    ));
                }
                if n > q.len {
                    break;
                }
            }
            if n != q.len {
                return Err(format!(
                    "node {nid}: deferred split queue holds {n} folios, its length says {}",
                    q.len
                ));
            }
        }
        Ok(())
    }
}
