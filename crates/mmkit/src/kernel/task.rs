//! Tasks (`include/linux/sched.h`, `kernel/fork.c`, `kernel/exit.c`, `fs/exec.c`'s
//! `exec_mmap`): a table of processes, each running in an address space, with `fork`
//! (`copy_mm` → `dup_mmap`), `clone(CLONE_VM)` (`copy_mm` sharing the parent's mm: `vfork`,
//! a process sharing memory without being a thread), `execve` (a fresh mm replaces the old
//! one), `exit` (`exit_mm` → `mmput`; the last user's `exit_mmap`; the task stays a zombie
//! until reaped) and `wait`.
//!
//! An address space is held by one task's `mm`; the other processes that share it
//! (`mm_users` > 1) name that task in `vm_owner`. When the holder execs or exits while
//! others still use the address space, it passes to one of them (`mmput` that was not the
//! last). Fault counts (`min_flt`, `maj_flt`) are the task's and survive exec, as Linux
//! keeps them in the task. The fault path counts in the mm it faults in; the faults a task
//! sharing another's address space takes there are moved to it by whoever runs it
//! (`charge_shared_faults`, from a `shared_fault_base` taken when it started running). A
//! reaped child's counts are added to the parent's `cmin_flt`/`cmaj_flt`.

use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::exec::{ExecImage, ExecParams, InterpOpener};
use crate::fs::inode::File;
use crate::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS};
use crate::mm::uaccess::FaultCounts;
use crate::Kernel;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// A process id.
pub type Pid = u32;

/// `task->__state` as `/proc` shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// `R (running)`.
    Running,
    /// `Z (zombie)`: exited, not yet reaped; `exit_code` holds the status.
    Zombie,
}

/// One task.
pub struct Task {
    /// `pid` (= `tgid`: one thread per process).
    pub pid: Pid,
    /// Parent's pid (0 for the first task).
    pub ppid: Pid,
    /// `comm`: the executable's base name, 15 bytes at most.
    pub comm: String,
    /// The address space it holds (`None` once exited, and while it runs in another
    /// task's: see `vm_owner`).
    pub mm: Option<MmStruct>,
    /// `CLONE_VM` without `CLONE_THREAD` (a `vfork` child, a process sharing memory): the
    /// task whose `mm` this one runs in (`task->mm` pointing at a shared `mm_struct`). That
    /// task holds an `mm` of its own.
    pub vm_owner: Option<Pid>,
    /// State.
    pub state: TaskState,
    /// Exit status for `wait`.
    pub exit_code: i32,
    /// Faults of the task itself, from exited address spaces (the live mm keeps counting).
    pub faults: FaultCounts,
    /// Faults of reaped children (`cmin_flt`, `cmaj_flt`).
    pub child_faults: FaultCounts,
    /// Entry point and stack pointer of the last exec.
    pub entry: u64,
    /// Initial stack pointer.
    pub sp: u64,
    /// `oom_score_adj` (-1000..=1000), inherited over fork.
    pub oom_score_adj: i32,
}

impl Task {
    /// `min_flt`/`maj_flt` so far (the task's own, through all its address spaces).
    pub fn fault_counts(&self) -> FaultCounts {
        let live = self.mm.as_ref().map(|m| m.faults).unwrap_or_default();
        FaultCounts {
            min_flt: self.faults.min_flt + live.min_flt,
            maj_flt: self.faults.maj_flt + live.maj_flt,
        }
    }
}

/// The task list (`init_task.tasks`, the pid hash).
#[derive(Default)]
pub struct TaskTable {
    tasks: BTreeMap<Pid, Task>,
    /// Ids of threads other than the leaders (`alloc_pid` for a `CLONE_THREAD` task): taken
    /// from the same space as process ids.
    threads: alloc::collections::BTreeSet<Pid>,
    last_pid: Pid,
}

/// `PID_MAX_DEFAULT`.
pub const PID_MAX: Pid = 32768;

fn comm_of(path: &[u8]) -> String {
    let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    String::from_utf8_lossy(&base[..base.len().min(15)]).into_owned()
}

impl TaskTable {
    /// The task `pid`.
    pub fn get(&self, pid: Pid) -> Option<&Task> {
        self.tasks.get(&pid)
    }

    /// The task `pid`, mutably (its mm is what user accesses and syscalls take).
    pub fn get_mut(&mut self, pid: Pid) -> Option<&mut Task> {
        self.tasks.get_mut(&pid)
    }

    /// The address space of live task `pid`, its own or the one it shares (`ESRCH` for no
    /// such task or a zombie).
    pub fn mm_mut(&mut self, pid: Pid) -> Result<&mut MmStruct, Errno> {
        let h = self.mm_holder(pid).ok_or(Errno::ESRCH)?;
        self.tasks
            .get_mut(&h)
            .and_then(|t| t.mm.as_mut())
            .ok_or(Errno::ESRCH)
    }

    /// The address space task `pid` runs in (`task->mm`), its own or the one it shares.
    pub fn mm_of(&self, pid: Pid) -> Option<&MmStruct> {
        self.tasks.get(&self.mm_holder(pid)?)?.mm.as_ref()
    }

    /// The task that holds the address space `pid` runs in (`pid` itself unless it shares
    /// another's); `None` for a task without one (a zombie).
    pub fn mm_holder(&self, pid: Pid) -> Option<Pid> {
        let t = self.tasks.get(&pid)?;
        match t.vm_owner {
            Some(h) => Some(h),
            None => t.mm.as_ref().map(|_| pid),
        }
    }

    /// `mm_users`: the processes running in the address space `pid` runs in (0 for none).
    pub fn mm_users(&self, pid: Pid) -> usize {
        let Some(h) = self.mm_holder(pid) else {
            return 0;
        };
        1 + self
            .tasks
            .values()
            .filter(|t| t.vm_owner == Some(h))
            .count()
    }

    /// Every task, by pid.
    pub fn iter(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// `alloc_pid`: the next free pid after the last one, wrapping at `PID_MAX`.
    fn alloc_pid(&mut self) -> Result<Pid, Errno> {
        for _ in 0..PID_MAX {
            self.last_pid = if self.last_pid + 1 >= PID_MAX {
                1
            } else {
                self.last_pid + 1
            };
            if !self.tasks.contains_key(&self.last_pid) && !self.threads.contains(&self.last_pid) {
                return Ok(self.last_pid);
            }
        }
        Err(Errno::EAGAIN)
    }

    /// A thread id for a new `CLONE_THREAD` task of some process (its address space and
    /// accounting stay the process's; the id is reserved until [`TaskTable::free_tid`]).
    pub fn alloc_tid(&mut self) -> Result<Pid, Errno> {
        let tid = self.alloc_pid()?;
        self.threads.insert(tid);
        Ok(tid)
    }

    /// A thread that exited gives its id back.
    pub fn free_tid(&mut self, tid: Pid) {
        self.threads.remove(&tid);
    }

    /// The first task: `execve` of `file` in a new process with no parent.
    pub fn spawn(
        &mut self,
        k: &Kernel,
        cpu: &CpuGuard<'_>,
        file: &Arc<File>,
        params: &ExecParams<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<Pid, Errno> {
        let img = k.execve(cpu, file, params, open_interp)?;
        let pid = match self.alloc_pid() {
            Ok(p) => p,
            Err(e) => {
                k.exit_mmap(cpu, img.mm);
                return Err(e);
            }
        };
        self.tasks.insert(
            pid,
            Task {
                pid,
                ppid: 0,
                comm: comm_of(params.filename),
                mm: None,
                vm_owner: None,
                state: TaskState::Running,
                exit_code: 0,
                faults: FaultCounts::default(),
                child_faults: FaultCounts::default(),
                entry: 0,
                sp: 0,
                oom_score_adj: 0,
            },
        );
        self.install_image(pid, img);
        Ok(pid)
    }

    /// The new image of task `pid`, which holds no address space (a fresh task, or one whose
    /// old address space was let go).
    fn install_image(&mut self, pid: Pid, img: ExecImage) {
        if let Some(t) = self.tasks.get_mut(&pid) {
            debug_assert!(t.mm.is_none() && t.vm_owner.is_none());
            t.entry = img.entry;
            t.sp = img.sp;
            t.mm = Some(img.mm);
        }
    }

    /// `fork`: a child with a copy-on-write copy of `parent`'s address space.
    pub fn fork(&mut self, k: &Kernel, cpu: &CpuGuard<'_>, parent: Pid) -> Result<Pid, Errno> {
        let p = self.tasks.get(&parent).ok_or(Errno::ESRCH)?;
        let mm = k.dup_mmap(cpu, p.mm.as_ref().ok_or(Errno::ESRCH)?)?;
        match self.alloc_pid() {
            Ok(pid) => Ok(self.insert_child(parent, pid, Some(mm))),
            Err(e) => {
                k.exit_mmap(cpu, mm);
                Err(e)
            }
        }
    }

    /// `clone(CLONE_VM)` without `CLONE_THREAD` (`vfork` and `posix_spawn` add
    /// `CLONE_VFORK`, for which the caller makes the parent wait): a child process running in
    /// `parent`'s address space (`copy_mm` taking a reference, `mm_users` + 1). The parent's
    /// other threads go on running in it meanwhile, as in Linux.
    pub fn clone_vm(&mut self, parent: Pid) -> Result<Pid, Errno> {
        let holder = self.mm_holder(parent).ok_or(Errno::ESRCH)?;
        let pid = self.alloc_pid()?;
        self.insert_child(parent, pid, None);
        if let Some(t) = self.tasks.get_mut(&pid) {
            t.vm_owner = Some(holder);
        }
        Ok(pid)
    }

    /// The fault counts of the address space task `pid` shares with another (the base
    /// [`TaskTable::charge_shared_faults`] measures from); `None` for a task that holds its
    /// own, whose faults its address space counts.
    pub fn shared_fault_base(&self, pid: Pid) -> Option<FaultCounts> {
        let h = self.tasks.get(&pid)?.vm_owner?;
        Some(self.tasks.get(&h)?.mm.as_ref()?.faults)
    }

    /// The faults taken in the address space task `pid` shares since `base` (from
    /// [`TaskTable::shared_fault_base`], with nobody else faulting in it meanwhile) are
    /// task `pid`'s: they move from the address space's counts to the task's own (Linux
    /// counts them in `current->min_flt`).
    pub fn charge_shared_faults(&mut self, pid: Pid, base: FaultCounts) {
        let Some(h) = self.tasks.get(&pid).and_then(|t| t.vm_owner) else {
            return;
        };
        let Some(mm) = self.tasks.get_mut(&h).and_then(|t| t.mm.as_mut()) else {
            return;
        };
        let min = mm.faults.min_flt.saturating_sub(base.min_flt);
        let maj = mm.faults.maj_flt.saturating_sub(base.maj_flt);
        mm.faults.min_flt -= min;
        mm.faults.maj_flt -= maj;
        if let Some(t) = self.tasks.get_mut(&pid) {
            t.faults.min_flt += min;
            t.faults.maj_flt += maj;
        }
    }

    /// `mmput` of task `pid`'s address space: it stops using it (exec, exit). A task that
    /// shared another's just lets go; the holder folds the faults taken in it into its own
    /// counts and either hands it to one of the processes still sharing it (the lowest pid,
    /// which the others then name) or, as its last user, tears it down (`exit_mmap`).
    fn mmput(&mut self, k: &Kernel, cpu: &CpuGuard<'_>, pid: Pid) {
        let Some(t) = self.tasks.get_mut(&pid) else {
            return;
        };
        if t.vm_owner.take().is_some() {
            return;
        }
        let Some(mut mm) = t.mm.take() else {
            return;
        };
        t.faults.min_flt += mm.faults.min_flt;
        t.faults.maj_flt += mm.faults.maj_flt;
        mm.faults = FaultCounts::default();
        let heir = self
            .tasks
            .values()
            .find(|t| t.vm_owner == Some(pid))
            .map(|t| t.pid);
        let Some(heir) = heir else {
            k.exit_mmap(cpu, mm);
            return;
        };
        for t in self.tasks.values_mut() {
            if t.vm_owner == Some(pid) {
                t.vm_owner = (t.pid != heir).then_some(heir);
            }
        }
        if let Some(t) = self.tasks.get_mut(&heir) {
            t.mm = Some(mm);
        }
    }

    /// `copy_process`'s task: `pid`, a child of `parent` with its name, entry point and
    /// `oom_score_adj`, running in `mm` (`None`: it shares its parent's, see `clone_vm`).
    fn insert_child(&mut self, parent: Pid, pid: Pid, mm: Option<MmStruct>) -> Pid {
        let p = &self.tasks[&parent];
        let task = Task {
            pid,
            ppid: parent,
            comm: p.comm.clone(),
            mm,
            vm_owner: None,
            state: TaskState::Running,
            exit_code: 0,
            faults: FaultCounts::default(),
            child_faults: FaultCounts::default(),
            entry: p.entry,
            sp: p.sp,
            oom_score_adj: p.oom_score_adj,
        };
        self.tasks.insert(pid, task);
        pid
    }

    /// `execve` in task `pid`: on success its old address space is released (`exec_mmap`
    /// + `mmput`) and its name becomes the file's; on failure nothing changes.
    pub fn exec(
        &mut self,
        k: &Kernel,
        cpu: &CpuGuard<'_>,
        pid: Pid,
        file: &Arc<File>,
        params: &ExecParams<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<(), Errno> {
        let t = self.tasks.get(&pid).ok_or(Errno::ESRCH)?;
        if t.state != TaskState::Running {
            return Err(Errno::ESRCH);
        }
        let img = k.execve(cpu, file, params, open_interp)?;
        // exec_mmap: the old address space is let go (torn down, or left to the processes
        // that share it) and the new one installed.
        self.mmput(k, cpu, pid);
        self.install_image(pid, img);
        if let Some(t) = self.tasks.get_mut(&pid) {
            t.comm = comm_of(params.filename);
        }
        Ok(())
    }

    /// `do_exit`: release the address space and become a zombie until the parent waits (a
    /// task without a parent is released at once); children are reparented.
    pub fn exit(
        &mut self,
        k: &Kernel,
        cpu: &CpuGuard<'_>,
        pid: Pid,
        code: i32,
    ) -> Result<(), Errno> {
        if self.tasks.get(&pid).ok_or(Errno::ESRCH)?.state == TaskState::Zombie {
            return Err(Errno::ESRCH);
        }
        self.mmput(k, cpu, pid);
        let t = self.tasks.get_mut(&pid).ok_or(Errno::ESRCH)?;
        t.state = TaskState::Zombie;
        t.exit_code = code;
        let ppid = t.ppid;
        let orphan = ppid == 0 || !self.tasks.contains_key(&ppid);
        // Children go to the oldest other live task that is not one of them (init's role),
        // or to nobody.
        let reaper = self
            .tasks
            .values()
            .find(|r| r.pid != pid && r.ppid != pid && r.state == TaskState::Running)
            .map_or(0, |r| r.pid);
        for c in self.tasks.values_mut().filter(|c| c.ppid == pid) {
            c.ppid = reaper;
        }
        // Nobody will wait for a task without a parent: it is released at once.
        if orphan {
            self.tasks.remove(&pid);
        }
        Ok(())
    }

    /// `wait4(pid or -1)`: reap an exited child of `parent` (a given one, or any); returns
    /// its pid and status. `ECHILD` when there is no such child, `EAGAIN` when none has
    /// exited yet (`WNOHANG`).
    pub fn wait(&mut self, parent: Pid, child: Option<Pid>) -> Result<(Pid, i32), Errno> {
        let mut any = false;
        let mut found = None;
        for t in self.tasks.values() {
            if t.ppid == parent && child.is_none_or(|c| c == t.pid) {
                any = true;
                if t.state == TaskState::Zombie {
                    found = Some(t.pid);
                    break;
                }
            }
        }
        let Some(pid) = found else {
            return Err(if any { Errno::EAGAIN } else { Errno::ECHILD });
        };
        let t = self.tasks.remove(&pid).expect("found above");
        let f = t.fault_counts();
        if let Some(p) = self.tasks.get_mut(&parent) {
            p.child_faults.min_flt += f.min_flt + t.child_faults.min_flt;
            p.child_faults.maj_flt += f.maj_flt + t.child_faults.maj_flt;
        }
        Ok((pid, t.exit_code))
    }

    /// `out_of_memory` after task `trigger` could not get memory (`gfp`, `order`) even after
    /// reclaim: choose the task with the highest `oom_badness`, print Linux's report, count
    /// `oom_kill` and kill it with every process sharing its address space (as
    /// `__oom_kill_process` does, so that the memory is freed at once). Returns the victim,
    /// or `None` when no task can be killed.
    pub fn out_of_memory(
        &mut self,
        k: &Kernel,
        cpu: &CpuGuard<'_>,
        trigger: Pid,
        gfp: crate::Gfp,
        order: u32,
    ) -> Option<Pid> {
        fn with_mm(tt: &TaskTable) -> Vec<(&Task, Option<&MmStruct>)> {
            tt.tasks.values().map(|t| (t, tt.mm_of(t.pid))).collect()
        }
        let victim = k.oom_select(with_mm(self).into_iter())?;
        let trig = self
            .tasks
            .get(&trigger)
            .or_else(|| self.tasks.get(&victim))?;
        k.oom_report(
            trig,
            gfp,
            order,
            with_mm(self).into_iter(),
            (&self.tasks[&victim], self.mm_of(victim)),
        );
        cpu.state().vmstat.count(crate::mm::oom_kill::OOM_KILL, 1);
        // Killed by SIGKILL: the status wait() reports is the signal number. Every process
        // running in the victim's address space dies with it (`__oom_kill_process`), the one
        // holding it last, so that its exit frees the memory at once.
        let holder = self.mm_holder(victim)?;
        let sharers: Vec<Pid> = self
            .tasks
            .values()
            .filter(|t| t.pid != holder && t.vm_owner == Some(holder))
            .map(|t| t.pid)
            .collect();
        for s in sharers {
            let _ = self.exit(k, cpu, s, 9);
        }
        self.exit(k, cpu, holder, 9).ok()?;
        Some(victim)
    }

    /// Set a task's `oom_score_adj` (`/proc/PID/oom_score_adj`): `EINVAL` outside
    /// -1000..=1000. As `__set_oom_adj`, every process running in the same address space
    /// gets it too: the OOM killer judges and kills an address space with all its users.
    pub fn set_oom_score_adj(&mut self, pid: Pid, adj: i32) -> Result<(), Errno> {
        if !(crate::mm::oom_kill::OOM_SCORE_ADJ_MIN..=crate::mm::oom_kill::OOM_SCORE_ADJ_MAX)
            .contains(&adj)
        {
            return Err(Errno::EINVAL);
        }
        self.tasks.get_mut(&pid).ok_or(Errno::ESRCH)?.oom_score_adj = adj;
        if let Some(holder) = self.mm_holder(pid) {
            let sharing: Vec<Pid> = self
                .tasks
                .values()
                .filter(|t| t.pid == holder || t.vm_owner == Some(holder))
                .map(|t| t.pid)
                .collect();
            for p in sharing {
                if let Some(t) = self.tasks.get_mut(&p) {
                    t.oom_score_adj = adj;
                }
            }
        }
        Ok(())
    }

    /// A `ps -o pid,ppid,stat,vsz,rss,comm` listing (sizes in KiB).
    pub fn ps(&self) -> String {
        let mut s = String::from("    PID    PPID STAT    VSZ   RSS COMMAND\n");
        for t in self.tasks.values() {
            let (vsz, rss) = self
                .mm_of(t.pid)
                .map_or((0, 0), |m| (m.total_vm() * 4, m.rss() * 4));
            let stat = match t.state {
                TaskState::Running => 'R',
                TaskState::Zombie => 'Z',
            };
            s.push_str(&alloc::format!(
                "{:>7} {:>7} {:<4} {:>6} {:>5} {}\n",
                t.pid,
                t.ppid,
                stat,
                vsz,
                rss,
                t.comm
            ));
        }
        s
    }

    /// Every address space, by the pid of the task holding it (khugepaged's list is the
    /// ones with `MMF_VM_HUGEPAGE`).
    pub fn mms_mut(&mut self) -> impl Iterator<Item = (u64, &mut MmStruct)> {
        self.tasks
            .iter_mut()
            .filter_map(|(&pid, t)| Some((u64::from(pid), t.mm.as_mut()?)))
    }

    /// Pids in the table.
    pub fn pids(&self) -> Vec<Pid> {
        self.tasks.keys().copied().collect()
    }
}

/// `task_mem`'s figures for an address space, in pages: (anon, file, shmem, swap).
pub fn rss_parts(mm: &MmStruct) -> (u64, u64, u64, u64) {
    (
        mm.counter(MM_ANONPAGES),
        mm.counter(MM_FILEPAGES),
        mm.counter(MM_SHMEMPAGES),
        mm.counter(MM_SWAPENTS),
    )
}
