//! The rest of issue 13's calls on mmkit under /dev/kvm: `/proc` listed as the run's tasks
//! (so `ps`, `top` and `pmap` run on mmkit show mmkit's tasks), `select`/`pselect6`,
//! `rt_sigsuspend`, `clone3`, `waitid`, and job control as far as shells need it — each
//! against the native run where the two can be compared, each ending with every page back.
//!
//! Where /dev/kvm cannot be used, each test says so and returns; with `MMKIT_REQUIRE_KVM`
//! set (CI sets it when /dev/kvm exists) that is a failure instead.

mod common;
use common::kvm::{assert_clean, cc, machine, run, same_as_native};
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

/// The generated `/proc` directories against bad use, as Linux's: `getdents64` with a
/// buffer too small for one entry (EINVAL), a bad buffer (EFAULT), on a file (ENOTDIR);
/// `read` of a directory (EISDIR); a file opened `O_DIRECTORY` (ENOTDIR), a directory
/// opened for writing (EISDIR); a thread that is not there (ENOENT); and their use:
/// `fstatat`/`openat` inside an open `/proc/self`, `readdir` with `.`/`..` and `d_type`,
/// `rewinddir` — line for line as natively.
#[test]
fn proc_directories_fail_and_read_as_on_linux() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "pbad", PROC_BAD_C, &[]);
    let before = m.settle();
    same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert_clean(&m, before, "proc directories");
}

/// Timeouts as long as a `timeval`/`timespec` can say (`INT64_MAX` seconds) to `select`,
/// `ppoll`, `futex` and `setitimer` are "for ever", as on Linux — not a VMM panic on an
/// `Instant` overflow.
#[test]
fn huge_timeouts_are_for_ever() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "big", BIG_C, &[]);
    let before = m.settle();
    same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert_clean(&m, before, "huge timeouts");
}

const BIG_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/select.h>
#include <sys/time.h>
#include <poll.h>
#include <time.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <errno.h>
#include <string.h>
int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    int p[2]; pipe(p); write(p[1], "x", 1);
    fd_set r; FD_ZERO(&r); FD_SET(p[0], &r);
    struct timeval tv = { INT64_MAX, 0 };
    printf("select huge %d\n", select(p[0] + 1, &r, 0, 0, &tv));
    struct timespec ts = { INT64_MAX, 0 };
    struct pollfd pf = { p[0], POLLIN, 0 };
    printf("ppoll huge %d\n", ppoll(&pf, 1, &ts, 0));
    int w = 0;
    long f = syscall(SYS_futex, &w, FUTEX_WAIT, 1, &ts, 0, 0); printf("futex huge %ld %s\n", f, strerror(errno));
    struct itimerval it = { { INT64_MAX, 0 }, { INT64_MAX, 0 } };
    printf("setitimer huge %d\n", setitimer(ITIMER_REAL, &it, 0));
    struct itimerval off = { { 0, 0 }, { 0, 0 } }; setitimer(ITIMER_REAL, &off, 0);
    return 0;
}
"#;

const PROC_BAD_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <string.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/stat.h>
static void res(const char *what, long r) { printf("%s %ld %s\n", what, r, r < 0 ? strerror(errno) : ""); }
int main(void) {
    char buf[4096]; long r;
    int d = open("/proc/self", O_RDONLY | O_DIRECTORY); res("open /proc/self", d >= 0 ? 0 : -1);
    r = syscall(SYS_getdents64, d, buf, 1); res("getdents64 tiny", r);
    r = syscall(SYS_getdents64, d, (void *)8, sizeof buf); res("getdents64 fault", r);
    r = read(d, buf, 10); res("read dir", r);
    int s = open("/proc/self/status", O_RDONLY); r = syscall(SYS_getdents64, s, buf, sizeof buf); res("getdents64 file", r);
    r = open("/proc/self/status", O_RDONLY | O_DIRECTORY); res("status O_DIRECTORY", r);
    r = open("/proc/self", O_WRONLY); res("dir O_WRONLY", r);
    r = open("/proc/self/task/999999/stat", O_RDONLY); res("no such thread", r);
    r = open("/proc/self/task/xyz", O_RDONLY); res("task not a number", r);
    char path[64]; snprintf(path, sizeof path, "/proc/self/task/%d/stat", getpid());
    r = open(path, O_RDONLY); res("own task stat", r >= 0 ? 0 : -1);
    snprintf(path, sizeof path, "/proc/0%d/stat", getpid()); r = open(path, O_RDONLY); res("leading zero", r);
    snprintf(path, sizeof path, "/proc/+%d/stat", getpid()); r = open(path, O_RDONLY); res("plus sign", r);
    struct stat st; r = stat("/proc/self", &st); printf("stat dir %ld isdir %d\n", r, S_ISDIR(st.st_mode));
    r = fstatat(d, "stat", &st, 0); printf("fstatat in dir %ld isreg %d\n", r, S_ISREG(st.st_mode));
    int f = openat(d, "comm", O_RDONLY); r = read(f, buf, sizeof buf); printf("openat comm %.*s", (int)r, buf);
    r = lseek(d, 0, SEEK_END); res("lseek end", r);
    /* every entry read once, whatever the buffer */
    DIR *dir = opendir("/proc/self"); int n = 0, dots = 0, status = 0; struct dirent *e;
    while ((e = readdir(dir))) { n++; dots += e->d_name[0] == '.'; status += !strcmp(e->d_name, "status") && e->d_type == DT_REG; }
    printf("dots %d status %d\n", dots, status);
    rewinddir(dir); int m = 0; while (readdir(dir)) m++; printf("rewind same %d\n", m == n);
    return 0;
}
"#;

/// `select`, `pselect6`, `ppoll` and `rt_sigsuspend` on pipes between processes, with
/// timeouts (the time left written back), temporary signal masks (a handler interrupts
/// with `EINTR` and the old mask is back after it) and a signal already pending — and
/// their bad arguments — line for line as natively.
#[test]
fn select_pselect_ppoll_and_sigsuspend_match_the_native_run() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "sel", SELECT_C, &[]);
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains("sigsuspend -1 errno Interrupted system call got 10"),
        "{out}"
    );
    assert_clean(&m, before, "select");
}

/// `clone3` (a fork, glibc's threads and `posix_spawn`, and `copy_clone_args_from_user`'s
/// and `clone3_args_valid`'s errors), `waitid` (`WNOWAIT`, `WNOHANG`, `P_PGID`, a killed
/// child, bad arguments) and per-thread `PR_SET_NAME` seen in `/proc/thread-self` — line
/// for line as natively.
#[test]
fn clone3_waitid_and_prctl_match_the_native_run() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "c3", CLONE3_C, &["-pthread"]);
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("/proc/thread-self/comm: worker"), "{out}");
    assert!(
        out.contains("clone3 tail -1 Argument list too long"),
        "{out}"
    );
    assert_clean(&m, before, "clone3");
}

/// Stop and continue as shells need them: `SIGSTOP`/`SIGTSTP` stop a child (blocked in a
/// `read` that goes on after `SIGCONT`, the bytes written meanwhile not read while it is
/// stopped), `wait4` with `WUNTRACED`/`WCONTINUED` and `waitid` with `WSTOPPED`/`WCONTINUED`
/// report each change once, `SIGCHLD` says `CLD_STOPPED`/`CLD_CONTINUED` unless
/// `SA_NOCLDSTOP`, `SIGTERM` to a stopped child takes effect at `SIGCONT`, an ignored
/// `SIGTSTP` stops nothing — line for line as natively.
#[test]
fn stop_and_continue_match_the_native_run() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "job", JOB_C, &[]);
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains("wrote while stopped, read by then: 0\nchild read x"),
        "{out}"
    );
    assert_clean(&m, before, "stop and continue");
}

/// Run `cmd` on a new pseudo-terminal as the controlling terminal of a new session (as a
/// login shell has it): its output (with the terminal's CR LF) and status.
fn on_pty(cmd: std::process::Command) -> (String, i32) {
    on_pty_typing(cmd, b"")
}

/// [`on_pty`], with `input` typed on the terminal first.
fn on_pty_typing(mut cmd: std::process::Command, input: &[u8]) -> (String, i32) {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we own from here on.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: fresh descriptors nobody else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The command holds copies of the slave: only the child may keep it open.
    drop(cmd);
    drop(slave);
    let mut out = Vec::new();
    let mut f = std::fs::File::from(master);
    f.write_all(input).unwrap();
    let mut buf = [0u8; 4096];
    // Until the last holder of the slave is gone (EIO).
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let st = child.wait().unwrap();
    let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
    (String::from_utf8_lossy(&out).into_owned(), code)
}

/// `tcgetpgrp`/`tcsetpgrp`/`tcgetsid` on mmkit's terminal are the run's own: a shell hands
/// the terminal to a child's group and takes it back; a background group's `tcsetpgrp`
/// stops it with `SIGTTOU` unless ignored; no such group (ESRCH), a negative one (EINVAL),
/// a bad pointer (EFAULT), a group of another session (EPERM), a caller without the
/// terminal (ENOTTY); `tcgetattr` (`TCGETS` writes the kernel's `termios`, not glibc's
/// larger one, which smashed the caller's stack) — on a pseudo-terminal, line for line as
/// natively.
#[test]
fn terminal_process_groups_match_the_native_run() {
    if !common::kvm::kvm_usable_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(dir.path(), "tty", TTY_C, &[]);
    let native = on_pty(std::process::Command::new(&prog));
    let mut ours = std::process::Command::new(env!("CARGO_BIN_EXE_mmkit"));
    ours.arg("exec").arg(&prog);
    let ours = on_pty(ours);
    assert_eq!(ours, native);
    assert!(
        native.0.contains("background tcsetpgrp: stopped 1 sig 22"),
        "{native:?}"
    );
}

/// An interactive bash on mmkit's terminal runs jobs: a background job stopped with
/// `kill -STOP` shows as Stopped, continued as Running, brought back with `fg` (bash hands
/// it the terminal and takes it back, its settings restored with `tcsetattr`), and a
/// background job killed with `SIGINT` is reported with status 130 (the `kill` and the
/// `wait` on one line: on separate lines an interactive bash may report and forget the
/// dead job at the prompt in between, natively too, when the job dies that fast).
#[test]
fn interactive_bash_controls_its_jobs() {
    if !common::kvm::kvm_usable_or_skip() {
        return;
    }
    let script = "sleep 2 &\nkill -STOP %1\nsleep 0.2\njobs\nkill -CONT %1\nsleep 0.2\njobs\n\
                  fg %1\necho fg-done $?\nsleep 5 &\nsleep 0.2\n\
                  kill -INT %1; wait %1; echo wait $?\nexit 3\n";
    let mut ours = std::process::Command::new(env!("CARGO_BIN_EXE_mmkit"));
    ours.args(["exec", "bash", "--norc", "--noprofile", "-i"]);
    let (out, code) = on_pty_typing(ours, script.as_bytes());
    let clean = out.replace('\r', "");
    for want in [
        "[1]+  Stopped                 sleep 2",
        "[1]+  Running                 sleep 2 &",
        "fg-done 0",
        "wait 130",
    ] {
        assert!(clean.contains(want), "{want:?} not in {clean}");
    }
    assert!(!clean.contains("Inappropriate ioctl"), "{clean}");
    assert_eq!(code, 3, "{clean}");
}

/// Start `cmd` (stdout piped) in a process group of its own, wait for its `ready` line,
/// send `SIGINT` to the group (a Ctrl-C on its terminal) or to `mmkit` alone, and give
/// its output and status.
fn interrupted(mut cmd: std::process::Command, to_group: bool) -> (String, i32) {
    use std::io::{BufRead, Read};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    cmd.process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Its standard input stays open (and empty) until it ends: a read of it waits.
    let _stdin = child.stdin.take();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "ready\n");
    // Let the program reach its wait.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = child.id() as i32;
    // SAFETY: signalling our own child (or its group).
    unsafe { libc::kill(if to_group { -pid } else { pid }, libc::SIGINT) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let st = child.wait().unwrap();
    // Exited, or ended by a signal: told apart (a parent shell of mmkit sees which).
    let code = st.code().unwrap_or_else(|| -st.signal().unwrap_or(0));
    (first + &rest, code)
}

/// Ctrl-C: `SIGINT` to `mmkit exec` while a program runs becomes `SIGINT` to the guest's
/// foreground process group: a shell's trap runs once its `sleep` died of it (and the
/// shell goes on); a shell without one dies with status 130; a C program spinning with a
/// handler takes it in the handler; python blocked in a read of its standard input gets
/// its KeyboardInterrupt — the same as a native Ctrl-C to the same programs, and mmkit
/// ends as the program did (by `SIGINT` when the program died of it). A swap file's
/// private directory is gone afterwards.
#[test]
fn ctrl_c_reaches_the_foreground_process_group() {
    if !common::kvm::kvm_usable_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spin = cc(dir.path(), "spin", SPIN_C, &[]);
    let spin = spin.to_str().unwrap();
    let cases: [&[&str]; 4] = [
        &[
            "sh",
            "-c",
            "trap 'echo caught' INT; echo ready; sleep 5; echo after",
        ],
        &["sh", "-c", "echo ready; sleep 5; echo after"],
        &[spin],
        // Waiting in a read of its (host) standard input: KeyboardInterrupt, then python
        // ends itself with SIGINT.
        &[
            "python3",
            "-c",
            "import sys; print('ready', flush=True); sys.stdin.read()",
        ],
    ];
    let tmp = tempfile::tempdir().unwrap();
    for argv in cases {
        let mut native = std::process::Command::new(argv[0]);
        native.args(&argv[1..]);
        let native = interrupted(native, true);
        let mut ours = std::process::Command::new(env!("CARGO_BIN_EXE_mmkit"));
        ours.args(["exec", "--mem", "256M", "--swap", "16M"])
            .args(argv)
            .env("TMPDIR", tmp.path());
        let ours = interrupted(ours, false);
        assert_eq!(ours, native, "{argv:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{argv:?}: temporary files left: {left:?}");
    }
}

const SPIN_C: &str = r#"#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static volatile sig_atomic_t got;
static void h(int s) { got = s; }
int main(void) {
    signal(SIGINT, h);
    printf("ready\n");
    fflush(stdout);
    while (!got) {}
    printf("handler ran: %d\n", got);
    return 3;
}
"#;

const JOB_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <poll.h>
static volatile int codes[16], ncodes;
static void h(int s, siginfo_t *si, void *u) { (void)s; (void)u; if (ncodes < 16) codes[ncodes++] = si->si_code; }
static void show(const char *what, int st) {
    printf("%s: exited %d stopped %d sig %d continued %d signaled %d\n", what, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
           WIFSTOPPED(st), WIFSTOPPED(st) ? WSTOPSIG(st) : 0, WIFCONTINUED(st), WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}
int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = h; sa.sa_flags = SA_SIGINFO | SA_RESTART; sigaction(SIGCHLD, &sa, 0);
    int p[2], q[2]; pipe(p); pipe(q); int st; siginfo_t si; char ack;
    /* Each child gets a process group of its own, under this one in the same session: never
       an orphaned group, whose stop signals Linux discards (the test's own group may be one,
       depending on what started it). */
    pid_t c = fork();
    if (c == 0) {
        setpgid(0, 0);
        char b; write(q[1], "r", 1);
        while (read(p[0], &b, 1) == 1) { printf("child read %c\n", b); write(q[1], "a", 1); }
        _exit(3);
    }
    setpgid(c, c);
    read(q[0], &ack, 1); usleep(50000);
    kill(c, SIGSTOP);
    waitpid(c, &st, WUNTRACED); show("after SIGSTOP", st);
    write(p[1], "x", 1);
    usleep(100000);
    struct pollfd pf = { q[0], POLLIN, 0 };
    printf("wrote while stopped, read by then: %d\n", poll(&pf, 1, 0));
    kill(c, SIGCONT);
    waitpid(c, &st, WCONTINUED); read(q[0], &ack, 1); show("after SIGCONT", st);
    printf("nohang %d\n", waitpid(c, &st, WNOHANG | WUNTRACED | WCONTINUED));
    kill(c, SIGTSTP);
    memset(&si, 0, sizeof si); waitid(P_PID, c, &si, WSTOPPED);
    printf("waitid stopped code %d status %d\n", si.si_code, si.si_status);
    kill(c, SIGCONT);
    memset(&si, 0, sizeof si); waitid(P_PID, c, &si, WCONTINUED);
    printf("waitid continued code %d status %d\n", si.si_code, si.si_status);
    usleep(50000);
    kill(c, SIGSTOP); waitpid(c, &st, WUNTRACED); show("stopped again", st);
    kill(c, SIGTERM); usleep(50000);
    printf("term while stopped: %d\n", waitpid(c, &st, WNOHANG));
    kill(c, SIGCONT);
    waitpid(c, &st, 0); show("end", st);
    /* a child stops itself; SA_NOCLDSTOP: no SIGCHLD for it */
    sa.sa_flags |= SA_NOCLDSTOP; sigaction(SIGCHLD, &sa, 0);
    int before = ncodes;
    c = fork();
    if (c == 0) { setpgid(0, 0); raise(SIGTSTP); printf("child continued\n"); _exit(7); }
    waitpid(c, &st, WUNTRACED); show("raised SIGTSTP", st);
    kill(c, SIGCONT); waitpid(c, &st, 0); show("end", st);
    printf("sigchld codes while SA_NOCLDSTOP: %d\n", ncodes - before);
    /* the ones before each wait (the last two, continued then killed, may coalesce) */
    for (int i = 0; i < 6 && i < before; i++) printf("code %d\n", codes[i]);
    /* a stop signal that is caught runs its handler and stops nothing */
    c = fork();
    if (c == 0) { signal(SIGTSTP, SIG_IGN); raise(SIGTSTP); printf("ignored tstp\n"); _exit(0); }
    waitpid(c, &st, WUNTRACED); show("ignored", st);
    errno = 0; int g = tcgetpgrp(p[0]); printf("tcgetpgrp pipe %d %s\n", g, strerror(errno));
    return 0;
}
"#;

const TTY_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    int st, r;
    printf("fg is my group %d, sid is me %d\n", tcgetpgrp(0) == getpgrp(), tcgetsid(0) == getsid(0));
    /* TCGETS fills the kernel's 36-byte termios that glibc gives it, not more */
    struct termios tio; r = tcgetattr(0, &tio); printf("tcgetattr %d echo %d\n", r, !!(tio.c_lflag & ECHO));
    signal(SIGTTOU, SIG_IGN);
    pid_t c = fork();
    if (c == 0) {
        setpgid(0, 0);
        while (tcgetpgrp(0) != getpgrp()) usleep(1000);
        printf("child has the terminal\n");
        _exit(0);
    }
    setpgid(c, c);
    r = tcsetpgrp(0, c);
    waitpid(c, &st, 0); printf("tcsetpgrp to child %d, child done %d\n", r, WEXITSTATUS(st));
    r = tcsetpgrp(0, getpgrp()); printf("back %d fg is mine %d\n", r, tcgetpgrp(0) == getpgrp());
    /* a background group that does not ignore SIGTTOU is stopped by tcsetpgrp */
    c = fork();
    if (c == 0) { setpgid(0, 0); signal(SIGTTOU, SIG_DFL); tcsetpgrp(0, getpgrp()); printf("child continued, fg is its %d\n", tcgetpgrp(0) == getpgrp()); _exit(0); }
    setpgid(c, c);
    waitpid(c, &st, WUNTRACED); printf("background tcsetpgrp: stopped %d sig %d\n", WIFSTOPPED(st), WSTOPSIG(st));
    tcsetpgrp(0, c); kill(c, SIGCONT); waitpid(c, &st, 0); printf("child exit %d\n", WEXITSTATUS(st));
    tcsetpgrp(0, getpgrp());
    errno = 0; r = tcsetpgrp(0, 99999); printf("no such group %d %s\n", r, strerror(errno));
    errno = 0; r = tcsetpgrp(0, -1); printf("negative %d %s\n", r, strerror(errno));
    errno = 0; r = ioctl(0, TIOCSPGRP, (void *)8); printf("fault %d %s\n", r, strerror(errno));
    c = fork();
    if (c == 0) { setsid(); errno = 0; int g = tcgetpgrp(0); printf("after setsid %d %s\n", g, strerror(errno));
        errno = 0; int s = tcsetpgrp(0, getpgrp()); printf("set after setsid %d %s\n", s, strerror(errno)); _exit(0); }
    waitpid(c, &st, 0);
    /* another session's group */
    int pp[2]; pipe(pp);
    c = fork();
    if (c == 0) { setsid(); write(pp[1], "x", 1); pause(); _exit(0); }
    char b; read(pp[0], &b, 1);
    errno = 0; r = tcsetpgrp(0, c); printf("other session %d %s\n", r, strerror(errno));
    kill(c, SIGKILL); waitpid(c, &st, 0);
    return 0;
}
"#;

const SELECT_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/select.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
static volatile int got;
static void h(int s) { got = s; }
int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    int p[2]; pipe(p);
    fd_set r, w; struct timeval tv; int n; pid_t c; char b;
    FD_ZERO(&r); FD_SET(p[0], &r); tv.tv_sec = 0; tv.tv_usec = 50000;
    n = select(p[0] + 1, &r, 0, 0, &tv);
    printf("select empty %d isset %d tv %ld.%06ld\n", n, FD_ISSET(p[0], &r), tv.tv_sec, tv.tv_usec);
    c = fork(); if (c == 0) { usleep(50000); write(p[1], "x", 1); _exit(0); }
    FD_ZERO(&r); FD_SET(p[0], &r);
    n = syscall(SYS_select, p[0] + 1, &r, 0, 0, 0);
    printf("select data %d isset %d\n", n, FD_ISSET(p[0], &r));
    read(p[0], &b, 1); waitpid(c, 0, 0);
    FD_ZERO(&w); FD_SET(p[1], &w); FD_ZERO(&r); FD_SET(p[0], &r);
    tv.tv_sec = 0; tv.tv_usec = 0;
    n = select(p[1] + 1, &r, &w, 0, &tv);
    printf("select rw %d r %d w %d\n", n, FD_ISSET(p[0], &r), FD_ISSET(p[1], &w));
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = h; sigaction(SIGUSR1, &sa, 0);
    sigset_t blk, empty, now; sigemptyset(&blk); sigaddset(&blk, SIGUSR1);
    sigprocmask(SIG_BLOCK, &blk, 0); sigemptyset(&empty);
    c = fork(); if (c == 0) { usleep(50000); kill(getppid(), SIGUSR1); _exit(0); }
    FD_ZERO(&r); FD_SET(p[0], &r);
    n = pselect(p[0] + 1, &r, 0, 0, NULL, &empty);
    printf("pselect %d errno %s got %d\n", n, strerror(errno), got);
    sigprocmask(SIG_BLOCK, 0, &now); printf("usr1 blocked after %d\n", sigismember(&now, SIGUSR1));
    waitpid(c, 0, 0);
    got = 0; c = fork(); if (c == 0) { usleep(50000); kill(getppid(), SIGUSR1); _exit(0); }
    n = sigsuspend(&empty);
    printf("sigsuspend %d errno %s got %d\n", n, strerror(errno), got);
    sigprocmask(SIG_BLOCK, 0, &now); printf("usr1 blocked after %d\n", sigismember(&now, SIGUSR1));
    waitpid(c, 0, 0);
    got = 0; raise(SIGUSR1); printf("pending got %d\n", got);
    n = sigsuspend(&empty); printf("sigsuspend pending %d got %d\n", n, got);
    struct pollfd pf = { p[0], POLLIN, 0 }; struct timespec ts = {0, 30000000};
    n = ppoll(&pf, 1, &ts, &empty); printf("ppoll %d rev %d ts %ld.%09ld\n", n, pf.revents, ts.tv_sec, ts.tv_nsec);
    ts.tv_nsec = 20000000;
    n = pselect(0, 0, 0, 0, &ts, NULL); printf("pselect sleep %d\n", n);
    close(p[1]); FD_ZERO(&r); FD_SET(p[0], &r);
    n = select(p[0] + 1, &r, 0, 0, NULL); printf("select hup %d %d\n", n, FD_ISSET(p[0], &r));
    errno = 0; n = select(-1, 0, 0, 0, 0); printf("select -1: %d %s\n", n, strerror(errno));
    FD_ZERO(&r); FD_SET(100, &r); tv.tv_sec = 0; tv.tv_usec = 0;
    n = select(101, &r, 0, 0, &tv); printf("select badf %d %s\n", n, strerror(errno));
    tv.tv_sec = 0; tv.tv_usec = -1; n = select(1, 0, 0, 0, &tv); printf("select bad tv %d %s\n", n, strerror(errno));
    tv.tv_sec = 0; tv.tv_usec = 0; n = select(1, (fd_set *)8, 0, 0, &tv); printf("select fault %d %s\n", n, strerror(errno));
    n = syscall(SYS_rt_sigsuspend, &empty, 4); printf("sigsuspend size %d %s\n", n, strerror(errno));
    n = syscall(SYS_rt_sigsuspend, (void *)8, 8); printf("sigsuspend fault %d %s\n", n, strerror(errno));
    n = syscall(SYS_ppoll, &pf, 1, NULL, &empty, 4); printf("ppoll size %d %s\n", n, strerror(errno));
    ts.tv_sec = 0; ts.tv_nsec = -1; n = ppoll(&pf, 1, &ts, NULL); printf("ppoll bad ts %d %s\n", n, strerror(errno));
    n = syscall(SYS_ppoll, &pf, 1 << 20, NULL, NULL, 8); printf("ppoll nfds %d %s\n", n, strerror(errno));
    struct { void *ss; size_t len; } sig = { &empty, 4 };
    tv.tv_sec = 0; n = syscall(SYS_pselect6, 0, 0, 0, 0, &ts, &sig); printf("pselect6 bad ts %d %s\n", n, strerror(errno));
    ts.tv_nsec = 0; n = syscall(SYS_pselect6, 0, 0, 0, 0, &ts, &sig); printf("pselect6 size %d %s\n", n, strerror(errno));
    n = syscall(SYS_pselect6, 0, 0, 0, 0, &ts, (void *)8); printf("pselect6 fault %d %s\n", n, strerror(errno));
    return 0;
}
"#;

const CLONE3_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <errno.h>
#include <string.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <spawn.h>
#include <linux/sched.h>
extern char **environ;
static long c3(struct clone_args *a, size_t size) { return syscall(SYS_clone3, a, size); }
static void cat(const char *path) {
    char buf[64] = {0}; FILE *f = fopen(path, "r"); fgets(buf, sizeof buf, f); fclose(f); printf("%s: %s", path, buf);
}
static void *thr(void *x) {
    char n[16] = {0};
    prctl(PR_SET_NAME, "worker"); prctl(PR_GET_NAME, n); printf("thread name %s\n", n);
    cat("/proc/thread-self/comm"); cat("/proc/self/comm"); cat("/proc/thread-self/status");
    return (void *)((long)x + 1);
}
int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    struct clone_args a; long r; siginfo_t si; int st;
    memset(&a, 0, sizeof a); a.exit_signal = SIGCHLD;
    r = c3(&a, sizeof a);
    if (r == 0) _exit(42);
    printf("clone3 fork %s\n", r > 0 ? "ok" : strerror(errno));
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, r, &si, WEXITED | WNOWAIT);
    printf("waitid nowait %ld signo %d code %d status %d\n", r, si.si_signo, si.si_code, si.si_status);
    memset(&si, 0, sizeof si);
    r = waitid(P_ALL, 0, &si, WEXITED);
    printf("waitid %ld signo %d code %d status %d\n", r, si.si_signo, si.si_code, si.si_status);
    pid_t k = fork(); if (k == 0) { pause(); _exit(0); }
    si.si_pid = 123;
    r = waitid(P_PID, k, &si, WEXITED | WNOHANG);
    printf("waitid nohang %ld pid %d\n", r, si.si_pid);
    kill(k, SIGTERM);
    r = waitid(P_PGID, 0, &si, WEXITED);
    printf("waitid killed %ld code %d status %d match %d\n", r, si.si_code, si.si_status, si.si_pid == k);
    errno = 0; r = waitid(P_ALL, 0, &si, WEXITED); printf("waitid none %ld %s\n", r, strerror(errno));
    r = waitid(P_ALL, 0, &si, 0); printf("waitid no opts %ld %s\n", r, strerror(errno));
    r = waitid(7, 0, &si, WEXITED); printf("waitid type %ld %s\n", r, strerror(errno));
    r = waitid(P_PID, 0, &si, WEXITED); printf("waitid pid0 %ld %s\n", r, strerror(errno));
    r = waitid(P_PIDFD, 99, &si, WEXITED); printf("waitid pidfd %ld %s\n", r, strerror(errno));
    /* threads and posix_spawn go through glibc's clone3 */
    pthread_t t; void *ret;
    pthread_create(&t, 0, thr, (void *)41); pthread_join(t, &ret);
    printf("thread %ld\n", (long)ret);
    char name[16] = {0}; prctl(PR_SET_NAME, "renamed"); prctl(PR_GET_NAME, name);
    printf("name %s\n", name);
    char buf[64] = {0}; FILE *f = fopen("/proc/self/comm", "r"); fgets(buf, sizeof buf, f); fclose(f);
    printf("comm %s", buf);
    f = fopen("/proc/self/status", "r"); fgets(buf, sizeof buf, f); fclose(f); printf("status %s", buf);
    pid_t sp; char *argv[] = {"sh", "-c", "exit 5", 0};
    r = posix_spawn(&sp, "/bin/sh", 0, 0, argv, environ);
    waitpid(sp, &st, 0); printf("spawn %ld %d\n", r, WEXITSTATUS(st));
    /* bad arguments, as copy_clone_args_from_user and clone3_args_valid check them */
    char big[4200]; memset(big, 0, sizeof big); memcpy(big, &a, sizeof a);
    r = c3(&a, 32); printf("clone3 small %ld %s\n", r, strerror(errno));
    r = c3((void *)big, 4097); printf("clone3 page %ld %s\n", r, strerror(errno));
    big[100] = 1; r = c3((void *)big, 200); printf("clone3 tail %ld %s\n", r, strerror(errno));
    r = c3((void *)8, 64); printf("clone3 fault %ld %s\n", r, strerror(errno));
    memset(&a, 0, sizeof a); a.exit_signal = 100; r = c3(&a, sizeof a); printf("clone3 sig %ld %s\n", r, strerror(errno));
    memset(&a, 0, sizeof a); a.stack_size = 4096; r = c3(&a, sizeof a); printf("clone3 stack %ld %s\n", r, strerror(errno));
    memset(&a, 0, sizeof a); a.flags = CLONE_THREAD | CLONE_SIGHAND | CLONE_VM; a.exit_signal = SIGCHLD; r = c3(&a, sizeof a); printf("clone3 thread sig %ld %s\n", r, strerror(errno));
    memset(&a, 0, sizeof a); a.flags = CLONE_SIGHAND | CLONE_CLEAR_SIGHAND; r = c3(&a, sizeof a); printf("clone3 clear %ld %s\n", r, strerror(errno));
    memset(&a, 0, sizeof a); a.set_tid_size = 1; r = c3(&a, sizeof a); printf("clone3 set_tid_size %ld %s\n", r, strerror(errno));
    memset(&a, 0, sizeof a); a.flags = 1ULL << 40; r = c3(&a, sizeof a); printf("clone3 flags %ld %s\n", r, strerror(errno));
    return 0;
}
"#;
