//! `struct mmu_gather` (`mm/mmu_gather.c`, `include/asm-generic/tlb.h`): flush before free.
//!
//! Whoever takes a translation away (clears a PTE, write-protects it, clears its Accessed or
//! Dirty bit, frees a page table) records it in a gather: the page-table cursor does so for
//! every change that needs it, `free_pgtables` hands it the tables, and the caller hands it the
//! pages whose mapping reference must be dropped (`tlb_remove_page`). [`MmuGather::flush`]
//! (`tlb_flush_mmu`) then, in this order:
//!
//! 1. flushes the address space from every CPU's TLB (the `tlb_gen` protocol of
//!    `arch/x86/mm/tlb.c`),
//! 2. tells the [`Platform`](crate::Platform) which range and which frames lost their
//!    translations ([`TlbFlush`]) — a software MMU needs nothing more, a hardware one whose
//!    translations the generation cannot reach (a shadow-paging hypervisor) drops them there,
//! 3. only then drops the gathered pages' references and frees the gathered tables.
//!
//! A huge (2 MiB PMD) translation is recorded as one (`tlb_remove_pmd_tlb_entry`): the flush
//! covers its 2 MiB and tells the platform its first frame in [`TlbFlush::huge_frames`]; the
//! large folio it mapped is gathered as one page and freed whole, at its order, after the
//! flush.
//!
//! A batch of PTEs that mapped consecutive pages of one large folio (`zap_present_ptes`) is
//! gathered as one entry holding all its references (`__tlb_remove_folio_pages`), dropped
//! together after the flush (`folios_put_refs`).
//!
//! The batches are fixed arrays (Linux's `mmu_gather_batch`); a full one flushes early. A page
//! taken out of a PTE reaches the allocator only through a gather, so no CPU and no MMU can
//! still reach a frame when it is freed. [`MmuGather::finish`] (`tlb_finish_mmu`) flushes what
//! is left; dropping an unfinished gather finishes it too.
//!
//! A platform whose MMU caches page tables themselves beyond the flush (a shadow-paging
//! hypervisor, see [`Platform::defer_table_free`](crate::Platform::defer_table_free)) gets
//! Linux's `MMU_GATHER_RCU_TABLE_FREE` treatment: step 3 parks the tables (`tlb_remove_table`)
//! and [`Kernel::tlb_remove_table_sync`] frees them once the platform has dropped what it
//! cached (its grace period, where Linux waits for RCU or an IPI round).

use crate::addr::Pfn;
use crate::arch::x86_64::pgtable::{PgTable, Pte};
use crate::cpu::CpuGuard;
use crate::mm::list::PageList;
use crate::mm::page::Page;
use crate::mm::swap_state::PG_SWAPCACHE;
use crate::Kernel;
use core::mem::MaybeUninit;

/// Pages (and frames) gathered before an early flush (`MAX_GATHER_BATCH` order of size).
const BATCH: usize = 256;
/// Page tables gathered before an early flush.
const TABLE_BATCH: usize = 32;
/// Huge (2 MiB) translations gathered before an early flush.
const HUGE_BATCH: usize = 16;

/// What a flush tells the platform: the address space, the range flushed, and the frames
/// whose translations in it were taken away (data frames from PTEs, and page tables freed).
/// Called after every CPU's TLB was flushed and before any of those frames is freed.
#[derive(Debug)]
pub struct TlbFlush<'a> {
    /// The address space (`PgTable::ctx_id`).
    pub ctx_id: u64,
    /// Its top-level table (what CR3 holds when it runs).
    pub pgd: Pfn,
    /// First address flushed.
    pub start: u64,
    /// One past the last address flushed (saturating at the top of the address space).
    pub end: u64,
    /// Frames some translation in the range pointed to before the change.
    pub frames: &'a [Pfn],
    /// First frames of 2 MiB (huge PMD) translations taken away: each stands for itself and
    /// the 511 frames after it.
    pub huge_frames: &'a [Pfn],
    /// Page-table pages taken out of the tables (freed once this returns).
    pub tables: &'a [Pfn],
    /// The whole address space is going away (`tlb->fullmm`).
    pub fullmm: bool,
}

/// `struct mmu_gather`. See the module doc.
#[must_use = "a gather holds pages until it is finished (or dropped)"]
pub struct MmuGather<'a> {
    k: &'a Kernel,
    cpu: &'a CpuGuard<'a>,
    pt: &'a PgTable,
    fullmm: bool,
    start: u64,
    end: u64,
    need_flush: bool,
    /// Frames recorded; the first `nr_frames` are initialized (the arrays are left
    /// uninitialized so that a gather costs nothing to set up on a fault path).
    frames: [MaybeUninit<Pfn>; BATCH],
    nr_frames: usize,
    /// First frames of huge translations recorded.
    huge: [Pfn; HUGE_BATCH],
    nr_huge: usize,
    /// Folios to put; the first `nr_pages` are initialized.
    pages: [MaybeUninit<&'a Page>; BATCH],
    /// The references to drop on each of them (the PTEs a batch cleared: Linux's
    /// `ENCODED_PAGE_BIT_NR_PAGES_NEXT` entry); the first `nr_pages` are initialized.
    refs: [MaybeUninit<u32>; BATCH],
    nr_pages: usize,
    tables: [Pfn; TABLE_BATCH],
    nr_tables: usize,
    /// Flushes done (TLB generation bumps), for tests and statistics.
    flushes: u32,
}

impl<'a> MmuGather<'a> {
    /// `tlb_gather_mmu`: a gather for changes to `pt`.
    #[inline]
    pub fn new(k: &'a Kernel, cpu: &'a CpuGuard<'a>, pt: &'a PgTable) -> Self {
        Self::with_mode(k, cpu, pt, false)
    }

    /// `tlb_gather_mmu_fullmm`: for tearing a whole address space down.
    #[inline]
    pub fn new_fullmm(k: &'a Kernel, cpu: &'a CpuGuard<'a>, pt: &'a PgTable) -> Self {
        Self::with_mode(k, cpu, pt, true)
    }

    #[inline]
    fn with_mode(k: &'a Kernel, cpu: &'a CpuGuard<'a>, pt: &'a PgTable, fullmm: bool) -> Self {
        MmuGather {
            k,
            cpu,
            pt,
            fullmm,
            start: u64::MAX,
            end: 0,
            need_flush: false,
            frames: [const { MaybeUninit::uninit() }; BATCH],
            nr_frames: 0,
            huge: [Pfn(0); HUGE_BATCH],
            nr_huge: 0,
            pages: [const { MaybeUninit::uninit() }; BATCH],
            refs: [const { MaybeUninit::uninit() }; BATCH],
            nr_pages: 0,
            tables: [Pfn(0); TABLE_BATCH],
            nr_tables: 0,
            flushes: 0,
        }
    }

    /// The address space this gather flushes.
    #[inline]
    pub fn pt(&self) -> &'a PgTable {
        self.pt
    }

    /// The CPU doing the work.
    #[inline]
    pub fn cpu(&self) -> &'a CpuGuard<'a> {
        self.cpu
    }

    /// TLB flushes this gather has done so far.
    pub fn flushes(&self) -> u32 {
        self.flushes
    }

    #[inline]
    fn extend(&mut self, lo: u64, hi: u64) {
        self.start = self.start.min(lo);
        self.end = self.end.max(hi);
        self.need_flush = true;
    }

    /// `tlb_remove_tlb_entry`: the entry for `va` held `old`, a translation a TLB may cache.
    /// Called by the page-table cursor.
    #[inline]
    pub(crate) fn record(&mut self, pt: &PgTable, va: u64, old: Pte) {
        debug_assert!(
            core::ptr::eq(pt, self.pt),
            "BUG: a gather of one address space used on another's PTEs"
        );
        if self.nr_frames == BATCH {
            self.flush();
        }
        self.extend(va, va.saturating_add(crate::PAGE_SIZE));
        self.frames[self.nr_frames].write(old.pfn());
        self.nr_frames += 1;
    }

    /// `tlb_remove_tlb_entries`: the `nr` entries from `va` held translations to `nr`
    /// consecutive frames from `first`'s (a batch of one folio's pages).
    #[inline]
    pub(crate) fn record_range(&mut self, pt: &PgTable, va: u64, first: Pte, nr: u64) {
        debug_assert!(
            core::ptr::eq(pt, self.pt),
            "BUG: a gather of one address space used on another's PTEs"
        );
        let pfn = first.pfn();
        let mut i = 0;
        while i < nr {
            if self.nr_frames == BATCH {
                self.flush();
            }
            // As many as fit before the next early flush.
            let n = (nr - i).min((BATCH - self.nr_frames) as u64);
            let lo = va + (i << crate::PAGE_SHIFT);
            self.extend(lo, lo.saturating_add(n << crate::PAGE_SHIFT));
            for j in 0..n {
                self.frames[self.nr_frames].write(Pfn(pfn.0 + i + j));
                self.nr_frames += 1;
            }
            i += n;
        }
    }

    /// `tlb_remove_pmd_tlb_entry`: the huge entry for the 2 MiB at `haddr` held `old`.
    /// Called by the PMD guard.
    pub(crate) fn record_huge(&mut self, pt: &PgTable, haddr: u64, old: Pte) {
        debug_assert!(
            core::ptr::eq(pt, self.pt),
            "BUG: a gather of one address space used on another's PMDs"
        );
        if self.nr_huge == HUGE_BATCH {
            self.flush();
        }
        self.extend(
            haddr,
            haddr.saturating_add(crate::arch::x86_64::pgtable::HPAGE_PMD_SIZE),
        );
        self.huge[self.nr_huge] = old.pfn();
        self.nr_huge += 1;
    }

    /// `__tlb_remove_page`: drop the mapping's reference on `page` after the flush. The
    /// caller already took the page out of a PTE through a cursor with this gather (which
    /// recorded its translation) and updated its rmap.
    #[inline]
    pub fn remove_page(&mut self, page: &'a Page) {
        self.remove_folio_pages(page, 1);
    }

    /// `__tlb_remove_folio_pages`: drop the references of `nr` mappings of pages of `page`'s
    /// folio (a batch of PTEs cleared together) after the flush, as one entry: the folio
    /// loses them at once in `folios_put_refs`. As for [`MmuGather::remove_page`], every
    /// one of those translations was recorded in this gather first.
    #[inline]
    pub fn remove_folio_pages(&mut self, page: &'a Page, nr: u32) {
        debug_assert!(
            self.need_flush,
            "BUG: page gathered without a recorded translation"
        );
        debug_assert!(nr >= 1);
        if self.nr_pages == BATCH {
            self.flush();
            // The translations of the pages were recorded before this flush, so it covers
            // them.
        }
        // The reference a mapping holds is on its folio (the head of a large one).
        self.pages[self.nr_pages].write(page.compound_head());
        self.refs[self.nr_pages].write(nr);
        self.nr_pages += 1;
    }

    /// `pte_free_tlb` and friends: the table page `table`, which mapped `[lo, hi)`, was taken
    /// out of the tables (its entry above is cleared); free it after the flush.
    pub(crate) fn remove_table(&mut self, table: Pfn, lo: u64, hi: u64) {
        if self.nr_tables == TABLE_BATCH {
            self.flush();
        }
        self.extend(lo, if hi <= lo { u64::MAX } else { hi });
        self.tables[self.nr_tables] = table;
        self.nr_tables += 1;
    }

    /// `tlb_flush_mmu`: flush the TLBs and the platform's translations, then release the
    /// gathered pages and tables.
    #[inline]
    pub fn flush(&mut self) {
        if self.need_flush {
            self.flush_translations();
        } else if self.nr_pages == 0 && self.nr_tables == 0 {
            return;
        }
        // (Pages gathered with no flush pending were covered by a `flush_tlb_only`.)
        self.release();
    }

    /// `tlb_flush_mmu_tlbonly`: flush the TLBs and the platform's translations of what was
    /// recorded so far, keeping the gathered pages for the release (a caller that must know
    /// no CPU can still store to the pages before it reads them: `collapse_huge_page`).
    pub(crate) fn flush_tlb_only(&mut self) {
        if self.need_flush {
            self.flush_translations();
        }
    }

    /// Steps 1 and 2 of the module doc.
    fn flush_translations(&mut self) {
        if self.fullmm {
            self.k.flush_tlb_mm(self.pt);
        } else {
            self.k.flush_tlb_range(self.pt, self.start, self.end);
        }
        self.k.platform().flush_tlb(&TlbFlush {
            ctx_id: self.pt.ctx_id(),
            pgd: self.pt.pgd_pfn(),
            start: self.start,
            end: self.end,
            frames: self.recorded_frames(),
            huge_frames: &self.huge[..self.nr_huge],
            tables: &self.tables[..self.nr_tables],
            fullmm: self.fullmm,
        });
        self.flushes += 1;
        self.need_flush = false;
        self.start = u64::MAX;
        self.end = 0;
        self.nr_frames = 0;
        self.nr_huge = 0;
    }

    fn recorded_frames(&self) -> &[Pfn] {
        let f = &self.frames[..self.nr_frames];
        // SAFETY: the first `nr_frames` slots were written by `record`, and `MaybeUninit<T>`
        // has the layout of `T`.
        unsafe { &*(f as *const [MaybeUninit<Pfn>] as *const [Pfn]) }
    }

    fn gathered_pages(&self) -> &[&'a Page] {
        let p = &self.pages[..self.nr_pages];
        // SAFETY: the first `nr_pages` slots were written by `remove_folio_pages`, and
        // `MaybeUninit<T>` has the layout of `T`.
        unsafe { &*(p as *const [MaybeUninit<&'a Page>] as *const [&'a Page]) }
    }

    fn gathered_refs(&self) -> &[u32] {
        let r = &self.refs[..self.nr_pages];
        // SAFETY: the first `nr_pages` slots were written by `remove_folio_pages`, and
        // `MaybeUninit<T>` has the layout of `T`.
        unsafe { &*(r as *const [MaybeUninit<u32>] as *const [u32]) }
    }

    /// Step 3: `free_pages_and_swap_cache` and `tlb_remove_table`'s frees.
    fn release(&mut self) {
        let n = self.nr_pages;
        for &page in self.gathered_pages() {
            // free_swap_cache: an unmapped swap-cache page whose slot no PTE uses any more
            // leaves the swap cache with it.
            if page.mapcount() == 0 && page.test(PG_SWAPCACHE) {
                self.k.try_to_free_swap(self.cpu, page);
            }
        }
        if n > 0 {
            self.k
                .folios_put_refs(self.cpu, self.gathered_pages(), self.gathered_refs());
        }
        self.nr_pages = 0;
        let tables = &self.tables[..self.nr_tables];
        if !tables.is_empty() {
            if self.k.platform().defer_table_free() {
                self.k.tlb_remove_table(self.cpu, tables);
            } else {
                for &t in tables {
                    self.k.table_free(self.cpu, t);
                }
            }
        }
        self.nr_tables = 0;
    }

    /// `tlb_finish_mmu`: flush what is left. (It takes the gather by reference, not by
    /// value, so that a 4 KiB batch is never copied on a fault path; dropping the gather
    /// finishes it too.)
    #[inline]
    pub fn finish(&mut self) {
        self.flush();
    }

    /// Test hook for the use-after-free checker: release the gathered pages and tables
    /// without flushing any TLB — exactly the bug the gather exists to make impossible, so
    /// that a test can show the checker catches it.
    #[cfg(feature = "test-hooks")]
    pub fn finish_without_flush(&mut self) {
        self.need_flush = false;
        self.nr_frames = 0;
        self.nr_huge = 0;
        self.release();
    }
}

impl Drop for MmuGather<'_> {
    fn drop(&mut self) {
        // An unfinished gather still flushes before it frees.
        self.flush();
    }
}

/// Page tables out of every address space, waiting for the platform's grace period: a list
/// through their `struct page`s (nothing is allocated to park one).
#[derive(Debug, Default)]
pub struct DeferredTables {
    list: PageList,
    nr: u64,
}

impl Kernel {
    /// `tlb_remove_table` under `MMU_GATHER_RCU_TABLE_FREE`: the tables' destructor runs now
    /// (they leave `NR_PAGETABLE`, as `pagetable_dtor` does before the RCU free), the frames
    /// wait for [`Kernel::tlb_remove_table_sync`].
    fn tlb_remove_table(&self, cpu: &CpuGuard<'_>, tables: &[Pfn]) {
        for &t in tables {
            self.mod_node_page_state(
                cpu,
                self.mem_map.page(t),
                crate::arch::x86_64::pgtable::NR_PAGETABLE,
                -1,
            );
        }
        let mut q = self.deferred_tables.lock();
        for &t in tables {
            q.list.push_back(&self.mem_map, t);
        }
        q.nr += tables.len() as u64;
    }

    /// The grace period of deferred table frees has passed (the platform's MMU caches no
    /// table any more): free every parked table. Returns how many.
    pub fn tlb_remove_table_sync(&self, cpu: &CpuGuard<'_>) -> u64 {
        let (mut list, nr) = {
            let mut q = self.deferred_tables.lock();
            let nr = core::mem::take(&mut q.nr);
            (core::mem::take(&mut q.list), nr)
        };
        while let Some(t) = list.pop_front(&self.mem_map) {
            self.__free_pages(cpu, self.mem_map.page(t), 0);
        }
        nr
    }

    /// Page tables parked by deferred table frees (out of `NR_PAGETABLE`, not yet free).
    pub fn nr_deferred_tables(&self) -> u64 {
        self.deferred_tables.lock().nr
    }
}
