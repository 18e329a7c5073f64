//! The host kernel's side of a comparison: what it makes of an `execve` (a child that stops
//! at its exec under `ptrace`, with `ADDR_NO_RANDOMIZE` as `setarch -R` sets it; its
//! `/proc/PID/{maps,smaps,status,auxv}` are read at the stop and the child is killed before
//! it runs a single instruction), and what the host is (kernel version, root, ptrace,
//! protection keys), so that tests compare only what this host can show and say why when it
//! cannot.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

/// The host's memory views of a process stopped right after `execve`.
#[derive(Clone, Debug)]
pub struct HostImage {
    /// `/proc/PID/maps`.
    pub maps: String,
    /// `/proc/PID/smaps`.
    pub smaps: String,
    /// `/proc/PID/status`.
    pub status: String,
    /// `/proc/PID/auxv`, raw.
    pub auxv: Vec<u8>,
}

/// What the host kernel did with an `execve`.
#[derive(Clone, Debug)]
pub enum HostExec {
    /// The exec succeeded; the image at the exec stop.
    Runs(Box<HostImage>),
    /// `execve` returned this errno.
    Failed(i32),
    /// The child was killed by this signal before its exec stop (an error after the point of
    /// no return: `SIGSEGV`).
    Killed(i32),
}

/// Exec `path` with `argv` and `env` in a ptraced child (randomization off when `no_aslr`)
/// and report what the host kernel did. `Err` when this host cannot show it (no `fork`, no
/// `ptrace`), with the reason. The child never runs the program: if `ptrace` fails it does
/// not exec at all.
pub fn host_exec(
    path: &[u8],
    argv: &[&[u8]],
    env: &[&str],
    no_aslr: bool,
) -> Result<HostExec, String> {
    retry_busy(|| host_exec_in(path, argv, env, no_aslr, false))
}

/// `ETXTBSY` from the host's exec of a file a test just wrote is this process's doing, not
/// the file's: another thread forked while the file was still open for writing, and the
/// child holds that descriptor until its own exec closes it. Such an exec is tried again
/// (a few times, 10 ms apart) before the answer stands.
fn retry_busy(mut exec: impl FnMut() -> Result<HostExec, String>) -> Result<HostExec, String> {
    let mut r = exec();
    for _ in 0..20 {
        if !matches!(r, Ok(HostExec::Failed(e)) if e == libc::ETXTBSY) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        r = exec();
    }
    r
}

/// [`host_exec`] with the file seen through a `nosuid` bind mount of itself in a private
/// mount namespace (needs `CAP_SYS_ADMIN`): its set-user-ID and set-group-ID bits are
/// ignored, so the exec keeps `ADDR_NO_RANDOMIZE` and its layout can be compared byte for
/// byte.
pub fn host_exec_nosuid(path: &[u8], argv: &[&[u8]], env: &[&str]) -> Result<HostExec, String> {
    retry_busy(|| host_exec_in(path, argv, env, true, true))
}

fn host_exec_in(
    path: &[u8],
    argv: &[&[u8]],
    env: &[&str],
    no_aslr: bool,
    nosuid: bool,
) -> Result<HostExec, String> {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| String::from("a NUL in a path or argument"));
    let cpath = cstr(path)?;
    let cargs: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let cenv: Vec<CString> = env
        .iter()
        .map(|e| cstr(e.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut argp: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = cenv.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fork; the child only calls async-signal-safe functions (personality, ptrace,
    // write, execve, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the pipe we created.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(format!("fork: {e}"));
    }
    if pid == 0 {
        // SAFETY: see above. Messages to the parent: [0, errno] ptrace failed, [1, errno]
        // execve failed, [2, step] the nosuid mount failed. The pipe closes on a successful
        // exec (O_CLOEXEC).
        unsafe {
            if nosuid {
                let fail = |step: i32| {
                    let msg = [2i32, step];
                    libc::write(fds[1], msg.as_ptr().cast(), 8);
                    libc::_exit(125);
                };
                let null = std::ptr::null();
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    fail(1);
                }
                let root = c"/".as_ptr();
                if libc::mount(
                    null,
                    root,
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null.cast(),
                ) != 0
                {
                    fail(2);
                }
                let p = cpath.as_ptr();
                if libc::mount(p, p, null, libc::MS_BIND, null.cast()) != 0 {
                    fail(3);
                }
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                if libc::mount(null, p, null, flags, null.cast()) != 0 {
                    fail(4);
                }
            }
            if no_aslr {
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            }
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                let msg = [0i32, *libc::__errno_location()];
                libc::write(fds[1], msg.as_ptr().cast(), 8);
                libc::_exit(126);
            }
            libc::execve(cpath.as_ptr(), argp.as_ptr(), envp.as_ptr());
            let msg = [1i32, *libc::__errno_location()];
            libc::write(fds[1], msg.as_ptr().cast(), 8);
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let mut msg = [0i32; 2];
    // SAFETY: reading at most 8 bytes into `msg`.
    let n = unsafe { libc::read(fds[0], msg.as_mut_ptr().cast(), 8) };
    // SAFETY: closing the read end.
    unsafe { libc::close(fds[0]) };
    if libc::WIFSTOPPED(status) {
        let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
        let text = |what: &str| String::from_utf8_lossy(&read(what)).into_owned();
        let img = HostImage {
            maps: text("maps"),
            smaps: text("smaps"),
            status: text("status"),
            auxv: read("auxv"),
        };
        // SAFETY: killing and reaping our own stopped child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        return Ok(HostExec::Runs(Box::new(img)));
    }
    if n == 8 && msg[0] == 0 {
        return Err(format!(
            "ptrace(PTRACE_TRACEME) is refused here ({})",
            std::io::Error::from_raw_os_error(msg[1])
        ));
    }
    if n == 8 && msg[0] == 2 {
        return Err(format!(
            "a private nosuid bind mount cannot be made here (step {}): it needs CAP_SYS_ADMIN",
            msg[1]
        ));
    }
    if n == 8 && msg[0] == 1 {
        return Ok(HostExec::Failed(msg[1]));
    }
    if libc::WIFSIGNALED(status) {
        return Ok(HostExec::Killed(libc::WTERMSIG(status)));
    }
    Err(format!(
        "the child ended without an exec stop (status {status:#x})"
    ))
}

/// What this host is, as far as comparisons with it go.
#[derive(Clone, Debug)]
pub struct HostCaps {
    /// `uname -r`.
    pub release: String,
    /// The kernel version (major, minor).
    pub version: (u32, u32),
    /// Running as root.
    pub root: bool,
    /// Why exec stops under ptrace cannot be observed, if they cannot.
    pub ptrace: Result<(), String>,
    /// The CPU has protection keys and the kernel enabled them (`ospke`).
    pub pkeys: bool,
    /// The host kernel runs ia32 programs (`CONFIG_IA32_EMULATION`, not disabled).
    pub ia32: bool,
    /// Why `unshare -m` with bind mounts over `/proc` files (how procps is pointed at our
    /// files) cannot be used here, if it cannot.
    pub mount_ns: Result<(), String>,
}

impl HostCaps {
    /// Linux 6.13 split the vDSO's clock pages into `[vvar_vclock]`; the layout and smaps
    /// fields this library prints are those of 6.13 and later.
    pub fn same_vdso_layout(&self) -> Result<(), String> {
        if self.version >= (6, 13) {
            Ok(())
        } else {
            Err(format!(
                "the host kernel is {} and lays out [vvar]/[vdso] as Linux before 6.13 did; mmkit follows 6.13+",
                self.release
            ))
        }
    }
}

/// Probe the host once.
pub fn host_caps() -> &'static HostCaps {
    static CAPS: OnceLock<HostCaps> = OnceLock::new();
    CAPS.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().unwrap_or(0));
        let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/true".into());
        let probe_path = if std::path::Path::new("/bin/true").exists() {
            std::path::PathBuf::from("/bin/true")
        } else {
            exe
        };
        let p = probe_path.as_os_str().as_bytes();
        let ptrace = host_exec(p, &[p], &[], true).and_then(|r| match r {
            HostExec::Runs(_) => Ok(()),
            other => Err(format!(
                "exec of {} under ptrace gave {other:?}",
                probe_path.display()
            )),
        });
        let ia32 = std::fs::read_to_string("/proc/sys/abi/vsyscall32")
            .map(|s| s.trim() != "0")
            .unwrap_or(true);
        let mount_ns = match std::process::Command::new("unshare")
            .args(["-m", "true"])
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "`unshare -m` fails here ({}): bind-mounting our /proc files needs CAP_SYS_ADMIN",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("`unshare` (util-linux) cannot be run: {e}")),
        };
        HostCaps {
            release,
            mount_ns,
            version,
            // SAFETY: geteuid has no preconditions.
            root: unsafe { libc::geteuid() } == 0,
            ptrace,
            pkeys: crate::cpu::host_cpuinfo_flags()
                .iter()
                .any(|f| f == "ospke"),
            ia32,
        }
    })
}

/// Whether the procps tool `tool` can be run here (`Err` with the reason).
pub fn have_tool(tool: &str) -> Result<(), String> {
    match std::process::Command::new(tool).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("`{tool}` cannot be run here: {e}")),
    }
}

/// Say, where `cargo test` shows it even for a passing test, that `test` did not compare
/// something with the host and why. (Test output is captured unless it goes to the stderr
/// file descriptor directly, as this does.)
pub fn skip(test: &str, why: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "SKIPPED in {test}: {why}");
}
