//! mmap readahead (`mm/readahead.c`, `mm/filemap.c`: `do_sync_mmap_readahead`,
//! `do_async_mmap_readahead`, `page_cache_ra_unbounded`, `page_cache_async_ra`,
//! `get_next_ra_size`), per open file (`struct file_ra_state`).
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
            self.page_cache_ra_unbounded(cpu, inode, ra.start, ra.size, ra.async_size)?;
        }
        if !inode.i_pages.lock().contains_key(index) {
            self.page_cache_ra_unbounded(cpu, inode, index, 1, 0)?;
        }
        Ok(())
    }

    /// `do_async_mmap_readahead` for a fault that found `page` (at `index`) cached: a hit
    /// lowers `mmap_miss`; a `PG_readahead` page starts the next window (`page_cache_async_ra`).
    pub(crate) fn do_async_mmap_readahead(
        &self,
        cpu: &CpuGuard<'_>,
        file: &File,
        page: &Page,
        index: u64,
        rand_read: bool,
    ) {
        let next = {
            let mut ra = file.f_ra.lock();
            if rand_read || ra.ra_pages == 0 {
                return;
            }
            ra.mmap_miss = ra.mmap_miss.saturating_sub(1);
            if !page.test(PG_READAHEAD) {
                return;
            }
            page.clear(PG_READAHEAD);
            // ondemand_readahead with the marker hit: continue after the current window if
            // this is its marker, else after the cached run that starts here.
            let expected = ra.start + ra.size - ra.async_size;
            let start = if index == expected && ra.size > 0 {
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
        let _ =
            self.page_cache_ra_unbounded(cpu, &file.inode, next.start, next.size, next.async_size);
    }

    /// `filemap_map_pages`' hit accounting: pages mapped by fault-around lower `mmap_miss`.
    pub(crate) fn ra_note_mapped(&self, file: &File, mapped: u32) {
        let mut ra = file.f_ra.lock();
        ra.mmap_miss = ra.mmap_miss.saturating_sub(mapped);
    }
}
