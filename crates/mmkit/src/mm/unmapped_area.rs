//! Where a new mapping goes: `__get_unmapped_area` (`mm/mmap.c`), the x86-64 top-down search
//! (`arch_get_unmapped_area_topdown`, `vm_unmapped_area`: the highest gap below `mmap_base`
//! that keeps the stack guard gap, bottom-up from `TASK_UNMAPPED_BASE` when that fails), and
//! `__thp_get_unmapped_area` (`mm/huge_memory.c`).
//!
//! A kernel built with transparent huge pages (every distribution's) places a mapping that
//! could hold a PMD-sized page so that it can: a private anonymous mapping whose length is a
//! multiple of 2 MiB (and that has no hint), or a mapping of a file whose file system asks
//! for it (`file_operations.get_unmapped_area = thp_get_unmapped_area`: ext4, xfs…, told by
//! [`FileAttr::thp_unmapped_area`](crate::fs::inode::FileAttr::thp_unmapped_area)) and that
//! covers a 2 MiB-aligned 2 MiB piece of the file. Such a mapping can then hold anonymous
//! THPs ([`crate::mm::huge_memory`]) or file THPs ([`crate::mm::huge_file`]), and programs
//! see the addresses Linux gives (python3's libcrypto lands 2 MiB-aligned on the host, and
//! here).

use crate::addr::{align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::errno::Errno;
use crate::fs::inode::File;
use crate::mm::mm_types::{MmStruct, MMAP_MIN_ADDR};
use crate::mm::mmap::{
    MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_SHARED, MAP_SHARED_VALIDATE, MAP_TYPE_MASK,
};
use crate::Kernel;
use alloc::sync::Arc;

/// `HPAGE_PMD_SIZE`: what one PMD entry maps.
pub const PMD_SIZE: u64 = 2 << 20;

impl Kernel {
    /// `mm_get_unmapped_area` (`arch_get_unmapped_area_topdown`): `MAP_FIXED` as given; a
    /// usable hint as given; otherwise the highest gap below `mmap_base` (`vm_unmapped_area`
    /// top-down, keeping the guard gap below stacks), or bottom-up from
    /// `TASK_UNMAPPED_BASE` (a third of the address space) when that fails. The limits are
    /// the address space's own (`task_size`: 4 GiB for a 32-bit task). `ENOMEM` when
    /// nothing fits.
    pub fn get_unmapped_area(
        &self,
        mm: &MmStruct,
        addr: u64,
        len: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        let task_size = mm.task_size;
        if len > task_size.saturating_sub(MMAP_MIN_ADDR) {
            return Err(Errno::ENOMEM);
        }
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if addr > task_size - len {
                return Err(Errno::ENOMEM);
            }
            return Ok(addr);
        }
        if addr != 0 {
            let a = align_up(addr, PAGE_SIZE);
            let next_ok = mm.find_vma(a).is_none_or(|v| a + len <= v.start_gap());
            let prev_ok = mm.find_vma_prev(a).is_none_or(|p| p.vm_end <= a);
            if a <= task_size - len && a >= MMAP_MIN_ADDR && next_ok && prev_ok {
                return Ok(a);
            }
        }
        let low = MMAP_MIN_ADDR.max(PAGE_SIZE);
        let mut gap_end = mm.mmap_base.min(task_size);
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
        let mut start = align_up(task_size / 3, PAGE_SIZE);
        for v in mm.vmas.iter() {
            if v.vm_end <= start {
                continue;
            }
            if v.start_gap() >= start + len {
                return Ok(start);
            }
            start = start.max(v.vm_end);
        }
        if start + len <= task_size {
            return Ok(start);
        }
        Err(Errno::ENOMEM)
    }

    /// `__get_unmapped_area` (`mm/mmap.c`): the placement rule of the file's file system
    /// (`thp_get_unmapped_area` where its `file_operations` name it), Linux 6.x's
    /// THP alignment of private anonymous mappings that are a multiple of 2 MiB and have no
    /// hint, otherwise [`Kernel::get_unmapped_area`]; then the result is checked against the
    /// address space (`ENOMEM` past `task_size`, `EINVAL` unaligned).
    pub fn get_unmapped_area_vmflags(
        &self,
        mm: &MmStruct,
        file: Option<&Arc<File>>,
        addr: u64,
        len: u64,
        pgoff: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        let shared = matches!(flags & MAP_TYPE_MASK, MAP_SHARED | MAP_SHARED_VALIDATE);
        let addr = match file {
            Some(f) if f.inode.data().attr().thp_unmapped_area => {
                self.thp_get_unmapped_area(mm, addr, len, pgoff, flags)?
            }
            // Shared anonymous memory goes through shmem_get_unmapped_area, which aligns
            // only for shmem THP (off by default).
            None if !shared && addr == 0 && len.is_multiple_of(PMD_SIZE) => {
                self.thp_get_unmapped_area(mm, addr, len, 0, flags)?
            }
            _ => self.get_unmapped_area(mm, addr, len, flags)?,
        };
        if addr > mm.task_size.saturating_sub(len) {
            return Err(Errno::ENOMEM);
        }
        if addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(addr)
    }

    /// `thp_get_unmapped_area_vmflags` / `__thp_get_unmapped_area` (`mm/huge_memory.c`,
    /// Linux 6.7+): for a mapping covering at least one whole 2 MiB-aligned stretch of its
    /// file offsets, ask for 2 MiB more than needed and place the mapping so that file
    /// offset and address agree modulo 2 MiB — in a top-down layout, the highest such place
    /// (`ret + PMD_SIZE` when the found area is already aligned). Not for 32-bit tasks, not
    /// when a hint was honoured; otherwise (or when the padded area does not fit) the
    /// ordinary placement.
    fn thp_get_unmapped_area(
        &self,
        mm: &MmStruct,
        addr: u64,
        len: u64,
        pgoff: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        let off = pgoff.wrapping_shl(PAGE_SHIFT);
        let aligned = (|| {
            if mm.compat {
                return None;
            }
            let off_end = off.checked_add(len)?;
            let off_align = off.checked_next_multiple_of(PMD_SIZE)?;
            if off_end <= off_align || off_end - off_align < PMD_SIZE {
                return None;
            }
            let len_pad = len.checked_add(PMD_SIZE)?;
            off.checked_add(len_pad)?;
            let ret = self.get_unmapped_area(mm, addr, len_pad, flags).ok()?;
            if ret == addr {
                return Some(addr);
            }
            let off_sub = off.wrapping_sub(ret) & (PMD_SIZE - 1);
            if off_sub == 0 {
                // MMF_TOPDOWN: every layout here is top-down.
                return Some(ret + PMD_SIZE);
            }
            Some(ret + off_sub)
        })();
        match aligned {
            Some(a) => Ok(a),
            None => self.get_unmapped_area(mm, addr, len, flags),
        }
    }
}
