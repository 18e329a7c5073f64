//! `mlock`/`munlock` (`mm/mlock.c`: `do_mlock`, `apply_vma_lock_flags`, `mlock_fixup`) and
//! `msync` (`mm/msync.c`).
//!
//! Locked VMAs carry `VM_LOCKED` (split off and merged back like any flag change) and are
//! faulted in at once (`__mm_populate`); the reverse map refuses to unmap their pages.
//! `RLIMIT_MEMLOCK` bounds `locked_vm` unless the owner has `CAP_IPC_LOCK` (root);
//! `mlockall(MCL_FUTURE)` makes `VM_LOCKED` a default flag of new mappings (`def_flags`).

use crate::addr::{align_down, align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mm_types::{MmStruct, VmFlags, TASK_SIZE};
use crate::Kernel;

impl Kernel {
    /// `apply_vma_lock_flags`: set or clear `VM_LOCKED` on every VMA of `[start, end)`;
    /// `ENOMEM` at the first hole (after changing what precedes it, as Linux).
    fn apply_vma_lock_flags(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        end: u64,
        lock: bool,
    ) -> Result<(), Errno> {
        let mut cur = start;
        while cur < end {
            let Some(id) = mm.find_vma_id(cur).filter(|&id| mm.vma(id).vm_start <= cur) else {
                return Err(Errno::ENOMEM);
            };
            let v = mm.vma(id);
            let (lo, hi) = (v.vm_start.max(cur), v.vm_end.min(end));
            let new_flags = if lock {
                v.vm_flags | VmFlags::VM_LOCKED
            } else {
                v.vm_flags - (VmFlags::VM_LOCKED | VmFlags::VM_LOCKONFAULT)
            };
            // mlock_fixup leaves special mappings alone.
            if new_flags != v.vm_flags && !v.vm_flags.intersects(crate::mm::mmap::VM_SPECIAL) {
                self.vma_modify_flags(cpu, mm, id, lo, hi, new_flags)?;
                let pages = (hi - lo) >> PAGE_SHIFT;
                if lock {
                    mm.locked_vm += pages;
                } else {
                    mm.locked_vm -= pages;
                }
            }
            cur = hi;
        }
        Ok(())
    }

    /// `can_do_mlock` + the `RLIMIT_MEMLOCK` check of `do_mlock`: may `npages` more be
    /// locked?
    pub(crate) fn mlock_allowed(&self, mm: &MmStruct, npages: u64) -> bool {
        mm.cap_ipc_lock || mm.locked_vm.saturating_add(npages) <= mm.rlimit_memlock >> PAGE_SHIFT
    }

    fn lock_range(start: u64, len: u64) -> Result<(u64, u64), Errno> {
        let end = align_up(start.checked_add(len).ok_or(Errno::EINVAL)?, PAGE_SIZE);
        let start = align_down(start, PAGE_SIZE);
        if end > TASK_SIZE || end < start {
            return Err(Errno::ENOMEM);
        }
        Ok((start, end))
    }

    /// `mlock(start, len)`: lock the pages of the range (rounded out to pages) in memory,
    /// faulting them in now.
    pub fn mlock(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let (start, end) = Self::lock_range(start, len)?;
        // count_mm_mlocked_page_nr: pages of the range already locked do not count again.
        let already: u64 = mm
            .vmas()
            .filter(|v| v.vm_flags.contains(VmFlags::VM_LOCKED))
            .map(|v| (v.vm_end.min(end).saturating_sub(v.vm_start.max(start))) >> PAGE_SHIFT)
            .sum();
        if !self.mlock_allowed(mm, ((end - start) >> PAGE_SHIFT) - already) {
            return Err(Errno::ENOMEM);
        }
        self.apply_vma_lock_flags(cpu, mm, start, end, true)?;
        self.mm_populate(cpu, mm, start, end - start);
        Ok(())
    }

    /// `mlockall(flags)`: `MCL_CURRENT` locks every mapping now, `MCL_FUTURE` every later one
    /// (`def_flags`), `MCL_ONFAULT` without faulting in. `EINVAL` for unknown bits or
    /// `MCL_ONFAULT` alone, `ENOMEM` past `RLIMIT_MEMLOCK`.
    pub fn mlockall(&self, cpu: &CpuGuard<'_>, mm: &mut MmStruct, flags: u32) -> Result<(), Errno> {
        const MCL_CURRENT: u32 = 1;
        const MCL_FUTURE: u32 = 2;
        const MCL_ONFAULT: u32 = 4;
        if flags == 0
            || flags & !(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0
            || flags == MCL_ONFAULT
        {
            return Err(Errno::EINVAL);
        }
        if flags & MCL_CURRENT != 0
            && !mm.cap_ipc_lock
            && mm.total_vm() > mm.rlimit_memlock >> PAGE_SHIFT
        {
            return Err(Errno::ENOMEM);
        }
        mm.def_flags -= VmFlags::VM_LOCKED | VmFlags::VM_LOCKONFAULT;
        if flags & MCL_FUTURE != 0 {
            mm.def_flags |= VmFlags::VM_LOCKED;
            if flags & MCL_ONFAULT != 0 {
                mm.def_flags |= VmFlags::VM_LOCKONFAULT;
            }
        }
        if flags & MCL_CURRENT != 0 {
            let ranges: alloc::vec::Vec<(u64, u64)> =
                mm.vmas().map(|v| (v.vm_start, v.vm_end)).collect();
            for (lo, hi) in ranges {
                // Special mappings are skipped inside; a hole cannot happen here.
                self.apply_vma_lock_flags(cpu, mm, lo, hi, true)?;
            }
            if flags & MCL_ONFAULT == 0 {
                let ranges: alloc::vec::Vec<(u64, u64)> = mm
                    .vmas()
                    .filter(|v| v.vm_flags.contains(VmFlags::VM_LOCKED))
                    .map(|v| (v.vm_start, v.vm_end))
                    .collect();
                for (lo, hi) in ranges {
                    self.mm_populate(cpu, mm, lo, hi - lo);
                }
            }
        }
        Ok(())
    }

    /// `munlockall`: unlock everything and stop locking new mappings.
    pub fn munlockall(&self, cpu: &CpuGuard<'_>, mm: &mut MmStruct) -> Result<(), Errno> {
        mm.def_flags -= VmFlags::VM_LOCKED | VmFlags::VM_LOCKONFAULT;
        let ranges: alloc::vec::Vec<(u64, u64)> = mm
            .vmas()
            .filter(|v| v.vm_flags.contains(VmFlags::VM_LOCKED))
            .map(|v| (v.vm_start, v.vm_end))
            .collect();
        for (lo, hi) in ranges {
            self.apply_vma_lock_flags(cpu, mm, lo, hi, false)?;
        }
        Ok(())
    }

    /// `munlock(start, len)`.
    pub fn munlock(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let (start, end) = Self::lock_range(start, len)?;
        self.apply_vma_lock_flags(cpu, mm, start, end, false)
    }

    /// `msync(start, len, flags)` (`mm/msync.c`): with `MS_SYNC` or `MS_ASYNC`, write back
    /// the dirty pages of every shared file mapping in the range (writeback here completes
    /// before returning, so both behave as `MS_SYNC`); `MS_INVALIDATE` is accepted. `EINVAL`
    /// for an unaligned start, unknown flags, or `MS_SYNC` with `MS_ASYNC`; `ENOMEM` when
    /// part of the range is unmapped (after syncing what is); `EBUSY` for `MS_INVALIDATE` on
    /// locked memory; `EIO` when the store fails.
    pub fn msync(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        start: u64,
        len: u64,
        flags: u32,
    ) -> Result<(), Errno> {
        const MS_ASYNC: u32 = 1;
        const MS_INVALIDATE: u32 = 2;
        const MS_SYNC: u32 = 4;
        if flags & !(MS_ASYNC | MS_INVALIDATE | MS_SYNC) != 0
            || start & (PAGE_SIZE - 1) != 0
            || flags & (MS_ASYNC | MS_SYNC) == MS_ASYNC | MS_SYNC
        {
            return Err(Errno::EINVAL);
        }
        let end = start
            .checked_add(align_up(len, PAGE_SIZE))
            .filter(|&e| e <= TASK_SIZE)
            .ok_or(Errno::ENOMEM)?;
        let mut cur = start;
        let mut unmapped = false;
        while cur < end {
            let Some(v) = mm.find_vma(cur) else {
                unmapped = true;
                break;
            };
            if v.vm_start >= end {
                unmapped = true;
                break;
            }
            if v.vm_start > cur {
                unmapped = true;
            }
            if flags & MS_INVALIDATE != 0 && v.vm_flags.contains(VmFlags::VM_LOCKED) {
                return Err(Errno::EBUSY);
            }
            if let (Some(f), true) = (&v.vm_file, v.vm_flags.contains(VmFlags::VM_SHARED)) {
                self.write_inode_now(cpu, &f.inode)
                    .map_err(|_| Errno::EIO)?;
            }
            cur = v.vm_end;
        }
        if unmapped {
            Err(Errno::ENOMEM)
        } else {
            Ok(())
        }
    }
}
