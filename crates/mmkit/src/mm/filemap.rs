//! The page cache (`mm/filemap.c`, `mm/readahead.c`, `mm/truncate.c`, `mm/page-writeback.c`):
//! `filemap_get_folio`, `filemap_add_folio`, `filemap_fault` with mmap read-around
//! (`do_sync_mmap_readahead`: `ra_pages` centred on the fault), `folio_mark_dirty`,
//! writeback of dirty pages (`write_inode_now`, what `sync`/`msync` reach), and
//! `invalidate_mapping_pages` (what `drop_caches` does for each inode).
//!
//! A cached page holds one reference for the cache; each PTE mapping it and each lookup adds
//! one. `page->mapping` is the inode's handle and `page->index` the page's offset in the file.
//! `NR_FILE_PAGES` and `NR_FILE_DIRTY` (`nr_file_pages`, `nr_dirty`) count them per node.

use crate::addr::{PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::inode::Inode;
use crate::mm::page::{Page, PageFlags};
use crate::mm::vmstat::{index_of, NODE_STAT_NAMES, VM_EVENT_NAMES};
use crate::Kernel;
use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

/// `NR_FILE_PAGES`.
pub const NR_FILE_PAGES: usize = index_of(NODE_STAT_NAMES, "nr_file_pages");
/// `NR_FILE_DIRTY`.
pub const NR_FILE_DIRTY: usize = index_of(NODE_STAT_NAMES, "nr_dirty");
/// `NR_FILE_MAPPED`.
pub const NR_FILE_MAPPED: usize = index_of(NODE_STAT_NAMES, "nr_mapped");
/// `NR_ANON_MAPPED`.
pub const NR_ANON_MAPPED: usize = index_of(NODE_STAT_NAMES, "nr_anon_pages");
/// `NR_DIRTIED`.
pub const NR_DIRTIED: usize = index_of(NODE_STAT_NAMES, "nr_dirtied");
/// `NR_WRITTEN`.
pub const NR_WRITTEN: usize = index_of(NODE_STAT_NAMES, "nr_written");
/// `PGMAJFAULT`.
pub const PGMAJFAULT: usize = index_of(VM_EVENT_NAMES, "pgmajfault");

pub use crate::platform::VM_READAHEAD_PAGES;

impl Kernel {
    /// Pages a file of `inode`'s size spans.
    fn file_pages(inode: &Inode) -> u64 {
        inode.size().div_ceil(PAGE_SIZE)
    }

    /// `filemap_get_folio`: the cached page at `index` with a reference taken, or `None`.
    pub fn find_get_page(&self, inode: &Inode, index: u64) -> Option<&Page> {
        let pages = inode.i_pages.lock();
        let pfn = pages.get(index)?;
        let page = self.mem_map.page(pfn);
        page.get();
        Some(page)
    }

    /// Read the page at `index` from the backing store into a new page allocated with `gfp`
    /// and add it to the cache (`filemap_add_folio` + `read_folio`). Returns the page (no
    /// reference taken: the cache holds it), or `None` when it was cached already; `EIO`
    /// when the store fails (nothing is cached then), `ENOMEM`.
    pub(crate) fn page_cache_read_one(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        gfp: crate::Gfp,
    ) -> Result<Option<&Page>, Errno> {
        if inode.i_pages.lock().contains_key(index) {
            return Ok(None);
        }
        let page = self.alloc_pages(cpu, gfp, 0).ok_or(Errno::ENOMEM)?;
        let pfn = self.page_to_pfn(page);
        let mut buf = [0u8; PAGE_SIZE as usize];
        let n = match inode.data.read_at(index << PAGE_SHIFT, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                self.__free_pages(cpu, page, 0);
                return Err(e);
            }
        };
        buf[n..].fill(0); // the tail past EOF reads as zeroes
        self.phys_write(pfn.phys(), &buf);
        let mut pages = inode.i_pages.lock();
        if pages.contains_key(index) {
            drop(pages);
            self.__free_pages(cpu, page, 0);
            return Ok(None);
        }
        page.set_index(index);
        page.set_mapping(inode.id);
        page.set(PageFlags::UPTODATE);
        pages.insert(index, pfn);
        inode.nrpages.fetch_add(1, Relaxed);
        self.mod_node_page_state(cpu, page, NR_FILE_PAGES, 1);
        drop(pages);
        self.lru_cache_add(cpu, page);
        Ok(Some(page))
    }

    /// `page_cache_ra_unbounded`: read pages `[start, start + nr)` (clamped to the file) that
    /// are not cached yet. Errors past the first page are dropped, as readahead does.
    pub fn page_cache_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        start: u64,
        nr: u64,
    ) -> Result<u64, Errno> {
        self.page_cache_ra_unbounded(cpu, inode, start, nr, 0)
    }

    /// The cached page at `index` with a reference, read (with `ra_pages` of readahead from
    /// there on, as `filemap_read`'s sync readahead does) on a miss. The flag says whether it
    /// had to be read. `Err(EFAULT)` beyond end of file, `EIO`, `ENOMEM`.
    pub fn filemap_get_page(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        ra_pages: u64,
    ) -> Result<(&Page, bool), Errno> {
        if index >= Self::file_pages(inode) {
            return Err(Errno::EFAULT);
        }
        if let Some(p) = self.find_get_page(inode, index) {
            return Ok((p, false));
        }
        self.page_cache_readahead(cpu, inode, index, ra_pages.max(1))?;
        let p = self.find_get_page(inode, index).ok_or(Errno::EIO)?;
        Ok((p, true))
    }

    /// `filemap_read` (what `kernel_read` reaches): copy file bytes at `off` into `buf`
    /// through the page cache, reading missing pages with readahead. Returns the bytes read
    /// (fewer at end of file).
    pub fn filemap_read(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        off: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        let size = inode.size();
        if off >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - off) as usize;
        let mut done = 0;
        while done < n {
            let pos = off + done as u64;
            let in_page = (pos & (PAGE_SIZE - 1)) as usize;
            let chunk = (PAGE_SIZE as usize - in_page).min(n - done);
            let (page, _) =
                self.filemap_get_page(cpu, inode, pos >> PAGE_SHIFT, VM_READAHEAD_PAGES)?;
            let pa = PhysAddr(self.page_to_pfn(page).phys().0 + in_page as u64);
            self.phys_read(pa, &mut buf[done..done + chunk]);
            self.mark_page_accessed(page);
            self.__free_pages(cpu, page, 0);
            done += chunk;
        }
        Ok(n)
    }

    /// A write reached the backing store of `inode` past the cache (the host file, written by
    /// a forwarded `write`): bring the cached pages covering `[off, off + data.len())` up to
    /// date with it, so mappings and reads through the cache see what was written, as
    /// `generic_perform_write` would have put it there.
    pub fn update_cached_range(&self, cpu: &CpuGuard<'_>, inode: &Inode, off: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let in_page = (pos & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - in_page).min(data.len() - done);
            // A reference keeps reclaim from freeing the page under the copy.
            if let Some(page) = self.find_get_page(inode, pos >> PAGE_SHIFT) {
                let pa = (self.page_to_pfn(page).0 << PAGE_SHIFT) + in_page as u64;
                self.phys_write(PhysAddr(pa), &data[done..done + n]);
                self.__free_pages(cpu, page, 0);
            }
            done += n;
        }
    }

    /// `folio_mark_dirty` for a page-cache page: set `PG_dirty`, count it.
    pub fn set_page_dirty(&self, cpu: &CpuGuard<'_>, page: &Page) {
        if !page.test(PageFlags::DIRTY) {
            page.set(PageFlags::DIRTY);
            self.mod_node_page_state(cpu, page, NR_FILE_DIRTY, 1);
            self.mod_node_page_state(cpu, page, NR_DIRTIED, 1);
        }
    }

    /// Write one dirty page back to the store (`folio_clear_dirty_for_io` + `writepage`): its
    /// PTEs are cleaned and write-protected first (`folio_mkclean`, a Dirty bit found there
    /// dirties the page), then `PG_dirty` is cleared, and only then are the bytes read — so a
    /// write that lands after the read faults (or sets a PTE's Dirty bit) and leaves the page
    /// dirty for the next writeback instead of being lost.
    /// The caller holds the page lock (`PG_locked`), which keeps two writebacks of one page
    /// from crossing. A page found clean everywhere is not written.
    fn writeback_page(&self, cpu: &CpuGuard<'_>, inode: &Inode, page: &Page) -> Result<(), Errno> {
        debug_assert!(
            page.test(PageFlags::LOCKED),
            "writeback of an unlocked page"
        );
        if self.page_mkclean(cpu, page) {
            self.set_page_dirty(cpu, page);
        }
        if !page.test(PageFlags::DIRTY) {
            return Ok(());
        }
        page.clear(PageFlags::DIRTY);
        self.mod_node_page_state(cpu, page, NR_FILE_DIRTY, -1);
        self.mod_node_page_state(cpu, page, NR_WRITTEN, 1);
        let index = page.index();
        let size = inode.size();
        let off = index << PAGE_SHIFT;
        let mut buf = [0u8; PAGE_SIZE as usize];
        self.phys_read(self.page_to_pfn(page).phys(), &mut buf);
        // Only the part inside the file is written (the tail page is not extended).
        let n = (size.saturating_sub(off)).min(PAGE_SIZE) as usize;
        if n > 0 {
            if let Err(e) = inode.data.write_at(off, &buf[..n]) {
                // mapping_set_error: the page stays dirty for another try.
                self.set_page_dirty(cpu, page);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `pageout` of one dirty page-cache page (reclaim's writeback).
    pub(crate) fn writeback_one(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        page: &Page,
    ) -> Result<(), Errno> {
        self.writeback_page(cpu, inode, page)
    }

    /// `__remove_mapping` for a clean, unmapped page-cache page whose only other reference is
    /// the caller's: it leaves the cache (dropping the cache's reference). False if it is
    /// still referenced elsewhere.
    pub(crate) fn remove_from_page_cache(&self, cpu: &CpuGuard<'_>, page: &Page) -> bool {
        let Some(inode) = self.inode_of_page(page) else {
            return false;
        };
        {
            let mut pages = inode.i_pages.lock();
            if page.refcount() != 2 || page.mapcount() != 0 || page.test(PageFlags::DIRTY) {
                return false;
            }
            pages.remove(page.index());
        }
        self.delete_from_page_cache(cpu, &inode, page);
        true
    }

    /// `write_inode_now` / `filemap_write_and_wait`: write every dirty cached page of `inode`
    /// back to its store. The first error is returned after trying every page.
    pub fn write_inode_now(&self, cpu: &CpuGuard<'_>, inode: &Inode) -> Result<(), Errno> {
        // The cached pages, each with a reference so that none is freed under us.
        let pages: Vec<&Page> = inode
            .i_pages
            .lock()
            .values()
            .map(|pfn| {
                let p = self.mem_map.page(pfn);
                p.get();
                p
            })
            .collect();
        let mut res = Ok(());
        for page in pages {
            // write_cache_pages' folio_lock: one writeback of a page at a time — a second
            // one racing it could write older bytes after newer ones. A page that left the
            // file meanwhile (reclaim, truncation) is skipped.
            page.lock();
            if page.mapping() == inode.id
                && (page.test(PageFlags::DIRTY)
                    // Dirty PTEs of mapped pages count too (what msync finds through the
                    // page tables); writeback_page moves them to the page.
                    || page.mapcount() > 0)
            {
                if let Err(e) = self.writeback_page(cpu, inode, page) {
                    res = res.and(Err(e));
                }
            }
            page.unlock();
            self.__free_pages(cpu, page, 0);
        }
        res
    }

    /// `invalidate_mapping_pages`: drop every cached page of `inode` that is clean and
    /// referenced only by the cache. Returns how many went.
    pub fn invalidate_mapping_pages(&self, cpu: &CpuGuard<'_>, inode: &Inode) -> u64 {
        let mut freed = Vec::new();
        {
            let mut pages = inode.i_pages.lock();
            pages.retain(|_, pfn| {
                let p = self.mem_map.page(pfn);
                let drop = p.refcount() == 1 && p.mapcount() == 0 && !p.test(PageFlags::DIRTY);
                if drop {
                    freed.push(pfn);
                }
                !drop
            });
        }
        for &pfn in &freed {
            self.delete_from_page_cache(cpu, inode, self.mem_map.page(pfn));
        }
        freed.len() as u64
    }

    /// `truncate_inode_pages`: remove every cached page of `inode` that nothing maps or holds
    /// (dirty ones too: their data is discarded, as truncation does).
    pub fn truncate_inode_pages(&self, cpu: &CpuGuard<'_>, inode: &Inode) {
        // Pages still in a CPU's LRU batch hold a reference: put them on the lists first.
        self.lru_add_drain_all(cpu);
        let mut freed = Vec::new();
        inode.i_pages.lock().retain(|_, pfn| {
            let p = self.mem_map.page(pfn);
            let drop = p.refcount() == 1 && p.mapcount() == 0;
            if drop {
                freed.push(pfn);
            }
            !drop
        });
        for pfn in freed {
            let page = self.mem_map.page(pfn);
            if page.test(PageFlags::DIRTY) {
                page.clear(PageFlags::DIRTY);
                self.mod_node_page_state(cpu, page, NR_FILE_DIRTY, -1);
            }
            self.delete_from_page_cache(cpu, inode, page);
        }
    }

    /// `__filemap_remove_folio` + the cache's `folio_put`: the page (already out of
    /// `i_pages`) leaves the cache and is freed.
    fn delete_from_page_cache(&self, cpu: &CpuGuard<'_>, inode: &Inode, page: &Page) {
        inode.nrpages.fetch_sub(1, Relaxed);
        self.mod_node_page_state(cpu, page, NR_FILE_PAGES, -1);
        page.set_mapping(0);
        page.clear(
            PageFlags::UPTODATE | PageFlags::REFERENCED | crate::mm::readahead::PG_READAHEAD,
        );
        self.__free_pages(cpu, page, 0);
    }

    /// `drop_caches` = 1: invalidate the clean, unmapped page cache of every inode. Returns
    /// the pages freed.
    pub fn drop_pagecache(&self, cpu: &CpuGuard<'_>) -> u64 {
        self.lru_add_drain_all(cpu);
        self.inodes()
            .iter()
            .map(|i| self.invalidate_mapping_pages(cpu, i))
            .sum()
    }

    /// The page cache's invariants: each inode's tree is well formed and `nrpages` long, every
    /// cached page names its inode and index, is up to date and referenced, and the node
    /// counters add up to the pages cached.
    pub fn check_pagecache_invariants(&self) -> Result<(), alloc::string::String> {
        let mut total = 0;
        for inode in self.inodes() {
            let pages = inode.i_pages.lock();
            pages.check().map_err(alloc::string::String::from)?;
            if pages.len() as u64 != inode.nrpages() {
                return Err(alloc::format!(
                    "{}: nrpages {} but {} cached",
                    inode.path,
                    inode.nrpages(),
                    pages.len()
                ));
            }
            for (index, pfn) in pages.iter() {
                let p = self.mem_map.page(pfn);
                if p.mapping() != inode.id
                    || p.index() != index
                    || p.refcount() < 1
                    || !p.test(PageFlags::UPTODATE)
                {
                    return Err(alloc::format!(
                        "{}: page {index} (pfn {pfn:#x}) has mapping {:#x} index {} refcount {}",
                        inode.path,
                        p.mapping(),
                        p.index(),
                        p.refcount()
                    ));
                }
            }
            total += pages.len() as u64;
        }
        let counted = self.global_node_page_state(NR_FILE_PAGES);
        if counted != total {
            return Err(alloc::format!(
                "nr_file_pages {counted} but {total} pages cached"
            ));
        }
        Ok(())
    }

    /// Whether `pfn` is a page-cache page of some inode (mapping handle without the anon bit).
    pub(crate) fn page_is_file(&self, page: &Page) -> bool {
        let m = page.mapping();
        m != 0 && m & crate::mm::rmap::PAGE_MAPPING_ANON == 0 && !page.test(PageFlags::SLAB)
    }
}
