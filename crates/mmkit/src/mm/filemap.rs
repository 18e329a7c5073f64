//! The page cache (`mm/filemap.c`, `mm/readahead.c`, `mm/truncate.c`, `mm/page-writeback.c`;
//! shrinking a file's cache to a new size is in [`crate::mm::truncate`]):
//! `filemap_get_folio`, `filemap_add_folio`, `filemap_fault` with mmap read-around
//! (`do_sync_mmap_readahead`: `ra_pages` centred on the fault), `folio_mark_dirty`,
//! writeback of dirty pages (`write_inode_now`, what `sync`/`msync` reach), and
//! `invalidate_mapping_pages` (what `drop_caches` does for each inode).
//!
//! A cached page holds one reference for the cache; each PTE mapping it and each lookup adds
//! one. `page->mapping` is the inode's handle and `page->index` the page's offset in the file.
//! `NR_FILE_PAGES` and `NR_FILE_DIRTY` (`nr_file_pages`, `nr_dirty`) count them per node.
//!
//! Large folios (a mapping that opted in with `mapping_set_large_folios`; readahead allocates
//! them, `page_cache_ra_order`): the folio fills `nr` consecutive slots of `i_pages`, each
//! holding the pfn of the page at that index (Linux's multi-index entry, resolved per index),
//! and the cache holds `nr` references on the folio (`folio_ref_add(folio, nr)` in
//! `__filemap_add_folio`), as it does in Linux. A lookup at any index takes its reference on
//! the folio and returns the page at that index; `PG_uptodate`, `PG_dirty`, `PG_readahead`
//! and the folio lock are the head's; writeback writes the whole folio (inside the file) and
//! the counters move by `nr`. Invalidation, truncation and `drop_caches` take a folio whole
//! or leave it; reclaim splits one before it frees its pages (`split_folio_to_list`).

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
/// `NR_FILE_THPS` (pages of PMD-sized page-cache folios; meminfo's `FileHugePages`).
pub const NR_FILE_THPS: usize = index_of(NODE_STAT_NAMES, "nr_file_hugepages");
/// `NR_FILE_PMDMAPPED` (pages of page-cache folios some PMD maps; `FilePmdMapped`).
pub const NR_FILE_PMDMAPPED: usize = index_of(NODE_STAT_NAMES, "nr_file_pmdmapped");
/// `THP_FILE_ALLOC`.
pub const THP_FILE_ALLOC: usize = index_of(VM_EVENT_NAMES, "thp_file_alloc");
/// `THP_FILE_FALLBACK`.
pub const THP_FILE_FALLBACK: usize = index_of(VM_EVENT_NAMES, "thp_file_fallback");

pub use crate::platform::VM_READAHEAD_PAGES;

impl Kernel {
    /// Pages a file of `inode`'s size spans.
    fn file_pages(inode: &Inode) -> u64 {
        inode.size().div_ceil(PAGE_SIZE)
    }

    /// `find_get_page`: the cached page at `index` with a reference taken on its folio (drop
    /// it with [`Kernel::folio_put`]), or `None`.
    pub fn find_get_page(&self, inode: &Inode, index: u64) -> Option<&Page> {
        let pages = inode.i_pages.lock();
        let pfn = pages.get(index)?;
        let page = self.mem_map.page(pfn);
        page.compound_head().get();
        Some(page)
    }

    /// `filemap_get_folio`: the folio caching `index` (its head) with a reference, or `None`.
    pub fn filemap_get_folio(&self, inode: &Inode, index: u64) -> Option<&Page> {
        self.find_get_page(inode, index).map(|p| p.compound_head())
    }

    /// Read the page at `index` from the backing store into a new page allocated with `gfp`
    /// and add it to the cache (`filemap_add_folio` + `read_folio`). Returns the page with
    /// the allocation's reference (drop it with [`Kernel::folio_put`]: once cached, the
    /// folio can be dropped from the cache by anyone), or `None` when it was cached already; `EIO`
    /// when the store fails (nothing is cached then), `ENOMEM`.
    pub(crate) fn page_cache_read_one(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        gfp: crate::Gfp,
    ) -> Result<Option<&Page>, Errno> {
        self.page_cache_read_folio(cpu, inode, index, 0, gfp)
    }

    /// `ra_alloc_folio` + `read_pages` for one folio of `order` at `index` (aligned to it):
    /// allocate it (`__GFP_COMP` when large), read its bytes from the store (zeroes past the
    /// end of the file) and add it to the cache in every slot it covers
    /// (`filemap_add_folio`), returned with the allocation's reference (the caller's to
    /// drop). `Ok(None)` when one of those slots is taken already (`EEXIST`:
    /// the caller falls back to smaller folios); `ENOMEM` when the allocation fails, `EIO`
    /// when the store does (nothing is cached then).
    pub(crate) fn page_cache_read_folio(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        order: u32,
        gfp: crate::Gfp,
    ) -> Result<Option<&Page>, Errno> {
        let nr = 1u64 << order;
        debug_assert!(index & (nr - 1) == 0, "a misaligned page-cache folio");
        let taken =
            |pages: &crate::mm::xarray::XArray| (0..nr).any(|i| pages.contains_key(index + i));
        if taken(&inode.i_pages.lock()) {
            return Ok(None);
        }
        let folio = self
            .filemap_alloc_folio(cpu, gfp, order)
            .ok_or(Errno::ENOMEM)?;
        let pfn = self.page_to_pfn(folio);
        let mut buf = [0u8; PAGE_SIZE as usize];
        for i in 0..nr {
            let n = match inode.data.read_at((index + i) << PAGE_SHIFT, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    self.folio_put(cpu, folio);
                    return Err(e);
                }
            };
            buf[n..].fill(0); // the tail past EOF reads as zeroes
            self.phys_write((pfn + i).phys(), &buf);
        }
        if !self.filemap_add_folio(cpu, inode, folio, index) {
            self.folio_put(cpu, folio);
            return Ok(None);
        }
        Ok(Some(folio)) // with the allocation's reference, the caller's to drop
    }

    /// `filemap_alloc_folio`: a folio of `order` for the page cache (`__GFP_COMP` when
    /// large), counting `thp_file_fallback` when a PMD-sized one cannot be had.
    fn filemap_alloc_folio(
        &self,
        cpu: &CpuGuard<'_>,
        gfp: crate::Gfp,
        order: u32,
    ) -> Option<&Page> {
        let gfp = if order > 0 {
            gfp | crate::Gfp::__GFP_COMP
        } else {
            gfp
        };
        let folio = self.alloc_pages(cpu, gfp, order);
        if folio.is_none() && order == crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER {
            cpu.state().vmstat.count(THP_FILE_FALLBACK, 1);
        }
        folio
    }

    /// `filemap_add_folio`: put the new `folio` (its bytes filled, held by the caller's
    /// allocation reference, which stays the caller's) in `inode`'s cache at `index`, in
    /// every slot it covers — the cache takes `nr` references of its own — and on the LRU.
    /// Once added, the folio can be found, and dropped by invalidation or reclaim, by anyone:
    /// the caller's reference is what keeps it. False, the folio untouched, when a slot is
    /// taken (`EEXIST`).
    fn filemap_add_folio(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        folio: &Page,
        index: u64,
    ) -> bool {
        let nr = folio.folio_nr_pages();
        let pfn = self.page_to_pfn(folio);
        let mut pages = inode.i_pages.lock();
        if (0..nr).any(|i| pages.contains_key(index + i)) {
            return false;
        }
        folio.set_index(index);
        folio.set_mapping(inode.id);
        folio.set(PageFlags::UPTODATE);
        for i in 0..nr {
            pages.insert(index + i, pfn + i);
        }
        folio.ref_add(nr as i32);
        inode.nrpages.fetch_add(nr, Relaxed);
        self.mod_node_page_state(cpu, folio, NR_FILE_PAGES, nr as i64);
        if folio.folio_order() == crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER {
            // __filemap_add_folio's NR_FILE_THPS and filemap_alloc_folio's THP_FILE_ALLOC.
            self.mod_node_page_state(cpu, folio, NR_FILE_THPS, nr as i64);
            cpu.state().vmstat.count(THP_FILE_ALLOC, 1);
        }
        drop(pages);
        self.lru_cache_add(cpu, folio);
        true
    }

    /// `page_cache_sync_ra`: read pages `[start, start + nr)` (clamped to the file) that are
    /// not cached yet, in large folios where the mapping supports them
    /// (`page_cache_ra_order`). Errors past the first page are dropped, as readahead does.
    pub fn page_cache_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        start: u64,
        nr: u64,
    ) -> Result<u64, Errno> {
        self.page_cache_ra_order(cpu, inode, start, nr, 0, 2)
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
        let mut read = false;
        loop {
            if index >= Self::file_pages(inode) {
                return Err(Errno::EFAULT);
            }
            if let Some(p) = self.find_get_page(inode, index) {
                return Ok((p, read));
            }
            if !read {
                read = true;
                self.page_cache_readahead(cpu, inode, index, ra_pages.max(1))?;
                continue;
            }
            // Reclaim took it back before we held a reference (filemap_create_folio): read
            // the page alone and keep the allocation's reference.
            if let Some(p) =
                self.page_cache_read_one(cpu, inode, index, crate::gfp::GFP_HIGHUSER_MOVABLE)?
            {
                return Ok((p, true));
            }
        }
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
            self.mark_page_accessed(page.compound_head());
            self.folio_put(cpu, page);
            done += chunk;
        }
        Ok(n)
    }

    /// `generic_perform_write` for a store that already holds the bytes (the host file a
    /// forwarded `write` wrote): `data` now lies at `off`, and the cache takes it as Linux's
    /// write path does. The write goes a chunk of the mapping's largest folio at a time;
    /// `write_begin` finds the folio caching the chunk's first page or makes one
    /// (`__filemap_get_folio` with `FGP_CREAT` and `fgf_set_order(len)`): of the order the
    /// chunk's length allows, no larger than the mapping's largest nor than the index's
    /// alignment, not order 1, falling to smaller orders when it cannot be had — so a large
    /// write is cached in PMD-sized folios, as ext4's is. A new folio's pages the write does
    /// not cover whole are read from the store first (`write_begin` reading a partial
    /// folio). Then the bytes are copied in. The folio stays clean: the store has its bytes
    /// (the write went through to it), where Linux's would be dirty until writeback. When no
    /// page can be had, that page is left uncached (the store has it).
    pub fn generic_perform_write(&self, cpu: &CpuGuard<'_>, inode: &Inode, off: u64, data: &[u8]) {
        let max_order = if inode.mapping_large_folio_support() {
            crate::mm::readahead::MAX_PAGECACHE_ORDER
        } else {
            0
        };
        let chunk = PAGE_SIZE << max_order;
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let bytes = (chunk - (pos & (chunk - 1))).min(end - pos);
            let index = pos >> PAGE_SHIFT;
            let folio = match self.filemap_get_folio(inode, index) {
                Some(f) => f,
                None => {
                    match self.write_begin_folio(cpu, inode, index, bytes, max_order, off, data) {
                        Some(f) => f,
                        None => {
                            pos = (index + 1) << PAGE_SHIFT;
                            continue;
                        }
                    }
                }
            };
            // The part of the write inside this folio, page by page.
            let fpos = folio.index() << PAGE_SHIFT;
            let fend = (fpos + (folio.folio_nr_pages() << PAGE_SHIFT)).min(end);
            let pfn = self.page_to_pfn(folio);
            while pos < fend {
                let n = (PAGE_SIZE - (pos & (PAGE_SIZE - 1))).min(fend - pos);
                let src = (pos - off) as usize;
                let pa = (pfn.0 << PAGE_SHIFT) + (pos - fpos);
                self.phys_write(PhysAddr(pa), &data[src..src + n as usize]);
                pos += n;
            }
            self.folio_put(cpu, folio);
        }
    }

    /// `write_begin`'s new folio for the chunk of `bytes` at page `index` (see
    /// [`Kernel::generic_perform_write`]), cached and with a reference for the caller; pages
    /// the write `[off, off + data.len())` covers whole are filled from `data`, the others
    /// from the store (zeroes past its end).
    #[allow(clippy::too_many_arguments)]
    fn write_begin_folio(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        bytes: u64,
        max_order: u32,
        off: u64,
        data: &[u8],
    ) -> Option<&Page> {
        // fgf_set_order(len): the largest order whose folio the length fills.
        let mut order = (bytes.ilog2().saturating_sub(PAGE_SHIFT)).min(max_order);
        if index & ((1 << order) - 1) != 0 {
            order = index.trailing_zeros();
        }
        let end = off + data.len() as u64;
        loop {
            if order == 1 {
                order = 0;
            }
            let gfp = if order > 0 {
                crate::gfp::GFP_HIGHUSER_MOVABLE
                    | crate::Gfp::__GFP_NORETRY
                    | crate::Gfp::__GFP_NOWARN
            } else {
                crate::gfp::GFP_HIGHUSER_MOVABLE
            };
            if let Some(folio) = self.filemap_alloc_folio(cpu, gfp, order) {
                let pfn = self.page_to_pfn(folio);
                let mut buf = [0u8; PAGE_SIZE as usize];
                let mut ok = true;
                for i in 0..1u64 << order {
                    let at = (index + i) << PAGE_SHIFT;
                    if at >= off && at + PAGE_SIZE <= end {
                        let s = (at - off) as usize;
                        buf.copy_from_slice(&data[s..s + PAGE_SIZE as usize]);
                    } else {
                        match inode.data.read_at(at, &mut buf) {
                            Ok(n) => buf[n..].fill(0),
                            Err(_) => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    self.phys_write((pfn + i).phys(), &buf);
                }
                if ok && self.filemap_add_folio(cpu, inode, folio, index) {
                    return Some(folio); // with the allocation's reference
                }
                self.folio_put(cpu, folio);
                if !ok {
                    return None;
                }
            }
            if order == 0 {
                return None;
            }
            order -= 1;
        }
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
                self.folio_put(cpu, page);
            }
            done += n;
        }
    }

    /// `folio_mark_dirty` for a page-cache page: set its folio's `PG_dirty`, count the
    /// folio's pages (`folio_account_dirtied`).
    pub fn set_page_dirty(&self, cpu: &CpuGuard<'_>, page: &Page) {
        let folio = page.compound_head();
        if !folio.test(PageFlags::DIRTY) {
            let nr = folio.folio_nr_pages() as i64;
            folio.set(PageFlags::DIRTY);
            self.mod_node_page_state(cpu, folio, NR_FILE_DIRTY, nr);
            self.mod_node_page_state(cpu, folio, NR_DIRTIED, nr);
        }
    }

    /// Write one dirty folio back to the store (`folio_clear_dirty_for_io` + `writepage`):
    /// the PTEs mapping any of its pages are cleaned and write-protected first
    /// (`folio_mkclean`, a Dirty bit found there dirties the folio), then `PG_dirty` is
    /// cleared, and only then are the bytes read — so a write that lands after the read
    /// faults (or sets a PTE's Dirty bit) and leaves the folio dirty for the next writeback
    /// instead of being lost. A large folio is written whole (the part inside the file).
    /// The caller holds the folio lock (`PG_locked`), which keeps two writebacks of one folio
    /// from crossing. A folio found clean everywhere is not written.
    fn writeback_page(&self, cpu: &CpuGuard<'_>, inode: &Inode, page: &Page) -> Result<(), Errno> {
        let folio = page.compound_head();
        debug_assert!(
            folio.test(PageFlags::LOCKED),
            "writeback of an unlocked folio"
        );
        let nr = folio.folio_nr_pages();
        let mut pte_dirty = false;
        for i in 0..nr {
            let p = folio.folio_page(i);
            if nr == 1 || p.mapcount() > 0 {
                pte_dirty |= self.page_mkclean(cpu, p);
            }
        }
        if pte_dirty {
            self.set_page_dirty(cpu, folio);
        }
        if !folio.test(PageFlags::DIRTY) {
            return Ok(());
        }
        folio.clear(PageFlags::DIRTY);
        self.mod_node_page_state(cpu, folio, NR_FILE_DIRTY, -(nr as i64));
        self.mod_node_page_state(cpu, folio, NR_WRITTEN, nr as i64);
        let size = inode.size();
        let off = folio.index() << PAGE_SHIFT;
        // Only the part inside the file is written (the tail page is not extended).
        let n = (size.saturating_sub(off)).min(nr << PAGE_SHIFT) as usize;
        let mut buf = alloc::vec![0u8; n];
        let pfn = self.page_to_pfn(folio);
        for (i, chunk) in buf.chunks_mut(PAGE_SIZE as usize).enumerate() {
            self.phys_read((pfn + i as u64).phys(), chunk);
        }
        if n > 0 {
            if let Err(e) = inode.data.write_at(off, &buf) {
                // mapping_set_error: the folio stays dirty for another try.
                self.set_page_dirty(cpu, folio);
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

    /// `__remove_mapping` for a clean, unmapped page-cache folio whose only other reference
    /// is the caller's: it leaves the cache (dropping the cache's references). False if it
    /// is still referenced elsewhere.
    pub(crate) fn remove_from_page_cache(&self, cpu: &CpuGuard<'_>, page: &Page) -> bool {
        let folio = page.compound_head();
        let Some(inode) = self.inode_of_page(folio) else {
            return false;
        };
        let nr = folio.folio_nr_pages();
        {
            let mut pages = inode.i_pages.lock();
            if folio.refcount() != nr as i32 + 1
                || folio.folio_mapcount() != 0
                || folio.test(PageFlags::DIRTY)
            {
                return false;
            }
            for i in 0..nr {
                pages.remove(folio.index() + i);
            }
        }
        self.delete_from_page_cache(cpu, &inode, folio);
        true
    }

    /// The folios cached for `inode`, each (its head) once, in index order, with a reference
    /// taken on each.
    fn cached_folios(&self, inode: &Inode) -> Vec<&Page> {
        let pages = inode.i_pages.lock();
        let mut out = Vec::new();
        for pfn in pages.values() {
            let p = self.mem_map.page(pfn);
            // A large folio's head slot stands for it; its other slots are its tails.
            if !p.test(PageFlags::TAIL) {
                p.get();
                out.push(p);
            }
        }
        out
    }

    /// Under `i_pages`' lock: take out of it every folio of `inode` that `drop` selects,
    /// returning their heads.
    fn remove_folios_if<'k>(
        &'k self,
        inode: &Inode,
        mut drop: impl FnMut(&Page) -> bool,
    ) -> Vec<&'k Page> {
        let mut pages = inode.i_pages.lock();
        let gone: Vec<&Page> = pages
            .values()
            .map(|pfn| self.mem_map.page(pfn))
            .filter(|p| !p.test(PageFlags::TAIL) && drop(p))
            .collect();
        for f in &gone {
            for i in 0..f.folio_nr_pages() {
                pages.remove(f.index() + i);
            }
        }
        gone
    }

    /// `write_inode_now` / `filemap_write_and_wait`: write every dirty cached page of `inode`
    /// back to its store. The first error is returned after trying every page.
    pub fn write_inode_now(&self, cpu: &CpuGuard<'_>, inode: &Inode) -> Result<(), Errno> {
        // The cached folios, each with a reference so that none is freed under us, and the
        // pages each had when it was collected.
        let mut work: Vec<(&Page, u64)> = self
            .cached_folios(inode)
            .into_iter()
            .map(|f| (f, f.folio_nr_pages()))
            .collect();
        let mut res = Ok(());
        let mut i = 0;
        while i < work.len() {
            let (page, nr_then) = work[i];
            i += 1;
            // write_cache_pages' folio_lock: one writeback of a folio at a time — a second
            // one racing it could write older bytes after newer ones. A folio that left the
            // file meanwhile (reclaim, truncation) is skipped.
            page.lock();
            let ours = page.mapping() == inode.id;
            if ours
                && (page.test(PageFlags::DIRTY)
                    // Dirty PTEs of mapped pages count too (what msync finds through the
                    // page tables); writeback_page moves them to the folio.
                    || page.folio_mapcount() > 0)
            {
                if let Err(e) = self.writeback_page(cpu, inode, page) {
                    res = res.and(Err(e));
                }
            }
            // Split meanwhile (by reclaim): its former tails are pages of their own now,
            // looked up again and written in turn (writeback_iter finds them the same way,
            // walking the cache index by index).
            let (index, nr_now) = (page.index(), page.folio_nr_pages());
            page.unlock();
            self.folio_put(cpu, page);
            if ours && nr_now < nr_then {
                for idx in index + nr_now..index + nr_then {
                    if let Some(f) = self.filemap_get_folio(inode, idx) {
                        if f.index() == idx {
                            work.push((f, f.folio_nr_pages()));
                        } else {
                            self.folio_put(cpu, f);
                        }
                    }
                }
            }
        }
        res
    }

    /// `invalidate_mapping_pages`: drop every cached folio of `inode` that is clean and
    /// referenced only by the cache (a large folio whole or not at all). Returns how many
    /// pages went.
    pub fn invalidate_mapping_pages(&self, cpu: &CpuGuard<'_>, inode: &Inode) -> u64 {
        let freed = self.remove_folios_if(inode, |f| {
            f.refcount() == f.folio_nr_pages() as i32
                && f.folio_mapcount() == 0
                && !f.test(PageFlags::DIRTY)
        });
        let mut n = 0;
        for f in freed {
            n += f.folio_nr_pages();
            self.delete_from_page_cache(cpu, inode, f);
        }
        n
    }

    /// `truncate_inode_pages`: remove every cached page of `inode` that nothing maps or holds
    /// (dirty ones too: their data is discarded, as truncation does).
    pub fn truncate_inode_pages(&self, cpu: &CpuGuard<'_>, inode: &Inode) {
        // Pages still in a CPU's LRU batch hold a reference: put them on the lists first.
        self.lru_add_drain_all(cpu);
        let freed = self.remove_folios_if(inode, |f| {
            f.refcount() == f.folio_nr_pages() as i32 && f.folio_mapcount() == 0
        });
        for folio in freed {
            if folio.test(PageFlags::DIRTY) {
                folio.clear(PageFlags::DIRTY);
                let nr = folio.folio_nr_pages() as i64;
                self.mod_node_page_state(cpu, folio, NR_FILE_DIRTY, -nr);
            }
            self.delete_from_page_cache(cpu, inode, folio);
        }
    }

    /// `filemap_remove_folio`: take `folio` (locked by the caller, who holds a reference)
    /// out of `inode`'s cache — every slot it fills, checked to still hold it — and drop the
    /// cache's references. False when it was no longer cached there.
    pub(crate) fn filemap_remove_folio(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        folio: &Page,
    ) -> bool {
        let (index, nr) = (folio.index(), folio.folio_nr_pages());
        let pfn = self.page_to_pfn(folio);
        {
            let mut pages = inode.i_pages.lock();
            if (0..nr).any(|i| pages.get(index + i) != Some(pfn + i)) {
                return false;
            }
            for i in 0..nr {
                pages.remove(index + i);
            }
        }
        self.delete_from_page_cache(cpu, inode, folio);
        true
    }

    /// `__filemap_remove_folio` + the cache's `folio_put_refs`: the folio (already out of
    /// `i_pages`) leaves the cache and its `nr` cache references go (freeing it when they
    /// were the last).
    fn delete_from_page_cache(&self, cpu: &CpuGuard<'_>, inode: &Inode, folio: &Page) {
        let nr = folio.folio_nr_pages();
        inode.nrpages.fetch_sub(nr, Relaxed);
        self.mod_node_page_state(cpu, folio, NR_FILE_PAGES, -(nr as i64));
        if folio.folio_order() == crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER {
            self.mod_node_page_state(cpu, folio, NR_FILE_THPS, -(nr as i64));
        }
        folio.set_mapping(0);
        folio.clear(
            PageFlags::UPTODATE | PageFlags::REFERENCED | crate::mm::readahead::PG_READAHEAD,
        );
        // Every cache reference but one (the caller checked that more are held), then the
        // last one as a put that frees the folio at its order.
        folio.ref_add(1 - nr as i32);
        self.folio_put(cpu, folio);
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
    /// cached page's folio names its inode and the page its index, the folio is up to date
    /// and holds at least the cache's references, a large folio fills each slot it covers
    /// (and only a mapping that supports them has one), and the node counters add up to the
    /// pages cached.
    pub fn check_pagecache_invariants(&self) -> Result<(), alloc::string::String> {
        let mut total = 0;
        let (mut thps, mut pmd_mapped) = (0, 0);
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
                let f = p.compound_head();
                let nr = f.folio_nr_pages();
                if f.mapping() != inode.id
                    || p.pgoff() != index
                    || f.refcount() < nr as i32
                    || !f.test(PageFlags::UPTODATE)
                {
                    return Err(alloc::format!(
                        "{}: page {index} (pfn {pfn:#x}) has mapping {:#x} index {} refcount {} \
                         (folio of {nr})",
                        inode.path,
                        f.mapping(),
                        p.pgoff(),
                        f.refcount()
                    ));
                }
                if f.folio_test_large() && !p.test(PageFlags::TAIL) {
                    if f.folio_order() == crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER {
                        thps += nr;
                        if f.entire_mapcount() > 0 {
                            pmd_mapped += nr;
                        }
                    }
                    let whole = (0..nr).all(|i| pages.get(index + i) == Some(pfn + i));
                    if !whole || index & (nr - 1) != 0 || !inode.mapping_large_folio_support() {
                        return Err(alloc::format!(
                            "{}: folio of {nr} pages at {index} (pfn {pfn:#x}) misaligned, \
                             not in each of its slots or in a mapping without large folios",
                            inode.path
                        ));
                    }
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
        let (c_thps, c_mapped) = (
            self.global_node_page_state(NR_FILE_THPS),
            self.global_node_page_state(NR_FILE_PMDMAPPED),
        );
        if (c_thps, c_mapped) != (thps, pmd_mapped) {
            return Err(alloc::format!(
                "nr_file_hugepages {c_thps} / nr_file_pmdmapped {c_mapped} pages, but {thps} \
                 pages of PMD-sized folios cached, {pmd_mapped} of them PMD-mapped"
            ));
        }
        Ok(())
    }

    /// Whether `pfn` is a page-cache page of some inode (mapping handle without the anon bit).
    pub(crate) fn page_is_file(&self, page: &Page) -> bool {
        // A tail's `mapping` word is not its folio's (the first tail's holds
        // `_nr_pages_mapped`): ask the head.
        let page = page.compound_head();
        let m = page.mapping();
        m != 0 && m & crate::mm::rmap::PAGE_MAPPING_ANON == 0 && !page.test(PageFlags::SLAB)
    }
}
