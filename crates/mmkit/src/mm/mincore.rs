//! `mincore` (`mm/mincore.c`: `do_mincore`, `mincore_pte_range`, `mincore_page`,
//! `mincore_unmapped_range`): whether each page of a range is resident.
//!
//! A page is resident when a present PTE maps it; for a swap entry, when its page is in the
//! swap cache; for an address of a file mapping with no PTE, when the file's page is in the
//! page cache (anonymous memory with no PTE is not resident).

use crate::addr::{PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mm_types::{MmStruct, TASK_SIZE};
use crate::mm::swapfile::SwpEntry;
use crate::Kernel;

impl Kernel {
    /// `mincore(start, out.len() pages, vec)` on `mm`: `out[i]` gets 1 when page `i` of the
    /// range is resident, else 0. `EINVAL` for an unaligned start or a range leaving user
    /// space, `ENOMEM` when part of the range is not mapped (`out` is filled up to there).
    pub fn mincore(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        start: u64,
        out: &mut [u8],
    ) -> Result<(), Errno> {
        if start & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let len = (out.len() as u64) << PAGE_SHIFT;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= TASK_SIZE)
            .ok_or(Errno::ENOMEM)?;
        let mut a = start;
        while a < end {
            let v = mm.vma_lookup(a).ok_or(Errno::ENOMEM)?;
            let hi = v.vm_end.min(end);
            let mut c = self.pte_cursor(&mm.pt, a, hi);
            while a < hi {
                let i = ((a - start) >> PAGE_SHIFT) as usize;
                let pte = if c.seek(a) {
                    c.get()
                } else {
                    Default::default()
                };
                // mincore_pmd_range: a huge entry is resident as a whole.
                let huge = pte.is_none()
                    && self
                        .huge_pmd_lookup(&mm.pt, a)
                        .is_some_and(|h| h.is_present());
                out[i] = u8::from(if pte.is_present() || huge {
                    true
                } else if let Some(e) = SwpEntry::from_pte(pte) {
                    self.lookup_swap_cache(e).is_some_and(|p| {
                        self.__free_pages(cpu, p, 0); // the lookup's reference
                        true
                    })
                } else if let Some(f) = &v.vm_file {
                    f.inode.cached_pfn(v.linear_page_index(a)).is_some()
                } else {
                    false
                });
                a += PAGE_SIZE;
            }
        }
        Ok(())
    }
}
