//! `execve`'s memory side (`fs/exec.c`): a fresh `mm_struct` (`bprm_mm_init`), the argument
//! and environment strings (`bprm_stack_limits`, `copy_strings`, `copy_string_kernel`,
//! `remove_arg_zero`), the binary-format loop (`exec_binprm`, `search_binary_handler`: at
//! most five rewrites by `#!` scripts, then `ELOOP`), the point of no return
//! (`begin_new_exec`: the set-user-ID personality clearing of `bprm_fill_uid`), and
//! `setup_arg_pages` (the stack's final place and flags, its 128 KiB initial expansion).
//! The formats are `fs/binfmt_script.rs` and `fs/binfmt_elf.rs` (64-bit and ia32 ELF).
//!
//! Linux copies the strings into the new mm's stack at the top of the 64-bit address space
//! and moves the stack down once the format has chosen its top (`shift_arg_pages`); here the
//! strings wait in the `linux_binprm` until `setup_arg_pages` and are written straight to
//! their final place through `copy_to_user`, so the stack pages still come from real faults,
//! and the addresses, limits and errors are the same.
//!
//! Opening files is the caller's (the VFS): the executable is opened before `execve` and
//! interpreters (`PT_INTERP`, `#!`) through an [`InterpOpener`], each with `open_exec`'s
//! checks (`fs/namei.rs`). The caller swaps the returned mm in and releases the old one
//! (`exec_mmap`); on error the old mm is untouched and the half-built one is freed. An error
//! after the point of no return would kill the task with `SIGSEGV` in Linux;
//! [`Kernel::do_execve`] says which errors those are.

use crate::addr::{align_down, align_up, PAGE_SHIFT, PAGE_SIZE};
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
/// `MAX_ARG_STRINGS`: the most argument or environment strings.
pub const MAX_ARG_STRINGS: usize = 0x7fff_ffff;
/// `ARG_MAX` as the floor of the argument space (`bprm_stack_limits`).
pub const ARG_MAX: u64 = 32 * PAGE_SIZE;
/// `_STK_LIM`: the default stack limit, of which 3/4 bounds the arguments.
pub const STK_LIM: u64 = 8 << 20;
/// `STACK_RND_MASK` for 64-bit tasks: 22 bits of pages of stack randomization.
pub const STACK_RND_MASK: u64 = 0x3f_ffff;
/// `STACK_RND_MASK` for 32-bit tasks: 11 bits of pages.
pub const STACK_RND_MASK_32: u64 = 0x7ff;
/// `mmap_rnd_bits` default (`CONFIG_ARCH_MMAP_RND_BITS`): 28 bits of pages.
pub const MMAP_RND_BITS: u32 = 28;
/// `mmap_rnd_compat_bits` default (`CONFIG_ARCH_MMAP_RND_COMPAT_BITS`): 8 bits of pages.
pub const MMAP_RND_COMPAT_BITS: u32 = 8;
/// `BINPRM_BUF_SIZE`: the first bytes of the file every format looks at.
pub const BINPRM_BUF_SIZE: usize = 256;
/// `PATH_MAX`.
pub const PATH_MAX: u64 = 4096;
/// `exec_binprm`'s limit: a sixth handler call (after five `#!` rewrites) is `ELOOP`.
pub const MAX_BINFMT_DEPTH: usize = 5;

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
    /// The caller's personality lacks `ADDR_NO_RANDOMIZE` (`setarch -R` sets it). The
    /// layout is randomized when this holds — or when exec'ing a set-user-ID or
    /// set-group-ID file clears the flag (`PER_CLEAR_ON_SETID`) — unless `norandmaps`
    /// (`randomize_va_space = 0`) is on the command line.
    pub randomize: bool,
    /// `RLIMIT_STACK` soft limit.
    pub rlimit_stack: u64,
}

/// `open_exec`: opens an interpreter by path (`PT_INTERP`, a `#!` line) with exec's checks.
/// The VFS lookup belongs to the caller.
pub type InterpOpener<'a> = dyn FnMut(&[u8]) -> Result<Arc<File>, Errno> + 'a;

/// Why an `execve` failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ExecError {
    /// The error.
    pub errno: Errno,
    /// It happened after the point of no return (`begin_new_exec`): the caller's old image
    /// is gone in Linux and the task is killed with `SIGSEGV` instead of `execve` returning.
    pub fatal: bool,
}

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
    /// A 32-bit (ia32) program: its stack words and auxv entries are 4 bytes.
    pub compat: bool,
}

/// `linux_binprm`: the state shared by exec and the format handlers.
pub(crate) struct Binprm<'a> {
    pub(crate) mm: MmStruct,
    /// The file the current handler looks at (the script, then its interpreter, …).
    pub(crate) file: Arc<File>,
    /// Set by `binfmt_script`: the file to run instead.
    pub(crate) interpreter: Option<Arc<File>>,
    /// The first `BINPRM_BUF_SIZE` bytes of `file`, zero-padded (`prepare_binprm`).
    pub(crate) buf: [u8; BINPRM_BUF_SIZE],
    /// The strings copied so far, each with its NUL, in the order they were copied (each
    /// below the last): the filename, the environment from the last, the arguments from the
    /// last, then whatever a script handler adds.
    pub(crate) strings: Vec<Vec<u8>>,
    /// Bytes of `strings` (`bprm->p` is the stack top, minus a pointer, minus this).
    pub(crate) used: u64,
    /// `bprm->p - bprm->argmin` when `used` was 0: how far the strings may go.
    pub(crate) limit: u64,
    /// `used` right after the filename was copied (`bprm->exec`).
    pub(crate) exec_used: u64,
    pub(crate) argc: usize,
    pub(crate) envc: usize,
    pub(crate) params: &'a ExecParams<'a>,
    /// `bprm->interp`: the name the next `#!` level puts in place of `argv[0]`.
    pub(crate) interp: Vec<u8>,
    /// `begin_new_exec` has run.
    pub(crate) point_of_no_return: bool,
    /// Set by `setup_arg_pages`: the lowest string's address (`bprm->p`).
    pub(crate) p: u64,
    /// Set by `setup_arg_pages`: the filename's address (`AT_EXECFN`).
    pub(crate) exec: u64,
}

impl Binprm<'_> {
    /// `copy_string_kernel` / one step of `copy_strings`: put `s` and its NUL below the
    /// strings so far. `E2BIG` for a string longer than `MAX_ARG_STRLEN` (or holding a NUL,
    /// which a C string cannot) or when the strings would pass `argmin`.
    pub(crate) fn copy_string(&mut self, s: &[u8]) -> Result<(), Errno> {
        let len = s.len() + 1;
        if len > MAX_ARG_STRLEN || s.contains(&0) {
            return Err(Errno::E2BIG);
        }
        if self.used + len as u64 > self.limit {
            return Err(Errno::E2BIG);
        }
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(s);
        v.push(0);
        self.used += len as u64;
        self.strings.push(v);
        Ok(())
    }

    /// `remove_arg_zero`: drop `argv[0]` (the string copied last) and count it out.
    pub(crate) fn remove_arg_zero(&mut self) {
        if self.argc == 0 {
            return;
        }
        if let Some(s) = self.strings.pop() {
            self.used -= s.len() as u64;
        }
        self.argc -= 1;
    }
}

impl Kernel {
    /// `arch_mmap_rnd`: a page-aligned random offset of `mmap_rnd_bits` bits of pages
    /// (`mmap_rnd_compat_bits` for a 32-bit task).
    pub(crate) fn arch_mmap_rnd(&self, compat: bool) -> u64 {
        let bits = if compat {
            MMAP_RND_COMPAT_BITS
        } else {
            MMAP_RND_BITS
        };
        (self.platform().get_random_u64() & ((1u64 << bits) - 1)) << PAGE_SHIFT
    }

    /// `execve(file, argv, envp)`: build the new image. `open_interp` opens interpreters
    /// (`PT_INTERP`, `#!`). Errors: `E2BIG` (arguments too large), `ENOEXEC` (no format
    /// takes the file), `ELIBBAD` (a bad ELF interpreter), `ELOOP` (too many `#!` levels),
    /// `EIO`, `ENOMEM`, and whatever opening an interpreter returns. See
    /// [`Kernel::do_execve`] for which of them come after the point of no return.
    pub fn execve(
        &self,
        cpu: &CpuGuard<'_>,
        file: &Arc<File>,
        params: &ExecParams<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<ExecImage, Errno> {
        self.do_execve(cpu, file, params, open_interp)
            .map_err(|e| e.errno)
    }

    /// `do_execveat_common` + `bprm_execve`: [`Kernel::execve`], saying whether a failure
    /// came after the point of no return (where Linux kills the task with `SIGSEGV`).
    pub fn do_execve(
        &self,
        cpu: &CpuGuard<'_>,
        file: &Arc<File>,
        params: &ExecParams<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<ExecImage, ExecError> {
        let early = |errno| ExecError {
            errno,
            fatal: false,
        };
        if params.argv.len() > MAX_ARG_STRINGS || params.envp.len() > MAX_ARG_STRINGS {
            return Err(early(Errno::E2BIG));
        }
        let mut mm = self.mm_alloc(cpu).map_err(early)?;
        mm.rlimit_stack = params.rlimit_stack;
        let mut bprm = Binprm {
            mm,
            file: file.clone(),
            interpreter: None,
            buf: [0; BINPRM_BUF_SIZE],
            strings: Vec::new(),
            used: 0,
            limit: 0,
            exec_used: 0,
            argc: params.argv.len(),
            envc: params.envp.len(),
            params,
            interp: params.filename.to_vec(),
            point_of_no_return: false,
            p: 0,
            exec: 0,
        };
        let res = self
            .copy_initial_strings(&mut bprm)
            .and_then(|()| self.exec_binprm(cpu, &mut bprm, open_interp));
        match res {
            Ok(st) => Ok(ExecImage {
                compat: bprm.mm.compat,
                mm: bprm.mm,
                entry: st.entry,
                sp: st.sp,
                auxv: st.auxv,
            }),
            Err(errno) => {
                let fatal = bprm.point_of_no_return;
                self.exit_mmap(cpu, bprm.mm);
                Err(ExecError { errno, fatal })
            }
        }
    }

    /// `bprm_stack_limits`, then the strings `do_execveat_common` copies: the filename
    /// (`bprm->exec`), the environment, the arguments, and an empty `argv[0]` when `argv` is
    /// empty (Linux 5.18+).
    fn copy_initial_strings(&self, bprm: &mut Binprm<'_>) -> Result<(), Errno> {
        let params = bprm.params;
        // 3/4 of _STK_LIM, at most a quarter of the stack limit, at least ARG_MAX, less the
        // pointers (an empty argv counts as one).
        let mut limit = (STK_LIM / 4 * 3).min(params.rlimit_stack / 4).max(ARG_MAX);
        let ptr_size = (bprm.argc.max(1) as u64)
            .checked_add(bprm.envc as u64)
            .and_then(|n| n.checked_mul(8))
            .ok_or(Errno::E2BIG)?;
        if limit <= ptr_size {
            return Err(Errno::E2BIG);
        }
        limit -= ptr_size;
        bprm.limit = limit;
        bprm.copy_string(params.filename)?;
        bprm.exec_used = bprm.used;
        for s in params.envp.iter().rev() {
            bprm.copy_string(s)?;
        }
        for s in params.argv.iter().rev() {
            bprm.copy_string(s)?;
        }
        if bprm.argc == 0 {
            bprm.copy_string(b"")?;
            bprm.argc = 1;
        }
        Ok(())
    }

    /// `exec_binprm`: run the format handlers; when one (`#!`) names an interpreter, start
    /// over with it, at most `MAX_BINFMT_DEPTH` times.
    fn exec_binprm(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<StartState, Errno> {
        for depth in 0.. {
            if depth > MAX_BINFMT_DEPTH {
                return Err(Errno::ELOOP);
            }
            if let Some(st) = self.search_binary_handler(cpu, bprm, open_interp)? {
                return Ok(st);
            }
            match bprm.interpreter.take() {
                Some(next) => bprm.file = next,
                None => return Err(Errno::ENOEXEC),
            }
        }
        unreachable!("the loop returns")
    }

    /// `prepare_binprm` + `search_binary_handler`: read the first bytes, then ask each
    /// format in turn (`#!` scripts, 64-bit ELF, ia32 ELF); `ENOEXEC` passes to the next
    /// unless the point of no return was crossed. `Ok(None)` when a script handler set an
    /// interpreter to run instead.
    fn search_binary_handler(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<Option<StartState>, Errno> {
        bprm.buf = [0; BINPRM_BUF_SIZE];
        let inode = bprm.file.inode.clone();
        self.filemap_read(cpu, &inode, 0, &mut bprm.buf)?;
        let formats: [crate::fs::binfmt_elf::BinFmt; 3] = [
            crate::fs::binfmt_elf::BinFmt::Script,
            crate::fs::binfmt_elf::BinFmt::Elf(crate::fs::binfmt_elf::ElfClass::Elf64),
            crate::fs::binfmt_elf::BinFmt::Elf(crate::fs::binfmt_elf::ElfClass::Ia32),
        ];
        let mut retval = Errno::ENOEXEC;
        for fmt in formats {
            let r = match fmt {
                crate::fs::binfmt_elf::BinFmt::Script => {
                    self.load_script(bprm, open_interp).map(|()| None)
                }
                crate::fs::binfmt_elf::BinFmt::Elf(class) => self
                    .load_elf_binary(cpu, bprm, open_interp, class)
                    .map(Some),
            };
            match r {
                Ok(st) => return Ok(st),
                Err(e) if e != Errno::ENOEXEC || bprm.point_of_no_return => return Err(e),
                Err(e) => retval = e,
            }
        }
        Err(retval)
    }

    /// `begin_new_exec` as far as memory management sees it: the point of no return, the
    /// new mm's executable file, and the personality clearing for a set-user-ID or
    /// set-group-ID file (`bprm_fill_uid` → `PER_CLEAR_ON_SETID`, which includes
    /// `ADDR_NO_RANDOMIZE`). Returns whether the new image is randomized (`PF_RANDOMIZE`).
    pub(crate) fn begin_new_exec(&self, bprm: &mut Binprm<'_>) -> bool {
        bprm.point_of_no_return = true;
        bprm.mm.exe_file = Some(bprm.file.clone());
        let setid = crate::fs::namei::exec_changes_ids(&bprm.file.inode.data().attr());
        (bprm.params.randomize || setid) && !self.config.norandmaps
    }

    /// `randomize_stack_top(STACK_TOP)` + `arch_align_stack` + `PAGE_ALIGN`: where the stack
    /// VMA ends, for a top of `stack_top` and a randomization mask of `rnd_mask` pages.
    fn stack_top(&self, stack_top: u64, rnd_mask: u64, randomize: bool) -> u64 {
        if !randomize {
            return stack_top;
        }
        let rnd = (self.platform().get_random_u64() & rnd_mask) << PAGE_SHIFT;
        let top = align_up(stack_top, PAGE_SIZE) - rnd;
        let sp = (top - self.platform().get_random_u64() % 8192) & !0xf;
        align_up(sp, PAGE_SIZE)
    }

    /// `setup_arg_pages(bprm, randomize_stack_top(stack_top), executable_stack)`: the stack
    /// VMA ends at the (randomized) top and holds the strings, with the final flags (data
    /// defaults — executable under `READ_IMPLIES_EXEC` — plus or minus `VM_EXEC` as
    /// `PT_GNU_STACK` asks); the strings are written; then the VMA is expanded by 128 KiB
    /// below, capped by `RLIMIT_STACK`. Sets `arg_start`, `bprm->p` and `bprm->exec`.
    pub(crate) fn setup_arg_pages(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        stack_top: u64,
        rnd_mask: u64,
        randomize: bool,
        executable_stack: Option<bool>,
    ) -> Result<(), Errno> {
        const STACK_EXPAND: u64 = 128 << 10;
        let top = self.stack_top(stack_top, rnd_mask, randomize);
        let p = top - 8 - bprm.used;
        let start = align_down(p, PAGE_SIZE).min(top - PAGE_SIZE);
        if top < crate::mm::mm_types::MMAP_MIN_ADDR
            || top - start >= top - crate::mm::mm_types::MMAP_MIN_ADDR
        {
            return Err(Errno::ENOMEM);
        }
        let mm = &mut bprm.mm;
        let mut flags = VM_STACK_FLAGS;
        if mm.read_implies_exec {
            flags |= VmFlags::VM_EXEC;
        }
        match executable_stack {
            Some(true) => flags |= VmFlags::VM_EXEC,
            Some(false) => flags -= VmFlags::VM_EXEC,
            None => {}
        }
        self.mmap_region(
            mm,
            start,
            top - start,
            flags,
            start >> PAGE_SHIFT,
            None,
            None,
        );
        // The strings, lowest first: the last copied sits at p.
        let mut at = p;
        let mut bytes = Vec::with_capacity(bprm.used as usize);
        for s in bprm.strings.iter().rev() {
            bytes.extend_from_slice(s);
        }
        self.copy_to_user(cpu, mm, at, &bytes)?;
        at += bytes.len() as u64;
        debug_assert_eq!(at, top - 8);
        bprm.p = p;
        bprm.exec = top - 8 - bprm.exec_used;
        mm.arg_start = p;
        // The initial expansion.
        let id = mm.find_vma_id(p).ok_or(Errno::EFAULT)?;
        let v = mm.vma(id);
        let rlim = align_down(mm.rlimit_stack, PAGE_SIZE);
        let size = v.vm_end - v.vm_start;
        let stack_base = if size + STACK_EXPAND > rlim {
            v.vm_end - rlim
        } else {
            v.vm_start - STACK_EXPAND
        };
        let grow = v.vm_start.saturating_sub(stack_base) >> PAGE_SHIFT;
        if grow > 0 {
            let (start, end, pgoff) = (v.vm_start.min(stack_base), v.vm_end, v.vm_pgoff - grow);
            self.vma_set_range(mm, id, start, end, pgoff);
        }
        Ok(())
    }
}
