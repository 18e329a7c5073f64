//! Page faults and the PTE-level work around them (`mm/memory.c`): `handle_mm_fault` →
//! `handle_pte_fault` → `do_anonymous_page` (with `alloc_anon_folio`: mTHP folios mapped by
//! a run of PTEs) / `do_read_fault` (with `do_fault_around`) /
//! `do_cow_fault` / `do_shared_fault` / `do_swap_page` / `do_wp_page` (`wp_page_reuse`,
//! `wp_page_copy`, `wp_page_shared`); `zap_page_range` (`zap_pte_range` with
//! `zap_present_ptes`) and `copy_page_range` for fork (`copy_pte_range` with
//! `copy_present_ptes`), both taking the PTEs of a large folio in batches found by
//! `folio_pte_batch` (`mm/internal.h`), as Linux 6.9+.
//!
//! A fault is described by a [`VmFault`] (`struct vm_fault`): the VMA, the address, the
//! access, the page offset and `orig_pte`, the entry as the fault first saw it, read without
//! the page-table lock. Every handler does its slow work (allocation, I/O, copying) without the
//! lock, then takes the PTE table's lock through a cursor and installs its entry only if the
//! entry still holds `orig_pte` (`pte_same`); if it changed (another CPU, reclaim, `swapoff`),
//! the handler backs out and the access is retried, as Linux's handlers return 0.
//!
//! Page accounting follows Linux: an anonymous page has refcount 1 and one mapping per PTE;
//! a page-cache page has one reference for the cache plus one per PTE. The shared zero page
//! (`ZERO_PAGE(0)`, a page of the kernel's bss) is mapped read-only with `_PAGE_SPECIAL`
//! and never counted. `pgfault` counts every fault, `pgmajfault` those that read the file.

use crate::addr::{Pfn, PAGE_MASK, PAGE_SIZE};
use crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER;
use crate::arch::x86_64::pgtable::{PgProt, Pte, PteCursor, PteFlags, PAGE_SPECIAL};
use crate::arch::x86_64::tlb::Access;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::{Gfp, GFP_HIGHUSER_MOVABLE};
use crate::mm::filemap::PGMAJFAULT;
use crate::mm::huge_memory::HugeFault;
use crate::mm::mm_types::{MmStruct, MmTables, VmArea, VmFlags, VmaId, MM_ANONPAGES, MM_FILEPAGES};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::Page;
use crate::mm::rmap::page_anon;
use crate::mm::vmstat::{
    index_of, MTHP_STAT_ANON_FAULT_ALLOC, MTHP_STAT_ANON_FAULT_FALLBACK, VM_EVENT_NAMES,
};
use crate::Kernel;
use alloc::vec::Vec;

/// `PGFAULT`.
pub const PGFAULT: usize = index_of(VM_EVENT_NAMES, "pgfault");

/// `fault_around_bytes` default (64 KiB) in pages.
pub const FAULT_AROUND_PAGES: u64 = 16;

/// Why a fault could not be handled (`vm_fault_t`'s `VM_FAULT_OOM`, `VM_FAULT_SIGBUS`,
/// `VM_FAULT_SIGSEGV`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VmFaultError {
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
    /// Needed a read from the file or swap.
    Major,
}

/// `struct vm_fault`: what a fault handler works from.
pub struct VmFault<'a> {
    /// The VMA the address lies in.
    pub vma: &'a VmArea,
    /// The faulting address, page aligned.
    pub address: u64,
    /// The access (`FAULT_FLAG_WRITE`, `FAULT_FLAG_USER`, `FAULT_FLAG_INSTRUCTION`).
    pub flags: Access,
    /// `linear_page_index(vma, address)`.
    pub pgoff: u64,
    /// The entry when the fault started, read without the lock (`ptep_get_lockless`).
    pub orig_pte: Pte,
    /// A cursor on the fault's entry (`vmf->pte` and `vmf->ptl`): its table is populated,
    /// its lock taken only when a handler installs.
    pub pte: PteCursor<'a>,
}

type FaultResult = Result<FaultKind, VmFaultError>;

impl Kernel {
    /// `my_zero_pfn`: the shared zero page.
    pub fn zero_pfn(&self) -> Pfn {
        self.zero_pfn
    }

    /// `vm_normal_page`: the struct page behind a present PTE, or `None` for special
    /// mappings (the zero page).
    pub(crate) fn vm_normal_page(&self, pte: Pte) -> Option<&Page> {
        if pte.flags().contains(PAGE_SPECIAL) {
            return None;
        }
        self.pfn_to_page(pte.pfn())
    }

    /// `handle_mm_fault` for `addr` in the VMA `vma` (which the caller found and checked
    /// with `access_error`): install what the access needs, or say why it cannot.
    pub fn handle_mm_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: VmaId,
        addr: u64,
        access: Access,
    ) -> FaultResult {
        cpu.state().vmstat.count(PGFAULT, 1);
        // anon_vma_prepare, which Linux calls first thing in the handlers that may create an
        // anonymous page (a write to a private mapping), is done before the address space is
        // borrowed for the walk: it is the one change a fault makes to the VMA.
        {
            let v = mm.vma(vma);
            if (access.write || self.thp_vma_allowable(v))
                && !v.vm_flags.contains(VmFlags::VM_SHARED)
                && v.anon_vma.is_none()
                && v.vm_special.is_none()
            {
                self.anon_vma_prepare(mm, vma);
            }
        }
        let mm: &MmStruct = mm;
        let v = mm.vma(vma);
        let address = addr & PAGE_MASK;
        // __handle_mm_fault's PMD level: a huge entry, or a new THP where the VMA allows one.
        let major = match self.huge_pmd_fault(cpu, mm, v, address, access) {
            HugeFault::Done(r) => return r,
            HugeFault::Fallback => false,
            HugeFault::FallbackMajor => true,
        };
        // __handle_mm_fault: the table levels down to the PTE table, allocated as needed.
        // They stay while we hold the address space (only its owner frees tables).
        let Ok(pte) = self.pte_cursor_alloc(cpu, &mm.pt, address, address + PAGE_SIZE) else {
            return Err(VmFaultError::Oom);
        };
        let mut vmf = VmFault {
            vma: v,
            address,
            flags: access,
            pgoff: v.linear_page_index(address),
            orig_pte: pte.peek(),
            pte,
        };
        match self.handle_pte_fault(cpu, mm, &mut vmf) {
            // The PMD level read the page (a file THP it could not map): still major.
            Ok(_) if major => Ok(FaultKind::Major),
            r => r,
        }
    }

    /// `handle_pte_fault`: dispatch on `orig_pte`.
    fn handle_pte_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
    ) -> FaultResult {
        let pte = vmf.orig_pte;
        if pte.is_none() {
            if let Some(base) = vmf.vma.vm_special {
                return self.special_mapping_fault(vmf, base);
            }
            if vmf.vma.is_anonymous() {
                return self.do_anonymous_page(cpu, mm, vmf);
            }
            return self.do_fault(cpu, mm, vmf);
        }
        if !pte.is_present() {
            // Nothing but swap entries are non-present and non-none in user page tables.
            return self.do_swap_page(cpu, mm, vmf);
        }
        if vmf.flags.write && !pte.writable() {
            return self.do_wp_page(cpu, mm, vmf);
        }
        // Spurious (another CPU fixed it, or the MMU held a narrower entry): make the entry
        // young and let the access retry; an MMU that faulted dropped what it held.
        vmf.pte.lock();
        if vmf.pte.get() == pte {
            vmf.pte.set_flags(PteFlags::ACCESSED);
        }
        Ok(FaultKind::Minor)
    }

    /// `special_mapping_fault` / `vvar_fault`: the kernel's page, shared and uncounted.
    fn special_mapping_fault(&self, vmf: &mut VmFault<'_>, base: Pfn) -> FaultResult {
        let pfn = Pfn(base.0 + ((vmf.address - vmf.vma.vm_start) >> crate::PAGE_SHIFT));
        let pte = Pte(Pte::new(pfn, vmf.vma.vm_page_prot).0 | PAGE_SPECIAL.bits());
        vmf.pte.lock();
        let _ = vmf.pte.install(vmf.orig_pte, pte);
        Ok(FaultKind::Minor)
    }

    /// `do_swap_page`: bring the page of a swap entry back (from the swap cache, or read
    /// with readahead: a major fault) and map it if the entry is still there — `swapoff` or
    /// another fault may have mapped it first, and then this one backs out. The PTE's swap
    /// reference is dropped; a write fault on a page no other PTE shares frees its slot and
    /// maps it writable.
    fn do_swap_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
    ) -> FaultResult {
        let Some(entry) = crate::mm::swapfile::SwpEntry::from_pte(vmf.orig_pte) else {
            return Err(VmFaultError::Sigbus);
        };
        let (page, major) = match self.swapin_readahead(cpu, entry) {
            Ok(x) => x,
            Err(e) => {
                // Back out if somebody else mapped this entry meanwhile (swapoff took the
                // slot, or another fault): the access retries against what is there now.
                vmf.pte.lock();
                let changed = vmf.pte.get() != vmf.orig_pte;
                vmf.pte.unlock();
                return match e {
                    _ if changed => Ok(FaultKind::Minor),
                    Errno::ENOMEM => Err(VmFaultError::Oom),
                    _ => Err(VmFaultError::Sigbus),
                };
            }
        };
        if major {
            cpu.state().vmstat.count(PGMAJFAULT, 1);
        }
        // Other VMAs of the family may map the page too: it joins the root anon_vma.
        let Some(av) = vmf.vma.anon_vma else {
            self.__free_pages(cpu, page, 0);
            return Err(VmFaultError::Sigbus);
        };
        let root = self.anon_vma_root(av);
        vmf.pte.lock();
        if vmf.pte.get() != vmf.orig_pte {
            // pte_same failed: someone else swapped it in. Our reference goes.
            vmf.pte.unlock();
            self.__free_pages(cpu, page, 0);
            return Ok(FaultKind::Minor);
        }
        self.page_add_anon_rmap(cpu, page, root, vmf.pgoff);
        mm.add_counter(MM_ANONPAGES, 1);
        mm.add_counter(crate::mm::mm_types::MM_SWAPENTS, -1);
        self.swap_free(entry);
        // should_try_to_free_swap: with swap more than half full (vm_swap_full), in a locked
        // VMA, or on a write by the page's only user, the page gives its slot up now (it
        // stays, dirty, as plain anonymous memory; the slot serves the next swap-out).
        let only_user = page.mapcount() == 1;
        let free_slot = self.vm_swap_full()
            || vmf.vma.vm_flags.contains(VmFlags::VM_LOCKED)
            || page.test(crate::mm::page::PageFlags::MLOCKED)
            || (vmf.flags.write && only_user);
        let freed = free_slot && self.try_to_free_swap(cpu, page);
        let exclusive = vmf.flags.write && only_user && freed;
        let pfn = self.page_to_pfn(page);
        let new = Self::mk_pte(pfn, vmf.vma.vm_page_prot, vmf.vma, exclusive);
        vmf.pte
            .install(vmf.orig_pte, new)
            .expect("a swap entry under our lock does not change");
        // The reference swapin_readahead returned becomes the mapping's.
        Ok(if major {
            FaultKind::Major
        } else {
            FaultKind::Minor
        })
    }

    /// `maybe_mkwrite` + `pte_mkdirty` on a fresh entry for a write fault.
    fn mk_pte(pfn: Pfn, prot: PgProt, vma: &VmArea, write: bool) -> Pte {
        let mut pte = Pte::new(pfn, prot);
        if write {
            pte = Pte(pte.0 | PteFlags::DIRTY.bits());
            if vma.vm_flags.contains(VmFlags::VM_WRITE) {
                pte = Pte(pte.0 | PteFlags::RW.bits());
            }
        }
        pte
    }

    /// A page for user memory (`vma_alloc_zeroed_movable_folio`, or unzeroed for a copy).
    fn alloc_user_page(&self, cpu: &CpuGuard<'_>, zeroed: bool) -> Result<&Page, VmFaultError> {
        let gfp = if zeroed {
            GFP_HIGHUSER_MOVABLE | Gfp::__GFP_ZERO
        } else {
            GFP_HIGHUSER_MOVABLE
        };
        self.alloc_pages(cpu, gfp, 0).ok_or(VmFaultError::Oom)
    }

    /// `alloc_anon_folio`: the folio for an anonymous write fault. The mTHP orders the
    /// per-size policies allow in the VMA (`thp_vma_allowable_orders`, below the PMD order:
    /// that one is the PMD level's) whose naturally aligned range around the address fits
    /// the VMA (`thp_vma_suitable_orders`); of those, the highest whose PTEs are all none
    /// (`pte_range_none`) and each smaller one in turn is tried (`thp_vma_gfp_mask`'s
    /// effort; each failure counts the size's `anon_fault_fallback`), then a 4 KiB page.
    fn alloc_anon_folio(
        &self,
        cpu: &CpuGuard<'_>,
        vmf: &VmFault<'_>,
    ) -> Result<&Page, VmFaultError> {
        let vma = vmf.vma;
        let mut orders = self.thp_vma_allowable_orders(vma, (1 << HPAGE_PMD_ORDER) - 1);
        orders = Self::thp_vma_suitable_orders(vma, vmf.address, orders);
        while orders != 0 {
            let order = 31 - orders.leading_zeros();
            let addr = vmf.address & !((PAGE_SIZE << order) - 1);
            if vmf.pte.range_none(addr, 1 << order) {
                break;
            }
            orders &= !(1 << order);
        }
        if orders != 0 {
            let gfp = self.vma_thp_gfp_mask(vma) | Gfp::__GFP_ZERO;
            while orders != 0 {
                let order = 31 - orders.leading_zeros();
                if let Some(folio) = self.alloc_pages(cpu, gfp, order) {
                    return Ok(folio);
                }
                self.mthp_stats()
                    .add(order, MTHP_STAT_ANON_FAULT_FALLBACK, 1);
                orders &= !(1 << order);
            }
        }
        self.alloc_user_page(cpu, true)
    }

    /// `do_anonymous_page`: a read maps the zero page read-only; a write maps a new zeroed
    /// folio ([`Kernel::alloc_anon_folio`]): a large one by a run of PTEs installed in one
    /// step (`set_ptes`) where all of them are still none, each holding a reference on it.
    fn do_anonymous_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
    ) -> FaultResult {
        let vma = vmf.vma;
        if !vmf.flags.write {
            let prot = PgProt(vma.vm_page_prot.0 & !PteFlags::RW.bits());
            let pte = Pte(Pte::new(self.zero_pfn, prot).0 | PAGE_SPECIAL.bits());
            vmf.pte.lock();
            let _ = vmf.pte.install(vmf.orig_pte, pte);
            return Ok(FaultKind::Minor);
        }
        let Some(av) = vma.anon_vma else {
            return Err(VmFaultError::Oom); // anon_vma_prepare ran in handle_mm_fault
        };
        let folio = self.alloc_anon_folio(cpu, vmf)?;
        let nr = folio.folio_nr_pages();
        let pfn = self.page_to_pfn(folio);
        let entry = Self::mk_pte(pfn, vma.vm_page_prot, vma, true);
        vmf.pte.lock();
        if nr == 1 {
            if vmf.pte.install(vmf.orig_pte, entry).is_err() {
                // Someone mapped something here first: ours was never seen.
                vmf.pte.unlock();
                self.__free_pages(cpu, folio, 0);
                return Ok(FaultKind::Minor);
            }
            self.page_add_new_anon_rmap(cpu, folio, av, vmf.pgoff);
            mm.add_counter(MM_ANONPAGES, 1);
            self.lru_cache_add(cpu, folio);
            return Ok(FaultKind::Minor);
        }
        let addr = vmf.address & !((nr << crate::PAGE_SHIFT) - 1);
        if vmf.pte.install_range(addr, entry, nr).is_err() {
            // An entry of the range was filled meanwhile: the access retries.
            vmf.pte.unlock();
            self.folio_put(cpu, folio);
            return Ok(FaultKind::Minor);
        }
        // One reference per PTE (the allocation's is the first).
        folio.ref_add(nr as i32 - 1);
        self.folio_add_new_anon_rmap_ptes(cpu, folio, av, vma.linear_page_index(addr));
        mm.add_counter(MM_ANONPAGES, nr as i64);
        self.mthp_stats()
            .add(folio.folio_order(), MTHP_STAT_ANON_FAULT_ALLOC, 1);
        vmf.pte.unlock();
        self.lru_cache_add(cpu, folio);
        Ok(FaultKind::Minor)
    }

    /// `do_fault`: a fault on a file mapping with no PTE yet.
    fn do_fault(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, vmf: &mut VmFault<'_>) -> FaultResult {
        if !vmf.flags.write {
            self.do_read_fault(cpu, mm, vmf)
        } else if !vmf.vma.vm_flags.contains(VmFlags::VM_SHARED) {
            self.do_cow_fault(cpu, mm, vmf)
        } else {
            self.do_shared_fault(cpu, mm, vmf)
        }
    }

    /// `__do_fault` → `filemap_fault`: the page-cache page for the fault, with a reference.
    /// A page found cached is a minor fault (and may start async readahead); a miss is a
    /// major fault that reads around the page first.
    pub(crate) fn file_page(
        &self,
        cpu: &CpuGuard<'_>,
        vma: &VmArea,
        index: u64,
    ) -> Result<(&Page, FaultKind), VmFaultError> {
        let file = vma.vm_file.as_ref().ok_or(VmFaultError::Sigbus)?;
        let inode = &file.inode;
        let rand = vma.vm_flags.contains(VmFlags::VM_RAND_READ);
        let mut major = false;
        loop {
            // Checked again after each read: a file that shrank meanwhile has nothing to
            // read there (readahead stops at the new end), and the fault is SIGBUS.
            if index >= inode.size().div_ceil(PAGE_SIZE) {
                return Err(VmFaultError::Sigbus);
            }
            if let Some(p) = self.find_get_page(inode, index) {
                if major {
                    return Ok((p, FaultKind::Major));
                }
                self.do_async_mmap_readahead(cpu, file, p, index, rand);
                return Ok((p, FaultKind::Minor));
            }
            let read = if !major {
                major = true;
                cpu.state().vmstat.count(PGMAJFAULT, 1);
                let huge = vma.vm_flags.contains(VmFlags::VM_HUGEPAGE);
                self.do_sync_mmap_readahead(cpu, file, index, rand, huge)
            } else {
                // page_cache_read: reclaim took the page back before we held a reference to
                // it; read it alone, keeping the allocation's reference.
                match self.page_cache_read_one(cpu, inode, index, crate::gfp::GFP_HIGHUSER_MOVABLE)
                {
                    Ok(Some(p)) => return Ok((p, FaultKind::Major)),
                    Ok(None) => Ok(()), // cached by someone else meanwhile: look again
                    Err(e) => Err(e),
                }
            };
            match read {
                Ok(()) => {}
                Err(Errno::ENOMEM) => return Err(VmFaultError::Oom),
                Err(_) => return Err(VmFaultError::Sigbus),
            }
        }
    }

    /// `finish_fault` for a page-cache page: map `page` (whose reference the caller holds)
    /// with `pte` if the entry is still what the fault saw; otherwise drop the reference.
    fn finish_file_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
        page: &Page,
        pte: Pte,
    ) -> bool {
        vmf.pte.lock();
        if vmf.pte.install(vmf.orig_pte, pte).is_err() {
            vmf.pte.unlock();
            self.folio_put(cpu, page);
            return false;
        }
        self.page_add_rmap(cpu, page);
        mm.add_counter(MM_FILEPAGES, 1);
        true
    }

    /// `do_read_fault`: first `do_fault_around` maps what is cached in the 64 KiB window
    /// (the faulting page too, when cached and not a readahead marker: then that is the whole
    /// fault); otherwise `filemap_fault` gets the page and only it is mapped (read-only for
    /// private mappings: the VMA's protection has no write bit there).
    fn do_read_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
    ) -> FaultResult {
        if self.do_fault_around(cpu, mm, vmf) {
            return Ok(FaultKind::Minor);
        }
        let (page, kind) = self.file_page(cpu, vmf.vma, vmf.pgoff)?;
        let pte = Pte::new(self.page_to_pfn(page), vmf.vma.vm_page_prot);
        self.finish_file_fault(cpu, mm, vmf, page, pte);
        Ok(kind)
    }

    /// `do_fault_around` / `filemap_map_pages`: map the pages of the aligned
    /// `fault_around_bytes` window (inside the VMA, the same page table and the file's size)
    /// that are cached,
    /// up to date and not readahead markers, without I/O. A large folio the window reaches
    /// is mapped whole when it lies inside the VMA and the page table (Linux 6.18's
    /// "map entire large folio"), else the part inside the window: one reference on the
    /// folio per page mapped, taken at once (`folio_ref_add`), each folio's run installed in
    /// one step where its entries are all none (`set_pte_range`; entry by entry otherwise),
    /// and the mappings of each run of its pages counted at once (`folio_add_file_rmap_ptes`).
    /// Returns whether the page at the fault's address was among them.
    fn do_fault_around(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, vmf: &mut VmFault<'_>) -> bool {
        let vma = vmf.vma;
        let va = vmf.address;
        let Some(file) = vma.vm_file.as_ref() else {
            return false;
        };
        let win = FAULT_AROUND_PAGES << crate::PAGE_SHIFT;
        let pmd = 1u64 << 21;
        let lo_bound = vma.vm_start.max(va & !(pmd - 1));
        let hi_bound = vma.vm_end.min((va & !(pmd - 1)) + pmd);
        let start = (va & !(win - 1)).max(lo_bound);
        let end = ((va & !(win - 1)) + win).min(hi_bound);
        // Nothing past the end of the file is mapped (`file_end`): pages a truncation left
        // in the cache there, or the rest of a folio it cut, belong to no byte of the file.
        let file_end = file.inode.size().div_ceil(PAGE_SIZE);
        let (first, last) = (
            vma.linear_page_index(start),
            vma.linear_page_index(end).min(file_end),
        );
        let (lo_index, hi_index) = (
            vma.linear_page_index(lo_bound),
            vma.linear_page_index(hi_bound).min(file_end),
        );
        // filemap_map_pages: the cached folios of the window collected with their
        // references in one pass over the cache (readahead markers left for their own
        // fault), then mapped in one round of the PTE table's lock where the entries are
        // still none. Everything stays inside one PTE table, which the fault populated.
        // Each run: the folio, and the file indexes [lo, hi) of it to map.
        let mut runs: Vec<(&Page, u64, u64)> = Vec::new();
        {
            let pages = file.inode.i_pages.lock();
            let mut j = first;
            while j < last {
                let Some(pfn) = pages.get(j) else {
                    j += 1;
                    continue;
                };
                let folio = self.mem_map.page(pfn).compound_head();
                let (fi, nr) = (folio.index(), folio.folio_nr_pages());
                j = fi + nr;
                if folio.test(crate::mm::readahead::PG_READAHEAD) {
                    continue;
                }
                let (lo, hi) = if fi >= lo_index && fi + nr <= hi_index {
                    (fi, fi + nr)
                } else {
                    (fi.max(first), (fi + nr).min(last))
                };
                folio.ref_add((hi - lo) as i32);
                runs.push((folio, lo, hi));
            }
        }
        let addr_of = |index: u64| vma.vm_start + ((index - vma.vm_pgoff) << crate::PAGE_SHIFT);
        let (mut hit, mut mapped) = (false, 0u64);
        if let (Some(&(_, lo, _)), Some(&(_, _, hi))) = (runs.first(), runs.last()) {
            let mut c = self.pte_cursor(&mm.pt, addr_of(lo), addr_of(hi));
            for &(folio, lo, hi) in &runs {
                let fi = folio.index();
                let first = Pte::new(
                    self.page_to_pfn(folio.folio_page(lo - fi)),
                    vma.vm_page_prot,
                );
                // set_pte_range: the whole run at once where every entry of it is none.
                if c.seek(addr_of(lo)) && c.install_range(addr_of(lo), first, hi - lo).is_ok() {
                    self.folio_add_file_rmap_ptes(cpu, folio, lo - fi, hi - lo);
                    mapped += hi - lo;
                    hit |= (addr_of(lo)..addr_of(hi)).contains(&(va & PAGE_MASK));
                    continue;
                }
                // Otherwise entry by entry, skipping those filled meanwhile; each run of
                // pages installed counted in the rmap at once.
                let mut run_from = lo;
                for k in lo..hi {
                    let a = addr_of(k);
                    let page = folio.folio_page(k - fi);
                    let pte = Pte::new(self.page_to_pfn(page), vma.vm_page_prot);
                    if !c.seek(a) || c.install(Pte(0), pte).is_err() {
                        self.folio_add_file_rmap_ptes(cpu, folio, run_from - fi, k - run_from);
                        mapped += k - run_from;
                        run_from = k + 1;
                        self.folio_put(cpu, folio);
                        continue;
                    }
                    hit |= a == (va & PAGE_MASK);
                }
                self.folio_add_file_rmap_ptes(cpu, folio, run_from - fi, hi - run_from);
                mapped += hi - run_from;
            }
        }
        if mapped > 0 {
            mm.add_counter(MM_FILEPAGES, mapped as i64);
            self.ra_note_mapped(file, mapped.min(u32::MAX as u64) as u32);
        }
        hit
    }

    /// `do_cow_fault`: a write to a private file mapping copies the cached page into a new
    /// anonymous page; the file's page stays as it was.
    fn do_cow_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
    ) -> FaultResult {
        let vma = vmf.vma;
        let Some(av) = vma.anon_vma else {
            return Err(VmFaultError::Oom); // anon_vma_prepare ran in handle_mm_fault
        };
        let (src, kind) = self.file_page(cpu, vmf.vma, vmf.pgoff)?;
        // vmf->cow_page
        let new = match self.alloc_user_page(cpu, false) {
            Ok(p) => p,
            Err(e) => {
                self.folio_put(cpu, src);
                return Err(e);
            }
        };
        let pfn = self.page_to_pfn(new);
        self.copy_highpage(pfn, self.page_to_pfn(src));
        self.folio_put(cpu, src);
        vmf.pte.lock();
        if vmf
            .pte
            .install(vmf.orig_pte, Self::mk_pte(pfn, vma.vm_page_prot, vma, true))
            .is_err()
        {
            vmf.pte.unlock();
            self.__free_pages(cpu, new, 0);
            return Ok(FaultKind::Minor);
        }
        self.page_add_new_anon_rmap(cpu, new, av, vmf.pgoff);
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
        vmf: &mut VmFault<'_>,
    ) -> FaultResult {
        let (page, kind) = self.file_page(cpu, vmf.vma, vmf.pgoff)?;
        // Dirty before the writable entry exists, so writeback that cleans the page first
        // write-protects every mapping, and a write after it faults and dirties it again.
        self.set_page_dirty(cpu, page);
        let pte = Self::mk_pte(self.page_to_pfn(page), vmf.vma.vm_page_prot, vmf.vma, true);
        self.finish_file_fault(cpu, mm, vmf, page, pte);
        Ok(kind)
    }

    /// `do_wp_page`: a write to a present read-only PTE in a writable VMA.
    fn do_wp_page(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, vmf: &mut VmFault<'_>) -> FaultResult {
        let vma = vmf.vma;
        // handle_pte_fault takes the PTE lock and re-checks the entry before do_wp_page: the
        // page behind `orig_pte` is looked at (and pinned) only while the entry still maps
        // it, or reclaim could free it under us (a pin taken on a free page, then the very
        // frame handed back as the copy's, was seen under THP splits and reclaim).
        vmf.pte.lock();
        if vmf.pte.get() != vmf.orig_pte {
            vmf.pte.unlock();
            return Ok(FaultKind::Minor);
        }
        let old = self.vm_normal_page(vmf.orig_pte);
        // wp_page_reuse: ptep_set_access_flags on the entry the fault saw (lock held).
        let reuse = |vmf: &mut VmFault<'_>| {
            vmf.pte
                .set_flags(PteFlags::RW | PteFlags::DIRTY | PteFlags::ACCESSED);
            vmf.pte.unlock();
            Ok(FaultKind::Minor)
        };
        if vma.vm_flags.contains(VmFlags::VM_SHARED) {
            // wp_page_shared: the page cache learns the page is dirty; map it writable.
            if let Some(p) = old {
                self.set_page_dirty(cpu, p);
            }
            return reuse(vmf);
        }
        // wp_can_reuse_anon_folio: an anonymous page nobody else maps or holds (a reference
        // from this CPU's LRU add batch does not count: drain it first, as Linux does).
        if let Some(p) = old {
            let folio = p.compound_head();
            if folio.folio_test_large() {
                if page_anon(folio) && !folio.test(crate::mm::page::PageFlags::LRU) {
                    self.lru_add_drain(cpu);
                }
                if page_anon(folio) && self.wp_can_reuse_large_anon_folio(folio, vmf) {
                    self.page_move_anon_rmap(folio, vma);
                    return reuse(vmf);
                }
                // The pin wp_page_copy copies from, on the folio, taken while the entry
                // maps its page.
                folio.get();
                vmf.pte.unlock();
                return self.wp_page_copy(cpu, mm, vmf, old);
            }
            if page_anon(p) && p.refcount() > 1 && !p.test(crate::mm::page::PageFlags::LRU) {
                self.lru_add_drain(cpu);
            }
            // A swap-cache page nobody else maps gives its slot up and can be reused.
            if page_anon(p) && p.mapcount() == 1 && p.test(crate::mm::swap_state::PG_SWAPCACHE) {
                self.try_to_free_swap(cpu, p);
            }
            if page_anon(p) && p.mapcount() == 1 && p.refcount() == 1 {
                self.page_move_anon_rmap(p, vma);
                return reuse(vmf);
            }
            // The pin wp_page_copy copies from, taken while the entry maps the page.
            p.get();
        }
        vmf.pte.unlock();
        self.wp_page_copy(cpu, mm, vmf, old)
    }

    /// `__wp_can_reuse_large_anon_folio` (Linux 6.16+): a write to one page of a large
    /// anonymous folio reuses it in place when the folio is exclusive to this address space
    /// — every reference is a mapping and every mapping is a PTE of this VMA in the table the
    /// fault holds locked (Linux reads the same from the folio's mm ids) — and more than
    /// one page of it is mapped (a folio down to one mapped page is copied from, so the
    /// rest of it can be freed). The folio is never in the swap cache (reclaim splits it
    /// first).
    fn wp_can_reuse_large_anon_folio(&self, folio: &Page, vmf: &VmFault<'_>) -> bool {
        if folio.entire_mapcount() != 0 || folio.test(crate::mm::swap_state::PG_SWAPCACHE) {
            return false;
        }
        let nr = folio.folio_nr_pages();
        let mapped: i32 = (0..nr).map(|i| folio.folio_page(i).mapcount()).sum();
        if mapped <= 1 || folio.refcount() != mapped {
            return false;
        }
        let vma = vmf.vma;
        let head = self.page_to_pfn(folio);
        let mut here = 0;
        for i in 0..nr {
            let Some(a) = vma.pgoff_address(folio.index() + i) else {
                continue;
            };
            if let Some(pte) = vmf.pte.get_at(a) {
                if pte.is_present() && pte.pfn() == head + i {
                    here += 1;
                }
            }
        }
        here == mapped && folio.refcount() == mapped
    }

    /// `wp_page_copy`: a private copy (a zeroed page in place of the zero page). The old
    /// page comes pinned by the caller (taken under the PTE lock) and stays pinned while the
    /// new one is allocated (allocation may reclaim, and reclaim
    /// may unmap the old page); the entry is replaced only if it is unchanged, through a
    /// gather, so the old page's mapping reference goes only after every TLB let it go.
    fn wp_page_copy(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vmf: &mut VmFault<'_>,
        old: Option<&Page>,
    ) -> FaultResult {
        let vma = vmf.vma;
        let Some(av) = vma.anon_vma else {
            if let Some(p) = old {
                self.folio_put(cpu, p); // the pin
            }
            return Err(VmFaultError::Oom); // anon_vma_prepare ran in handle_mm_fault
        };
        let new = match self.alloc_user_page(cpu, old.is_none()) {
            Ok(n) => n,
            Err(e) => {
                if let Some(p) = old {
                    self.folio_put(cpu, p); // the pin
                }
                return Err(e);
            }
        };
        let pfn = self.page_to_pfn(new);
        if let Some(p) = old {
            self.copy_highpage(pfn, self.page_to_pfn(p));
        }
        let entry = Self::mk_pte(pfn, vma.vm_page_prot, vma, true);
        let mut tlb = MmuGather::new(self, cpu, &mm.pt);
        vmf.pte.lock();
        // ptep_clear_flush + set_pte_at, if pte_same.
        if vmf.pte.replace(vmf.orig_pte, entry, &mut tlb).is_err() {
            // Reclaim or another fault got there first: let the access retry.
            vmf.pte.unlock();
            tlb.finish();
            self.__free_pages(cpu, new, 0);
            if let Some(p) = old {
                self.folio_put(cpu, p); // the pin
            }
            return Ok(FaultKind::Minor);
        }
        self.page_add_new_anon_rmap(cpu, new, av, vmf.pgoff);
        mm.add_counter(MM_ANONPAGES, 1);
        self.lru_cache_add(cpu, new);
        if let Some(p) = old {
            mm.add_counter(
                if page_anon(p.compound_head()) {
                    MM_ANONPAGES
                } else {
                    MM_FILEPAGES
                },
                -1,
            );
            self.page_remove_rmap(cpu, p);
            tlb.remove_page(p);
        }
        vmf.pte.unlock();
        tlb.finish();
        if let Some(p) = old {
            self.folio_put(cpu, p); // the pin
        }
        Ok(FaultKind::Minor)
    }

    /// `zap_page_range` / `unmap_page_range` with its own gather, for callers that free no
    /// page tables (`MADV_DONTNEED`).
    pub(crate) fn zap_page_range(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, start: u64, end: u64) {
        let mut tlb = MmuGather::new(self, cpu, &mm.pt);
        self.unmap_page_range(&mut tlb, mm.tables(), start, end);
        tlb.finish();
    }

    /// `unmap_page_range` → `zap_pte_range`: clear every PTE in `[start, end)`. Present
    /// entries go in batches (`zap_present_ptes`): a run of entries mapping consecutive pages
    /// of one large folio ([`Kernel::folio_pte_batch`], stopping at the folio's end, the
    /// table's end and `end`) is cleared together, then — once for the batch — a dirty bit in
    /// any of them dirties the file folio, the pages lose their mappings
    /// (`folio_remove_rmap_ptes`) and the folio's references go to the gather as one entry,
    /// to be dropped after the flush; the owner's RSS counters drop; swap entries give their
    /// slot reference back.
    pub(crate) fn unmap_page_range<'k>(
        &'k self,
        tlb: &mut MmuGather<'k>,
        mm: MmTables<'_>,
        start: u64,
        end: u64,
    ) {
        let cpu = tlb.cpu();
        let (mut anon, mut file, mut swapents) = (0i64, 0i64, 0i64);
        let mut swap_entries: alloc::vec::Vec<crate::mm::swapfile::SwpEntry> =
            alloc::vec::Vec::new();
        // zap_pmd_range: huge entries first (whole ones zapped, partial ones split).
        self.zap_huge_pmds(tlb, mm, start, end);
        {
            let mut c = self.pte_cursor(mm.pt, start, end);
            while let Some((_, ptent)) = c.next_entry() {
                // Under the table's lock only an MMU changes a present entry, and only its
                // Accessed and Dirty bits: what `ptent` says of the frame holds.
                let page = if ptent.is_present() {
                    self.vm_normal_page(ptent)
                } else {
                    None
                };
                let Some(page) = page.filter(|p| p.mapcount() > 0) else {
                    // A swap entry, the zero page, or (never for entries we installed) a
                    // page not counted as mapped.
                    let old = c.clear(tlb);
                    if let Some(e) = crate::mm::swapfile::SwpEntry::from_pte(old) {
                        swap_entries.push(e);
                        swapents += 1;
                    }
                    continue;
                };
                let folio = page.compound_head();
                let max_nr = c.batch_limit();
                let nr = if folio.folio_test_large() && max_nr > 1 {
                    self.folio_pte_batch(folio, &c, ptent, max_nr, 0).nr
                } else {
                    1
                };
                // zap_present_folio_ptes.
                let old = if nr == 1 {
                    c.clear(tlb)
                } else {
                    c.clear_ptes(tlb, nr)
                };
                if page_anon(folio) {
                    anon += nr as i64;
                } else {
                    if old.dirty() && self.page_is_file(folio) {
                        self.set_page_dirty(cpu, folio);
                    }
                    file += nr as i64;
                }
                if nr == 1 {
                    self.page_remove_rmap(cpu, page);
                } else {
                    let first = self.page_to_pfn(page).0 - self.page_to_pfn(folio).0;
                    self.folio_remove_rmap_ptes(cpu, folio, first, nr);
                }
                tlb.remove_folio_pages(folio, nr as u32);
                c.skip_batch(nr);
            }
        }
        for (member, n) in [
            (MM_ANONPAGES, anon),
            (MM_FILEPAGES, file),
            (crate::mm::mm_types::MM_SWAPENTS, swapents),
        ] {
            if n != 0 {
                mm.add_counter(member, -n);
            }
        }
        for e in swap_entries {
            self.free_swap_and_cache(cpu, e);
        }
    }

    /// `copy_page_range` for fork: the child gets the parent's PTEs of `vma`; each page gains
    /// a mapping and a reference, and in a COW mapping writable entries are write-protected in
    /// the parent (and so in the child). Present entries go in batches
    /// (`copy_present_ptes`): a run mapping consecutive pages of one large folio, alike but
    /// for their Accessed and write bits ([`Kernel::folio_pte_batch`] with
    /// [`FPB_RESPECT_DIRTY`], as for any private mapping), takes its references at once
    /// (`folio_ref_add`), is write-protected together (`wrprotect_ptes`) when any of it was
    /// writable, and is counted in the rmap at once (`folio_dup_file_rmap_ptes` /
    /// `folio_try_dup_anon_rmap_ptes`) as the child's run of entries is set (`set_ptes`).
    /// Only where a fault could not fill them in again (`vma_needs_copy`): a VMA with
    /// anonymous pages (an `anon_vma`) or of raw pfns. Shared mappings and private file
    /// mappings never written (text, rodata) are not copied: the child faults them in from
    /// the page cache, with fault-around, as Linux's child does — fork is lighter, the child
    /// takes those faults.
    pub(crate) fn copy_page_range(
        &self,
        cpu: &CpuGuard<'_>,
        dst: &MmStruct,
        src: &MmStruct,
        vma: &VmArea,
    ) -> Result<(), Errno> {
        if vma.vm_flags.contains(VmFlags::VM_SHARED) || !vma_needs_copy(vma) {
            return Ok(());
        }
        let cow = vma.is_cow_mapping();
        // copy_pmd_range: huge entries as huge entries (copy_huge_pmd).
        self.copy_huge_pmds(cpu, dst, src, vma)?;
        // (address, the child's first entry, entries in the run): a run's entries map
        // consecutive frames with the first one's bits.
        let mut entries: Vec<(u64, Pte, u64)> = Vec::new();
        {
            let mut tlb = MmuGather::new(self, cpu, &src.pt);
            let mut c = self.pte_cursor(&src.pt, vma.vm_start, vma.vm_end);
            while let Some((va, pte)) = c.next_entry() {
                if !pte.is_present() {
                    // copy_nonpresent_pte: the child shares the swap slot.
                    if crate::mm::swapfile::SwpEntry::from_pte(pte).is_some() {
                        entries.push((va, pte, 1));
                    }
                    continue;
                }
                let Some(page) = self.vm_normal_page(pte) else {
                    // The zero page or a raw pfn: no folio to count (never writable in a
                    // COW mapping; write-protected if it were).
                    let v = if cow && pte.writable() {
                        c.update(&mut tlb, |p| p.wrprotect()).wrprotect()
                    } else {
                        pte
                    };
                    entries.push((va, v, 1));
                    continue;
                };
                let folio = page.compound_head();
                let max_nr = c.batch_limit();
                if !folio.folio_test_large() || max_nr == 1 {
                    // copy_present_pte: the common small-folio case kept apart from the
                    // batching, as Linux keeps it. Write-protected with whatever Dirty the
                    // MMU set up to now; the folio pinned while the table lock keeps
                    // reclaim from unmapping it.
                    let v = if cow && pte.writable() {
                        c.update(&mut tlb, |p| p.wrprotect()).wrprotect()
                    } else {
                        pte
                    };
                    folio.get();
                    entries.push((va, v, 1));
                    continue;
                }
                let batch = self.folio_pte_batch(folio, &c, pte, max_nr, FPB_RESPECT_DIRTY);
                let nr = batch.nr;
                // __copy_present_ptes: the run's bits with the write bit of any of it.
                let mut v = if batch.any_writable {
                    Pte(pte.0 | PteFlags::RW.bits())
                } else {
                    pte
                };
                if cow && v.writable() {
                    // wrprotect_ptes: whatever Dirty the MMU set up to now comes along.
                    if c.wrprotect_ptes(&mut tlb, nr) {
                        v = Pte(v.0 | PteFlags::DIRTY.bits());
                    }
                    v = v.wrprotect();
                }
                // Pin the pages (their folio's references, the child's mappings to be) while
                // the table lock keeps reclaim from unmapping them.
                folio.ref_add(nr as i32);
                entries.push((va, v, nr));
                c.skip_batch(nr);
            }
            drop(c);
            tlb.finish();
        }
        let unpin_rest = |rest: &[(u64, Pte, u64)]| {
            for &(_, pte, nr) in rest {
                if pte.is_present() {
                    if let Some(p) = self.vm_normal_page(pte) {
                        self.folio_put_refs(cpu, p, nr as u32);
                    }
                }
            }
        };
        let mut d = self.pte_cursor(&dst.pt, vma.vm_start, vma.vm_end);
        for (i, &(va, pte, nr)) in entries.iter().enumerate() {
            if let Err(err) = d.seek_alloc(cpu, va) {
                unpin_rest(&entries[i..]);
                return Err(err);
            }
            if let Some(e) = crate::mm::swapfile::SwpEntry::from_pte(pte) {
                self.swap_duplicate(e, 1);
                dst.add_counter(crate::mm::mm_types::MM_SWAPENTS, 1);
                d.install(Pte(0), pte)
                    .expect("a new address space's entry is none");
                continue;
            }
            if let Some(p) = self.vm_normal_page(pte) {
                let folio = p.compound_head();
                if nr == 1 {
                    self.page_add_rmap(cpu, p);
                } else {
                    let first = self.page_to_pfn(p).0 - self.page_to_pfn(folio).0;
                    self.folio_dup_rmap_ptes(cpu, folio, first, nr);
                }
                dst.add_counter(
                    if page_anon(folio) {
                        MM_ANONPAGES
                    } else {
                        MM_FILEPAGES
                    },
                    nr as i64,
                );
            }
            // The child's entries start old, as pte_mkold in copy_present_pte does for the
            // child of a COW mapping (the Accessed bit belongs to the parent's history). The
            // pins become the child's mapping references.
            if nr == 1 {
                d.install(Pte(0), pte.mkold())
            } else {
                d.install_range(va, pte.mkold(), nr).map_err(|_| pte)
            }
            .expect("a new address space's entries are none");
        }
        Ok(())
    }
}

/// `FPB_RESPECT_DIRTY`: a batch keeps to entries whose Dirty bit is the first one's.
pub(crate) const FPB_RESPECT_DIRTY: u32 = 1 << 0;
/// `FPB_RESPECT_WRITE`: a batch keeps to entries whose write bit is the first one's.
pub(crate) const FPB_RESPECT_WRITE: u32 = 1 << 1;

/// What [`Kernel::folio_pte_batch`] found: the entries of the batch, and whether any of them
/// was writable (`any_writable`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct PteBatch {
    /// Entries in the batch (at least 1: the first).
    pub(crate) nr: u64,
    /// Some entry of the batch has the write bit.
    pub(crate) any_writable: bool,
}

impl Kernel {
    /// `folio_pte_batch` (`mm/internal.h`): how many consecutive present entries, from the
    /// one `c` is on (whose value the caller read under the lock as `pte`, mapping a page of
    /// the large folio `folio`), map consecutive pages of `folio` with the same bits — the
    /// Accessed bit never compared, the Dirty and write bits only when `flags` asks
    /// ([`FPB_RESPECT_DIRTY`], [`FPB_RESPECT_WRITE`]; mmkit keeps no soft-dirty bit in PTEs).
    /// The batch ends at the folio's last page, at `max_nr` entries (the caller's range and
    /// the PTE table's end: [`PteCursor::batch_limit`]) and at the first entry that differs;
    /// an entry mapping the frame after the folio (another folio, or none) always differs.
    pub(crate) fn folio_pte_batch(
        &self,
        folio: &Page,
        c: &PteCursor<'_>,
        pte: Pte,
        max_nr: u64,
        flags: u32,
    ) -> PteBatch {
        let folio_end = self.page_to_pfn(folio).0 + folio.folio_nr_pages();
        debug_assert!(pte.is_present() && pte.pfn().0 < folio_end && max_nr >= 1);
        let max_nr = max_nr
            .min(folio_end.saturating_sub(pte.pfn().0))
            .min(c.batch_limit())
            .max(1);
        let mut ignored = PteFlags::ACCESSED.bits();
        if flags & FPB_RESPECT_DIRTY == 0 {
            ignored |= PteFlags::DIRTY.bits();
        }
        if flags & FPB_RESPECT_WRITE == 0 {
            ignored |= PteFlags::RW.bits();
        }
        let mut batch = PteBatch {
            nr: 1,
            any_writable: pte.writable(),
        };
        // The value the next entry must have: the same bits, the next frame.
        let mut expected = (pte.0 & !ignored) + PAGE_SIZE;
        while batch.nr < max_nr {
            let p = c.get_next(batch.nr);
            if p.0 & !ignored != expected {
                break;
            }
            batch.any_writable |= p.writable();
            batch.nr += 1;
            expected += PAGE_SIZE;
        }
        batch
    }
}

/// `vma_needs_copy`: whether fork must copy `src`'s page-table entries — it holds anonymous
/// pages (an `anon_vma`: the child's copies could come from nowhere else) or raw pfns
/// (`VM_PFNMAP`/`VM_MIXEDMAP`: no `struct page` behind them for a fault to find). Every other
/// entry a fault fills in again from the page cache.
pub(crate) fn vma_needs_copy(src: &VmArea) -> bool {
    src.vm_flags
        .intersects(VmFlags::VM_PFNMAP | VmFlags::VM_MIXEDMAP)
        || src.anon_vma.is_some()
}
