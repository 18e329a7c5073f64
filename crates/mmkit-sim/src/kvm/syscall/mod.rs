//! The system calls of a program running on mmkit (`arch/x86/entry/syscalls/syscall_64.tbl`),
//! one function per call with Linux's name. Memory calls are mmkit's ([`mm`]); files,
//! time, identity and the like are forwarded to the host ([`fs`], [`misc`]) with every user
//! pointer going through `copy_from_user`/`copy_to_user`/`strncpy_from_user` (a `read` into a
//! buffer never touched faults its pages in through mmkit; a bad pointer is `EFAULT`); `/proc`
//! files are mmkit's own views ([`procfs`]). An unknown call is `ENOSYS`.
//!
//! Arguments come in `rdi, rsi, rdx, r10, r8, r9`, the number in `rax`, the result goes back in
//! `rax` (a negative errno on failure), as the x86-64 syscall ABI has it. `--strace` prints
//! each call as strace does.

pub mod fd;
pub mod fs;
pub mod misc;
pub mod mm;
pub mod pipe;
pub mod proc;
pub mod procfs;
pub mod select;

pub use fd::FdTable;

use super::process::Proc;
use super::vcpu::Vcpu;
use super::vm::Vm;
use anyhow::Result;
use mmkit::CpuGuard;

/// `ENOSYS`.
pub const ENOSYS: i64 = -(libc::ENOSYS as i64);
/// `EFAULT`.
pub const EFAULT: i64 = -(libc::EFAULT as i64);
/// `EINVAL`.
pub const EINVAL: i64 = -(libc::EINVAL as i64);
/// `ERESTARTSYS`: the call must wait and will be made again (never seen by the program).
pub const ERESTARTSYS: i64 = -512;
/// `EBADF`.
pub const EBADF: i64 = -(libc::EBADF as i64);
/// `PATH_MAX`.
pub const PATH_MAX: usize = 4096;
/// The most bytes one forwarded `read`/`write` moves at once (`MAX_RW_COUNT` is about 2 GiB
/// in Linux; a short count is a valid answer, and it bounds the bounce buffer a guest can
/// size): the PMD size, the largest folio the write path makes.
pub const MAX_RW_CHUNK: usize = 2 << 20;

/// The instant `d` from now, for a timeout a program gave: one longer than a century is a
/// century (`MAX_SCHEDULE_TIMEOUT` is "for ever" in Linux; an `Instant` cannot hold
/// `i64::MAX` seconds, and adding them must not panic the VMM).
pub fn deadline_after(d: std::time::Duration) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86400);
    let now = std::time::Instant::now();
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}

/// The result of a call: the value for `rax`.
pub type SysResult = Result<i64, i64>;

/// How strace shows an argument.
#[derive(Copy, Clone)]
pub(crate) enum Arg {
    /// A 32-bit `int` (a descriptor, a flag word), in decimal.
    I,
    /// Decimal.
    D,
    /// Hexadecimal.
    X,
    /// A NUL-terminated user string.
    S,
    /// `PROT_*` bits.
    P,
    /// `MAP_*` flags.
    M,
    /// `O_*` flags.
    O,
    /// A `MADV_*` advice.
    A,
}

use Arg::{A, D, I, M, O, P, S, X};

/// `A|B|…` for the bits of `v` named in `names`, the rest in hex; `zero` when `v` is 0.
fn flag_names(v: u64, names: &[(u64, &str)], zero: &str) -> String {
    if v == 0 {
        return zero.into();
    }
    let mut left = v;
    let mut parts = Vec::new();
    for &(bit, name) in names {
        if bit != 0 && left & bit == bit {
            parts.push(name.to_string());
            left &= !bit;
        }
    }
    if left != 0 {
        parts.push(format!("{left:#x}"));
    }
    parts.join("|")
}

/// How strace shows one argument of kind `k`.
fn show_flags(k: Arg, v: u64) -> String {
    use libc as c;
    let b = |x: i32| x as u32 as u64;
    match k {
        Arg::P => flag_names(
            v,
            &[
                (b(c::PROT_READ), "PROT_READ"),
                (b(c::PROT_WRITE), "PROT_WRITE"),
                (b(c::PROT_EXEC), "PROT_EXEC"),
                (0x0100_0000, "PROT_GROWSDOWN"),
                (0x0200_0000, "PROT_GROWSUP"),
            ],
            "PROT_NONE",
        ),
        Arg::M => {
            let kind = match v & 0xf {
                1 => "MAP_SHARED",
                2 => "MAP_PRIVATE",
                3 => "MAP_SHARED_VALIDATE",
                _ => "",
            };
            let rest = flag_names(
                v & !0xf,
                &[
                    (b(c::MAP_FIXED), "MAP_FIXED"),
                    (b(c::MAP_ANONYMOUS), "MAP_ANONYMOUS"),
                    (b(c::MAP_32BIT), "MAP_32BIT"),
                    (b(c::MAP_GROWSDOWN), "MAP_GROWSDOWN"),
                    (b(c::MAP_DENYWRITE), "MAP_DENYWRITE"),
                    (b(c::MAP_EXECUTABLE), "MAP_EXECUTABLE"),
                    (b(c::MAP_LOCKED), "MAP_LOCKED"),
                    (b(c::MAP_NORESERVE), "MAP_NORESERVE"),
                    (b(c::MAP_POPULATE), "MAP_POPULATE"),
                    (b(c::MAP_NONBLOCK), "MAP_NONBLOCK"),
                    (b(c::MAP_STACK), "MAP_STACK"),
                    (b(c::MAP_HUGETLB), "MAP_HUGETLB"),
                    (b(c::MAP_SYNC), "MAP_SYNC"),
                    (b(c::MAP_FIXED_NOREPLACE), "MAP_FIXED_NOREPLACE"),
                ],
                "",
            );
            match (kind.is_empty(), rest.is_empty()) {
                (false, false) => format!("{kind}|{rest}"),
                (false, true) => kind.into(),
                (true, false) => format!("{:#x}|{rest}", v & 0xf),
                (true, true) => format!("{:#x}", v & 0xf),
            }
        }
        Arg::O => {
            let acc = match v & 3 {
                0 => "O_RDONLY",
                1 => "O_WRONLY",
                2 => "O_RDWR",
                _ => "O_ACCMODE",
            };
            let rest = flag_names(
                v & !3,
                &[
                    (b(c::O_CREAT), "O_CREAT"),
                    (b(c::O_EXCL), "O_EXCL"),
                    (b(c::O_NOCTTY), "O_NOCTTY"),
                    (b(c::O_TRUNC), "O_TRUNC"),
                    (b(c::O_APPEND), "O_APPEND"),
                    (b(c::O_NONBLOCK), "O_NONBLOCK"),
                    (b(c::O_DSYNC), "O_DSYNC"),
                    (b(c::O_DIRECT), "O_DIRECT"),
                    (b(c::O_LARGEFILE), "O_LARGEFILE"),
                    (b(c::O_DIRECTORY), "O_DIRECTORY"),
                    (b(c::O_NOFOLLOW), "O_NOFOLLOW"),
                    (b(c::O_NOATIME), "O_NOATIME"),
                    (b(c::O_CLOEXEC), "O_CLOEXEC"),
                    (b(c::O_PATH), "O_PATH"),
                    (b(c::O_TMPFILE) & !b(c::O_DIRECTORY), "O_TMPFILE"),
                ],
                "",
            );
            if rest.is_empty() {
                acc.into()
            } else {
                format!("{acc}|{rest}")
            }
        }
        Arg::A => match v as i32 {
            c::MADV_NORMAL => "MADV_NORMAL".into(),
            c::MADV_RANDOM => "MADV_RANDOM".into(),
            c::MADV_SEQUENTIAL => "MADV_SEQUENTIAL".into(),
            c::MADV_WILLNEED => "MADV_WILLNEED".into(),
            c::MADV_DONTNEED => "MADV_DONTNEED".into(),
            c::MADV_FREE => "MADV_FREE".into(),
            c::MADV_REMOVE => "MADV_REMOVE".into(),
            c::MADV_DONTFORK => "MADV_DONTFORK".into(),
            c::MADV_DOFORK => "MADV_DOFORK".into(),
            c::MADV_MERGEABLE => "MADV_MERGEABLE".into(),
            c::MADV_HUGEPAGE => "MADV_HUGEPAGE".into(),
            c::MADV_NOHUGEPAGE => "MADV_NOHUGEPAGE".into(),
            c::MADV_DONTDUMP => "MADV_DONTDUMP".into(),
            c::MADV_DODUMP => "MADV_DODUMP".into(),
            c::MADV_WIPEONFORK => "MADV_WIPEONFORK".into(),
            c::MADV_KEEPONFORK => "MADV_KEEPONFORK".into(),
            c::MADV_COLD => "MADV_COLD".into(),
            c::MADV_PAGEOUT => "MADV_PAGEOUT".into(),
            c::MADV_POPULATE_READ => "MADV_POPULATE_READ".into(),
            c::MADV_POPULATE_WRITE => "MADV_POPULATE_WRITE".into(),
            other => other.to_string(),
        },
        _ => format!("{v:#x}"),
    }
}

/// Name and argument kinds of each call strace shows.
pub(crate) fn describe(nr: u64) -> (&'static str, &'static [Arg]) {
    match nr {
        0 => ("read", &[I, X, D]),
        1 => ("write", &[I, X, D]),
        2 => ("open", &[S, O, X]),
        3 => ("close", &[I]),
        4 => ("stat", &[S, X]),
        5 => ("fstat", &[I, X]),
        6 => ("lstat", &[S, X]),
        7 => ("poll", &[X, D, D]),
        8 => ("lseek", &[I, D, D]),
        9 => ("mmap", &[X, D, P, M, I, X]),
        10 => ("mprotect", &[X, D, P]),
        11 => ("munmap", &[X, D]),
        12 => ("brk", &[X]),
        13 => ("rt_sigaction", &[I, X, X, D]),
        14 => ("rt_sigprocmask", &[I, X, X, D]),
        16 => ("ioctl", &[I, X, X]),
        17 => ("pread64", &[I, X, D, D]),
        18 => ("pwrite64", &[I, X, D, D]),
        19 => ("readv", &[I, X, D]),
        20 => ("writev", &[I, X, D]),
        21 => ("access", &[S, X]),
        23 => ("select", &[D, X, X, X, X]),
        24 => ("sched_yield", &[]),
        25 => ("mremap", &[X, D, D, X, X]),
        26 => ("msync", &[X, D, X]),
        27 => ("mincore", &[X, D, X]),
        28 => ("madvise", &[X, D, A]),
        32 => ("dup", &[I]),
        33 => ("dup2", &[I, D]),
        35 => ("nanosleep", &[X, X]),
        39 => ("getpid", &[]),
        40 => ("sendfile", &[I, I, X, D]),
        41 => ("socket", &[I, I, I]),
        42 => ("connect", &[I, X, D]),
        56 => ("clone", &[X, X, X, X, X]),
        57 => ("fork", &[]),
        58 => ("vfork", &[]),
        59 => ("execve", &[S, X, X]),
        60 => ("exit", &[I]),
        61 => ("wait4", &[I, X, X, X]),
        62 => ("kill", &[I, D]),
        63 => ("uname", &[X]),
        72 => ("fcntl", &[I, D, X]),
        74 => ("fsync", &[I]),
        75 => ("fdatasync", &[I]),
        77 => ("ftruncate", &[I, D]),
        79 => ("getcwd", &[X, D]),
        80 => ("chdir", &[S]),
        82 => ("rename", &[S, S]),
        83 => ("mkdir", &[S, X]),
        84 => ("rmdir", &[S]),
        87 => ("unlink", &[S]),
        89 => ("readlink", &[S, X, D]),
        95 => ("umask", &[X]),
        96 => ("gettimeofday", &[X, X]),
        97 => ("getrlimit", &[I, X]),
        98 => ("getrusage", &[I, X]),
        99 => ("sysinfo", &[X]),
        102 => ("getuid", &[]),
        104 => ("getgid", &[]),
        107 => ("geteuid", &[]),
        108 => ("getegid", &[]),
        110 => ("getppid", &[]),
        111 => ("getpgrp", &[]),
        130 => ("rt_sigsuspend", &[X, D]),
        131 => ("sigaltstack", &[X, X]),
        137 => ("statfs", &[S, X]),
        138 => ("fstatfs", &[I, X]),
        149 => ("mlock", &[X, D]),
        150 => ("munlock", &[X, D]),
        151 => ("mlockall", &[X]),
        152 => ("munlockall", &[]),
        157 => ("prctl", &[I, X, X, X, X]),
        158 => ("arch_prctl", &[X, X]),
        160 => ("setrlimit", &[I, X]),
        186 => ("gettid", &[]),
        191 => ("getxattr", &[S, S, X, D]),
        192 => ("lgetxattr", &[S, S, X, D]),
        193 => ("fgetxattr", &[I, S, X, D]),
        194 => ("listxattr", &[S, X, D]),
        195 => ("llistxattr", &[S, X, D]),
        196 => ("flistxattr", &[I, X, D]),
        201 => ("time", &[X]),
        202 => ("futex", &[X, D, D, X, X, D]),
        204 => ("sched_getaffinity", &[I, D, X]),
        217 => ("getdents64", &[I, X, D]),
        218 => ("set_tid_address", &[X]),
        221 => ("fadvise64", &[I, D, D, D]),
        228 => ("clock_gettime", &[I, X]),
        229 => ("clock_getres", &[I, X]),
        230 => ("clock_nanosleep", &[I, D, X, X]),
        231 => ("exit_group", &[I]),
        247 => ("waitid", &[I, I, X, X, X]),
        257 => ("openat", &[I, S, O, X]),
        258 => ("mkdirat", &[I, S, X]),
        262 => ("newfstatat", &[I, S, X, X]),
        263 => ("unlinkat", &[I, S, X]),
        264 => ("renameat", &[I, S, I, S]),
        267 => ("readlinkat", &[I, S, X, D]),
        269 => ("faccessat", &[I, S, X]),
        270 => ("pselect6", &[D, X, X, X, X, X]),
        271 => ("ppoll", &[X, D, X, X, D]),
        273 => ("set_robust_list", &[X, D]),
        292 => ("dup3", &[I, D, X]),
        293 => ("pipe2", &[X, X]),
        302 => ("prlimit64", &[I, D, X, X]),
        316 => ("renameat2", &[I, S, I, S, X]),
        318 => ("getrandom", &[X, D, X]),
        326 => ("copy_file_range", &[I, X, I, X, D, X]),
        332 => ("statx", &[I, S, X, X, X]),
        334 => ("rseq", &[X, D, X, X]),
        435 => ("clone3", &[X, D]),
        439 => ("faccessat2", &[I, S, X, X]),
        _ => ("syscall", &[X, X, X, X, X, X]),
    }
}

impl Proc<'_> {
    /// `copy_from_user` of `len` bytes at `addr` (faults handled by mmkit); `EFAULT`.
    pub fn read_user(&mut self, cpu: &CpuGuard<'_>, addr: u64, len: usize) -> Result<Vec<u8>, i64> {
        let mut buf = vec![0u8; len];
        let k = self.k;
        // No address space (its process was torn down from another vCPU): nothing to read.
        let mm = self.tasks.mm_mut(self.pid).map_err(|_| EFAULT)?;
        k.copy_from_user(cpu, mm, &mut buf, addr)
            .map_err(|_| EFAULT)?;
        Ok(buf)
    }

    /// `copy_to_user`; `EFAULT`.
    pub fn write_user(&mut self, cpu: &CpuGuard<'_>, addr: u64, data: &[u8]) -> Result<(), i64> {
        let k = self.k;
        let mm = self.tasks.mm_mut(self.pid).map_err(|_| EFAULT)?;
        k.copy_to_user(cpu, mm, addr, data).map_err(|_| EFAULT)
    }

    /// `get_user` of a u64.
    pub fn read_u64(&mut self, cpu: &CpuGuard<'_>, addr: u64) -> Result<u64, i64> {
        let b = self.read_user(cpu, addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// `strncpy_from_user` of at most `max` bytes: the string without its NUL;
    /// `ENAMETOOLONG` when no NUL comes within `max`, `EFAULT`.
    pub fn read_cstr(&mut self, cpu: &CpuGuard<'_>, addr: u64, max: usize) -> Result<Vec<u8>, i64> {
        let mut out = Vec::new();
        let mut a = addr;
        while out.len() < max {
            // Up to the end of the page, so a string ending before an unmapped page reads.
            let n = ((4096 - (a & 0xfff)) as usize).min(max - out.len());
            let chunk = self.read_user(cpu, a, n)?;
            if let Some(z) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            a += n as u64;
        }
        Err(-(libc::ENAMETOOLONG as i64))
    }

    /// A path argument, NUL-terminated for the host.
    pub fn read_path(&mut self, cpu: &CpuGuard<'_>, addr: u64) -> Result<std::ffi::CString, i64> {
        let p = self.read_cstr(cpu, addr, PATH_MAX)?;
        std::ffi::CString::new(p).map_err(|_| EINVAL)
    }
}

/// Handle the system call the vCPU stopped at: dispatch on `rax`, put the result in `rax`.
pub fn handle(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, vm: &Vm, vcpu: &mut Vcpu) -> Result<()> {
    let mut regs = vcpu.regs()?;
    let nr = regs.rax;
    let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
    p.syscalls += 1;
    if let Some(hook) = p.opts.syscall_hook.clone() {
        hook(p, cpu, nr, args);
    }
    let shown = p.opts.strace.then(|| strace_call(p, cpu, nr, &args));
    let r = dispatch(p, cpu, vm, vcpu, nr, args);
    if p.blocked {
        // It waits: no result yet (the call is made again, and counted once).
        p.syscalls -= 1;
        return Ok(());
    }
    if p.regs_set {
        // rt_sigreturn loaded every register.
        if let Some(s) = shown {
            eprintln!("{s} = ?");
        }
        return Ok(());
    }
    let ret = match r {
        Ok(v) => v,
        Err(e) => e,
    };
    if let Some(s) = shown {
        if p.exit.is_some() && matches!(nr, 60 | 231) {
            eprintln!("{s} = ?");
        } else if ret < 0 && ret > -4096 {
            // SAFETY: strerror returns a static string for any number.
            let text = unsafe { std::ffi::CStr::from_ptr(libc::strerror(-ret as i32)) };
            eprintln!("{s} = -1 {} ({})", errno_name(-ret), text.to_string_lossy());
        } else if matches!(nr, 9 | 12 | 25) {
            eprintln!("{s} = {ret:#x}");
        } else {
            eprintln!("{s} = {ret}");
        }
    }
    // Some calls (arch_prctl) changed registers themselves: re-read before setting rax.
    regs = vcpu.regs()?;
    regs.rax = ret as u64;
    vcpu.set_regs(&regs)
}

fn strace_call(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, nr: u64, args: &[u64; 6]) -> String {
    let (name, kinds) = describe(nr);
    let mut parts = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        parts.push(match k {
            Arg::I if args[i] as i32 == libc::AT_FDCWD => "AT_FDCWD".into(),
            Arg::I => (args[i] as i32).to_string(),
            Arg::D => (args[i] as i64).to_string(),
            Arg::X => format!("{:#x}", args[i]),
            Arg::S => match p.read_cstr(cpu, args[i], 256) {
                Ok(s) => format!("{:?}", String::from_utf8_lossy(&s)),
                Err(_) => format!("{:#x}", args[i]),
            },
            &k => show_flags(k, args[i]),
        });
    }
    if name == "syscall" {
        return format!("syscall_{nr}({})", parts.join(", "));
    }
    format!("{name}({})", parts.join(", "))
}

/// The symbolic name of an errno value.
pub fn errno_name(e: i64) -> &'static str {
    match e as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ESPIPE => "ESPIPE",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "E?",
    }
}

fn dispatch(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    nr: u64,
    a: [u64; 6],
) -> SysResult {
    let _ = vm;
    match nr {
        // Memory: mmkit's.
        9 => mm::sys_mmap(p, cpu, a),
        10 => mm::sys_mprotect(p, cpu, a),
        11 => mm::sys_munmap(p, cpu, a),
        12 => mm::sys_brk(p, cpu, a),
        25 => mm::sys_mremap(p, cpu, a),
        26 => mm::sys_msync(p, cpu, a),
        27 => mm::sys_mincore(p, cpu, a),
        28 => mm::sys_madvise(p, cpu, a),
        149 => mm::sys_mlock(p, cpu, a),
        150 => mm::sys_munlock(p, cpu, a),
        151 => mm::sys_mlockall(p, cpu, a),
        152 => mm::sys_munlockall(p, cpu, a),
        98 => mm::sys_getrusage(p, cpu, a),
        99 => mm::sys_sysinfo(p, cpu, a),
        97 => mm::sys_getrlimit(p, cpu, a),
        160 => mm::sys_setrlimit(p, cpu, a),
        302 => mm::sys_prlimit64(p, cpu, a),
        // Files: forwarded.
        0 => fs::sys_read(p, cpu, a),
        1 => fs::sys_write(p, cpu, a),
        2 => fs::sys_openat(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], a[2], 0, 0]),
        257 => fs::sys_openat(p, cpu, a),
        3 => fs::sys_close(p, cpu, a),
        4 => fs::sys_newfstatat(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], 0, 0, 0]),
        6 => fs::sys_newfstatat(
            p,
            cpu,
            [
                libc::AT_FDCWD as u64,
                a[0],
                a[1],
                libc::AT_SYMLINK_NOFOLLOW as u64,
                0,
                0,
            ],
        ),
        5 => fs::sys_fstat(p, cpu, a),
        262 => fs::sys_newfstatat(p, cpu, a),
        332 => fs::sys_statx(p, cpu, a),
        8 => fs::sys_lseek(p, cpu, a),
        16 => fs::sys_ioctl(p, cpu, a),
        17 => fs::sys_pread64(p, cpu, a),
        18 => fs::sys_pwrite64(p, cpu, a),
        19 => fs::sys_readv(p, cpu, a),
        20 => fs::sys_writev(p, cpu, a),
        21 => fs::sys_faccessat(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], 0, 0, 0]),
        269 | 439 => fs::sys_faccessat(p, cpu, a),
        32 => fs::sys_dup(p, cpu, a),
        33 => fs::sys_dup3(p, cpu, [a[0], a[1], 0, 0, 0, 0], true),
        292 => fs::sys_dup3(p, cpu, a, false),
        72 => fs::sys_fcntl(p, cpu, a),
        74 | 75 => fs::sys_fsync(p, cpu, a),
        77 => fs::sys_ftruncate(p, cpu, a),
        79 => fs::sys_getcwd(p, cpu, a),
        80 => fs::sys_chdir(p, cpu, a),
        82 => fs::sys_renameat(
            p,
            cpu,
            [
                libc::AT_FDCWD as u64,
                a[0],
                libc::AT_FDCWD as u64,
                a[1],
                0,
                0,
            ],
        ),
        264 | 316 => fs::sys_renameat(p, cpu, a),
        83 => fs::sys_mkdirat(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], 0, 0, 0]),
        258 => fs::sys_mkdirat(p, cpu, a),
        84 => fs::sys_unlinkat(
            p,
            cpu,
            [
                libc::AT_FDCWD as u64,
                a[0],
                libc::AT_REMOVEDIR as u64,
                0,
                0,
                0,
            ],
        ),
        87 => fs::sys_unlinkat(p, cpu, [libc::AT_FDCWD as u64, a[0], 0, 0, 0, 0]),
        263 => fs::sys_unlinkat(p, cpu, a),
        89 => fs::sys_readlinkat(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], a[2], 0, 0]),
        267 => fs::sys_readlinkat(p, cpu, a),
        217 => fs::sys_getdents64(p, cpu, a),
        137 => fs::sys_statfs(p, cpu, a),
        138 => fs::sys_fstatfs(p, cpu, a),
        221 => fs::sys_fadvise64(p, cpu, a),
        293 => pipe::sys_pipe2(p, cpu, a),
        22 => pipe::sys_pipe2(p, cpu, [a[0], 0, 0, 0, 0, 0]),
        191..=196 => fs::sys_xattr(p, cpu, nr, a),
        41 => fs::sys_socket(p, cpu, a),
        40 => fs::sys_sendfile(p, cpu, a),
        326 => fs::sys_copy_file_range(p, cpu, a),
        42 => fs::sys_connect(p, cpu, a),
        7 => select::sys_poll(p, cpu, a),
        271 => select::sys_ppoll(p, cpu, a),
        23 => select::sys_select(p, cpu, a),
        270 => select::sys_pselect6(p, cpu, a),
        130 => select::sys_rt_sigsuspend(p, cpu, a),
        34 => proc::sys_pause(p, cpu, a),
        37 => proc::sys_alarm(p, cpu, a),
        38 => proc::sys_setitimer(p, cpu, a),
        90 => fs::sys_fchmodat(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], 0, 0, 0]),
        91 => fs::sys_fchmod(p, cpu, a),
        268 => fs::sys_fchmodat(p, cpu, a),
        // Processes, time, identity: forwarded or answered here.
        231 => misc::sys_exit_group(p, cpu, a),
        60 => proc::sys_exit(p, cpu, a),
        39 => Ok(p.pid as i64),
        186 => Ok(p.tid as i64),
        110 => proc::sys_getppid(p, cpu, a),
        111 => proc::sys_getpgid(p, cpu, [0; 6]),
        121 => proc::sys_getpgid(p, cpu, a),
        109 => proc::sys_setpgid(p, cpu, a),
        112 => proc::sys_setsid(p, cpu, a),
        124 => proc::sys_getsid(p, cpu, a),
        56 => proc::sys_clone(p, cpu, a),
        57 => proc::sys_clone(p, cpu, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
        58 => proc::sys_clone(
            p,
            cpu,
            [
                (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64,
                0,
                0,
                0,
                0,
                0,
            ],
        ),
        59 => proc::sys_execve(p, cpu, [libc::AT_FDCWD as u64, a[0], a[1], a[2], 0, 0]),
        322 => proc::sys_execve(p, cpu, a),
        61 => proc::sys_wait4(p, cpu, a),
        102 | 107 => Ok(unsafe_id(libc::getuid)),
        104 | 108 => Ok(unsafe_id(libc::getgid)),
        63 => misc::sys_uname(p, cpu, a),
        95 => misc::sys_umask(p, cpu, a),
        96 => misc::sys_gettimeofday(p, cpu, a),
        201 => misc::sys_time(p, cpu, a),
        228 => misc::sys_clock_gettime(p, cpu, a),
        229 => misc::sys_clock_getres(p, cpu, a),
        35 => misc::sys_nanosleep(p, cpu, a),
        230 => misc::sys_clock_nanosleep(p, cpu, a),
        318 => misc::sys_getrandom(p, cpu, a),
        218 => proc::sys_set_tid_address(p, cpu, a),
        273 => Ok(0),
        334 => Err(ENOSYS),
        13 => misc::sys_rt_sigaction(p, cpu, a),
        15 => {
            crate::kvm::signal::sigreturn(p, cpu, vm, vcpu).map_err(|_| EFAULT)?;
            Ok(0)
        }
        14 => misc::sys_rt_sigprocmask(p, cpu, a),
        131 => misc::sys_sigaltstack(p, cpu, a),
        158 => misc::sys_arch_prctl(p, cpu, vcpu, a),
        157 => misc::sys_prctl(p, cpu, a),
        204 => misc::sys_sched_getaffinity(p, cpu, a),
        24 => Ok(0),
        202 => proc::sys_futex(p, cpu, a),
        62 | 200 | 234 => proc::sys_kill(p, cpu, nr, a),
        435 => proc::sys_clone3(p, cpu, a),
        247 => proc::sys_waitid(p, cpu, a),
        _ => Err(ENOSYS),
    }
}

fn unsafe_id(f: unsafe extern "C" fn() -> u32) -> i64 {
    // SAFETY: getuid/getgid and friends cannot fail and have no preconditions.
    unsafe { f() as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_decodes_flags_as_strace_does() {
        assert_eq!(show_flags(P, 0), "PROT_NONE");
        assert_eq!(show_flags(P, 5), "PROT_READ|PROT_EXEC");
        assert_eq!(show_flags(M, 0x22), "MAP_PRIVATE|MAP_ANONYMOUS");
        assert_eq!(show_flags(M, 0x812), "MAP_PRIVATE|MAP_FIXED|MAP_DENYWRITE");
        assert_eq!(show_flags(M, 0x8000_0001), "MAP_SHARED|0x80000000");
        assert_eq!(show_flags(O, 0x80000), "O_RDONLY|O_CLOEXEC");
        assert_eq!(show_flags(O, 0o1102), "O_RDWR|O_CREAT|O_TRUNC");
        assert_eq!(show_flags(A, 4), "MADV_DONTNEED");
        assert_eq!(show_flags(A, 999), "999");
    }
}
