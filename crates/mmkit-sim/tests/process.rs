//! Processes: spawn (exec), fork, exec in a child, exit, wait, the ps listing, fault counts
//! that survive exec and reach the parent on wait, /proc/PID/status's memory lines equal to
//! the host kernel's at exec time, and no page left behind when every process is gone.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::fs::proc::array::proc_pid_status;
use mmkit::kernel::task::{TaskState, TaskTable};
use mmkit::mm::mmap::*;
use mmkit::Errno;
use mmkit_sim::exec::{spawn_host, with_exec_params, ExecSpec};
use mmkit_sim::hostfs::host_cred;
use mmkit_sim::Machine;

fn spec(path: &str, env: &[&str]) -> ExecSpec<'static> {
    ExecSpec {
        path: Box::leak(path.to_string().into_boxed_str()),
        argv: vec![path.to_string()],
        envp: env.iter().map(|s| s.to_string()).collect(),
        no_aslr: true,
    }
}

fn spawn(m: &Machine, tasks: &mut TaskTable, path: &str, env: &[&str]) -> u32 {
    m.on_cpu(0, |cpu| {
        spawn_host(m, tasks, cpu, &spec(path, env)).unwrap()
    })
}

/// The host's /proc/PID/status memory lines for `path` at its exec stop (ptrace, no ASLR).
fn host_status(path: &str, env: &[&str]) -> Vec<String> {
    let p = path.as_bytes();
    let img = match mmkit_sim::hostview::host_exec(p, &[p], env, true) {
        Ok(mmkit_sim::hostview::HostExec::Runs(img)) => img,
        other => panic!("the host did not run {path}: {other:?}"),
    };
    img.status
        .lines()
        .filter(|l| l.starts_with("Vm") || l.starts_with("Rss"))
        .map(String::from)
        .collect()
}

/// VmPeak … VmSwap (sizes, RSS split, data/stack/exe/lib classes, page-table bytes) of a
/// freshly exec'd process equal the host kernel's for the same binary.
#[test]
fn status_memory_lines_equal_the_host_kernels() {
    const TEST: &str = "status_memory_lines_equal_the_host_kernels";
    if let Err(why) = &mmkit_sim::hostview::host_caps().ptrace {
        mmkit_sim::hostview::skip(TEST, why);
        return;
    }
    let env = ["A=1"];
    let m = boot_mem(256, 1, "");
    for path in ["/bin/true", "/usr/bin/bash", "/sbin/ldconfig"] {
        if !std::path::Path::new(path).exists() {
            mmkit_sim::hostview::skip(TEST, &format!("{path} does not exist on this host"));
            continue;
        }
        let mut tasks = TaskTable::default();
        let pid = spawn(&m, &mut tasks, path, &env);
        let ours: Vec<String> =
            proc_pid_status(&m.kernel, tasks.get(pid).unwrap(), tasks.mm_of(pid))
                .lines()
                .filter(|l| l.starts_with("Vm") || l.starts_with("Rss"))
                .map(String::from)
                .collect();
        assert_eq!(ours, host_status(path, &env), "{path}");
        m.on_cpu(0, |cpu| tasks.exit(&m.kernel, cpu, pid, 0).unwrap());
    }
}

/// fork / exec / exit / wait with the right errnos, counts and listing; teardown frees all.
#[test]
fn fork_exec_exit_wait() {
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let mut tasks = TaskTable::default();
    let init = spawn(&m, &mut tasks, "/bin/true", &[]);
    assert_eq!(tasks.get(init).unwrap().comm, "true");
    let child = m.on_cpu(0, |cpu| {
        // The parent writes into a heap it grows with brk.
        let t = tasks.get_mut(init).unwrap();
        let mm = t.mm.as_mut().unwrap();
        let b = mm.brk;
        assert_eq!(k.brk(cpu, mm, b + 3 * 4096), b + 3 * 4096);
        k.user_write(cpu, mm, b, b"parent heap").unwrap();
        tasks.fork(k, cpu, init).unwrap()
    });
    m.on_cpu(1, |cpu| {
        let c = tasks.get_mut(child).unwrap();
        let mm = c.mm.as_mut().unwrap();
        let b = mm.start_brk;
        let mut got = [0u8; 11];
        k.user_read(cpu, mm, b, &mut got).unwrap();
        assert_eq!(&got, b"parent heap", "the child sees the parent's heap");
        assert_eq!(
            mm.faults.min_flt, 0,
            "fork copied the PTEs: no fault to read"
        );
        k.user_write(cpu, mm, b, b"child").unwrap();
        assert_eq!(mm.faults.min_flt, 1, "the COW fault");
    });
    let ps = tasks.ps();
    assert!(ps.contains(" R ") && ps.lines().count() == 3, "{ps}");
    // The child execs bash: new image, same pid, counts kept.
    let before_exec = tasks.get(child).unwrap().fault_counts();
    m.on_cpu(1, |cpu| {
        with_exec_params(
            &m,
            cpu,
            &spec("/usr/bin/bash", &[]),
            &host_cred(),
            |file, params, interp| tasks.exec(k, cpu, child, file, params, interp),
        )
        .unwrap()
        .unwrap()
    });
    let c = tasks.get(child).unwrap();
    assert_eq!(c.comm, "bash");
    assert!(
        c.fault_counts().min_flt > before_exec.min_flt,
        "exec's faults add up"
    );
    assert!(proc_pid_status(k, c, tasks.mm_of(child)).contains("Name:\tbash"));
    // Wait before exit: EAGAIN; exit; wait reaps and the parent gets the child's faults.
    assert_eq!(tasks.wait(init, None), Err(Errno::EAGAIN));
    let child_faults = tasks.get(child).unwrap().fault_counts();
    m.on_cpu(1, |cpu| tasks.exit(k, cpu, child, 3).unwrap());
    assert_eq!(tasks.get(child).unwrap().state, TaskState::Zombie);
    assert!(tasks.ps().contains(" Z "));
    assert_eq!(tasks.wait(init, Some(child)), Ok((child, 3)));
    assert_eq!(tasks.get(init).unwrap().child_faults, child_faults);
    assert_eq!(tasks.wait(init, None), Err(Errno::ECHILD));
    // Exec failure leaves the task as it was.
    let vsz = tasks.get(init).unwrap().mm.as_ref().unwrap().total_vm();
    // A file without execute permission is refused before it is opened (EACCES, as the
    // host kernel does); an executable file no format takes is ENOEXEC.
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text");
    std::fs::write(&text, "not a program\n").unwrap();
    let exec_text = |tasks: &mut TaskTable| {
        m.on_cpu(0, |cpu| {
            with_exec_params(
                &m,
                cpu,
                &spec(text.to_str().unwrap(), &[]),
                &host_cred(),
                |file, params, interp| tasks.exec(k, cpu, init, file, params, interp),
            )
        })
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(exec_text(&mut tasks), Err(Errno::EACCES));
    std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = exec_text(&mut tasks);
    assert_eq!(r, Ok(Err(Errno::ENOEXEC)));
    assert_eq!(
        tasks.get(init).unwrap().mm.as_ref().unwrap().total_vm(),
        vsz
    );
    // A shared anonymous mapping survives into a forked child and back.
    let c2 = m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(init).unwrap().mm.as_mut().unwrap();
        let s = k
            .mmap(
                cpu,
                mm,
                0,
                4096,
                PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        let c2 = tasks.fork(k, cpu, init).unwrap();
        let cm = tasks.get_mut(c2).unwrap().mm.as_mut().unwrap();
        k.user_write(cpu, cm, s, b"from child").unwrap();
        let pm = tasks.get_mut(init).unwrap().mm.as_mut().unwrap();
        let mut got = [0u8; 10];
        k.user_read(cpu, pm, s, &mut got).unwrap();
        assert_eq!(&got, b"from child");
        c2
    });
    k.check_pagecache_invariants().unwrap();
    m.on_cpu(0, |cpu| {
        tasks.exit(k, cpu, init, 0).unwrap();
        assert_eq!(
            tasks.get(c2).unwrap().ppid,
            0,
            "orphaned: no other task to adopt it"
        );
        tasks.exit(k, cpu, c2, 0).unwrap();
        assert!(
            tasks.pids().is_empty(),
            "parentless tasks are released at exit"
        );
        k.drop_pagecache(cpu);
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(
        free_and_pcp(k),
        before,
        "every page back after all processes exit"
    );
    assert_eq!(k.page_table_pages(), 0);
}

/// `clone(CLONE_VM)` without `CLONE_THREAD`: the child runs in the parent's address space
/// (bytes either writes the other reads, one `mm` with two users, faults counted in it);
/// the child's exec leaves the parent's memory alone; when the parent exits first the
/// address space stays, whole, with the child; the last user's exit frees every page.
#[test]
fn clone_vm_shares_one_address_space_until_its_last_user_goes() {
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let mut tasks = TaskTable::default();
    let parent = spawn(&m, &mut tasks, "/bin/true", &[]);
    let (heap, a, b, c) = m.on_cpu(0, |cpu| {
        let mm = tasks.mm_mut(parent).unwrap();
        let heap = k
            .mmap(
                cpu,
                mm,
                0,
                8 << 12,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        k.user_write(cpu, mm, heap, b"parent's").unwrap();
        let a = tasks.clone_vm(parent).unwrap();
        let b = tasks.clone_vm(a).unwrap();
        let c = tasks.clone_vm(parent).unwrap();
        (heap, a, b, c)
    });
    assert_eq!(tasks.mm_users(parent), 4);
    assert_eq!(
        tasks.mm_holder(b),
        Some(parent),
        "a sharer's child shares it too"
    );
    assert_eq!(tasks.get(a).unwrap().ppid, parent);
    let min_before = tasks.mm_of(parent).unwrap().faults.min_flt;
    m.on_cpu(1, |cpu| {
        // A private page the child writes is the parent's too: one address space, no COW.
        let mm = tasks.mm_mut(a).unwrap();
        let mut got = [0u8; 8];
        k.user_read(cpu, mm, heap, &mut got).unwrap();
        assert_eq!(&got, b"parent's");
        k.user_write(cpu, mm, heap + (5 << 12), b"child's").unwrap();
    });
    let mut got = [0u8; 7];
    m.on_cpu(0, |cpu| {
        k.user_read(
            cpu,
            tasks.mm_mut(parent).unwrap(),
            heap + (5 << 12),
            &mut got,
        )
        .unwrap()
    });
    assert_eq!(&got, b"child's");
    assert_eq!(
        tasks.mm_of(parent).unwrap().faults.min_flt,
        min_before + 1,
        "the child's fault is counted in the shared address space"
    );
    // The child execs: a new address space for it; the parent's is untouched.
    m.on_cpu(1, |cpu| {
        with_exec_params(
            &m,
            cpu,
            &spec("/bin/true", &[]),
            &host_cred(),
            |file, params, interp| tasks.exec(k, cpu, c, file, params, interp),
        )
        .unwrap()
        .unwrap()
    });
    assert_eq!(tasks.mm_users(parent), 3);
    assert_eq!(tasks.mm_holder(c), Some(c));
    assert_ne!(
        tasks.mm_of(c).unwrap().pt.ctx_id(),
        tasks.mm_of(parent).unwrap().pt.ctx_id()
    );
    m.on_cpu(0, |cpu| {
        k.user_read(cpu, tasks.mm_mut(parent).unwrap(), heap, &mut got)
            .unwrap()
    });
    assert_eq!(&got, b"parent'");
    // The parent exits first: the address space passes to its lowest-pid sharer, which
    // the other sharer then names; every byte is still there.
    m.on_cpu(0, |cpu| tasks.exit(k, cpu, parent, 0).unwrap());
    assert!(tasks.get(parent).is_none(), "parentless: released");
    assert_eq!(tasks.mm_holder(a), Some(a));
    assert_eq!(tasks.mm_holder(b), Some(a));
    assert_eq!(tasks.mm_users(b), 2);
    assert_eq!(
        tasks.mm_of(a).unwrap().faults.min_flt,
        0,
        "counted by the parent"
    );
    m.on_cpu(1, |cpu| {
        let mm = tasks.mm_mut(b).unwrap();
        let mut got = [0u8; 8];
        k.user_read(cpu, mm, heap, &mut got).unwrap();
        assert_eq!(&got, b"parent's");
        k.check_mm_invariants(mm).unwrap();
        // b exits (a lets go); then a, the last user, tears it down.
        tasks.exit(k, cpu, b, 0).unwrap();
        assert_eq!(tasks.mm_users(a), 1);
        let mm = tasks.mm_mut(a).unwrap();
        k.user_read(cpu, mm, heap + (5 << 12), &mut got[..7])
            .unwrap();
        assert_eq!(&got[..7], b"child's");
        tasks.exit(k, cpu, a, 0).unwrap();
        tasks.exit(k, cpu, c, 0).unwrap();
        for z in tasks.pids() {
            let pp = tasks.get(z).unwrap().ppid;
            let _ = tasks.wait(pp, Some(z));
        }
        k.drop_pagecache(cpu);
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(
        free_and_pcp(k),
        before,
        "every page back after the last user"
    );
    assert_eq!(k.page_table_pages(), 0);
}

/// A `vfork` child runs in its parent's address space, but the faults it takes there are
/// its own (Linux counts them in the task): charged to it from a base taken when it started
/// running (`shared_fault_base`, `charge_shared_faults`, what the VMM does for each of its
/// stretches), they leave the address space's counts, reach the parent only as a reaped
/// child's, and the parent's own faults in the same address space stay the parent's.
#[test]
fn a_vfork_childs_faults_are_its_own() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let mut tasks = TaskTable::default();
    let parent = spawn(&m, &mut tasks, "/bin/true", &[]);
    m.on_cpu(0, |cpu| {
        let mm = tasks.mm_mut(parent).unwrap();
        let a = k
            .mmap(
                cpu,
                mm,
                0,
                8 << 12,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        let parent_before = tasks.get(parent).unwrap().fault_counts();
        let child = tasks.clone_vm(parent).unwrap();
        assert!(
            tasks.shared_fault_base(parent).is_none(),
            "the holder counts in its mm"
        );
        // The child runs twice (two stretches), touching 3 and then 2 pages; the parent
        // runs between them (another thread of it, say) and touches one.
        let touch = |tasks: &mut TaskTable, who: u32, pages: std::ops::Range<u64>| {
            let base = tasks.shared_fault_base(who);
            let mm = tasks.mm_mut(who).unwrap();
            for i in pages {
                k.user_write(cpu, mm, a + (i << 12), &[i as u8 + 1])
                    .unwrap();
            }
            if let Some(base) = base {
                tasks.charge_shared_faults(who, base);
            }
        };
        touch(&mut tasks, child, 0..3);
        assert_eq!(tasks.get(child).unwrap().fault_counts().min_flt, 3);
        touch(&mut tasks, parent, 7..8);
        touch(&mut tasks, child, 3..5);
        assert_eq!(tasks.get(child).unwrap().fault_counts().min_flt, 5);
        assert_eq!(
            tasks.get(parent).unwrap().fault_counts().min_flt,
            parent_before.min_flt + 1,
            "only the parent's own fault is the parent's"
        );
        // The child's bytes are in the parent's memory.
        let mut b = [0u8; 1];
        k.user_read(cpu, tasks.mm_mut(parent).unwrap(), a + (4 << 12), &mut b)
            .unwrap();
        assert_eq!(b, [5]);
        tasks.exit(k, cpu, child, 0).unwrap();
        assert_eq!(tasks.wait(parent, Some(child)), Ok((child, 0)));
        assert_eq!(tasks.get(parent).unwrap().child_faults.min_flt, 5);
        tasks.exit(k, cpu, parent, 0).unwrap();
    });
}
