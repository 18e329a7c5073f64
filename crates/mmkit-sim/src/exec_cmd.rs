//! `mmkit exec`: run a host program on mmkit under `/dev/kvm` (or, with `--maps`/`--smaps`,
//! only exec it and print its map), with `--stat` figures and a `--compare` against the
//! program run natively.

use crate::exec::{exec_host, ExecSpec};
use crate::kvm::{Outcome, RunOptions, Vm};
use crate::machine::Machine;
use crate::pressure_exec::{run_watched_every, SAMPLE_PERIOD};
use anyhow::{bail, Context, Result};
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

/// Memory pressure for `mmkit exec`: a swap file, a chart of the run.
#[derive(Clone, Debug, Default)]
pub struct Pressure {
    /// `--swap SIZE`: a swap file of this many bytes, made as `mkswap` does in a private
    /// temporary directory, swapped on for the run and removed after it.
    pub swap: Option<u64>,
    /// `--chart FILE.svg`: where to draw the run (already created, see
    /// [`crate::cli::create_svg`]).
    pub chart: Option<PathBuf>,
}

/// Run `cmd` as `mmkit exec` does; returns the exit status to leave with.
#[allow(clippy::too_many_arguments)]
pub fn exec(
    m: &Machine,
    cmd: &[String],
    envp: Vec<String>,
    no_aslr: bool,
    maps: bool,
    smaps: bool,
    opts: &RunOptions,
    stat: bool,
    compare: bool,
    pressure: &Pressure,
) -> Result<i32> {
    let path = resolve(&cmd[0])?;
    let path_s = path.to_string_lossy().into_owned();
    let espec = ExecSpec {
        path: &path_s,
        argv: cmd.to_vec(),
        envp,
        no_aslr: no_aslr || compare,
    };
    if maps || smaps {
        m.on_cpu(0, |cpu| -> Result<()> {
            let img = exec_host(m, cpu, &espec)?;
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
    let vm = Vm::new(m).context("setting up the virtual machine")?;
    let captured = compare.then(tempfile::tempfile).transpose()?;
    let mut opts = opts.clone();
    if let Some(f) = &captured {
        opts.stdout = Some(std::sync::Arc::new(f.try_clone()?.into()));
    }
    let swap = match pressure.swap {
        Some(bytes) => Some(crate::pressure::SwapFile::on(
            m,
            bytes,
            &std::env::temp_dir(),
        )?),
        None => None,
    };
    let t0 = Instant::now();
    // Samples over time only where they are shown (the chart, the swap report).
    let period = (pressure.swap.is_some() || pressure.chart.is_some()).then_some(SAMPLE_PERIOD);
    let ran = run_watched_every(m, &vm, &espec, &opts, period);
    let wall = t0.elapsed();
    // Swap off (every slot is free again once the program is gone) and remove the file,
    // whatever the run did.
    let off = swap.map(|s| s.off(m)).transpose();
    let (out, report) = ran?;
    off?;
    for l in &out.log {
        // The kernel's lines about this run (a segfault, the OOM report), as dmesg shows.
        eprintln!("{l}");
    }
    if stat {
        eprint!("{}", stat_report(&out, &vm, wall));
        if pressure.swap.is_some() || pressure.chart.is_some() {
            eprint!("{}", pressure_report(&report));
        }
    }
    if let Some(svg) = &pressure.chart {
        let title = format!(
            "mmkit exec {}: MemTotal {} MiB, swap {} MiB",
            cmd.join(" ").chars().take(60).collect::<String>(),
            m.kernel.totalram_pages() >> 8,
            pressure.swap.unwrap_or(0) >> 20
        );
        crate::pressure::draw_svg_titled(&report, svg, &title)
            .with_context(|| format!("--chart {}: cannot write the chart", svg.display()))?;
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
    if out.status == crate::kvm::process::Status::Signaled(libc::SIGINT) {
        crate::kvm::tty::guest_died_of_sigint();
    }
    Ok(out.status.code())
}

/// What a native run of the same command did, seen by ptrace: from its exec stop to its exit
/// stop (`PTRACE_O_TRACEEXIT`, where the address space is still there).
pub struct Native {
    /// Exit status as the shell sees it.
    pub code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Minor and major faults from exec to exit (`/proc/PID/stat` at both stops).
    pub faults: (u64, u64),
    /// `VmHWM` in KiB at the exit stop.
    pub vm_hwm_kb: u64,
    /// `/proc/PID/maps` at the exit stop.
    pub maps_at_exit: String,
    /// Wall time from exec to exit.
    pub wall: Duration,
}

fn stat_faults(pid: i32) -> (u64, u64) {
    stat_faults_at(&format!("/proc/{pid}/stat"))
}

/// `minflt` and `majflt` of a `/proc/.../stat` file.
fn stat_faults_at(path: &str) -> (u64, u64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the ") " that ends comm: state ppid pgrp session tty tpgid flags minflt
    // cminflt majflt.
    let rest = s.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (
        f.get(7).copied().unwrap_or(0),
        f.get(9).copied().unwrap_or(0),
    )
}

fn status_kb(pid: i32, key: &str) -> u64 {
    status_kb_at(&format!("/proc/{pid}/status"), key)
}

/// The number after `key` in a `/proc/.../status` file (0 when absent).
fn status_kb_at(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Fork and exec `cmd` natively under ptrace (`PTRACE_TRACEME`) with ASLR off
/// (`ADDR_NO_RANDOMIZE`), the given environment, `SIGPIPE` at its default action and its
/// standard output into a temporary file; returns at the exec stop. An error when ptrace
/// is not allowed here.
fn spawn_traced(path: &Path, cmd: &[String], envp: &[String]) -> Result<(i32, std::fs::File)> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let envs: Vec<CString> = envp
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envv: Vec<*const libc::c_char> = envs.iter().map(|a| a.as_ptr()).collect();
    envv.push(std::ptr::null());
    let out = tempfile::tempfile()?;
    let out_fd = out.as_raw_fd();
    // SAFETY: the child calls only async-signal-safe functions (dup2, signal, personality,
    // ptrace, execve, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::dup2(out_fd, 1);
            // The Rust runtime ignores SIGPIPE and an ignored signal stays ignored across
            // exec: give the program the default action a shell would (and mmkit's first
            // task has).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::execve(cpath.as_ptr(), argv.as_ptr(), envv.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFSTOPPED(status) {
        bail!("the native run did not stop at exec (is ptrace allowed here?)");
    }
    Ok((pid, out))
}

/// Run `cmd` natively with ASLR off (`ADDR_NO_RANDOMIZE`), the same environment and
/// standard input, its output captured, under ptrace to see it at exec and at exit.
/// `ENOSYS`-style error when ptrace is not allowed here.
pub fn run_native(path: &Path, cmd: &[String], envp: &[String]) -> Result<Native> {
    use std::io::{Read, Seek};
    let (pid, mut out) = spawn_traced(path, cmd, envp)?;
    let wait = |status: &mut i32| {
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, status, 0) }
    };
    let mut status = 0;
    let t0 = Instant::now();
    let start = stat_faults(pid);
    // SAFETY: our own stopped tracee.
    unsafe {
        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, libc::PTRACE_O_TRACEEXIT);
        libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
    }
    let (mut faults, mut hwm, mut maps) = ((0, 0), 0, String::new());
    loop {
        wait(&mut status);
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            break;
        }
        let mut sig = 0;
        if status >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8) {
            let end = stat_faults(pid);
            faults = (end.0 - start.0, end.1 - start.1);
            hwm = status_kb(pid, "VmHWM:");
            maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        } else if libc::WIFSTOPPED(status) {
            sig = libc::WSTOPSIG(status);
        }
        // SAFETY: continue our own tracee, passing on a signal it got.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig) };
    }
    let wall = t0.elapsed();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let mut stdout = Vec::new();
    out.rewind()?;
    out.read_to_end(&mut stdout)?;
    Ok(Native {
        code,
        stdout,
        faults,
        vm_hwm_kb: hwm,
        maps_at_exit: maps,
        wall,
    })
}

/// One process of a native run's tree, as ptrace saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativeProcess {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid when it ended.
    pub ppid: i32,
    /// The executable it ended in (`/proc/PID/exe`).
    pub exe: String,
    /// Minor faults of all its threads, from its fork (the first process: its exec) to
    /// its exit.
    pub min_flt: u64,
    /// Major faults, counted the same way.
    pub maj_flt: u64,
}

/// A native run of a command and every process it started.
pub struct NativeTree {
    /// Exit status of the first process as the shell sees it.
    pub code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Every process, in the order they ended.
    pub processes: Vec<NativeProcess>,
}

/// Run `cmd` natively as [`run_native`] does, following every process and thread it
/// starts (`PTRACE_O_TRACEFORK`/`VFORK`/`CLONE`/`EXEC`/`EXIT`, each new task traced from
/// its first instruction): at each task's exit stop its own `minflt`/`majflt`
/// (`/proc/TGID/task/TID/stat`) are added to its process's. The first process counts
/// from its exec stop, as mmkit counts its first process from the end of its exec.
pub fn run_native_tree(path: &Path, cmd: &[String], envp: &[String]) -> Result<NativeTree> {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{Read, Seek};
    let (root, mut out) = spawn_traced(path, cmd, envp)?;
    let base = stat_faults_at(&format!("/proc/{root}/task/{root}/stat"));
    let opts = libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_EXITKILL;
    // SAFETY: our own stopped tracee.
    unsafe {
        libc::ptrace(libc::PTRACE_SETOPTIONS, root, 0, opts);
        libc::ptrace(libc::PTRACE_CONT, root, 0, 0);
    }
    // The tasks traced (this process's other children, another test's for instance, are
    // not ours to reap: no `waitpid(-1)`), and those not yet seen stopped (a new task's
    // first stop is its SIGSTOP, not a signal to pass on); processes by thread group id,
    // while they live.
    let mut tracees = BTreeSet::from([root]);
    let mut fresh: BTreeSet<i32> = BTreeSet::new();
    let mut live: BTreeMap<i32, usize> = BTreeMap::new();
    let mut procs: Vec<NativeProcess> = Vec::new();
    let mut code = None;
    while let Some((tid, status)) = wait_tracee(&tracees) {
        let Some(status) = status else {
            // Gone without a report (reaped as a thread of an exec): nothing more to see.
            tracees.remove(&tid);
            continue;
        };
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == root {
                code = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
            // A thread group's leader is reported last: the process is over.
            live.remove(&tid);
            tracees.remove(&tid);
            continue;
        }
        let event = status >> 16;
        let mut sig = 0;
        if event == libc::PTRACE_EVENT_EXIT {
            let tgid = status_kb_at(&format!("/proc/{tid}/status"), "Tgid:") as i32;
            let tgid = if tgid == 0 { tid } else { tgid };
            let (mut min, mut maj) = stat_faults_at(&format!("/proc/{tgid}/task/{tid}/stat"));
            if tid == root {
                min = min.saturating_sub(base.0);
                maj = maj.saturating_sub(base.1);
            }
            let ppid = status_kb_at(&format!("/proc/{tid}/status"), "PPid:") as i32;
            let exe = std::fs::read_link(format!("/proc/{tid}/exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let i = *live.entry(tgid).or_insert_with(|| {
                procs.push(NativeProcess {
                    pid: tgid,
                    ..Default::default()
                });
                procs.len() - 1
            });
            let p = &mut procs[i];
            p.min_flt += min;
            p.maj_flt += maj;
            p.ppid = ppid;
            if !exe.is_empty() {
                p.exe = exe;
            }
        } else if matches!(
            event,
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE
        ) {
            // The new task is traced from its first instruction: wait for it too.
            let mut new: libc::c_ulong = 0;
            // SAFETY: our own tracee at an event stop; the kernel writes one word.
            if unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut new) } == 0 {
                tracees.insert(new as i32);
                fresh.insert(new as i32);
            }
        } else if event == 0 && libc::WIFSTOPPED(status) {
            sig = libc::WSTOPSIG(status);
            if fresh.remove(&tid) && sig == libc::SIGSTOP {
                sig = 0;
            }
        }
        // SAFETY: continue our own tracee, passing on a signal it got.
        unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0, sig) };
    }
    let Some(code) = code else {
        bail!("the native run's first process was not seen to end");
    };
    let mut stdout = Vec::new();
    out.rewind()?;
    out.read_to_end(&mut stdout)?;
    Ok(NativeTree {
        code,
        stdout,
        processes: procs,
    })
}

/// The next report of one of `tracees` (`waitpid` of each in turn, without waiting, then a
/// short sleep): its tid and status, or `None` as the status of one that is no longer
/// there to wait for. `None` when nothing is traced any more.
fn wait_tracee(tracees: &std::collections::BTreeSet<i32>) -> Option<(i32, Option<i32>)> {
    if tracees.is_empty() {
        return None;
    }
    loop {
        for &tid in tracees {
            let mut status = 0;
            // SAFETY: waiting for one of our own tracees, without blocking.
            let r = unsafe { libc::waitpid(tid, &mut status, libc::WNOHANG | libc::__WALL) };
            if r == tid {
                return Some((tid, Some(status)));
            }
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                return Some((tid, None));
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn stat_report(out: &Outcome, vm: &Vm, wall: Duration) -> String {
    const KINDS: [&str; 5] = ["anon", "zero", "file", "cow", "swap"];
    let kinds: Vec<String> = KINDS
        .iter()
        .zip(out.faults_by_kind)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    // A run of several processes: each one's faults, in the order they ended.
    let mut per_process = String::new();
    if out.processes.len() > 1 {
        for p in &out.processes {
            let kinds: Vec<String> = KINDS
                .iter()
                .zip(p.by_kind)
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            per_process.push_str(&format!(
                "  pid {:<6} {} minor, {} major ({}) {}\n",
                p.pid,
                p.min_flt,
                p.maj_flt,
                kinds.join(", "),
                p.exe
            ));
        }
    }
    format!(
        "mmkit exec: pid {} ended with status {}\n\
         faults:      {} minor, {} major ({})\n\
         {per_process}\
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

/// The reclaim side of a watched run: kswapd's runs, the low point of free memory, swap's
/// high point, and the `/proc/vmstat` counters of [`crate::pressure::STATS`].
fn pressure_report(r: &crate::pressure::Report) -> String {
    let low = r.samples.iter().map(|s| s.free).min().unwrap_or(0);
    let swap = r.samples.iter().map(|s| s.swap_used).max().unwrap_or(0);
    let wm = r.samples.first().map_or([0; 3], |s| s.wmarks);
    let mut s = format!(
        "reclaim:     kswapd ran {} times; free pages fell to {low} (min {}, low {}, high {}); swap used at most {} MiB\n",
        r.kswapd_runs.len(),
        wm[0],
        wm[1],
        wm[2],
        swap >> 8
    );
    for (n, v) in &r.stats {
        s.push_str(&format!("             {n:<30} {v}\n"));
    }
    s
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
        n.vm_hwm_kb,
        walls.0,
        walls.1,
        wall.as_secs_f64() / n.wall.as_secs_f64().max(1e-6),
    )
}
