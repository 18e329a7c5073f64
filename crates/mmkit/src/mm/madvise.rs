//! `madvise` (`mm/madvise.c`): `MADV_DONTNEED` (`madvise_dontneed_single_vma` →
//! `zap_page_range`), `MADV_WILLNEED` (`madvise_willneed`: `vfs_fadvise` readahead for file
//! mappings, `swapin_walk_pmd_entry` → `read_swap_cache_async` for the swapped-out pages of
//! anonymous ones) and `MADV_FREE` (`madvise_free_single_vma` → `madvise_free_pte_range`,
//! `folio_mark_lazyfree`).
//!
//! `MADV_FREE` makes private anonymous pages *lazily freed*: their PTEs are cleaned and made
//! old, the pages lose `PG_dirty` and `PG_swapbacked` and move to the inactive file LRU
//! (`pglazyfree`). Reclaim then drops a page that is still clean without writing it anywhere
//! (`pglazyfreed`), so a later read finds zeroes; a page written again before that is dirty
//! in its PTE, so `try_to_unmap` makes it swap-backed again and it keeps its bytes. Pages
//! another process maps too, and swap-cache pages whose slot cannot be given up, are left
//! alone; swap entries in the range are freed.

use crate::addr::{align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::pgtable::{Pte, PteFlags};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, MM_SWAPENTS, TASK_SIZE};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{Page, PageFlags};
use crate::mm::rmap::page_anon;
use crate::mm::swap_state::PG_SWAPCACHE;
use crate::mm::swapfile::SwpEntry;
use crate::Kernel;
use alloc::vec::Vec;

/// `MADV_WILLNEED`.
pub const MADV_WILLNEED: u32 = 3;
/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: u32 = 4;
/// `MADV_FREE`.
pub const MADV_FREE: u32 = 8;
/// `MADV_HUGEPAGE`.
pub const MADV_HUGEPAGE: u32 = 14;
/// `MADV_NOHUGEPAGE`.
pub const MADV_NOHUGEPAGE: u32 = 15;

/// `madvise`'s argument check: a page-aligned start and a range inside user space (`EINVAL`
/// otherwise); returns the page-aligned end.
pub(crate) fn madvise_range(start: u64, len: u64) -> Result<u64, Errno> {
    if start & (PAGE_SIZE - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    start
        .checked_add(align_up(len, PAGE_SIZE))
        .filter(|&e| e <= TASK_SIZE)
        .ok_or(Errno::EINVAL)
}

impl Kernel {
    /// `madvise(start, len, advice)` for the advice this kernel implements; `EINVAL` for
    /// any other, as Linux answers advice it does not know.
    pub fn madvise(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
        advice: u32,
    ) -> Result<(), Errno> {
        match advice {
            MADV_DONTNEED => self.madvise_dontneed(cpu, mm, start, len),
            MADV_WILLNEED => self.madvise_willneed(cpu, mm, start, len),
            MADV_FREE => self.madvise_free(cpu, mm, start, len),
            MADV_HUGEPAGE | MADV_NOHUGEPAGE => {
                self.hugepage_madvise(cpu, mm, start, len, advice == MADV_HUGEPAGE)
            }
            crate::mm::khugepaged::MADV_COLLAPSE => self.madvise_collapse(cpu, mm, start, len),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `madvise(MADV_DONTNEED)`: drop the pages of `[start, start + len)` — private memory
    /// reads back as zeroes (or the file's bytes) afterwards. `EINVAL` for an unaligned start
    /// or locked/PFN-mapped memory, `ENOMEM` when the range is not fully mapped (after
    /// zapping what is).
    pub fn madvise_dontneed(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let end = madvise_range(start, len)?;
        let allowed = |v: &VmArea| {
            !v.vm_flags
                .intersects(VmFlags::VM_LOCKED | VmFlags::VM_PFNMAP)
        };
        self.madvise_walk_vmas(mm, start, end, allowed, |k, mm, lo, hi| {
            k.zap_page_range(cpu, mm, lo, hi);
            Ok(())
        })
    }

    /// `madvise(MADV_WILLNEED)`: start reading what `[start, start + len)` will need,
    /// without mapping it: the file pages behind a file mapping into the page cache, the
    /// swapped-out pages of anonymous memory into the swap cache (so touching them later is
    /// a minor fault). `EINVAL` for an unaligned start, `ENOMEM` when the range is not fully
    /// mapped (after doing what is).
    pub fn madvise_willneed(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let end = madvise_range(start, len)?;
        self.madvise_walk_vmas(
            mm,
            start,
            end,
            |_| true,
            |k, mm, lo, hi| {
                let Some(v) = mm.vma_lookup(lo) else {
                    return Ok(());
                };
                match &v.vm_file {
                    Some(f) => {
                        let inode = f.inode.clone();
                        let first = v.linear_page_index(lo);
                        k.page_cache_readahead(cpu, &inode, first, (hi - lo) >> PAGE_SHIFT)?;
                    }
                    None => {
                        k.swapin_walk_range(cpu, mm, lo, hi);
                        // Push the new pages onto the LRU now.
                        k.lru_add_drain(cpu);
                    }
                }
                Ok(())
            },
        )
    }

    /// `swapin_walk_pmd_entry`: read every swap entry among the PTEs of `[lo, hi)` into the
    /// swap cache (`read_swap_cache_async`). The entries are collected under the table
    /// locks and read after them, as Linux drops the lock around each read; a slot freed or
    /// already being read meanwhile is skipped.
    fn swapin_walk_range(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, lo: u64, hi: u64) {
        let mut entries: Vec<SwpEntry> = Vec::new();
        {
            let mut c = self.pte_cursor(&mm.pt, lo, hi);
            while let Some((_, pte)) = c.next_entry() {
                if !pte.is_present() {
                    entries.extend(SwpEntry::from_pte(pte));
                }
            }
        }
        for e in entries {
            if let Some(page) = self.read_swap_cache_async(cpu, e) {
                self.__free_pages(cpu, page, 0); // the swap cache keeps it
            }
        }
    }

    /// `madvise(MADV_FREE)`: mark the private anonymous pages of `[start, start + len)` lazily
    /// freed (see the module doc). `EINVAL` for an unaligned start or a VMA that is not
    /// private anonymous memory or is locked; `ENOMEM` when the range is not fully mapped
    /// (after doing what is).
    pub fn madvise_free(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let end = madvise_range(start, len)?;
        // madvise_free_single_vma / can_madv_lru_vma.
        let allowed = |v: &VmArea| {
            v.is_anonymous()
                && v.vm_special.is_none()
                && !v
                    .vm_flags
                    .intersects(VmFlags::VM_LOCKED | VmFlags::VM_PFNMAP)
        };
        // Pages still in this CPU's LRU add batch must be on their lists to be moved.
        self.lru_add_drain(cpu);
        self.madvise_walk_vmas(mm, start, end, allowed, |k, mm, lo, hi| {
            k.madvise_free_pte_range(cpu, mm, lo, hi);
            Ok(())
        })
    }

    /// `madvise(MADV_HUGEPAGE / MADV_NOHUGEPAGE)` (`hugepage_madvise` through
    /// `madvise_update_vma`): set `VM_HUGEPAGE` (clearing `VM_NOHUGEPAGE`) or the reverse on
    /// the VMAs of the range, splitting them at its edges. THPs already mapped stay; the
    /// policy applies to the next faults. `EINVAL` for an unaligned start, `ENOMEM` when the
    /// range is not fully mapped (after doing what is).
    pub fn hugepage_madvise(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
        huge: bool,
    ) -> Result<(), Errno> {
        let end = madvise_range(start, len)?;
        self.madvise_walk_vmas(
            mm,
            start,
            end,
            |_| true,
            |k, mm, lo, hi| {
                let Some(id) = mm.find_vma_id(lo).filter(|&id| mm.vma(id).vm_start <= lo) else {
                    return Ok(());
                };
                let v = mm.vma(id);
                let new = if huge {
                    (v.vm_flags - VmFlags::VM_NOHUGEPAGE) | VmFlags::VM_HUGEPAGE
                } else {
                    (v.vm_flags - VmFlags::VM_HUGEPAGE) | VmFlags::VM_NOHUGEPAGE
                };
                if new != v.vm_flags {
                    k.vma_modify_flags(cpu, mm, id, lo, hi, new)?;
                }
                if huge {
                    // The range may hold THPs now: khugepaged is to look at it.
                    if let Some(id) = mm.find_vma_id(lo) {
                        k.khugepaged_enter_vma(mm, id);
                    }
                }
                Ok(())
            },
        )
    }

    /// `madvise_walk_vmas`: every VMA meeting `[start, end)` must pass `allowed` (else
    /// `EINVAL`, nothing done); then `visit(lo, hi)` runs on each one's part of the range (an
    /// error from it ends the walk with that error), and a hole in the range is `ENOMEM`
    /// afterwards.
    fn madvise_walk_vmas(
        &self,
        mm: &mut MmStruct,
        start: u64,
        end: u64,
        allowed: impl Fn(&VmArea) -> bool,
        mut visit: impl FnMut(&Self, &mut MmStruct, u64, u64) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let vmas: Vec<(u64, u64)> = mm
            .vmas
            .iter_from(start + 1)
            .take_while(|v| v.vm_start < end)
            .map(|v| allowed(v).then_some((v.vm_start, v.vm_end)))
            .collect::<Option<_>>()
            .ok_or(Errno::EINVAL)?;
        let mut a = start;
        let mut hole = false;
        for (vs, ve) in vmas {
            hole |= vs > a;
            let (lo, hi) = (vs.max(start), ve.min(end));
            visit(self, mm, lo, hi)?;
            a = hi;
        }
        if hole || a < end {
            Err(Errno::ENOMEM)
        } else {
            Ok(())
        }
    }

    /// `madvise_free_pte_range`: free the swap entries of `[lo, hi)`; clean and age the PTEs
    /// of pages only this mapping has, then mark those pages lazily freed.
    fn madvise_free_pte_range(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, lo: u64, hi: u64) {
        // madvise_free_huge_pmd is not done: huge entries are split, their pages freed lazily
        // as small pages.
        self.split_huge_pmd_range(cpu, mm, lo, hi);
        // A large folio's pages are freed lazily one by one only once it is split (Linux
        // 6.8's madvise_free_pte_range splits it; one that cannot be split now is left).
        let mut large: Vec<&Page> = Vec::new();
        {
            let mut c = self.pte_cursor(&mm.pt, lo, hi);
            while let Some((_, pte)) = c.next_entry() {
                let Some(page) = self.vm_normal_page(pte).filter(|_| pte.is_present()) else {
                    continue;
                };
                let folio = page.compound_head();
                if folio.folio_test_large() && !large.iter().any(|f| core::ptr::eq(*f, folio)) {
                    folio.get();
                    large.push(folio);
                }
            }
        }
        for folio in large {
            if folio.folio_test_large() && page_anon(folio) && folio.trylock() {
                let _ = self.split_folio_to_list(cpu, folio, None);
                folio.unlock();
            }
            self.folio_put(cpu, folio);
        }
        let mut swap: Vec<SwpEntry> = Vec::new();
        let mut pages: Vec<&Page> = Vec::new();
        {
            let mut tlb = MmuGather::new(self, cpu, &mm.pt);
            let mut c = self.pte_cursor(&mm.pt, lo, hi);
            while let Some((_, pte)) = c.next_entry() {
                if !pte.is_present() {
                    if let Some(e) = SwpEntry::from_pte(pte) {
                        c.clear(&mut tlb);
                        swap.push(e);
                    }
                    continue;
                }
                let Some(page) = self.vm_normal_page(pte) else {
                    continue;
                };
                if !page_anon(page)
                    || page.mapcount() != 1
                    || page.test(PageFlags::TAIL)
                    || page.folio_test_large()
                {
                    continue;
                }
                // Clean and old, on whatever the MMU set meanwhile.
                let ad = (PteFlags::ACCESSED | PteFlags::DIRTY).bits();
                c.update(&mut tlb, |p| Pte(p.0 & !ad));
                page.get();
                pages.push(page);
            }
            drop(c);
            tlb.finish();
        }
        if !swap.is_empty() {
            mm.add_counter(MM_SWAPENTS, -(swap.len() as i64));
            for e in swap {
                self.free_swap_and_cache(cpu, e);
            }
        }
        // A swap-cache page gives its slot up first, or is left as it is.
        let mut lazy: Vec<&Page> = Vec::with_capacity(pages.len());
        for &p in &pages {
            if p.test(PG_SWAPCACHE) && !self.try_to_free_swap(cpu, p) {
                continue;
            }
            p.clear(PageFlags::DIRTY);
            lazy.push(p);
        }
        self.mark_pages_lazyfree(cpu, &lazy);
        for p in pages {
            self.__free_pages(cpu, p, 0);
        }
    }
}
