//! `struct folio_batch` (`include/linux/pagevec.h`): a fixed array of pages, by pfn, that
//! is filled and then handed over whole (the per-CPU LRU add batch of `mm/swap.c`). It
//! needs nothing but frame numbers, so the per-CPU state (`cpu.rs`) can hold one without
//! reaching up into the LRU code.

use crate::addr::Pfn;

/// `PAGEVEC_SIZE`, the per-CPU add batch: 31 in current kernels (15 until 2024).
pub const LRU_BATCH: usize = 31;

/// `struct folio_batch`: up to [`LRU_BATCH`] pages (by pfn) in a fixed array, as in Linux.
#[derive(Clone, Copy)]
pub struct FolioBatch {
    nr: usize,
    pfns: [Pfn; LRU_BATCH],
}

impl Default for FolioBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl FolioBatch {
    /// An empty batch.
    pub const fn new() -> Self {
        Self {
            nr: 0,
            pfns: [Pfn(0); LRU_BATCH],
        }
    }

    /// `folio_batch_add`: append `pfn` (there must be room); returns the room left.
    pub fn add(&mut self, pfn: Pfn) -> usize {
        self.pfns[self.nr] = pfn;
        self.nr += 1;
        LRU_BATCH - self.nr
    }

    /// The pages in the batch.
    pub fn pfns(&self) -> &[Pfn] {
        &self.pfns[..self.nr]
    }

    /// Move the contents out, leaving the batch empty (`folio_batch_reinit`).
    pub fn take(&mut self) -> Self {
        let b = *self;
        self.nr = 0;
        b
    }
}
