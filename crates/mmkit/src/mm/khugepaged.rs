//! Collapsing 4 KiB anonymous pages into THPs (`mm/khugepaged.c`): `madvise_collapse`
//! (`MADV_COLLAPSE`), the khugepaged scan (`khugepaged_scan_mm_slot` with its
//! `pages_to_scan` budget), `hpage_collapse_scan_pmd`, `__collapse_huge_page_swapin` and
//! `collapse_huge_page` (`__collapse_huge_page_isolate`, `__collapse_huge_page_copy`), with
//! Linux's tunables (`/sys/kernel/mm/transparent_hugepage/khugepaged/`: `pages_to_scan`
//! 4096, `max_ptes_none` 511, `max_ptes_swap` 64, `max_ptes_shared` 256) and results
//! (`enum scan_result`).
//!
//! The daemon's side: `khugepaged_enter_vma` puts an address space on khugepaged's list
//! (`MMF_VM_HUGEPAGE`) once one of its VMAs may hold THPs (a new mapping or heap under
//! `enabled=always`, `MADV_HUGEPAGE`; a fork inherits it), and `khugepaged_do_scan` is one
//! wakeup of the thread: `pages_to_scan` pages' worth of the listed address spaces, resumed
//! where the last wakeup stopped (`struct khugepaged_scan`), passing the list's head at most
//! twice, with `full_scans` counted at each pass over the whole list; whoever runs the
//! daemon sleeps `scan_sleep_millisecs` between wakeups and `alloc_sleep_millisecs` after a
//! THP could not be allocated (`khugepaged_wait_work`, `khugepaged_alloc_sleep`).
//!
//! A collapse runs with the address space held exclusively (the caller's `&mut MmStruct`
//! is Linux's `mmap_write_lock`), so no fault of it races; reclaim, compaction and the MMU
//! still may. Each page to be copied is locked and pinned (reclaim and compaction pass a
//! locked or pinned page by), its PTE cleared through a gather and the translations
//! flushed before the bytes are copied (a store through a stale TLB entry after the copy
//! would be lost); the PMD entry changes from the table to the huge entry under the PMD
//! lock, and the emptied PTE table leaves through the gather (freed after the flush and the
//! grace period of table frees, which a hypervisor's shadow of it needs) while a fresh one
//! is deposited for the THP — Linux deposits the emptied table itself, which here let a
//! later split link a table the hypervisor still shadowed under another PMD. Missing pages read as
//! zero (the THP is allocated zeroed). Swapped-out pages are faulted in first (up to
//! `max_ptes_swap` for khugepaged). A page shared with another process is copied; the
//! other keeps its own.

use crate::arch::x86_64::pgtable::{Pte, PteFlags, HPAGE_PMD_NR, HPAGE_PMD_ORDER, HPAGE_PMD_SIZE};
use crate::arch::x86_64::tlb::Access;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::mm::huge_memory::GFP_TRANSHUGE_LIGHT;
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, MM_ANONPAGES};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{Page, PageFlags};
use crate::mm::rmap::page_anon;
use crate::mm::swap_state::PG_SWAPCACHE;
use crate::mm::vmstat::{index_of, VM_EVENT_NAMES};
use crate::Kernel;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// `madvise(MADV_COLLAPSE)`.
pub const MADV_COLLAPSE: u32 = 25;

/// `THP_COLLAPSE_ALLOC`.
pub const THP_COLLAPSE_ALLOC: usize = index_of(VM_EVENT_NAMES, "thp_collapse_alloc");
/// `THP_COLLAPSE_ALLOC_FAILED`.
pub const THP_COLLAPSE_ALLOC_FAILED: usize = index_of(VM_EVENT_NAMES, "thp_collapse_alloc_failed");
/// `THP_SCAN_EXCEED_NONE_PTE`.
pub const THP_SCAN_EXCEED_NONE_PTE: usize = index_of(VM_EVENT_NAMES, "thp_scan_exceed_none_pte");
/// `THP_SCAN_EXCEED_SWAP_PTE`.
pub const THP_SCAN_EXCEED_SWAP_PTE: usize = index_of(VM_EVENT_NAMES, "thp_scan_exceed_swap_pte");
/// `THP_SCAN_EXCEED_SHARE_PTE`.
pub const THP_SCAN_EXCEED_SHARE_PTE: usize = index_of(VM_EVENT_NAMES, "thp_scan_exceed_share_pte");

/// What a scan or a collapse of one PMD range found (`enum scan_result`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScanResult {
    /// `SCAN_SUCCEED`: collapsed (or, for the scan, collapsible).
    Succeed,
    /// `SCAN_PMD_NULL`: no page table there.
    PmdNull,
    /// `SCAN_PMD_MAPPED`: already a THP.
    PmdMapped,
    /// `SCAN_EXCEED_NONE_PTE`: more empty entries than `max_ptes_none`.
    ExceedNonePte,
    /// `SCAN_EXCEED_SWAP_PTE`: more swapped-out pages than `max_ptes_swap`.
    ExceedSwapPte,
    /// `SCAN_EXCEED_SHARED_PTE`: more shared pages than `max_ptes_shared`.
    ExceedSharedPte,
    /// `SCAN_PAGE_RO`: no entry is writable.
    PageRo,
    /// `SCAN_LACK_REFERENCED_PAGE`: nothing in the range was used lately (khugepaged).
    LackReferencedPage,
    /// `SCAN_PAGE_ANON`: a page that is not anonymous.
    PageAnon,
    /// `SCAN_PAGE_COMPOUND`: a page of a large folio.
    PageCompound,
    /// `SCAN_PAGE_LOCK`: a page someone else has locked.
    PageLock,
    /// `SCAN_PAGE_COUNT`: a page with references its mappings do not explain (a pin).
    PageCount,
    /// `SCAN_PAGE_LRU`: a page off the LRU (isolated by reclaim or compaction).
    PageLru,
    /// `SCAN_VMA_CHECK`: the VMA does not allow a THP at this address.
    VmaCheck,
    /// `SCAN_ALLOC_HUGE_PAGE_FAIL`: no order-9 block.
    AllocHugePageFail,
}

/// khugepaged's tunables and counters (`khugepaged_pages_to_scan`, `khugepaged_max_ptes_*`,
/// `khugepaged_pages_collapsed`, `khugepaged_full_scans`).
pub(crate) struct Khugepaged {
    pages_to_scan: AtomicU32,
    max_ptes_none: AtomicU32,
    max_ptes_swap: AtomicU32,
    max_ptes_shared: AtomicU32,
    scan_sleep_millisecs: AtomicU32,
    alloc_sleep_millisecs: AtomicU32,
    pages_collapsed: AtomicU64,
    full_scans: AtomicU64,
}

impl Default for Khugepaged {
    fn default() -> Self {
        Self {
            pages_to_scan: (8 * HPAGE_PMD_NR as u32).into(),
            max_ptes_none: (HPAGE_PMD_NR as u32 - 1).into(),
            max_ptes_swap: (HPAGE_PMD_NR as u32 / 8).into(),
            max_ptes_shared: (HPAGE_PMD_NR as u32 / 2).into(),
            scan_sleep_millisecs: 10_000.into(),
            alloc_sleep_millisecs: 60_000.into(),
            pages_collapsed: 0.into(),
            full_scans: 0.into(),
        }
    }
}

/// khugepaged's settings as `/sys/kernel/mm/transparent_hugepage/khugepaged/` shows them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KhugepagedTunables {
    /// `pages_to_scan`: PTEs (and PMD ranges' worth of pages) one wakeup may look at.
    pub pages_to_scan: u32,
    /// `max_ptes_none`: empty entries a collapse may fill with zeroes.
    pub max_ptes_none: u32,
    /// `max_ptes_swap`: swapped-out pages a collapse may read back.
    pub max_ptes_swap: u32,
    /// `max_ptes_shared`: pages shared with another process a collapse may copy.
    pub max_ptes_shared: u32,
    /// `scan_sleep_millisecs`: the sleep between two wakeups (10 s).
    pub scan_sleep_millisecs: u32,
    /// `alloc_sleep_millisecs`: the sleep after a THP could not be allocated (60 s).
    pub alloc_sleep_millisecs: u32,
}

/// Where khugepaged's walk over its list stands between wakeups (`struct khugepaged_scan`):
/// the address space it is in (by the key its caller lists it under) and the address to
/// go on from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct KhugepagedScan {
    slot: Option<u64>,
    address: u64,
}

/// What one wakeup of khugepaged did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct KhugepagedWakeup {
    /// THPs made.
    pub collapsed: u64,
    /// Pages' worth of ranges looked at.
    pub scanned: u64,
    /// A THP could not be allocated: sleep `alloc_sleep_millisecs` before the next wakeup.
    pub alloc_failed: bool,
}

/// `struct collapse_control`: who collapses (khugepaged applies its tunables and wants
/// recently used memory; `MADV_COLLAPSE` takes what the range has).
#[derive(Copy, Clone)]
struct CollapseControl {
    is_khugepaged: bool,
}

/// One PTE of the range as the scan found it.
enum Slot<'a> {
    /// None, or the zero page: zeroes in the THP.
    Empty,
    /// A page to copy (locked and pinned by the collapse).
    Page(&'a Page),
}

impl Kernel {
    /// khugepaged's settings.
    pub fn khugepaged_tunables(&self) -> KhugepagedTunables {
        let t = &self.thp.khugepaged;
        KhugepagedTunables {
            pages_to_scan: t.pages_to_scan.load(Relaxed),
            max_ptes_none: t.max_ptes_none.load(Relaxed),
            max_ptes_swap: t.max_ptes_swap.load(Relaxed),
            max_ptes_shared: t.max_ptes_shared.load(Relaxed),
            scan_sleep_millisecs: t.scan_sleep_millisecs.load(Relaxed),
            alloc_sleep_millisecs: t.alloc_sleep_millisecs.load(Relaxed),
        }
    }

    /// Write khugepaged's settings (`EINVAL` for a `max_ptes_*` above 511 or a zero
    /// `pages_to_scan`, as the sysfs files answer).
    pub fn set_khugepaged_tunables(&self, t: KhugepagedTunables) -> Result<(), Errno> {
        let max = HPAGE_PMD_NR as u32 - 1;
        if t.pages_to_scan == 0
            || t.max_ptes_none > max
            || t.max_ptes_swap > max
            || t.max_ptes_shared > max
        {
            return Err(Errno::EINVAL);
        }
        let k = &self.thp.khugepaged;
        k.pages_to_scan.store(t.pages_to_scan, Relaxed);
        k.max_ptes_none.store(t.max_ptes_none, Relaxed);
        k.max_ptes_swap.store(t.max_ptes_swap, Relaxed);
        k.max_ptes_shared.store(t.max_ptes_shared, Relaxed);
        k.scan_sleep_millisecs
            .store(t.scan_sleep_millisecs, Relaxed);
        k.alloc_sleep_millisecs
            .store(t.alloc_sleep_millisecs, Relaxed);
        Ok(())
    }

    /// `khugepaged_enter_vma`: once the VMA `id` may hold THPs under the `enabled` policy
    /// (and spans an aligned 2 MiB range), its address space goes on khugepaged's list
    /// (`MMF_VM_HUGEPAGE`), where it stays until it exits.
    pub(crate) fn khugepaged_enter_vma(&self, mm: &mut MmStruct, id: crate::mm::vma_tree::VmaId) {
        if mm.khugepaged {
            return;
        }
        let v = mm.vma(id);
        let first = (v.vm_start + HPAGE_PMD_SIZE - 1) & !(HPAGE_PMD_SIZE - 1);
        if self.thp_vma_allowable(v) && Self::thp_vma_suitable(v, first) {
            mm.khugepaged = true;
        }
    }

    /// Whether `mm` is on khugepaged's list (`MMF_VM_HUGEPAGE`).
    pub fn khugepaged_listed(mm: &MmStruct) -> bool {
        mm.khugepaged
    }

    /// One wakeup of khugepaged (`khugepaged_do_scan`): `pages_to_scan` pages' worth of
    /// the address spaces on its list — `slots`, each under a key that stays the same for
    /// its life, in key order; those not listed are passed over — from where `scan` stood.
    /// An address space scanned to its end hands over to the next; passing the end of the
    /// list counts a full scan, and the wakeup passes the list's head at most twice. A THP
    /// that could not be allocated ends the wakeup (`khugepaged_alloc_sleep`).
    pub fn khugepaged_do_scan<'a>(
        &self,
        cpu: &CpuGuard<'_>,
        scan: &mut KhugepagedScan,
        slots: impl Iterator<Item = (u64, &'a mut MmStruct)>,
    ) -> KhugepagedWakeup {
        let mut slots: Vec<(u64, &mut MmStruct)> = slots.filter(|(_, mm)| mm.khugepaged).collect();
        let budget = u64::from(self.thp.khugepaged.pages_to_scan.load(Relaxed));
        let mut out = KhugepagedWakeup::default();
        if slots.is_empty() {
            *scan = KhugepagedScan::default();
            return out;
        }
        self.lru_add_drain_all(cpu);
        // The slot to go on with: the one the last wakeup was in, or the next one after it
        // (it may have exited meanwhile: collect_mm_slot), or the head.
        let start = scan.slot.map_or(0, |key| {
            slots.iter().position(|(k, _)| *k >= key).unwrap_or(0)
        });
        if scan.slot != Some(slots[start].0) {
            scan.address = 0;
        }
        let mut i = start;
        // pass_through_head: starting at the head counts as passing it.
        let mut heads = u32::from(scan.slot.is_none());
        while out.scanned < budget {
            let (key, mm) = &mut slots[i];
            scan.slot = Some(*key);
            let r = self.scan_mm_slot(cpu, mm, &mut scan.address, budget - out.scanned);
            out.collapsed += r.collapsed;
            out.scanned += r.scanned;
            if r.alloc_failed {
                out.alloc_failed = true;
                break;
            }
            if scan.address != 0 {
                continue; // the budget ran out inside this address space
            }
            // This address space is done: the next one, or past the list's end.
            i += 1;
            if i == slots.len() {
                self.thp.khugepaged.full_scans.fetch_add(1, Relaxed);
                (i, scan.slot) = (0, None);
                heads += 1;
                if heads >= 2 {
                    break;
                }
            }
            scan.slot = Some(slots[i].0);
        }
        out
    }

    /// `khugepaged/pages_collapsed` and `khugepaged/full_scans`.
    pub fn khugepaged_stats(&self) -> (u64, u64) {
        let k = &self.thp.khugepaged;
        (k.pages_collapsed.load(Relaxed), k.full_scans.load(Relaxed))
    }

    /// `madvise_collapse`: collapse every aligned 2 MiB range inside `[start, start + len)`
    /// into a THP, whatever the `enabled` policy says (only `VM_NOHUGEPAGE` and VMAs that
    /// cannot hold anonymous THPs refuse). `ENOMEM` for a hole in the range or when no THP
    /// could be allocated, `EAGAIN` when a page was busy (locked, pinned, isolated),
    /// `EINVAL` for anything else that stopped a range (a VMA that cannot hold a THP, no
    /// writable entry, nothing mapped): `madvise_collapse_errno` of the last range that
    /// failed.
    pub fn madvise_collapse(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let end = crate::mm::madvise::madvise_range(start, len)?;
        // Every VMA of the range must exist and be able to hold an anonymous THP.
        let mut a = start;
        while a < end {
            let Some(v) = mm.vma_lookup(a) else {
                return Err(Errno::ENOMEM);
            };
            if !Self::collapse_vma_ok(v) {
                return Err(Errno::EINVAL);
            }
            a = v.vm_end;
        }
        self.lru_add_drain_all(cpu);
        let hstart = (start + HPAGE_PMD_SIZE - 1) & !(HPAGE_PMD_SIZE - 1);
        let hend = end & !(HPAGE_PMD_SIZE - 1);
        let cc = CollapseControl {
            is_khugepaged: false,
        };
        let mut last_fail = None;
        let mut haddr = hstart;
        while haddr < hend {
            match self.collapse_one(cpu, mm, haddr, cc) {
                ScanResult::Succeed | ScanResult::PmdMapped => {}
                r => last_fail = Some(r),
            }
            haddr += HPAGE_PMD_SIZE;
        }
        match last_fail {
            None => Ok(()),
            Some(ScanResult::AllocHugePageFail | ScanResult::ExceedNonePte) => Err(Errno::ENOMEM),
            Some(ScanResult::PageLock | ScanResult::PageCount | ScanResult::PageLru) => {
                Err(Errno::EAGAIN)
            }
            Some(_) => Err(Errno::EINVAL),
        }
    }

    /// One khugepaged pass over `mm` alone, as when it is the only address space on the
    /// list (`khugepaged_scan_mm_slot`): the aligned 2 MiB ranges of VMAs the `enabled`
    /// policy gives THPs, from `*cursor` on, collapsed where khugepaged's rules allow, until
    /// `budget` pages were looked at. `*cursor` is where the next pass resumes (0 after a
    /// full scan, which is counted). Returns the THPs made.
    pub fn khugepaged_scan_mm(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        cursor: &mut u64,
        budget: u64,
    ) -> u64 {
        self.lru_add_drain_all(cpu);
        let r = self.scan_mm_slot(cpu, mm, cursor, budget);
        if *cursor == 0 && !r.alloc_failed {
            self.thp.khugepaged.full_scans.fetch_add(1, Relaxed);
        }
        r.collapsed
    }

    /// `khugepaged_scan_mm_slot` of one address space: ranges from `*cursor` on until
    /// `budget` pages were looked at (`*cursor` then says where to go on) or the address
    /// space's end (`*cursor` = 0), or a THP could not be allocated (`*cursor` at that
    /// range, to try again).
    fn scan_mm_slot(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        cursor: &mut u64,
        budget: u64,
    ) -> KhugepagedWakeup {
        let cc = CollapseControl {
            is_khugepaged: true,
        };
        let mut out = KhugepagedWakeup::default();
        let mut haddr = (*cursor + HPAGE_PMD_SIZE - 1) & !(HPAGE_PMD_SIZE - 1);
        while out.scanned < budget {
            // The next VMA with an aligned range the policy allows, from `haddr`.
            let next = mm
                .vmas()
                .filter(|v| v.vm_end > haddr && self.thp_vma_allowable(v))
                .find_map(|v| {
                    let h = (v.vm_start.max(haddr) + HPAGE_PMD_SIZE - 1) & !(HPAGE_PMD_SIZE - 1);
                    (h + HPAGE_PMD_SIZE <= v.vm_end).then_some(h)
                });
            let Some(h) = next else {
                *cursor = 0;
                return out;
            };
            match self.collapse_one(cpu, mm, h, cc) {
                ScanResult::Succeed => out.collapsed += 1,
                ScanResult::AllocHugePageFail => {
                    *cursor = h;
                    out.alloc_failed = true;
                    return out;
                }
                _ => {}
            }
            out.scanned += HPAGE_PMD_NR;
            haddr = h + HPAGE_PMD_SIZE;
            *cursor = haddr;
        }
        out
    }

    /// Whether `v` can hold an anonymous THP collapsed into it (`thp_vma_allowable_order`
    /// with `TVA_ENFORCE_SYSFS` off).
    fn collapse_vma_ok(v: &VmArea) -> bool {
        v.is_anonymous()
            && v.vm_special.is_none()
            && !v.vm_flags.intersects(
                VmFlags::VM_NOHUGEPAGE
                    | VmFlags::VM_SHARED
                    | VmFlags::VM_PFNMAP
                    | VmFlags::VM_IO
                    | VmFlags::VM_MIXEDMAP,
            )
    }

    /// `hpage_collapse_scan_pmd` + `collapse_huge_page` for the range at `haddr`.
    fn collapse_one(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        haddr: u64,
        cc: CollapseControl,
    ) -> ScanResult {
        // hugepage_vma_revalidate.
        let Some(id) = mm.find_vma_id(haddr) else {
            return ScanResult::VmaCheck;
        };
        {
            let v = mm.vma(id);
            if v.vm_start > haddr
                || !Self::collapse_vma_ok(v)
                || !Self::thp_vma_suitable(v, haddr)
                || (cc.is_khugepaged && !self.thp_vma_allowable(v))
            {
                return ScanResult::VmaCheck;
            }
        }
        match self.pmd_entry_lookup(&mm.pt, haddr) {
            None => return ScanResult::PmdNull,
            Some(p) if p.is_none() => return ScanResult::PmdNull,
            Some(p) if p.is_huge() => return ScanResult::PmdMapped,
            Some(_) => {}
        }
        let r = self.collapse_scan_ptes(cpu, mm, haddr, cc);
        if r != ScanResult::Succeed {
            return r;
        }
        // __collapse_huge_page_swapin: fault the swapped-out pages back in.
        if self.collapse_swapin(cpu, mm, id, haddr).is_err() {
            return ScanResult::ExceedSwapPte;
        }
        self.collapse_huge_page(cpu, mm, haddr)
    }

    /// The scan of `hpage_collapse_scan_pmd`, without locks kept: whether the range is
    /// worth a collapse under `cc`'s rules.
    fn collapse_scan_ptes(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        haddr: u64,
        cc: CollapseControl,
    ) -> ScanResult {
        let t = self.khugepaged_tunables();
        let (mut swap, mut shared) = (0u32, 0u32);
        let (mut writable, mut referenced) = (false, false);
        let mut c = self.pte_cursor(&mm.pt, haddr, haddr + HPAGE_PMD_SIZE);
        let mut present = 0u32;
        while let Some((_, pte)) = c.next_entry() {
            if !pte.is_present() {
                // Nothing but swap entries are non-present and non-none in user tables.
                swap += 1;
                if cc.is_khugepaged && swap > t.max_ptes_swap {
                    cpu.state().vmstat.count(THP_SCAN_EXCEED_SWAP_PTE, 1);
                    return ScanResult::ExceedSwapPte;
                }
                continue;
            }
            let Some(page) = self.vm_normal_page(pte) else {
                continue; // the zero page: counted with the empty entries below
            };
            present += 1;
            // A page of a large folio (an mTHP, a PMD-split THP) is not collapsed here.
            if page.test(PageFlags::HEAD) || page.test(PageFlags::TAIL) {
                return ScanResult::PageCompound;
            }
            if !page_anon(page) {
                return ScanResult::PageAnon;
            }
            if page.mapcount() > 1 {
                shared += 1;
                if cc.is_khugepaged && shared > t.max_ptes_shared {
                    cpu.state().vmstat.count(THP_SCAN_EXCEED_SHARE_PTE, 1);
                    return ScanResult::ExceedSharedPte;
                }
            }
            writable |= pte.writable();
            referenced |= pte.young() || page.test(PageFlags::REFERENCED);
        }
        drop(c);
        let none = HPAGE_PMD_NR as u32 - present - swap;
        if cc.is_khugepaged && none > t.max_ptes_none {
            cpu.state().vmstat.count(THP_SCAN_EXCEED_NONE_PTE, 1);
            return ScanResult::ExceedNonePte;
        }
        if present + swap == 0 {
            return ScanResult::PmdNull; // nothing of the range's own to collapse
        }
        if !writable && swap == 0 {
            return ScanResult::PageRo;
        }
        if cc.is_khugepaged && !referenced && swap == 0 {
            return ScanResult::LackReferencedPage;
        }
        ScanResult::Succeed
    }

    /// `__collapse_huge_page_swapin`: a read fault on every swap entry of the range.
    fn collapse_swapin(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        id: crate::mm::vma_tree::VmaId,
        haddr: u64,
    ) -> Result<(), ()> {
        let mut swapped = Vec::new();
        {
            let mut c = self.pte_cursor(&mm.pt, haddr, haddr + HPAGE_PMD_SIZE);
            while let Some((va, pte)) = c.next_entry() {
                if !pte.is_present() {
                    swapped.push(va);
                }
            }
        }
        for va in swapped {
            self.handle_mm_fault(cpu, mm, id, va, Access::USER_READ)
                .map_err(|_| ())?;
        }
        Ok(())
    }

    /// `collapse_huge_page`: a zeroed THP, the range's pages locked, pinned, unmapped and
    /// copied into it, the PMD pointed at the THP, a fresh table deposited and the emptied
    /// one freed through the gather.
    fn collapse_huge_page(&self, cpu: &CpuGuard<'_>, mm: &MmStruct, haddr: u64) -> ScanResult {
        let Some(id) = mm.find_vma_id(haddr) else {
            return ScanResult::VmaCheck;
        };
        let vma = mm.vma(id);
        let Some(av) = vma.anon_vma else {
            return ScanResult::VmaCheck; // nothing was ever faulted in: nothing to copy
        };
        // GFP_TRANSHUGE for both (khugepaged's `defrag` is on by default): may reclaim and
        // compact, quietly.
        let gfp = GFP_TRANSHUGE_LIGHT | Gfp::__GFP_DIRECT_RECLAIM | Gfp::__GFP_ZERO;
        let Some(folio) = self.alloc_pages(cpu, gfp, HPAGE_PMD_ORDER) else {
            cpu.state().vmstat.count(THP_COLLAPSE_ALLOC_FAILED, 1);
            return ScanResult::AllocHugePageFail;
        };
        cpu.state().vmstat.count(THP_COLLAPSE_ALLOC, 1);
        // A fresh table to deposit for the THP's later split. The PTE table the collapse
        // empties leaves the tree through the gather instead: a table the MMU walked may
        // still be cached (a hypervisor's shadow of it, a paging-structure cache) until the
        // flush and the grace period of table frees, so it must not be linked under another
        // PMD before that (a later split withdrawing it did, and two 2 MiB ranges aliased).
        if self.pgtable_deposit(cpu, &mm.pt).is_err() {
            self.folio_put(cpu, folio);
            return ScanResult::AllocHugePageFail;
        }
        // __collapse_huge_page_isolate: lock and pin each page while its PTE still maps it.
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(HPAGE_PMD_NR as usize);
        let mut fail = None;
        {
            let mut c = self.pte_cursor(&mm.pt, haddr, haddr + HPAGE_PMD_SIZE);
            for i in 0..HPAGE_PMD_NR {
                let va = haddr + (i << crate::PAGE_SHIFT);
                if !c.seek(va) {
                    fail = Some(ScanResult::PmdNull);
                    break;
                }
                let pte = c.get();
                if pte.is_none() {
                    slots.push(Slot::Empty);
                    continue;
                }
                if !pte.is_present() {
                    fail = Some(ScanResult::ExceedSwapPte); // swapped out again meanwhile
                    break;
                }
                let Some(page) = self.vm_normal_page(pte) else {
                    slots.push(Slot::Empty);
                    continue;
                };
                if page.test(PageFlags::HEAD) || page.test(PageFlags::TAIL) {
                    fail = Some(ScanResult::PageCompound);
                    break;
                }
                if !page_anon(page) {
                    fail = Some(ScanResult::PageAnon);
                    break;
                }
                if !page.trylock() {
                    fail = Some(ScanResult::PageLock);
                    break;
                }
                // Mapped pages hold one reference per mapping (and the swap cache one): any
                // other is a pin or an isolation, and the page is left alone.
                let expected = page.mapcount() + page.test(PG_SWAPCACHE) as i32;
                if !page.test(PageFlags::LRU) || page.refcount() != expected {
                    page.unlock();
                    fail = Some(if page.test(PageFlags::LRU) {
                        ScanResult::PageCount
                    } else {
                        ScanResult::PageLru
                    });
                    break;
                }
                page.get();
                slots.push(Slot::Page(page));
            }
        }
        if let Some(r) = fail {
            self.collapse_release(cpu, &slots);
            self.pgtable_withdraw_free(cpu, &mm.pt);
            self.folio_put(cpu, folio);
            return r;
        }
        // Unmap: every PTE cleared through the gather and each old page out of the reverse
        // map, the mapping references gathered; the translations are flushed before the
        // copy, so no store through a stale entry (another thread's CPU) lands after it.
        let mut tlb = MmuGather::new(self, cpu, &mm.pt);
        {
            let mut c = self.pte_cursor(&mm.pt, haddr, haddr + HPAGE_PMD_SIZE);
            while let Some((_, _)) = c.next_entry() {
                let old = c.clear(&mut tlb);
                if let Some(page) = self.vm_normal_page(old) {
                    self.page_remove_rmap(cpu, page);
                    tlb.remove_page(page);
                }
            }
        }
        tlb.flush_tlb_only();
        // __collapse_huge_page_copy.
        let dst = self.page_to_pfn(folio);
        let mut copied = 0i64;
        for (i, s) in slots.iter().enumerate() {
            if let Slot::Page(page) = s {
                self.copy_highpage(dst + i as u64, self.page_to_pfn(page));
                copied += 1;
                // free_swap_cache (we hold the page lock): a slot no PTE uses goes.
                if page.test(PG_SWAPCACHE)
                    && self
                        .page_swap_entry(page)
                        .is_some_and(|e| self.swap_count(e) == 0)
                {
                    self.delete_from_swap_cache(cpu, page);
                }
            }
        }
        mm.add_counter(MM_ANONPAGES, -copied);
        // The PMD: from the emptied table to the huge entry; the emptied table is freed after
        // the flush (and the grace period of table frees). A walker that still finds it
        // finds it empty and faults.
        let mut entry = Pte(Pte::new_huge(dst, vma.vm_page_prot).0
            | PteFlags::DIRTY.bits()
            | PteFlags::ACCESSED.bits());
        if vma.vm_flags.contains(VmFlags::VM_WRITE) {
            entry = Pte(entry.0 | PteFlags::RW.bits());
        }
        let installed = match self.pmd_lock(&mm.pt, haddr) {
            Some(mut g) => match g.collapse_table(entry) {
                Some(table) => {
                    tlb.remove_table(table, haddr, haddr + HPAGE_PMD_SIZE);
                    self.folio_add_new_anon_rmap_pmd(cpu, folio, av, vma.linear_page_index(haddr));
                    mm.add_counter(MM_ANONPAGES, HPAGE_PMD_NR as i64);
                    true
                }
                None => false,
            },
            None => false,
        };
        drop(tlb); // flushes the PMD's change, drops the old pages' references, frees the table
        self.collapse_release(cpu, &slots);
        if !installed {
            // Cannot happen with the address space held: its PMD stays a table.
            self.pgtable_withdraw_free(cpu, &mm.pt);
            self.folio_put(cpu, folio);
            return ScanResult::PmdNull;
        }
        self.lru_cache_add(cpu, folio);
        self.thp
            .khugepaged
            .pages_collapsed
            .fetch_add(HPAGE_PMD_NR, Relaxed);
        ScanResult::Succeed
    }

    /// Unlock and unpin the pages a collapse took.
    fn collapse_release(&self, cpu: &CpuGuard<'_>, slots: &[Slot<'_>]) {
        for s in slots {
            if let Slot::Page(page) = s {
                page.unlock();
                self.__free_pages(cpu, page, 0);
            }
        }
    }
}
