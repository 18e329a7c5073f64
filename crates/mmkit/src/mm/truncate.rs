//! Shrinking a file's page cache to its new size (`mm/truncate.c`: `truncate_pagecache`,
//! `truncate_inode_pages_range`, `truncate_inode_partial_folio`; `mm/memory.c`:
//! `unmap_mapping_pages`).
//!
//! A file that shrank must not show its old bytes past the new end: not through a mapping
//! (a fault there is `SIGBUS`), not through `read`, and not when it grows again (the bytes
//! it grows by read as zeroes). `truncate_pagecache` does it in Linux's order:
//!
//! 1. `unmap_mapping_pages` from the first page wholly past the end: every VMA on the file's
//!    `i_mmap` loses its entries there — file pages, the private copies COW made of them
//!    (`even_cows`), PMD mappings of file THPs the range cuts (cleared, as a split clears
//!    them) — under the `i_mmap` lock held for reading, each address space through its own
//!    gather and flush, as a zap of that range by its owner would;
//! 2. `truncate_inode_pages_range`: the folio holding the new end keeps its bytes before it
//!    and has the rest zeroed (`folio_zero_range`); a large one is then split
//!    (`split_folio`) so the pages past the end can go. Every folio wholly past the end
//!    leaves the cache, dirty or not (its data is discarded, as truncation does), whoever
//!    else still holds a reference: it is freed when the last goes. Each is locked while it
//!    goes (reclaim, compaction and splits hold the folio lock while they work on a cached
//!    folio) and checked to still belong to the file;
//! 3. `unmap_mapping_pages` again, for private copies a fault made meanwhile.
//!
//! Where Linux removes a large folio it cannot split (and which is clean) whole, after
//! unmapping it, this keeps it: its part past the end is zeroed already, so it reads as the
//! zeroes the file would grow by, and faults past the end are refused by the size check.

use crate::addr::{PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::fs::inode::Inode;
use crate::mm::filemap::NR_FILE_DIRTY;
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{Page, PageFlags};
use crate::Kernel;
use alloc::vec::Vec;

impl Kernel {
    /// `truncate_pagecache`: the file behind `inode` is now `newsize` bytes long (its size
    /// was set before the call): unmap and drop what lies past the end (see the module doc).
    pub fn truncate_pagecache(&self, cpu: &CpuGuard<'_>, inode: &Inode, newsize: u64) {
        let holebegin = newsize.div_ceil(PAGE_SIZE);
        self.unmap_mapping_pages(cpu, inode, holebegin, u64::MAX);
        self.truncate_inode_pages_range(cpu, inode, newsize);
        self.unmap_mapping_pages(cpu, inode, holebegin, u64::MAX);
    }

    /// `unmap_mapping_pages(mapping, start, nr, even_cows = true)`: zap every mapping of the
    /// file's pages `[start, end)` in every VMA of the file, private copies included.
    pub(crate) fn unmap_mapping_pages(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        start: u64,
        end: u64,
    ) {
        let vmas = inode.i_mmap.read();
        for r in vmas.iter() {
            let v = r.vma();
            let vma_pages = (v.vm_end - v.vm_start) >> PAGE_SHIFT;
            let lo = start.max(v.vm_pgoff);
            let hi = end.min(v.vm_pgoff.saturating_add(vma_pages));
            if lo >= hi {
                continue;
            }
            let (Some(a), Some(last)) = (r.address(lo), r.address(hi - 1)) else {
                continue;
            };
            let mut tlb = MmuGather::new(self, cpu, r.pt());
            self.unmap_page_range(&mut tlb, r.tables(), a, last + PAGE_SIZE);
            tlb.finish();
        }
    }

    /// `truncate_inode_pages_range(mapping, lstart, -1)`: zero the cached bytes from
    /// `lstart` to the end of the folio holding it (splitting a large one), and remove every
    /// folio wholly past it from the cache.
    pub(crate) fn truncate_inode_pages_range(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        lstart: u64,
    ) {
        // Folios in a CPU's LRU batch hold a reference the split below would count.
        self.lru_add_drain_all(cpu);
        if lstart > 0 {
            if let Some(page) = self.find_get_page(inode, (lstart - 1) >> PAGE_SHIFT) {
                let folio = page.compound_head();
                self.truncate_inode_partial_folio(cpu, inode, folio, lstart);
                self.folio_put(cpu, folio);
            }
        }
        let start = lstart.div_ceil(PAGE_SIZE);
        // The folios to go, each with a reference so it stays a folio while we wait for
        // its lock (taken outside `i_pages`' lock: a split holds the folio lock, then
        // takes `i_pages`').
        let doomed: Vec<&Page> = {
            let pages = inode.i_pages.lock();
            pages
                .iter()
                .filter(|&(index, _)| index >= start)
                .map(|(_, pfn)| self.mem_map.page(pfn))
                .filter(|p| !p.test(PageFlags::TAIL))
                .inspect(|p| p.get())
                .collect()
        };
        for folio in doomed {
            folio.lock();
            if folio.mapping() == inode.id && folio.index() >= start && folio.folio_mapcount() == 0
            {
                if folio.test(PageFlags::DIRTY) {
                    folio.clear(PageFlags::DIRTY);
                    let nr = folio.folio_nr_pages() as i64;
                    self.mod_node_page_state(cpu, folio, NR_FILE_DIRTY, -nr);
                }
                self.filemap_remove_folio(cpu, inode, folio);
            }
            folio.unlock();
            self.folio_put(cpu, folio);
        }
    }

    /// `truncate_inode_partial_folio`: `folio` (cached, referenced by the caller) holds
    /// byte `lstart - 1` and reaches past `lstart`: zero its bytes from `lstart` on, then
    /// split a large one so the pages past the end can leave the cache on their own.
    fn truncate_inode_partial_folio(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        folio: &Page,
        lstart: u64,
    ) {
        let pos = folio.index() << PAGE_SHIFT;
        let end = pos + (folio.folio_nr_pages() << PAGE_SHIFT);
        if end <= lstart {
            return;
        }
        folio.lock();
        if folio.mapping() == inode.id {
            let pfn = self.page_to_pfn(folio);
            let zeros = [0u8; PAGE_SIZE as usize];
            let mut at = lstart;
            while at < end {
                let n = (PAGE_SIZE - (at & (PAGE_SIZE - 1))).min(end - at);
                let pa = (pfn.0 << PAGE_SHIFT) + (at - pos);
                self.phys_write(PhysAddr(pa), &zeros[..n as usize]);
                at += n;
            }
            if folio.folio_test_large() {
                // Pages past the end that stay in an unsplit folio read as zeroes.
                let _ = self.split_folio_to_list(cpu, folio, None);
            }
        }
        folio.unlock();
    }
}
