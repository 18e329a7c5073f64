//! One virtual CPU: put in 64-bit long mode directly in ring 3 on the library's GDT, IDT and
//! TSS, with CR3 on an mmkit address space; run until the next exit, decoded into what the
//! kernel handles: an exception (vector, and the frame the CPU pushed on the entry stack), a
//! system call, or an interruption by the host.
//!
//! Registers come with each exit through `KVM_CAP_SYNC_REGS` where KVM offers it (no ioctl
//! on the exit path), or through `KVM_GET_REGS`/`KVM_GET_SREGS` otherwise; changes go back
//! the same way (marked dirty for the next `KVM_RUN`).

use super::vm::Vm;
use anyhow::{anyhow, bail, Result};
use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use mmkit::arch::x86_64::cpu_entry_area::{
    EXCEPTION_PORT_BASE, INTERRUPT_PORT, MSR_STAR_VALUE, SYSCALL_MASK, SYSCALL_PORT, TSS_SELECTOR,
    USER_CS, USER_DS,
};
use mmkit::Pfn;
use std::sync::atomic::{AtomicU8, Ordering};

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// CR0: PE, MP, ET, NE, WP, AM, PG.
const CR0: u64 = 0x8005_0033;
/// CR4: PAE, OSFXSR, OSXMMEXCPT, OSXSAVE.
const CR4: u64 = 0x20 | 0x200 | 0x400 | 0x4_0000;
/// EFER: SCE, LME, LMA, NXE.
const EFER: u64 = 0x1 | 0x100 | 0x400 | 0x800;

/// Why the guest stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exception `vector` taken from user mode; `frame` is what the CPU pushed (with the
    /// error code, 0 where it pushes none): error code, RIP, CS, RFLAGS, RSP, SS.
    Exception {
        /// The vector (`X86_TRAP_*`).
        vector: u8,
        /// The exception frame.
        frame: [u64; 6],
    },
    /// `SYSCALL` entered ring 0 at `LSTAR` (registers as the program left them).
    Syscall,
    /// `KVM_RUN` was interrupted by the host (a timer, a timeout).
    Interrupted,
}

/// What a task leaves on the CPU when it is switched out (`struct thread_struct` with the
/// registers `pt_regs` holds and the FPU state `fpu__save` keeps): the general and special
/// registers (CR3 among them), the x87/SSE/AVX/AVX-512 state, and the exception frame on the
/// entry stack that an exception exit will `iretq` through.
pub struct CpuContext {
    /// General registers.
    pub regs: kvm_regs,
    /// Special registers (segments with the FS/GS bases, CR3).
    pub sregs: kvm_sregs,
    /// The extended state (`XSAVE` image).
    pub xsave: Box<kvm_xsave>,
    /// The exception frame (`Some` when the task left the CPU in an exception stub).
    pub frame: Option<[u64; 6]>,
}

/// A virtual CPU of a [`Vm`].
pub struct Vcpu {
    fd: VcpuFd,
    id: usize,
    sync: bool,
    /// `kvm_run.immediate_exit` in the vCPU's shared run area (see [`Kick`]).
    immediate_exit: *const AtomicU8,
    /// Exits so far.
    pub exits: u64,
}

// SAFETY: `immediate_exit` points into the `kvm_run` mapping owned by `fd`, which moves with
// the value; it is only accessed atomically (here and through a `Kick`), and the rest of
// `Vcpu` is `Send` (`VcpuFd` is).
unsafe impl Send for Vcpu {}

/// What another thread needs to kick a vCPU out of `KVM_RUN` (Linux's `kick_process` /
/// `smp_send_reschedule` IPI, done the way KVM documents for userspace): set the run area's
/// `immediate_exit` — a `KVM_RUN` about to start returns `EINTR` at once — then signal the
/// thread running the vCPU — a `KVM_RUN` in progress returns too. Race-free either way.
#[derive(Copy, Clone, Debug)]
pub struct Kick {
    immediate_exit: *const AtomicU8,
    thread: libc::pthread_t,
    signal: i32,
}

// SAFETY: a `Kick` is an address in a vCPU's `kvm_run` mapping (written only atomically) and a
// thread id; whoever holds one keeps the vCPU and its thread alive while it may kick (the
// run loop unregisters its kicks before the vCPU threads end and the vCPUs are put back).
unsafe impl Send for Kick {}
// SAFETY: as above.
unsafe impl Sync for Kick {}

impl Kick {
    /// Make the vCPU leave (or not enter) `KVM_RUN`.
    pub fn kick(&self) {
        // SAFETY: `immediate_exit` points into the live `kvm_run` mapping (see the `Send`
        // note); the byte is only ever accessed atomically.
        unsafe { &*self.immediate_exit }.store(1, Ordering::SeqCst);
        // SAFETY: the thread is alive while its kick is registered (see above); the signal
        // has a no-op handler installed.
        unsafe { libc::pthread_kill(self.thread, self.signal) };
    }
}

fn user_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The flat 64-bit user segments a new program starts with: CS, SS, DS, ES the user's,
/// FS and GS null selectors with base 0.
fn flat_user_segments(s: &mut kvm_sregs) {
    s.cs = user_segment(USER_CS, true);
    s.ss = user_segment(USER_DS, false);
    s.ds = user_segment(USER_DS, false);
    s.es = user_segment(USER_DS, false);
    s.fs = user_segment(0, false);
    s.gs = user_segment(0, false);
}

impl Vcpu {
    /// vCPU `id` (also the CPU whose GDT, TSS and entry stack it uses): CPUID first (only
    /// then does `KVM_SET_XCRS` take), then the MSRs for `SYSCALL`, `XCR0`, an initialized
    /// FPU, and `KVM_CAP_SYNC_REGS` when the host has it.
    pub fn new(vm: &Vm, id: usize) -> Result<Self> {
        if id >= vm.entry.gdt.len() {
            bail!("vCPU {id}: the machine has {} CPUs", vm.entry.gdt.len());
        }
        let fd = vm
            .vm
            .create_vcpu(id as u64)
            .map_err(|e| anyhow!("KVM_CREATE_VCPU {id}: {e}"))?;
        fd.set_cpuid2(&vm.cpuid)
            .map_err(|e| anyhow!("KVM_SET_CPUID2: {e}"))?;
        let msr = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let msrs = Msrs::from_entries(&[
            msr(MSR_STAR, MSR_STAR_VALUE),
            msr(MSR_LSTAR, vm.entry.lstar),
            msr(MSR_CSTAR, 0),
            msr(MSR_SYSCALL_MASK, SYSCALL_MASK),
            msr(MSR_KERNEL_GS_BASE, 0),
        ])
        .map_err(|e| anyhow!("MSR list: {e:?}"))?;
        let n = fd
            .set_msrs(&msrs)
            .map_err(|e| anyhow!("KVM_SET_MSRS: {e}"))?;
        if n != msrs.as_slice().len() {
            bail!("KVM_SET_MSRS set {n} of {} MSRs", msrs.as_slice().len());
        }
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = vm.xcr0;
        fd.set_xcrs(&xcrs)
            .map_err(|e| anyhow!("KVM_SET_XCRS (XCR0 {:#x}): {e}", vm.xcr0))?;
        // FNINIT state and the default MXCSR, as a new task's FPU (fpstate_init).
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(|e| anyhow!("KVM_SET_FPU: {e}"))?;
        let mut fd = fd;
        let immediate_exit = &mut fd.get_kvm_run().immediate_exit as *mut u8 as *const AtomicU8;
        let mut v = Self {
            fd,
            id,
            sync: vm.sync_regs,
            immediate_exit,
            exits: 0,
        };
        if v.sync {
            v.fd.set_sync_valid_reg(SyncReg::Register);
            v.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        Ok(v)
    }

    /// Put the CPU in ring 3 of the address space whose PGD is `pgd`, at `rip` with stack
    /// `rsp`, all other general registers zero (`start_thread`), FS and GS bases zero.
    pub fn enter_user(&mut self, vm: &Vm, pgd: Pfn, rip: u64, rsp: u64) -> Result<()> {
        let mut s: kvm_sregs = self
            .fd
            .get_sregs()
            .map_err(|e| anyhow!("KVM_GET_SREGS: {e}"))?;
        s.cr0 = CR0;
        s.cr4 = CR4;
        s.efer = EFER;
        s.cr3 = pgd.0 << mmkit::PAGE_SHIFT;
        flat_user_segments(&mut s);
        let (gdt, gdt_limit) = vm.entry.gdt[self.id];
        s.gdt.base = gdt;
        s.gdt.limit = gdt_limit;
        s.idt.base = vm.entry.idt.0;
        s.idt.limit = vm.entry.idt.1;
        s.tr = kvm_segment {
            base: vm.entry.tss[self.id],
            limit: 0x67,
            selector: TSS_SELECTOR,
            type_: 11, // busy 64-bit TSS
            present: 1,
            ..Default::default()
        };
        s.ldt = kvm_segment {
            unusable: 1,
            ..Default::default()
        };
        self.fd
            .set_sregs(&s)
            .map_err(|e| anyhow!("KVM_SET_SREGS: {e}"))?;
        let regs = kvm_regs {
            rip,
            rsp,
            rflags: 0x202,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))?;
        if self.sync {
            // A change the last program left marked dirty in the shared run area would be
            // loaded over these at the next KVM_RUN: drop it.
            self.fd.clear_sync_dirty_reg(SyncReg::Register);
            self.fd.clear_sync_dirty_reg(SyncReg::SystemRegister);
        }
        Ok(())
    }

    /// Put the CPU in ring 3 at `rip` with stack `rsp` on the address space `pgd`, with a
    /// fresh FPU and zero FS/GS bases: what `execve` leaves (`start_thread`). Unlike
    /// [`Vcpu::enter_user`] it keeps the descriptor tables of the running CPU and goes
    /// through the synced registers, so it may follow an exit's handling.
    pub fn start_thread(&mut self, pgd: Pfn, rip: u64, rsp: u64) -> Result<()> {
        let mut s = self.sregs()?;
        s.cr3 = pgd.0 << mmkit::PAGE_SHIFT;
        flat_user_segments(&mut s);
        self.set_sregs(&s)?;
        self.set_regs(&kvm_regs {
            rip,
            rsp,
            rflags: 0x202,
            ..Default::default()
        })?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(|e| anyhow!("KVM_SET_FPU: {e}"))
    }

    /// Whether the CPU stopped at a point where its task may leave it: in ring 3 (not inside
    /// an entry stub) with no exception or interrupt being delivered (KVM keeps those
    /// outside the registers, so a task switched out then would get them in another task's
    /// context). An interrupted `KVM_RUN` can stop anywhere; exits from the stubs are
    /// switch points by construction.
    pub fn preemptible(&mut self) -> Result<bool> {
        if self.sregs()?.cs.selector & 3 != 3 {
            return Ok(false);
        }
        let e = self
            .fd
            .get_vcpu_events()
            .map_err(|e| anyhow!("KVM_GET_VCPU_EVENTS: {e}"))?;
        Ok(e.exception.injected == 0
            && e.exception.pending == 0
            && e.interrupt.injected == 0
            && e.nmi.injected == 0
            && e.nmi.pending == 0)
    }

    /// Enter ring 3 with the registers `r` (a signal handler, the return of
    /// `rt_sigreturn`): CS and SS become the user segments, the FS/GS bases stay.
    pub fn resume_user(&mut self, r: &kvm_regs) -> Result<()> {
        let mut s = self.sregs()?;
        s.cs = user_segment(USER_CS, true);
        s.ss = user_segment(USER_DS, false);
        self.set_sregs(&s)?;
        self.set_regs(r)
    }

    /// The FPU and vector state as its XSAVE image (`KVM_GET_XSAVE`'s 4 KiB region).
    pub fn xsave_image(&mut self) -> Result<Vec<u8>> {
        let x = self
            .fd
            .get_xsave()
            .map_err(|e| anyhow!("KVM_GET_XSAVE: {e}"))?;
        Ok(x.region.iter().flat_map(|w| w.to_le_bytes()).collect())
    }

    /// Load the first `img.len()` bytes of an XSAVE image (the rest of the state as it is).
    /// The legacy area's MXCSR is masked to the bits the CPU accepts (a program's bad
    /// value must not make `KVM_SET_XSAVE` fail), and the header keeps only the guest's
    /// features.
    pub fn set_xsave_image(&mut self, vm: &Vm, img: &[u8]) -> Result<()> {
        let mut x = self
            .fd
            .get_xsave()
            .map_err(|e| anyhow!("KVM_GET_XSAVE: {e}"))?;
        let mut bytes: Vec<u8> = x.region.iter().flat_map(|w| w.to_le_bytes()).collect();
        let n = img.len().min(bytes.len());
        bytes[..n].copy_from_slice(&img[..n]);
        // MXCSR at 24: reserved bits zero (MXCSR_MASK of current CPUs: 0xffff).
        bytes[28..32].copy_from_slice(&[0xff, 0xff, 0, 0]);
        let mxcsr = u32::from_le_bytes(bytes[24..28].try_into().expect("4")) & 0xffff;
        bytes[24..28].copy_from_slice(&mxcsr.to_le_bytes());
        // XSTATE_BV at 512: only enabled features; XCOMP_BV zero (standard format); the
        // reserved header bytes zero.
        let bv = u64::from_le_bytes(bytes[512..520].try_into().expect("8")) & vm.xcr0;
        bytes[512..520].copy_from_slice(&bv.to_le_bytes());
        bytes[520..576].fill(0);
        for (w, c) in x.region.iter_mut().zip(bytes.chunks(4)) {
            *w = u32::from_le_bytes(c.try_into().expect("4"));
        }
        // SAFETY: as in `restore`: the image is KVM's own format for this VM, its header
        // limited to the guest's XCR0 features, all within the 4096-byte region.
        unsafe { self.fd.set_xsave(&x) }.map_err(|e| anyhow!("KVM_SET_XSAVE: {e}"))
    }

    /// Save what the running task left on this CPU (`switch_to`'s first half): with the
    /// registers, the exception frame on the entry stack when the CPU is in ring 0 on it
    /// (stopped in an exception stub, about to `iretq` through that frame).
    pub fn save(&mut self, vm: &Vm) -> Result<CpuContext> {
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let frame = if sregs.cs.selector & 3 == 0 {
            match vm.entry.stack_phys(self.id, regs.rsp) {
                Some(pa) => {
                    let mut bytes = [0u8; 48];
                    vm.ram.read(pa.0, &mut bytes)?;
                    let mut f = [0u64; 6];
                    for (i, v) in f.iter_mut().enumerate() {
                        *v = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
                    }
                    Some(f)
                }
                None => None,
            }
        } else {
            None
        };
        Ok(CpuContext {
            regs,
            sregs,
            xsave: Box::new(
                self.fd
                    .get_xsave()
                    .map_err(|e| anyhow!("KVM_GET_XSAVE: {e}"))?,
            ),
            frame,
        })
    }

    /// Load a saved task onto this CPU (`switch_to`'s second half; CR3 comes with the
    /// special registers, which is `switch_mm`: without PCIDs the load flushes the TLB).
    ///
    /// A task saved on another vCPU migrates (`set_task_cpu`): what is per CPU stays this
    /// CPU's — its GDT and TSS (the task register), and a stub's stack pointer on the entry
    /// stack moves to the same place on this CPU's entry stack, where the frame is written.
    pub fn restore(&mut self, vm: &Vm, c: &CpuContext) -> Result<()> {
        let mut sregs = c.sregs;
        let mut regs = c.regs;
        let (gdt, gdt_limit) = vm.entry.gdt[self.id];
        sregs.gdt.base = gdt;
        sregs.gdt.limit = gdt_limit;
        sregs.tr.base = vm.entry.tss[self.id];
        if let Some(from) = (0..vm.entry.stack.len())
            .find(|&cpu| cpu != self.id && vm.entry.stack_phys(cpu, regs.rsp).is_some())
        {
            regs.rsp = regs.rsp - vm.entry.stack[from].0 + vm.entry.stack[self.id].0;
        }
        self.set_sregs(&sregs)?;
        self.set_regs(&regs)?;
        // SAFETY: the image came from KVM_GET_XSAVE on a vCPU of the same VM; the guest's
        // XCR0 holds x87, SSE, AVX and AVX-512 state only (no dynamically enabled
        // features such as AMX), all of which fit the 4096-byte `kvm_xsave`.
        unsafe { self.fd.set_xsave(&c.xsave) }.map_err(|e| anyhow!("KVM_SET_XSAVE: {e}"))?;
        if let Some(f) = &c.frame {
            self.set_frame(vm, f)?;
        }
        Ok(())
    }

    /// This vCPU's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Run until the next exit the kernel handles.
    pub fn run(&mut self, vm: &Vm) -> Result<Exit> {
        loop {
            let exit = self.fd.run();
            self.exits += 1;
            let port = match exit {
                Ok(VcpuExit::IoOut(port, _)) => port,
                Ok(VcpuExit::Hlt) => bail!("vCPU {}: the guest halted", self.id),
                Ok(VcpuExit::Shutdown) => {
                    bail!("vCPU {}: triple fault (shutdown)", self.id)
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    bail!(
                        "vCPU {}: entry failed, reason {reason:#x} on cpu {cpu}",
                        self.id
                    )
                }
                Ok(VcpuExit::InternalError) => bail!("vCPU {}: KVM internal error", self.id),
                Ok(VcpuExit::Intr) => return Ok(Exit::Interrupted),
                Ok(other) => bail!("vCPU {}: unexpected exit {other:?}", self.id),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.set_immediate_exit(false);
                    return Ok(Exit::Interrupted);
                }
                Err(e) => bail!("KVM_RUN: {e}"),
            };
            if port == SYSCALL_PORT {
                return Ok(Exit::Syscall);
            }
            if port == INTERRUPT_PORT {
                continue; // a stray interrupt: nothing raises one; resume
            }
            let Some(vector) = port
                .checked_sub(EXCEPTION_PORT_BASE)
                .filter(|v| *v < 32)
                .map(|v| v as u8)
            else {
                bail!("vCPU {}: exit on unknown port {port:#x}", self.id);
            };
            let rsp = self.regs()?.rsp;
            let pa = vm.entry.stack_phys(self.id, rsp).ok_or_else(|| {
                anyhow!("exception {vector}: entry stack pointer {rsp:#x} off the stack")
            })?;
            let mut bytes = [0u8; 48];
            vm.ram.read(pa.0, &mut bytes)?;
            let mut frame = [0u64; 6];
            for (i, f) in frame.iter_mut().enumerate() {
                *f = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            }
            return Ok(Exit::Exception { vector, frame });
        }
    }

    /// Rewrite the exception frame the CPU will `iretq` through (`frame` as [`Exit`] has it):
    /// where an exception returns to.
    pub fn set_frame(&mut self, vm: &Vm, frame: &[u64; 6]) -> Result<()> {
        let rsp = self.regs()?.rsp;
        let pa = vm
            .entry
            .stack_phys(self.id, rsp)
            .ok_or_else(|| anyhow!("entry stack pointer {rsp:#x} off the stack"))?;
        let mut bytes = [0u8; 48];
        for (i, f) in frame.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        vm.ram.write(pa.0, &bytes)
    }

    /// The general registers.
    pub fn regs(&mut self) -> Result<kvm_regs> {
        if self.sync {
            Ok(self.fd.sync_regs().regs)
        } else {
            self.fd.get_regs().map_err(|e| anyhow!("KVM_GET_REGS: {e}"))
        }
    }

    /// Change the general registers (applied at the next `KVM_RUN`).
    pub fn set_regs(&mut self, regs: &kvm_regs) -> Result<()> {
        if self.sync {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            Ok(())
        } else {
            self.fd
                .set_regs(regs)
                .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))
        }
    }

    /// The special registers.
    pub fn sregs(&mut self) -> Result<kvm_sregs> {
        if self.sync {
            Ok(self.fd.sync_regs().sregs)
        } else {
            self.fd
                .get_sregs()
                .map_err(|e| anyhow!("KVM_GET_SREGS: {e}"))
        }
    }

    /// Change the special registers (applied at the next `KVM_RUN`).
    pub fn set_sregs(&mut self, sregs: &kvm_sregs) -> Result<()> {
        if self.sync {
            self.fd.sync_regs_mut().sregs = *sregs;
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            Ok(())
        } else {
            self.fd
                .set_sregs(sregs)
                .map_err(|e| anyhow!("KVM_SET_SREGS: {e}"))
        }
    }

    /// CR2 of the last page fault.
    pub fn cr2(&mut self) -> Result<u64> {
        Ok(self.sregs()?.cr2)
    }

    /// Make the next (or current) `KVM_RUN` return at once (a host timer's kick).
    pub fn set_immediate_exit(&mut self, on: bool) {
        // SAFETY: points into `self.fd`'s live `kvm_run` mapping; accessed atomically only.
        unsafe { &*self.immediate_exit }.store(u8::from(on), Ordering::SeqCst);
    }

    /// How the calling thread, which will run this vCPU, can be kicked out of `KVM_RUN` by
    /// others (`signal`: the kick signal, with a no-op handler installed).
    pub fn kick_handle(&self, signal: i32) -> Kick {
        Kick {
            immediate_exit: self.immediate_exit,
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            signal,
        }
    }
}
