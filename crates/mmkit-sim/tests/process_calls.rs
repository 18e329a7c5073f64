//! The rest of issue 13's calls on mmkit under /dev/kvm: `/proc` listed as the run's tasks
//! (so `ps`, `top` and `pmap` run on mmkit show mmkit's tasks), `select`/`pselect6`,
//! `rt_sigsuspend`, `clone3`, `waitid`, and job control as far as shells need it — each
//! against the native run where the two can be compared, each ending with every page back.
//!
//! Where /dev/kvm cannot be used, each test says so and returns; with `MMKIT_REQUIRE_KVM`
//! set (CI sets it when /dev/kvm exists) that is a failure instead.

mod common;
use common::kvm::{assert_clean, machine, run};
use mmkit_sim::kvm::RunOptions;

/// `ps`, `top`, `pmap` and `ls /proc` run on mmkit list exactly the run's tasks: a shell, its
/// background `sleep` and the `ps` itself, with the sizes their status files give, and the
/// threads of a threaded python under `/proc/PID/task` and in `ps -L`.
#[test]
fn ps_top_and_pmap_list_the_runs_tasks() {
    let Some((m, vm)) = machine(None) else { return };
    let before = m.settle();
    let script = r#"
sleep 5 & s=$!
echo "me $$ sleep $s"
ps -e -o pid=,ppid=,vsz=,rss=,comm=
echo "--"
grep -E "^(VmSize|VmRSS)" /proc/$s/status | tr -s '\t ' ' '
echo "--"
ls /proc | grep -E "^[0-9]+$" | tr "\n" " "; echo
pmap $s | tail -1
top -b -n1 | grep ^Tasks
kill $s; wait $s; echo "status $?"
"#;
    let r = run(&m, &vm, &["bash", "-c", script], RunOptions::default());
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(r.out.status.code(), 0, "{out}");
    let mut parts = out.split("--\n");
    let (head, status, rest) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut lines = head.lines();
    let ids: Vec<u32> = lines
        .next()
        .unwrap()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    let (me, sleep) = (ids[0], ids[1]);
    let ps: Vec<Vec<String>> = lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    // Exactly the run's three tasks: the shell, its sleep and ps, children of the shell.
    let comms: Vec<&str> = ps.iter().map(|f| f[4].as_str()).collect();
    assert_eq!(comms, ["bash", "sleep", "ps"], "{out}");
    assert_eq!(ps[0][0], me.to_string());
    assert_eq!(ps[1][0], sleep.to_string());
    assert_eq!(
        (ps[1][1].as_str(), ps[2][1].as_str()),
        (ps[0][0].as_str(), ps[0][0].as_str())
    );
    // The sleeping task's VSZ and RSS are its status file's VmSize and VmRSS.
    let kb = |key: &str| -> String {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_else(|| panic!("{key} in {status}"))
            .to_string()
    };
    assert_eq!(ps[1][2], kb("VmSize:"), "{out}");
    assert_eq!(ps[1][3], kb("VmRSS:"), "{out}");
    assert_ne!(ps[1][3], "0");
    let mut rest = rest.lines();
    // /proc lists the run's processes only (small pids of this run, the shell and sleep
    // among them).
    let listed: Vec<u32> = rest
        .next()
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert!(listed.contains(&me) && listed.contains(&sleep), "{out}");
    assert!(listed.iter().all(|&p| p < 64), "host pids listed: {out}");
    // pmap's total is VmSize plus the vsyscall page, as natively.
    let total = rest.next().unwrap();
    let vsz: u64 = kb("VmSize:").parse().unwrap();
    assert_eq!(
        total.split_whitespace().nth(1),
        Some(format!("{}K", vsz + 4).as_str())
    );
    // top counts the shell, sleep, top and grep.
    let tasks = rest.next().unwrap();
    assert!(
        tasks.starts_with("Tasks:   4 total,   1 running,   3 sleeping"),
        "{tasks}"
    );
    assert_eq!(rest.next(), Some("status 143"));
    assert_clean(&m, before, "ps");

    // Threads: /proc/PID/task and ps -L show both of python's threads.
    let before = m.settle();
    let r = run(
        &m,
        &vm,
        &[
            "python3",
            "-c",
            "import threading, os\n\
             e = threading.Event(); t = threading.Thread(target=e.wait); t.start()\n\
             me = os.getpid()\n\
             os.system('ps -L -o pid=,lwp=,nlwp=,comm= -p %d; ls /proc/%d/task' % (me, me))\n\
             e.set(); t.join()",
        ],
        RunOptions::default(),
    );
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    let pid = lines[0][0];
    for l in &lines[..2] {
        assert_eq!((l[0], l[2], l[3]), (pid, "2", "python3"), "{out}");
    }
    assert_eq!(lines[0][1], pid);
    assert_eq!(
        [lines[2][0], lines[3][0]],
        [lines[0][1], lines[1][1]],
        "{out}"
    );
    assert_clean(&m, before, "ps -L");
}
