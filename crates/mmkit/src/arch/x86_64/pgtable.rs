//! x86-64 4-level page tables (`arch/x86/include/asm/pgtable_types.h`, `pgtable_64.h`,
//! `mm/memory.c`'s `__pud_alloc`/`__pmd_alloc`/`__pte_alloc`, `free_pgd_range`).
//!
//! Tables are real 4 KiB pages from the buddy allocator (`GFP_KERNEL | __GFP_ZERO`, counted in
//! `nr_page_table_pages` / `PageTables:`), holding 512 64-bit entries in Linux's bit layout:
//! present, RW, user, PWT, PCD, accessed, dirty, PSE, global, three software bits, the pfn in
//! bits 12..51, NX in bit 63. Entries are read and written as atomics, because the MMU sets
//! Accessed and Dirty while other CPUs walk, as hardware does. Changes to a table are
//! serialized by its [`PgTable`]'s `page_table_lock`; walks take no lock.
//!
//! Invariant: a table page is reachable from exactly one entry of the level above (or is the
//! PGD), and `nr_page_table_pages` counts every table page allocated and not yet freed.

use crate::addr::{PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::sync::SpinLock;
use crate::Kernel;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

pub use self::flag_defs::*;
#[allow(missing_docs)] // the bit names are Linux's own (pgtable_types.h)
mod flag_defs {
    bitflags::bitflags! {
        /// Page-table entry bits (`_PAGE_*`).
        #[derive(Copy, Clone, PartialEq, Eq, Debug, Hash)]
        pub struct PteFlags: u64 {
            const PRESENT = 1 << 0;
            const RW = 1 << 1;
            const USER = 1 << 2;
            const PWT = 1 << 3;
            const PCD = 1 << 4;
            const ACCESSED = 1 << 5;
            const DIRTY = 1 << 6;
            const PSE = 1 << 7;
            const GLOBAL = 1 << 8;
            const SOFTW1 = 1 << 9;
            const SOFTW2 = 1 << 10;
            const SOFTW3 = 1 << 11;
            const NX = 1 << 63;
        }
    }
}

/// `_PAGE_PROTNONE`: a PROT_NONE entry is not present but keeps the global bit as a marker.
pub const PAGE_PROTNONE: PteFlags = PteFlags::GLOBAL;
/// `_PAGE_SPECIAL`.
pub const PAGE_SPECIAL: PteFlags = PteFlags::SOFTW1;
/// `PTE_PFN_MASK`: bits 12..51.
pub const PTE_PFN_MASK: u64 = ((1u64 << 52) - 1) & !(PAGE_SIZE - 1);
/// Entries per table.
pub const PTRS_PER_TABLE: u64 = 512;
/// `PGDIR_SHIFT`, `PUD_SHIFT`, `PMD_SHIFT`, `PAGE_SHIFT`: the shift of each level.
pub const LEVEL_SHIFTS: [u32; 4] = [39, 30, 21, 12];

const A: u64 = PteFlags::ACCESSED.bits();
const D: u64 = PteFlags::DIRTY.bits();
const P: u64 = PteFlags::PRESENT.bits();
const W: u64 = PteFlags::RW.bits();
const U: u64 = PteFlags::USER.bits();
const G: u64 = PteFlags::GLOBAL.bits();
const X: u64 = PteFlags::NX.bits();

/// A protection value (`pgprot_t`).
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct PgProt(pub u64);

/// `PAGE_NONE`.
pub const PAGE_NONE: PgProt = PgProt(A | G);
/// `PAGE_SHARED`.
pub const PAGE_SHARED: PgProt = PgProt(P | W | U | A | X);
/// `PAGE_SHARED_EXEC`.
pub const PAGE_SHARED_EXEC: PgProt = PgProt(P | W | U | A);
/// `PAGE_COPY_NOEXEC` (= `PAGE_COPY`).
pub const PAGE_COPY: PgProt = PgProt(P | U | A | X);
/// `PAGE_COPY_EXEC`.
pub const PAGE_COPY_EXEC: PgProt = PgProt(P | U | A);
/// `PAGE_READONLY`.
pub const PAGE_READONLY: PgProt = PgProt(P | U | A | X);
/// `PAGE_READONLY_EXEC`.
pub const PAGE_READONLY_EXEC: PgProt = PgProt(P | U | A);
/// `PAGE_KERNEL`.
pub const PAGE_KERNEL: PgProt = PgProt(P | W | A | D | G | X);
/// `PAGE_KERNEL_EXEC`.
pub const PAGE_KERNEL_EXEC: PgProt = PgProt(P | W | A | D | G);
/// `PAGE_KERNEL_RO`.
pub const PAGE_KERNEL_RO: PgProt = PgProt(P | A | D | G | X);

/// `protection_map[]`, indexed by `VM_READ | VM_WRITE | VM_EXEC | VM_SHARED` (bits 0..3):
/// private writable mappings get read-only entries, so the first write faults (copy-on-write).
pub const PROTECTION_MAP: [PgProt; 16] = [
    PAGE_NONE,
    PAGE_READONLY,
    PAGE_COPY,
    PAGE_COPY,
    PAGE_READONLY_EXEC,
    PAGE_READONLY_EXEC,
    PAGE_COPY_EXEC,
    PAGE_COPY_EXEC,
    PAGE_NONE,
    PAGE_READONLY,
    PAGE_SHARED,
    PAGE_SHARED,
    PAGE_READONLY_EXEC,
    PAGE_READONLY_EXEC,
    PAGE_SHARED_EXEC,
    PAGE_SHARED_EXEC,
];

impl fmt::Debug for PgProt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pgprot({:#x})", self.0)
    }
}

/// A page-table entry at any level.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pte(pub u64);

impl Pte {
    /// `pfn_pte(pfn, prot)`.
    pub const fn new(pfn: u64, prot: PgProt) -> Self {
        Pte(((pfn << PAGE_SHIFT) & PTE_PFN_MASK) | prot.0)
    }
    /// `pte_none()`.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
    /// `pte_present()`: present, or PROT_NONE (not present to hardware but mapped).
    pub const fn is_present(self) -> bool {
        self.0 & (P | PAGE_PROTNONE.bits()) != 0
    }
    /// `pte_pfn()`.
    pub const fn pfn(self) -> u64 {
        (self.0 & PTE_PFN_MASK) >> PAGE_SHIFT
    }
    /// The flag bits.
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0 & !PTE_PFN_MASK)
    }
    /// `pte_write()`.
    pub const fn writable(self) -> bool {
        self.0 & W != 0
    }
    /// `pte_young()`.
    pub const fn young(self) -> bool {
        self.0 & A != 0
    }
    /// `pte_dirty()`.
    pub const fn dirty(self) -> bool {
        self.0 & D != 0
    }
    /// `pte_wrprotect()`.
    pub const fn wrprotect(self) -> Self {
        Pte(self.0 & !W)
    }
    /// `pte_mkwrite()` + `pte_mkdirty()`.
    pub const fn mkwrite_dirty(self) -> Self {
        Pte(self.0 | W | D)
    }
    /// `pte_mkold()`.
    pub const fn mkold(self) -> Self {
        Pte(self.0 & !A)
    }
    /// `pte_modify()`: new protection bits, keeping pfn, Accessed and Dirty.
    pub const fn modify(self, prot: PgProt) -> Self {
        Pte((self.0 & (PTE_PFN_MASK | A | D)) | (prot.0 & !PTE_PFN_MASK))
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pte({:#x}: pfn {:#x} {:?})",
            self.0,
            self.pfn(),
            self.flags()
        )
    }
}

/// Whether `va` is canonical (bits 63..47 all equal bit 47).
pub const fn is_canonical(va: u64) -> bool {
    let top = (va as i64) >> 47;
    top == 0 || top == -1
}

/// Index of `va` in the table of `level` (0 = PGD … 3 = PTE).
#[inline]
pub const fn table_index(va: u64, level: usize) -> usize {
    ((va >> LEVEL_SHIFTS[level]) & (PTRS_PER_TABLE - 1)) as usize
}

/// Bit that marks an upper-level entry as pointing to a table (`_PAGE_TABLE` is P|RW|U|A).
const TABLE_ENTRY: u64 = P | W | U | A;
/// Kernel tables (`_KERNPG_TABLE`): no user bit.
const KERN_TABLE_ENTRY: u64 = P | W | A | D;

/// One address space's page tables (the `pgd` of an `mm_struct`), with its lock and TLB
/// generation.
pub struct PgTable {
    pub(crate) pgd: u64,
    /// `mm->context.ctx_id`: tags TLB entries.
    pub(crate) ctx_id: u64,
    /// `mm->context.tlb_gen`: bumped by every flush; CPUs whose TLB is older refill.
    pub(crate) tlb_gen: AtomicU64,
    /// `mm->page_table_lock`.
    pub(crate) lock: SpinLock<()>,
    user: bool,
}

impl PgTable {
    /// Pfn of the PGD.
    pub fn pgd_pfn(&self) -> u64 {
        self.pgd
    }
    /// The address-space id TLB entries are tagged with.
    pub fn ctx_id(&self) -> u64 {
        self.ctx_id
    }
}

/// Index of `nr_page_table_pages` in the node counters.
pub const NR_PAGETABLE: usize = crate::mm::vmstat::index_of(
    crate::mm::vmstat_names::NODE_STAT_NAMES,
    "nr_page_table_pages",
);

impl Kernel {
    /// The entry `idx` of the table at `pfn`, as an atomic.
    #[inline]
    pub(crate) fn table_entry(&self, pfn: u64, idx: usize) -> &AtomicU64 {
        debug_assert!(idx < PTRS_PER_TABLE as usize);
        // SAFETY: `pfn` is a page-table page (allocated by `table_alloc` below and not yet
        // freed: callers reach it from a live PGD under the rules in the module doc), its
        // bytes are RAM inside the direct map, 8-byte aligned, and only ever accessed as
        // atomics.
        unsafe { &*(self.pfn_ptr(pfn).add(idx * 8) as *const AtomicU64) }
    }

    fn table_alloc(&self, cpu: &CpuGuard<'_>) -> Result<u64, Errno> {
        let page = self
            .alloc_page(cpu, Gfp::GFP_KERNEL | Gfp::__GFP_ZERO)
            .ok_or(Errno::ENOMEM)?;
        self.mod_node_page_state(cpu, page, NR_PAGETABLE, 1);
        Ok(self.page_to_pfn(page).0)
    }

    fn table_free(&self, cpu: &CpuGuard<'_>, pfn: u64) {
        let page = self.mem_map.page(pfn);
        self.mod_node_page_state(cpu, page, NR_PAGETABLE, -1);
        self.__free_pages(cpu, page, 0);
    }

    /// The kernel's address space on a PGD page reserved at boot (`init_top_pgt`); it is not
    /// a buddy page and is never freed.
    pub(crate) fn pgd_static(&self, pgd: u64) -> PgTable {
        let ctx_id = self.next_ctx_id.fetch_add(1, Ordering::Relaxed) + 1;
        PgTable {
            pgd,
            ctx_id,
            tlb_gen: AtomicU64::new(1),
            lock: SpinLock::new(()),
            user: false,
        }
    }

    /// `pgd_alloc`: a new, empty address space (user, or kernel for `init_mm`).
    pub fn pgd_alloc(&self, cpu: &CpuGuard<'_>, user: bool) -> Result<PgTable, Errno> {
        let pgd = self.table_alloc(cpu)?;
        let ctx_id = self.next_ctx_id.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(PgTable {
            pgd,
            ctx_id,
            tlb_gen: AtomicU64::new(1),
            lock: SpinLock::new(()),
            user,
        })
    }

    /// The PTE slot of `va` without allocating (no lock needed: tables are freed only by
    /// the address space's owner, and entries are read atomically).
    fn walk_lookup(&self, pt: &PgTable, va: u64) -> Option<&AtomicU64> {
        if !is_canonical(va) {
            return None;
        }
        let mut table = pt.pgd;
        for level in 0..3 {
            let v = self
                .table_entry(table, table_index(va, level))
                .load(Ordering::Acquire);
            if v & P == 0 || v & PteFlags::PSE.bits() != 0 {
                return None;
            }
            table = (v & PTE_PFN_MASK) >> PAGE_SHIFT;
        }
        Some(self.table_entry(table, table_index(va, 3)))
    }

    /// Walk to the PTE slot of `va`. With `cpu`, missing levels are allocated: the page comes
    /// from the allocator with the table lock dropped (allocation may reclaim, and reclaim
    /// takes page-table locks), and is installed under the lock unless another walker got
    /// there first, as `__pte_alloc` does. The returned slot is looked up under the lock.
    fn walk(
        &self,
        cpu: Option<&CpuGuard<'_>>,
        pt: &PgTable,
        va: u64,
    ) -> Result<Option<&AtomicU64>, Errno> {
        if !is_canonical(va) {
            return Err(Errno::EFAULT);
        }
        loop {
            // Find the first missing level, or the slot.
            let missing = {
                let _g = pt.lock.lock();
                let mut table = pt.pgd;
                let mut missing = None;
                for level in 0..3 {
                    let e = self.table_entry(table, table_index(va, level));
                    let v = e.load(Ordering::Acquire);
                    if v & P == 0 {
                        missing = Some(level);
                        break;
                    }
                    if v & PteFlags::PSE.bits() != 0 {
                        return Err(Errno::EINVAL);
                    }
                    table = (v & PTE_PFN_MASK) >> PAGE_SHIFT;
                }
                match missing {
                    None => return Ok(Some(self.table_entry(table, table_index(va, 3)))),
                    Some(l) => l,
                }
            };
            let Some(cpu) = cpu else { return Ok(None) };
            let new = self.table_alloc(cpu)?;
            let used = {
                let _g = pt.lock.lock();
                let mut table = pt.pgd;
                for level in 0..missing {
                    let v = self
                        .table_entry(table, table_index(va, level))
                        .load(Ordering::Acquire);
                    table = (v & PTE_PFN_MASK) >> PAGE_SHIFT;
                }
                let e = self.table_entry(table, table_index(va, missing));
                if e.load(Ordering::Acquire) & P == 0 {
                    let entry = (new << PAGE_SHIFT)
                        | if pt.user {
                            TABLE_ENTRY
                        } else {
                            KERN_TABLE_ENTRY
                        };
                    e.store(entry, Ordering::Release);
                    true
                } else {
                    false
                }
            };
            if !used {
                self.table_free(cpu, new);
            }
        }
    }

    /// `set_pte_at`: install `pte` for the page at `va`, allocating tables as needed.
    /// `ENOMEM` when a table cannot be allocated, `EFAULT` for a non-canonical address.
    pub fn set_pte_at(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
        pte: Pte,
    ) -> Result<(), Errno> {
        let slot = self.walk(Some(cpu), pt, va)?.ok_or(Errno::ENOMEM)?;
        let _g = pt.lock.lock();
        slot.store(pte.0, Ordering::Release);
        Ok(())
    }

    /// `pte_alloc` + `pte_offset_map`: the PTE slot of `va`, allocating the missing table
    /// levels. The slot stays valid until the owner of `pt` frees its tables (munmap/exit).
    pub fn pte_alloc_slot(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
    ) -> Result<&AtomicU64, Errno> {
        self.walk(Some(cpu), pt, va)?.ok_or(Errno::ENOMEM)
    }

    /// `pte_offset_map` over a run: the `n` consecutive PTE slots from `va` on, allocating the
    /// table levels. The run must lie in one PTE table (inside one 2 MiB region).
    pub fn pte_alloc_run(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
        n: usize,
    ) -> Result<&[AtomicU64], Errno> {
        assert!(
            n >= 1 && table_index(va, 3) + n <= PTRS_PER_TABLE as usize,
            "a PTE run of {n} from {va:#x} crosses its table"
        );
        let first = self.pte_alloc_slot(cpu, pt, va)?;
        // SAFETY: `first` is entry `table_index(va, 3)` of a PTE table page and the next
        // `n - 1` entries lie in the same page (asserted); the page lives as long as `first`
        // does (the rule of `pte_alloc_slot`), and its entries are only accessed as atomics.
        Ok(unsafe { core::slice::from_raw_parts(first as *const AtomicU64, n) })
    }

    /// The PTE for `va`, or `None` where no table covers it.
    pub fn pte_lookup(&self, pt: &PgTable, va: u64) -> Option<Pte> {
        let slot = self.walk_lookup(pt, va)?;
        Some(Pte(slot.load(Ordering::Acquire)))
    }

    /// `ptep_get_and_clear`: remove the entry for `va`, returning what it was. The caller
    /// flushes the TLB before the page may be reused.
    pub fn pte_clear(&self, pt: &PgTable, va: u64) -> Option<Pte> {
        let _g = pt.lock.lock();
        let slot = self.walk_lookup(pt, va)?;
        let old = slot.swap(0, Ordering::AcqRel);
        (old != 0).then_some(Pte(old))
    }

    /// `ptep_set_wrprotect` / `change_pte_range`-style update of an existing entry: `f` maps
    /// the old entry to the new one. Returns the old entry.
    pub fn pte_update(&self, pt: &PgTable, va: u64, f: impl Fn(Pte) -> Pte) -> Option<Pte> {
        let _g = pt.lock.lock();
        let slot = self.walk_lookup(pt, va)?;
        let old = Pte(slot.load(Ordering::Acquire));
        if old.is_none() {
            return None;
        }
        // The MMU may set A/D concurrently: retry until our update lands on what we read.
        let mut cur = old;
        loop {
            match slot.compare_exchange(cur.0, f(cur).0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(cur),
                Err(v) => cur = Pte(v),
            }
        }
    }

    /// Visit every non-empty PTE slot mapping an address in `[start, end)`, skipping absent
    /// tables (the walk `zap_pte_range` and friends make). `f` gets the address and the slot.
    pub fn for_each_pte(
        &self,
        pt: &PgTable,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, &AtomicU64),
    ) {
        self.walk_range(pt.pgd, 0, 0, start, end, &mut f);
    }

    fn walk_range(
        &self,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, &AtomicU64),
    ) {
        let span = 1u64 << LEVEL_SHIFTS[level];
        let first = if start > base {
            ((start - base) >> LEVEL_SHIFTS[level]) as usize
        } else {
            0
        };
        for i in first..PTRS_PER_TABLE as usize {
            let lo = base + i as u64 * span;
            if lo >= end {
                break;
            }
            let e = self.table_entry(table, i);
            let v = e.load(Ordering::Acquire);
            if level == 3 {
                if v != 0 && lo + span > start {
                    f(lo, e);
                }
                continue;
            }
            if v & P == 0 || v & PteFlags::PSE.bits() != 0 {
                continue;
            }
            self.walk_range(
                (v & PTE_PFN_MASK) >> PAGE_SHIFT,
                level + 1,
                lo,
                start,
                end,
                f,
            );
        }
    }

    /// `free_pgd_range` over `[start, end)` alone: free the tables that lie entirely inside it
    /// and map nothing. See [`Kernel::free_pgtables`].
    pub fn free_pgd_range(&self, cpu: &CpuGuard<'_>, pt: &PgTable, start: u64, end: u64) -> u64 {
        self.free_pgtables(cpu, pt, start, end, start, end)
    }

    /// `free_pgtables`/`free_pgd_range(addr, end, floor, ceiling)`: walk only the tables that
    /// map `[addr, end)`, and free each that maps nothing and lies entirely inside
    /// `[floor, ceiling)` (the space between the surviving neighbours), clearing its entry.
    /// The caller has already removed the PTEs and flushed the TLB, as Linux's
    /// `free_pgtables` runs after `unmap_vmas` and the gather's flush. Returns the table
    /// pages freed.
    pub fn free_pgtables(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        addr: u64,
        end: u64,
        floor: u64,
        ceiling: u64,
    ) -> u64 {
        if addr >= end {
            return 0;
        }
        let _g = pt.lock.lock();
        self.free_level(cpu, pt.pgd, 0, 0, (addr, end), (floor, ceiling))
    }

    fn free_level(
        &self,
        cpu: &CpuGuard<'_>,
        table: u64,
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
            let e = self.table_entry(table, i);
            let v = e.load(Ordering::Acquire);
            if v & P == 0 || v & PteFlags::PSE.bits() != 0 {
                continue;
            }
            let child = (v & PTE_PFN_MASK) >> PAGE_SHIFT;
            if level < 2 {
                freed += self.free_level(cpu, child, level + 1, lo, range, bounds);
            }
            // A child table goes when the space it maps is all between the neighbours and
            // it is empty.
            let inside = lo >= bounds.0 && (hi <= bounds.1 || (hi == 0 && bounds.1 == u64::MAX));
            if inside
                && (0..PTRS_PER_TABLE as usize)
                    .all(|j| self.table_entry(child, j).load(Ordering::Acquire) == 0)
            {
                e.store(0, Ordering::Release);
                self.table_free(cpu, child);
                freed += 1;
            }
        }
        freed
    }

    /// `mm_pgtables_bytes` / `PAGE_SIZE`: the PUD, PMD and PTE tables of an address space's
    /// user half (the PGD itself is not counted, as in Linux).
    pub fn pgtable_pages_of(&self, pt: &PgTable) -> u64 {
        fn count(k: &Kernel, table: u64, level: usize, first: usize, last: usize) -> u64 {
            let mut n = 0;
            for i in first..=last {
                let v = k.table_entry(table, i).load(Ordering::Acquire);
                if v & P == 0 || v & PteFlags::PSE.bits() != 0 {
                    continue;
                }
                n += 1;
                if level < 2 {
                    n += count(k, (v & PTE_PFN_MASK) >> PAGE_SHIFT, level + 1, 0, 511);
                }
            }
            n
        }
        count(self, pt.pgd, 0, 0, 255)
    }

    /// `pgd_free`: free every table of an address space whose pages are all unmapped.
    /// `EBUSY` (nothing freed) if any PTE is still set.
    pub fn pgd_free(&self, cpu: &CpuGuard<'_>, pt: PgTable) -> Result<(), (Errno, PgTable)> {
        self.free_pgd_range(cpu, &pt, 0, 0x0000_8000_0000_0000);
        self.free_pgd_range(cpu, &pt, 0xffff_8000_0000_0000, u64::MAX);
        if (0..PTRS_PER_TABLE as usize)
            .any(|i| self.table_entry(pt.pgd, i).load(Ordering::Acquire) != 0)
        {
            return Err((Errno::EBUSY, pt));
        }
        self.table_free(cpu, pt.pgd);
        Ok(())
    }

    /// Pages used by page tables (`PageTables:`).
    pub fn page_table_pages(&self) -> u64 {
        self.global_node_page_state(NR_PAGETABLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encoding() {
        let p = Pte::new(0x1234, PAGE_COPY);
        assert_eq!(p.pfn(), 0x1234);
        assert!(
            p.is_present() && !p.writable() && p.flags().contains(PteFlags::NX | PteFlags::USER)
        );
        assert!(!Pte::new(5, PAGE_NONE).flags().contains(PteFlags::PRESENT));
        assert!(
            Pte::new(5, PAGE_NONE).is_present(),
            "PROT_NONE entries count as present to Linux"
        );
        assert_eq!(p.modify(PAGE_SHARED).pfn(), 0x1234);
        assert!(p.modify(PAGE_SHARED).writable());
        assert!(is_canonical(0x7fff_ffff_f000) && is_canonical(0xffff_8880_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000));
        assert_eq!(table_index(0xffff_8880_0000_0000, 0), 273);
        assert_eq!(PAGE_KERNEL.0, 0x8000_0000_0000_0163);
        assert_eq!(PAGE_SHARED.0, 0x8000_0000_0000_0027);
    }
}
