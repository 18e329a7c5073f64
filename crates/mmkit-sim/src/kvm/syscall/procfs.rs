//! `/proc` seen from inside: a program that opens `/proc/self/maps`, `/proc/meminfo` and the
//! like reads mmkit's views (generated when opened, as `seq_file`s are), so `cat
//! /proc/meminfo`, `free` or `grep VmRSS /proc/self/status` run on mmkit report mmkit. Paths
//! that are not memory views (`/proc/cpuinfo`, `/proc/sys/...`) are the host's.

use super::Proc;
use mmkit::fs::proc;
use mmkit::CpuGuard;

/// The clock ticks per second `/proc/PID/stat` counts in (`USER_HZ`).
const USER_HZ: u64 = 100;

/// What `/proc/PID/...` names: `self`/`thread-self` (the caller), or a pid — the machine's
/// task of that id, or `ESRCH` when the machine has none (a host pid means nothing here).
fn pid_path<'a>(p: &Proc<'_>, path: &'a str) -> Option<Result<(u32, &'a str), i64>> {
    let rest = path.strip_prefix("/proc/")?;
    let (who, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if who == "self" || who == "thread-self" {
        return Some(Ok((p.pid, tail)));
    }
    let pid = who.parse::<u32>().ok()?;
    Some(match p.tasks.get(pid) {
        Some(_) => Ok((pid, tail)),
        None => Err(-(libc::ENOENT as i64)),
    })
}

/// The contents of `/proc` file `path` if it is one of mmkit's views, generated now.
pub fn open(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, path: &str) -> Result<Option<Vec<u8>>, i64> {
    let k = p.k;
    if let Some(r) = pid_path(p, path) {
        let (pid, tail) = r?;
        let t = p.tasks.get(pid).ok_or(-(libc::ESRCH as i64))?;
        let text = match tail {
            "maps" => Some(
                t.mm.as_ref()
                    .map(proc::task_mmu::proc_pid_maps)
                    .unwrap_or_default(),
            ),
            "smaps" => Some(
                t.mm.as_ref()
                    .map(|mm| proc::task_mmu::proc_pid_smaps(k, mm))
                    .unwrap_or_default(),
            ),
            "smaps_rollup" => Some(
                t.mm.as_ref()
                    .map(|mm| proc::task_mmu::proc_pid_smaps_rollup(k, mm))
                    .unwrap_or_default(),
            ),
            "status" => Some(proc::array::proc_pid_status(k, t)),
            "statm" => Some(proc::array::proc_pid_statm(t)),
            "stat" => Some(proc::array::proc_pid_stat(t, times(p.task_cpu(pid)))),
            "oom_score" => Some(proc::array::proc_pid_oom_score(k, t)),
            "oom_score_adj" => Some(proc::array::proc_pid_oom_score_adj(t)),
            "comm" => Some(format!("{}\n", t.comm)),
            "cmdline" => {
                let argv = if pid == p.pid {
                    &p.argv
                } else {
                    match p.sched.shared.get(&pid) {
                        Some(sh) => sh.argv(),
                        None => return Ok(Some(Vec::new())), // a zombie's is empty
                    }
                };
                let mut b = Vec::new();
                for a in argv {
                    b.extend_from_slice(a.as_bytes());
                    b.push(0);
                }
                return Ok(Some(b));
            }
            _ => None,
        };
        return Ok(text.map(String::into_bytes));
    }
    let text = match path {
        "/proc/meminfo" => proc::meminfo::meminfo(k),
        "/proc/vmstat" => proc::vmstat::vmstat(k),
        "/proc/buddyinfo" => proc::buddyinfo::buddyinfo(k),
        "/proc/pagetypeinfo" => proc::buddyinfo::pagetypeinfo(k),
        "/proc/zoneinfo" => proc::zoneinfo::zoneinfo(k),
        "/proc/slabinfo" => k.proc_slabinfo(),
        "/proc/vmallocinfo" => k.proc_vmallocinfo(),
        "/proc/swaps" => k.proc_swaps(),
        "/proc/iomem" => proc::iomem::iomem(k),
        _ => return Ok(None),
    };
    Ok(Some(text.into_bytes()))
}

/// The target of a `/proc` symbolic link that is ours (`/proc/self/exe`, `/proc/self/fd/N`).
pub fn readlink(p: &Proc<'_>, path: &str) -> Option<String> {
    let (pid, tail) = pid_path(p, path)?.ok()?;
    if pid != p.pid {
        return None;
    }
    if tail == "exe" {
        return Some(
            std::fs::canonicalize(&p.exe)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|_| p.exe.clone()),
        );
    }
    let n: i64 = tail.strip_prefix("fd/")?.parse().ok()?;
    let f = p.fds.get(n)?;
    Some(f.path.clone().unwrap_or_else(|| {
        match f.host() {
            Some(h) => std::fs::read_link(format!("/proc/self/fd/{h}"))
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default(),
            None => String::new(),
        }
    }))
}

/// The calling (vCPU) thread's CPU times and the process's start, in clock ticks, and
/// `processor`: the vCPU the task runs on or last ran on (`task_cpu`).
fn times(processor: usize) -> proc::array::TaskTimes {
    // SAFETY: into our own struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let ticks =
        |tv: libc::timeval| tv.tv_sec as u64 * USER_HZ + tv.tv_usec as u64 * USER_HZ / 1_000_000;
    proc::array::TaskTimes {
        utime: ticks(ru.ru_utime),
        stime: ticks(ru.ru_stime),
        start_time: 0,
        processor: processor as u32,
    }
}
