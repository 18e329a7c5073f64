//! Where a new mapping goes: `__get_unmapped_area` (`mm/mmap.c`), the x86-64 top-down search
//! (`arch_get_unmapped_area_topdown`, `vm_unmapped_area`: the highest gap below `mmap_base`
//! that keeps the stack guard gap, bottom-up from `TASK_UNMAPPED_BASE` when that fails), and
//! `__thp_get_unmapped_area` (`mm/huge_memory.c`).
//!
//! A kernel built with transparent huge pages (every distribution's) places a mapping that
//! could hold a PMD-sized page so that it can: an anonymous mapping whose length is a
//! multiple of 2 MiB (and that has no hint), or a mapping of a file whose filesystem asks for
//! it (`file_operations.get_unmapped_area = thp_get_unmapped_area`: ext4, xfs…, asked
//! through [`FileData::thp_get_unmapped_area`](crate::FileData::thp_get_unmapped_area)) and
//! that covers a 2 MiB-aligned 2 MiB piece of the file. mmkit maps base pages only, but lays
//! address spaces out as such a kernel does, so that programs see the addresses Linux gives.

use crate::addr::{align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::errno::Errno;
use crate::fs::inode::File;
use crate::mm::mm_types::{MmStruct, MMAP_MIN_ADDR, TASK_SIZE};
use crate::mm::mmap::{MAP_FIXED, MAP_FIXED_NOREPLACE};
use crate::Kernel;

/// `HPAGE_PMD_SIZE`: what one PMD entry maps.
pub const HPAGE_PMD_SIZE: u64 = 2 << 20;

impl Kernel {
    /// `__get_unmapped_area`: `MAP_FIXED` as given; otherwise a THP-aligned place where
    /// one is due (see the module doc), else [`Kernel::mm_get_unmapped_area`]. `pgoff` is the
    /// file offset in pages (ignored for anonymous memory). `ENOMEM` when nothing fits.
    pub fn get_unmapped_area(
        &self,
        mm: &MmStruct,
        file: Option<&File>,
        addr: u64,
        len: u64,
        pgoff: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        if len > TASK_SIZE - MMAP_MIN_ADDR {
            return Err(Errno::ENOMEM);
        }
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if addr > TASK_SIZE - len {
                return Err(Errno::ENOMEM);
            }
            return Ok(addr);
        }
        let thp = match file {
            Some(f) => f.inode.data.thp_get_unmapped_area(),
            None => addr == 0 && len.is_multiple_of(HPAGE_PMD_SIZE),
        };
        let off = if file.is_some() {
            pgoff << PAGE_SHIFT
        } else {
            0
        };
        if thp {
            if let Some(a) = self.thp_get_unmapped_area(mm, addr, len, off) {
                return Ok(a);
            }
        }
        self.mm_get_unmapped_area(mm, addr, len)
    }

    /// `__thp_get_unmapped_area`: search for `len` plus 2 MiB, then slide into the padding so
    /// that file offset `off` lands on a 2 MiB boundary (top-down: the highest such place).
    /// `None` — use the plain search — when no aligned 2 MiB piece of `[off, off + len)`
    /// exists or the padded length does not fit.
    fn thp_get_unmapped_area(&self, mm: &MmStruct, addr: u64, len: u64, off: u64) -> Option<u64> {
        let size = HPAGE_PMD_SIZE;
        let off_end = off.checked_add(len)?;
        let off_align = align_up(off, size);
        if off_end <= off_align || off_end - off_align < size {
            return None;
        }
        let len_pad = len.checked_add(size)?;
        off.checked_add(len_pad)?;
        let ret = self.mm_get_unmapped_area(mm, addr, len_pad).ok()?;
        // A hint that was usable as it is stays as it is.
        if ret == addr {
            return Some(addr);
        }
        let off_sub = off.wrapping_sub(ret) & (size - 1);
        // Top-down: the padding is at the bottom; an already aligned place moves to its top.
        if off_sub == 0 {
            return Some(ret + size);
        }
        Some(ret + off_sub)
    }

    /// `mm_get_unmapped_area` (x86-64, top-down layout): a usable hint as given; otherwise
    /// the highest gap below `mmap_base` (`vm_unmapped_area` top-down, keeping the guard gap
    /// below stacks), or bottom-up from `TASK_SIZE / 3` when that fails. `ENOMEM` when
    /// nothing fits.
    pub fn mm_get_unmapped_area(&self, mm: &MmStruct, addr: u64, len: u64) -> Result<u64, Errno> {
        if len > TASK_SIZE - MMAP_MIN_ADDR {
            return Err(Errno::ENOMEM);
        }
        if addr != 0 {
            let a = align_up(addr, PAGE_SIZE);
            let next_ok = mm.find_vma(a).is_none_or(|v| a + len <= v.start_gap());
            let prev_ok = mm.find_vma_prev(a).is_none_or(|p| p.vm_end <= a);
            if a <= TASK_SIZE - len && a >= MMAP_MIN_ADDR && next_ok && prev_ok {
                return Ok(a);
            }
        }
        let low = MMAP_MIN_ADDR.max(PAGE_SIZE);
        let mut gap_end = mm.mmap_base;
        for v in mm.vmas.iter().rev() {
            if v.vm_end > gap_end {
                gap_end = gap_end.min(v.start_gap());
                continue;
            }
            if gap_end >= v.vm_end + len {
                return Ok(gap_end - len);
            }
            gap_end = v.start_gap();
            if gap_end < low + len {
                break;
            }
        }
        // Below the lowest VMA (or with none at all) the gap reaches down to `low`.
        if gap_end >= low + len {
            return Ok(gap_end - len);
        }
        // Bottom-up fallback from TASK_UNMAPPED_BASE.
        let mut start = align_up(TASK_SIZE / 3, PAGE_SIZE);
        for v in mm.vmas.iter() {
            if v.vm_end <= start {
                continue;
            }
            if v.start_gap() >= start + len {
                return Ok(start);
            }
            start = start.max(v.vm_end);
        }
        if start + len <= TASK_SIZE {
            return Ok(start);
        }
        Err(Errno::ENOMEM)
    }
}
