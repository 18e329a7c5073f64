//! x86-64 4-level page tables: the entry format (`arch/x86/include/asm/pgtable_types.h`,
//! `pgtable_64.h`, `protection_map`), the tables themselves ([`table`]: `pgd_alloc`,
//! `__pte_alloc`, `free_pgd_range`, the hardware walker) and the one way to change an entry
//! ([`cursor`]: `pte_offset_map_lock` and the `ptep_*` operations).
//!
//! Tables are real 4 KiB pages from the buddy allocator (`GFP_KERNEL | __GFP_ZERO`, counted in
//! `nr_page_table_pages` / `PageTables:`), holding 512 64-bit entries in Linux's bit layout:
//! present, RW, user, PWT, PCD, accessed, dirty, PSE, global, three software bits, the pfn in
//! bits 12..51, NX in bit 63. Entries are atomics, because an MMU (the software one here, or a
//! real one under `/dev/kvm`) sets Accessed and Dirty while the kernel works on them.
//!
//! The rules, which no code outside this module can break because no code outside it reaches
//! an entry:
//!
//! - Upper levels (PGD, PUD, PMD entries) are populated and cleared under the address space's
//!   `page_table_lock`; the entries of a PTE table change only under that table's own lock
//!   (split PTE locks, Linux's `ptlock_ptr(ptdesc)`), held by a [`cursor::PteCursor`].
//! - A present entry is changed only by an atomic exchange or compare-exchange, so an
//!   Accessed or Dirty bit set by an MMU in between is never lost.
//! - An entry is installed only over the value the installer last saw (`pte_same`).
//! - A change that takes a translation away (a cleared entry, a lost permission, a cleared
//!   Accessed or Dirty bit) is recorded in an [`MmuGather`](crate::mm::mmu_gather::MmuGather),
//!   whose flush reaches every TLB before any frame it recorded is freed.
//!
//! Invariant: a table page is reachable from exactly one entry of the level above (or is the
//! PGD, or is shared kernel structure), and `nr_page_table_pages` counts every table page
//! allocated and not yet freed.

use crate::addr::{Pfn, PAGE_SHIFT, PAGE_SIZE};
use core::fmt;

pub mod cursor;
pub mod pmd;
pub mod table;

pub use cursor::PteCursor;
pub use pmd::{PmdGuard, HPAGE_PMD_NR, HPAGE_PMD_ORDER, HPAGE_PMD_SIZE};
pub use table::{PgTable, NR_PAGETABLE};

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
/// `PAGE_KERNEL_ROX`: kernel text.
pub const PAGE_KERNEL_ROX: PgProt = PgProt(P | A | D | G);

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
    pub const fn new(pfn: Pfn, prot: PgProt) -> Self {
        Pte(((pfn.0 << PAGE_SHIFT) & PTE_PFN_MASK) | prot.0)
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
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 & PTE_PFN_MASK) >> PAGE_SHIFT)
    }
    /// Whether the MMU can use this entry (`_PAGE_PRESENT`; a PROT_NONE entry is
    /// `pte_present()` to Linux but not to the hardware).
    pub const fn hw_present(self) -> bool {
        self.0 & P != 0
    }
    /// Whether going from `self` to `new` can take away something a TLB may have cached: the
    /// translation itself, a permission, or an Accessed/Dirty bit the MMU would otherwise
    /// not set again. Adding permissions or bits needs no flush on x86 (a stale entry only
    /// causes a spurious fault, which re-walks).
    pub const fn needs_flush_to(self, new: Pte) -> bool {
        if !self.hw_present() {
            return false;
        }
        let lost = self.0 & !new.0 & (P | W | U | A | D);
        let gained_nx = new.0 & X & !self.0 != 0;
        lost != 0 || gained_nx || self.0 & PTE_PFN_MASK != new.0 & PTE_PFN_MASK
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
            self.pfn().0,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encoding() {
        let p = Pte::new(Pfn(0x1234), PAGE_COPY);
        assert_eq!(p.pfn(), Pfn(0x1234));
        assert!(
            p.is_present() && !p.writable() && p.flags().contains(PteFlags::NX | PteFlags::USER)
        );
        assert!(!Pte::new(Pfn(5), PAGE_NONE)
            .flags()
            .contains(PteFlags::PRESENT));
        assert!(
            Pte::new(Pfn(5), PAGE_NONE).is_present(),
            "PROT_NONE entries count as present to Linux"
        );
        assert_eq!(p.modify(PAGE_SHARED).pfn(), Pfn(0x1234));
        assert!(p.needs_flush_to(p.wrprotect().mkold()) && !p.needs_flush_to(Pte(p.0 | A | D)));
        assert!(p.needs_flush_to(Pte(0)) && !Pte(0).needs_flush_to(p));
        assert!(
            p.modify(PAGE_SHARED).needs_flush_to(p),
            "losing RW needs a flush"
        );
        assert!(p.modify(PAGE_SHARED).writable());
        assert!(is_canonical(0x7fff_ffff_f000) && is_canonical(0xffff_8880_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000));
        assert_eq!(table_index(0xffff_8880_0000_0000, 0), 273);
        assert_eq!(PAGE_KERNEL.0, 0x8000_0000_0000_0163);
        assert_eq!(PAGE_SHARED.0, 0x8000_0000_0000_0027);
    }
}
