//! PMD-level entries: the 2 MiB (huge) mappings of transparent huge pages (`pmd_lock`,
//! `pmdp_huge_get_and_clear`, `pmdp_set_wrprotect`, `pmdp_set_access_flags`,
//! `pmdp_test_and_clear_young`, `set_pmd_at`, `pmd_populate` and
//! `pgtable_trans_huge_deposit`/`withdraw` of `arch/x86/mm/pgtable.c` and
//! `mm/pgtable-generic.c`).
//!
//! A [`PmdGuard`] is the PMD entry of one address, with the address space's
//! `page_table_lock` held (x86-64 Linux without split PMD locks uses `mm->page_table_lock`
//! as `pmd_lock`): the lock that also serializes populating and freeing tables, so nobody
//! installs a PTE table over a huge entry or frees the PMD table under it. The rules of the
//! cursor hold here too: a present entry changes only by an atomic exchange or
//! compare-exchange (the MMU sets Accessed and Dirty on a huge entry as on a PTE), and a change
//! that takes a translation away is recorded in the caller's [`MmuGather`] as a 2 MiB one.
//!
//! Splitting ([`PmdGuard::split_to_table`]) never makes the entry none on the way: the PTE
//! table that replaces the huge entry is filled first (from the table deposited when the huge
//! entry was made, so a split never needs memory) and then swapped in with one
//! compare-exchange against the huge value it was filled from; the huge translation is then
//! flushed. An access in between uses either the huge entry or the PTEs, which map the same
//! frames with the same bits.

use super::table::PtlGuard;
use super::{table_index, PgTable, Pte, PteFlags, LEVEL_SHIFTS, PTE_PFN_MASK, PTRS_PER_TABLE};
use crate::addr::{Pfn, PAGE_SHIFT};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mmu_gather::MmuGather;
use crate::sync::SpinLockGuard;
use crate::Kernel;
use core::sync::atomic::{AtomicU64, Ordering};

/// `HPAGE_PMD_SIZE`: bytes one PMD entry maps.
pub const HPAGE_PMD_SIZE: u64 = 1 << LEVEL_SHIFTS[2];
/// `HPAGE_PMD_ORDER`.
pub const HPAGE_PMD_ORDER: u32 = LEVEL_SHIFTS[2] - PAGE_SHIFT;
/// `HPAGE_PMD_NR`.
pub const HPAGE_PMD_NR: u64 = 1 << HPAGE_PMD_ORDER;

const PSE: u64 = PteFlags::PSE.bits();
const P: u64 = PteFlags::PRESENT.bits();
/// A PMD entry pointing to a user PTE table (`_PAGE_TABLE`).
const TABLE_ENTRY: u64 =
    P | PteFlags::RW.bits() | PteFlags::USER.bits() | PteFlags::ACCESSED.bits();

impl Pte {
    /// `pmd_trans_huge()`: a huge (leaf) PMD entry, present or PROT_NONE.
    pub const fn is_huge(self) -> bool {
        self.0 & PSE != 0
    }
    /// `pmd_mkhuge(pfn_pmd(pfn, prot))`: a 2 MiB leaf entry.
    pub const fn new_huge(pfn: Pfn, prot: super::PgProt) -> Self {
        Pte(Pte::new(pfn, prot).0 | PSE)
    }
}

/// The PMD entry of one address, with the `page_table_lock` held. See the module doc.
pub struct PmdGuard<'a> {
    k: &'a Kernel,
    pt: &'a PgTable,
    /// The address of the first byte the entry maps.
    haddr: u64,
    slot: &'a AtomicU64,
    _lock: SpinLockGuard<'a, ()>,
}

impl Kernel {
    /// `pmd_lock` on the PMD entry mapping `va`, the levels above it allocated first
    /// (`pud_alloc`/`pmd_alloc`; `ENOMEM`, or `EFAULT` for a non-canonical address).
    pub fn pmd_lock_alloc<'a>(
        &'a self,
        cpu: &CpuGuard<'_>,
        pt: &'a PgTable,
        va: u64,
    ) -> Result<PmdGuard<'a>, Errno> {
        self.pmd_table_alloc(cpu, pt, va)?;
        self.pmd_lock(pt, va).ok_or(Errno::ENOMEM)
    }

    /// `pmd_lock` on the PMD entry mapping `va`, if the levels above it exist. Opened by the
    /// holder of the address space or by a reverse-map walker holding the rmap lock of a VMA
    /// covering `va`, as a PTE cursor is.
    pub fn pmd_lock<'a>(&'a self, pt: &'a PgTable, va: u64) -> Option<PmdGuard<'a>> {
        let lock = pt.lock.lock();
        let table = self.pmd_table(pt, va)?;
        // SAFETY: `table` was reached from the live PGD under the page_table_lock, which we
        // hold: only its holder frees tables, so it stays for the guard's lifetime.
        let slot = unsafe { self.entry(table, table_index(va, 2)) };
        Some(PmdGuard {
            k: self,
            pt,
            haddr: va & !(HPAGE_PMD_SIZE - 1),
            slot,
            _lock: lock,
        })
    }

    /// The huge (PMD) entry mapping `va` as it is now, without a lock (`None` when `va`'s
    /// PMD entry is not a huge one).
    pub fn huge_pmd_lookup(&self, pt: &PgTable, va: u64) -> Option<Pte> {
        let table = self.pmd_table(pt, va)?;
        // SAFETY: `table` comes from a walk of live tables.
        let v = Pte(unsafe { self.load(table, table_index(va, 2)) });
        v.is_huge().then_some(v)
    }

    /// Tables deposited for huge entries of `pt` (counted in `nr_page_table_pages`).
    pub fn deposited_tables(&self, pt: &PgTable) -> u64 {
        pt.deposit.lock().1
    }

    /// `pte_alloc_one` + `pgtable_trans_huge_deposit`: set aside a PTE table for the split of
    /// a huge entry about to be made in `pt`, so that the split never needs memory.
    pub fn pgtable_deposit(&self, cpu: &CpuGuard<'_>, pt: &PgTable) -> Result<(), Errno> {
        let t = self.table_alloc(cpu)?;
        let mut d = pt.deposit.lock();
        d.0.push_back(&self.mem_map, t);
        d.1 += 1;
        Ok(())
    }

    /// `pgtable_trans_huge_withdraw` + `pte_free`: give back a deposited table when the huge
    /// entry it was set aside for goes without a split (it never was a table an MMU saw).
    pub fn pgtable_withdraw_free(&self, cpu: &CpuGuard<'_>, pt: &PgTable) {
        if let Some(t) = self.pgtable_withdraw(pt) {
            self.table_free(cpu, t);
        }
    }

    fn pgtable_withdraw(&self, pt: &PgTable) -> Option<Pfn> {
        let mut d = pt.deposit.lock();
        let t = d.0.pop_front(&self.mem_map)?;
        d.1 -= 1;
        Some(t)
    }
}

impl<'a> PmdGuard<'a> {
    /// The first address the entry maps.
    #[inline]
    pub fn haddr(&self) -> u64 {
        self.haddr
    }

    /// The entry's value now (a huge entry, a table entry, or none).
    #[inline]
    pub fn get(&self) -> Pte {
        Pte(self.slot.load(Ordering::Acquire))
    }

    /// `set_pmd_at` over a none entry (`pmd_none` re-checked under the lock): install the
    /// huge entry `new`. `Err(current)` if the entry is not none any more.
    pub fn install_huge(&mut self, new: Pte) -> Result<(), Pte> {
        debug_assert!(new.is_huge());
        self.slot
            .compare_exchange(0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Pte)
    }

    /// `pmdp_huge_get_and_clear`: empty a huge entry with one exchange; its 2 MiB translation
    /// is recorded in `tlb`.
    pub fn clear_huge(&mut self, tlb: &mut MmuGather<'_>) -> Pte {
        let old = Pte(self.slot.swap(0, Ordering::AcqRel));
        debug_assert!(old.is_huge(), "clear_huge on a non-huge PMD {old:?}");
        if old.is_present() {
            tlb.record_huge(self.pt, self.haddr, old);
        }
        old
    }

    /// Change a huge entry by `f` with one compare-exchange landing on what `f` saw
    /// (`pmdp_set_wrprotect`, `pmdp_test_and_clear_young`, `change_huge_pmd`); the old value
    /// is returned and recorded in `tlb` when the change needs a flush.
    pub fn update_huge(&mut self, tlb: &mut MmuGather<'_>, f: impl Fn(Pte) -> Pte) -> Pte {
        let mut cur = self.get();
        loop {
            let new = f(cur);
            if new == cur {
                return cur;
            }
            match self
                .slot
                .compare_exchange(cur.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if cur.needs_flush_to(new) {
                        tlb.record_huge(self.pt, self.haddr, cur);
                    }
                    return cur;
                }
                Err(v) => cur = Pte(v),
            }
        }
    }

    /// `pmdp_set_access_flags`: add `bits` to a huge entry (no flush needed); the old value.
    pub fn set_flags_huge(&mut self, bits: PteFlags) -> Pte {
        Pte(self.slot.fetch_or(bits.bits(), Ordering::AcqRel))
    }

    /// `collapse_huge_page`'s `set_pmd_at`: the entry, a table whose PTEs the caller has
    /// emptied (and flushed), becomes the huge entry `huge`. Returns the table, for the
    /// caller to deposit; `None` (nothing changed) if the entry is no table.
    pub(crate) fn collapse_table(&mut self, huge: Pte) -> Option<Pfn> {
        debug_assert!(huge.is_huge());
        let cur = self.get();
        if cur.is_none() || cur.is_huge() {
            return None;
        }
        let table = cur.pfn();
        debug_assert!(
            // SAFETY: `table` is the live PTE table this PMD entry points at; we hold the
            // PMD lock, so it is not freed under us.
            (0..PTRS_PER_TABLE).all(|i| unsafe { self.k.load(table, i as usize) } == 0),
            "BUG: a collapse replaces a PTE table that still maps something"
        );
        self.slot
            .compare_exchange(cur.0, huge.0, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(table)
    }

    /// `__split_huge_pmd_locked`'s page-table half: replace the huge entry by a PTE table
    /// (the one deposited for it) whose 512 entries map the same frames with what
    /// `pte_of(huge, i)` makes of the huge value (the caller keeps Accessed, Dirty and the
    /// permissions); the huge translation is recorded in `tlb`. Returns the huge value
    /// replaced, or `None` if the entry is not huge (nothing changed).
    pub fn split_to_table(
        &mut self,
        tlb: &mut MmuGather<'_>,
        pte_of: impl Fn(Pte, u64) -> Pte,
    ) -> Option<Pte> {
        let k = self.k;
        let (cur, ptl) = self.fill_and_publish(k, pte_of)?;
        drop(ptl);
        if cur.is_present() {
            tlb.record_huge(self.pt, self.haddr, cur);
        }
        Some(cur)
    }

    /// [`PmdGuard::split_to_table`] for `split_huge_page`: the new PTE table's lock is taken
    /// before the table is published and handed to the caller, so no PTE-level user sees the
    /// table until the caller lets go (the folio's pages become order-0 pages meanwhile).
    /// The huge translation is not recorded: the caller flushes it (`old`, at `haddr`) after
    /// releasing the lock. Returns the huge value replaced and the held lock.
    /// `k` is this guard's kernel: the lock outlives the borrow of the address space.
    pub(crate) fn split_to_table_locked<'k>(
        &mut self,
        k: &'k Kernel,
        pte_of: impl Fn(Pte, u64) -> Pte,
    ) -> Option<(Pte, PtlGuard<'k>)> {
        debug_assert!(core::ptr::eq(k, self.k));
        self.fill_and_publish(k, pte_of)
    }

    /// Fill the deposited table from the huge value and swap it in; the table's lock is
    /// held (taken while nobody else can reach the table, so it never waits).
    fn fill_and_publish<'k>(
        &mut self,
        k: &'k Kernel,
        pte_of: impl Fn(Pte, u64) -> Pte,
    ) -> Option<(Pte, PtlGuard<'k>)> {
        let mut cur = self.get();
        if !cur.is_huge() {
            return None;
        }
        let table = self
            .k
            .pgtable_withdraw(self.pt)
            .expect("BUG: a huge PMD without its deposited page table");
        let ptl = k.ptl_lock(table);
        loop {
            for i in 0..PTRS_PER_TABLE {
                let v = pte_of(cur, i);
                // SAFETY: `table` is a table page we own (withdrawn, not yet reachable).
                unsafe { self.k.entry(table, i as usize) }.store(v.0, Ordering::Relaxed);
            }
            let new = (table.0 << PAGE_SHIFT) | TABLE_ENTRY;
            match self
                .slot
                .compare_exchange(cur.0, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                // The MMU set Accessed or Dirty meanwhile: fill again from the new value.
                Err(v) => cur = Pte(v),
            }
        }
        Some((cur, ptl))
    }
}

/// The PTE that maps page `i` of the huge entry `huge` with the same bits (a PROT_NONE huge
/// entry gives PROT_NONE PTEs).
pub fn huge_to_pte(huge: Pte, i: u64) -> Pte {
    Pte((huge.0 & !PTE_PFN_MASK & !PSE) | ((huge.pfn().0 + i) << PAGE_SHIFT))
}
