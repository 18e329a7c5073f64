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

/// `PG_swapcache`.
pub const PG_SWAPCACHE: PageFlags = PageFlags::OWNER_PRIV_1;
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

    fn cache_insert(&self, cpu: &CpuGuard<'_>, e: SwpEntry, page: &Page) -> bool {
        let mut st = self.swap.lock();
        let Some(a) = st.areas.get_mut(e.ty).and_then(|a| a.as_mut()) else {
            return false;
        };
        if a.cache.contains_key(e.offset) {
            return false;
        }
        a.cache.insert(e.offset, self.page_to_pfn(page).0);
        a.swap_map[e.offset as usize] |= crate::mm::swapfile::SWAP_HAS_CACHE;
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
        self.phys_read(self.page_to_pfn(page).0 << 12, &mut buf);
        if file.write_at(e.offset * PAGE_SIZE, &buf)? != buf.len() {
            return Err(Errno::EIO);
        }
        page.clear(PageFlags::DIRTY);
        cpu.state().vmstat.count(PSWPOUT, 1);
        Ok(())
    }

    /// `swap_read_folio` of slot `e` into a new page added to the swap cache (and the LRU),
    /// returned with the caller's reference (so reclaim cannot take it back before it is
    /// used); `Ok(None)` if the slot got a cache page meanwhile or is no longer in use.
    fn swap_read_new(&self, cpu: &CpuGuard<'_>, e: SwpEntry) -> Result<Option<&Page>, Errno> {
        let file = {
            let st = self.swap.lock();
            let a = st
                .areas
                .get(e.ty)
                .and_then(|a| a.as_ref())
                .ok_or(Errno::ENODEV)?;
            let m = a.swap_map[e.offset as usize];
            if m == 0 || m == crate::mm::swapfile::SWAP_MAP_BAD || a.cache.contains_key(e.offset) {
                return Ok(None);
            }
            a.file.clone()
        };
        let page = self
            .alloc_pages(cpu, GFP_HIGHUSER_MOVABLE, 0)
            .ok_or(Errno::ENOMEM)?;
        let mut buf = [0u8; PAGE_SIZE as usize];
        if file.read_at(e.offset * PAGE_SIZE, &mut buf).ok() != Some(buf.len()) {
            self.__free_pages(cpu, page, 0);
            return Err(Errno::EIO);
        }
        self.phys_write(self.page_to_pfn(page).0 << 12, &buf);
        page.set(PageFlags::UPTODATE);
        cpu.state().vmstat.count(PSWPIN, 1);
        if !self.cache_insert(cpu, e, page) {
            self.__free_pages(cpu, page, 0);
            return Ok(None);
        }
        self.lru_cache_add(cpu, page);
        Ok(Some(page))
    }

    /// `swap_cluster_readahead`: read slot `e` and the in-use, uncached slots of its aligned
    /// window into the swap cache; returns the page of `e` with a reference (and whether it
    /// had to be read: a major fault).
    pub(crate) fn swapin_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        e: SwpEntry,
    ) -> Result<(&Page, bool), Errno> {
        if let Some(p) = self.lookup_swap_cache(e) {
            return Ok((p, false));
        }
        let win = 1u64 << PAGE_CLUSTER;
        let start = e.offset & !(win - 1);
        let p = match self.swap_read_new(cpu, e)? {
            Some(p) => p,
            None => self.lookup_swap_cache(e).ok_or(Errno::EIO)?,
        };
        for o in start..start + win {
            if o != e.offset && o != 0 {
                let n = SwpEntry {
                    ty: e.ty,
                    offset: o,
                };
                if let Ok(Some(page)) = self.swap_read_new(cpu, n) {
                    self.__free_pages(cpu, page, 0); // the cache keeps it
                }
            }
        }
        Ok((p, true))
    }

    /// `folio_free_swap`: drop a page's swap slot when no PTE refers to it any more (the page
    /// stays as plain anonymous memory). Returns whether it did.
    pub(crate) fn try_to_free_swap(&self, cpu: &CpuGuard<'_>, page: &Page) -> bool {
        match self.page_swap_entry(page) {
            Some(e) if self.swap_count(e) == 0 => {
                self.delete_from_swap_cache(cpu, page);
                true
            }
            _ => false,
        }
    }

    /// `free_swap_and_cache`: a PTE holding `e` went away; when it was the slot's last
    /// reference, an unmapped, otherwise unreferenced swap-cache page goes too.
    pub(crate) fn free_swap_and_cache(&self, cpu: &CpuGuard<'_>, e: SwpEntry) {
        let (count, cache) = self.swap_free(e);
        if count == 0 && cache {
            if let Some(p) = self.lookup_swap_cache(e) {
                let idle = p.mapcount() == 0 && p.refcount() == 2;
                if idle {
                    self.delete_from_swap_cache(cpu, p);
                }
                self.__free_pages(cpu, p, 0);
            }
        }
    }
}
