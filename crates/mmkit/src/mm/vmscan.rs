//! Page reclaim (`mm/vmscan.c`): `shrink_node` over the LRU lists with `get_scan_count`'s
//! anon/file balance (`vm.swappiness`, default 60), `shrink_active_list` (deactivation when
//! `inactive_is_low`, with Linux's `inactive_ratio` = √(10 × GiB)), `shrink_inactive_list`
//! and `shrink_folio_list` with `folio_check_references`' decisions (activate, keep,
//! reclaim), culling mlocked pages to the unevictable list, swap-out of anonymous pages
//! (`add_to_swap`, `try_to_unmap` with swap entries, `swap_writepage`), writeback of dirty file
//! pages (`pageout`) and `__remove_mapping`; direct reclaim (`try_to_free_pages`, priority 12 → 0
//! until `SWAP_CLUSTER_MAX` pages are freed) and kswapd's `balance_pgdat` (until every zone of
//! the node is above its high watermark). Reclaimable slab goes back through `cache_reap`.

use crate::addr::{int_sqrt, Pfn};
use crate::cpu::CpuGuard;
use crate::gfp::Gfp;
use crate::mm::mm_types::VmFlags;
use crate::mm::mmzone::{Wmark, ZoneType, MAX_NR_ZONES};
use crate::mm::page::{Page, PageFlags};
use crate::mm::rmap::page_anon;
use crate::mm::swap::{
    page_is_file_lru, LRU_ACTIVE_ANON, LRU_ACTIVE_FILE, LRU_INACTIVE_ANON, LRU_INACTIVE_FILE,
    PGLAZYFREED,
};
use crate::mm::swap_state::PG_SWAPCACHE;
use crate::mm::vmstat::{index_of, VM_EVENT_NAMES};
use crate::Kernel;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

/// `DEF_PRIORITY`: scan `size >> priority` pages per pass.
pub const DEF_PRIORITY: u32 = 12;
/// `SWAP_CLUSTER_MAX`.
pub const SWAP_CLUSTER_MAX: u64 = 32;

macro_rules! ev {
    ($name:ident, $s:expr) => {
        #[doc = concat!("`", $s, "`.")]
        pub const $name: usize = index_of(VM_EVENT_NAMES, $s);
    };
}
ev!(PGSCAN_KSWAPD, "pgscan_kswapd");
ev!(PGSCAN_DIRECT, "pgscan_direct");
ev!(PGSTEAL_KSWAPD, "pgsteal_kswapd");
ev!(PGSTEAL_DIRECT, "pgsteal_direct");
ev!(PGACTIVATE, "pgactivate");
ev!(PGDEACTIVATE, "pgdeactivate");
ev!(PGREFILL, "pgrefill");
ev!(ALLOCSTALL_NORMAL, "allocstall_normal");
ev!(PAGEOUTRUN, "pageoutrun");
ev!(KSWAPD_LOW_WMARK_HIT_QUICKLY, "kswapd_low_wmark_hit_quickly");
ev!(
    KSWAPD_HIGH_WMARK_HIT_QUICKLY,
    "kswapd_high_wmark_hit_quickly"
);
ev!(PGSTEAL_ANON, "pgsteal_anon");
ev!(PGSTEAL_FILE, "pgsteal_file");

/// `struct scan_control`.
#[derive(Clone, Debug)]
pub struct ScanControl {
    /// Stop once this many pages are reclaimed.
    pub nr_to_reclaim: u64,
    /// Current priority (scan `size >> priority`).
    pub priority: u32,
    /// Anonymous pages may be swapped.
    pub may_swap: bool,
    /// Dirty file pages may be written back.
    pub may_writepage: bool,
    /// Pages scanned so far.
    pub nr_scanned: u64,
    /// Pages reclaimed so far.
    pub nr_reclaimed: u64,
    /// Running as kswapd (counters).
    pub kswapd: bool,
}

impl ScanControl {
    fn new(nr_to_reclaim: u64, kswapd: bool) -> Self {
        Self {
            nr_to_reclaim,
            priority: DEF_PRIORITY,
            may_swap: true,
            may_writepage: true,
            nr_scanned: 0,
            nr_reclaimed: 0,
            kswapd,
        }
    }
}

/// What `shrink_folio_list` decided for a page.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Verdict {
    Activate,
    Keep,
    Reclaim,
}

/// What became of a page `shrink_folio_list` looked at.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Shrunk {
    Freed,
    Activated,
    Kept,
}

impl Kernel {
    /// `vm.swappiness`.
    pub fn swappiness(&self) -> u64 {
        self.swappiness.load(Relaxed)
    }

    /// Set `vm.swappiness` (0..=200).
    pub fn set_swappiness(&self, v: u64) -> Result<(), crate::Errno> {
        if v > 200 {
            return Err(crate::Errno::EINVAL);
        }
        self.swappiness.store(v, Relaxed);
        Ok(())
    }

    fn count(&self, cpu: &CpuGuard<'_>, item: usize, n: u64) {
        if n > 0 {
            cpu.state().vmstat.count(item, n);
        }
    }

    /// `isolate_lru_folios`: take up to `nr` pages from the cold end of list `l`, each with a
    /// reference and off the list.
    fn isolate_lru_pages(&self, nid: usize, l: usize, nr: u64) -> Vec<Pfn> {
        let mut out = Vec::new();
        let mut lru = self.nodes[nid].lru.lock();
        let mut skipped = Vec::new();
        while (out.len() as u64) < nr {
            let Some(pfn) = lru.lists[l].last() else {
                break;
            };
            let page = self.mem_map.page(pfn);
            self.lru_del_locked(&mut lru, page);
            if page.try_get() {
                out.push(pfn);
            } else {
                // Being freed by its last holder right now: leave it for the free path.
                skipped.push(pfn);
            }
        }
        for pfn in skipped {
            self.lru_add_locked(&mut lru, self.mem_map.page(pfn));
        }
        out
    }

    /// `move_folios_to_lru`: put isolated pages back on the lists their flags name and drop
    /// the isolation reference (a page nobody else holds is freed instead).
    fn putback_lru_pages(&self, cpu: &CpuGuard<'_>, pfns: &[Pfn]) {
        for &pfn in pfns {
            let page = self.mem_map.page(pfn);
            {
                let mut lru = self.nodes[page.nid()].lru.lock();
                if page.refcount() > 1 && !page.test(PageFlags::LRU) {
                    self.lru_add_locked(&mut lru, page);
                }
            }
            self.folio_put(cpu, page);
        }
    }

    /// `inactive_is_low`: the inactive list is smaller than the active one divided by
    /// `inactive_ratio`.
    pub fn inactive_is_low(&self, nid: usize, file: bool) -> bool {
        let (i, a) = if file {
            (LRU_INACTIVE_FILE, LRU_ACTIVE_FILE)
        } else {
            (LRU_INACTIVE_ANON, LRU_ACTIVE_ANON)
        };
        let lru = self.nodes[nid].lru.lock();
        let (inactive, active) = (lru.nr[i], lru.nr[a]);
        let gb = (inactive + active) >> (30 - crate::PAGE_SHIFT);
        let ratio = if gb > 0 { int_sqrt(10 * gb) } else { 1 };
        inactive * ratio < active
    }

    /// `shrink_active_list`: move up to `nr` pages from the active list to the inactive one;
    /// their Accessed bits are harvested (and cleared) on the way, and referenced pages of
    /// executable file mappings stay active.
    fn shrink_active_list(&self, cpu: &CpuGuard<'_>, nid: usize, file: bool, nr: u64) {
        let l = if file {
            LRU_ACTIVE_FILE
        } else {
            LRU_ACTIVE_ANON
        };
        let pages = self.isolate_lru_pages(nid, l, nr);
        self.count(cpu, PGREFILL, pages.len() as u64);
        let mut deactivated = 0;
        for &pfn in &pages {
            let page = self.mem_map.page(pfn);
            let (refs, vm_flags) = self.page_referenced(cpu, page);
            if vm_flags.contains(VmFlags::VM_LOCKED) {
                page.set(PageFlags::UNEVICTABLE);
                continue;
            }
            // Referenced executable file pages get another trip around the active list:
            // code is easy to evict and expensive to fault back, and a burst of streaming
            // I/O should not push it out.
            if refs > 0 && vm_flags.contains(VmFlags::VM_EXEC) && page_is_file_lru(page) {
                continue;
            }
            page.clear(PageFlags::ACTIVE);
            deactivated += 1;
        }
        self.count(cpu, PGDEACTIVATE, deactivated);
        self.putback_lru_pages(cpu, &pages);
    }

    /// `folio_check_references`.
    fn page_check_references(&self, cpu: &CpuGuard<'_>, page: &Page) -> Verdict {
        let (refs, vm_flags) = self.page_referenced(cpu, page);
        if vm_flags.contains(VmFlags::VM_LOCKED) {
            page.set(PageFlags::UNEVICTABLE);
            return Verdict::Keep;
        }
        let referenced_page = page.test(PageFlags::REFERENCED);
        page.clear(PageFlags::REFERENCED);
        if refs > 0 {
            if referenced_page || refs > 1 {
                return Verdict::Activate;
            }
            // Activate file-backed executable pages after the first use.
            if vm_flags.contains(VmFlags::VM_EXEC) && page_is_file_lru(page) {
                return Verdict::Activate;
            }
            // Referenced once through a PTE: give it another trip around the inactive list.
            page.set(PageFlags::REFERENCED);
            return Verdict::Keep;
        }
        Verdict::Reclaim
    }

    /// `shrink_folio_list`: decide and act on each isolated page; returns how many were
    /// freed. Survivors keep their isolation reference for the putback.
    fn shrink_folio_list(&self, cpu: &CpuGuard<'_>, pfns: &mut Vec<Pfn>, sc: &ScanControl) -> u64 {
        let mut reclaimed = 0;
        let mut activated = 0;
        let mut keep = Vec::new();
        let (mut anon_freed, mut file_freed) = (0u64, 0u64);
        let mut work = core::mem::take(pfns);
        let mut i = 0;
        while i < work.len() {
            let pfn = work[i];
            i += 1;
            let page = self.mem_map.page(pfn);
            // folio_trylock: a page locked elsewhere (a fault taking it out of the swap
            // cache, say) is kept for a later round.
            if !page.trylock() {
                keep.push(pfn);
                continue;
            }
            if page.folio_test_large() {
                // folio_check_references first, on the folio whole: the Accessed bits of
                // every PMD and PTE mapping it, and a VM_LOCKED mapping keeps it (a PMD
                // mapping, which the split below would clear, counts like any other).
                match self.page_check_references(cpu, page) {
                    Verdict::Reclaim => {}
                    v => {
                        page.unlock();
                        if v == Verdict::Activate {
                            page.set(PageFlags::ACTIVE);
                            activated += 1;
                        }
                        keep.push(pfn);
                        continue;
                    }
                }
                // split_folio_to_list: a large folio is split before it is reclaimed (no
                // THP_SWAP); its other pages join this list, isolated. One that cannot be
                // split now (another reference is held) goes back active.
                if self
                    .split_folio_to_list(cpu, page, Some(&mut work))
                    .is_err()
                {
                    page.unlock();
                    page.set(PageFlags::ACTIVE);
                    activated += 1;
                    keep.push(pfn);
                    continue;
                }
            }
            let outcome = self.shrink_locked_page(cpu, page, sc);
            page.unlock();
            match outcome {
                Shrunk::Freed => {
                    reclaimed += 1;
                    if page_is_file_lru(page) {
                        file_freed += 1;
                    } else {
                        anon_freed += 1;
                    }
                    // The isolation reference was the last: the page is free.
                    self.__free_pages(cpu, page, 0);
                }
                Shrunk::Activated => {
                    activated += 1;
                    keep.push(pfn);
                }
                Shrunk::Kept => keep.push(pfn),
            }
        }
        self.count(cpu, PGACTIVATE, activated);
        self.count(cpu, PGSTEAL_ANON, anon_freed);
        self.count(cpu, PGSTEAL_FILE, file_freed);
        *pfns = keep;
        reclaimed
    }

    /// `shrink_folio_list`'s step for one locked page: check its references, then try to
    /// reclaim it.
    fn shrink_locked_page(&self, cpu: &CpuGuard<'_>, page: &Page, sc: &ScanControl) -> Shrunk {
        let verdict = if page.mapcount() > 0 {
            self.page_check_references(cpu, page)
        } else {
            // Unmapped: only PG_referenced speaks for it.
            let r = page.test(PageFlags::REFERENCED);
            page.clear(PageFlags::REFERENCED);
            if r && page.test(PageFlags::ACTIVE) {
                Verdict::Activate
            } else {
                Verdict::Reclaim
            }
        };
        match verdict {
            Verdict::Activate => {
                page.set(PageFlags::ACTIVE);
                Shrunk::Activated
            }
            Verdict::Keep => Shrunk::Kept,
            Verdict::Reclaim if self.reclaim_one(cpu, page, sc) => Shrunk::Freed,
            Verdict::Reclaim if page.mapcount() > 0 && !page.test(PageFlags::UNEVICTABLE) => {
                page.set(PageFlags::ACTIVE);
                Shrunk::Activated
            }
            Verdict::Reclaim => Shrunk::Kept,
        }
    }

    /// Unmap, clean and detach one page (locked by the caller) so that the caller's
    /// reference is its last.
    fn reclaim_one(&self, cpu: &CpuGuard<'_>, page: &Page, sc: &ScanControl) -> bool {
        if page_anon(page)
            && page.mapcount() == 0
            && !page.test(PG_SWAPCACHE)
            && page.refcount() == 1
        {
            // Anonymous memory nothing maps or holds any more (a page of a split folio
            // whose mapping went while it waited on the deferred split queue): there is
            // nothing to write, only our reference to drop.
            return true;
        }
        if page_anon(page) && !page.test(PageFlags::SWAPBACKED) {
            // MADV_FREE: a clean lazily freed page is dropped as it is; one written again
            // has become swap-backed and is kept (reclaimed as anonymous memory later).
            let unmapped = page.mapcount() == 0 || self.try_to_unmap(cpu, page, None);
            if !unmapped || page.test(PageFlags::SWAPBACKED) || page.refcount() != 1 {
                return false;
            }
            self.count(cpu, PGLAZYFREED, 1);
            return true;
        }
        let anon = page_anon(page) || page.test(PageFlags::SWAPBACKED);
        if anon
            && !page.test(PG_SWAPCACHE)
            && (!sc.may_swap || self.add_to_swap(cpu, page).is_none())
        {
            return false;
        }
        if page.mapcount() > 0 {
            let swap = if anon {
                self.page_swap_entry(page)
            } else {
                None
            };
            if !self.try_to_unmap(cpu, page, swap) {
                return false;
            }
        }
        if page.test(PageFlags::DIRTY) {
            if !sc.may_writepage {
                return false;
            }
            let ok = if anon {
                self.swap_writepage(cpu, page).is_ok()
            } else {
                match self.inode_of_page(page) {
                    Some(inode) => self.writeback_one(cpu, &inode, page).is_ok(),
                    None => false,
                }
            };
            if !ok {
                return false;
            }
        }
        // __remove_mapping: only the cache's reference and ours may remain.
        if page.refcount() != 2 || page.mapcount() != 0 || page.test(PageFlags::DIRTY) {
            return false;
        }
        if anon {
            self.delete_from_swap_cache(cpu, page);
            true
        } else {
            self.remove_from_page_cache(cpu, page)
        }
    }

    /// `shrink_inactive_list`: isolate up to `nr` pages, reclaim what can go, put back the
    /// rest.
    fn shrink_inactive_list(
        &self,
        cpu: &CpuGuard<'_>,
        nid: usize,
        file: bool,
        nr: u64,
        sc: &mut ScanControl,
    ) {
        let l = if file {
            LRU_INACTIVE_FILE
        } else {
            LRU_INACTIVE_ANON
        };
        let mut pages = self.isolate_lru_pages(nid, l, nr);
        let scanned = pages.len() as u64;
        sc.nr_scanned += scanned;
        self.count(
            cpu,
            if sc.kswapd {
                PGSCAN_KSWAPD
            } else {
                PGSCAN_DIRECT
            },
            scanned,
        );
        let freed = self.shrink_folio_list(cpu, &mut pages, sc);
        sc.nr_reclaimed += freed;
        self.count(
            cpu,
            if sc.kswapd {
                PGSTEAL_KSWAPD
            } else {
                PGSTEAL_DIRECT
            },
            freed,
        );
        self.putback_lru_pages(cpu, &pages);
    }

    /// `get_scan_count`: how many pages of each evictable list to scan at this priority.
    /// File only without swap (or swappiness 0 and file left); anon only when file pages
    /// are too few to matter; otherwise anon : file = swappiness : 200 − swappiness.
    fn get_scan_count(&self, nid: usize, sc: &ScanControl) -> [u64; 4] {
        let sizes: [u64; 4] = {
            let lru = self.nodes[nid].lru.lock();
            [lru.nr[0], lru.nr[1], lru.nr[2], lru.nr[3]]
        };
        let scan = |s: u64| {
            let x = s >> sc.priority;
            if x == 0 && sc.priority == 0 {
                s
            } else {
                x.max((s > 0 && sc.priority < 3) as u64)
            }
        };
        let swappiness = self.swappiness();
        let can_swap = sc.may_swap && self.swap_available();
        let file_pages = sizes[2] + sizes[3];
        let free: u64 = self.nodes[nid]
            .zones
            .iter()
            .map(|z| z.free_pages().max(0) as u64)
            .sum();
        let high: u64 = self.nodes[nid]
            .zones
            .iter()
            .map(|z| z.wmark(Wmark::High))
            .sum();
        let (ap, fp) = if !can_swap || (swappiness == 0 && file_pages > 0) {
            (0, 1)
        } else if file_pages + free <= high {
            (1, 0)
        } else {
            (swappiness, 200 - swappiness)
        };
        let denom = (ap + fp).max(1);
        let mut out = [0; 4];
        for (l, o) in out.iter_mut().enumerate() {
            let share = if l < 2 { ap } else { fp };
            *o = if share == 0 {
                0
            } else {
                (scan(sizes[l]) * share).div_ceil(denom)
            };
        }
        out
    }

    /// `shrink_node`: one pass over the node's lists at `sc.priority`, in batches of
    /// `SWAP_CLUSTER_MAX`, deactivating when an inactive list runs low; then reap slab.
    pub fn shrink_node(&self, cpu: &CpuGuard<'_>, nid: usize, sc: &mut ScanControl) {
        let targets = self.get_scan_count(nid, sc);
        let mut nr = targets;
        let mut scan_adjusted = false;
        while nr[LRU_INACTIVE_ANON] + nr[LRU_ACTIVE_FILE] + nr[LRU_INACTIVE_FILE] > 0 {
            for l in [
                LRU_INACTIVE_ANON,
                LRU_ACTIVE_ANON,
                LRU_INACTIVE_FILE,
                LRU_ACTIVE_FILE,
            ] {
                let n = nr[l].min(SWAP_CLUSTER_MAX);
                if n == 0 {
                    continue;
                }
                nr[l] -= n;
                let file = l >= LRU_INACTIVE_FILE;
                if l == LRU_ACTIVE_ANON || l == LRU_ACTIVE_FILE {
                    if self.inactive_is_low(nid, file) {
                        self.shrink_active_list(cpu, nid, file, n);
                    }
                } else {
                    self.shrink_inactive_list(cpu, nid, file, n, sc);
                }
            }
            if sc.nr_reclaimed < sc.nr_to_reclaim || scan_adjusted {
                continue;
            }
            if !sc.kswapd {
                break;
            }
            // shrink_lruvec for kswapd: it reclaims at least what was asked, then keeps
            // anon and file scanned in the proportion get_scan_count set — it stops the
            // list type it has scanned less of and cuts the other by the same share —
            // instead of finishing the whole pass (which at a low priority frees
            // thousands of pages past the high watermark at once). With one type only,
            // it stops.
            let left = |lo: usize| nr[lo] + nr[lo + 1];
            let (nr_anon, nr_file) = (left(LRU_INACTIVE_ANON), left(LRU_INACTIVE_FILE));
            if nr_anon == 0 || nr_file == 0 {
                break;
            }
            let (stop, other, stop_left) = if nr_file > nr_anon {
                (LRU_INACTIVE_ANON, LRU_INACTIVE_FILE, nr_anon)
            } else {
                (LRU_INACTIVE_FILE, LRU_INACTIVE_ANON, nr_file)
            };
            let stop_target = targets[stop] + targets[stop + 1] + 1;
            let percentage = stop_left * 100 / stop_target;
            nr[stop] = 0;
            nr[stop + 1] = 0;
            for l in [other, other + 1] {
                let scanned = targets[l] - nr[l];
                let keep = targets[l] * (100 - percentage) / 100;
                nr[l] = keep - scanned.min(keep);
            }
            scan_adjusted = true;
        }
        // The anon inactive list is refilled even when only file was scanned, as Linux's
        // shrink_node does for aging.
        if self.inactive_is_low(nid, false) && self.swap_available() {
            self.shrink_active_list(cpu, nid, false, SWAP_CLUSTER_MAX);
        }
        // shrink_slab: the shrinkers (the deferred split queue) and the slab caches.
        self.shrink_deferred_split(cpu, nid, sc.priority);
        self.cache_reap(cpu);
    }

    /// `try_to_free_pages`: direct reclaim for an allocation that failed — every node of the
    /// allocating CPU's zonelist, priority 12 down to 0, until `SWAP_CLUSTER_MAX` pages are
    /// freed. Counts `allocstall`. Returns the pages freed.
    pub fn try_to_free_pages(&self, cpu: &CpuGuard<'_>, gfp: Gfp) -> u64 {
        self.count(cpu, ALLOCSTALL_NORMAL, 1);
        self.lru_add_drain(cpu);
        let mut sc = ScanControl::new(SWAP_CLUSTER_MAX, false);
        sc.may_writepage = gfp.contains(Gfp::__GFP_IO);
        sc.may_swap = gfp.contains(Gfp::__GFP_IO);
        let nodes: Vec<usize> = (0..self.nodes.len()).collect();
        loop {
            for &nid in &nodes {
                self.shrink_node(cpu, nid, &mut sc);
                if sc.nr_reclaimed >= sc.nr_to_reclaim {
                    return sc.nr_reclaimed;
                }
            }
            if sc.priority == 0 {
                return sc.nr_reclaimed;
            }
            sc.priority -= 1;
        }
    }

    /// `pgdat_balanced`: a zone of `nid` that allocations limited to zones up to `highest`
    /// can use is above `mark` plus its reserve against them — one is enough, as in Linux: those allocations fall back to
    /// it (a node with no such zone counts as balanced).
    pub fn pgdat_balanced(&self, nid: usize, mark: Wmark, highest: ZoneType) -> bool {
        let mut eligible = self.nodes[nid]
            .zones
            .iter()
            .filter(|z| z.zone_type <= highest && z.managed() > 0)
            .peekable();
        // zone_watermark_ok_safe(zone, 0, mark, highest): the zone's reserve against
        // allocations that could have used a higher zone counts too (a DMA zone nobody may
        // allocate from does not balance a node for them).
        let reserve =
            |z: &crate::mm::mmzone::Zone| z.lowmem_reserve[highest as usize].load(Relaxed);
        eligible.peek().is_none()
            || eligible.any(|z| z.free_pages().max(0) as u64 > z.wmark(mark) + reserve(z))
    }

    /// `wakeup_kswapd`: ask node `nid`'s kswapd to run for allocations that may use zones up
    /// to `highest` (the allocator calls this when they fall below their low watermark).
    /// Nothing happens when such a zone is still above its high watermark.
    pub fn wakeup_kswapd(&self, nid: usize, highest: ZoneType) {
        let n = &self.nodes[nid];
        let cur = n.kswapd_highest_zoneidx.load(Relaxed);
        if cur == MAX_NR_ZONES || cur < highest as usize {
            n.kswapd_highest_zoneidx.store(highest as usize, Relaxed);
        }
        if self.pgdat_balanced(nid, Wmark::High, highest) {
            return;
        }
        if !n.kswapd_wait.swap(true, Relaxed) {
            n.kswapd_wakeups.fetch_add(1, Relaxed);
            // The flag was clear: kswapd may be asleep (it clears the flag as a run starts,
            // so a wake-up during a run is seen when that run ends, without this).
            self.platform().wake_kswapd(nid);
        }
    }

    /// Whether node `nid`'s kswapd has been woken and not yet run.
    pub fn kswapd_woken(&self, nid: usize) -> bool {
        self.nodes[nid].kswapd_wait.load(Relaxed)
    }

    /// Times kswapd of `nid` was woken.
    pub fn kswapd_wakeups(&self, nid: usize) -> u64 {
        self.nodes[nid].kswapd_wakeups.load(Relaxed)
    }

    /// One run of node `nid`'s kswapd (`kswapd` → `balance_pgdat`): reclaim at falling
    /// priority until a zone the wakers could use is above its high watermark
    /// (`pgdat_balanced`), then go back to sleep. Returns
    /// the pages reclaimed. The simulator calls this from the node's kswapd thread when woken;
    /// tests call it to step reclaim deterministically.
    pub fn balance_pgdat(&self, cpu: &CpuGuard<'_>, nid: usize) -> u64 {
        let n = &self.nodes[nid];
        n.kswapd_wait.store(false, Relaxed);
        // kswapd_highest_zoneidx: what the wakers asked for (all zones if none did).
        let highest = match n.kswapd_highest_zoneidx.swap(MAX_NR_ZONES, Relaxed) {
            MAX_NR_ZONES => ZoneType::Device,
            i => ZoneType::from_index(i),
        };
        if self.pgdat_balanced(nid, Wmark::High, highest) {
            self.count(cpu, KSWAPD_HIGH_WMARK_HIT_QUICKLY, 1);
            return 0;
        }
        self.count(cpu, PAGEOUTRUN, 1);
        self.lru_add_drain(cpu);
        let mut total = 0;
        let mut sc = ScanControl::new(SWAP_CLUSTER_MAX, true);
        loop {
            let need: u64 = self.nodes[nid]
                .zones
                .iter()
                .filter(|z| z.zone_type <= highest && z.managed() > 0)
                .map(|z| {
                    z.wmark(Wmark::High)
                        .saturating_sub(z.free_pages().max(0) as u64)
                })
                .sum();
            sc.nr_to_reclaim = need.max(SWAP_CLUSTER_MAX);
            sc.nr_reclaimed = 0;
            self.shrink_node(cpu, nid, &mut sc);
            total += sc.nr_reclaimed;
            if self.pgdat_balanced(nid, Wmark::High, highest) {
                break;
            }
            if sc.priority == 0 {
                break;
            }
            if sc.nr_reclaimed < sc.nr_to_reclaim {
                sc.priority -= 1;
            }
        }
        if self.pgdat_balanced(nid, Wmark::Low, highest) && total == 0 {
            self.count(cpu, KSWAPD_LOW_WMARK_HIT_QUICKLY, 1);
        }
        total
    }

    /// `/proc/sys/vm/drop_caches`: 1 drops clean page cache, 2 reclaimable slab, 3 both.
    pub fn drop_caches(&self, cpu: &CpuGuard<'_>, what: u32) -> Result<u64, crate::Errno> {
        if !(1..=3).contains(&what) {
            return Err(crate::Errno::EINVAL);
        }
        let mut n = 0;
        if what & 1 != 0 {
            n += self.drop_pagecache(cpu);
            self.count(cpu, index_of(VM_EVENT_NAMES, "drop_pagecache"), 1);
        }
        if what & 2 != 0 {
            // drop_slab: every shrinker until it frees little, then the caches.
            self.drop_deferred_split(cpu);
            self.cache_reap(cpu);
            self.count(cpu, index_of(VM_EVENT_NAMES, "drop_slab"), 1);
        }
        Ok(n)
    }
}
