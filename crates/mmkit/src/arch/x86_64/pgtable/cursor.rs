//! The page-table cursor: the only way to read-modify-write a PTE (`pte_offset_map_lock`,
//! `pte_same`, `set_pte_at`, `ptep_get_and_clear`, `ptep_set_wrprotect`,
//! `ptep_test_and_clear_young`, `ptep_set_access_flags`, with the locking of
//! `mm/memory.c`'s walkers and Asterinas's `ostd` cursor as models).
//!
//! A [`PteCursor`] is opened on a range of one address space. [`Kernel::pte_cursor_alloc`]
//! allocates every table level the range needs first; [`Kernel::pte_cursor`] visits only the
//! tables that exist. The cursor sits on one entry at a time and holds the split lock of the
//! PTE table that entry is in; moving into another table drops the old lock and takes the new
//! one, and dropping the cursor drops the last. Under that lock:
//!
//! - [`PteCursor::install`] and [`PteCursor::replace`] write an entry only if it still holds
//!   what the caller saw (`pte_same`), and report the current value otherwise;
//! - every change to a present entry is one atomic exchange or compare-exchange, so an
//!   Accessed or Dirty bit an MMU sets in between is never lost;
//! - a change that takes something away from a translation is recorded in the caller's
//!   [`MmuGather`], whose flush comes before any frame is freed.
//!
//! Who may open a cursor: the holder of the address space (`&MmStruct` or `&mut MmStruct`,
//! i.e. its `mmap_lock`), a reverse-map walker holding the rmap lock of a VMA that covers the
//! range, or the kernel on `init_mm` ranges it owns (a vmalloc area). Those are exactly the
//! walkers `free_pgtables` excludes, so the tables a cursor walks stay.

use super::table::PtlGuard;
use super::{table_index, PgTable, Pte, PteFlags, LEVEL_SHIFTS};
use crate::addr::{Pfn, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mmu_gather::MmuGather;
use crate::Kernel;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes one PTE table maps.
const PMD_SIZE: u64 = 1 << LEVEL_SHIFTS[2];

/// A locked position in one address space's PTEs. See the module doc.
pub struct PteCursor<'a> {
    k: &'a Kernel,
    pt: &'a PgTable,
    end: u64,
    /// The next address [`PteCursor::next_entry`] examines.
    scan: u64,
    /// The entry the cursor is on.
    va: u64,
    /// The PTE table holding `va`'s entry (`Pfn(0)`: none found) and the address its first
    /// entry maps.
    table: Pfn,
    base: u64,
    /// That table's lock, while held.
    ptl: Option<PtlGuard<'a>>,
}

impl Kernel {
    /// A cursor over the existing PTE tables of `[start, end)` in `pt` (nothing allocated).
    pub fn pte_cursor<'a>(&'a self, pt: &'a PgTable, start: u64, end: u64) -> PteCursor<'a> {
        PteCursor {
            k: self,
            pt,
            end,
            scan: start,
            va: start,
            table: Pfn(0),
            base: 0,
            ptl: None,
        }
    }

    /// A cursor over `[start, end)` in `pt` with every table level the range needs allocated
    /// first (`ENOMEM` if one cannot be, `EFAULT` for a non-canonical address). Tables
    /// allocated before a failure stay; `free_pgtables` reclaims them with the range. The
    /// cursor is on `start`'s entry, its table not yet locked: [`PteCursor::peek`] reads the
    /// entry without the lock, [`PteCursor::lock`] takes it (a fault does exactly that).
    pub fn pte_cursor_alloc<'a>(
        &'a self,
        cpu: &CpuGuard<'_>,
        pt: &'a PgTable,
        start: u64,
        end: u64,
    ) -> Result<PteCursor<'a>, Errno> {
        let first = self.pte_table_alloc(cpu, pt, start)?;
        let mut va = (start & !(PMD_SIZE - 1)).saturating_add(PMD_SIZE);
        while va < end {
            self.pte_table_alloc(cpu, pt, va)?;
            va = match va.checked_add(PMD_SIZE) {
                Some(v) => v,
                None => break,
            };
        }
        let mut c = self.pte_cursor(pt, start, end);
        c.va = start & !(PAGE_SIZE - 1);
        c.scan = c.va.saturating_add(PAGE_SIZE);
        c.table = first;
        c.base = start & !(PMD_SIZE - 1);
        Ok(c)
    }
}

impl<'a> PteCursor<'a> {
    /// The address of the entry the cursor is on.
    #[inline]
    pub fn va(&self) -> u64 {
        self.va
    }

    /// The address space this cursor works on.
    #[inline]
    pub fn pt(&self) -> &'a PgTable {
        self.pt
    }

    /// Whether `va` lies in the table the cursor knows.
    #[inline]
    fn in_table(&self, va: u64) -> bool {
        self.table.0 != 0 && va.wrapping_sub(self.base) < PMD_SIZE
    }

    /// Make `table` (mapping from `base`) the cursor's, its lock not held yet.
    #[inline]
    fn set_table(&mut self, table: Pfn, base: u64) {
        if self.table != table {
            // One PTE lock at a time, as Linux's walkers hold (so no lock order between
            // tables is needed).
            self.ptl = None;
            self.table = table;
            self.base = base;
        }
    }

    /// `pte_offset_map_lock`'s lock: take the lock of the table the cursor is on (no-op if
    /// held). The cursor must be on a table (after a successful seek, `next`, or
    /// [`Kernel::pte_cursor_alloc`]).
    #[inline]
    pub fn lock(&mut self) {
        debug_assert!(self.table.0 != 0, "BUG: PTE cursor locked off a table");
        if self.ptl.is_none() {
            self.ptl = Some(self.k.ptl_lock(self.table));
        }
    }

    /// `pte_unmap_unlock`: drop the table's lock; the cursor keeps its position.
    #[inline]
    pub fn unlock(&mut self) {
        self.ptl = None;
    }

    /// Move to the entry of `va` (inside the range) and lock its table. False when no PTE
    /// table covers `va` (possible only for a cursor that does not allocate).
    pub fn seek(&mut self, va: u64) -> bool {
        debug_assert!(
            va < self.end || self.end == 0,
            "seek outside the cursor's range"
        );
        let va = va & !(PAGE_SIZE - 1);
        self.va = va;
        self.scan = va.saturating_add(PAGE_SIZE);
        if !self.in_table(va) {
            match self.k.pte_table(self.pt, va) {
                Some(t) => self.set_table(t, va & !(PMD_SIZE - 1)),
                None => {
                    self.ptl = None;
                    self.table = Pfn(0);
                    return false;
                }
            }
        }
        self.lock();
        true
    }

    /// [`PteCursor::seek`], allocating the table levels of `va` first if they are missing
    /// (the cursor's lock is dropped while allocating, which may reclaim).
    pub fn seek_alloc(&mut self, cpu: &CpuGuard<'_>, va: u64) -> Result<(), Errno> {
        if self.seek(va) {
            return Ok(());
        }
        self.k.pte_table_alloc(cpu, self.pt, va)?;
        if self.seek(va) {
            Ok(())
        } else {
            Err(Errno::ENOMEM)
        }
    }

    /// Move to the next entry that is not none, from where the last [`PteCursor::next_entry`] or
    /// [`PteCursor::seek`] left off, and return its address and value (the walk of
    /// `zap_pte_range` and friends), its table locked. Missing tables are skipped whole.
    pub fn next_entry(&mut self) -> Option<(u64, Pte)> {
        while self.scan < self.end {
            let va = self.scan;
            if !self.in_table(va) {
                let Some((t, base)) = self.k.next_pte_table(self.pt, va, self.end) else {
                    self.scan = self.end;
                    return None;
                };
                self.set_table(t, base);
                if base > va {
                    self.scan = base;
                }
            }
            self.lock();
            let table_end = self.base.saturating_add(PMD_SIZE).min(self.end);
            let mut a = self.scan;
            while a < table_end {
                // SAFETY: `self.table` is the live PTE table we hold locked.
                let v =
                    unsafe { self.k.entry(self.table, table_index(a, 3)) }.load(Ordering::Acquire);
                if v != 0 {
                    self.va = a;
                    self.scan = a + PAGE_SIZE;
                    return Some((a, Pte(v)));
                }
                a += PAGE_SIZE;
            }
            if table_end >= self.end {
                self.scan = self.end;
                return None;
            }
            self.scan = table_end;
        }
        None
    }

    /// `ptep_get_lockless`: the entry's value without the table's lock (a fault's
    /// `orig_pte`, to be re-checked under the lock before anything is installed). `Pte(0)`
    /// when the cursor is on no table.
    #[inline]
    pub fn peek(&self) -> Pte {
        if !self.in_table(self.va) {
            return Pte(0);
        }
        // SAFETY: `self.table` is a live PTE table (found by a walk the opener's rules keep
        // valid) and `va` lies in it.
        Pte(unsafe { self.k.entry(self.table, table_index(self.va, 3)) }.load(Ordering::Acquire))
    }

    /// Whether `[start, start + nr pages)` lies in the table the cursor is on.
    #[inline]
    fn range_in_table(&self, start: u64, nr: u64) -> bool {
        nr > 0 && self.in_table(start) && self.in_table(start + ((nr - 1) << crate::PAGE_SHIFT))
    }

    /// `pte_range_none`: whether the `nr` entries from `start` (in the cursor's table) are
    /// all none; false when the range leaves the table. Read without the lock unless held
    /// (a fault checks again under it before installing).
    pub fn range_none(&self, start: u64, nr: u64) -> bool {
        if !self.range_in_table(start, nr) {
            return false;
        }
        (0..nr).all(|i| {
            let a = start + (i << crate::PAGE_SHIFT);
            // SAFETY: `self.table` is a live PTE table (see `peek`) and `a` lies in it.
            unsafe { self.k.entry(self.table, table_index(a, 3)) }.load(Ordering::Acquire) == 0
        })
    }

    /// The entry at `va` of the cursor's table, which must be locked; `None` when `va` lies
    /// outside it.
    pub fn get_at(&self, va: u64) -> Option<Pte> {
        assert!(
            self.ptl.is_some(),
            "BUG: PTE cursor read a neighbour without the table's lock"
        );
        if !self.in_table(va) {
            return None;
        }
        // SAFETY: `self.table` is the live PTE table we hold locked, and `va` lies in it.
        Some(Pte(
            unsafe { self.k.entry(self.table, table_index(va, 3)) }.load(Ordering::Acquire)
        ))
    }

    /// `set_ptes` after `pte_range_none`, under the table's lock: the `nr` entries from
    /// `start` (in the cursor's table, all none) map `nr` consecutive frames from `first`'s,
    /// with `first`'s bits. `EBUSY` and nothing changed if one is not none (or the range
    /// leaves the table). None entries are cached by no MMU, so nothing needs flushing.
    pub fn install_range(&mut self, start: u64, first: Pte, nr: u64) -> Result<(), Errno> {
        assert!(
            self.ptl.is_some(),
            "BUG: PTE cursor changed entries without the table's lock"
        );
        if !self.range_none(start, nr) {
            return Err(Errno::EBUSY);
        }
        for i in 0..nr {
            let a = start + (i << crate::PAGE_SHIFT);
            let v = first.0 + (i << crate::PAGE_SHIFT);
            // SAFETY: as in `range_none`; the lock keeps every other writer out, and an
            // MMU never writes a none entry.
            unsafe { self.k.entry(self.table, table_index(a, 3)) }.store(v, Ordering::Release);
        }
        Ok(())
    }

    /// The slot of the entry the cursor is on; its table must be locked.
    #[inline]
    fn slot(&self) -> &AtomicU64 {
        assert!(
            self.ptl.is_some() && self.in_table(self.va),
            "BUG: PTE cursor changed an entry without its table's lock"
        );
        // SAFETY: `self.table` is the live PTE table we hold locked, and `va` lies in it.
        unsafe { self.k.entry(self.table, table_index(self.va, 3)) }
    }

    /// `ptep_get`: the entry's value now.
    #[inline]
    pub fn get(&self) -> Pte {
        Pte(self.slot().load(Ordering::Acquire))
    }

    /// `set_pte_at` after `pte_same(*pte, orig)`: install `new` where the entry still holds
    /// `orig`, which must be an entry no MMU uses (none, a swap entry, PROT_NONE): nothing
    /// can be cached for it, so nothing needs flushing. `Err(current)` if it changed.
    pub fn install(&mut self, orig: Pte, new: Pte) -> Result<(), Pte> {
        debug_assert!(
            !orig.hw_present(),
            "install over a live entry {orig:?}: use replace"
        );
        self.slot()
            .compare_exchange(orig.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Pte)
    }

    /// `ptep_clear_flush` + `set_pte_at` after `pte_same(*pte, orig)`: replace a live entry
    /// that still holds exactly `orig` (an Accessed or Dirty bit set since counts as a
    /// change) with `new`, recording the old translation in `tlb` when the change needs a
    /// flush. `Err(current)` if it changed.
    pub fn replace(&mut self, orig: Pte, new: Pte, tlb: &mut MmuGather<'_>) -> Result<(), Pte> {
        self.slot()
            .compare_exchange(orig.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .map_err(Pte)?;
        if orig.needs_flush_to(new) {
            tlb.record(self.pt, self.va, orig);
        }
        Ok(())
    }

    /// Change the entry by `f` (which sees the current value, as often as an MMU changes it
    /// under us) with one compare-exchange that lands on what `f` saw; the old value is
    /// returned and recorded in `tlb` when the change needs a flush (`ptep_set_wrprotect`,
    /// `ptep_test_and_clear_young`, `ptep_modify_prot_start/commit`).
    pub fn update(&mut self, tlb: &mut MmuGather<'_>, f: impl Fn(Pte) -> Pte) -> Pte {
        let slot = self.slot();
        let mut cur = Pte(slot.load(Ordering::Acquire));
        loop {
            let new = f(cur);
            if new == cur {
                return cur;
            }
            match slot.compare_exchange(cur.0, new.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if cur.needs_flush_to(new) {
                        tlb.record(self.pt, self.va, cur);
                    }
                    return cur;
                }
                Err(v) => cur = Pte(v),
            }
        }
    }

    /// `ptep_set_access_flags`: add `bits` (Accessed, Dirty, RW) to a present entry. Adding
    /// never needs a flush: a CPU holding the narrower entry faults spuriously and re-walks.
    /// Returns the old value.
    pub fn set_flags(&mut self, bits: PteFlags) -> Pte {
        Pte(self.slot().fetch_or(bits.bits(), Ordering::AcqRel))
    }

    /// `ptep_get_and_clear`: empty the entry with one exchange (whatever an MMU set up to that
    /// instant is in the value returned); a present entry's translation (PROT_NONE ones too,
    /// whose page the caller may free) is recorded in `tlb`.
    pub fn clear(&mut self, tlb: &mut MmuGather<'_>) -> Pte {
        let old = Pte(self.slot().swap(0, Ordering::AcqRel));
        if old.is_present() {
            tlb.record(self.pt, self.va, old);
        }
        old
    }

    /// How many entries, from the one the cursor is on, lie both in its PTE table and in its
    /// range: the most a batch starting here may span (`pmd_addr_end` bounded by the walk's
    /// end).
    #[inline]
    pub fn batch_limit(&self) -> u64 {
        let table_end = self.base.saturating_add(PMD_SIZE);
        let end = if self.end == 0 {
            table_end
        } else {
            table_end.min(self.end)
        };
        end.saturating_sub(self.va) >> crate::PAGE_SHIFT
    }

    /// The entry `i` places after the one the cursor is on (`ptep_get(ptep + i)`), read under
    /// the table's lock; `i` must be below [`PteCursor::batch_limit`].
    #[inline]
    pub fn get_next(&self, i: u64) -> Pte {
        assert!(
            self.ptl.is_some() && i < self.batch_limit(),
            "BUG: PTE cursor read past its table or without its lock"
        );
        let a = self.va + (i << crate::PAGE_SHIFT);
        // SAFETY: `self.table` is the live PTE table we hold locked, and `a` lies in it
        // (below the table's end, checked above).
        Pte(unsafe { self.k.entry(self.table, table_index(a, 3)) }.load(Ordering::Acquire))
    }

    /// The next [`PteCursor::next_entry`] looks past the `nr` entries from the one the cursor
    /// is on (a batch the caller dealt with), `nr` at least 1 and within
    /// [`PteCursor::batch_limit`].
    #[inline]
    pub fn skip_batch(&mut self, nr: u64) {
        debug_assert!(nr >= 1 && nr <= self.batch_limit());
        self.scan = self.va + (nr << crate::PAGE_SHIFT);
    }

    /// `get_and_clear_full_ptes`: empty the `nr` present entries from the one the cursor is
    /// on (each with one exchange, each translation recorded in `tlb`) and return the first
    /// one's old value with the Accessed and Dirty bits of all of them merged in, so that a
    /// bit an MMU set on any page of the batch up to its clear is seen. The caller checked
    /// (under this lock) that they map consecutive pages of one folio; `nr` within
    /// [`PteCursor::batch_limit`].
    pub fn clear_ptes(&mut self, tlb: &mut MmuGather<'_>, nr: u64) -> Pte {
        assert!(
            self.ptl.is_some() && nr >= 1 && nr <= self.batch_limit(),
            "BUG: PTE batch cleared past its table or without its lock"
        );
        let first = table_index(self.va, 3);
        let mut merged = Pte(0);
        for i in 0..nr as usize {
            // SAFETY: `self.table` is the live PTE table we hold locked, and entries
            // `first..first + nr` lie in it (checked above).
            let old = Pte(unsafe { self.k.entry(self.table, first + i) }.swap(0, Ordering::AcqRel));
            if i == 0 {
                merged = old;
            } else {
                merged = Pte(merged.0 | (old.0 & (PteFlags::ACCESSED | PteFlags::DIRTY).bits()));
            }
        }
        if merged.is_present() {
            tlb.record_range(self.pt, self.va, merged, nr);
        }
        merged
    }

    /// `wrprotect_ptes`: take the write bit away from the `nr` entries from the one the cursor
    /// is on (each with the compare-exchange of [`PteCursor::update`], the old translations
    /// recorded in `tlb` where they were writable). Returns whether any of them was dirty when
    /// write-protected (a Dirty bit an MMU set after the caller last read it is seen).
    pub fn wrprotect_ptes(&mut self, tlb: &mut MmuGather<'_>, nr: u64) -> bool {
        assert!(
            self.ptl.is_some() && nr >= 1 && nr <= self.batch_limit(),
            "BUG: PTE batch write-protected past its table or without its lock"
        );
        let first = table_index(self.va, 3);
        let mut dirty = false;
        for i in 0..nr {
            // SAFETY: as in `clear_ptes`.
            let slot = unsafe { self.k.entry(self.table, first + i as usize) };
            let mut cur = Pte(slot.load(Ordering::Acquire));
            loop {
                let new = cur.wrprotect();
                if new == cur {
                    break;
                }
                match slot.compare_exchange(cur.0, new.0, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        if cur.needs_flush_to(new) {
                            tlb.record(self.pt, self.va + (i << crate::PAGE_SHIFT), cur);
                        }
                        break;
                    }
                    Err(v) => cur = Pte(v),
                }
            }
            dirty |= cur.dirty();
        }
        dirty
    }
}
