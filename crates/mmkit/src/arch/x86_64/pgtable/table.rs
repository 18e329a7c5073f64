//! The tables themselves: allocation (`pgd_alloc`, `__pud_alloc`/`__pmd_alloc`/`__pte_alloc`),
//! lookup, freeing (`free_pgd_range`, `free_pgtables`, `pgd_free`), the split PTE lock
//! (`ptlock_init`, `pte_lockptr`) and the hardware walker the MMU uses.
//!
//! Entries are reached only through [`Kernel::entry`], which is private to the page-table
//! module and `unsafe`: its caller promises that the frame is a live table page. Every table
//! pfn handed to it comes from a walk that started at a live PGD, and a table page is freed
//! only when no walker can reach it: its entry in the level above is cleared under the
//! `page_table_lock`, by the owner of the address space (`&mut MmStruct`: the `mmap_lock`
//! held for writing) after the VMAs over it were unlinked from the reverse map (so no reverse
//! walk is looking at it) and after an [`MmuGather`] flush (so no MMU still walks it).

use super::{is_canonical, table_index, Pte, PteFlags, LEVEL_SHIFTS, PTE_PFN_MASK, PTRS_PER_TABLE};
use crate::addr::{Pfn, PAGE_SHIFT};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::Page;
use crate::sync::SpinLock;
use crate::Kernel;
use core::sync::atomic::{AtomicU64, Ordering};

const P: u64 = PteFlags::PRESENT.bits();
/// `KERNEL_PGD_BOUNDARY`: the first PGD entry of the kernel half.
const KERNEL_PGD_BOUNDARY: usize = 256;
const PSE: u64 = PteFlags::PSE.bits();

/// An upper-level entry pointing to a user table (`_PAGE_TABLE`: P|RW|U|A).
const TABLE_ENTRY: u64 =
    P | PteFlags::RW.bits() | PteFlags::USER.bits() | PteFlags::ACCESSED.bits();
/// Kernel tables (`_KERNPG_TABLE`): no user bit.
const KERN_TABLE_ENTRY: u64 =
    P | PteFlags::RW.bits() | PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits();

/// One address space's page tables (the `pgd` of an `mm_struct`), with its lock and TLB
/// generation.
pub struct PgTable {
    pub(crate) pgd: Pfn,
    /// `mm->context.ctx_id`: tags TLB entries.
    pub(crate) ctx_id: u64,
    /// `mm->context.tlb_gen`: bumped by every flush; CPUs whose TLB is older refill.
    pub(crate) tlb_gen: AtomicU64,
    /// `mm->page_table_lock`: serializes populating and clearing upper-level entries.
    pub(crate) lock: SpinLock<()>,
    /// `pmd_huge_pte`: PTE tables deposited for the huge entries (one each), waiting for a
    /// split, and how many.
    pub(crate) deposit: SpinLock<(crate::mm::list::PageList, u64)>,
    user: bool,
}

impl PgTable {
    /// Pfn of the PGD (what CR3 holds).
    pub fn pgd_pfn(&self) -> Pfn {
        self.pgd
    }
    /// The address-space id TLB entries are tagged with.
    pub fn ctx_id(&self) -> u64 {
        self.ctx_id
    }
    /// `mm->context.tlb_gen`: bumped by every flush of this address space; a CPU that
    /// synced an older one must flush before it uses the address space again.
    pub fn tlb_gen(&self) -> u64 {
        self.tlb_gen.load(core::sync::atomic::Ordering::SeqCst)
    }
}

/// Index of `nr_page_table_pages` in the node counters.
pub const NR_PAGETABLE: usize = crate::mm::vmstat::index_of(
    crate::mm::vmstat_names::NODE_STAT_NAMES,
    "nr_page_table_pages",
);

/// Holding this is holding the split lock of one PTE table (`spin_lock(ptl)`).
pub(crate) struct PtlGuard<'a> {
    page: &'a Page,
}

impl Drop for PtlGuard<'_> {
    fn drop(&mut self) {
        self.page.unlock();
    }
}

/// What the hardware walker found: the leaf entry (with the Accessed/Dirty bits it set) and
/// the permissions in force (RW and USER only where every level grants them, NX where any
/// level sets it).
pub(crate) struct HwTranslation {
    pub(crate) pte: u64,
    pub(crate) perms: u64,
    /// The leaf was a 2 MiB PMD entry (`pte` is the 4 KiB piece of it the address lies in).
    pub(crate) huge: bool,
}

/// The split locks of several PTE tables held together ([`Kernel::lock_pte_tables`]).
pub(crate) struct PtlSet<'a> {
    _guards: alloc::vec::Vec<PtlGuard<'a>>,
}

impl Kernel {
    /// Entry `idx` of the table page `table`.
    ///
    /// # Safety
    /// `table` must be a live page-table page of this kernel (reached by a walk from a live
    /// PGD under the rules in the module doc), and `idx < 512`.
    #[inline]
    pub(super) unsafe fn entry(&self, table: Pfn, idx: usize) -> &AtomicU64 {
        debug_assert!(idx < PTRS_PER_TABLE as usize);
        // SAFETY: per the contract the page is a table page: RAM inside the direct map,
        // 8-byte aligned entries, only ever accessed as atomics.
        unsafe { &*(self.pfn_ptr(table).add(idx * 8) as *const AtomicU64) }
    }

    /// The value of entry `idx` of `table` (same contract as [`Kernel::entry`]).
    #[inline]
    pub(super) unsafe fn load(&self, table: Pfn, idx: usize) -> u64 {
        // SAFETY: forwarded contract.
        unsafe { self.entry(table, idx) }.load(Ordering::Acquire)
    }

    /// `pte_lockptr` + `spin_lock`: the split lock of the PTE table `table`, a bit lock in
    /// its `struct page` (`PG_locked`, which a page-table page has no other use for).
    pub(super) fn ptl_lock(&self, table: Pfn) -> PtlGuard<'_> {
        let page = self.mem_map.page(table);
        page.lock();
        PtlGuard { page }
    }

    /// The PTE tables that exist for `[start, end)` of `pt`, appended to `out` (opened as a
    /// cursor is: by the address space's holder or a reverse-map walker holding the rmap
    /// lock of a VMA covering the range).
    pub(crate) fn pte_tables_of(
        &self,
        pt: &PgTable,
        start: u64,
        end: u64,
        out: &mut alloc::vec::Vec<Pfn>,
    ) {
        let step = 1u64 << LEVEL_SHIFTS[2];
        let mut va = start & !(step - 1);
        while va < end {
            if let Some(t) = self.pte_table(pt, va) {
                out.push(t);
            }
            va = match va.checked_add(step) {
                Some(v) => v,
                None => break,
            };
        }
    }

    /// Lock the PTE tables `tables` together (each once), in pfn order: the one order in
    /// which anybody holds more than one PTE lock (every walker holds one at a time), so two
    /// holders of sets never wait on each other in a circle. Used to stop every change to
    /// the PTEs mapping a large folio while it is split.
    pub(crate) fn lock_pte_tables(&self, tables: &mut alloc::vec::Vec<Pfn>) -> PtlSet<'_> {
        tables.sort_unstable();
        tables.dedup();
        PtlSet {
            _guards: tables.iter().map(|&t| self.ptl_lock(t)).collect(),
        }
    }

    /// `pagetable_alloc` + `pagetable_pte_ctor`: a zeroed table page, counted in
    /// `nr_page_table_pages`.
    pub(super) fn table_alloc(&self, cpu: &CpuGuard<'_>) -> Result<Pfn, Errno> {
        let page = self
            .alloc_page(cpu, Gfp::GFP_KERNEL | Gfp::__GFP_ZERO)
            .ok_or(Errno::ENOMEM)?;
        self.mod_node_page_state(cpu, page, NR_PAGETABLE, 1);
        Ok(self.page_to_pfn(page))
    }

    /// `pagetable_dtor` + free: only [`MmuGather`] calls this, after its flush (or for a table
    /// no MMU ever saw).
    pub(crate) fn table_free(&self, cpu: &CpuGuard<'_>, pfn: Pfn) {
        let page = self.mem_map.page(pfn);
        self.mod_node_page_state(cpu, page, NR_PAGETABLE, -1);
        self.__free_pages(cpu, page, 0);
    }

    /// The kernel's address space on a PGD page reserved at boot (`init_top_pgt`); it is not
    /// a buddy page and is never freed.
    pub(crate) fn pgd_static(&self, pgd: Pfn) -> PgTable {
        PgTable {
            pgd,
            ctx_id: self.next_ctx_id.fetch_add(1, Ordering::Relaxed) + 1,
            tlb_gen: AtomicU64::new(1),
            lock: SpinLock::new(()),
            deposit: SpinLock::new(Default::default()),
            user: false,
        }
    }

    /// `pgd_alloc`: a new, empty address space (user, or kernel for `init_mm`). A user PGD
    /// gets the kernel half of `init_mm`'s (`pgd_ctor`'s `clone_pgd_range`): the same
    /// upper tables, shared, so what the kernel maps there (the CPU entry area) is in every
    /// address space. They stay `init_mm`'s: `pgd_free` never frees them.
    pub fn pgd_alloc(&self, cpu: &CpuGuard<'_>, user: bool) -> Result<PgTable, Errno> {
        let pgd = self.table_alloc(cpu)?;
        if let (true, Some(init)) = (user, self.init_mm.as_ref()) {
            let _g = init.lock.lock();
            for i in KERNEL_PGD_BOUNDARY..PTRS_PER_TABLE as usize {
                // SAFETY: both are live PGDs (ours is new, init_mm's never goes).
                let v = unsafe { self.load(init.pgd, i) };
                if v != 0 {
                    // SAFETY: as above; nobody else sees the new PGD yet.
                    unsafe { self.entry(pgd, i) }.store(v, Ordering::Release);
                }
            }
        }
        Ok(PgTable {
            pgd,
            ctx_id: self.next_ctx_id.fetch_add(1, Ordering::Relaxed) + 1,
            tlb_gen: AtomicU64::new(1),
            lock: SpinLock::new(()),
            deposit: SpinLock::new(Default::default()),
            user,
        })
    }

    /// `pte_offset_map`'s walk: the PTE table mapping `va`, or `None` where a level is missing
    /// (or a huge entry ends the walk). Takes no lock: see the module doc for why the tables
    /// it passes through stay.
    pub(super) fn pte_table(&self, pt: &PgTable, va: u64) -> Option<Pfn> {
        if !is_canonical(va) {
            return None;
        }
        let mut table = pt.pgd;
        for level in 0..3 {
            // SAFETY: `table` is the live PGD or was read from a present entry above it.
            let v = unsafe { self.load(table, table_index(va, level)) };
            if v & P == 0 || v & PSE != 0 {
                return None;
            }
            table = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
        }
        Some(table)
    }

    /// The PTE table mapping the first address at or after `from` (and below `end`) that has
    /// one, with the address its first entry maps: skips whole missing PUD/PMD ranges at
    /// once, as Linux's `p*d_none_or_clear_bad` walk does.
    pub(super) fn next_pte_table(
        &self,
        pt: &PgTable,
        mut from: u64,
        end: u64,
    ) -> Option<(Pfn, u64)> {
        'outer: while from < end {
            if !is_canonical(from) {
                // Jump the non-canonical hole to the kernel half.
                from = 0xffff_8000_0000_0000;
                continue;
            }
            let mut table = pt.pgd;
            for (level, &shift) in LEVEL_SHIFTS[..3].iter().enumerate() {
                // SAFETY: as in `pte_table`.
                let v = unsafe { self.load(table, table_index(from, level)) };
                if v & P == 0 || v & PSE != 0 {
                    let span = 1u64 << shift;
                    match (from & !(span - 1)).checked_add(span) {
                        Some(n) if n > from => from = n,
                        _ => return None,
                    }
                    continue 'outer;
                }
                table = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
            }
            return Some((table, from & !((1u64 << LEVEL_SHIFTS[2]) - 1)));
        }
        None
    }

    /// `__pte_alloc` and the levels above: the PTE table mapping `va`, allocating missing
    /// levels. The page comes from the allocator with no lock held (allocation may reclaim,
    /// and reclaim takes page-table locks) and is installed under the `page_table_lock` unless
    /// another walker got there first, as `pmd_install` does. `EINVAL` where a huge (PMD)
    /// entry maps `va`: its caller must split it first.
    pub(super) fn pte_table_alloc(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
    ) -> Result<Pfn, Errno> {
        self.table_alloc_to(cpu, pt, va, 3)
    }

    /// `pud_alloc` + `pmd_alloc`: the PMD table holding `va`'s PMD entry, allocating the
    /// levels above it (not the PTE table).
    pub(super) fn pmd_table_alloc(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
    ) -> Result<Pfn, Errno> {
        self.table_alloc_to(cpu, pt, va, 2)
    }

    /// The PMD table holding `va`'s PMD entry, if the levels above exist (`pmd_offset`).
    pub(super) fn pmd_table(&self, pt: &PgTable, va: u64) -> Option<Pfn> {
        if !is_canonical(va) {
            return None;
        }
        let mut table = pt.pgd;
        for level in 0..2 {
            // SAFETY: `table` is the live PGD or was read from a present entry above it.
            let v = unsafe { self.load(table, table_index(va, level)) };
            if v & P == 0 || v & PSE != 0 {
                return None;
            }
            table = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
        }
        Some(table)
    }

    /// The PMD entry mapping `va` as it is now, without a lock: a huge entry, a table entry or
    /// none; `None` when the levels above it are missing.
    pub fn pmd_entry_lookup(&self, pt: &PgTable, va: u64) -> Option<Pte> {
        let table = self.pmd_table(pt, va)?;
        // SAFETY: `table` comes from a walk of live tables.
        Some(Pte(unsafe { self.load(table, table_index(va, 2)) }))
    }

    /// The first huge (PSE) PMD entry at or after `from` and below `end`, with the address
    /// it maps from, read without a lock (the caller re-checks under the PMD lock). Skips
    /// missing PGD/PUD ranges whole, as [`Kernel::next_pte_table`] does.
    pub fn next_huge_pmd(&self, pt: &PgTable, mut from: u64, end: u64) -> Option<(u64, Pte)> {
        let pmd_span = 1u64 << LEVEL_SHIFTS[2];
        from &= !(pmd_span - 1);
        'outer: while from < end {
            if !is_canonical(from) {
                return None;
            }
            let mut table = pt.pgd;
            for (level, &shift) in LEVEL_SHIFTS[..2].iter().enumerate() {
                // SAFETY: as in `pte_table`.
                let v = unsafe { self.load(table, table_index(from, level)) };
                if v & P == 0 || v & PSE != 0 {
                    let span = 1u64 << shift;
                    match (from & !(span - 1)).checked_add(span) {
                        Some(n) if n > from => from = n,
                        _ => return None,
                    }
                    continue 'outer;
                }
                table = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
            }
            // Scan this PMD table from `from` to its end (or `end`).
            let pud_span = 1u64 << LEVEL_SHIFTS[1];
            let table_end = (from & !(pud_span - 1)).saturating_add(pud_span).min(end);
            while from < table_end {
                // SAFETY: `table` is a PMD table reached from the live PGD.
                let v = unsafe { self.load(table, table_index(from, 2)) };
                if v & PSE != 0 {
                    return Some((from, Pte(v)));
                }
                from += pmd_span;
            }
        }
        None
    }

    /// The table of level `depth` (2: PMD, 3: PTE) for `va`, allocating missing levels above.
    fn table_alloc_to(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
        depth: usize,
    ) -> Result<Pfn, Errno> {
        if !is_canonical(va) {
            return Err(Errno::EFAULT);
        }
        let mut table = pt.pgd;
        let mut level = 0;
        while level < depth {
            let idx = table_index(va, level);
            // SAFETY: `table` is the live PGD or was read from a present entry above it.
            let v = unsafe { self.load(table, idx) };
            if v & PSE != 0 {
                return Err(Errno::EINVAL);
            }
            if v & P != 0 {
                table = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
                level += 1;
                continue;
            }
            let new = self.table_alloc(cpu)?;
            let used = {
                let _g = pt.lock.lock();
                // SAFETY: as above; the entry is re-read under the lock.
                let e = unsafe { self.entry(table, idx) };
                if e.load(Ordering::Acquire) == 0 {
                    let flags = if pt.user {
                        TABLE_ENTRY
                    } else {
                        KERN_TABLE_ENTRY
                    };
                    e.store((new.0 << PAGE_SHIFT) | flags, Ordering::Release);
                    true
                } else {
                    false
                }
            };
            if !used {
                // No MMU ever saw it.
                self.table_free(cpu, new);
            }
            // Re-read the entry at this level (ours or the other walker's).
        }
        Ok(table)
    }

    /// `free_pgd_range` over `[start, end)` alone: free the tables that lie entirely inside it
    /// and map nothing. See [`Kernel::free_pgtables`].
    pub fn free_pgd_range(&self, tlb: &mut MmuGather<'_>, start: u64, end: u64) -> u64 {
        self.free_pgtables(tlb, start, end, start, end)
    }

    /// `free_pgtables`/`free_pgd_range(addr, end, floor, ceiling)`: walk only the tables that
    /// map `[addr, end)`, and free each that maps nothing and lies entirely inside
    /// `[floor, ceiling)` (the space between the surviving neighbours), clearing its entry.
    /// The tables go to the gather, which frees them after its flush, as Linux's
    /// `pte_free_tlb` does. The caller has already cleared the PTEs (`unmap_vmas`) and
    /// unlinked the VMAs from the reverse map. Returns the table pages freed.
    pub fn free_pgtables(
        &self,
        tlb: &mut MmuGather<'_>,
        addr: u64,
        end: u64,
        floor: u64,
        ceiling: u64,
    ) -> u64 {
        if addr >= end {
            return 0;
        }
        let pt = tlb.pt();
        let _g = pt.lock.lock();
        self.free_level(tlb, pt.pgd, 0, 0, (addr, end), (floor, ceiling))
    }

    fn free_level(
        &self,
        tlb: &mut MmuGather<'_>,
        table: Pfn,
        level: usize,
        base: u64,
        range: (u64, u64),
        bounds: (u64, u64),
    ) -> u64 {
        let shift = LEVEL_SHIFTS[level];
        let span = 1u64 << shift;
        let (start, end) = range;
        let index = |a: u64| -> usize {
            if level == 0 {
                table_index(a, 0)
            } else {
                ((a.saturating_sub(base)) >> shift).min(PTRS_PER_TABLE - 1) as usize
            }
        };
        let first = index(start.max(base));
        let last = index(end - 1);
        let mut freed = 0;
        if level == 3 {
            return 0;
        }
        for i in first..=last {
            let mut lo = base.wrapping_add(i as u64 * span);
            if level == 0 && i >= 256 {
                lo |= 0xffff_0000_0000_0000; // sign-extend the kernel half
            }
            let hi = lo.wrapping_add(span);
            // SAFETY: `table` is the live PGD or a table read from a present entry under the
            // page_table_lock, which we hold: nobody frees it meanwhile.
            let e = unsafe { self.entry(table, i) };
            let v = e.load(Ordering::Acquire);
            if v & P == 0 || v & PSE != 0 {
                continue;
            }
            let child = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
            if level < 2 {
                freed += self.free_level(tlb, child, level + 1, lo, range, bounds);
            }
            // A child table goes when the space it maps is all between the neighbours and
            // it is empty.
            let inside = lo >= bounds.0 && (hi <= bounds.1 || (hi == 0 && bounds.1 == u64::MAX));
            // SAFETY: `child` was read from a present entry of a live table, under the lock.
            if inside && (0..PTRS_PER_TABLE as usize).all(|j| unsafe { self.load(child, j) } == 0) {
                e.store(0, Ordering::Release);
                tlb.remove_table(child, lo, hi);
                freed += 1;
            }
        }
        freed
    }

    /// `mm_pgtables_bytes` / `PAGE_SIZE`: the PUD, PMD and PTE tables of an address space's
    /// user half (the PGD itself is not counted, as in Linux).
    pub fn pgtable_pages_of(&self, pt: &PgTable) -> u64 {
        fn count(k: &Kernel, table: Pfn, level: usize, first: usize, last: usize) -> u64 {
            let mut n = 0;
            for i in first..=last {
                // SAFETY: `table` is the live PGD or read from a present entry above it; the
                // caller holds the address space (its tables are not freed meanwhile).
                let v = unsafe { k.load(table, i) };
                if v & P == 0 || v & PSE != 0 {
                    continue;
                }
                n += 1;
                if level < 2 {
                    n += count(k, Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT), level + 1, 0, 511);
                }
            }
            n
        }
        count(self, pt.pgd, 0, 0, 255) + self.deposited_tables(pt)
    }

    /// `pgd_free`: free every table of an address space whose pages are all unmapped (the
    /// caller made sure no MMU uses it any more: its last flush was done). `EBUSY` (nothing
    /// freed) if any PTE is still set.
    pub fn pgd_free(&self, cpu: &CpuGuard<'_>, pt: PgTable) -> Result<(), (Errno, PgTable)> {
        {
            let mut tlb = MmuGather::new_fullmm(self, cpu, &pt);
            self.free_pgd_range(&mut tlb, 0, 0x0000_8000_0000_0000);
            if pt.user {
                // The kernel half is init_mm's tables (pgd_ctor): let go, free nothing.
                let _g = pt.lock.lock();
                for i in KERNEL_PGD_BOUNDARY..PTRS_PER_TABLE as usize {
                    // SAFETY: the PGD is live until freed below.
                    unsafe { self.entry(pt.pgd, i) }.store(0, Ordering::Release);
                }
            } else {
                self.free_pgd_range(&mut tlb, 0xffff_8000_0000_0000, u64::MAX);
            }
            tlb.finish();
        }
        // SAFETY: the PGD is live until freed below.
        if (0..PTRS_PER_TABLE as usize).any(|i| unsafe { self.load(pt.pgd, i) } != 0) {
            return Err((Errno::EBUSY, pt));
        }
        let mut tlb = MmuGather::new_fullmm(self, cpu, &pt);
        tlb.remove_table(pt.pgd, 0, u64::MAX);
        tlb.finish();
        Ok(())
    }

    /// Pages used by page tables (`PageTables:`).
    pub fn page_table_pages(&self) -> u64 {
        self.global_node_page_state(NR_PAGETABLE)
    }

    /// The hardware page walker: the four levels for `va`, with atomic loads, setting
    /// Accessed on every entry it uses and Dirty on the PTE for a write. As the hardware
    /// does, each bit is set with a locked compare-exchange against the value the walk read,
    /// only where the bit is not set yet — an entry that changed meanwhile (cleared, made
    /// read-only) makes the walk start over instead of getting a bit OR-ed into a value that
    /// is no longer a live entry. `Err(present)` when a level is not present (`false`) or
    /// `permitted` refuses the effective permissions (`true`).
    pub(crate) fn hw_walk(
        &self,
        pt: &PgTable,
        va: u64,
        write: bool,
        permitted: impl Fn(u64) -> bool,
    ) -> Result<HwTranslation, bool> {
        if !is_canonical(va) {
            return Err(false);
        }
        'walk: loop {
            let mut table = pt.pgd;
            let mut eff = u64::MAX; // intersection of RW/USER, union of NX, across levels
            let mut nx = 0;
            let mut slots: [Option<(&AtomicU64, u64)>; 4] = [None; 4];
            let mut leaf = 3;
            for (level, slot_out) in slots.iter_mut().enumerate() {
                // SAFETY: `table` is the live PGD (the CPU runs this address space) or was
                // read from a present entry above it; a table is freed only after a flush
                // that makes every CPU drop this walk's results before its next access.
                let slot = unsafe { self.entry(table, table_index(va, level)) };
                let v = slot.load(Ordering::Acquire);
                if v & P == 0 {
                    return Err(false);
                }
                eff &= v | !(PteFlags::RW | PteFlags::USER).bits();
                nx |= v & PteFlags::NX.bits();
                *slot_out = Some((slot, v));
                table = Pfn((v & PTE_PFN_MASK) >> PAGE_SHIFT);
                if level == 2 && v & PSE != 0 {
                    // A 2 MiB leaf: the walk ends at the PMD.
                    leaf = 2;
                    break;
                }
            }
            let perms = (eff & !PteFlags::NX.bits()) | nx;
            if !permitted(perms) {
                return Err(true);
            }
            let mut pte = 0;
            for (level, &(s, v)) in slots.iter().flatten().enumerate() {
                let mut want = v | PteFlags::ACCESSED.bits();
                if level == leaf && write {
                    want |= PteFlags::DIRTY.bits();
                }
                if want != v
                    && s.compare_exchange(v, want, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                {
                    continue 'walk;
                }
                pte = want;
            }
            if leaf == 2 {
                // The 4 KiB piece of the 2 MiB page `va` lies in, as a PTE would map it.
                pte = huge_splinter(pte, va);
            }
            return Ok(HwTranslation {
                pte,
                perms,
                huge: leaf == 2,
            });
        }
    }

    /// The entry mapping `va` as it is now, for a reader that needs no lock (an MMU-like
    /// observer, or the holder of the address space checking a value it will re-check under
    /// the lock): `None` where no PTE table covers it.
    pub fn pte_lookup(&self, pt: &PgTable, va: u64) -> Option<Pte> {
        let table = self.pte_table(pt, va)?;
        // SAFETY: `table` comes from a walk of live tables.
        Some(Pte(unsafe { self.load(table, table_index(va, 3)) }))
    }

    /// The translation of `va` as the MMU would use it, whatever level maps it: the PTE, or
    /// for a 2 MiB (PMD) mapping the 4 KiB piece of it `va` lies in, as a PTE would map it
    /// (pfn of that page, the PMD's bits without PSE). `None` where nothing is mapped at
    /// either level (a PTE table with a none entry gives `Some(Pte(0))`, as
    /// [`Kernel::pte_lookup`]).
    pub fn translation_lookup(&self, pt: &PgTable, va: u64) -> Option<Pte> {
        if let Some(p) = self.pte_lookup(pt, va) {
            return Some(p);
        }
        let pmd = self.pmd_table(pt, va)?;
        // SAFETY: `pmd` comes from a walk of live tables.
        let v = unsafe { self.load(pmd, table_index(va, 2)) };
        (v & PSE != 0 && Pte(v).is_present()).then(|| Pte(huge_splinter(v, va)))
    }
}

/// The 4 KiB piece of the huge (PMD) entry `pmd` that `va` lies in, as a PTE: the pfn of
/// that page and the PMD's bits without PSE.
pub(crate) const fn huge_splinter(pmd: u64, va: u64) -> u64 {
    let base = pmd & PTE_PFN_MASK & !((1u64 << LEVEL_SHIFTS[2]) - 1);
    let off = va & ((1u64 << LEVEL_SHIFTS[2]) - 1) & !((1u64 << PAGE_SHIFT) - 1);
    (pmd & !PTE_PFN_MASK & !PSE) | base | off
}
