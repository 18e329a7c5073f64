//! Transparent huge pages for anonymous memory (`mm/huge_memory.c`): the `enabled` and
//! `defrag` policies (`/sys/kernel/mm/transparent_hugepage/`, `transparent_hugepage=` on the
//! command line), `thp_vma_allowable_order`/`thp_vma_suitable_order`,
//! `do_huge_pmd_anonymous_page`, `huge_pmd_set_accessed`, `do_huge_pmd_wp_page`,
//! `zap_huge_pmd`, `copy_huge_pmd`, `change_huge_pmd`, `__split_huge_pmd` and
//! `split_huge_page` (`__split_huge_page`, `lru_add_split_folio`), and the huge zero folio
//! (`mm_get_huge_zero_folio`, `set_huge_zero_folio`, `do_huge_zero_wp_pmd`,
//! `__split_huge_zero_page_pmd`).
//!
//! A THP is a folio of order [`HPAGE_PMD_ORDER`] (a compound page, see
//! [`crate::mm::page`]) mapped by one PMD entry with PSE set. Its head holds one reference per
//! PMD that maps it and counts them in its entire mapcount; `nr_anon_pages` and
//! `nr_anon_transparent_hugepages` (meminfo's `AnonHugePages`) count its 512 pages while any
//! PMD maps it, and the owner's `MM_ANONPAGES` counts them per mapping.
//!
//! Splitting is Linux's two steps, done together: `__split_huge_pmd` replaces a PMD mapping
//! by a table of 512 PTEs mapping the same pages (the folio's references and mapcounts move
//! from the PMD to the PTEs), then `split_huge_page` splits every other PMD mapping of the
//! folio through the reverse map and turns the folio into 512 order-0 pages, each keeping the
//! references of the PTEs that map it (any other reference stays with the head) and joining
//! the LRU beside it. Linux since 4.5 may leave a folio mapped by PTEs for a while (partially
//! unmapped ones wait on the deferred split queue); here a large anonymous folio is only ever
//! mapped by PMDs, as in Linux before 4.5 (`split_huge_page_pmd`), so the code that maps pages
//! by PTE — COW, reclaim, migration, `MADV_FREE`, mremap — sees only small pages. What calls
//! for a split: a range operation that covers part of a PMD (`munmap`, `mprotect`,
//! `madvise`, `mremap`, a VMA split at an address inside one), a write to a THP shared with
//! another process (`do_huge_pmd_wp_page` falls back to 4 KiB COW after splitting, as Linux
//! 6.x does), and reclaim, which splits a large folio before it swaps it out (Linux without
//! `THP_SWAP`).
//!
//! The huge zero folio: a read fault where a THP may go maps a shared zeroed order-9 folio
//! read-only by the PMD (`use_zero_page`, on by default as in Linux); a write to it allocates
//! a THP in its place (Linux 6.13's `do_huge_zero_wp_pmd`) or, without one, splits the entry
//! into PTEs of the 4 KiB zero page and copies 4 KiB. It is not in the reverse map, the LRU,
//! RSS or `AnonHugePages`; each address space that mapped it holds one reference
//! (`MMF_HUGE_ZERO_PAGE`) until it exits, and the last reference frees it (Linux keeps it
//! until a shrinker finds it unused; mmkit has no shrinker registry, so it goes at once).
//!
//! Collapsing 4 KiB pages into THPs (`MADV_COLLAPSE`, khugepaged) is in
//! [`crate::mm::khugepaged`]. Not here yet: mTHP sizes, file THPs, migration of large folios
//! (compaction skips them).

use crate::arch::x86_64::pgtable::pmd::huge_to_pte;
use crate::arch::x86_64::pgtable::{
    PgTable, Pte, PteFlags, HPAGE_PMD_NR, HPAGE_PMD_ORDER, HPAGE_PMD_SIZE, PAGE_SPECIAL,
    PTE_PFN_MASK,
};
use crate::arch::x86_64::tlb::Access;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::{Gfp, GFP_HIGHUSER_MOVABLE};
use crate::mm::filemap::NR_ANON_MAPPED;
use crate::mm::memory::{FaultKind, VmFaultError};
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, MM_ANONPAGES};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{Page, PageFlags, PAGE_MAPPING_ANON};
use crate::mm::vmstat::{index_of, NODE_STAT_NAMES, VM_EVENT_NAMES};
use crate::Kernel;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::{self, Relaxed};

/// `NR_ANON_THPS` (pages; `/proc/vmstat` prints it in huge pages).
pub const NR_ANON_THPS: usize = index_of(NODE_STAT_NAMES, "nr_anon_transparent_hugepages");
/// `THP_FAULT_ALLOC`.
pub const THP_FAULT_ALLOC: usize = index_of(VM_EVENT_NAMES, "thp_fault_alloc");
/// `THP_FAULT_FALLBACK`.
pub const THP_FAULT_FALLBACK: usize = index_of(VM_EVENT_NAMES, "thp_fault_fallback");
/// `THP_SPLIT_PMD`.
pub const THP_SPLIT_PMD: usize = index_of(VM_EVENT_NAMES, "thp_split_pmd");
/// `THP_SPLIT_PAGE`.
pub const THP_SPLIT_PAGE: usize = index_of(VM_EVENT_NAMES, "thp_split_page");
/// `THP_ZERO_PAGE_ALLOC`.
pub const THP_ZERO_PAGE_ALLOC: usize = index_of(VM_EVENT_NAMES, "thp_zero_page_alloc");
/// `THP_ZERO_PAGE_ALLOC_FAILED`.
pub const THP_ZERO_PAGE_ALLOC_FAILED: usize =
    index_of(VM_EVENT_NAMES, "thp_zero_page_alloc_failed");

/// No huge zero folio (a pfn no page has).
const NO_HUGE_ZERO: u64 = u64::MAX;

/// `/sys/kernel/mm/transparent_hugepage/enabled`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ThpEnabled {
    /// Every eligible anonymous VMA.
    Always = 0,
    /// Only `MADV_HUGEPAGE` (`VM_HUGEPAGE`) VMAs.
    Madvise = 1,
    /// None.
    Never = 2,
}

impl ThpEnabled {
    /// The value as written to sysfs or `transparent_hugepage=`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(Self::Always),
            "madvise" => Some(Self::Madvise),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Always,
            1 => Self::Madvise,
            _ => Self::Never,
        }
    }
    /// The sysfs file's text: `always [madvise] never`.
    pub fn sysfs(self) -> &'static str {
        match self {
            Self::Always => "[always] madvise never",
            Self::Madvise => "always [madvise] never",
            Self::Never => "always madvise [never]",
        }
    }
}

/// `/sys/kernel/mm/transparent_hugepage/defrag` (the values this kernel distinguishes).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ThpDefrag {
    /// Direct reclaim and compaction for every THP fault (`__GFP_NORETRY` outside
    /// `MADV_HUGEPAGE` VMAs).
    Always = 0,
    /// Direct reclaim and compaction only in `MADV_HUGEPAGE` VMAs (the default).
    Madvise = 1,
    /// Never: a fault takes a free order-9 block or falls back at once.
    Never = 2,
}

impl ThpDefrag {
    /// The value as written to sysfs.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(Self::Always),
            "madvise" => Some(Self::Madvise),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Always,
            1 => Self::Madvise,
            _ => Self::Never,
        }
    }
}

/// The policies (`transparent_hugepage_flags`).
pub(crate) struct ThpState {
    enabled: core::sync::atomic::AtomicU8,
    defrag: core::sync::atomic::AtomicU8,
    /// `use_zero_page`.
    use_zero_page: core::sync::atomic::AtomicBool,
    /// khugepaged's tunables and counters.
    pub(crate) khugepaged: crate::mm::khugepaged::Khugepaged,
    /// `huge_zero_folio` and `huge_zero_refcount` (the address spaces holding it).
    huge_zero: crate::sync::SpinLock<(Option<crate::Pfn>, u64)>,
    /// The huge zero folio's pfn for `is_huge_zero_pmd` (`NO_HUGE_ZERO` when there is none;
    /// stable while any PMD maps it, since its address space holds a reference).
    huge_zero_pfn: core::sync::atomic::AtomicU64,
}

impl ThpState {
    pub(crate) fn new(enabled: Option<ThpEnabled>) -> Self {
        Self {
            // CONFIG_TRANSPARENT_HUGEPAGE_MADVISE, as the distributions' kernels and the host.
            enabled: (enabled.unwrap_or(ThpEnabled::Madvise) as u8).into(),
            defrag: (ThpDefrag::Madvise as u8).into(),
            use_zero_page: true.into(),
            khugepaged: Default::default(),
            huge_zero: crate::sync::SpinLock::new((None, 0)),
            huge_zero_pfn: NO_HUGE_ZERO.into(),
        }
    }
}

/// `GFP_TRANSHUGE_LIGHT`: movable, compound, quiet, no reserves and no reclaim.
pub(crate) const GFP_TRANSHUGE_LIGHT: Gfp = GFP_HIGHUSER_MOVABLE
    .union(Gfp::__GFP_COMP)
    .union(Gfp::__GFP_NOMEMALLOC)
    .union(Gfp::__GFP_NOWARN)
    .difference(Gfp::__GFP_RECLAIM);

/// What a huge-PMD fault did.
pub(crate) enum HugeFault {
    /// Handled at the PMD level.
    Done(Result<FaultKind, VmFaultError>),
    /// Handle the fault with PTEs (`VM_FAULT_FALLBACK`).
    Fallback,
}

impl Kernel {
    /// The `enabled` policy.
    pub fn thp_enabled(&self) -> ThpEnabled {
        ThpEnabled::from_u8(self.thp.enabled.load(Relaxed))
    }

    /// Write `enabled` (`echo never > /sys/kernel/mm/transparent_hugepage/enabled`): applies
    /// to the next fault; THPs already mapped stay.
    pub fn set_thp_enabled(&self, v: ThpEnabled) {
        self.thp.enabled.store(v as u8, Relaxed);
    }

    /// The `defrag` policy.
    pub fn thp_defrag(&self) -> ThpDefrag {
        ThpDefrag::from_u8(self.thp.defrag.load(Relaxed))
    }

    /// Write `defrag`.
    pub fn set_thp_defrag(&self, v: ThpDefrag) {
        self.thp.defrag.store(v as u8, Relaxed);
    }

    /// `use_zero_page`: whether read faults map the huge zero folio.
    pub fn thp_use_zero_page(&self) -> bool {
        self.thp.use_zero_page.load(Relaxed)
    }

    /// Write `use_zero_page` (applies to the next read fault).
    pub fn set_thp_use_zero_page(&self, on: bool) {
        self.thp.use_zero_page.store(on, Relaxed);
    }

    /// `is_huge_zero_pmd`.
    pub fn is_huge_zero_pmd(&self, pmd: Pte) -> bool {
        pmd.is_huge() && pmd.pfn().0 == self.thp.huge_zero_pfn.load(Ordering::Acquire)
    }

    /// `mm_get_huge_zero_folio`: the huge zero folio, allocated (zeroed, order 9) at its
    /// first use; `mm` holds a reference from now until it exits. `None` when no order-9
    /// block can be had (`thp_zero_page_alloc_failed`).
    fn mm_get_huge_zero_folio(&self, cpu: &CpuGuard<'_>, mm: &MmStruct) -> Option<crate::Pfn> {
        if mm.huge_zero.load(Ordering::Acquire) {
            return Some(crate::Pfn(self.thp.huge_zero_pfn.load(Ordering::Acquire)));
        }
        // get_huge_zero_folio.
        let have = {
            let mut z = self.thp.huge_zero.lock();
            z.0.inspect(|_| z.1 += 1)
        };
        let pfn = match have {
            Some(p) => p,
            None => {
                let gfp = (GFP_TRANSHUGE_LIGHT | Gfp::__GFP_DIRECT_RECLAIM | Gfp::__GFP_ZERO)
                    .difference(Gfp::__GFP_MOVABLE);
                let Some(folio) = self.alloc_pages(cpu, gfp, HPAGE_PMD_ORDER) else {
                    cpu.state().vmstat.count(THP_ZERO_PAGE_ALLOC_FAILED, 1);
                    return None;
                };
                cpu.state().vmstat.count(THP_ZERO_PAGE_ALLOC, 1);
                let mine = self.page_to_pfn(folio);
                let mut z = self.thp.huge_zero.lock();
                z.1 += 1;
                match z.0 {
                    Some(p) => {
                        // Another CPU's allocation won.
                        drop(z);
                        self.folio_put(cpu, folio);
                        p
                    }
                    None => {
                        z.0 = Some(mine);
                        self.thp.huge_zero_pfn.store(mine.0, Ordering::Release);
                        mine
                    }
                }
            }
        };
        if mm.huge_zero.swap(true, Ordering::AcqRel) {
            // A racing fault of this address space took the reference first.
            self.put_huge_zero_folio(cpu);
        }
        Some(pfn)
    }

    /// `put_huge_zero_folio`: one reference fewer; the last frees the folio.
    fn put_huge_zero_folio(&self, cpu: &CpuGuard<'_>) {
        let last = {
            let mut z = self.thp.huge_zero.lock();
            z.1 -= 1;
            if z.1 == 0 {
                self.thp
                    .huge_zero_pfn
                    .store(NO_HUGE_ZERO, Ordering::Release);
                z.0.take()
            } else {
                None
            }
        };
        if let Some(pfn) = last {
            self.folio_put(cpu, self.mem_map.page(pfn));
        }
    }

    /// `mm_put_huge_zero_folio` at exit: the address space's reference, if it took one.
    pub(crate) fn mm_put_huge_zero_folio(&self, cpu: &CpuGuard<'_>, mm: &MmStruct) {
        if mm.huge_zero.swap(false, Ordering::AcqRel) {
            self.put_huge_zero_folio(cpu);
        }
    }

    /// `thp_vma_allowable_order(vma, PMD_ORDER)` for anonymous memory: the policy allows a
    /// THP in this VMA (private anonymous, not special, not `VM_NOHUGEPAGE`; `always`, or
    /// `madvise` and `VM_HUGEPAGE`).
    pub fn thp_vma_allowable(&self, vma: &VmArea) -> bool {
        if !vma.is_anonymous()
            || vma.vm_special.is_some()
            || vma.vm_flags.intersects(
                VmFlags::VM_NOHUGEPAGE
                    | VmFlags::VM_SHARED
                    | VmFlags::VM_PFNMAP
                    | VmFlags::VM_IO
                    | VmFlags::VM_MIXEDMAP,
            )
        {
            return false;
        }
        match self.thp_enabled() {
            ThpEnabled::Always => true,
            ThpEnabled::Madvise => vma.vm_flags.contains(VmFlags::VM_HUGEPAGE),
            ThpEnabled::Never => false,
        }
    }

    /// `thp_vma_suitable_order`: the 2 MiB at `haddr` lie inside the VMA, and its page
    /// offsets are aligned as its addresses are.
    pub fn thp_vma_suitable(vma: &VmArea, haddr: u64) -> bool {
        let pgoff_aligned = ((vma.vm_start >> crate::PAGE_SHIFT).wrapping_sub(vma.vm_pgoff))
            .is_multiple_of(HPAGE_PMD_NR);
        pgoff_aligned && haddr >= vma.vm_start && haddr + HPAGE_PMD_SIZE <= vma.vm_end
    }

    /// smaps' `THPeligible`: allowable, and the VMA holds at least one aligned 2 MiB range
    /// (`__thp_vma_allowable_orders` outside a fault checks the last one).
    pub fn thp_vma_eligible(&self, vma: &VmArea) -> bool {
        self.thp_vma_allowable(vma)
            && vma.vm_end >= HPAGE_PMD_SIZE
            && Self::thp_vma_suitable(vma, (vma.vm_end - HPAGE_PMD_SIZE) & !(HPAGE_PMD_SIZE - 1))
    }

    /// `vma_thp_gfp_mask`: how hard a THP fault in `vma` tries, by `defrag`.
    fn vma_thp_gfp_mask(&self, vma: &VmArea) -> Gfp {
        let madvised = vma.vm_flags.contains(VmFlags::VM_HUGEPAGE);
        match self.thp_defrag() {
            ThpDefrag::Always if madvised => GFP_TRANSHUGE_LIGHT | Gfp::__GFP_DIRECT_RECLAIM,
            ThpDefrag::Always => {
                GFP_TRANSHUGE_LIGHT | Gfp::__GFP_DIRECT_RECLAIM | Gfp::__GFP_NORETRY
            }
            ThpDefrag::Madvise if madvised => GFP_TRANSHUGE_LIGHT | Gfp::__GFP_DIRECT_RECLAIM,
            ThpDefrag::Madvise | ThpDefrag::Never => GFP_TRANSHUGE_LIGHT,
        }
    }

    /// The head of the folio a huge entry maps.
    fn huge_folio(&self, pmd: Pte) -> Option<&Page> {
        let p = self.pfn_to_page(pmd.pfn())?;
        p.test(PageFlags::HEAD).then_some(p)
    }

    /// `__handle_mm_fault`'s PMD level for `address` in `vma`: a huge entry there is
    /// handled here (`huge_pmd_set_accessed`, `do_huge_pmd_wp_page`); a none entry in a
    /// VMA that allows a THP there gets one (`create_huge_pmd`). Anything else, and every
    /// fallback, goes to the PTE level.
    pub(crate) fn huge_pmd_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        address: u64,
        access: Access,
    ) -> HugeFault {
        let haddr = address & !(HPAGE_PMD_SIZE - 1);
        match self.pmd_entry_lookup(&mm.pt, address) {
            Some(h) if h.is_huge() => {
                if access.write && !h.writable() {
                    return self.do_huge_pmd_wp_page(cpu, mm, vma, address, h);
                }
                // huge_pmd_set_accessed (a PROT_NONE entry never gets here: access_error).
                if let Some(mut g) = self.pmd_lock(&mm.pt, address) {
                    if g.get() == h {
                        let mut bits = PteFlags::ACCESSED;
                        if access.write {
                            bits |= PteFlags::DIRTY;
                        }
                        g.set_flags_huge(bits);
                    }
                }
                HugeFault::Done(Ok(FaultKind::Minor))
            }
            Some(h) if !h.is_none() => HugeFault::Fallback,
            _ if self.thp_vma_allowable(vma) && Self::thp_vma_suitable(vma, haddr) => {
                if !access.write && self.thp_use_zero_page() {
                    return self.do_huge_zero_read(cpu, mm, vma, haddr);
                }
                self.do_huge_pmd_anonymous_page(cpu, mm, vma, haddr)
            }
            _ => HugeFault::Fallback,
        }
    }

    /// `do_huge_pmd_anonymous_page`: a zeroed order-9 folio mapped by one PMD entry
    /// (writable and dirty, as a private anonymous page is born); without a free order-9
    /// block (after reclaim and compaction where `defrag` allows them) the fault falls back
    /// to 4 KiB pages and counts `thp_fault_fallback`.
    fn do_huge_pmd_anonymous_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        haddr: u64,
    ) -> HugeFault {
        let Some(av) = vma.anon_vma else {
            return HugeFault::Done(Err(VmFaultError::Oom)); // anon_vma_prepare ran first
        };
        let gfp = self.vma_thp_gfp_mask(vma) | Gfp::__GFP_ZERO;
        let Some(folio) = self.alloc_pages(cpu, gfp, HPAGE_PMD_ORDER) else {
            cpu.state().vmstat.count(THP_FAULT_FALLBACK, 1);
            return HugeFault::Fallback;
        };
        if self.pgtable_deposit(cpu, &mm.pt).is_err() {
            self.folio_put(cpu, folio);
            cpu.state().vmstat.count(THP_FAULT_FALLBACK, 1);
            return HugeFault::Fallback;
        }
        let pfn = self.page_to_pfn(folio);
        let mut entry = Pte(Pte::new_huge(pfn, vma.vm_page_prot).0 | PteFlags::DIRTY.bits());
        if vma.vm_flags.contains(VmFlags::VM_WRITE) {
            entry = Pte(entry.0 | PteFlags::RW.bits());
        }
        let installed = match self.pmd_lock_alloc(cpu, &mm.pt, haddr) {
            Ok(mut g) => {
                let ok = g.install_huge(entry).is_ok();
                if ok {
                    // folio_add_new_anon_rmap(RMAP_EXCLUSIVE) under the PMD lock.
                    self.folio_add_new_anon_rmap_pmd(cpu, folio, av, vma.linear_page_index(haddr));
                    mm.add_counter(MM_ANONPAGES, HPAGE_PMD_NR as i64);
                }
                Some(ok)
            }
            Err(_) => None,
        };
        match installed {
            Some(true) => {
                self.lru_cache_add(cpu, folio);
                cpu.state().vmstat.count(THP_FAULT_ALLOC, 1);
                HugeFault::Done(Ok(FaultKind::Minor))
            }
            other => {
                // Someone mapped something here first (or no PMD table): ours was never seen.
                self.pgtable_withdraw_free(cpu, &mm.pt);
                self.folio_put(cpu, folio);
                HugeFault::Done(match other {
                    Some(_) => Ok(FaultKind::Minor),
                    None => Err(VmFaultError::Oom),
                })
            }
        }
    }

    /// `do_huge_pmd_anonymous_page`'s read fault: the huge zero folio mapped read-only
    /// (`set_huge_zero_folio`, with a deposited table for a later split); without one, the
    /// fault falls back to 4 KiB (`thp_fault_fallback`).
    fn do_huge_zero_read(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        haddr: u64,
    ) -> HugeFault {
        if self.pgtable_deposit(cpu, &mm.pt).is_err() {
            return HugeFault::Done(Err(VmFaultError::Oom));
        }
        let Some(zero) = self.mm_get_huge_zero_folio(cpu, mm) else {
            self.pgtable_withdraw_free(cpu, &mm.pt);
            cpu.state().vmstat.count(THP_FAULT_FALLBACK, 1);
            return HugeFault::Fallback;
        };
        let entry = Pte(Pte::new_huge(zero, vma.vm_page_prot).0 & !PteFlags::RW.bits());
        let installed = match self.pmd_lock_alloc(cpu, &mm.pt, haddr) {
            Ok(mut g) => Some(g.install_huge(entry).is_ok()),
            Err(_) => None,
        };
        if installed != Some(true) {
            // Someone mapped something here first (or no PMD table).
            self.pgtable_withdraw_free(cpu, &mm.pt);
        }
        HugeFault::Done(match installed {
            None => Err(VmFaultError::Oom),
            Some(_) => Ok(FaultKind::Minor),
        })
    }

    /// `do_huge_zero_wp_pmd`: a write to the huge zero folio gets a THP of its own in its
    /// place (the deposited table stays for it); without one the entry is split into PTEs
    /// of the 4 KiB zero page and the fault copies 4 KiB.
    fn do_huge_zero_wp_pmd(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        haddr: u64,
        orig: Pte,
    ) -> HugeFault {
        let Some(av) = vma.anon_vma else {
            return HugeFault::Done(Err(VmFaultError::Oom)); // anon_vma_prepare ran first
        };
        let gfp = self.vma_thp_gfp_mask(vma) | Gfp::__GFP_ZERO;
        let Some(folio) = self.alloc_pages(cpu, gfp, HPAGE_PMD_ORDER) else {
            cpu.state().vmstat.count(THP_FAULT_FALLBACK, 1);
            self.split_huge_pmd(cpu, &mm.pt, haddr);
            return HugeFault::Fallback;
        };
        let pfn = self.page_to_pfn(folio);
        let mut entry = Pte(Pte::new_huge(pfn, vma.vm_page_prot).0 | PteFlags::DIRTY.bits());
        if vma.vm_flags.contains(VmFlags::VM_WRITE) {
            entry = Pte(entry.0 | PteFlags::RW.bits());
        }
        let mut tlb = MmuGather::new(self, cpu, &mm.pt);
        let replaced = match self.pmd_lock(&mm.pt, haddr) {
            Some(mut g) if g.get() == orig => {
                // pmdp_huge_clear_flush + set_pmd_at, under the PMD lock.
                g.clear_huge(&mut tlb);
                g.install_huge(entry)
                    .expect("BUG: a PMD cleared under its lock was filled");
                self.folio_add_new_anon_rmap_pmd(cpu, folio, av, vma.linear_page_index(haddr));
                mm.add_counter(MM_ANONPAGES, HPAGE_PMD_NR as i64);
                true
            }
            _ => false,
        };
        tlb.finish();
        if replaced {
            self.lru_cache_add(cpu, folio);
            cpu.state().vmstat.count(THP_FAULT_ALLOC, 1);
        } else {
            self.folio_put(cpu, folio); // changed meanwhile: the access retries
        }
        HugeFault::Done(Ok(FaultKind::Minor))
    }

    /// `folio_add_new_anon_rmap` for a PMD mapping: anonymous memory of `anon_vma` from
    /// linear index `index`, mapped entirely once.
    pub(crate) fn folio_add_new_anon_rmap_pmd(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        av: u32,
        index: u64,
    ) {
        folio.set_mapping(PAGE_MAPPING_ANON | av);
        folio.set_index(index);
        folio.set_nonatomic(PageFlags::SWAPBACKED);
        folio.add_entire_mapcount(1);
        self.mod_node_page_state(cpu, folio, NR_ANON_MAPPED, HPAGE_PMD_NR as i64);
        self.mod_node_page_state(cpu, folio, NR_ANON_THPS, HPAGE_PMD_NR as i64);
    }

    /// `folio_remove_rmap_pmd`: one PMD stopped mapping `folio`. When it was the last and no
    /// PTE maps a page of it, its pages are no longer mapped.
    fn folio_remove_rmap_pmd(&self, cpu: &CpuGuard<'_>, folio: &Page) {
        if folio.add_entire_mapcount(-1) == 0 {
            self.mod_node_page_state(cpu, folio, NR_ANON_THPS, -(HPAGE_PMD_NR as i64));
            let still_mapped = (0..HPAGE_PMD_NR).filter(|&i| self.subpage(folio, i).mapcount() > 0);
            let unmapped = HPAGE_PMD_NR - still_mapped.count() as u64;
            self.mod_node_page_state(cpu, folio, NR_ANON_MAPPED, -(unmapped as i64));
        }
    }

    /// Page `i` of the folio whose head is `folio`.
    fn subpage<'a>(&'a self, folio: &Page, i: u64) -> &'a Page {
        self.mem_map.page(self.page_to_pfn(folio) + i)
    }

    /// `do_huge_pmd_wp_page`: a write to a read-only huge entry. A folio only this mapping
    /// holds (after the LRU batch is drained) is reused in place (`folio_move_anon_rmap`,
    /// entry made writable and dirty); otherwise the PMD is split and the fault handled with
    /// PTEs, copying only the 4 KiB written (Linux 6.x).
    fn do_huge_pmd_wp_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        vma: &VmArea,
        address: u64,
        orig: Pte,
    ) -> HugeFault {
        if self.is_huge_zero_pmd(orig) {
            let haddr = address & !(HPAGE_PMD_SIZE - 1);
            return self.do_huge_zero_wp_pmd(cpu, mm, vma, haddr, orig);
        }
        let Some(folio) = self.huge_folio(orig) else {
            self.split_huge_pmd(cpu, &mm.pt, address);
            return HugeFault::Fallback;
        };
        if folio.refcount() > 1 && !folio.test(PageFlags::LRU) {
            self.lru_add_drain(cpu);
        }
        if let Some(mut g) = self.pmd_lock(&mm.pt, address) {
            if g.get() != orig {
                return HugeFault::Done(Ok(FaultKind::Minor)); // changed: retry
            }
            if folio.refcount() == 1 && folio.entire_mapcount() == 1 {
                self.page_move_anon_rmap(folio, vma);
                let mut bits = PteFlags::ACCESSED | PteFlags::DIRTY;
                if vma.vm_flags.contains(VmFlags::VM_WRITE) {
                    bits |= PteFlags::RW;
                }
                g.set_flags_huge(bits);
                return HugeFault::Done(Ok(FaultKind::Minor));
            }
        }
        self.split_huge_pmd(cpu, &mm.pt, address);
        HugeFault::Fallback
    }

    /// `zap_huge_pmd`: clear the huge entry at `haddr` (which `[start, end)` covers whole);
    /// the folio's mapping reference goes to `tlb`, which frees the whole folio after its
    /// flush when that was the last. Returns the pages unmapped.
    fn zap_huge_pmd<'k>(&'k self, tlb: &mut MmuGather<'k>, mm: &MmStruct, haddr: u64) -> u64 {
        let cpu = tlb.cpu();
        let Some(mut g) = self.pmd_lock(&mm.pt, haddr) else {
            return 0;
        };
        if !g.get().is_huge() {
            return 0;
        }
        let old = g.clear_huge(tlb);
        drop(g);
        self.pgtable_withdraw_free(cpu, &mm.pt);
        if self.is_huge_zero_pmd(old) {
            return 0; // maps nothing of its own (the address space keeps its reference)
        }
        let Some(folio) = self.huge_folio(old) else {
            return 0;
        };
        self.folio_remove_rmap_pmd(cpu, folio);
        mm.add_counter(MM_ANONPAGES, -(HPAGE_PMD_NR as i64));
        tlb.remove_page(folio);
        HPAGE_PMD_NR
    }

    /// The PMD level of `unmap_page_range`: every huge entry in `[start, end)` is zapped
    /// whole where the range covers it, split where it covers part of it (the PTE level then
    /// zaps the part).
    pub(crate) fn zap_huge_pmds<'k>(
        &'k self,
        tlb: &mut MmuGather<'k>,
        mm: &MmStruct,
        start: u64,
        end: u64,
    ) {
        let mut from = start & !(HPAGE_PMD_SIZE - 1);
        while let Some((haddr, _)) = self.next_huge_pmd(&mm.pt, from, end) {
            if haddr >= start && haddr + HPAGE_PMD_SIZE <= end {
                self.zap_huge_pmd(tlb, mm, haddr);
            } else {
                self.split_huge_pmd(tlb.cpu(), &mm.pt, haddr);
            }
            from = haddr + HPAGE_PMD_SIZE;
        }
    }

    /// Split every huge entry that `[start, end)` covers only in part (the edges of an
    /// operation that works on PTEs: `vma_adjust_trans_huge` at a VMA split, `mprotect`'s
    /// edges).
    pub(crate) fn split_huge_pmd_edges(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        start: u64,
        end: u64,
    ) {
        for a in [start, end] {
            if a & (HPAGE_PMD_SIZE - 1) != 0 {
                self.split_huge_pmd(cpu, &mm.pt, a);
            }
        }
    }

    /// Split every huge entry in `[start, end)` (operations that work on PTEs only:
    /// `mremap`, `MADV_FREE`).
    pub(crate) fn split_huge_pmd_range(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        start: u64,
        end: u64,
    ) {
        let mut from = start & !(HPAGE_PMD_SIZE - 1);
        while let Some((haddr, _)) = self.next_huge_pmd(&mm.pt, from, end) {
            self.split_huge_pmd(cpu, &mm.pt, haddr);
            from = haddr + HPAGE_PMD_SIZE;
        }
    }

    /// `change_huge_pmd`: the huge entries `[start, end)` covers whole get `prot` (keeping
    /// Accessed and Dirty; what loses a permission is flushed); those it covers in part are
    /// split for the PTE level.
    pub(crate) fn change_huge_pmds(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        start: u64,
        end: u64,
        prot: crate::arch::x86_64::pgtable::PgProt,
    ) {
        let mut from = start & !(HPAGE_PMD_SIZE - 1);
        while let Some((haddr, _)) = self.next_huge_pmd(&mm.pt, from, end) {
            if haddr >= start && haddr + HPAGE_PMD_SIZE <= end {
                let mut tlb = MmuGather::new(self, cpu, &mm.pt);
                if let Some(mut g) = self.pmd_lock(&mm.pt, haddr) {
                    let h = g.get();
                    if h.is_huge() {
                        // The huge zero folio is never mapped writable.
                        let keep_ro = if self.is_huge_zero_pmd(h) {
                            !PteFlags::RW.bits()
                        } else {
                            !0
                        };
                        g.update_huge(&mut tlb, |p| {
                            Pte((p.modify(prot).0 | PteFlags::PSE.bits()) & keep_ro)
                        });
                    }
                }
                tlb.finish();
            } else {
                self.split_huge_pmd(cpu, &mm.pt, haddr);
            }
            from = haddr + HPAGE_PMD_SIZE;
        }
    }

    /// `copy_huge_pmd` for fork: the child maps each THP of `vma` by a PMD as the parent
    /// does; in a COW mapping both entries are write-protected (the child's starts old).
    /// Each copy takes a reference and an entire mapping on the folio, under both PMD locks
    /// (the child's first), so that a split through the reverse map sees both or neither.
    pub(crate) fn copy_huge_pmds(
        &self,
        cpu: &CpuGuard<'_>,
        dst: &MmStruct,
        src: &MmStruct,
        vma: &VmArea,
    ) -> Result<(), Errno> {
        let cow = vma.is_cow_mapping();
        let mut from = vma.vm_start & !(HPAGE_PMD_SIZE - 1);
        while let Some((haddr, _)) = self.next_huge_pmd(&src.pt, from, vma.vm_end) {
            from = haddr + HPAGE_PMD_SIZE;
            self.pgtable_deposit(cpu, &dst.pt)?;
            let Ok(mut d) = self.pmd_lock_alloc(cpu, &dst.pt, haddr) else {
                self.pgtable_withdraw_free(cpu, &dst.pt);
                return Err(Errno::ENOMEM);
            };
            let mut tlb = MmuGather::new(self, cpu, &src.pt);
            let copied = match self.pmd_lock(&src.pt, haddr) {
                Some(s) if self.is_huge_zero_pmd(s.get()) => {
                    // copy_huge_pmd of the huge zero folio: the child maps it too.
                    let v = s.get();
                    self.mm_get_huge_zero_folio(cpu, dst)
                        .expect("the parent's reference keeps the huge zero folio");
                    d.install_huge(v.mkold())
                        .expect("a new address space's PMD is none");
                    true
                }
                Some(mut s) if s.get().is_huge() => {
                    let v = if cow && s.get().writable() {
                        s.update_huge(&mut tlb, |p| p.wrprotect()).wrprotect()
                    } else {
                        s.get()
                    };
                    match self.huge_folio(v) {
                        Some(folio) => {
                            folio.get();
                            folio.add_entire_mapcount(1);
                            d.install_huge(v.mkold())
                                .expect("a new address space's PMD is none");
                            dst.add_counter(MM_ANONPAGES, HPAGE_PMD_NR as i64);
                            true
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            drop(d);
            tlb.finish();
            if !copied {
                self.pgtable_withdraw_free(cpu, &dst.pt);
            }
        }
        Ok(())
    }

    /// `split_huge_pmd` + `split_huge_page`: if a huge entry maps `address` in `pt`, replace
    /// it by 512 PTEs and split its folio into order-0 pages (every other PMD mapping it is
    /// split with it, through the reverse map). True if there was a huge entry.
    ///
    /// A large folio is only ever mapped by PMDs here: the PMD split and the folio split are
    /// one step under the folio lock, with the new PTE tables locked until the pages are
    /// order-0 pages, so no PTE-level user (a fault taking a reference, a zap dropping one)
    /// ever meets a tail page through a PTE.
    pub(crate) fn split_huge_pmd(&self, cpu: &CpuGuard<'_>, pt: &PgTable, address: u64) -> bool {
        let mut split = false;
        loop {
            // The folio the huge entry maps, with a reference taken under the PMD lock.
            let folio = {
                let Some(g) = self.pmd_lock(pt, address) else {
                    return split;
                };
                let h = g.get();
                if !h.is_huge() {
                    return split;
                }
                if self.is_huge_zero_pmd(h) {
                    // __split_huge_zero_page_pmd: PTEs of the 4 KiB zero page.
                    drop(g);
                    let zero = self.zero_pfn();
                    return self.__split_huge_pmd(cpu, pt, address, |huge, _| {
                        Pte(
                            (huge.0 & !PTE_PFN_MASK & !PteFlags::PSE.bits() & !PteFlags::RW.bits())
                                | (zero.0 << crate::PAGE_SHIFT)
                                | PAGE_SPECIAL.bits(),
                        )
                    }) || split;
                }
                match self.huge_folio(h) {
                    Some(f) => {
                        f.get();
                        f
                    }
                    None => {
                        drop(g);
                        // No folio behind it (nothing to split but the entry).
                        return self.__split_huge_pmd(cpu, pt, address, huge_to_pte) || split;
                    }
                }
            };
            folio.lock();
            if folio.folio_test_large() {
                self.split_folio_locked(cpu, folio, None, Some((pt, address)));
            }
            folio.unlock();
            self.folio_put(cpu, folio);
            split = true;
            // Split by us or by someone else meanwhile; a new THP faulted in at `address`
            // since (another thread of the address space) is split in turn.
        }
    }

    /// `__split_huge_pmd` of an entry with no folio of its own behind it: replace the huge
    /// entry mapping `address` by a PTE table of what `pte_of` makes of it (the same 512
    /// frames with the same bits; the 4 KiB zero page for the huge zero folio). True if
    /// there was a huge entry.
    fn __split_huge_pmd(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        address: u64,
        pte_of: impl Fn(Pte, u64) -> Pte,
    ) -> bool {
        let mut tlb = MmuGather::new(self, cpu, pt);
        let Some(mut g) = self.pmd_lock(pt, address) else {
            return false;
        };
        let done = g.split_to_table(&mut tlb, pte_of).is_some();
        drop(g);
        tlb.finish();
        if done {
            cpu.state().vmstat.count(THP_SPLIT_PMD, 1);
        }
        done
    }

    /// `split_huge_page` of the large folio `folio` (locked by the caller, who holds a
    /// reference): replace every PMD mapping it by a PTE table (`unmap_folio`'s
    /// `TTU_SPLIT_HUGE_PMD`, through the reverse map), each new table locked before it is
    /// published and kept locked until the folio is split, then make its 512 pages order-0
    /// pages: each keeps the references of the PTEs mapping it, the head keeps every other
    /// reference; flags, `mapping` and consecutive `index`es are copied from the head, and
    /// the pages join the LRU next to it — or, with `list` (a caller that isolated the
    /// folio: reclaim), are isolated onto `list` with a reference each. Only then are the
    /// tables unlocked and the huge translations flushed (they map the same frames).
    pub(crate) fn split_huge_page_locked(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        list: Option<&mut Vec<crate::Pfn>>,
    ) {
        self.split_folio_locked(cpu, folio, list, None);
    }

    /// [`Kernel::split_huge_page_locked`], splitting the PMD at `first` (an address space and
    /// an address in it) before those the reverse map knows: `split_huge_pmd`'s caller may
    /// be changing that VMA (a munmap or a split), whose reverse-map record may already say
    /// so.
    fn split_folio_locked(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        list: Option<&mut Vec<crate::Pfn>>,
        first: Option<(&PgTable, u64)>,
    ) {
        debug_assert!(folio.folio_test_large() && folio.test(PageFlags::LOCKED));
        // unmap_folio: every PMD mapping of the folio becomes PTEs. Again until none is
        // left: a fork may copy a huge PMD we have not reached yet into a child whose
        // VMA we already passed (the PMD it copies from is one we split later).
        let index = folio.index();
        let first_held = first.and_then(|(pt, a)| self.split_pmd_of_folio(cpu, pt, a, folio));
        let mut held = Vec::new();
        while folio.entire_mapcount() > 0 {
            let before = held.len();
            // Under the anon_vma lock (read), the list itself: each new table stays locked
            // (the PTL is held past the walk) until the folio is split.
            self.with_rmap_vmas(folio, |vmas| {
                for r in vmas {
                    let Some(a) = r.address(index) else {
                        continue;
                    };
                    if let Some((haddr, old, ptl)) = self.split_pmd_of_folio(cpu, r.pt(), a, folio)
                    {
                        held.push((r.pt().clone(), haddr, old, ptl));
                    }
                }
            });
            assert!(
                held.len() > before,
                "BUG: a PMD mapping of folio {:?} the reverse map does not know",
                self.page_to_pfn(folio)
            );
        }
        // __split_huge_page: the references of each page's PTEs go with it.
        let nid = folio.nid();
        let mut lru = self.nodes[nid].lru.lock();
        let on_lru = folio.test(PageFlags::LRU);
        if on_lru {
            self.lru_del_locked(&mut lru, folio);
        }
        let keep = folio.flags()
            & (PageFlags::REFERENCED
                | PageFlags::UPTODATE
                | PageFlags::DIRTY
                | PageFlags::ACTIVE
                | PageFlags::WORKINGSET
                | PageFlags::SWAPBACKED
                | PageFlags::UNEVICTABLE
                | PageFlags::MLOCKED);
        let mut moved = 0i32;
        let mut list = list;
        for i in 1..HPAGE_PMD_NR {
            let t = self.subpage(folio, i);
            // The page's own references first: an MMU may be storing through a PTE that maps
            // it, and whoever looks at the page meanwhile (as a tail, through its head, or
            // as itself) finds it referenced.
            let refs = t.mapcount();
            t.set_refcount(refs);
            t.set_index(index + i);
            t.set_mapping(folio.mapping());
            t.set(keep);
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            t.clear(PageFlags::TAIL);
            t.set_private(0);
            moved += refs;
        }
        folio.clear_nonatomic(PageFlags::HEAD);
        folio.set_private(0);
        // The head keeps its own PTEs' references and every other one.
        folio.ref_add(-moved);
        for i in 1..HPAGE_PMD_NR {
            let t = self.subpage(folio, i);
            if t.refcount() == 0 {
                // Mapped by nothing (cannot happen: the split PMD mapped every page); free.
                t.clear(keep);
                t.set_mapping(0);
                t.set_refcount(1);
                drop(lru);
                self.__free_pages(cpu, t, 0);
                lru = self.nodes[nid].lru.lock();
                continue;
            }
            match list.as_deref_mut() {
                Some(l) => {
                    t.get();
                    l.push(self.page_to_pfn(t));
                }
                None => self.lru_add_locked(&mut lru, t),
            }
        }
        if on_lru {
            self.lru_add_locked(&mut lru, folio);
        }
        drop(lru);
        cpu.state().vmstat.count(THP_SPLIT_PAGE, 1);
        // The pages are order-0 pages: the tables may be seen, and the huge translations go.
        if let (Some((pt, _)), Some((haddr, old, ptl))) = (first, first_held) {
            drop(ptl);
            self.flush_split_pmd(cpu, pt, haddr, old);
        }
        for (pt, haddr, old, ptl) in held {
            drop(ptl);
            self.flush_split_pmd(cpu, &pt, haddr, old);
        }
    }

    /// The huge translation `old` at `haddr` that a split replaced (by a table mapping the
    /// same frames) leaves every TLB.
    fn flush_split_pmd(&self, cpu: &CpuGuard<'_>, pt: &PgTable, haddr: u64, old: Pte) {
        if old.is_present() {
            let mut tlb = MmuGather::new(self, cpu, pt);
            tlb.record_huge(pt, haddr, old);
            tlb.finish();
        }
    }

    /// One PMD mapping of the large folio `folio` (locked), at `a` in `pt`, replaced by a
    /// PTE table locked before it is published (`split_to_table_locked`);
    /// the folio's PMD mapping and reference become one per page. Returns the entry's
    /// address, the huge value replaced and the table's lock; `None` if no huge entry
    /// there maps the folio.
    fn split_pmd_of_folio(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        a: u64,
        folio: &Page,
    ) -> Option<(u64, Pte, crate::arch::x86_64::pgtable::table::PtlGuard<'_>)> {
        let mut g = self.pmd_lock(pt, a)?;
        let h = g.get();
        if !h.is_huge() || h.pfn() != self.page_to_pfn(folio) {
            return None;
        }
        let haddr = g.haddr();
        let (old, ptl) = g.split_to_table_locked(self, huge_to_pte)?;
        // Each page gains a PTE mapping while the PMD mapping still counts, so each stays
        // counted in nr_anon_pages (a page is counted while a PMD or a PTE maps it). The
        // PMD's reference becomes the 512 PTEs' references.
        for i in 0..HPAGE_PMD_NR {
            self.subpage(folio, i).inc_mapcount();
        }
        folio.ref_add(HPAGE_PMD_NR as i32 - 1);
        if folio.add_entire_mapcount(-1) == 0 {
            self.mod_node_page_state(cpu, folio, NR_ANON_THPS, -(HPAGE_PMD_NR as i64));
        }
        drop(g);
        cpu.state().vmstat.count(THP_SPLIT_PMD, 1);
        Some((haddr, old, ptl))
    }

    /// Pages of `vma` mapped by huge entries in `pt` (smaps' `AnonHugePages`).
    pub fn huge_pmd_pages_in(&self, pt: &PgTable, start: u64, end: u64) -> u64 {
        let mut n = 0;
        let mut from = start & !(HPAGE_PMD_SIZE - 1);
        while let Some((haddr, pmd)) = self.next_huge_pmd(pt, from, end) {
            if pmd.is_present() && !self.is_huge_zero_pmd(pmd) {
                n += HPAGE_PMD_NR;
            }
            from = haddr + HPAGE_PMD_SIZE;
        }
        n
    }

    /// The huge entries' invariants in `mm`: each lies inside one VMA that allows anonymous
    /// memory, maps the head of a large anonymous folio of that VMA's `anon_vma` chain at
    /// the right index, whose entire mapcount counts it, and no page of which any PTE maps;
    /// one deposited table per huge entry.
    pub(crate) fn check_huge_pmds(
        &self,
        mm: &MmStruct,
        chains: &alloc::collections::BTreeMap<u64, Vec<u32>>,
    ) -> Result<u64, alloc::string::String> {
        use alloc::format;
        // Under the PMD lock (the page_table_lock): reclaim may be splitting a THP of this
        // address space through the reverse map, and a split withdraws the deposited table
        // before it replaces the huge entry.
        let _ptl = mm.pt.lock.lock();
        let mut nr = 0;
        let mut from = 0;
        while let Some((haddr, pmd)) =
            self.next_huge_pmd(&mm.pt, from, crate::mm::mm_types::TASK_SIZE)
        {
            from = haddr + HPAGE_PMD_SIZE;
            nr += 1;
            let Some(v) = mm
                .vma_lookup(haddr)
                .filter(|v| haddr + HPAGE_PMD_SIZE <= v.vm_end)
            else {
                return Err(format!("huge PMD at {haddr:#x} not inside one VMA"));
            };
            if self.is_huge_zero_pmd(pmd) {
                if pmd.writable() || !mm.huge_zero.load(Ordering::Relaxed) {
                    return Err(format!(
                        "huge zero PMD at {haddr:#x}: writable {}, reference held {}",
                        pmd.writable(),
                        mm.huge_zero.load(Ordering::Relaxed)
                    ));
                }
                continue;
            }
            let Some(folio) = self.huge_folio(pmd) else {
                return Err(format!(
                    "huge PMD at {haddr:#x} maps {:?}, not a folio head",
                    pmd.pfn()
                ));
            };
            if folio.folio_order() != HPAGE_PMD_ORDER || folio.refcount() < folio.entire_mapcount()
            {
                return Err(format!(
                    "huge PMD at {haddr:#x}: folio order {} refcount {} entire mapcount {}",
                    folio.folio_order(),
                    folio.refcount(),
                    folio.entire_mapcount()
                ));
            }
            if folio.entire_mapcount() < 1 || folio.folio_mapcount() != folio.entire_mapcount() {
                return Err(format!(
                    "huge PMD at {haddr:#x}: entire mapcount {}, folio mapcount {}",
                    folio.entire_mapcount(),
                    folio.folio_mapcount()
                ));
            }
            let av = folio.mapping() & !PAGE_MAPPING_ANON;
            let chained = chains.get(&v.vm_start).is_some_and(|c| c.contains(&av));
            if folio.mapping() & PAGE_MAPPING_ANON == 0
                || !chained
                || folio.index() != v.linear_page_index(haddr)
            {
                return Err(format!(
                    "huge PMD at {haddr:#x}: folio mapping {:#x} index {:#x}, VMA anon_vma {:?} index {:#x}",
                    folio.mapping(),
                    folio.index(),
                    v.anon_vma,
                    v.linear_page_index(haddr)
                ));
            }
        }
        if nr != self.deposited_tables(&mm.pt) {
            return Err(format!(
                "{nr} huge PMDs but {} deposited page tables",
                self.deposited_tables(&mm.pt)
            ));
        }
        Ok(nr)
    }
}
