//! The x86-64 page-fault entry (`arch/x86/mm/fault.c`): `do_user_addr_fault` finds the VMA,
//! grows a `VM_GROWSDOWN` stack (`expand_stack`, bounded by `RLIMIT_STACK` and the stack guard
//! gap), applies `access_error`, and calls `handle_mm_fault`. What it cannot handle becomes the
//! signal Linux would deliver: `SIGSEGV` with `SEGV_MAPERR` (nothing mapped) or `SEGV_ACCERR`
//! (mapped, access not allowed), `SIGBUS` with `BUS_ADRERR` (past the end of a file).

use crate::arch::x86_64::tlb::Access;
use crate::arch::x86_64::tlb::{PageFault, X86_PF_INSTR, X86_PF_PROT, X86_PF_WRITE};
use crate::cpu::CpuGuard;
use crate::mm::memory::{FaultKind, VmFaultError};
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, STACK_GUARD_GAP, TASK_SIZE};
use crate::Kernel;

/// `SIGBUS`.
pub const SIGBUS: i32 = 7;
/// `SIGKILL`.
pub const SIGKILL: i32 = 9;
/// `SIGSEGV`.
pub const SIGSEGV: i32 = 11;
/// `SEGV_MAPERR`: address not mapped to an object.
pub const SEGV_MAPERR: i32 = 1;
/// `SEGV_ACCERR`: invalid permissions for a mapped object.
pub const SEGV_ACCERR: i32 = 2;
/// `BUS_ADRERR`: nonexistent physical address (access past the end of a mapped file).
pub const BUS_ADRERR: i32 = 2;

/// A signal a fault delivers (`force_sig_fault`): number, `si_code`, `si_addr`. `SIGKILL`
/// stands for the out-of-memory outcome (`pagefault_out_of_memory`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Signal number.
    pub signo: i32,
    /// `si_code`.
    pub code: i32,
    /// `si_addr`: the faulting address.
    pub addr: u64,
}

impl core::fmt::Display for Signal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match (self.signo, self.code) {
            (SIGSEGV, SEGV_MAPERR) => "SIGSEGV (SEGV_MAPERR)",
            (SIGSEGV, SEGV_ACCERR) => "SIGSEGV (SEGV_ACCERR)",
            (SIGBUS, BUS_ADRERR) => "SIGBUS (BUS_ADRERR)",
            (SIGKILL, _) => "SIGKILL (out of memory)",
            _ => "signal",
        };
        write!(f, "{name} at {:#x}", self.addr)
    }
}

impl Signal {
    fn segv(addr: u64, code: i32) -> Self {
        Signal {
            signo: SIGSEGV,
            code,
            addr,
        }
    }
}

/// `access_error`: whether the VMA forbids the access the error code describes.
fn access_error(error_code: u32, vma: &VmArea) -> bool {
    if error_code & X86_PF_WRITE != 0 {
        return !vma.vm_flags.contains(VmFlags::VM_WRITE);
    }
    // A read or fetch of a present page that faulted: a protection violation (for a fetch,
    // the NX bit of a non-exec VMA).
    if error_code & X86_PF_PROT != 0 {
        return true;
    }
    // Not present: any access right makes the page mappable (x86 cannot map exec- or
    // write-only), so only PROT_NONE refuses.
    !vma.vm_flags
        .intersects(VmFlags::VM_READ | VmFlags::VM_WRITE | VmFlags::VM_EXEC)
}

impl Kernel {
    /// `expand_stack` → `expand_downwards`: grow the `VM_GROWSDOWN` VMA ending at `vm_end` down
    /// to the page of `addr`, unless that brings it within the guard gap of the VMA below,
    /// past `RLIMIT_STACK`, or its page offset below 0.
    fn expand_stack(&self, mm: &mut MmStruct, vm_end: u64, addr: u64) -> bool {
        let Some(id) = mm.vmas.id_of(vm_end) else {
            return false;
        };
        let v = mm.vma(id);
        let new_start = addr & !(crate::PAGE_SIZE - 1);
        if new_start < crate::mm::mm_types::MMAP_MIN_ADDR {
            return false;
        }
        if let Some(prev) = mm.find_vma_prev(v.vm_start) {
            if prev.vm_end > new_start.saturating_sub(STACK_GUARD_GAP)
                && !prev.vm_flags.contains(VmFlags::VM_GROWSDOWN)
            {
                return false;
            }
        }
        let grow = (v.vm_start - new_start) >> crate::PAGE_SHIFT;
        // The offset moves down with the start and cannot go below 0 (`grow <= vm_pgoff`: a
        // growsdown file mapping near the start of its file, or an anonymous one mremap'd
        // above where it was made, cannot grow further).
        if grow > v.vm_pgoff {
            return false;
        }
        // acct_stack_growth: the size limit and the address-space size.
        if v.vm_end - new_start > mm.rlimit_stack {
            return false;
        }
        if !mm.may_expand_vm(v.vm_flags, grow) {
            return false;
        }
        // expand_downwards: in place, under the anon_vma lock (`vma_prepare`).
        let (end, pgoff) = (v.vm_end, v.vm_pgoff - grow);
        self.vma_set_range(mm, id, new_start, end, pgoff);
        true
    }

    /// `do_user_addr_fault`: handle the fault `pf` raised by an access in `mm`, or return the
    /// signal the task gets. Kernel-mode accesses (`copy_to_user` and friends) come here too;
    /// their caller turns a signal into `EFAULT`.
    pub fn do_user_addr_fault(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        pf: PageFault,
    ) -> Result<FaultKind, Signal> {
        let addr = pf.address;
        if addr >= TASK_SIZE {
            // A user-space access to a kernel address (`do_kern_addr_fault` → bad_area).
            return Err(Signal::segv(addr, SEGV_MAPERR));
        }
        let Some(mut id) = mm.find_vma_id(addr) else {
            return Err(Signal::segv(addr, SEGV_MAPERR));
        };
        if mm.vma(id).vm_start > addr {
            let v = mm.vma(id);
            if !v.vm_flags.contains(VmFlags::VM_GROWSDOWN) || !self.expand_stack(mm, v.vm_end, addr)
            {
                return Err(Signal::segv(addr, SEGV_MAPERR));
            }
            match mm.find_vma_id(addr) {
                Some(grown) => id = grown,
                None => return Err(Signal::segv(addr, SEGV_MAPERR)),
            }
        }
        if access_error(pf.error_code, mm.vma(id)) {
            return Err(Signal::segv(addr, SEGV_ACCERR));
        }
        let access = Access {
            write: pf.error_code & X86_PF_WRITE != 0,
            user: pf.error_code & crate::arch::x86_64::tlb::X86_PF_USER != 0,
            exec: pf.error_code & X86_PF_INSTR != 0,
        };
        match self.handle_mm_fault(cpu, mm, id, addr, access) {
            Ok(k) => Ok(k),
            Err(VmFaultError::Sigbus) => Err(Signal {
                signo: SIGBUS,
                code: BUS_ADRERR,
                addr,
            }),
            Err(VmFaultError::Sigsegv) => Err(Signal::segv(addr, SEGV_ACCERR)),
            Err(VmFaultError::Oom) => Err(Signal {
                signo: SIGKILL,
                code: 0,
                addr,
            }),
        }
    }
}
