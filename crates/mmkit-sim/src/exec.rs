//! Running a host executable's image on the simulated machine: `execve` with the file and
//! its interpreters (`PT_INTERP`, `#!`) opened from the host file system (the machine's
//! root) with `open_exec`'s checks, as the calling user, into a fresh address space.

use crate::machine::Machine;
use anyhow::Result;
use mmkit::fs::exec::{ExecError, ExecImage, ExecParams};
use mmkit::fs::namei::Cred;
use mmkit::mm::mm_types::DEFAULT_RLIMIT_STACK;

/// What to exec.
pub struct ExecSpec<'a> {
    /// The executable's path, as given to `execve`.
    pub path: &'a str,
    /// `argv` (with `argv[0]`).
    pub argv: Vec<String>,
    /// `envp` as `NAME=value` strings.
    pub envp: Vec<String>,
    /// Disable randomization (`setarch -R`, `ADDR_NO_RANDOMIZE`); `norandmaps` on the
    /// kernel command line disables it too. A set-user-ID or set-group-ID file turns it
    /// back on, as in Linux.
    pub no_aslr: bool,
}

/// A failed `execve` explained for a person.
pub fn describe(path: &str, e: ExecError) -> String {
    if e.fatal {
        format!(
            "execve {path}: the image failed after the point of no return ({}): Linux kills the process with SIGSEGV",
            e.errno
        )
    } else {
        format!("execve {path}: {}", e.errno)
    }
}

/// `execve` of a host file into a new address space on `cpu`, as the calling user.
pub fn exec_host(m: &Machine, cpu: &mmkit::CpuGuard<'_>, spec: &ExecSpec<'_>) -> Result<ExecImage> {
    exec_outcome(m, cpu, spec, &crate::hostfs::host_cred())
        .map_err(|e| anyhow::anyhow!(describe(spec.path, e)))
}

/// `execve` of a host file with the credentials `cred`: the image, or the error and whether
/// it came after the point of no return. The file itself gets `open_exec`'s checks too.
pub fn exec_outcome(
    m: &Machine,
    cpu: &mmkit::CpuGuard<'_>,
    spec: &ExecSpec<'_>,
    cred: &Cred,
) -> Result<ExecImage, ExecError> {
    with_exec_params(m, cpu, spec, cred, |file, params, open_interp| {
        m.kernel.do_execve(cpu, file, params, open_interp)
    })
    .map_err(|errno| ExecError {
        errno,
        fatal: false,
    })?
}

/// Open `spec.path` for exec (as `cred`) and build the `ExecParams` for it, then run `f`
/// with them and an interpreter opener on the host file system.
pub fn with_exec_params<R>(
    m: &Machine,
    cpu: &mmkit::CpuGuard<'_>,
    spec: &ExecSpec<'_>,
    cred: &Cred,
    f: impl FnOnce(
        &std::sync::Arc<mmkit::fs::inode::File>,
        &ExecParams<'_>,
        &mut mmkit::fs::exec::InterpOpener<'_>,
    ) -> R,
) -> Result<R, mmkit::Errno> {
    let k = &m.kernel;
    let file = m.hostfs.open_exec(k, cpu, spec.path.as_bytes(), cred)?;
    let argv: Vec<&[u8]> = spec.argv.iter().map(|s| s.as_bytes()).collect();
    let envp: Vec<&[u8]> = spec.envp.iter().map(|s| s.as_bytes()).collect();
    let params = ExecParams {
        argv: &argv,
        envp: &envp,
        filename: spec.path.as_bytes(),
        randomize: !spec.no_aslr,
        rlimit_stack: DEFAULT_RLIMIT_STACK,
    };
    let mut open_interp = |p: &[u8]| m.hostfs.open_exec(k, cpu, p, cred);
    Ok(f(&file, &params, &mut open_interp))
}

/// Start a process running `spec` in `tasks` (exec of the host file in a new task).
pub fn spawn_host(
    m: &Machine,
    tasks: &mut mmkit::kernel::task::TaskTable,
    cpu: &mmkit::CpuGuard<'_>,
    spec: &ExecSpec<'_>,
) -> Result<mmkit::kernel::task::Pid> {
    let cred = crate::hostfs::host_cred();
    with_exec_params(m, cpu, spec, &cred, |file, params, interp| {
        tasks.spawn(&m.kernel, cpu, file, params, interp)
    })
    .and_then(|r| r)
    .map_err(|e| anyhow::anyhow!("spawn {}: {e}", spec.path))
}

/// `/bin/true` with no arguments, no environment and no randomization: the stock process
/// the scenarios and benchmarks run their patterns in.
pub fn true_spec() -> ExecSpec<'static> {
    ExecSpec {
        path: "/bin/true",
        argv: vec!["/bin/true".into()],
        envp: vec![],
        no_aslr: true,
    }
}
