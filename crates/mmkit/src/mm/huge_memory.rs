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
//! Splitting is Linux's two steps: `__split_huge_pmd` replaces a PMD mapping by a table of
//! 512 PTEs mapping the same pages (the folio's references and mapcounts move from the PMD
//! to the PTEs; the folio stays whole), and `split_huge_page`
//! ([`crate::mm::huge_split`]) turns a folio into order-0 pages — when reclaim swaps it out,
//! or when the deferred split queue's shrinker finds it partially mapped. What splits a
//! PMD: a range operation that covers part of it (`munmap`, `mprotect`, `madvise`,
//! `mremap`, a VMA split at an address inside one) and a write to a THP shared with another
//! process (`do_huge_pmd_wp_page` falls back to 4 KiB COW after splitting, as Linux 6.x
//! does).
//!
//! mTHP (Linux 6.8+): the per-size policies (`hugepages-<N>kB/enabled`, orders 2 to 9:
//! `always`, `inherit`, `madvise`, `never`; Linux's defaults, `thp_anon=` on the command
//! line) and `thp_vma_allowable_orders`; `alloc_anon_folio` in
//! [`crate::mm::memory`] maps folios of the allowed sizes below the PMD's by PTEs.
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
//! [`crate::mm::khugepaged`]. Compaction moves mTHP folios and never PMD-sized ones
//! ([`crate::mm::compaction`], as Linux's `skip_isolation_on_order`). Not here yet: file
//! THPs.

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
use crate::mm::mm_types::{MmStruct, MmTables, VmArea, VmFlags, MM_ANONPAGES};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{page_anon, Page, PageFlags, PAGE_MAPPING_ANON};
use crate::mm::vmstat::{
    index_of, MTHP_STAT_ANON_FAULT_ALLOC, MTHP_STAT_ANON_FAULT_FALLBACK, MTHP_STAT_NR_ANON,
    NODE_STAT_NAMES, VM_EVENT_NAMES,
};
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

/// A per-size policy (`/sys/kernel/mm/transparent_hugepage/hugepages-<N>kB/enabled`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ThpPolicy {
    /// Every eligible anonymous VMA.
    Always,
    /// As the top-level `enabled` says.
    Inherit,
    /// Only `MADV_HUGEPAGE` VMAs.
    Madvise,
    /// None.
    Never,
}

impl ThpPolicy {
    /// The value as written to sysfs or `thp_anon=`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(Self::Always),
            "inherit" => Some(Self::Inherit),
            "madvise" => Some(Self::Madvise),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
    /// The sysfs file's text: `always inherit madvise [never]`.
    pub fn sysfs(self) -> &'static str {
        match self {
            Self::Always => "[always] inherit madvise never",
            Self::Inherit => "always [inherit] madvise never",
            Self::Madvise => "always inherit [madvise] never",
            Self::Never => "always inherit madvise [never]",
        }
    }
}

/// `THP_ORDERS_ALL_ANON` on x86-64: orders 2 (16 KiB) to `PMD_ORDER` (2 MiB). Order 1 has
/// no room for the deferred split list.
pub const THP_ORDERS_ALL_ANON: u32 = ((1 << (HPAGE_PMD_ORDER + 1)) - 1) & !0b11;

/// `huge_anon_orders_always`, `_madvise` and `_inherit`: one bit per order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AnonOrders {
    always: u32,
    madvise: u32,
    inherit: u32,
}

impl Default for AnonOrders {
    /// Linux's defaults (`hugepage_init_sysfs`): the PMD size `inherit`, the others `never`.
    fn default() -> Self {
        Self {
            always: 0,
            madvise: 0,
            inherit: 1 << HPAGE_PMD_ORDER,
        }
    }
}

impl AnonOrders {
    /// Every size `never`: where `thp_anon=` starts from (`setup_thp_anon` runs before
    /// `hugepage_init_sysfs` sets the defaults, which it then leaves alone), so a size the
    /// command line does not name is `never`, the PMD size included.
    pub const fn none() -> Self {
        Self {
            always: 0,
            madvise: 0,
            inherit: 0,
        }
    }

    /// The policy of `order`.
    pub fn policy(&self, order: u32) -> ThpPolicy {
        let b = 1u32.checked_shl(order).unwrap_or(0);
        if self.always & b != 0 {
            ThpPolicy::Always
        } else if self.inherit & b != 0 {
            ThpPolicy::Inherit
        } else if self.madvise & b != 0 {
            ThpPolicy::Madvise
        } else {
            ThpPolicy::Never
        }
    }

    /// Set the policy of the orders in `mask` (`thpsize_enabled_store`).
    pub fn set(&mut self, mask: u32, p: ThpPolicy) {
        self.always &= !mask;
        self.madvise &= !mask;
        self.inherit &= !mask;
        match p {
            ThpPolicy::Always => self.always |= mask,
            ThpPolicy::Inherit => self.inherit |= mask,
            ThpPolicy::Madvise => self.madvise |= mask,
            ThpPolicy::Never => {}
        }
    }

    /// `setup_thp_anon`: apply `thp_anon=` (`16K-64K:always;128K,512K:inherit;2M:never`):
    /// `;`-separated groups of `,`-separated sizes or `-` ranges of sizes, each a power of
    /// two from 16K to 2M (`get_order_from_str`), then `:` and the policy.
    pub fn apply_thp_anon(&mut self, s: &str) -> Result<(), &'static str> {
        // Linux refuses a value that does not fit its one-page buffer.
        if s.is_empty() || s.len() + 1 > crate::PAGE_SIZE as usize {
            return Err("empty or longer than a page");
        }
        let mut out = *self;
        for token in s.split(';') {
            let (range, policy) = token
                .split_once(':')
                .ok_or("a size list without `:POLICY`")?;
            let policy = ThpPolicy::parse(policy)
                .ok_or("policy must be always, inherit, madvise or never")?;
            for sub in range.split(',') {
                let (a, b) = sub.split_once('-').unwrap_or((sub, sub));
                let (start, end) = (anon_order_of(a)?, anon_order_of(b)?);
                if start > end {
                    return Err("a size range must go upwards");
                }
                let mask = ((1u32 << (end + 1)) - 1) & !((1u32 << start) - 1);
                out.set(mask, policy);
            }
        }
        *self = out;
        Ok(())
    }
}

/// `get_order_from_str`: the order of an anonymous mTHP size (`memparse` syntax).
fn anon_order_of(size: &str) -> Result<u32, &'static str> {
    let bytes = crate::cmdline::memparse(size).ok_or("not a size")?;
    let pages = bytes >> crate::PAGE_SHIFT;
    if !bytes.is_multiple_of(crate::PAGE_SIZE) || !pages.is_power_of_two() {
        return Err("size must be a power of two of pages");
    }
    let order = pages.trailing_zeros();
    if order >= 32 || THP_ORDERS_ALL_ANON & (1 << order) == 0 {
        return Err("size must be 16K to 2M");
    }
    Ok(order)
}

/// The policies (`transparent_hugepage_flags` and the per-size `huge_anon_orders_*`).
pub(crate) struct ThpState {
    enabled: core::sync::atomic::AtomicU8,
    defrag: core::sync::atomic::AtomicU8,
    /// `use_zero_page`.
    use_zero_page: core::sync::atomic::AtomicBool,
    /// `huge_anon_orders_always`, `_madvise`, `_inherit` (read without the lock by faults).
    orders_always: core::sync::atomic::AtomicU32,
    orders_madvise: core::sync::atomic::AtomicU32,
    orders_inherit: core::sync::atomic::AtomicU32,
    /// `huge_anon_orders_lock`: writers of the three masks.
    orders_lock: crate::sync::SpinLock<()>,
    /// khugepaged's tunables and counters.
    pub(crate) khugepaged: crate::mm::khugepaged::Khugepaged,
    /// `huge_zero_folio` and `huge_zero_refcount` (the address spaces holding it).
    huge_zero: crate::sync::SpinLock<(Option<crate::Pfn>, u64)>,
    /// The huge zero folio's pfn for `is_huge_zero_pmd` (`NO_HUGE_ZERO` when there is none;
    /// stable while any PMD maps it, since its address space holds a reference).
    huge_zero_pfn: core::sync::atomic::AtomicU64,
}

impl ThpState {
    pub(crate) fn new(enabled: Option<ThpEnabled>, anon: Option<AnonOrders>) -> Self {
        let o = anon.unwrap_or_default();
        Self {
            // CONFIG_TRANSPARENT_HUGEPAGE_MADVISE, as the distributions' kernels and the host.
            enabled: (enabled.unwrap_or(ThpEnabled::Madvise) as u8).into(),
            defrag: (ThpDefrag::Madvise as u8).into(),
            use_zero_page: true.into(),
            orders_always: o.always.into(),
            orders_madvise: o.madvise.into(),
            orders_inherit: o.inherit.into(),
            orders_lock: crate::sync::SpinLock::new(()),
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
    /// Handle it with PTEs, after reading the page from the file (a major fault).
    FallbackMajor,
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

    /// The per-size policies now (`huge_anon_orders_*`).
    pub fn thp_anon_orders(&self) -> AnonOrders {
        AnonOrders {
            always: self.thp.orders_always.load(Relaxed),
            madvise: self.thp.orders_madvise.load(Relaxed),
            inherit: self.thp.orders_inherit.load(Relaxed),
        }
    }

    /// Write `hugepages-<size_kb>kB/enabled` (`thpsize_enabled_store`): applies to the next
    /// fault. `EINVAL` for a size without such a file (anonymous sizes are 16 KiB to 2 MiB).
    pub fn set_mthp_enabled(&self, size_kb: u64, p: ThpPolicy) -> Result<(), Errno> {
        let order = Self::mthp_order_of_kb(size_kb)?;
        let _g = self.thp.orders_lock.lock();
        let mut o = self.thp_anon_orders();
        o.set(1 << order, p);
        self.thp.orders_always.store(o.always, Relaxed);
        self.thp.orders_madvise.store(o.madvise, Relaxed);
        self.thp.orders_inherit.store(o.inherit, Relaxed);
        Ok(())
    }

    /// Read `hugepages-<size_kb>kB/enabled`.
    pub fn mthp_enabled(&self, size_kb: u64) -> Result<ThpPolicy, Errno> {
        Ok(self
            .thp_anon_orders()
            .policy(Self::mthp_order_of_kb(size_kb)?))
    }

    /// The order of an anonymous mTHP size in KiB.
    pub fn mthp_order_of_kb(size_kb: u64) -> Result<u32, Errno> {
        let pages = size_kb / (crate::PAGE_SIZE >> 10);
        if !size_kb.is_multiple_of(crate::PAGE_SIZE >> 10) || !pages.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        let order = pages.trailing_zeros();
        if order >= 32 || THP_ORDERS_ALL_ANON & (1 << order) == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(order)
    }

    /// `vma_thp_disabled` plus what an anonymous VMA must be for any THP order: private
    /// anonymous, not special, not `VM_NOHUGEPAGE`.
    fn vma_thp_possible(vma: &VmArea) -> bool {
        vma.is_anonymous()
            && vma.vm_special.is_none()
            && !vma.vm_flags.intersects(
                VmFlags::VM_NOHUGEPAGE
                    | VmFlags::VM_SHARED
                    | VmFlags::VM_PFNMAP
                    | VmFlags::VM_IO
                    | VmFlags::VM_MIXEDMAP,
            )
    }

    /// `thp_vma_allowable_orders(vma, vm_flags, TVA_IN_PF | TVA_ENFORCE_SYSFS, orders)` for
    /// anonymous memory: the orders of `orders` the policies allow in this VMA — each size's
    /// `always`, its `madvise` in a `VM_HUGEPAGE` VMA, its `inherit` as the top-level
    /// `enabled` says.
    pub fn thp_vma_allowable_orders(&self, vma: &VmArea, orders: u32) -> u32 {
        let orders = orders & THP_ORDERS_ALL_ANON;
        if orders == 0 || !Self::vma_thp_possible(vma) {
            return 0;
        }
        let o = self.thp_anon_orders();
        let madvised = vma.vm_flags.contains(VmFlags::VM_HUGEPAGE);
        let mut mask = o.always;
        if madvised {
            mask |= o.madvise;
        }
        let inherit = match self.thp_enabled() {
            ThpEnabled::Always => true,
            ThpEnabled::Madvise => madvised,
            ThpEnabled::Never => false,
        };
        if inherit {
            mask |= o.inherit;
        }
        orders & mask
    }

    /// `thp_vma_allowable_order(vma, PMD_ORDER)`: a PMD-sized THP is allowed in this VMA.
    pub fn thp_vma_allowable(&self, vma: &VmArea) -> bool {
        self.thp_vma_allowable_orders(vma, 1 << HPAGE_PMD_ORDER) != 0
    }

    /// `thp_vma_suitable_order`: the naturally aligned `2^order` pages around `addr` lie
    /// inside the VMA. (Linux checks the page offset's alignment for file VMAs only; the
    /// PMD size keeps that check here for anonymous memory too, as mmkit always has.)
    pub fn thp_vma_suitable_order(vma: &VmArea, addr: u64, order: u32) -> bool {
        let size = crate::PAGE_SIZE << order;
        let haddr = addr & !(size - 1);
        if order == HPAGE_PMD_ORDER {
            let pgoff_aligned = ((vma.vm_start >> crate::PAGE_SHIFT).wrapping_sub(vma.vm_pgoff))
                .is_multiple_of(HPAGE_PMD_NR);
            if !pgoff_aligned {
                return false;
            }
        }
        haddr >= vma.vm_start && haddr + size <= vma.vm_end
    }

    /// `thp_vma_suitable_orders`: the orders of `orders` suitable at `addr`.
    pub fn thp_vma_suitable_orders(vma: &VmArea, addr: u64, orders: u32) -> u32 {
        let mut out = 0;
        let mut rest = orders;
        while rest != 0 {
            let order = 31 - rest.leading_zeros();
            rest &= !(1 << order);
            if Self::thp_vma_suitable_order(vma, addr, order) {
                out |= 1 << order;
            }
        }
        out
    }

    /// `thp_vma_suitable_order` at the PMD size.
    pub fn thp_vma_suitable(vma: &VmArea, haddr: u64) -> bool {
        Self::thp_vma_suitable_order(vma, haddr, HPAGE_PMD_ORDER)
    }

    /// smaps' `THPeligible` (`thp_vma_allowable_orders(vma, TVA_SMAPS | TVA_ENFORCE_SYSFS,
    /// THP_ORDERS_ALL)`): some allowed order fits the VMA (checked at its last such range,
    /// as `__thp_vma_allowable_orders` does outside a fault).
    pub fn thp_vma_eligible(&self, vma: &VmArea) -> bool {
        let mut orders = self.thp_vma_allowable_orders(vma, THP_ORDERS_ALL_ANON);
        while orders != 0 {
            let order = 31 - orders.leading_zeros();
            orders &= !(1 << order);
            let size = crate::PAGE_SIZE << order;
            if vma.vm_end >= size && Self::thp_vma_suitable_order(vma, vma.vm_end - size, order) {
                return true;
            }
        }
        false
    }

    /// `vma_thp_gfp_mask`: how hard a THP fault in `vma` tries, by `defrag`.
    pub(crate) fn vma_thp_gfp_mask(&self, vma: &VmArea) -> Gfp {
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
            _ if !access.write && Self::file_pmd_possible(vma, haddr) => {
                self.do_file_huge_read(cpu, mm, vma, address)
            }
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
            self.mthp_stats
                .add(HPAGE_PMD_ORDER, MTHP_STAT_ANON_FAULT_FALLBACK, 1);
            return HugeFault::Fallback;
        };
        if self.pgtable_deposit(cpu, &mm.pt).is_err() {
            self.folio_put(cpu, folio);
            cpu.state().vmstat.count(THP_FAULT_FALLBACK, 1);
            self.mthp_stats
                .add(HPAGE_PMD_ORDER, MTHP_STAT_ANON_FAULT_FALLBACK, 1);
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
                self.mthp_stats
                    .add(HPAGE_PMD_ORDER, MTHP_STAT_ANON_FAULT_ALLOC, 1);
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
            self.mthp_stats
                .add(HPAGE_PMD_ORDER, MTHP_STAT_ANON_FAULT_FALLBACK, 1);
            self.split_huge_pmd(cpu, mm.tables(), haddr);
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
            self.mthp_stats
                .add(HPAGE_PMD_ORDER, MTHP_STAT_ANON_FAULT_ALLOC, 1);
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
        self.mthp_stats.add(HPAGE_PMD_ORDER, MTHP_STAT_NR_ANON, 1);
    }

    /// `folio_remove_rmap_pmd`: one PMD stopped mapping `folio`. When it was the last, the
    /// pages no PTE maps are no longer mapped; if some still are, the folio is partially
    /// mapped and waits on the deferred split queue.
    fn folio_remove_rmap_pmd(&self, cpu: &CpuGuard<'_>, folio: &Page) {
        if folio.add_entire_mapcount(-1) == 0 {
            self.mod_node_page_state(cpu, folio, NR_ANON_THPS, -(HPAGE_PMD_NR as i64));
            let unmapped = HPAGE_PMD_NR as i64 - i64::from(folio.nr_pages_mapped());
            self.mod_node_page_state(cpu, folio, NR_ANON_MAPPED, -unmapped);
            if unmapped > 0 && unmapped < HPAGE_PMD_NR as i64 {
                self.deferred_split_folio(cpu, folio, true);
            }
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
            self.split_huge_pmd(cpu, mm.tables(), address);
            return HugeFault::Fallback;
        };
        if !page_anon(folio) {
            // wp_huge_pmd of a file VMA: the PMD goes, the PTE level handles the write.
            self.split_huge_pmd(cpu, mm.tables(), address);
            return HugeFault::Fallback;
        }
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
        self.split_huge_pmd(cpu, mm.tables(), address);
        HugeFault::Fallback
    }

    /// `zap_huge_pmd`: clear the huge entry at `haddr` (which `[start, end)` covers whole);
    /// the folio's mapping reference goes to `tlb`, which frees the whole folio after its
    /// flush when that was the last. Returns the pages unmapped.
    fn zap_huge_pmd<'k>(&'k self, tlb: &mut MmuGather<'k>, mm: MmTables<'_>, haddr: u64) -> u64 {
        let cpu = tlb.cpu();
        let Some(mut g) = self.pmd_lock(mm.pt, haddr) else {
            return 0;
        };
        if !g.get().is_huge() {
            return 0;
        }
        let old = g.clear_huge(tlb);
        if let Some(folio) = self.file_pmd_folio(old) {
            // A file THP: no deposited table (see huge_file).
            self.file_pmd_cleared(cpu, mm.rss, folio, old);
            drop(g);
            tlb.remove_page(folio);
            return HPAGE_PMD_NR;
        }
        drop(g);
        self.pgtable_withdraw_free(cpu, mm.pt);
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
        mm: MmTables<'_>,
        start: u64,
        end: u64,
    ) {
        let mut from = start & !(HPAGE_PMD_SIZE - 1);
        while let Some((haddr, _)) = self.next_huge_pmd(mm.pt, from, end) {
            if haddr >= start && haddr + HPAGE_PMD_SIZE <= end {
                self.zap_huge_pmd(tlb, mm, haddr);
            } else {
                self.split_huge_pmd(tlb.cpu(), mm, haddr);
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
                self.split_huge_pmd(cpu, mm.tables(), a);
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
            self.split_huge_pmd(cpu, mm.tables(), haddr);
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
                        // The huge zero folio and file THPs are never mapped writable.
                        let keep_ro =
                            if self.is_huge_zero_pmd(h) || self.file_pmd_folio(h).is_some() {
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
                self.split_huge_pmd(cpu, mm.tables(), haddr);
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
        if !vma.is_anonymous() {
            // copy_huge_pmd: file THPs are not copied, the child faults them in.
            return Ok(());
        }
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

    /// `split_huge_pmd`: if a huge entry maps `address` in `pt`, replace it by a table of
    /// 512 PTEs mapping the same pages (the huge zero folio: PTEs of the 4 KiB zero page).
    /// The folio stays whole, now mapped by PTEs (`split_huge_page` is a separate step:
    /// reclaim's, or the deferred split queue's once part of the folio is unmapped). True if
    /// there was a huge entry.
    pub(crate) fn split_huge_pmd(
        &self,
        cpu: &CpuGuard<'_>,
        mm: MmTables<'_>,
        address: u64,
    ) -> bool {
        let pt = mm.pt;
        let mut split = false;
        loop {
            let Some(g) = self.pmd_lock(pt, address) else {
                return split;
            };
            let h = g.get();
            if !h.is_huge() {
                return split;
            }
            drop(g);
            if self.is_huge_zero_pmd(h) {
                // __split_huge_zero_page_pmd: PTEs of the 4 KiB zero page.
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
                // A file THP's PMD is cleared (huge_file), not split.
                Some(folio) if !page_anon(folio) => {
                    split |= self.split_file_pmd(cpu, pt, mm.rss, address, folio);
                }
                // Under the PMD lock the entry is checked to map this folio again: a folio
                // the entry maps is alive.
                Some(folio) => {
                    if let Some((haddr, old, ptl)) =
                        self.split_pmd_of_folio(cpu, pt, address, folio)
                    {
                        drop(ptl);
                        self.flush_split_pmd(cpu, pt, haddr, old);
                        split = true;
                    }
                }
                // No folio behind it (nothing to split but the entry).
                None => return self.__split_huge_pmd(cpu, pt, address, huge_to_pte) || split,
            }
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

    /// The huge translation `old` at `haddr` that a split replaced (by a table mapping the
    /// same frames) leaves every TLB.
    pub(crate) fn flush_split_pmd(&self, cpu: &CpuGuard<'_>, pt: &PgTable, haddr: u64, old: Pte) {
        if old.is_present() {
            let mut tlb = MmuGather::new(self, cpu, pt);
            tlb.record_huge(pt, haddr, old);
            tlb.finish();
        }
    }

    /// One PMD mapping of the large folio `folio`, at `a` in `pt`, replaced by a PTE table
    /// locked before it is published (`split_to_table_locked`, `__split_huge_pmd_locked`);
    /// the folio's PMD mapping and reference become one per page. Returns the entry's
    /// address, the huge value replaced and the table's lock; `None` if no huge entry
    /// there maps the folio.
    pub(crate) fn split_pmd_of_folio(
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
        folio.ref_add(HPAGE_PMD_NR as i32 - 1);
        let mut newly = 0;
        for i in 0..HPAGE_PMD_NR {
            if self.subpage(folio, i).inc_mapcount() == 1 {
                newly += 1;
            }
        }
        folio.add_nr_pages_mapped(newly);
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
            if pmd.is_present() && !self.is_huge_zero_pmd(pmd) && self.file_pmd_folio(pmd).is_none()
            {
                n += HPAGE_PMD_NR;
            }
            from = haddr + HPAGE_PMD_SIZE;
        }
        n
    }

    /// The huge entries' invariants in `mm`: each lies inside one VMA that allows anonymous
    /// memory, maps the head of a large anonymous folio of that VMA's `anon_vma` chain at
    /// the right index, whose entire mapcount counts it (PTEs elsewhere may map its pages
    /// too: another process's split); one deposited table per huge entry.
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
        let (mut nr, mut file_pmds) = (0, 0);
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
            if !page_anon(folio) {
                self.check_file_pmd(v, haddr, pmd, folio)?;
                file_pmds += 1;
                continue;
            }
            if folio.folio_order() != HPAGE_PMD_ORDER || folio.refcount() < folio.entire_mapcount()
            {
                return Err(format!(
                    "huge PMD at {haddr:#x}: folio order {} refcount {} entire mapcount {}",
                    folio.folio_order(),
                    folio.refcount(),
                    folio.entire_mapcount()
                ));
            }
            if folio.entire_mapcount() < 1
                || folio.folio_mapcount() < folio.entire_mapcount()
                || folio.nr_pages_mapped() < 0
                || folio.nr_pages_mapped() as u64 > HPAGE_PMD_NR
            {
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
        // One deposited table per huge entry but file THPs'.
        if nr - file_pmds != self.deposited_tables(&mm.pt) {
            return Err(format!(
                "{nr} huge PMDs ({file_pmds} of file THPs) but {} deposited page tables",
                self.deposited_tables(&mm.pt)
            ));
        }
        Ok(nr)
    }
}
