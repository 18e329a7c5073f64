//! Page faults and the PTE-level work around them (`mm/memory.c`): `handle_mm_fault` →
//! `handle_pte_fault` → `do_anonymous_page` / `do_read_fault` (with `do_fault_around`) /
//! `do_cow_fault` / `do_shared_fault` / `do_wp_page` (`wp_page_reuse`, `wp_page_copy`,
//! `wp_page_shared`); `zap_page_range` (`zap_pte_range`) and `copy_page_range` for fork.
//!
//! Page accounting follows Linux: an anonymous page has refcount 1 and one mapping per PTE;
//! a page-cache page has one reference for the cache plus one per PTE. The shared zero page
//! (`ZERO_PAGE(0)`, a page of the kernel's bss) is mapped read-only with `_PAGE_SPECIAL`
//! and never counted. `pgfault` counts every fault, `pgmajfault` those that read the file.

use crate::addr::{PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::pgtable::{PgProt, Pte, PteFlags, PAGE_SPECIAL};
use crate::arch::x86_64::tlb::Access;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::{Gfp, GFP_HIGHUSER_MOVABLE};
use crate::mm::filemap::PGMAJFAULT;
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, MM_ANONPAGES, MM_FILEPAGES};
use crate::mm::page::Page;
use crate::mm::rmap::page_anon;
use crate::mm::vmstat::{index_of, VM_EVENT_NAMES};
use crate::{Kernel, Pfn};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// `PGFAULT`.
pub const PGFAULT: usize = index_of(VM_EVENT_NAMES, "pgfault");

/// `fault_around_bytes` default (64 KiB) in pages.
pub const FAULT_AROUND_PAGES: u64 = 16;

/// Why a fault could not be handled (`VM_FAULT_OOM`, `VM_FAULT_SIGBUS`, `VM_FAULT_SIGSEGV`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VmFault {
    /// No memory for the page or a page table.
    Oom,
    /// Access beyond the end of the mapped file, or the file could not be read.
    Sigbus,
    /// The fault cannot be satisfied for this mapping.
    Sigsegv,
}

/// A handled fault: minor (no I/O) or major (read from the backing store).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Satisfied from memory.
    Minor,
    /// Needed a read from the file (or, later, swap).
    Major,
}

impl Kernel {
    /// `my_zero_pfn`: the shared zero page.
    pub fn zero_pfn(&self) -> u64 {
        self.zero_pfn
    }

    /// `vm_normal_page`: the struct page behind a present PTE, or `None` for special
    /// mappings (the zero page).
    pub(crate) fn vm_normal_page(&self, pte: Pte) -> Option<&Page> {
        if pte.flags().contains(PAGE_SPECIAL) {
            return None;
        }
        self.pfn_to_page(Pfn(pte.pfn()))
    }

    /// `handle_mm_fault` for `addr` in `vma` (which the caller found and checked with
    /// `access_error`): install what the access needs, or say why it cannot.
    pub fn handle_mm_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &mut VmArea,
        addr: u64,
        access: Access,
    ) -> Result<FaultKind, VmFault> {
        cpu.state().vmstat.count(PGFAULT, 1);
        let va = addr & !(PAGE_SIZE - 1);
        // __handle_mm_fault: allocate the table levels down to the PTE.
        let slot = self
            .pte_alloc_slot(cpu, &mm.pt, va)
            .map_err(|_| VmFault::Oom)?;
        let pte = Pte(slot.load(Ordering::Acquire));
        if pte.is_none() {
            if let Some(base) = vma.vm_special {
                // special_mapping_fault / vvar_fault: the kernel's page, shared, uncounted.
                let pfn = base + ((va - vma.vm_start) >> PAGE_SHIFT);
                let pte = Pte(Pte::new(pfn, vma.vm_page_prot).0 | PAGE_SPECIAL.bits());
                self.install_pte(cpu, mm, va, pte, None)?;
                return Ok(FaultKind::Minor);
            }
            if vma.is_anonymous() {
                return self.do_anonymous_page(cpu, mm, vma, va, access.write, slot);
            }
            return self.do_fault(cpu, mm, vma, va, access.write);
        }
        if !pte.is_present() {
            // Nothing but swap entries are non-present and non-none in user page tables.
            return self.do_swap_page(cpu, mm, vma, va, pte, access.write, slot);
        }
        if access.write && !pte.writable() {
            return self.do_wp_page(cpu, mm, vma, va, pte);
        }
        // Spurious (another CPU fixed it, or a stale TLB entry): make the entry young and
        // let the access retry.
        self.pte_update(&mm.pt, va, |p| Pte(p.0 | PteFlags::ACCESSED.bits()));
        self.flush_tlb_range(&mm.pt, va, va + PAGE_SIZE);
        Ok(FaultKind::Minor)
    }

    /// `do_swap_page`: bring the page of a swap entry back (from the swap cache, or read
    /// with readahead: a major fault), map it, and drop the PTE's swap reference; a write
    /// fault on a page no other PTE shares frees its slot and maps it writable.
    #[allow(clippy::too_many_arguments)]
    fn do_swap_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &mut VmArea,
        va: u64,
        pte: Pte,
        write: bool,
        slot: &AtomicU64,
    ) -> Result<FaultKind, VmFault> {
        let Some(entry) = crate::mm::swapfile::SwpEntry::from_pte(pte) else {
            return Err(VmFault::Sigbus);
        };
        let (page, major) = match self.swapin_readahead(cpu, entry) {
            Ok(x) => x,
            Err(Errno::ENOMEM) => return Err(VmFault::Oom),
            Err(_) => return Err(VmFault::Sigbus),
        };
        if major {
            cpu.state().vmstat.count(PGMAJFAULT, 1);
        }
        // Someone else may have swapped it in for this PTE meanwhile (not in our model: the
        // mm is ours alone), so the entry is still ours to replace.
        // Other VMAs of the family may map the page too: it joins the root anon_vma.
        let av = self.anon_vma_prepare(mm, vma);
        let root = self.anon_vma_root(av);
        self.page_add_anon_rmap(cpu, page, root, vma.linear_page_index(va));
        mm.add_counter(MM_ANONPAGES, 1);
        mm.add_counter(crate::mm::mm_types::MM_SWAPENTS, -1);
        self.swap_free(entry);
        // should_try_to_free_swap: on a write, an exclusive page gives its slot up.
        let exclusive = write && page.mapcount() == 1 && self.try_to_free_swap(cpu, page);
        let mut new = Pte::new(self.page_to_pfn(page).0, vma.vm_page_prot);
        if exclusive {
            new = Self::mk_pte(self.page_to_pfn(page).0, vma.vm_page_prot, vma, true);
        }
        slot.store(new.0, Ordering::Release);
        self.flush_tlb_range(&mm.pt, va, va + PAGE_SIZE);
        // The reference swapin_readahead returned becomes the mapping's.
        Ok(if major {
            FaultKind::Major
        } else {
            FaultKind::Minor
        })
    }

    /// `maybe_mkwrite` + `pte_mkdirty` on a fresh entry for a write fault.
    fn mk_pte(pfn: u64, prot: PgProt, vma: &VmArea, write: bool) -> Pte {
        let mut pte = Pte::new(pfn, prot);
        if write {
            pte = Pte(pte.0 | PteFlags::DIRTY.bits());
            if vma.vm_flags.contains(VmFlags::VM_WRITE) {
                pte = Pte(pte.0 | PteFlags::RW.bits());
            }
        }
        pte
    }

    /// A zeroed page for user memory (`vma_alloc_zeroed_movable_folio`).
    fn alloc_user_page(&self, cpu: &CpuGuard<'_>, zeroed: bool) -> Result<&Page, VmFault> {
        let gfp = if zeroed {
            GFP_HIGHUSER_MOVABLE | Gfp::__GFP_ZERO
        } else {
            GFP_HIGHUSER_MOVABLE
        };
        self.alloc_pages(cpu, gfp, 0).ok_or(VmFault::Oom)
    }

    /// Install `pte` at `va`; on failure (no memory for a table) undo the page's mapping.
    fn install_pte(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        va: u64,
        pte: Pte,
        page: Option<&Page>,
    ) -> Result<(), VmFault> {
        match self.set_pte_at(cpu, &mm.pt, va, pte) {
            Ok(()) => Ok(()),
            Err(_) => {
                if let Some(p) = page {
                    self.page_remove_rmap(cpu, p);
                    self.__free_pages(cpu, p, 0);
                }
                Err(VmFault::Oom)
            }
        }
    }

    /// `do_anonymous_page`: a read maps the zero page read-only; a write maps a new zeroed
    /// page.
    fn do_anonymous_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &mut VmArea,
        va: u64,
        write: bool,
        slot: &AtomicU64,
    ) -> Result<FaultKind, VmFault> {
        if !write {
            let prot = PgProt(vma.vm_page_prot.0 & !PteFlags::RW.bits());
            let pte = Pte(Pte::new(self.zero_pfn, prot).0 | PAGE_SPECIAL.bits());
            slot.store(pte.0, Ordering::Release);
            return Ok(FaultKind::Minor);
        }
        let av = self.anon_vma_prepare(mm, vma);
        let page = self.alloc_user_page(cpu, true)?;
        self.page_add_new_anon_rmap(cpu, page, av, vma.linear_page_index(va));
        let pfn = self.page_to_pfn(page).0;
        // set_pte_at into the slot the fault walked to (the mm is ours alone: no race).
        slot.store(
            Self::mk_pte(pfn, vma.vm_page_prot, vma, true).0,
            Ordering::Release,
        );
        mm.add_counter(MM_ANONPAGES, 1);
        self.lru_cache_add(cpu, page);
        Ok(FaultKind::Minor)
    }

    /// `do_fault`: a fault on a file mapping with no PTE yet.
    fn do_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &mut VmArea,
        va: u64,
        write: bool,
    ) -> Result<FaultKind, VmFault> {
        if !write {
            self.do_read_fault(cpu, mm, vma, va)
        } else if !vma.vm_flags.contains(VmFlags::VM_SHARED) {
            self.do_cow_fault(cpu, mm, vma, va)
        } else {
            self.do_shared_fault(cpu, mm, vma, va)
        }
    }

    /// `__do_fault` → `filemap_fault`: the page-cache page for `va`, with a reference. A
    /// page found cached is a minor fault (and may start async readahead); a miss is a major
    /// fault that reads around the page first.
    fn file_page(
        &self,
        cpu: &CpuGuard<'_>,
        vma: &VmArea,
        va: u64,
    ) -> Result<(&Page, FaultKind), VmFault> {
        let file = vma.vm_file.as_ref().ok_or(VmFault::Sigbus)?;
        let inode = &file.inode;
        let index = vma.linear_page_index(va);
        if index >= inode.size().div_ceil(PAGE_SIZE) {
            return Err(VmFault::Sigbus);
        }
        let rand = vma.vm_flags.contains(VmFlags::VM_RAND_READ);
        if let Some(p) = self.find_get_page(inode, index) {
            self.do_async_mmap_readahead(cpu, file, p, index, rand);
            return Ok((p, FaultKind::Minor));
        }
        cpu.state().vmstat.count(PGMAJFAULT, 1);
        match self.do_sync_mmap_readahead(cpu, file, index, rand) {
            Ok(()) => {}
            Err(Errno::ENOMEM) => return Err(VmFault::Oom),
            Err(_) => return Err(VmFault::Sigbus),
        }
        let p = self.find_get_page(inode, index).ok_or(VmFault::Sigbus)?;
        Ok((p, FaultKind::Major))
    }

    /// `do_read_fault`: first `do_fault_around` maps what is cached in the 64 KiB window
    /// (the faulting page too, when cached and not a readahead marker: then that is the whole
    /// fault); otherwise `filemap_fault` gets the page and only it is mapped (read-only for
    /// private mappings: the VMA's protection has no write bit there).
    fn do_read_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        va: u64,
    ) -> Result<FaultKind, VmFault> {
        if self.do_fault_around(cpu, mm, vma, va) {
            return Ok(FaultKind::Minor);
        }
        let (page, kind) = self.file_page(cpu, vma, va)?;
        self.page_add_rmap(cpu, page);
        let pte = Pte::new(self.page_to_pfn(page).0, vma.vm_page_prot);
        self.install_pte(cpu, mm, va, pte, Some(page))?;
        mm.add_counter(MM_FILEPAGES, 1);
        Ok(kind)
    }

    /// `do_fault_around` / `filemap_map_pages`: map the pages of the aligned
    /// `fault_around_bytes` window (inside the VMA and the same page table) that are cached,
    /// up to date and not readahead markers, without I/O. Returns whether the page at `va`
    /// was among them.
    fn do_fault_around(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, vma: &VmArea, va: u64) -> bool {
        let Some(file) = vma.vm_file.as_ref() else {
            return false;
        };
        let win = FAULT_AROUND_PAGES << PAGE_SHIFT;
        let pmd = 1u64 << 21;
        let start = (va & !(win - 1)).max(vma.vm_start).max(va & !(pmd - 1));
        let end = ((va & !(win - 1)) + win)
            .min(vma.vm_end)
            .min((va & !(pmd - 1)) + pmd);
        // filemap_map_pages: one PTE table for the window (it stays inside one PMD), the
        // cached pages of the window collected with a reference in one pass over the cache
        // (readahead markers left for their own fault), then mapped under the table lock
        // where no PTE is yet.
        let n = ((end - start) >> PAGE_SHIFT) as usize;
        let Ok(slots) = self.pte_alloc_run(cpu, &mm.pt, start, n) else {
            return false;
        };
        let first = vma.linear_page_index(start);
        let mut found: [Option<(u64, &Page)>; FAULT_AROUND_PAGES as usize] =
            [None; FAULT_AROUND_PAGES as usize];
        {
            let pages = file.inode.i_pages.lock();
            for (i, f) in found.iter_mut().enumerate().take(n) {
                if slots[i].load(Ordering::Acquire) != 0 {
                    continue;
                }
                let Some(pfn) = pages.get(first + i as u64) else {
                    continue;
                };
                let page = self.mem_map.page(pfn);
                if !page.test(crate::mm::readahead::PG_READAHEAD) {
                    page.get();
                    *f = Some((pfn, page));
                }
            }
        }
        let (mut hit, mut mapped) = (false, 0u32);
        {
            let _ptl = mm.pt.lock.lock();
            for (i, f) in found.iter().enumerate().take(n) {
                let Some((pfn, page)) = *f else { continue };
                if slots[i].load(Ordering::Acquire) != 0 {
                    self.__free_pages(cpu, page, 0);
                    continue;
                }
                self.page_add_rmap(cpu, page);
                slots[i].store(Pte::new(pfn, vma.vm_page_prot).0, Ordering::Release);
                mapped += 1;
                hit |= start + ((i as u64) << PAGE_SHIFT) == va;
            }
        }
        if mapped > 0 {
            mm.add_counter(MM_FILEPAGES, mapped as i64);
            self.ra_note_mapped(file, mapped);
        }
        hit
    }

    /// `do_cow_fault`: a write to a private file mapping copies the cached page into a new
    /// anonymous page; the file's page stays as it was.
    fn do_cow_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &mut VmArea,
        va: u64,
    ) -> Result<FaultKind, VmFault> {
        let av = self.anon_vma_prepare(mm, vma);
        let (src, kind) = self.file_page(cpu, vma, va)?;
        let new = match self.alloc_user_page(cpu, false) {
            Ok(p) => p,
            Err(e) => {
                self.__free_pages(cpu, src, 0);
                return Err(e);
            }
        };
        let pfn = self.page_to_pfn(new).0;
        self.copy_highpage(pfn, self.page_to_pfn(src).0);
        self.__free_pages(cpu, src, 0);
        self.page_add_new_anon_rmap(cpu, new, av, vma.linear_page_index(va));
        self.install_pte(
            cpu,
            mm,
            va,
            Self::mk_pte(pfn, vma.vm_page_prot, vma, true),
            Some(new),
        )?;
        mm.add_counter(MM_ANONPAGES, 1);
        self.lru_cache_add(cpu, new);
        Ok(kind)
    }

    /// `do_shared_fault`: a write to a shared file mapping maps the cached page writable and
    /// marks it dirty (`page_mkwrite` + `fault_dirty_shared_page`).
    fn do_shared_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        va: u64,
    ) -> Result<FaultKind, VmFault> {
        let (page, kind) = self.file_page(cpu, vma, va)?;
        self.page_add_rmap(cpu, page);
        self.set_page_dirty(cpu, page);
        let pte = Self::mk_pte(self.page_to_pfn(page).0, vma.vm_page_prot, vma, true);
        self.install_pte(cpu, mm, va, pte, Some(page))?;
        mm.add_counter(MM_FILEPAGES, 1);
        Ok(kind)
    }

    /// `do_wp_page`: a write to a present read-only PTE in a writable VMA.
    fn do_wp_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &mut VmArea,
        va: u64,
        pte: Pte,
    ) -> Result<FaultKind, VmFault> {
        let old = self.vm_normal_page(pte);
        if vma.vm_flags.contains(VmFlags::VM_SHARED) {
            // wp_page_shared: the page cache learns the page is dirty; map it writable.
            if let Some(p) = old {
                self.set_page_dirty(cpu, p);
            }
            self.pte_update(&mm.pt, va, |p| p.mkwrite_dirty());
            self.flush_tlb_range(&mm.pt, va, va + PAGE_SIZE);
            return Ok(FaultKind::Minor);
        }
        // wp_can_reuse_anon_folio: an anonymous page nobody else maps or holds (a reference
        // from this CPU's LRU add batch does not count: drain it first, as Linux does).
        if let Some(p) = old {
            if page_anon(p) && p.refcount() > 1 && !p.test(crate::mm::page::PageFlags::LRU) {
                self.lru_add_drain(cpu);
            }
            // A swap-cache page nobody else maps gives its slot up and can be reused.
            if page_anon(p) && p.mapcount() == 1 && p.test(crate::mm::swap_state::PG_SWAPCACHE) {
                self.try_to_free_swap(cpu, p);
            }
            if page_anon(p) && p.mapcount() == 1 && p.refcount() == 1 {
                self.page_move_anon_rmap(p, vma);
                self.pte_update(&mm.pt, va, |e| e.mkwrite_dirty());
                self.flush_tlb_range(&mm.pt, va, va + PAGE_SIZE);
                return Ok(FaultKind::Minor);
            }
        }
        // wp_page_copy: a private copy (a zeroed page in place of the zero page). The old
        // page is pinned while the new one is allocated (allocation may reclaim, and
        // reclaim may unmap the old page); the PTE is replaced only if it is unchanged.
        let av = self.anon_vma_prepare(mm, vma);
        if let Some(p) = old {
            p.get();
        }
        let new = match self.alloc_user_page(cpu, old.is_none()) {
            Ok(n) => n,
            Err(e) => {
                if let Some(p) = old {
                    self.__free_pages(cpu, p, 0);
                }
                return Err(e);
            }
        };
        let pfn = self.page_to_pfn(new).0;
        if let Some(p) = old {
            self.copy_highpage(pfn, self.page_to_pfn(p).0);
        }
        self.page_add_new_anon_rmap(cpu, new, av, vma.linear_page_index(va));
        let entry = Self::mk_pte(pfn, vma.vm_page_prot, vma, true);
        // ptep_clear_flush + set_pte_at: every CPU must stop using the old page first.
        let ad = (PteFlags::ACCESSED | PteFlags::DIRTY).bits();
        let unchanged = |cur: Pte| cur.0 & !ad == pte.0 & !ad;
        let same = self
            .pte_update(&mm.pt, va, |cur| if unchanged(cur) { entry } else { cur })
            .is_some_and(unchanged);
        if let Some(p) = old {
            self.__free_pages(cpu, p, 0); // the pin
        }
        if !same {
            // Reclaim got there first: let the access retry against the new entry.
            self.page_remove_rmap(cpu, new);
            self.__free_pages(cpu, new, 0);
            return Ok(FaultKind::Minor);
        }
        self.flush_tlb_range(&mm.pt, va, va + PAGE_SIZE);
        mm.add_counter(MM_ANONPAGES, 1);
        self.lru_cache_add(cpu, new);
        if let Some(p) = old {
            if !page_anon(p) {
                mm.add_counter(MM_FILEPAGES, -1);
            } else {
                mm.add_counter(MM_ANONPAGES, -1);
            }
            self.page_remove_rmap(cpu, p);
            self.__free_pages(cpu, p, 0);
        }
        Ok(FaultKind::Minor)
    }

    /// `zap_page_range` / `zap_pte_range`: clear every PTE in `[start, end)`; each page loses
    /// the mapping and the reference it held (a dirty PTE dirties its file page first), and
    /// the owner's RSS counters drop. Pages are gathered in batches (`mmu_gather`): each batch
    /// is freed only after a TLB flush, so no CPU can still write a freed page.
    pub(crate) fn zap_page_range(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, start: u64, end: u64) {
        const BATCH: usize = 256;
        let mut batch = [Pte(0); BATCH];
        let mut n = 0;
        let mut flushed_any = false;
        let _g = mm.pt.lock.lock();
        let mut swap_entries: Vec<crate::mm::swapfile::SwpEntry> = Vec::new();
        self.for_each_pte(&mm.pt, start, end, |_, slot| {
            let old = Pte(slot.swap(0, Ordering::AcqRel));
            if !old.is_present() {
                if let Some(e) = crate::mm::swapfile::SwpEntry::from_pte(old) {
                    swap_entries.push(e);
                }
                return;
            }
            batch[n] = old;
            n += 1;
            if n == BATCH {
                self.tlb_flush_and_free(cpu, mm, start, end, &batch[..n]);
                flushed_any = true;
                n = 0;
            }
        });
        if n > 0 || !flushed_any {
            self.tlb_flush_and_free(cpu, mm, start, end, &batch[..n]);
        }
        drop(_g);
        mm.add_counter(
            crate::mm::mm_types::MM_SWAPENTS,
            -(swap_entries.len() as i64),
        );
        for e in swap_entries {
            self.free_swap_and_cache(cpu, e);
        }
    }

    /// `tlb_flush_mmu`: flush the range from every TLB, then release the gathered pages.
    fn tlb_flush_and_free(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        start: u64,
        end: u64,
        ptes: &[Pte],
    ) {
        if ptes.is_empty() {
            return;
        }
        self.flush_tlb_range(&mm.pt, start, end);
        let (mut anon, mut file) = (0, 0);
        let mut put: Vec<&Page> = Vec::with_capacity(ptes.len());
        for &pte in ptes {
            let Some(page) = self.vm_normal_page(pte) else {
                continue;
            };
            if page.mapcount() <= 0 {
                continue; // not a counted mapping (never happens for pages we installed)
            }
            if page_anon(page) {
                anon += 1;
            } else {
                if pte.dirty() && self.page_is_file(page) {
                    self.set_page_dirty(cpu, page);
                }
                file += 1;
            }
            self.page_remove_rmap(cpu, page);
            // free_swap_cache: an unmapped swap-cache page whose slot no PTE uses any more
            // leaves the swap cache with it.
            if page.mapcount() == 0 && page.test(crate::mm::swap_state::PG_SWAPCACHE) {
                self.try_to_free_swap(cpu, page);
            }
            put.push(page);
        }
        self.release_pages(cpu, &put);
        mm.add_counter(MM_ANONPAGES, -anon);
        mm.add_counter(MM_FILEPAGES, -file);
    }

    /// `copy_page_range` for fork: the child gets the parent's PTEs of `vma`; each page gains
    /// a mapping and a reference, and in a COW mapping writable entries are write-protected in
    /// both parent and child (`copy_present_pte`). Shared mappings are not copied: the child
    /// faults them in from the page cache, as Linux skips VMAs without anonymous pages.
    pub(crate) fn copy_page_range(
        &self,
        cpu: &CpuGuard<'_>,
        dst: &MmStruct,
        src: &MmStruct,
        vma: &VmArea,
    ) -> Result<(), Errno> {
        if vma.vm_flags.contains(VmFlags::VM_SHARED) {
            return Ok(());
        }
        let cow = vma.is_cow_mapping();
        let mut entries: Vec<(u64, Pte)> = Vec::new();
        {
            let _g = src.pt.lock.lock();
            self.for_each_pte(&src.pt, vma.vm_start, vma.vm_end, |va, slot| {
                let mut v = Pte(slot.load(Ordering::Acquire));
                if !v.is_present() {
                    // copy_nonpresent_pte: the child shares the swap slot.
                    if crate::mm::swapfile::SwpEntry::from_pte(v).is_some() {
                        entries.push((va, v));
                    }
                    return;
                }
                if cow && v.writable() {
                    v = Pte(slot.fetch_and(!PteFlags::RW.bits(), Ordering::AcqRel)).wrprotect();
                }
                // Pin the page while the table lock keeps reclaim from unmapping it.
                if let Some(p) = self.vm_normal_page(v) {
                    p.get();
                }
                entries.push((va, v));
            });
        }
        if cow {
            self.flush_tlb_range(&src.pt, vma.vm_start, vma.vm_end);
        }
        let unpin_rest = |rest: &[(u64, Pte)]| {
            for &(_, pte) in rest {
                if let Some(p) = self.vm_normal_page(pte) {
                    self.__free_pages(cpu, p, 0);
                }
            }
        };
        for (i, &(va, pte)) in entries.iter().enumerate() {
            if let Some(e) = crate::mm::swapfile::SwpEntry::from_pte(pte) {
                self.swap_duplicate(e, 1);
                dst.add_counter(crate::mm::mm_types::MM_SWAPENTS, 1);
                if let Err(err) = self.set_pte_at(cpu, &dst.pt, va, pte) {
                    self.swap_free(e);
                    dst.add_counter(crate::mm::mm_types::MM_SWAPENTS, -1);
                    unpin_rest(&entries[i + 1..]);
                    return Err(err);
                }
                continue;
            }
            let page = self.vm_normal_page(pte);
            if let Some(p) = page {
                self.page_add_rmap(cpu, p);
                dst.add_counter(
                    if page_anon(p) {
                        MM_ANONPAGES
                    } else {
                        MM_FILEPAGES
                    },
                    1,
                );
            }
            // The child's entry starts old, as pte_mkold in copy_present_pte does for the
            // child of a COW mapping (the Accessed bit belongs to the parent's history).
            if let Err(e) = self.set_pte_at(cpu, &dst.pt, va, pte.mkold()) {
                if let Some(p) = page {
                    self.page_remove_rmap(cpu, p);
                    self.__free_pages(cpu, p, 0);
                    dst.add_counter(
                        if page_anon(p) {
                            MM_ANONPAGES
                        } else {
                            MM_FILEPAGES
                        },
                        -1,
                    );
                }
                unpin_rest(&entries[i + 1..]);
                return Err(e);
            }
        }
        Ok(())
    }
}
