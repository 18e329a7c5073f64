//! `mmkit exec`: run a host program on mmkit under `/dev/kvm` (or, with `--maps`/`--smaps`,
//! only exec it and print its map), with `--stat` figures and a `--compare` against the
//! program run natively.

use crate::exec::{exec_host, ExecSpec};
use crate::kvm::{run_program, Outcome, RunOptions, Vm};
use crate::machine::{Machine, MachineSpec};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `execvp`'s search: a name without a slash is looked up in `PATH`.
pub fn resolve(prog: &str) -> Result<PathBuf> {
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(prog);
        if let Ok(md) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    bail!("{prog}: command not found in PATH")
}

/// Run `cmd` as `mmkit exec` does; returns the exit status to leave with.
#[allow(clippy::too_many_arguments)]
pub fn exec(
    spec: &MachineSpec,
    cmd: &[String],
    envp: Vec<String>,
    no_aslr: bool,
    maps: bool,
    smaps: bool,
    opts: &RunOptions,
    stat: bool,
    compare: bool,
) -> Result<i32> {
    let path = resolve(&cmd[0])?;
    let path_s = path.to_string_lossy().into_owned();
    let m = Machine::boot(spec)?;
    let espec = ExecSpec {
        path: &path_s,
        argv: cmd.to_vec(),
        envp,
        no_aslr: no_aslr || compare,
    };
    if maps || smaps {
        m.on_cpu(0, |cpu| -> Result<()> {
            let img = exec_host(&m, cpu, &espec)?;
            if maps || !smaps {
                print!("{}", mmkit::fs::proc::task_mmu::proc_pid_maps(&img.mm));
            }
            if smaps {
                print!(
                    "{}",
                    mmkit::fs::proc::task_mmu::proc_pid_smaps(&m.kernel, &img.mm)
                );
            }
            m.kernel.exit_mmap(cpu, img.mm);
            Ok(())
        })?;
        return Ok(0);
    }
    crate::kvm::process::check_kvm()?;
    let vm = Vm::new(&m).context("setting up the virtual machine")?;
    let captured = compare.then(tempfile::tempfile).transpose()?;
    let mut opts = opts.clone();
    if let Some(f) = &captured {
        opts.stdout = Some(std::sync::Arc::new(f.try_clone()?.into()));
    }
    let t0 = Instant::now();
    let out = run_program(&m, &vm, &espec, &opts)?;
    let wall = t0.elapsed();
    for l in &out.log {
        // The kernel's lines about this run (a segfault, the OOM report), as dmesg shows.
        if l.contains("segfault")
            || l.contains("traps:")
            || l.contains("Killed process")
            || l.contains("--timeout")
        {
            eprintln!("{l}");
        }
    }
    if stat {
        eprint!("{}", stat_report(&out, &vm, wall));
    }
    if let Some(mut f) = captured {
        use std::io::{Read, Seek, Write};
        let mut ours = Vec::new();
        f.rewind()?;
        f.read_to_end(&mut ours)?;
        std::io::stdout().write_all(&ours)?;
        let native = run_native(&path, cmd, &espec.envp)?;
        eprint!("{}", compare_report(&out, &ours, wall, &native));
    }
    Ok(out.status.code())
}

/// What a native run of the same command did.
pub struct Native {
    /// Exit status as the shell sees it.
    pub code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Minor and major faults (`getrusage` of the child).
    pub faults: (u64, u64),
    /// `ru_maxrss` in KiB.
    pub maxrss_kb: u64,
    /// Wall time.
    pub wall: Duration,
}

/// Run `cmd` natively with ASLR off (`ADDR_NO_RANDOMIZE`) and the same environment.
pub fn run_native(path: &Path, cmd: &[String], envp: &[String]) -> Result<Native> {
    use std::os::unix::process::ExitStatusExt;
    let mut c = std::process::Command::new(path);
    c.arg0(&cmd[0]).args(&cmd[1..]).env_clear();
    for e in envp {
        if let Some((k, v)) = e.split_once('=') {
            c.env(k, v);
        }
    }
    // SAFETY: personality() in the child before exec; no allocation or locking.
    unsafe {
        c.pre_exec(|| {
            libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            Ok(())
        });
    }
    c.stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let t0 = Instant::now();
    let child = c
        .spawn()
        .with_context(|| format!("running {} natively", path.display()))?;
    let pid = child.id() as i32;
    let mut child = child;
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        o.read_to_end(&mut stdout)?;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into our own structs.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        bail!(
            "wait4 of the native run: {}",
            std::io::Error::last_os_error()
        );
    }
    let es = std::process::ExitStatus::from_raw(status);
    let code = es.code().unwrap_or_else(|| 128 + es.signal().unwrap_or(0));
    Ok(Native {
        code,
        stdout,
        faults: (ru.ru_minflt as u64, ru.ru_majflt as u64),
        maxrss_kb: ru.ru_maxrss as u64,
        wall: t0.elapsed(),
    })
}

fn stat_report(out: &Outcome, vm: &Vm, wall: Duration) -> String {
    const KINDS: [&str; 5] = ["anon", "zero", "file", "cow", "swap"];
    let kinds: Vec<String> = KINDS
        .iter()
        .zip(out.faults_by_kind)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    format!(
        "mmkit exec: pid {} ended with status {}\n\
         faults:      {} minor, {} major ({})\n\
         memory:      VmHWM {} kB; at exit RssAnon {} kB, RssFile {} kB, RssShmem {} kB\n\
         syscalls:    {}\n\
         VM exits:    {} ({:.1} µs each on average)\n\
         time:        {:.3} s wall, {:.3} s in the guest, {:.3} s in the VMM\n\
         hypervisor:  SYSCALL enters {:?}; KVM_CAP_SYNC_REGS {}\n",
        out.pid,
        out.status.code(),
        out.min_flt,
        out.maj_flt,
        kinds.join(", "),
        out.vm_hwm_kb,
        out.rss_kb.0,
        out.rss_kb.1,
        out.rss_kb.2,
        out.syscalls,
        out.exits,
        wall.as_secs_f64() * 1e6 / out.exits.max(1) as f64,
        wall.as_secs_f64(),
        out.guest.as_secs_f64(),
        out.vmm.as_secs_f64(),
        vm.syscall_entry,
        if vm.sync_regs { "yes" } else { "no" },
    )
}

fn compare_report(out: &Outcome, ours: &[u8], wall: Duration, n: &Native) -> String {
    let faults = (
        format!("{}/{}", out.min_flt, out.maj_flt),
        format!("{}/{}", n.faults.0, n.faults.1),
    );
    let walls = (
        format!("{:.3}s", wall.as_secs_f64()),
        format!("{:.3}s", n.wall.as_secs_f64()),
    );
    let same = if ours == n.stdout.as_slice() {
        "equal"
    } else {
        "DIFFERENT"
    };
    format!(
        "                 mmkit        native\n\
         exit status      {:<12} {}\n\
         stdout           {same} ({} bytes vs {})\n\
         faults min/maj   {:<12} {}\n\
         VmHWM kB         {:<12} {}\n\
         wall time        {:<12} {}\n\
         slowdown         {:.1}x\n",
        out.status.code(),
        n.code,
        ours.len(),
        n.stdout.len(),
        faults.0,
        faults.1,
        out.vm_hwm_kb,
        n.maxrss_kb,
        walls.0,
        walls.1,
        wall.as_secs_f64() / n.wall.as_secs_f64().max(1e-6),
    )
}
