//! Access to user memory through the MMU (`include/linux/uaccess.h`,
//! `arch/x86/lib/usercopy_64.c`): `copy_to_user`, `copy_from_user`, `clear_user`,
//! `get_user`/`put_user` for the kernel (a fault it cannot resolve is `EFAULT`), and the
//! simulated task's own loads, stores and instruction fetches (a fault it cannot resolve is
//! the signal the task receives).
//!
//! Every access goes page by page through `mmu_access` on the calling CPU (its TLB, then a
//! table walk; the copy inside the access window a flush waits for); a fault goes to `do_user_addr_fault` and the access is retried, exactly the
//! loop the hardware and the exception-table fixup make.

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::arch::x86_64::fault::Signal;
use crate::arch::x86_64::tlb::Access;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::memory::FaultKind;
use crate::mm::mm_types::{MmStruct, TASK_SIZE};
use crate::Kernel;

/// Faults a task took (`task_struct`'s `min_flt` / `maj_flt`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Minor faults.
    pub min_flt: u64,
    /// Major faults.
    pub maj_flt: u64,
}

impl FaultCounts {
    /// Count one more fault of kind `k`.
    pub fn add(&mut self, k: FaultKind) {
        match k {
            FaultKind::Minor => self.min_flt += 1,
            FaultKind::Major => self.maj_flt += 1,
        }
    }
}

/// `access_ok`: the whole range lies in user space.
fn access_ok(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|e| e <= TASK_SIZE)
}

impl Kernel {
    /// Translate `[addr, addr + len)` page by page for `access`, faulting as needed, and call
    /// `f(pa, offset, n)` for each piece (`offset` into the caller's buffer).
    fn user_walk(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(&Self, PhysAddr, usize, usize),
    ) -> Result<(), Signal> {
        let mut done = 0usize;
        while done < len {
            let va = addr + done as u64;
            let n = (PAGE_SIZE - (va & (PAGE_SIZE - 1))).min((len - done) as u64) as usize;
            // A fault is handled and the access retried; a handler that keeps succeeding
            // without making the access possible would be a bug, so the retries are bounded.
            let mut tries = 0;
            loop {
                match self.mmu_access(cpu, &mm.pt, va, access, |pa| f(self, PhysAddr(pa), done, n))
                {
                    Ok(()) => break,
                    Err(pf) => {
                        tries += 1;
                        assert!(tries < 8, "fault at {va:#x} not resolved by its handler");
                        let k = self.do_user_addr_fault(cpu, mm, pf)?;
                        mm.faults.add(k);
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// `copy_to_user`: write `src` at user address `addr` in `mm`. `EFAULT` when any byte
    /// cannot be written (bytes before it may have been).
    pub fn copy_to_user(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        src: &[u8],
    ) -> Result<(), Errno> {
        if !access_ok(addr, src.len() as u64) {
            return Err(Errno::EFAULT);
        }
        self.user_walk(
            cpu,
            mm,
            addr,
            src.len(),
            Access::KERNEL_WRITE,
            |k, pa, off, n| k.phys_write(pa, &src[off..off + n]),
        )
        .map_err(|_| Errno::EFAULT)
    }

    /// `copy_from_user`: read `dst.len()` bytes at user address `addr` in `mm`.
    pub fn copy_from_user(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        dst: &mut [u8],
        addr: u64,
    ) -> Result<(), Errno> {
        if !access_ok(addr, dst.len() as u64) {
            return Err(Errno::EFAULT);
        }
        let len = dst.len();
        self.user_walk(cpu, mm, addr, len, Access::KERNEL_READ, |k, pa, off, n| {
            k.phys_read(pa, &mut dst[off..off + n])
        })
        .map_err(|_| Errno::EFAULT)
    }

    /// `clear_user`: zero `len` bytes at `addr`.
    pub fn clear_user(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
    ) -> Result<(), Errno> {
        if !access_ok(addr, len) {
            return Err(Errno::EFAULT);
        }
        let zeros = [0u8; PAGE_SIZE as usize];
        self.user_walk(
            cpu,
            mm,
            addr,
            len as usize,
            Access::KERNEL_WRITE,
            |k, pa, _, n| k.phys_write(pa, &zeros[..n]),
        )
        .map_err(|_| Errno::EFAULT)
    }

    /// `put_user` of a 64-bit value.
    pub fn put_user_u64(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        v: u64,
    ) -> Result<(), Errno> {
        self.copy_to_user(cpu, mm, addr, &v.to_le_bytes())
    }

    /// `get_user` of a 64-bit value.
    pub fn get_user_u64(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
    ) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        self.copy_from_user(cpu, mm, &mut b, addr)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The task's own store of `src` at `addr` (user mode): a fault that cannot be handled
    /// is the signal the task gets.
    pub fn user_write(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        src: &[u8],
    ) -> Result<(), Signal> {
        self.user_walk(
            cpu,
            mm,
            addr,
            src.len(),
            Access::USER_WRITE,
            |k, pa, off, n| k.phys_write(pa, &src[off..off + n]),
        )
    }

    /// The task's own load of `dst.len()` bytes at `addr` (user mode).
    pub fn user_read(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        dst: &mut [u8],
    ) -> Result<(), Signal> {
        let len = dst.len();
        self.user_walk(cpu, mm, addr, len, Access::USER_READ, |k, pa, off, n| {
            k.phys_read(pa, &mut dst[off..off + n])
        })
    }

    /// The task's instruction fetch of `dst.len()` bytes at `addr` (user mode, NX checked).
    pub fn user_fetch(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        dst: &mut [u8],
    ) -> Result<(), Signal> {
        let len = dst.len();
        self.user_walk(cpu, mm, addr, len, Access::USER_EXEC, |k, pa, off, n| {
            k.phys_read(pa, &mut dst[off..off + n])
        })
    }
}
