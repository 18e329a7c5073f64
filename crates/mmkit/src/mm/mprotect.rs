//! `mprotect` (`mm/mprotect.c`: `do_mprotect_pkey`, `mprotect_fixup`, `change_protection`).

use crate::addr::{align_up, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mm_types::{MmStruct, VmFlags, TASK_SIZE};
use crate::mm::mmap::{
    accountable, vm_flags_for, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_SEM, PROT_WRITE,
};
use crate::mm::mmu_gather::MmuGather;
use crate::Kernel;

impl Kernel {
    /// `mprotect` (`do_mprotect_pkey` + `mprotect_fixup`): new `VM_READ|VM_WRITE|VM_EXEC` for
    /// every VMA in `[addr, addr + len)`, splitting at the edges, rewriting the present PTEs
    /// (`change_protection`, keeping Accessed/Dirty), flushing the TLB and merging with the
    /// neighbours. `EINVAL` for an unaligned address or unknown bits, `ENOMEM` when the range
    /// is not fully mapped (VMAs before the hole keep their new protection, as in Linux),
    /// `EACCES` for a permission the mapping may never have (`VM_MAY*`).
    pub fn mprotect(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
        prot: u32,
    ) -> Result<(), Errno> {
        if addr & (PAGE_SIZE - 1) != 0
            || prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0
        {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let end = addr
            .checked_add(align_up(len, PAGE_SIZE))
            .filter(|&e| e <= TASK_SIZE)
            .ok_or(Errno::ENOMEM)?;
        let want = vm_flags_for(prot, MAP_PRIVATE)
            & (VmFlags::VM_READ | VmFlags::VM_WRITE | VmFlags::VM_EXEC);
        let mut cur = addr;
        while cur < end {
            let Some(id) = mm.find_vma_id(cur).filter(|&id| mm.vma(id).vm_start <= cur) else {
                return Err(Errno::ENOMEM);
            };
            let v = mm.vma(id);
            let may = [
                (VmFlags::VM_READ, VmFlags::VM_MAYREAD),
                (VmFlags::VM_WRITE, VmFlags::VM_MAYWRITE),
                (VmFlags::VM_EXEC, VmFlags::VM_MAYEXEC),
            ];
            if may
                .iter()
                .any(|&(f, m)| want.contains(f) && !v.vm_flags.contains(m))
            {
                return Err(Errno::EACCES);
            }
            let (lo, hi) = (v.vm_start.max(cur), v.vm_end.min(end));
            let mut new_flags =
                (v.vm_flags - (VmFlags::VM_READ | VmFlags::VM_WRITE | VmFlags::VM_EXEC)) | want;
            // mprotect_fixup charges private memory that becomes writable.
            if accountable(new_flags) {
                new_flags |= VmFlags::VM_ACCOUNT;
            }
            if new_flags != v.vm_flags {
                let prot_bits = self.vma_modify_flags(cpu, mm, id, lo, hi, new_flags)?;
                // change_protection: present PTEs get the new bits, keeping the Accessed and
                // Dirty bits the MMU may be setting meanwhile; what lost a permission is
                // flushed.
                self.change_huge_pmds(cpu, mm, lo, hi, prot_bits);
                let mut tlb = MmuGather::new(self, cpu, &mm.pt);
                let mut c = self.pte_cursor(&mm.pt, lo, hi);
                while let Some((_, pte)) = c.next_entry() {
                    if pte.is_present() {
                        c.update(&mut tlb, |p| p.modify(prot_bits));
                    }
                }
                drop(c);
                tlb.finish();
            }
            cur = hi;
        }
        Ok(())
    }
}
