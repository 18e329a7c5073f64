//! Running a host executable's image on the simulated machine: `execve` with the file and
//! its `PT_INTERP` opened from the host file system (the machine's root), into a fresh
//! address space.

use crate::machine::Machine;
use anyhow::{Context, Result};
use mmkit::fs::exec::{ExecImage, ExecParams};
use mmkit::mm::mm_types::DEFAULT_RLIMIT_STACK;
use std::path::Path;

/// What to exec.
pub struct ExecSpec<'a> {
    /// The executable's path, as given to `execve`.
    pub path: &'a str,
    /// `argv` (with `argv[0]`).
    pub argv: Vec<String>,
    /// `envp` as `NAME=value` strings.
    pub envp: Vec<String>,
    /// Disable randomization (`setarch -R`, `ADDR_NO_RANDOMIZE`); `norandmaps` on the
    /// kernel command line disables it too.
    pub no_aslr: bool,
}

/// `execve` of a host file into a new address space on `cpu`.
pub fn exec_host(m: &Machine, cpu: &mmkit::CpuGuard<'_>, spec: &ExecSpec<'_>) -> Result<ExecImage> {
    with_exec_params(m, spec, |file, params, open_interp| {
        m.kernel.execve(cpu, file, params, open_interp)
    })?
    .with_context(|| format!("execve {}", spec.path))
}

/// Open `spec.path` and build the `ExecParams` for it, then run `f` with them and an
/// interpreter opener on the host file system.
pub fn with_exec_params<R>(
    m: &Machine,
    spec: &ExecSpec<'_>,
    f: impl FnOnce(
        &std::sync::Arc<mmkit::fs::inode::File>,
        &ExecParams<'_>,
        &mut mmkit::fs::exec::InterpOpener<'_>,
    ) -> R,
) -> Result<R> {
    let k = &m.kernel;
    let file = m.hostfs.open(k, Path::new(spec.path))?;
    let argv: Vec<&[u8]> = spec.argv.iter().map(|s| s.as_bytes()).collect();
    let envp: Vec<&[u8]> = spec.envp.iter().map(|s| s.as_bytes()).collect();
    let params = ExecParams {
        argv: &argv,
        envp: &envp,
        filename: spec.path.as_bytes(),
        randomize: !spec.no_aslr && !k.config.norandmaps,
        rlimit_stack: DEFAULT_RLIMIT_STACK,
    };
    let mut open_interp = |p: &[u8]| {
        let path = std::str::from_utf8(p).map_err(|_| mmkit::Errno::ENOENT)?;
        m.hostfs
            .open(k, Path::new(path))
            .map_err(|_| mmkit::Errno::ENOENT)
    };
    Ok(f(&file, &params, &mut open_interp))
}

/// Start a process running `spec` in `tasks` (exec of the host file in a new task).
pub fn spawn_host(
    m: &Machine,
    tasks: &mut mmkit::kernel::task::TaskTable,
    cpu: &mmkit::CpuGuard<'_>,
    spec: &ExecSpec<'_>,
) -> Result<mmkit::kernel::task::Pid> {
    with_exec_params(m, spec, |file, params, interp| {
        tasks.spawn(&m.kernel, cpu, file, params, interp)
    })?
    .with_context(|| format!("spawn {}", spec.path))
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
