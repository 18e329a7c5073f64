//! Signal delivery to a program's handlers (`arch/x86/kernel/signal.c`, `signal_64.c`:
//! `get_sigframe`, `setup_rt_frame`, `x64_setup_rt_frame`, `rt_sigreturn`;
//! `kernel/signal.c`: `get_signal`, `force_sig_fault`).
//!
//! A caught signal becomes an `rt_sigframe` on the user stack (or the alternate one with
//! `SA_ONSTACK`): the return address `sa_restorer`, a `ucontext` with the interrupted
//! registers in a `sigcontext` and the blocked mask, the `siginfo`, and the FPU state in
//! XSAVE layout 64-byte aligned below it. The handler runs with `rdi` = signal, `rsi` =
//! `&info`, `rdx` = `&uc`; its `ret` reaches the restorer, whose `rt_sigreturn` loads it
//! all back. A system call a signal interrupted returns `EINTR`, or is made again after the
//! handler with `SA_RESTART`.

use super::process::Proc;
use super::vcpu::Vcpu;
use super::vm::Vm;
use anyhow::Result;
use kvm_bindings::kvm_regs;

/// `SA_ONSTACK`.
const SA_ONSTACK: u64 = 0x0800_0000;
/// `SA_RESTART`.
const SA_RESTART: u64 = 0x1000_0000;
/// `SA_NODEFER`.
const SA_NODEFER: u64 = 0x4000_0000;
/// `SA_RESETHAND`.
const SA_RESETHAND: u64 = 0x8000_0000;
/// `SA_RESTORER`.
const SA_RESTORER: u64 = 0x0400_0000;
/// `SS_ONSTACK`, `SS_DISABLE`.
const SS_ONSTACK: u32 = 1;
const SS_DISABLE: u32 = 2;
/// `UC_FP_XSTATE` is not claimed (the FPU image is read back as it was written);
/// `UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS` as Linux sets them.
const UC_FLAGS: u64 = 0x2 | 0x4;
/// `sizeof(struct ucontext)`: flags, link, stack_t (24), sigcontext (256), sigmask.
const UCONTEXT: usize = 8 + 8 + 24 + 256 + 8;
/// `sizeof(struct rt_sigframe)`: pretcode, ucontext, siginfo (128).
const RT_SIGFRAME: usize = 8 + UCONTEXT + 128;
/// Offsets in the frame.
const UC_OFF: u64 = 8;
const MCTX_OFF: usize = 40;
const INFO_OFF: u64 = 8 + UCONTEXT as u64;

/// `si_code` of a signal sent by `kill` (`SI_USER`) and of the kernel's own (`SI_KERNEL`).
pub const SI_USER: i32 = 0;

/// A signal waiting for delivery, with its `siginfo` fields.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SigInfo {
    /// `si_signo`.
    pub signo: i32,
    /// `si_code`.
    pub code: i32,
    /// `si_addr` for a fault, `si_pid` for `kill`.
    pub addr: u64,
    /// `si_pid` of the sender (for `SI_USER`).
    pub pid: u32,
}

/// A task's `struct k_sigaction` as `rt_sigaction` stores it: handler, flags, restorer,
/// mask.
#[derive(Copy, Clone, Debug)]
pub struct SigAction {
    /// `sa_handler` (0 `SIG_DFL`, 1 `SIG_IGN`).
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`.
    pub mask: u64,
}

impl SigAction {
    /// Decode the 32 bytes `rt_sigaction` stored.
    pub fn of(raw: &[u8; 32]) -> Self {
        let w = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8"));
        SigAction {
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        }
    }

    /// A handler is installed (neither `SIG_DFL` nor `SIG_IGN`).
    pub fn caught(&self) -> bool {
        self.handler > 1
    }
}

/// The bit of `sig` in a mask.
pub fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// The registers the task has in user mode at this point: as the CPU holds them in ring
/// 3; from the exception frame when it stopped in an exception stub; with `rip` and
/// `rflags` from `rcx` and `r11` in the `SYSCALL` stub.
pub fn user_regs(vm: &Vm, vcpu: &mut Vcpu) -> Result<kvm_regs> {
    let ctx = vcpu.save(vm)?;
    let mut r = ctx.regs;
    if ctx.sregs.cs.selector & 3 == 3 {
        return Ok(r);
    }
    match ctx.frame {
        Some(f) => {
            r.rip = f[1];
            r.rflags = f[3];
            r.rsp = f[4];
        }
        None => {
            r.rip = r.rcx;
            r.rflags = r.r11;
        }
    }
    Ok(r)
}

/// The user registers of a task stopped in a system call: the `SYSCALL` saved `rip` and
/// `rflags` in `rcx` and `r11`; the stack pointer is the frame's when it arrived as a
/// fault at `LSTAR`.
pub fn syscall_user_regs(vm: &Vm, vcpu: &mut Vcpu) -> Result<kvm_regs> {
    let ctx = vcpu.save(vm)?;
    let mut r = ctx.regs;
    r.rip = r.rcx;
    r.rflags = r.r11;
    if let Some(f) = ctx.frame {
        r.rsp = f[4];
    }
    Ok(r)
}

/// The lowest pending signal the task does not block.
pub fn next_signal(p: &Proc<'_>) -> Option<i32> {
    let ready = p.pending.set & !p.sigmask;
    (ready != 0).then(|| ready.trailing_zeros() as i32 + 1)
}

/// `handle_signal` of `info` with the task's user registers `user`: build the frame and
/// enter the handler. A frame that cannot be written kills the task with `SIGSEGV`
/// (`force_sigsegv`), as a handler without `SA_RESTORER` does on x86-64.
pub fn deliver(
    p: &mut Proc<'_>,
    cpu: &mmkit::CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    info: SigInfo,
    user: kvm_regs,
) -> Result<()> {
    let sig = info.signo;
    let act = SigAction::of(&p.sigactions[sig as usize]);
    if !act.caught() && act.handler == 0 && is_stop(sig) {
        p.do_signal_stop(sig);
        return Ok(());
    }
    if !act.caught() && act.handler == 1 || !act.caught() && default_ignored(sig) {
        // Ignored by the time it is delivered; a temporary mask it ended goes.
        if let Some(m) = p.saved_sigmask.take() {
            p.sigmask = m;
        }
        return Ok(());
    }
    if !act.caught() || act.flags & SA_RESTORER == 0 {
        p.exit = Some(super::process::Status::Signaled(if act.caught() {
            libc::SIGSEGV
        } else {
            sig
        }));
        return Ok(());
    }
    let alt = |i: usize| u64::from_le_bytes(p.sigaltstack[i * 8..i * 8 + 8].try_into().expect("8"));
    let (ss_sp, ss_flags, ss_size) = (alt(0), alt(1) as u32, alt(2));
    let on_alt =
        ss_flags & SS_DISABLE == 0 && ss_size != 0 && user.rsp.wrapping_sub(ss_sp) < ss_size;
    let mut sp = user.rsp.wrapping_sub(128); // the red zone
    if act.flags & SA_ONSTACK != 0 && ss_flags & SS_DISABLE == 0 && ss_size != 0 && !on_alt {
        sp = ss_sp + ss_size;
    }
    let xsave = vcpu.xsave_image()?;
    let xsize = vm.xsave_size.min(xsave.len());
    let fpstate = (sp - xsize as u64) & !63;
    let frame = ((fpstate - RT_SIGFRAME as u64) & !15) - 8;
    let mut f = vec![0u8; RT_SIGFRAME];
    let put =
        |f: &mut Vec<u8>, off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(&mut f, 0, act.restorer);
    put(&mut f, 8, UC_FLAGS);
    put(&mut f, 16, 0); // uc_link
    put(&mut f, 24, ss_sp);
    put(
        &mut f,
        32,
        if on_alt {
            SS_ONSTACK as u64
        } else {
            ss_flags as u64
        },
    );
    put(&mut f, 40, ss_size);
    let m = 8 + MCTX_OFF;
    let regs = [
        user.r8,
        user.r9,
        user.r10,
        user.r11,
        user.r12,
        user.r13,
        user.r14,
        user.r15,
        user.rdi,
        user.rsi,
        user.rbp,
        user.rbx,
        user.rdx,
        user.rax,
        user.rcx,
        user.rsp,
        user.rip,
        user.rflags,
    ];
    for (i, v) in regs.iter().enumerate() {
        put(&mut f, m + i * 8, *v);
    }
    // cs, gs, fs, ss as four u16s.
    let segs: u64 = 0x33 | (0x2b << 48);
    put(&mut f, m + 18 * 8, segs);
    let (err, trapno, cr2) = match info.signo {
        libc::SIGSEGV | libc::SIGBUS if info.code > 0 => (p.fault_error as u64, 14, info.addr),
        _ => (0, 0, 0),
    };
    put(&mut f, m + 19 * 8, err);
    put(&mut f, m + 20 * 8, trapno);
    // The mask to return to: the one a temporary mask replaced (sigsuspend), if any.
    let old_mask = p.saved_sigmask.unwrap_or(p.sigmask);
    put(&mut f, m + 21 * 8, old_mask); // oldmask
    put(&mut f, m + 22 * 8, cr2);
    put(&mut f, m + 23 * 8, fpstate);
    put(&mut f, 8 + UCONTEXT - 8, old_mask); // uc_sigmask
    let i = INFO_OFF as usize;
    f[i..i + 4].copy_from_slice(&sig.to_le_bytes());
    f[i + 8..i + 12].copy_from_slice(&info.code.to_le_bytes());
    if info.code == SI_USER || sig == libc::SIGCHLD {
        f[i + 16..i + 20].copy_from_slice(&info.pid.to_le_bytes());
        // SAFETY: getuid cannot fail.
        f[i + 20..i + 24].copy_from_slice(&unsafe { libc::getuid() }.to_le_bytes());
    } else {
        put(&mut f, i + 16, info.addr);
    }
    let wrote =
        p.write_user(cpu, fpstate, &xsave[..xsize]).is_ok() && p.write_user(cpu, frame, &f).is_ok();
    if !wrote {
        p.exit = Some(super::process::Status::Signaled(libc::SIGSEGV));
        return Ok(());
    }
    let handler_regs = kvm_regs {
        rip: act.handler,
        rsp: frame,
        rdi: sig as u64,
        rsi: frame + INFO_OFF,
        rdx: frame + UC_OFF,
        rax: 0,
        // TF, DF, RF and AC cleared; IF kept.
        rflags: user.rflags & !(0x100 | 0x400 | 0x1_0000 | 0x4_0000) | 0x202,
        ..user
    };
    p.saved_sigmask = None;
    p.sigmask |= act.mask & !(bit(libc::SIGKILL) | bit(libc::SIGSTOP));
    if act.flags & SA_NODEFER == 0 {
        p.sigmask |= bit(sig);
    }
    if act.flags & SA_RESETHAND != 0 {
        p.sigactions[sig as usize] = [0; 32];
    }
    vcpu.resume_user(&handler_regs)?;
    Ok(())
}

/// `rt_sigreturn`: the registers, blocked mask and FPU state saved in the frame whose
/// `ucontext` is at the user stack pointer (the handler's `ret` popped the return
/// address). A frame that cannot be read kills the task with `SIGSEGV`.
pub fn sigreturn(
    p: &mut Proc<'_>,
    cpu: &mmkit::CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
) -> Result<()> {
    let user = syscall_user_regs(vm, vcpu)?;
    let uc = user.rsp;
    let Ok(b) = p.read_user(cpu, uc, UCONTEXT) else {
        p.exit = Some(super::process::Status::Signaled(libc::SIGSEGV));
        return Ok(());
    };
    let get = |off: usize| u64::from_le_bytes(b[off..off + 8].try_into().expect("8"));
    let m = MCTX_OFF;
    let r = |i: usize| get(m + i * 8);
    let restored = kvm_regs {
        r8: r(0),
        r9: r(1),
        r10: r(2),
        r11: r(3),
        r12: r(4),
        r13: r(5),
        r14: r(6),
        r15: r(7),
        rdi: r(8),
        rsi: r(9),
        rbp: r(10),
        rbx: r(11),
        rdx: r(12),
        rax: r(13),
        rcx: r(14),
        rsp: r(15),
        rip: r(16),
        // Only the flags a program may change (FIX_EFLAGS), IF kept on.
        rflags: (user.rflags & !0x40dd5) | (r(17) & 0x40dd5) | 0x202,
    };
    p.sigmask = get(UCONTEXT - 8) & !(bit(libc::SIGKILL) | bit(libc::SIGSTOP));
    let fpstate = r(23);
    if fpstate != 0 {
        let Ok(img) = p.read_user(cpu, fpstate, vm.xsave_size) else {
            p.exit = Some(super::process::Status::Signaled(libc::SIGSEGV));
            return Ok(());
        };
        vcpu.set_xsave_image(vm, &img)?;
    }
    vcpu.resume_user(&restored)?;
    p.regs_set = true;
    Ok(())
}

/// A system call that slept when a signal came: with a handler it returns `EINTR`, or with
/// `SA_RESTART` is made again once the handler returns (`rip` back on the `SYSCALL`,
/// `rax` still its number); without one (a stop, or a signal that ends the task anyway)
/// it is made again, as every `-ERESTART*` is when no handler runs. Returns the registers
/// to deliver the signal over.
pub fn interrupted_call(p: &Proc<'_>, sig: i32, mut user: kvm_regs) -> kvm_regs {
    let act = SigAction::of(&p.sigactions[sig as usize]);
    if !act.caught() || act.flags & SA_RESTART != 0 && !p.no_restart {
        user.rip = user.rip.wrapping_sub(2);
    } else {
        user.rax = -(libc::EINTR as i64) as u64;
    }
    user
}

/// Signals whose default action does nothing (`SIG_KERNEL_IGNORE_MASK`; `SIGCONT`'s
/// continuing happens when it is sent).
pub fn default_ignored(sig: i32) -> bool {
    [libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH, libc::SIGCONT].contains(&sig)
}

/// The stop signals (`SIG_KERNEL_STOP_MASK`): their default action stops the process.
pub fn is_stop(sig: i32) -> bool {
    [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].contains(&sig)
}

/// `si_code`s of `SIGCHLD` (`CLD_*`).
pub const CLD_STOPPED: i32 = 5;
/// The child continued.
pub const CLD_CONTINUED: i32 = 6;
/// `SA_NOCLDSTOP`: no `SIGCHLD` when a child stops or continues.
const SA_NOCLDSTOP: u64 = 1;

/// Job control state of a run (`signal_struct`'s `SIGNAL_STOP_*` flags and `exit_code`
/// as `wait_task_stopped`/`wait_task_continued` read them): the processes stopped, and
/// for each child the stop or continue its parent has not been told of by `wait` yet.
#[derive(Default, Debug)]
pub struct JobControl {
    /// Stopped processes (none of their threads runs until `SIGCONT` or `SIGKILL`).
    pub stopped: std::collections::BTreeSet<u32>,
    /// Unreported changes: `(CLD_STOPPED, stop signal)` or `(CLD_CONTINUED, SIGCONT)`.
    pub reports: std::collections::BTreeMap<u32, (i32, i32)>,
}

impl Proc<'_> {
    /// `do_notify_parent_cldstop`: `SIGCHLD` with `why` to `pid`'s parent, unless the
    /// parent's action for it has `SA_NOCLDSTOP`; its `wait` may now report the change.
    fn notify_parent_cldstop(&mut self, pid: u32, why: i32, status: i32) {
        self.sched.jobs.reports.insert(pid, (why, status));
        self.sched.events += 1;
        let Some(ppid) = self.tasks.get(pid).map(|t| t.ppid).filter(|&pp| pp != 0) else {
            return;
        };
        let acts = if ppid == self.pid {
            Some(self.sigactions.as_slice())
        } else {
            self.sched.shared.get(&ppid).map(|s| s.sigactions())
        };
        let nocldstop = acts
            .and_then(|a| a.get(libc::SIGCHLD as usize))
            .is_some_and(|a| SigAction::of(a).flags & SA_NOCLDSTOP != 0);
        if !nocldstop {
            let info = SigInfo {
                signo: libc::SIGCHLD,
                code: why,
                addr: 0,
                pid,
            };
            let _ = self.signal_task(ppid, info);
        }
    }

    /// `prepare_signal`'s job control, done when `sig` is sent to process `pid` whatever
    /// its action: `SIGCONT` takes back every pending stop signal and continues a stopped
    /// process (its parent told); a stop signal takes back a pending `SIGCONT`.
    pub fn prepare_signal(&mut self, pid: u32, sig: i32) {
        let drop = if sig == libc::SIGCONT {
            bit(libc::SIGSTOP) | bit(libc::SIGTSTP) | bit(libc::SIGTTIN) | bit(libc::SIGTTOU)
        } else if is_stop(sig) {
            bit(libc::SIGCONT)
        } else {
            return;
        };
        let forget = |p: &mut Pending| {
            p.set &= !drop;
            p.info.retain(|i| bit(i.signo) & drop == 0);
        };
        if self.pid == pid {
            forget(&mut self.pending);
        }
        for t in self.sched.parked.values_mut().filter(|t| t.pid == pid) {
            forget(&mut t.pending);
        }
        if sig == libc::SIGCONT && self.sched.jobs.stopped.remove(&pid) {
            self.notify_parent_cldstop(pid, CLD_CONTINUED, libc::SIGCONT);
        }
    }

    /// `do_signal_stop`: the running process stops (every thread of it), and its parent
    /// is told.
    pub fn do_signal_stop(&mut self, sig: i32) {
        let pid = self.pid;
        self.sched.jobs.stopped.insert(pid);
        self.notify_parent_cldstop(pid, CLD_STOPPED, sig);
    }

    /// Whether process `pid` is stopped.
    pub fn is_stopped(&self, pid: u32) -> bool {
        self.sched.jobs.stopped.contains(&pid)
    }
}

/// A task's pending signals.
#[derive(Default, Clone)]
pub struct Pending {
    /// The pending set.
    pub set: u64,
    /// Their `siginfo` (one per standard signal: a second one coalesces).
    pub info: Vec<SigInfo>,
}

/// `send_signal`/`__send_signal`: queue `info` for a task with these `sigactions` and
/// `mask`, or end it or drop the signal at once: `SIGKILL` ends it; an ignored signal
/// (`SIG_IGN`, or a default action of nothing) that is not blocked is dropped; the rest
/// wait for delivery, where a handler runs or the default action ends the task.
pub fn send(
    sigactions: &[[u8; 32]],
    mask: u64,
    pending: &mut Pending,
    exit: &mut Option<super::process::Status>,
    info: SigInfo,
) {
    let sig = info.signo;
    if sig == libc::SIGKILL {
        exit.get_or_insert(super::process::Status::Signaled(sig));
        return;
    }
    let act = SigAction::of(sigactions.get(sig as usize).unwrap_or(&[0; 32]));
    let ignored = act.handler == 1 || (act.handler == 0 && default_ignored(sig));
    if ignored && mask & bit(sig) == 0 {
        return;
    }
    pending.set |= bit(sig);
    pending.info.retain(|i| i.signo != sig);
    pending.info.push(info);
}

/// Take the `siginfo` of pending signal `sig`.
pub fn take_info(pending: &mut Pending, sig: i32) -> SigInfo {
    pending.set &= !bit(sig);
    let i = pending.info.iter().position(|i| i.signo == sig);
    i.map(|i| pending.info.remove(i)).unwrap_or(SigInfo {
        signo: sig,
        code: SI_USER,
        addr: 0,
        pid: 0,
    })
}
