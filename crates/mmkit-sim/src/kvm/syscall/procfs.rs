//! `/proc` seen from inside: a program that opens `/proc/self/maps`, `/proc/meminfo` and the
//! like reads mmkit's views (generated when opened, as `seq_file`s are), so `cat
//! /proc/meminfo`, `free` or `grep VmRSS /proc/self/status` run on mmkit report mmkit. Paths
//! that are not memory views (`/proc/cpuinfo`, `/proc/uptime`, `/proc/stat`, `/proc/sys/...`)
//! are the host's.
//!
//! The process directories are the run's (`fs/proc/root.c`'s `proc_root_readdir`,
//! `fs/proc/base.c`'s `proc_pid_readdir`, `proc_task_readdir`): listing `/proc` gives the
//! host's entries that are not processes, then the run's processes (thread group leaders,
//! zombies included); `/proc/PID` lists the files mmkit serves for it and `/proc/PID/task`
//! its threads, each of which is a `/proc/PID/task/TID` directory. A number that is not one
//! of the run's tasks is `ENOENT` (a host pid means nothing here), so `ps`, `top` and `pmap`
//! run on mmkit see the run's tasks and only them.

use super::fd::DirEnt;
use super::Proc;
use crate::kvm::sched::RunState;
use mmkit::fs::proc;
use mmkit::kernel::task::{Pid, TaskState};
use mmkit::CpuGuard;

/// The clock ticks per second `/proc/PID/stat` counts in (`USER_HZ`).
const USER_HZ: u64 = 100;

/// `DT_DIR`, `DT_REG`, `DT_LNK`.
const DT_DIR: u8 = 4;
const DT_REG: u8 = 8;
const DT_LNK: u8 = 10;

/// The files of a `/proc/PID` (and `/proc/PID/task/TID`) directory mmkit serves, in
/// `tgid_base_stuff`'s order.
const PID_FILES: [(&str, u8); 11] = [
    ("task", DT_DIR),
    ("status", DT_REG),
    ("comm", DT_REG),
    ("cmdline", DT_REG),
    ("stat", DT_REG),
    ("statm", DT_REG),
    ("maps", DT_REG),
    ("exe", DT_LNK),
    ("smaps", DT_REG),
    ("oom_score", DT_REG),
    ("oom_score_adj", DT_REG),
];

/// What a `/proc/...` path names among the run's tasks.
struct PidPath<'a> {
    /// The process.
    pid: Pid,
    /// The thread (the process itself unless the path went through `task/TID`).
    tid: Pid,
    /// The rest of the path after `PID/` (or `PID/task/TID/`); empty for the directory.
    tail: &'a str,
    /// The path was `/proc/PID/task` (the directory of threads).
    task_dir: bool,
    /// Named by number (not `self`/`thread-self`).
    numeric: bool,
}

/// The threads of process `pid`, by id: the running one and those off the CPU (a zombie's
/// is its leader alone).
fn threads_of(p: &Proc<'_>, pid: Pid) -> Vec<Pid> {
    let mut v: Vec<Pid> = p
        .sched
        .parked
        .iter()
        .filter(|(_, t)| t.pid == pid)
        .map(|(&tid, _)| tid)
        .collect();
    if p.pid == pid {
        v.push(p.tid);
    }
    if v.is_empty() {
        v.push(pid);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// A `/proc` name that is a pid (`name_to_int`): decimal digits only, no leading zero.
fn pid_name(s: &str) -> Option<Pid> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// What `/proc/PID/...` names: `self`/`thread-self` (the caller), or a pid — the machine's
/// task of that id, or `ENOENT` when the machine has none (a host pid means nothing here).
fn pid_path<'a>(p: &Proc<'_>, path: &'a str) -> Option<Result<PidPath<'a>, i64>> {
    let rest = path.strip_prefix("/proc/")?.trim_end_matches('/');
    let (who, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let enoent = -(libc::ENOENT as i64);
    let (pid, mut tid, numeric) = match who {
        "self" => (p.pid, p.pid, false),
        "thread-self" => (p.pid, p.tid, false),
        _ => {
            let pid = pid_name(who)?;
            if p.tasks.get(pid).is_none() {
                return Some(Err(enoent));
            }
            (pid, pid, true)
        }
    };
    let mut tail = tail;
    let mut task_dir = false;
    if who == "thread-self" {
        // thread-self is /proc/PID/task/TID of the caller.
    } else if tail == "task" {
        task_dir = true;
        tail = "";
    } else if let Some(t) = tail.strip_prefix("task/") {
        let (n, rest) = t.split_once('/').unwrap_or((t, ""));
        let Some(n) = pid_name(n) else {
            return Some(Err(enoent));
        };
        if !threads_of(p, pid).contains(&n) {
            return Some(Err(enoent));
        }
        tid = n;
        tail = rest;
    }
    Some(Ok(PidPath {
        pid,
        tid,
        tail,
        task_dir,
        numeric,
    }))
}

/// The scheduler state letter and name of thread `tid` (`task_state_array`).
fn state_of(p: &Proc<'_>, pid: Pid, tid: Pid) -> (char, &'static str) {
    if p.tasks
        .get(pid)
        .is_some_and(|t| t.state == TaskState::Zombie)
    {
        return ('Z', "zombie");
    }
    if p.is_stopped(pid) {
        return ('T', "stopped");
    }
    if tid == p.tid {
        return ('R', "running");
    }
    match p.sched.parked.get(&tid).map(|t| t.run) {
        Some(RunState::Blocked(_)) | Some(RunState::Vfork(_)) => ('S', "sleeping"),
        _ => ('R', "running"),
    }
}

/// `/proc/PID/stat` of thread `tid` of process `pid`: the library's fields, with what the
/// scheduler knows put in (state, process group, session, CPU times — the process's time
/// in the guest as `utime` and in the VMM on its behalf as `stime` —, threads, start
/// time).
fn stat_of(p: &Proc<'_>, pid: Pid, tid: Pid, text: &str) -> String {
    let Some(close) = text.rfind(')') else {
        return text.into();
    };
    let rest = &text[close + 1..];
    let mut f: Vec<String> = rest.split_whitespace().map(String::from).collect();
    if f.len() < 20 {
        return text.into();
    }
    let (pgrp, sid) = p.pgrp_of(pid).unwrap_or((pid, pid));
    f[0] = state_of(p, pid, tid).0.to_string();
    f[2] = pgrp.to_string();
    f[3] = sid.to_string();
    // tty_nr and tpgid: the terminal and its foreground group, for a process of the
    // terminal's session.
    let tty = p.sched.tty;
    let on_tty = sid == tty.sid;
    f[4] = if on_tty { crate::kvm::tty::tty_nr() } else { 0 }.to_string();
    f[5] = if on_tty { tty.fg as i64 } else { -1 }.to_string();
    let (user, sys) = p.sched.runtime.get(&pid).copied().unwrap_or_default();
    let ticks = |d: std::time::Duration| (d.as_millis() as u64 / (1000 / USER_HZ)).to_string();
    f[11] = ticks(user);
    f[12] = ticks(sys);
    f[17] = threads_of(p, pid).len().to_string();
    f[19] = p.sched.started.get(&pid).copied().unwrap_or(0).to_string();
    let head = format!("{tid} ({})", p.comm_of(pid, tid));
    format!("{head} {}\n", f.join(" "))
}

/// `/proc/PID/status` of thread `tid`: the library's lines, with the scheduler's state,
/// thread id, process group, session and thread count.
fn status_of(p: &Proc<'_>, pid: Pid, tid: Pid, text: &str) -> String {
    let (pgrp, sid) = p.pgrp_of(pid).unwrap_or((pid, pid));
    let (letter, name) = state_of(p, pid, tid);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let key = line.split(':').next().unwrap_or("");
        let new = match key {
            "Name" => format!("Name:\t{}", p.comm_of(pid, tid)),
            "State" => format!("State:\t{letter} ({name})"),
            "Pid" => format!("Pid:\t{tid}"),
            "NSpid" => format!("NSpid:\t{tid}"),
            "NSpgid" => format!("NSpgid:\t{pgrp}"),
            "NSsid" => format!("NSsid:\t{sid}"),
            "Threads" => format!("Threads:\t{}", threads_of(p, pid).len()),
            _ => line.to_string(),
        };
        out.push_str(&new);
        out.push('\n');
    }
    out
}

/// The contents of `/proc` file `path` if it is one of mmkit's views, generated now.
pub fn open(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, path: &str) -> Result<Option<Vec<u8>>, i64> {
    let k = p.k;
    if let Some(r) = pid_path(p, path) {
        let PidPath {
            pid,
            tid,
            tail,
            task_dir,
            numeric,
        } = r?;
        if task_dir || tail.is_empty() {
            return Ok(None); // a directory: see `dir`
        }
        let t = p.tasks.get(pid).ok_or(-(libc::ESRCH as i64))?;
        // The address space it runs in: its own, or the one it shares (`CLONE_VM`).
        let mm = p.tasks.mm_of(pid);
        let text = match tail {
            "maps" => Some(mm.map(proc::task_mmu::proc_pid_maps).unwrap_or_default()),
            "smaps" => Some(
                mm.map(|mm| proc::task_mmu::proc_pid_smaps(k, mm))
                    .unwrap_or_default(),
            ),
            "smaps_rollup" => Some(
                mm.map(|mm| proc::task_mmu::proc_pid_smaps_rollup(k, mm))
                    .unwrap_or_default(),
            ),
            "status" => Some(status_of(
                p,
                pid,
                tid,
                &proc::array::proc_pid_status(k, t, mm),
            )),
            "statm" => Some(proc::array::proc_pid_statm(mm)),
            "stat" => Some(stat_of(
                p,
                pid,
                tid,
                &proc::array::proc_pid_stat(t, mm, times(p.task_cpu(pid))),
            )),
            "oom_score" => Some(proc::array::proc_pid_oom_score(k, t, mm)),
            "oom_score_adj" => Some(proc::array::proc_pid_oom_score_adj(t)),
            "comm" => Some(format!("{}\n", p.comm_of(pid, tid))),
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
            // A file of a numbered process that mmkit does not serve: the host's file of
            // the same number would be another process's.
            _ if numeric => return Err(-(libc::ENOENT as i64)),
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

/// The entries of `/proc` directory `path` if it is one mmkit lists itself (`/proc`,
/// `/proc/PID`, `/proc/PID/task`, `/proc/PID/task/TID`): `.` and `..` first, as Linux
/// lists them.
pub fn dir(p: &Proc<'_>, path: &str) -> Result<Option<Vec<DirEnt>>, i64> {
    let ent = |ino: u64, kind: u8, name: &str| DirEnt {
        ino,
        kind,
        name: name.into(),
    };
    let mut v = vec![ent(1, DT_DIR, "."), ent(1, DT_DIR, "..")];
    let trimmed = path.trim_end_matches('/');
    if trimmed == "/proc" {
        // The host's entries that are not processes, then the run's processes.
        let host = std::fs::read_dir("/proc").map_err(|_| -(libc::EIO as i64))?;
        use std::os::unix::fs::DirEntryExt;
        for e in host.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => DT_DIR,
                Ok(t) if t.is_symlink() => DT_LNK,
                _ => DT_REG,
            };
            v.push(ent(e.ino(), kind, &name));
        }
        for pid in p.tasks.pids() {
            v.push(ent(pid_ino(pid, 0), DT_DIR, &pid.to_string()));
        }
        return Ok(Some(v));
    }
    let Some(r) = pid_path(p, path) else {
        return Ok(None);
    };
    let pp = r?;
    if pp.task_dir {
        v[0].ino = pid_ino(pp.pid, 0xfe);
        for tid in threads_of(p, pp.pid) {
            v.push(ent(pid_ino(tid, 0xff), DT_DIR, &tid.to_string()));
        }
        return Ok(Some(v));
    }
    if !pp.tail.is_empty() {
        return Ok(None);
    }
    let in_task = pp.tid != pp.pid || path.contains("/task/");
    v[0].ino = if in_task {
        pid_ino(pp.tid, 0xff)
    } else {
        pid_ino(pp.pid, 0)
    };
    for (i, (name, kind)) in PID_FILES.iter().enumerate() {
        if in_task && *name == "task" {
            continue;
        }
        v.push(ent(pid_ino(pp.tid, 2 + i as u64), *kind, name));
    }
    Ok(Some(v))
}

/// An inode number for a generated `/proc` entry (`proc_pid_make_inode` numbers them from
/// a counter; these are stable and distinct).
fn pid_ino(pid: Pid, n: u64) -> u64 {
    0x1_0000_0000 | (pid as u64) << 8 | n
}

/// The `struct stat` of a directory `dir` returned: read-only for everyone, owned by the
/// caller's user (`proc_pid_make_inode` gives the task's credentials).
pub fn dir_stat(ents: &[DirEnt]) -> libc::stat {
    // SAFETY: a zeroed stat is valid plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_mode = libc::S_IFDIR | 0o555;
    st.st_nlink = 2 + ents.iter().filter(|e| e.kind == DT_DIR).count() as u64;
    st.st_blksize = 4096;
    st.st_ino = ents.first().map_or(1, |e| e.ino);
    st.st_dev = proc_dev();
    // SAFETY: getuid/getgid cannot fail.
    (st.st_uid, st.st_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    st
}

/// The target of a `/proc` symbolic link that is ours (`/proc/PID/exe`, `/proc/self/fd/N`).
pub fn readlink(p: &Proc<'_>, path: &str) -> Option<Result<String, i64>> {
    let pp = match pid_path(p, path)? {
        Ok(pp) => pp,
        Err(e) => return Some(Err(e)),
    };
    let (pid, tail) = (pp.pid, pp.tail);
    if tail == "exe" {
        let exe = if pid == p.pid {
            p.exe.as_str()
        } else {
            match p.sched.shared.get(&pid) {
                Some(sh) => sh.exe(),
                // A zombie has no executable.
                None => return Some(Err(-(libc::ENOENT as i64))),
            }
        };
        return Some(Ok(std::fs::canonicalize(exe)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| exe.to_string())));
    }
    if pid != p.pid {
        return pp.numeric.then_some(Err(-(libc::ENOENT as i64)));
    }
    let n: i64 = tail.strip_prefix("fd/")?.parse().ok()?;
    let f = p.fds.get(n)?;
    Some(Ok(f.path.clone().unwrap_or_else(|| match f.host() {
        Some(h) => std::fs::read_link(format!("/proc/self/fd/{h}"))
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default(),
        None => String::new(),
    })))
}

/// The device `/proc` is on (the host's procfs), for the files mmkit generates there.
pub fn proc_dev() -> u64 {
    static DEV: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *DEV.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc").map_or(0, |m| m.dev())
    })
}

/// Clock ticks since boot now (`CLOCK_BOOTTIME`, as `/proc/uptime` and `start_time`).
pub fn boot_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: into our own struct.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * USER_HZ + ts.tv_nsec as u64 / (1_000_000_000 / USER_HZ)
}

/// `processor`: the vCPU the task runs on or last ran on (`task_cpu`); its times are put
/// in by `stat_of` from the scheduler's accounting.
fn times(processor: usize) -> proc::array::TaskTimes {
    proc::array::TaskTimes {
        utime: 0,
        stime: 0,
        start_time: 0,
        processor: processor as u32,
    }
}
