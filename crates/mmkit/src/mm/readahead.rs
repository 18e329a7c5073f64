//! mmap readahead (`mm/readahead.c`, `mm/filemap.c`: `do_sync_mmap_readahead`,
//! `do_async_mmap_readahead`, `page_cache_ra_unbounded`, `page_cache_ra_order`,
//! `page_cache_async_ra`, `get_next_ra_size`), per open file (`struct file_ra_state`).
//!
//! In a mapping with large folios (`mapping_large_folio_support`) a window is read in
//! folios (`page_cache_ra_order`): the order grows by two over the folio that started the
//! window (a sync read-around starts from 0, so at 16 KiB folios; each async window from its
//! marker folio's order), capped by the window (`ilog2(size)`) and `MAX_PAGECACHE_ORDER`
//! (the PMD order, as on x86-64);
//! a fault in a `VM_HUGEPAGE` mapping reads the PMD-aligned 4 MiB around it (2 MiB under
//! `VM_RAND_READ`) in PMD-sized folios, readahead enabled or not, and keeps such windows
//! from shrinking below that (Linux 6.16's "the actual size might exceed the readahead
//! window"), so a sequential walk of a `MADV_HUGEPAGE` file mapping stays in file THPs that
//! [`crate::mm::huge_file`] maps by PMDs;
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

use crate::arch::x86_64::pgtable::{HPAGE_PMD_NR, HPAGE_PMD_ORDER};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::inode::{File, Inode};
use crate::gfp::{Gfp, GFP_HIGHUSER_MOVABLE};
use crate::mm::page::{Page, PageFlags};
use crate::Kernel;

/// `MMAP_LOTSAMISS`.
pub const MMAP_LOTSAMISS: u32 = 100;

/// `MAX_PAGECACHE_ORDER`: x86-64's PMD order (`PREFERRED_MAX_PAGECACHE_ORDER`). Folios of
/// that order are file THPs (`FileHugePages`), mapped by PMDs where they can be
/// (`FilePmdMapped`).
pub const MAX_PAGECACHE_ORDER: u32 = HPAGE_PMD_ORDER;

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
    /// read it; the rest falls back to order-0 pages. `new_order` is the order to read in
    /// (`ra->order`: the order of the folio that started this window plus two, or the PMD
    /// order for a `VM_HUGEPAGE` fault), capped here. Returns the pages read.
    pub(crate) fn page_cache_ra_order(
        &self,
        cpu: &CpuGuard<'_>,
        inode: &Inode,
        index: u64,
        nr: u64,
        lookahead: u64,
        new_order: u32,
    ) -> Result<u64, Errno> {
        if !inode.mapping_large_folio_support() || nr < 4 {
            return self.page_cache_ra_unbounded(cpu, inode, index, nr, lookahead);
        }
        let end = (index + nr).min(inode.size().div_ceil(crate::PAGE_SIZE));
        let mark = (lookahead > 0).then(|| index + nr - lookahead);
        let new_order = new_order.min(MAX_PAGECACHE_ORDER).min(nr.ilog2());
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
                    self.folio_put(cpu, folio);
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
                    self.folio_put(cpu, page);
                }
                Ok(None) => {}
                Err(e) if read == 0 && i == index => return Err(e),
                Err(_) => break,
            }
        }
        Ok(read)
    }

    /// `do_sync_mmap_readahead` for a fault that missed the cache at `index`: in a
    /// `VM_HUGEPAGE` mapping, the PMD-aligned window around it in PMD-sized folios (see the
    /// module doc); otherwise read-around (unless `VM_RAND_READ` or too many misses); then
    /// make sure the page itself is there.
    pub(crate) fn do_sync_mmap_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        file: &File,
        index: u64,
        rand_read: bool,
        hugepage: bool,
    ) -> Result<(), Errno> {
        let inode = &file.inode;
        if hugepage {
            let ra = {
                let mut ra = file.f_ra.lock();
                ra.start = index & !(HPAGE_PMD_NR - 1);
                ra.size = if rand_read {
                    HPAGE_PMD_NR
                } else {
                    2 * HPAGE_PMD_NR
                };
                ra.async_size = HPAGE_PMD_NR;
                *ra
            };
            // A failure past the page the fault needs is readahead's to drop.
            let _ = self.page_cache_ra_order(
                cpu,
                inode,
                ra.start,
                ra.size,
                ra.async_size,
                HPAGE_PMD_ORDER,
            );
            if !inode.i_pages.lock().contains_key(index) {
                self.page_cache_ra_unbounded(cpu, inode, index, 1, 0)?;
            }
            return Ok(());
        }
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
            self.page_cache_ra_order(cpu, inode, ra.start, ra.size, ra.async_size, 2)?;
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
            let next_size_floor = ra.size;
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
            if hit_marker {
                // A VM_HUGEPAGE window is larger than ra_pages: it keeps its size.
                ra.size = ra.size.max(next_size_floor);
            }
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
            order + 2,
        );
    }

    /// `filemap_map_pages`' hit accounting: pages mapped by fault-around lower `mmap_miss`.
    pub(crate) fn ra_note_mapped(&self, file: &File, mapped: u32) {
        let mut ra = file.f_ra.lock();
        ra.mmap_miss = ra.mmap_miss.saturating_sub(mapped);
    }
}
