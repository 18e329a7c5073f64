//! The OOM killer (`mm/oom_kill.c`): `oom_badness` (resident pages + swap entries + page-table
//! pages, shifted by `oom_score_adj` in thousandths of memory), victim selection, Linux's
//! report (`dump_header`'s first line, `dump_tasks`' table, the `oom-kill:` line and
//! "Out of memory: Killed process …"), and `/proc/PID/oom_score`. The task table
//! (`kernel/task.rs`) runs it when a fault cannot get memory after reclaim, and kills the
//! chosen task, which frees its memory (the work `oom_reaper` starts early in Linux).

use crate::kernel::task::{Pid, Task, TaskState};
use crate::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS};
use crate::Kernel;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// `OOM_SCORE_ADJ_MIN`: never kill.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;
/// `OOM_SCORE_ADJ_MAX`.
pub const OOM_SCORE_ADJ_MAX: i32 = 1000;
/// `OOM_KILL` event.
pub const OOM_KILL: usize =
    crate::mm::vmstat::index_of(crate::mm::vmstat::VM_EVENT_NAMES, "oom_kill");

impl Kernel {
    /// `totalram_pages() + total_swap_pages`.
    pub fn oom_totalpages(&self) -> u64 {
        self.totalram_pages() + self.swap_totals().0
    }

    /// `oom_badness`: `None` for an unkillable task (`OOM_SCORE_ADJ_MIN`).
    pub fn oom_badness(&self, mm: &MmStruct, adj: i32, totalpages: u64) -> Option<i64> {
        if adj == OOM_SCORE_ADJ_MIN {
            return None;
        }
        let points = mm.rss() + mm.counter(MM_SWAPENTS) + self.pgtable_pages_of(&mm.pt);
        Some(points as i64 + adj as i64 * (totalpages / 1000) as i64)
    }

    /// `/proc/PID/oom_score`: the badness of task `t` running in `mm` (its own or the one
    /// it shares, `TaskTable::mm_of`) scaled into [0, 2000] as Linux exports it.
    pub fn oom_score(&self, t: &Task, mm: Option<&MmStruct>) -> u64 {
        let total = self.oom_totalpages().max(1) as i64;
        match mm.and_then(|mm| self.oom_badness(mm, t.oom_score_adj, total as u64)) {
            Some(b) => ((1000 + b * 1000 / total) * 2 / 3).max(0) as u64,
            None => 0,
        }
    }

    /// `select_bad_process`: the live task with the highest badness, each task (with the
    /// address space it runs in: its own, or the one it shares through `CLONE_VM`) judged
    /// by that address space, as `oom_badness` judges `p->mm`.
    pub fn oom_select<'a>(
        &self,
        tasks: impl Iterator<Item = (&'a Task, Option<&'a MmStruct>)>,
    ) -> Option<Pid> {
        let total = self.oom_totalpages();
        tasks
            .filter(|(t, _)| t.state == TaskState::Running)
            .filter_map(|(t, mm)| Some((self.oom_badness(mm?, t.oom_score_adj, total)?, t.pid)))
            .max_by_key(|&(b, pid)| (b, core::cmp::Reverse(pid)))
            .map(|(_, pid)| pid)
    }

    /// Print the OOM report for `victim` (running in `victim_mm`), chosen among `tasks`
    /// (each with the address space it runs in: `dump_tasks` lists every process, sharers
    /// of one address space each with its figures) while `trigger` allocated with `gfp` at
    /// `order`.
    pub fn oom_report<'a>(
        &self,
        trigger: &Task,
        gfp: crate::Gfp,
        order: u32,
        tasks: impl Iterator<Item = (&'a Task, Option<&'a MmStruct>)>,
        (victim, victim_mm): (&Task, Option<&MmStruct>),
    ) {
        self.printk(&format!(
            "{} invoked oom-killer: gfp_mask={}, order={order}, oom_score_adj={}",
            trigger.comm, gfp, trigger.oom_score_adj
        ));
        // dump_header's show_mem: the zones' free memory against their watermarks.
        self.printk("Mem-Info:");
        for line in crate::mm::show_mem::show_free_areas(self).lines() {
            self.printk(line);
        }
        self.printk("Tasks state (memory values in pages):");
        self.printk("[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents oom_score_adj name");
        let mut lines: Vec<String> = Vec::new();
        for (t, mm) in tasks.filter(|(t, _)| t.state == TaskState::Running) {
            let Some(mm) = mm else { continue };
            lines.push(format!(
                "[{:>7}] {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>14} {:>8}         {:>5} {}",
                t.pid,
                0,
                t.pid,
                mm.total_vm(),
                mm.rss(),
                mm.counter(MM_ANONPAGES),
                mm.counter(MM_FILEPAGES),
                mm.counter(MM_SHMEMPAGES),
                self.pgtable_pages_of(&mm.pt) * crate::PAGE_SIZE,
                mm.counter(MM_SWAPENTS),
                t.oom_score_adj,
                t.comm
            ));
        }
        for l in lines {
            self.printk(&l);
        }
        self.printk(&format!(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task={},pid={},uid=0",
            victim.comm, victim.pid
        ));
        if let Some(mm) = victim_mm {
            self.printk(&format!(
                "Out of memory: Killed process {} ({}) total-vm:{}kB, anon-rss:{}kB, file-rss:{}kB, shmem-rss:{}kB, UID:0 pgtables:{}kB oom_score_adj:{}",
                victim.pid,
                victim.comm,
                mm.total_vm() * 4,
                mm.counter(MM_ANONPAGES) * 4,
                mm.counter(MM_FILEPAGES) * 4,
                mm.counter(MM_SHMEMPAGES) * 4,
                self.pgtable_pages_of(&mm.pt) * 4,
                victim.oom_score_adj
            ));
        }
    }
}
