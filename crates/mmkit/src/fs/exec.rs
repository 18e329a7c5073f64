//! `execve`'s memory side (`fs/exec.c`): a fresh `mm_struct`, the stack VMA with the
//! argument and environment strings copied in (`bprm_mm_init`, `copy_strings`,
//! `bprm_stack_limits`), `setup_arg_pages` (the 128 KiB initial expansion, `RLIMIT_STACK`),
//! then the binary format handler (`fs/binfmt_elf.rs`).
//!
//! Strings are written through `copy_to_user` into the new address space, so the stack pages
//! come from real faults (`do_anonymous_page`, stack expansion) as in Linux. The caller
//! swaps the returned mm in and releases the old one (`exec_mmap`); on error the old mm is
//! untouched and the half-built one is freed.

use crate::addr::{align_down, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::inode::File;
use crate::mm::mm_types::{MmStruct, VmFlags, TASK_SIZE};
use crate::Kernel;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// `STACK_TOP` / `STACK_TOP_MAX` for 64-bit tasks.
pub const STACK_TOP: u64 = TASK_SIZE;
/// `MAX_ARG_STRLEN`: the longest single argument or environment string.
pub const MAX_ARG_STRLEN: usize = 32 * PAGE_SIZE as usize;
/// `ARG_MAX` as the floor of the argument space (`bprm_stack_limits`).
pub const ARG_MAX: u64 = 32 * PAGE_SIZE;
/// `_STK_LIM`: the default stack limit, of which 3/4 bounds the arguments.
pub const STK_LIM: u64 = 8 << 20;
/// `STACK_RND_MASK` for 64-bit tasks: 22 bits of pages of stack randomization.
pub const STACK_RND_MASK: u64 = 0x3f_ffff;
/// `mmap_rnd_bits` default (`CONFIG_ARCH_MMAP_RND_BITS`): 28 bits of pages.
pub const MMAP_RND_BITS: u32 = 28;

/// `VM_STACK_FLAGS` for a 64-bit task: grows down, data defaults, accounted.
pub const VM_STACK_FLAGS: VmFlags = VmFlags::VM_GROWSDOWN
    .union(VmFlags::VM_READ)
    .union(VmFlags::VM_WRITE)
    .union(VmFlags::VM_MAYREAD)
    .union(VmFlags::VM_MAYWRITE)
    .union(VmFlags::VM_MAYEXEC)
    .union(VmFlags::VM_ACCOUNT);

/// What `execve` is given besides the file.
pub struct ExecParams<'a> {
    /// `argv`, without the terminating NULs.
    pub argv: &'a [&'a [u8]],
    /// `envp`.
    pub envp: &'a [&'a [u8]],
    /// The path as passed to `execve` (`bprm->filename`, `AT_EXECFN`).
    pub filename: &'a [u8],
    /// Randomize the layout (`PF_RANDOMIZE`: not `norandmaps`, no `ADDR_NO_RANDOMIZE`).
    pub randomize: bool,
    /// `RLIMIT_STACK` soft limit.
    pub rlimit_stack: u64,
}

/// Opens the `PT_INTERP` path for `execve` (the VFS lookup belongs to the caller).
pub type InterpOpener<'a> = dyn FnMut(&[u8]) -> Result<Arc<File>, Errno> + 'a;

/// Where a loaded image starts: entry point, stack pointer, the auxiliary vector written.
pub(crate) struct StartState {
    pub(crate) entry: u64,
    pub(crate) sp: u64,
    pub(crate) auxv: Vec<(u64, u64)>,
}

/// A process image ready to run.
pub struct ExecImage {
    /// The new address space.
    pub mm: MmStruct,
    /// Where execution starts (the interpreter's entry when there is one).
    pub entry: u64,
    /// The initial stack pointer (pointing at `argc`).
    pub sp: u64,
    /// The auxiliary vector written on the stack, `(AT_*, value)`, without `AT_NULL`.
    pub auxv: Vec<(u64, u64)>,
}

/// `linux_binprm`: the state shared by exec and the format handler.
pub(crate) struct Binprm<'a> {
    pub(crate) mm: MmStruct,
    /// `bprm->p`: the lowest byte of the strings written so far.
    pub(crate) p: u64,
    /// `bprm->exec`: where the filename string is (`AT_EXECFN`).
    pub(crate) exec: u64,
    pub(crate) argc: usize,
    pub(crate) envc: usize,
    pub(crate) params: &'a ExecParams<'a>,
    pub(crate) file: Arc<File>,
}

impl Kernel {
    /// `arch_mmap_rnd`: a page-aligned random offset of `mmap_rnd_bits` bits of pages.
    pub(crate) fn arch_mmap_rnd(&self) -> u64 {
        (self.platform().get_random_u64() & ((1u64 << MMAP_RND_BITS) - 1)) << PAGE_SHIFT
    }

    /// `execve(file, argv, envp)`: build the new image. `open_interp` opens the `PT_INTERP`
    /// path (the VFS lookup is the caller's). Errors: `E2BIG` (arguments too large),
    /// `ENOEXEC` (not an ELF file this machine runs), `ENOMEM`, `EIO`, `EACCES`.
    pub fn execve(
        &self,
        cpu: &CpuGuard<'_>,
        file: &Arc<File>,
        params: &ExecParams<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<ExecImage, Errno> {
        let mut mm = self.mm_alloc(cpu)?;
        mm.rlimit_stack = params.rlimit_stack;
        let mut bprm = Binprm {
            mm,
            p: 0,
            exec: 0,
            argc: params.argv.len(),
            envc: params.envp.len(),
            params,
            file: file.clone(),
        };
        let res = self
            .bprm_mm_init(cpu, &mut bprm)
            .and_then(|()| self.load_elf_binary(cpu, &mut bprm, open_interp));
        match res {
            Ok(st) => Ok(ExecImage {
                mm: bprm.mm,
                entry: st.entry,
                sp: st.sp,
                auxv: st.auxv,
            }),
            Err(e) => {
                self.exit_mmap(cpu, bprm.mm);
                Err(e)
            }
        }
    }

    /// `randomize_stack_top(STACK_TOP)` + `arch_align_stack` + `PAGE_ALIGN`: where the stack
    /// VMA ends.
    fn stack_top(&self, randomize: bool) -> u64 {
        if !randomize {
            return STACK_TOP;
        }
        let rnd = (self.platform().get_random_u64() & STACK_RND_MASK) << PAGE_SHIFT;
        let top = STACK_TOP - rnd;
        let sp = (top - self.platform().get_random_u64() % 8192) & !0xf;
        crate::addr::align_up(sp, PAGE_SIZE)
    }

    /// `bprm_mm_init` + `bprm_stack_limits` + `copy_strings`: the one-page stack VMA at the
    /// top, then the filename, the environment and the arguments copied below its top (the
    /// VMA grows down as they are written). As `setup_arg_pages` would move the strings to
    /// the randomized top, they are written there directly.
    fn bprm_mm_init(&self, cpu: &CpuGuard<'_>, bprm: &mut Binprm<'_>) -> Result<(), Errno> {
        let params = bprm.params;
        let top = self.stack_top(params.randomize);
        let mm = &mut bprm.mm;
        self.mmap_region(
            mm,
            top - PAGE_SIZE,
            PAGE_SIZE,
            VM_STACK_FLAGS,
            (top - PAGE_SIZE) >> PAGE_SHIFT,
            None,
            None,
        );
        // bprm_stack_limits: 3/4 of _STK_LIM, at most a quarter of the stack limit, at least
        // ARG_MAX, less the pointers.
        let mut limit = (STK_LIM / 4 * 3).min(params.rlimit_stack / 4).max(ARG_MAX);
        let ptr_size = (bprm.argc.max(1) + bprm.envc) as u64 * 8;
        if limit <= ptr_size {
            return Err(Errno::E2BIG);
        }
        limit -= ptr_size;
        bprm.p = top - 8;
        let argmin = bprm.p - limit;
        let push = |p: &mut u64, s: &[u8], mm: &mut MmStruct| -> Result<(), Errno> {
            if s.len() + 1 > MAX_ARG_STRLEN || s.contains(&0) {
                return Err(Errno::E2BIG);
            }
            let len = s.len() as u64 + 1;
            if *p < argmin + len {
                return Err(Errno::E2BIG);
            }
            *p -= len;
            let mut buf = Vec::with_capacity(s.len() + 1);
            buf.extend_from_slice(s);
            buf.push(0);
            self.copy_to_user(cpu, mm, *p, &buf)
        };
        let mut p = bprm.p;
        push(&mut p, params.filename, mm)?;
        bprm.exec = p;
        for s in params.envp.iter().rev() {
            push(&mut p, s, mm)?;
        }
        for s in params.argv.iter().rev() {
            push(&mut p, s, mm)?;
        }
        bprm.p = p;
        Ok(())
    }

    /// `setup_arg_pages`: the stack's final flags (`VM_EXEC` when `PT_GNU_STACK` asks for
    /// an executable stack) and its initial expansion by 128 KiB below the strings, capped by
    /// `RLIMIT_STACK`; `arg_start` is set.
    pub(crate) fn setup_arg_pages(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        executable_stack: bool,
    ) -> Result<(), Errno> {
        const STACK_EXPAND: u64 = 128 << 10;
        let mm = &mut bprm.mm;
        mm.arg_start = bprm.p;
        let v = mm.find_vma(bprm.p).cloned().ok_or(Errno::EFAULT)?;
        let rlim = align_down(mm.rlimit_stack, PAGE_SIZE);
        let size = v.vm_end - v.vm_start;
        let stack_base = if size + STACK_EXPAND > rlim {
            v.vm_end - rlim
        } else {
            v.vm_start - STACK_EXPAND
        };
        let grow = v.vm_start.saturating_sub(stack_base) >> PAGE_SHIFT;
        self.vma_unlink(mm, v.vm_end);
        let mut nv = v.clone();
        nv.vm_start = v.vm_start.min(stack_base);
        nv.vm_pgoff = v.vm_pgoff - grow;
        let (start, end) = (nv.vm_start, nv.vm_end);
        self.vma_link(mm, nv);
        if executable_stack {
            use crate::mm::mmap::{PROT_EXEC, PROT_READ, PROT_WRITE};
            self.mprotect(
                cpu,
                mm,
                start,
                end - start,
                PROT_READ | PROT_WRITE | PROT_EXEC,
            )?;
        }
        Ok(())
    }
}
