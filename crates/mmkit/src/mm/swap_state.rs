//! The swap cache and swap I/O (`mm/swap_state.c`, `mm/page_io.c`): `add_to_swap` (a slot
//! and a swap-cache entry for a page reclaim is about to unmap), `delete_from_swap_cache`,
//! `swap_writepage`/`swap_read_folio` on the swap file (`pswpout`/`pswpin`),
//! `swap_cluster_readahead` (the faulting slot and its in-use neighbours in the aligned
//! `1 << page_cluster` window), `folio_free_swap`, `free_swap_and_cache`.
//!
//! A swap-cache page has `PG_swapcache` (Linux's `PG_owner_priv_1`), its entry packed in
//! `page->private`, and one reference held by the cache; `NR_SWAPCACHE` counts them.

use crate::addr::PAGE_SIZE;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::GFP_HIGHUSER_MOVABLE;
use crate::mm::page::{Page, PageFlags};
use crate::mm::swapfile::SwpEntry;
use crate::mm::vmstat::{index_of, NODE_STAT_NAMES, VM_EVENT_NAMES};
use crate::Kernel;

pub use crate::mm::page::PG_SWAPCACHE;
/// `NR_SWAPCACHE`.
pub const NR_SWAPCACHE: usize = index_of(NODE_STAT_NAMES, "nr_swapcached");
/// `PSWPIN`.
pub const PSWPIN: usize = index_of(VM_EVENT_NAMES, "pswpin");
/// `PSWPOUT`.
pub const PSWPOUT: usize = index_of(VM_EVENT_NAMES, "pswpout");
/// `page_cluster` (`vm.page-cluster`): swap readahead reads `1 << 3` slots.
pub const PAGE_CLUSTER: u32 = 3;

impl Kernel {
    /// The swap entry of a swap-cache page.
    pub fn page_swap_entry(&self, page: &Page) -> Option<SwpEntry> {
        page.test(PG_SWAPCACHE)
            .then(|| SwpEntry::unpack(page.private()))
    }

    /// Put `page` in the swap cache at slot `e`, which the caller has claimed
    /// (`SWAP_HAS_CACHE`: a new slot from `get_swap_page`, or `swapcache_prepare`).
    fn cache_insert(&self, cpu: &CpuGuard<'_>, e: SwpEntry, page: &Page) -> bool {
        let mut st = self.swap.lock();
        let Some(a) = st.areas.get_mut(e.ty).and_then(|a| a.as_mut()) else {
            return false;
        };
        if a.cache.contains_key(e.offset) {
            return false;
        }
        a.cache.insert(e.offset, self.page_to_pfn(page));
        page.get();
        page.set(PG_SWAPCACHE | PageFlags::SWAPBACKED);
        page.set_private(e.pack());
        self.mod_node_page_state(cpu, page, NR_SWAPCACHE, 1);
        true
    }

    /// `add_to_swap`: give an anonymous page a slot and put it in the swap cache, dirty (it
    /// must be written before it can be dropped). `None` when swap is full or absent.
    pub(crate) fn add_to_swap(&self, cpu: &CpuGuard<'_>, page: &Page) -> Option<SwpEntry> {
        let e = self.get_swap_page()?;
        if !self.cache_insert(cpu, e, page) {
            self.swap_clear_cache(e);
            return None;
        }
        page.set(PageFlags::DIRTY);
        Some(e)
    }

    /// `delete_from_swap_cache`: the page leaves the swap cache, which drops its reference
    /// and its claim on the slot.
    pub(crate) fn delete_from_swap_cache(&self, cpu: &CpuGuard<'_>, page: &Page) {
        let Some(e) = self.page_swap_entry(page) else {
            return;
        };
        {
            let mut st = self.swap.lock();
            if let Some(a) = st.areas.get_mut(e.ty).and_then(|a| a.as_mut()) {
                a.cache.remove(e.offset);
            }
        }
        page.clear(PG_SWAPCACHE);
        page.set_private(0);
        self.mod_node_page_state(cpu, page, NR_SWAPCACHE, -1);
        self.swap_clear_cache(e);
        self.__free_pages(cpu, page, 0);
    }

    /// `swap_cache_get_folio`: the cached page of a slot, with a reference.
    pub(crate) fn lookup_swap_cache(&self, e: SwpEntry) -> Option<&Page> {
        let st = self.swap.lock();
        let pfn = st.areas.get(e.ty)?.as_ref()?.cache.get(e.offset)?;
        let p = self.mem_map.page(pfn);
        p.get();
        Some(p)
    }

    /// `swap_writepage`: write the page to its slot and mark it clean.
    pub(crate) fn swap_writepage(&self, cpu: &CpuGuard<'_>, page: &Page) -> Result<(), Errno> {
        let e = self.page_swap_entry(page).ok_or(Errno::EINVAL)?;
        let file = {
            let st = self.swap.lock();
            st.areas
                .get(e.ty)
                .and_then(|a| a.as_ref())
                .map(|a| a.file.clone())
        }
        .ok_or(Errno::ENODEV)?;
        let mut buf = [0u8; PAGE_SIZE as usize];
        self.phys_read(self.page_to_pfn(page).phys(), &mut buf);
        if file.write_at(e.offset * PAGE_SIZE, &buf)? != buf.len() {
            return Err(Errno::EIO);
        }
        page.clear(PageFlags::DIRTY);
        cpu.state().vmstat.count(PSWPOUT, 1);
        Ok(())
    }

    /// `__read_swap_cache_async` + `swap_read_folio`: claim slot `e` (`swapcache_prepare`),
    /// read it into a new page and add that to the swap cache (and the LRU). The page comes
    /// back with the caller's reference (so reclaim cannot take it back before it is used).
    /// `EEXIST` when the slot has a cache page or one is being read, `ENOENT` when it is no
    /// longer in use; a failed read or allocation gives the claim back.
    fn swap_read_new(&self, cpu: &CpuGuard<'_>, e: SwpEntry) -> Result<&Page, Errno> {
        self.swapcache_prepare(e)?;
        let file = {
            let st = self.swap.lock();
            st.areas
                .get(e.ty)
                .and_then(|a| a.as_ref())
                .map(|a| a.file.clone())
        };
        let read = |file: Option<alloc::sync::Arc<dyn crate::platform::FileData>>| {
            let file = file.ok_or(Errno::ENODEV)?;
            let page = self
                .alloc_pages(cpu, GFP_HIGHUSER_MOVABLE, 0)
                .ok_or(Errno::ENOMEM)?;
            let mut buf = [0u8; PAGE_SIZE as usize];
            if file.read_at(e.offset * PAGE_SIZE, &mut buf).ok() != Some(buf.len()) {
                self.__free_pages(cpu, page, 0);
                return Err(Errno::EIO);
            }
            self.phys_write(self.page_to_pfn(page).phys(), &buf);
            page.set(PageFlags::UPTODATE);
            cpu.state().vmstat.count(PSWPIN, 1);
            if !self.cache_insert(cpu, e, page) {
                self.__free_pages(cpu, page, 0);
                return Err(Errno::EEXIST);
            }
            Ok(page)
        };
        match read(file) {
            Ok(page) => {
                self.lru_cache_add(cpu, page);
                Ok(page)
            }
            Err(err) => {
                self.swap_clear_cache(e);
                Err(err)
            }
        }
    }

    /// `read_swap_cache_async`: the page of slot `e` in the swap cache, read into it if it is
    /// not there yet; with a reference. `None` when the slot is no longer in use, is being
    /// read by someone else right now (it is on its way into the cache: unlike Linux this
    /// does not wait for it), or the page cannot be allocated or read.
    pub(crate) fn read_swap_cache_async(&self, cpu: &CpuGuard<'_>, e: SwpEntry) -> Option<&Page> {
        if let Some(p) = self.lookup_swap_cache(e) {
            return Some(p);
        }
        self.swap_read_new(cpu, e).ok()
    }

    /// `swap_cluster_readahead`: read slot `e` and the in-use, uncached slots of its aligned
    /// window into the swap cache; returns the page of `e` with a reference (and whether it
    /// had to be read: a major fault).
    pub(crate) fn swapin_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        e: SwpEntry,
    ) -> Result<(&Page, bool), Errno> {
        // The slot's page is cached, or we read it — or someone else is reading it right
        // now: wait for that to land in the cache (swapcache_prepare's -EEXIST loop).
        let p = loop {
            if let Some(p) = self.lookup_swap_cache(e) {
                return Ok((p, false));
            }
            match self.swap_read_new(cpu, e) {
                Ok(p) => break p,
                Err(Errno::EEXIST) => crate::sync::relax(),
                Err(err) => return Err(err),
            }
        };
        let win = 1u64 << PAGE_CLUSTER;
        let start = e.offset & !(win - 1);
        for o in start..start + win {
            if o != e.offset && o != 0 {
                let n = SwpEntry {
                    ty: e.ty,
                    offset: o,
                };
                if let Ok(page) = self.swap_read_new(cpu, n) {
                    self.__free_pages(cpu, page, 0); // the cache keeps it
                }
            }
        }
        Ok((p, true))
    }

    /// `folio_free_swap`: drop a page's swap slot when no PTE refers to it any more (the page
    /// stays as plain anonymous memory). Returns whether it did. Under the page lock, taken
    /// with a trylock: reclaim holds it while it works on the page's swap entry.
    pub(crate) fn try_to_free_swap(&self, cpu: &CpuGuard<'_>, page: &Page) -> bool {
        if !page.trylock() {
            return false;
        }
        let freed = match self.page_swap_entry(page) {
            Some(e) if self.swap_count(e) == 0 => {
                self.delete_from_swap_cache(cpu, page);
                // The only copy of the bytes is the page now (folio_set_dirty).
                page.set(PageFlags::DIRTY);
                true
            }
            _ => false,
        };
        page.unlock();
        freed
    }

    /// `free_swap_and_cache`: a PTE holding `e` went away; when it was the slot's last
    /// reference, an unmapped swap-cache page for it leaves the swap cache too.
    pub(crate) fn free_swap_and_cache(&self, cpu: &CpuGuard<'_>, e: SwpEntry) {
        let (count, cache) = self.swap_free(e);
        if count == 0 && cache {
            if let Some(p) = self.lookup_swap_cache(e) {
                // __try_to_reclaim_swap(TTRS_UNMAPPED | TTRS_FULL): under the page lock, if
                // the page is still this slot's and unmapped (folio_mapped), whatever else
                // holds a reference. Other references (an LRU add batch's) keep the page,
                // not the slot. (Requiring none left a readahead page in the swap cache, its
                // slot taken, after its process had exited; seen while investigating a
                // swap-slot report of the mm_ops fuzzer.)
                if p.trylock() {
                    let idle = p.mapcount() == 0 && self.page_swap_entry(p) == Some(e);
                    if idle {
                        self.delete_from_swap_cache(cpu, p);
                    }
                    p.unlock();
                }
                self.__free_pages(cpu, p, 0);
            }
        }
    }
}
