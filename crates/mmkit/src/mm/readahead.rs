//! mmap readahead (`mm/readahead.c`, `mm/filemap.c`: `do_sync_mmap_readahead`,
//! `do_async_mmap_readahead`, `page_cache_ra_unbounded`, `page_cache_ra_order`,
//! `page_cache_async_ra`, `get_next_ra_size`), per open file (`struct file_ra_state`).
//!
//! In a mapping with large folios (`mapping_large_folio_support`) a window is read in
//! folios (`page_cache_ra_order`): the order grows by two over the folio that started the
//! window (a sync read-around starts from 0, so at 16 KiB folios; each async window from its
//! marker folio's order), capped by the window (`ilog2(size)`) and `MAX_PAGECACHE_ORDER`
//! (below the PMD order: `FileHugePages` stays 0);
//! each folio is aligned to its order (a smaller one where the index is not) and stays
//! inside the window and the file. Order 1 is not used (order-0 pages instead, as before
//! Linux 6.8: a split needs the third page's deferred-list word). When an allocation fails
//! or a slot is taken, the rest of the window is read in order-0 pages
//! (`do_page_cache_ra`), which skips what is cached. The marker is the folio holding the
//! marker index.
//!
//! A major fault reads `ra_pages` around the faulting page and marks the page `async_size`
//! before the window's end `PG_readahead`; fault-around does not map marked pages, so touching
//! one faults, and that minor fault starts the next window asynchronously. `mmap_miss` counts
//! major faults against pages that were found: once misses outnumber hits by `MMAP_LOTSAMISS`,
//! read-around stops (random access does not benefit). `ra_pages` is the backing device's
//! readahead size (`read_ahead_kb` / 4).

use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::inode::{File, Inode};
use crate::gfp::{Gfp, GFP_HIGHUSER_MOVABLE};
use crate::mm::page::{Page, PageFlags};
use crate::Kernel;

/// `MMAP_LOTSAMISS`.
pub const MMAP_LOTSAMISS: u32 = 100;

/// `MAX_PAGECACHE_ORDER` as far as it is done here: below a PMD's worth. PMD-sized
/// page-cache folios (file THP, counted in `FileHugePages`, mapped by `FilePmdMapped` PMDs)
/// are not done, so readahead stops one order short of them.
pub const MAX_PAGECACHE_ORDER: u32 = crate::arch::x86_64::pgtable::HPAGE_PMD_ORDER - 1;

/// `PG_readahead` (shares its bit with `PG_reclaim`, as in Linux).
pub const PG_READAHEAD: PageFlags = PageFlags::RECLAIM;

/// `struct file_ra_state`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileRaState {
    /// First page of the current window.
    pub start: u64,
    /// Pages in it.
    pub size: u64,
    /// Pages left when the next window should start (where `PG_readahead` sits).
    pub async_size: u64,
    /// Maximum window (`ra_pages`).
    pub ra_pages: u64,
    /// Major faults not yet balanced by cache hits.
    pub mmap_miss: u32,
}

/// `get_next_ra_size`: grow the window ×4 while small, ×2 up to half the maximum, then max.
fn get_next_ra_size(cur: u64, max: u64) -> u64 {
    if cur < max / 16 {
        (4 * cur).min(max)
    } else if cur <= max / 2 {
        (2 * cur).min(max)
    } else {
        max
    }
}

impl Kernel {
    /// `page_cache_ra_order`: read the window `[index, index + nr)` (within the file) in
    /// folios of growing order (see the module doc) where the mapping supports large folios,
    /// marking the folio holding page `index + nr - lookahead` `PG_readahead` if this call
    /// read it; the rest falls back to order-0 pages. `prev_order` is the order of the folio
    /// that started this window (0 for a sync read). Returns the pages read.
    pub(crate) fn page_cache_ra_order(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        nr: u64,
        lookahead: u64,
        prev_order: u32,
    ) -> Result<u64, Errno> {
        if !inode.mapping_large_folio_support() || nr < 4 {
            return self.page_cache_ra_unbounded(cpu, inode, index, nr, lookahead);
        }
        let end = (index + nr).min(inode.size().div_ceil(crate::PAGE_SIZE));
        let mark = (lookahead > 0).then(|| index + nr - lookahead);
        let mut new_order = prev_order;
        if new_order < MAX_PAGECACHE_ORDER {
            new_order += 2;
        }
        new_order = new_order.min(MAX_PAGECACHE_ORDER).min(nr.ilog2());
        let mut i = index;
        let mut read = 0;
        while i < end {
            let mut order = new_order;
            // Aligned to its order: a smaller folio where the index is not.
            if i & ((1 << order) - 1) != 0 {
                order = i.trailing_zeros();
            }
            // Not past the window's (or the file's) end.
            while i + (1 << order) > end {
                order -= 1;
            }
            if order == 1 {
                order = 0;
            }
            // readahead_gfp_mask, and no hard reclaim for a large folio: an allocation
            // that fails falls back to order-0 pages below.
            let gfp = if i == index && order == 0 {
                GFP_HIGHUSER_MOVABLE
            } else {
                GFP_HIGHUSER_MOVABLE | Gfp::__GFP_NORETRY | Gfp::__GFP_NOWARN
            };
            match self.page_cache_read_folio(cpu, inode, i, order, gfp) {
                Ok(Some(folio)) => {
                    read += 1 << order;
                    if mark.is_some_and(|m| (i..i + (1 << order)).contains(&m)) {
                        folio.set(PG_READAHEAD);
                    }
                }
                // A slot taken (EEXIST), the allocation failed, the store failed: the
                // order-0 path reads what is left and reports the error of the page the
                // caller needs.
                Ok(None) | Err(_) => break,
            }
            i += 1 << order;
        }
        if i < end {
            // do_page_cache_ra of the rest, with the same marker index if it lies ahead.
            let rest = index + nr - i;
            let la = match mark {
                Some(m) if m >= i => index + nr - m,
                _ => 0,
            };
            match self.page_cache_ra_unbounded(cpu, inode, i, rest, la) {
                Ok(n) => read += n,
                Err(e) if read == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(read)
    }

    /// `page_cache_ra_unbounded`: read `[index, index + nr)` (within the file) where not
    /// cached, marking page `index + nr - lookahead` `PG_readahead` if this call read it.
    pub(crate) fn page_cache_ra_unbounded(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        nr: u64,
        lookahead: u64,
    ) -> Result<u64, Errno> {
        let end = (index + nr).min(inode.size().div_ceil(crate::PAGE_SIZE));
        let mark = (lookahead > 0).then(|| index + nr - lookahead);
        let mut read = 0;
        for i in index..end {
            // The page the caller needs gets the mapping's mask; the ones read ahead of it
            // `readahead_gfp_mask`'s (`__GFP_NORETRY | __GFP_NOWARN`): under pressure they
            // are skipped quietly instead of reclaiming hard and warning for pages nobody
            // asked for yet.
            let gfp = if i == index {
                GFP_HIGHUSER_MOVABLE
            } else {
                GFP_HIGHUSER_MOVABLE | Gfp::__GFP_NORETRY | Gfp::__GFP_NOWARN
            };
            match self.page_cache_read_one(cpu, inode, i, gfp) {
                Ok(Some(page)) => {
                    read += 1;
                    if Some(i) == mark {
                        page.set(PG_READAHEAD);
                    }
                }
                Ok(None) => {}
                Err(e) if read == 0 && i == index => return Err(e),
                Err(_) => break,
            }
        }
        Ok(read)
    }

    /// `do_sync_mmap_readahead` for a fault that missed the cache at `index`: read-around
    /// (unless `VM_RAND_READ` or too many misses), then make sure the page itself is there.
    pub(crate) fn do_sync_mmap_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        file: &File,
        index: u64,
        rand_read: bool,
    ) -> Result<(), Errno> {
        let inode = &file.inode;
        let window = {
            let mut ra = file.f_ra.lock();
            if rand_read || ra.ra_pages == 0 {
                None
            } else {
                if ra.mmap_miss < MMAP_LOTSAMISS * 10 {
                    ra.mmap_miss += 1;
                }
                if ra.mmap_miss > MMAP_LOTSAMISS {
                    None
                } else {
                    ra.start = index.saturating_sub(ra.ra_pages / 2);
                    ra.size = ra.ra_pages;
                    ra.async_size = ra.ra_pages / 4;
                    Some(*ra)
                }
            }
        };
        if let Some(ra) = window {
            self.page_cache_ra_order(cpu, inode, ra.start, ra.size, ra.async_size, 0)?;
        }
        if !inode.i_pages.lock().contains_key(index) {
            self.page_cache_ra_unbounded(cpu, inode, index, 1, 0)?;
        }
        Ok(())
    }

    /// `do_async_mmap_readahead` for a fault that found `page` (at `index`) cached: a hit
    /// lowers `mmap_miss`; a page of a `PG_readahead` folio starts the next window
    /// (`page_cache_async_ra`), in folios larger than that one.
    pub(crate) fn do_async_mmap_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        file: &File,
        page: &Page,
        index: u64,
        rand_read: bool,
    ) {
        let folio = page.compound_head();
        let order = folio.folio_order();
        let next = {
            let mut ra = file.f_ra.lock();
            if rand_read || ra.ra_pages == 0 {
                return;
            }
            ra.mmap_miss = ra.mmap_miss.saturating_sub(1);
            if !folio.test(PG_READAHEAD) {
                return;
            }
            folio.clear(PG_READAHEAD);
            // ondemand_readahead with the marker hit: continue after the current window if
            // this is its marker (a page of the marker folio), else after the cached run
            // that starts here.
            let expected = ra.start + ra.size - ra.async_size;
            let nr = folio.folio_nr_pages();
            let hit_marker = ra.size > 0 && (folio.index()..folio.index() + nr).contains(&expected);
            let start = if hit_marker {
                ra.start + ra.size
            } else {
                let pages = file.inode.i_pages.lock();
                let mut s = index + 1;
                while s < index + ra.ra_pages && pages.contains_key(s) {
                    s += 1;
                }
                s
            };
            ra.size = get_next_ra_size(ra.size.max(1), ra.ra_pages);
            ra.start = start;
            ra.async_size = ra.size;
            *ra
        };
        let _ = self.page_cache_ra_order(
            cpu,
            &file.inode,
            next.start,
            next.size,
            next.async_size,
            order,
        );
    }

    /// `filemap_map_pages`' hit accounting: pages mapped by fault-around lower `mmap_miss`.
    pub(crate) fn ra_note_mapped(&self, file: &File, mapped: u32) {
        let mut ra = file.f_ra.lock();
        ra.mmap_miss = ra.mmap_miss.saturating_sub(mapped);
    }
}
