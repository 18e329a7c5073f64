//! File THPs: PMD-sized page-cache folios mapped by one PMD entry (Linux 6.x, filesystems
//! with large folios): `filemap_map_pmd` and `finish_fault`'s `do_set_pmd` (`mm/filemap.c`,
//! `mm/memory.c`), `folio_add_file_rmap_pmd` and `folio_remove_rmap_pmd` of a page-cache
//! folio (`mm/rmap.c`), and the file branches of `zap_huge_pmd`, `__split_huge_pmd_locked`,
//! `wp_huge_pmd` and `copy_huge_pmd` (`mm/huge_memory.c`, `mm/memory.c`).
//!
//! The folios come from readahead ([`crate::mm::readahead`]: a fault in a `VM_HUGEPAGE`
//! mapping reads PMD-sized folios). A read fault where the PMD is none, the VMA allows a
//! PMD there (`thp_vma_suitable_order`: the 2 MiB around the address inside the VMA, the
//! file offset aligned like the address; not `VM_NOHUGEPAGE`) and the page cache holds a
//! PMD-sized folio at that offset, wholly inside the file's size, maps the whole folio by one
//! read-only PMD, whatever the anonymous THP policy says (Linux maps a large folio the cache already has; only
//! `vma_thp_disabled` refuses). The PMD holds one reference on the folio, counts in its
//! entire mapcount, in `NR_FILE_PMDMAPPED` (meminfo's `FilePmdMapped`) and in the owner's
//! `MM_FILEPAGES`; the folio's pages count in `NR_FILE_MAPPED` while the PMD or a PTE maps
//! them. No page table is deposited (x86-64 does not need one for file PMDs).
//!
//! A file PMD is never split into PTEs: where Linux's `__split_huge_pmd_locked` meets a
//! page-cache folio it clears the entry (the folio stays in the cache, whole), and the
//! pages fault back in by PTEs when touched. That is what a partial `munmap`, `mprotect` or
//! `madvise`, a write fault (`wp_huge_pmd` on a file VMA: a private mapping then copies the
//! 4 KiB written, a shared one maps it writable by a PTE), and the split of the folio itself
//! (reclaim, `split_folio_to_list`) do here. Fork does not copy file PMDs
//! (`copy_huge_pmd`: "skip if can be re-filled on fault"): the child faults them in.
//!
//! Not done: the write fault of a shared mapping mapping a PMD writable (Linux may, through
//! `finish_fault`), and khugepaged's `collapse_file` (`CONFIG_READ_ONLY_THP_FOR_FS`).

use crate::arch::x86_64::pgtable::{Pte, PteFlags, HPAGE_PMD_NR, HPAGE_PMD_ORDER, HPAGE_PMD_SIZE};
use crate::cpu::CpuGuard;
use crate::mm::filemap::{NR_FILE_MAPPED, NR_FILE_PMDMAPPED};
use crate::mm::huge_memory::{HugeFault, THP_SPLIT_PMD};
use crate::mm::memory::{FaultKind, VmFaultError};
use crate::mm::mm_types::{MmStruct, RssStat, VmArea, VmFlags, MM_FILEPAGES};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{page_anon, Page, PageFlags};
use crate::mm::vmstat::{index_of, VM_EVENT_NAMES};
use crate::Kernel;
use core::sync::atomic::Ordering::Relaxed;

/// `THP_FILE_MAPPED`.
pub const THP_FILE_MAPPED: usize = index_of(VM_EVENT_NAMES, "thp_file_mapped");

impl Kernel {
    /// `do_set_pmd`'s tests of the VMA (`vma_thp_disabled`, `thp_vma_suitable_order`): a
    /// PMD-sized page-cache folio may be mapped by a PMD at `haddr` in `vma`.
    pub(crate) fn file_pmd_possible(vma: &VmArea, haddr: u64) -> bool {
        vma.vm_file.is_some()
            && vma.vm_special.is_none()
            && !vma.vm_flags.intersects(
                VmFlags::VM_NOHUGEPAGE | VmFlags::VM_PFNMAP | VmFlags::VM_IO | VmFlags::VM_MIXEDMAP,
            )
            && Self::thp_vma_suitable(vma, haddr)
    }

    /// A page-cache folio mapped by the huge entry `pmd` (not the huge zero folio, not an
    /// anonymous THP).
    pub(crate) fn file_pmd_folio(&self, pmd: Pte) -> Option<&Page> {
        if !pmd.is_huge() || self.is_huge_zero_pmd(pmd) {
            return None;
        }
        let p = self.pfn_to_page(pmd.pfn())?;
        (p.test(PageFlags::HEAD) && !page_anon(p)).then_some(p)
    }

    /// The PMD level of a read fault in a file mapping whose PMD is none
    /// (`filemap_map_pages`' `filemap_map_pmd` when the folio is cached; `__do_fault` then
    /// `finish_fault`'s `do_set_pmd` when it is read first): the folio at the fault's offset,
    /// if it is PMD-sized and aligned with the entry, is mapped whole by one PMD. Anything
    /// else falls back to the PTE level — at once where the cache holds a smaller folio
    /// there, or nothing and readahead would not read a PMD-sized one (no `VM_HUGEPAGE`).
    pub(crate) fn do_file_huge_read(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        address: u64,
    ) -> HugeFault {
        let haddr = address & !(HPAGE_PMD_SIZE - 1);
        let Some(file) = vma.vm_file.as_ref() else {
            return HugeFault::Fallback;
        };
        let index = vma.linear_page_index(address);
        let cached_pmd_sized = file
            .inode
            .i_pages
            .lock()
            .get(index)
            .map(|pfn| self.mem_map.page(pfn).compound_head().folio_order() == HPAGE_PMD_ORDER);
        match cached_pmd_sized {
            Some(false) => return HugeFault::Fallback,
            None if !vma.vm_flags.contains(VmFlags::VM_HUGEPAGE) => return HugeFault::Fallback,
            _ => {}
        }
        let (page, kind) = match self.file_page(cpu, vma, index) {
            Ok(r) => r,
            Err(e) => return HugeFault::Done(Err(e)),
        };
        let folio = page.compound_head();
        let fallback = if kind == FaultKind::Major {
            HugeFault::FallbackMajor
        } else {
            HugeFault::Fallback
        };
        // finish_fault's needs_fallback: nothing past the end of the file is mapped (a file
        // that shrank leaves the rest of a folio cached there), so a folio that reaches past
        // it is mapped by PTEs up to it.
        let file_end = file.inode.size().div_ceil(crate::PAGE_SIZE);
        if folio.folio_order() != HPAGE_PMD_ORDER
            || folio.index() != vma.linear_page_index(haddr)
            || folio.index() + HPAGE_PMD_NR > file_end
            || !folio.test(PageFlags::UPTODATE)
        {
            self.folio_put(cpu, folio);
            return fallback;
        }
        match self.do_set_pmd(cpu, mm, vma, haddr, folio) {
            Ok(true) => HugeFault::Done(Ok(kind)),
            Ok(false) => {
                // A table or another entry is there: the PTE level maps the page.
                self.folio_put(cpu, folio);
                fallback
            }
            Err(e) => {
                self.folio_put(cpu, folio);
                HugeFault::Done(Err(e))
            }
        }
    }

    /// `do_set_pmd`: map the PMD-sized page-cache folio `folio` (whose reference the caller
    /// holds; the entry keeps it) read-only at `haddr` if the PMD is still none. False if it
    /// is not.
    fn do_set_pmd(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        haddr: u64,
        folio: &Page,
    ) -> Result<bool, VmFaultError> {
        let entry =
            Pte(Pte::new_huge(self.page_to_pfn(folio), vma.vm_page_prot).0 & !PteFlags::RW.bits());
        let Ok(mut g) = self.pmd_lock_alloc(cpu, &mm.pt, haddr) else {
            return Err(VmFaultError::Oom);
        };
        if g.install_huge(entry).is_err() {
            return Ok(false);
        }
        self.folio_add_file_rmap_pmd(cpu, folio);
        mm.add_counter(MM_FILEPAGES, HPAGE_PMD_NR as i64);
        drop(g);
        cpu.state().vmstat.count(THP_FILE_MAPPED, 1);
        Ok(true)
    }

    /// `folio_add_file_rmap_pmd`: a PMD now maps the page-cache folio `folio` whole. The
    /// first one counts it in `NR_FILE_PMDMAPPED`, and its pages no PTE maps in
    /// `NR_FILE_MAPPED`.
    pub(crate) fn folio_add_file_rmap_pmd(&self, cpu: &CpuGuard<'_>, folio: &Page) {
        if folio.add_entire_mapcount(1) == 1 {
            let nr = HPAGE_PMD_NR as i64;
            self.mod_node_page_state(cpu, folio, NR_FILE_PMDMAPPED, nr);
            let newly = nr - i64::from(folio.nr_pages_mapped());
            self.mod_node_page_state(cpu, folio, NR_FILE_MAPPED, newly);
        }
    }

    /// `folio_remove_rmap_pmd` of a page-cache folio: one PMD stopped mapping it. The last
    /// one takes it out of `NR_FILE_PMDMAPPED`, and its pages no PTE maps out of
    /// `NR_FILE_MAPPED`.
    pub(crate) fn folio_remove_file_rmap_pmd(&self, cpu: &CpuGuard<'_>, folio: &Page) {
        if folio.add_entire_mapcount(-1) == 0 {
            let nr = HPAGE_PMD_NR as i64;
            self.mod_node_page_state(cpu, folio, NR_FILE_PMDMAPPED, -nr);
            let unmapped = nr - i64::from(folio.nr_pages_mapped());
            self.mod_node_page_state(cpu, folio, NR_FILE_MAPPED, -unmapped);
        }
    }

    /// What a cleared file PMD `old` leaves behind (`zap_huge_pmd`, and
    /// `__split_huge_pmd_locked`'s file branch): its Dirty and Accessed bits on the folio,
    /// the folio's PMD mapping and the owner's `MM_FILEPAGES`. The entry's reference is the
    /// caller's to drop (after the flush).
    pub(crate) fn file_pmd_cleared(
        &self,
        cpu: &CpuGuard<'_>,
        rss: &RssStat,
        folio: &Page,
        old: Pte,
    ) {
        if old.dirty() {
            self.set_page_dirty(cpu, folio);
        }
        if old.young() {
            folio.set(PageFlags::REFERENCED);
        }
        self.folio_remove_file_rmap_pmd(cpu, folio);
        rss[MM_FILEPAGES].fetch_sub(HPAGE_PMD_NR as i64, Relaxed);
    }

    /// `__split_huge_pmd` of a PMD at `a` in `pt` mapping the page-cache folio `folio`: the
    /// entry is cleared and flushed, not replaced by PTEs (see the module doc). True if such
    /// an entry was there.
    pub(crate) fn split_file_pmd(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &crate::arch::x86_64::pgtable::PgTable,
        rss: &RssStat,
        a: u64,
        folio: &Page,
    ) -> bool {
        let pfn = self.page_to_pfn(folio);
        let mut tlb = MmuGather::new(self, cpu, pt);
        let cleared = match self.pmd_lock(pt, a) {
            Some(mut g) if g.get().is_huge() && g.get().pfn() == pfn => {
                let old = g.clear_huge(&mut tlb);
                // Under the PMD lock, as the rmap update is in Linux: a split of the folio
                // that sees no entry sees no entire mapping either.
                self.file_pmd_cleared(cpu, rss, folio, old);
                true
            }
            _ => false,
        };
        if cleared {
            // The entry's reference goes after the flush.
            tlb.remove_page(self.mem_map.page(pfn));
        }
        tlb.finish();
        if cleared {
            cpu.state().vmstat.count(THP_SPLIT_PMD, 1);
        }
        cleared
    }

    /// The invariants of a file PMD at `haddr` of `v` mapping `folio`: a PMD-sized folio of
    /// the VMA's file at the entry's offset, up to date, never writable, counted in its
    /// entire mapcount and holding a reference beside the cache's.
    pub(crate) fn check_file_pmd(
        &self,
        v: &VmArea,
        haddr: u64,
        pmd: Pte,
        folio: &Page,
    ) -> Result<(), alloc::string::String> {
        let inode_id = v.vm_file.as_ref().map(|f| f.inode.id);
        if folio.folio_order() != HPAGE_PMD_ORDER
            || Some(folio.mapping()) != inode_id
            || folio.index() != v.linear_page_index(haddr)
            || !folio.test(PageFlags::UPTODATE)
            || pmd.writable()
            || folio.entire_mapcount() < 1
            || folio.refcount() < HPAGE_PMD_NR as i32 + folio.entire_mapcount()
        {
            return Err(alloc::format!(
                "file PMD at {haddr:#x}: folio order {} mapping {:#x} (VMA's file {:?}) index \
                 {:#x} (VMA's {:#x}), writable {}, entire mapcount {}, refcount {}",
                folio.folio_order(),
                folio.mapping(),
                inode_id,
                folio.index(),
                v.linear_page_index(haddr),
                pmd.writable(),
                folio.entire_mapcount(),
                folio.refcount()
            ));
        }
        Ok(())
    }
}
