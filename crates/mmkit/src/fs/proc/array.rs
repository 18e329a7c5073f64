//! `/proc/PID/status` (`fs/proc/array.c`: `proc_pid_status`, with `task_mem` from
//! `fs/proc/task_mmu.c`) — the identity lines and the memory figures in Linux 6.18's format —
//! and `/proc/PID/oom_score` / `oom_score_adj` (`fs/proc/base.c`).

use crate::kernel::task::{rss_parts, Task, TaskState};
use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;

fn kb(s: &mut String, label: &str, pages: u64) {
    let _ = writeln!(s, "{label}\t{:>8} kB", pages * 4);
}

/// `/proc/PID/status` up to `Threads:` (no signal or capability lines: no signals here).
pub fn proc_pid_status(k: &Kernel, t: &Task) -> String {
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
    if let Some(mm) = &t.mm {
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
pub fn proc_pid_oom_score(k: &Kernel, t: &Task) -> String {
    alloc::format!("{}\n", k.oom_score(t))
}

/// `/proc/PID/oom_score_adj`.
pub fn proc_pid_oom_score_adj(t: &Task) -> String {
    alloc::format!("{}\n", t.oom_score_adj)
}
