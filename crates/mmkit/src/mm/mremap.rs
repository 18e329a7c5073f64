//! `mremap` (`mm/mremap.c`): shrink in place, grow in place when the space after the VMA is
//! free (`vma_expandable`), otherwise move with `MREMAP_MAYMOVE` (to `get_unmapped_area`'s
//! choice, or to `new_addr` with `MREMAP_FIXED`), keeping the pages: `move_vma` copies the
//! VMA (`copy_vma`, same file and page offset — an anonymous VMA keeps its original linear
//! index) and moves the PTEs (`move_page_tables`) without touching the pages' counts, then
//! unmaps the old range unless `MREMAP_DONTUNMAP`.

use crate::addr::{align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::pgtable::Pte;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, TASK_SIZE};
use crate::mm::mmap::{MAP_FIXED, MAP_PRIVATE, MAP_SHARED, VM_SPECIAL};
use crate::mm::mmu_gather::MmuGather;
use crate::Kernel;
use alloc::vec::Vec;

/// `MREMAP_MAYMOVE`.
pub const MREMAP_MAYMOVE: u32 = 1;
/// `MREMAP_FIXED`.
pub const MREMAP_FIXED: u32 = 2;
/// `MREMAP_DONTUNMAP`.
pub const MREMAP_DONTUNMAP: u32 = 4;

impl Kernel {
    /// `mremap(old_addr, old_len, new_len, flags, new_addr)`: returns the new address.
    /// `EINVAL` for bad flags or alignment, `EFAULT` when the old range is not inside one
    /// VMA (or a special mapping would grow), `ENOMEM` when it cannot grow in place and may
    /// not move, or nothing fits.
    #[allow(clippy::too_many_arguments)] // mremap(2)'s own arguments plus the CPU and the mm
    pub fn mremap(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
            || addr & (PAGE_SIZE - 1) != 0
            || (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 && flags & MREMAP_MAYMOVE == 0)
        {
            return Err(Errno::EINVAL);
        }
        let old_len = align_up(old_len, PAGE_SIZE);
        let new_len = align_up(new_len, PAGE_SIZE);
        if new_len == 0 || new_len > TASK_SIZE || old_len > TASK_SIZE {
            return Err(Errno::EINVAL);
        }
        if flags & MREMAP_DONTUNMAP != 0 && old_len != new_len {
            return Err(Errno::EINVAL);
        }
        if flags & MREMAP_FIXED != 0 {
            return self.mremap_to(cpu, mm, addr, old_len, new_len, flags, new_addr);
        }
        // Shrinking in place.
        if old_len >= new_len && flags & MREMAP_DONTUNMAP == 0 {
            if old_len > new_len {
                self.munmap(cpu, mm, addr + new_len, old_len - new_len)?;
            }
            return Ok(addr);
        }
        let vma = self.vma_to_resize(mm, addr, old_len, new_len, flags)?;
        // Growing in place.
        if flags & MREMAP_DONTUNMAP == 0
            && vma.vm_end == addr + old_len
            && self.vma_expandable(mm, &vma, new_len - old_len)
        {
            // vma_expand in place, then merge with what follows (vma_merge_extend).
            let delta = new_len - old_len;
            let id = mm.vmas.id_of(vma.vm_end).ok_or(Errno::EFAULT)?;
            self.vma_set_range(mm, id, vma.vm_start, vma.vm_end + delta, vma.vm_pgoff);
            if vma.vm_flags.contains(VmFlags::VM_LOCKED) {
                mm.locked_vm += delta >> PAGE_SHIFT;
            }
            self.vma_merge_existing_range(mm, id);
            return Ok(addr);
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let map_flags = if vma.vm_flags.contains(VmFlags::VM_MAYSHARE) {
            MAP_SHARED
        } else {
            MAP_PRIVATE
        };
        // get_unmapped_area(vma->vm_file, 0, new_len, pgoff of addr, map_flags): the file's
        // placement rule (and anonymous THP alignment) applies to the moved range too.
        let pgoff = vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT);
        let to =
            self.get_unmapped_area_vmflags(mm, vma.vm_file.as_ref(), 0, new_len, pgoff, map_flags)?;
        self.move_vma(cpu, mm, &vma, addr, old_len, new_len, to, flags)
    }

    /// `mremap_to`: `MREMAP_FIXED` — clear the target, shrink first if asked, then move.
    #[allow(clippy::too_many_arguments)]
    fn mremap_to(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        mut old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        if new_addr & (PAGE_SIZE - 1) != 0 || new_addr > TASK_SIZE - new_len {
            return Err(Errno::EINVAL);
        }
        // The ranges may not overlap.
        if addr + old_len > new_addr && new_addr + new_len > addr {
            return Err(Errno::EINVAL);
        }
        if mm.map_count() + 2 >= mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        self.munmap(cpu, mm, new_addr, new_len)?;
        if old_len > new_len {
            self.munmap(cpu, mm, addr + new_len, old_len - new_len)?;
            old_len = new_len;
        }
        let vma = self.vma_to_resize(mm, addr, old_len, new_len, flags)?;
        self.get_unmapped_area(mm, new_addr, new_len, MAP_FIXED)?;
        self.move_vma(cpu, mm, &vma, addr, old_len, new_len, new_addr, flags)
    }

    /// `vma_to_resize`: the VMA holding all of `[addr, addr + old_len)`, if it may take
    /// `new_len`.
    fn vma_to_resize(
        &self,
        mm: &MmStruct,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
    ) -> Result<VmArea, Errno> {
        let vma = mm.vma_lookup(addr).cloned().ok_or(Errno::EFAULT)?;
        if old_len > vma.vm_end - addr {
            return Err(Errno::EFAULT);
        }
        if new_len > old_len
            && vma
                .vm_flags
                .intersects(VmFlags::VM_DONTEXPAND | VmFlags::VM_PFNMAP)
        {
            return Err(Errno::EFAULT);
        }
        if flags & MREMAP_DONTUNMAP != 0
            && (vma.vm_flags.intersects(VM_SPECIAL) || vma.vm_flags.contains(VmFlags::VM_SHARED))
        {
            return Err(Errno::EINVAL);
        }
        let grow = new_len.saturating_sub(old_len) >> crate::PAGE_SHIFT;
        if vma.vm_flags.contains(VmFlags::VM_LOCKED) && !self.mlock_allowed(mm, grow) {
            return Err(Errno::EAGAIN);
        }
        if !mm.may_expand_vm(vma.vm_flags, grow) {
            return Err(Errno::ENOMEM);
        }
        Ok(vma)
    }

    /// `vma_expandable`: `delta` more bytes after the VMA are free and in user space.
    fn vma_expandable(&self, mm: &MmStruct, vma: &VmArea, delta: u64) -> bool {
        let end = vma.vm_end + delta;
        if end > TASK_SIZE || end < vma.vm_end {
            return false;
        }
        mm.find_vma(vma.vm_end).is_none_or(|n| n.start_gap() >= end)
    }

    /// `move_vma`: a copy of the VMA at `new_addr` (`copy_vma`), the PTEs moved there
    /// (`move_page_tables`), the old range unmapped (unless `MREMAP_DONTUNMAP`).
    #[allow(clippy::too_many_arguments)]
    fn move_vma(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        vma: &VmArea,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        new_addr: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        if mm.map_count() + 3 > mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        let moved = old_len.min(new_len);
        self.move_page_tables(cpu, mm, old_addr, new_addr, moved)?;
        let new = VmArea {
            vm_start: new_addr,
            vm_end: new_addr + new_len,
            vm_pgoff: vma.linear_page_index(old_addr),
            ..vma.clone()
        };
        self.vma_merge_new_range(mm, new);
        if vma.vm_flags.contains(VmFlags::VM_LOCKED) {
            mm.locked_vm += new_len >> PAGE_SHIFT;
        }
        if flags & MREMAP_DONTUNMAP == 0 {
            self.munmap(cpu, mm, old_addr, old_len)?;
        }
        Ok(new_addr)
    }

    /// `move_page_tables`: every PTE of `[old, old + len)` to the same offset at `new`, the
    /// pages keeping their counts; the old range is flushed from every TLB. If a page table
    /// for the target cannot be allocated, what moved goes back and `ENOMEM` is returned.
    fn move_page_tables(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        old: u64,
        new: u64,
        len: u64,
    ) -> Result<(), Errno> {
        // move_huge_pmd is not done: huge entries are split and move as PTEs.
        self.split_huge_pmd_range(cpu, mm, old, old + len);
        // The target's tables first, so a failure leaves everything where it was.
        let mut entries: Vec<(u64, Pte)> = Vec::new();
        {
            let mut c = self.pte_cursor(&mm.pt, old, old + len);
            while let Some(e) = c.next_entry() {
                entries.push(e);
            }
        }
        let mut to = self.pte_cursor(&mm.pt, new, new + len);
        for &(va, _) in &entries {
            to.seek_alloc(cpu, new + (va - old))?;
        }
        drop(to);
        // move_ptes: take each entry out (an exchange keeps the MMU's Accessed/Dirty bits),
        // then put them at the new address (one table lock at a time: the two ranges may share
        // a table); the old translations are flushed at the end. The pages stay mapped
        // throughout, so nothing is freed.
        let mut tlb = MmuGather::new(self, cpu, &mm.pt);
        let mut from = self.pte_cursor(&mm.pt, old, old + len);
        for e in entries.iter_mut() {
            e.1 = if from.seek(e.0) {
                from.clear(&mut tlb)
            } else {
                Pte(0)
            };
        }
        drop(from);
        let mut to = self.pte_cursor(&mm.pt, new, new + len);
        for &(va, pte) in entries.iter().filter(|e| !e.1.is_none()) {
            let there = to.seek(new + (va - old));
            debug_assert!(there, "target table allocated above");
            to.install(Pte(0), pte)
                .expect("mremap's target range was unmapped");
        }
        drop(to);
        tlb.finish();
        Ok(())
    }
}
