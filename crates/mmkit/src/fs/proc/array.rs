//! `/proc/PID/status` (`fs/proc/array.c`: `proc_pid_status`, with `task_mem` from
//! `fs/proc/task_mmu.c`) — the identity lines and the memory figures in Linux 6.18's format —
//! and `/proc/PID/oom_score` / `oom_score_adj` (`fs/proc/base.c`).

use crate::kernel::task::{rss_parts, Task, TaskState};
use crate::mm::mm_types::MmStruct;
use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;

fn kb(s: &mut String, label: &str, pages: u64) {
    let _ = writeln!(s, "{label}\t{:>8} kB", pages * 4);
}

/// `/proc/PID/status` up to `Threads:` (no signal or capability lines: no signals here), of
/// task `t` running in `mm` (`TaskTable::mm_of`: its own or the one it shares).
pub fn proc_pid_status(k: &Kernel, t: &Task, mm: Option<&MmStruct>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Name:\t{}", t.comm);
    s.push_str("Umask:\t0022\n");
    let state = match t.state {
        TaskState::Running => "R (running)",
        TaskState::Zombie => "Z (zombie)",
    };
    let _ = writeln!(s, "State:\t{state}");
    let _ = writeln!(
        s,
        "Tgid:\t{}\nNgid:\t0\nPid:\t{}\nPPid:\t{}",
        t.pid, t.pid, t.ppid
    );
    s.push_str("TracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t \n");
    let _ = writeln!(
        s,
        "NStgid:\t{}\nNSpid:\t{}\nNSpgid:\t{}\nNSsid:\t{}\nKthread:\t0",
        t.pid, t.pid, t.pid, t.pid
    );
    if let Some(mm) = mm {
        let (anon, file, shmem, swap) = rss_parts(mm);
        let rss = anon + file + shmem;
        let (exec_vm, stack_vm, data_vm) = mm.vm_classes();
        let text_bytes = (crate::addr::align_up(mm.end_code, crate::PAGE_SIZE)
            .saturating_sub(mm.start_code & !(crate::PAGE_SIZE - 1)))
        .min(exec_vm * crate::PAGE_SIZE);
        let lib_bytes = exec_vm * crate::PAGE_SIZE - text_bytes;
        kb(&mut s, "VmPeak:", mm.hiwater_vm.max(mm.total_vm()));
        kb(&mut s, "VmSize:", mm.total_vm());
        kb(&mut s, "VmLck:", mm.locked_vm);
        kb(&mut s, "VmPin:", 0);
        kb(&mut s, "VmHWM:", mm.hiwater_rss.max(rss));
        kb(&mut s, "VmRSS:", rss);
        kb(&mut s, "RssAnon:", anon);
        kb(&mut s, "RssFile:", file);
        kb(&mut s, "RssShmem:", shmem);
        kb(&mut s, "VmData:", data_vm);
        kb(&mut s, "VmStk:", stack_vm);
        let _ = writeln!(s, "VmExe:\t{:>8} kB", text_bytes >> 10);
        let _ = writeln!(s, "VmLib:\t{:>8} kB", lib_bytes >> 10);
        kb(&mut s, "VmPTE:", k.pgtable_pages_of(&mm.pt));
        kb(&mut s, "VmSwap:", swap);
        kb(&mut s, "HugetlbPages:", 0);
    }
    s.push_str("CoreDumping:\t0\nTHP_enabled:\t1\nuntag_mask:\t0xffffffffffffffff\nThreads:\t1\n");
    s
}

/// `/proc/PID/oom_score` (`proc_oom_score`).
pub fn proc_pid_oom_score(k: &Kernel, t: &Task, mm: Option<&MmStruct>) -> String {
    alloc::format!("{}\n", k.oom_score(t, mm))
}

/// `/proc/PID/oom_score_adj`.
pub fn proc_pid_oom_score_adj(t: &Task) -> String {
    alloc::format!("{}\n", t.oom_score_adj)
}

/// `/proc/PID/statm` (`proc_pid_statm` with `task_statm`): size, resident, shared, text,
/// lib (always 0), data, dt (always 0), in pages, of the address space a task runs in.
pub fn proc_pid_statm(mm: Option<&MmStruct>) -> String {
    let Some(mm) = mm else {
        return String::from("0 0 0 0 0 0 0\n");
    };
    let (anon, file, shmem, _) = rss_parts(mm);
    let shared = file + shmem;
    let text = (crate::addr::align_up(mm.end_code, crate::PAGE_SIZE)
        .saturating_sub(mm.start_code & !(crate::PAGE_SIZE - 1)))
        >> crate::PAGE_SHIFT;
    let (_, stack_vm, data_vm) = mm.vm_classes();
    alloc::format!(
        "{} {} {} {} 0 {} 0\n",
        mm.total_vm(),
        shared + anon,
        shared,
        text,
        data_vm + stack_vm
    )
}

/// The times `/proc/PID/stat` shows, which the scheduler (the host) keeps: in clock ticks
/// (`USER_HZ`, 100).
#[derive(Copy, Clone, Debug, Default)]
pub struct TaskTimes {
    /// `utime`.
    pub utime: u64,
    /// `stime`.
    pub stime: u64,
    /// `start_time` since boot.
    pub start_time: u64,
    /// The CPU it last ran on.
    pub processor: u32,
}

/// `/proc/PID/stat` (`do_task_stat`): the 52 fields, with the memory ones from the task's
/// address space `mm` (`TaskTable::mm_of`) and the fault counts, as `ps` and `top` read
/// them.
pub fn proc_pid_stat(t: &Task, mm: Option<&MmStruct>, times: TaskTimes) -> String {
    let state = match t.state {
        TaskState::Running => 'R',
        TaskState::Zombie => 'Z',
    };
    let f = t.fault_counts();
    let cf = t.child_faults;
    let (vsize, rss, start_code, end_code, start_stack) = match mm {
        Some(mm) => (
            mm.total_vm() * crate::PAGE_SIZE,
            mm.rss(),
            mm.start_code,
            mm.end_code,
            mm.start_stack,
        ),
        None => (0, 0, 0, 0, 0),
    };
    let (sd, ed, sb, ab, ae, eb, ee) = match mm {
        Some(mm) => (
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end,
        ),
        None => (0, 0, 0, 0, 0, 0, 0),
    };
    let rsslim = u64::MAX;
    let exit_code = if t.state == TaskState::Zombie {
        t.exit_code
    } else {
        0
    };
    alloc::format!(
        "{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194304 {minflt} {cminflt} {majflt} {cmajflt} \
         {utime} {stime} 0 0 20 0 1 0 {start} {vsize} {rss} {rsslim} {start_code} {end_code} \
         {start_stack} 0 0 0 0 0 0 0 0 0 17 {cpu} 0 0 0 0 0 {sd} {ed} {sb} {ab} {ae} {eb} {ee} \
         {exit_code}\n",
        pid = t.pid,
        comm = t.comm,
        ppid = t.ppid,
        minflt = f.min_flt,
        cminflt = cf.min_flt,
        majflt = f.maj_flt,
        cmajflt = cf.maj_flt,
        utime = times.utime,
        stime = times.stime,
        start = times.start_time,
        cpu = times.processor,
    )
}
