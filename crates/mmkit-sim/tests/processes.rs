//! Processes, threads, signals and pipes of real programs on mmkit under /dev/kvm: shells,
//! pipelines, subprocesses, forked children, threads, signal handlers and a compiler, each
//! against the native run and each ending with every page back.
//!
//! Where /dev/kvm cannot be used, each test says so and returns; with `MMKIT_REQUIRE_KVM`
//! set (CI sets it when /dev/kvm exists) that is a failure instead.

mod common;
use common::kvm::{assert_clean, cc, machine, run, same_as_native, within};
use mmkit_sim::kvm::process::Status;
use mmkit_sim::kvm::RunOptions;

/// Shells, pipelines and subprocesses: `fork`, `vfork`/`posix_spawn`, `execve` from inside
/// the program, `wait4`, pipes whose buffers are mmkit pages, `SIGPIPE` — output and status
/// equal to the native runs, and every page (pipe buffers, every child's address space)
/// back after each.
#[test]
fn processes_and_pipes_match_the_native_runs() {
    let Some((m, vm)) = machine(None) else { return };
    let cmds: [&[&str]; 5] = [
        &[
            "python3",
            "-c",
            "import subprocess; r = subprocess.run(['ls', '/'], capture_output=True); \
             print(sorted(r.stdout.split())[:3], r.returncode)",
        ],
        &["bash", "-c", "seq 1 100000 | sort -rn | head -5"],
        &[
            "sh",
            "-c",
            "for i in $(seq 1 20); do /bin/echo -n \"$i \"; done; echo; exit 7",
        ],
        &["bash", "-c", "yes | head -1; echo \"${PIPESTATUS[@]}\""],
        &[
            "bash",
            "-c",
            "f() { echo $$ $BASHPID >/dev/null; echo sub; }; x=$(f); echo \"$x\"; \
             (exit 3); echo $?; false | true; echo $?; \
             cat /proc/$$/comm; test -s /proc/$$/maps && echo maps; cat /proc/99999/stat; echo $?",
        ],
    ];
    for argv in cmds {
        let before = m.settle();
        let r = same_as_native(&m, &vm, argv);
        assert!(r.out.switches > 0, "{argv:?}: ran more than one task");
        assert_clean(&m, before, &argv.join(" "));
    }
}

/// Fork's copy-on-write and shared memory seen from a real program: 8 children each write
/// their own pattern into a `MAP_SHARED|MAP_ANONYMOUS` region and all of a private one; the
/// parent sees every child's shared bytes and its private copy untouched.
#[test]
fn forked_children_share_and_copy_memory() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "forks",
        r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#define N 8
#define SZ (1 << 20)
int main(void) {
    unsigned char *shared = mmap(0, N * SZ, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    unsigned char *priv = mmap(0, N * SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(priv, 0xee, N * SZ);
    for (int i = 0; i < N; i++) {
        if (fork() == 0) {
            memset(shared + i * SZ, i + 1, SZ);
            memset(priv, i + 0x10, N * SZ);
            for (int j = 0; j < N * SZ; j++) if (priv[j] != i + 0x10) _exit(99);
            _exit(i);
        }
    }
    int sum = 0;
    for (int i = 0; i < N; i++) { int st; if (wait(&st) > 0 && WIFEXITED(st)) sum += WEXITSTATUS(st); }
    for (int i = 0; i < N; i++) for (int j = 0; j < SZ; j++) if (shared[i * SZ + j] != i + 1) { printf("shared %d bad\n", i); return 1; }
    for (int j = 0; j < N * SZ; j++) if (priv[j] != 0xee) { printf("private bad\n"); return 1; }
    printf("exit codes sum %d, shared and private intact\n", sum);
    return 0;
}"#,
        &[],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "exit codes sum 28, shared and private intact\n"
    );
    assert_clean(&m, before, "forks");
}

/// Signals reach handlers on a real `rt_sigframe`: a SIGSEGV handler sees `si_addr`,
/// `mprotect`s the page and returns, the access is retried and succeeds; `kill` to itself
/// runs a handler; the FPU state survives the handlers; a caught SIGPIPE (sort's) ends as
/// natively.
#[test]
fn signal_handlers_run_and_return() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "segv",
        r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static char *volatile page;
static volatile int hits;
static void on_segv(int sig, siginfo_t *si, void *uc) {
    hits++;
    if ((char *)si->si_addr != page + 100 || si->si_code != SEGV_ACCERR) _exit(10);
    volatile double x = 7.25; x *= 3;
    mprotect(page, 4096, PROT_READ | PROT_WRITE);
}
static void on_usr1(int sig) { hits += 100; }
int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv; sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, 0);
    signal(SIGUSR1, on_usr1);
    page = mmap(0, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile double d = 1.5;
    *(volatile char *)(page + 100) = 42;
    kill(getpid(), SIGUSR1);
    printf("hits=%d byte=%d d=%.2f\n", hits, *(volatile char *)(page + 100), d * 2);
    return 0;
}"#,
        &[],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "hits=101 byte=42 d=3.00\n"
    );
    assert_clean(&m, before, "segv handler");
}

/// `gcc hello.c -o hello` on mmkit (the driver spawning cc1, as and ld through
/// `posix_spawn`) makes a program that runs on the host and on mmkit.
#[test]
fn gcc_on_mmkit_builds_a_working_program() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"hello from a compiler on mmkit\"); return 0; }\n",
    )
    .unwrap();
    let exe = dir.path().join("hello");
    let before = m.settle();
    let r = run(
        &m,
        &vm,
        &["gcc", src.to_str().unwrap(), "-o", exe.to_str().unwrap()],
        RunOptions::default(),
    );
    assert_eq!(
        r.out.status,
        Status::Exited(0),
        "gcc on mmkit: {:?}",
        r.out.log
    );
    assert!(r.out.switches > 0);
    assert_clean(&m, before, "gcc");
    let native = std::process::Command::new(&exe).output().unwrap();
    assert_eq!(native.stdout, b"hello from a compiler on mmkit\n");
    let ours = run(&m, &vm, &[exe.to_str().unwrap()], RunOptions::default());
    assert_eq!(ours.stdout, b"hello from a compiler on mmkit\n");
}

/// Threads: `pthread_create` (`clone(CLONE_THREAD|…)`), mutexes and joins through
/// `futex`, `CLONE_CHILD_CLEARTID` at thread exit — a C program's four threads contend for
/// a mutex 4,000 times and python3's four threads each sum a range; results equal the
/// native runs, and every page is back.
#[test]
fn threads_share_memory_and_wait_on_futexes() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "thr",
        r#"
#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long total;
static void *work(void *arg) {
    long id = (long)arg, s = 0;
    for (long i = 0; i < 2000000; i++) s += i % (id + 3);
    for (int k = 0; k < 1000; k++) { pthread_mutex_lock(&mu); total += 1; pthread_mutex_unlock(&mu); }
    pthread_mutex_lock(&mu); total += s; pthread_mutex_unlock(&mu);
    return (void *)(s & 0xff);
}
int main(void) {
    pthread_t t[4]; long r = 0;
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, work, (void *)i);
    for (int i = 0; i < 4; i++) { void *v; pthread_join(t[i], &v); r += (long)v; }
    printf("total %ld r %ld\n", total, r);
    return 0;
}"#,
        &["-pthread"],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert!(r.out.switches >= 4, "the threads ran");
    assert_clean(&m, before, "pthreads");
    let py = "import threading\n\
              res = [0] * 4\n\
              def work(i): res[i] = sum(range(i * 300000, (i + 1) * 300000))\n\
              ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]\n\
              [t.start() for t in ts]; [t.join() for t in ts]\n\
              print(sum(res), res)\n";
    let before = m.settle();
    same_as_native(&m, &vm, &["python3", "-c", py]);
    assert_clean(&m, before, "python threads");
}

/// Copy-on-write seen from a real program: it writes 64 MiB, forks, and the child rewrites
/// half. The parent's bytes are intact; `/proc/self/smaps` read on mmkit by each shows the
/// host kernel's split (child: 32 MiB shared dirty, 32 MiB private dirty; parent after the
/// child is gone: all private), and the child's minor faults are the host's within 10%.
#[test]
fn copy_on_write_after_fork_matches_the_host() {
    use std::os::unix::process::CommandExt;
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "cow",
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#define SZ (64UL << 20)
static void smaps(const char *who, unsigned char *p) {
    char line[256], want[64];
    snprintf(want, sizeof want, "%lx-", (unsigned long)p);
    FILE *f = fopen("/proc/self/smaps", "r");
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, want, strlen(want)) == 0) { in = 1; continue; }
        if (in && (line[0] >= '0' && line[0] <= '9' || line[0] >= 'a' && line[0] <= 'f') && strchr(line, '-') && strchr(line, ':') == 0) break;
        if (in && (!strncmp(line, "Rss:", 4) || !strncmp(line, "Shared_Dirty:", 13) || !strncmp(line, "Private_Dirty:", 14) || !strncmp(line, "Anonymous:", 10)))
            printf("%s %s", who, line);
        if (in && !strncmp(line, "VmFlags", 7)) break;
    }
    fclose(f);
}
int main(void) {
    unsigned char *p = mmap(0, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(p, SZ, MADV_NOHUGEPAGE);
    memset(p, 0x5a, SZ);
    pid_t c = fork();
    if (c == 0) {
        struct rusage a, b;
        getrusage(RUSAGE_SELF, &a);
        memset(p, 0xc3, SZ / 2);
        getrusage(RUSAGE_SELF, &b);
        smaps("child", p);
        printf("child minflt %ld\n", b.ru_minflt - a.ru_minflt);
        fflush(stdout);
        _exit(0);
    }
    int st; waitpid(c, &st, 0);
    for (size_t i = 0; i < SZ; i++) if (p[i] != 0x5a) { printf("parent byte %zu changed\n", i); return 1; }
    smaps("parent", p);
    return 0;
}
"#,
        &[],
    );
    let before = m.settle();
    let ours = run(&m, &vm, &[prog.to_str().unwrap()], RunOptions::default());
    assert_eq!(ours.out.status, Status::Exited(0));
    assert_clean(&m, before, "cow");
    // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
    let native = unsafe {
        std::process::Command::new(&prog).pre_exec(|| {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        })
    }
    .output()
    .unwrap();
    let (ours, native) = (
        String::from_utf8_lossy(&ours.stdout).into_owned(),
        String::from_utf8_lossy(&native.stdout).into_owned(),
    );
    let faults = |s: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix("child minflt "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the child's fault count")
    };
    let rest = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("child minflt"))
            .map(String::from)
            .collect()
    };
    assert_eq!(rest(&ours), rest(&native), "smaps split and bytes");
    assert!(
        rest(&ours)
            .iter()
            .any(|l| l.contains("Shared_Dirty:      32768 kB")),
        "{ours}"
    );
    let (a, b) = (faults(&ours), faults(&native));
    assert!(within(a, b, 10), "child minor faults: ours {a}, host {b}");
}

/// Timers: `setitimer(ITIMER_REAL)` wakes a `pause` with a SIGALRM handler (`EINTR`, not
/// restarted), an interval timer interrupts a busy loop six times (the tick preempts the
/// guest), and `alarm` reports what the previous alarm had left — as natively.
#[test]
fn alarm_signals_reach_their_handler() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "alrm",
        r#"#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <errno.h>
static volatile int ticks;
static void on_alrm(int s) { ticks++; }
int main(void) {
    signal(SIGALRM, on_alrm);
    struct itimerval it = {{0, 0}, {0, 50000}};
    setitimer(ITIMER_REAL, &it, 0);
    int r = pause();
    printf("pause %d errno %s ticks %d\n", r, strerror(errno), ticks);
    struct itimerval iv = {{0, 10000}, {0, 10000}};
    setitimer(ITIMER_REAL, &iv, 0);
    while (ticks < 6) ;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, 0);
    alarm(5);
    int enough = ticks >= 6;
    printf("busy loop saw six ticks: %d, alarm left %u\n", enough, alarm(0));
    return 0;
}
"#,
        &[],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.starts_with("pause -1 errno Interrupted system call ticks 1\n"),
        "{out}"
    );
    assert_clean(&m, before, "alarm");
}

/// Bad arguments to the process calls get Linux's errors, never a VMM panic: `kill` and
/// `wait4` of `INT_MIN` (ESRCH), `wait4` without children (ECHILD), unknown `clone` flags,
/// an unaligned futex (EINVAL), bad pointers to `futex`, `execve`, its `argv` and `pipe2`
/// (EFAULT), unknown `pipe2` flags and timers (EINVAL), and `rt_sigreturn` without a frame
/// (SIGSEGV, 139) — line for line as natively.
#[test]
fn bad_process_calls_fail_as_on_linux() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "badsys",
        r#"#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <limits.h>
#include <errno.h>
#include <string.h>
int main(void) {
    long r; setvbuf(stdout, 0, _IONBF, 0);
    r = syscall(SYS_kill, INT_MIN, 0); printf("kill(INT_MIN) %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_wait4, INT_MIN, 0, 0, 0); printf("wait4(INT_MIN) %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_wait4, -1, (void *)1, 0, 0); printf("wait4 no child %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_clone, 0x12345678UL, 0, 0, 0, 0); printf("clone bad %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_futex, (void *)3, 0, 0, 0, 0, 0); printf("futex unaligned %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_futex, (void *)0x1000, 0, 0, 0, 0, 0); printf("futex bad addr %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_execve, (void *)1, 0, 0); printf("execve bad path %ld %d\n", r, r < 0 ? errno : 0);
    char *argv[] = {"x", (char *)8, 0};
    r = syscall(SYS_execve, "/bin/true", argv, 0); printf("execve bad argv %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_pipe2, (void *)8, 0); printf("pipe2 bad %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_pipe2, 0, 0x12345); printf("pipe2 flags %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_setitimer, 5, 0, 0); printf("setitimer which %ld %d\n", r, r < 0 ? errno : 0);
    r = syscall(SYS_rt_sigreturn); printf("unreached %ld\n", r);
    return 0;
}
"#,
        &[],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert_eq!(r.out.status.code(), 139);
    assert!(String::from_utf8_lossy(&r.stdout).contains("setitimer which -1 22"));
    assert_clean(&m, before, "bad process calls");
}

/// A machine of `cpus` CPUs (so `cpus` vCPUs) and its VM, or `None` without /dev/kvm.
fn machine_with_cpus(cpus: usize) -> Option<(mmkit_sim::Machine, mmkit_sim::kvm::Vm)> {
    if !common::kvm::kvm_usable_or_skip() {
        return None;
    }
    let spec = mmkit_sim::MachineSpec {
        cpus,
        ..Default::default()
    };
    let m = mmkit_sim::Machine::boot(&spec).unwrap();
    let vm = mmkit_sim::kvm::Vm::new(&m).unwrap();
    Some((m, vm))
}

/// The threads of process `pid` that vCPU `c` ran user code of.
fn threads_on(out: &mmkit_sim::kvm::Outcome, c: usize, pid: u32) -> Vec<u32> {
    out.cpus[c]
        .tasks
        .keys()
        .filter(|(p, _)| *p == pid)
        .map(|&(_, t)| t)
        .collect()
}

/// Four pthreads each summing a range on the default machine's two vCPUs: the native
/// result, and both vCPUs ran user code of the program (the VMM's per-vCPU account of
/// KVM_RUN time by thread); `/proc/self/stat`'s `processor` is a vCPU of the machine.
#[test]
fn pthreads_run_on_both_vcpus() {
    let Some((m, vm)) = machine(None) else { return };
    assert_eq!(m.kernel.nr_cpus(), 2, "the default machine has 2 CPUs");
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "sum4",
        r#"
#include <pthread.h>
#include <stdio.h>
#define N 4
static unsigned long long part[N];
static void *run(void *a) {
    long i = (long)a;
    unsigned long long s = 0, lo = i * 20000000ULL, hi = lo + 20000000ULL;
    for (unsigned long long x = lo; x < hi; x++) s += x * x % 7;
    part[i] = s;
    return 0;
}
int main(void) {
    pthread_t t[N];
    for (long i = 0; i < N; i++) pthread_create(&t[i], 0, run, (void *)i);
    unsigned long long s = 0;
    for (int i = 0; i < N; i++) { pthread_join(t[i], 0); s += part[i]; }
    FILE *f = fopen("/proc/self/stat", "r");
    int cpu = -1;
    if (f) {
        char buf[1024]; size_t n = fread(buf, 1, sizeof buf - 1, f); buf[n] = 0;
        char *p = buf; for (int field = 1; field < 39 && p; field++) { p = __builtin_strchr(p, ' '); if (p) p++; }
        if (p) sscanf(p, "%d", &cpu);
        fclose(f);
    }
    printf("%llu %s\n", s, cpu == 0 || cpu == 1 ? "cpu-ok" : "cpu-bad");
    return 0;
}"#,
        &["-pthread"],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    assert_eq!(r.out.cpus.len(), 2);
    for c in 0..2 {
        let t = threads_on(&r.out, c, r.out.pid);
        assert!(
            !t.is_empty(),
            "vCPU {c} ran no thread of the program: {:?}",
            r.out.cpus
        );
    }
    assert_clean(&m, before, "pthreads on 2 vCPUs");
}

/// Two threads that can only finish if they run at the same time: they take turns
/// through a shared counter 1000 times, spinning (no system call, no fault) until the other
/// has moved it. Without time slices (`no_preempt`) a thread leaves its vCPU only when it
/// calls in, so on one vCPU the spinner never lets the other run and the run ends at its
/// timeout (the negative control); on two vCPUs both spin at once and it completes — the
/// proof that two vCPUs ran user code of one process concurrently, with no wall-clock
/// threshold (the timeout only bounds the control).
#[test]
fn two_vcpus_run_threads_of_one_process_at_once() {
    let Some((m2, vm2)) = machine_with_cpus(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "pingpong",
        r#"
#include <pthread.h>
#include <stdio.h>
static volatile long turn;
static void *other(void *a) {
    for (long i = 1; i < 2000; i += 2) { while (turn != i) ; turn = i + 1; }
    return a;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, other, 0);
    for (long i = 0; i < 2000; i += 2) { while (turn != i) ; turn = i + 1; }
    pthread_join(t, 0);
    printf("%ld\n", turn);
    return 0;
}"#,
        &["-pthread"],
    );
    let path = prog.to_str().unwrap();
    let opts = |secs| RunOptions {
        no_preempt: true,
        timeout: Some(std::time::Duration::from_secs(secs)),
        ..Default::default()
    };
    let before = m2.settle();
    let r = run(&m2, &vm2, &[path], opts(120));
    assert_eq!(r.out.status, Status::Exited(0), "{:?}", r.out.log);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "2000\n");
    for c in 0..2 {
        assert!(
            !threads_on(&r.out, c, r.out.pid).is_empty(),
            "vCPU {c} ran no thread of the program"
        );
    }
    assert_clean(&m2, before, "ping-pong on 2 vCPUs");
    drop((vm2, m2));
    let Some((m1, vm1)) = machine_with_cpus(1) else {
        return;
    };
    let before = m1.settle();
    let r = run(&m1, &vm1, &[path], opts(3));
    assert_eq!(
        r.out.status,
        Status::Signaled(9),
        "one vCPU without time slices cannot finish"
    );
    assert!(
        r.out
            .log
            .iter()
            .any(|l| l.contains("killed after the --timeout")),
        "{:?}",
        r.out.log
    );
    assert_eq!(r.out.cpus.len(), 1);
    assert_clean(&m1, before, "ping-pong on 1 vCPU");
}

/// A TLB shootdown seen by a program: one thread spins reading a page while the other
/// replaces it (`mmap(MAP_FIXED)` over it — one call, so the reader never finds a hole —
/// then other bytes written). The reader sees the new bytes — no vCPU keeps the old
/// translation — and the unmap's flush kicked the reader's vCPU out of guest mode (it was
/// running that address space).
#[test]
fn munmap_on_one_vcpu_shoots_down_the_other() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "shootdown",
        r#"
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
static volatile int started;
static volatile int *page;
static void *reader(void *a) {
    long spins = 0;
    started = 1;
    while (*page != 2) spins++;
    return (void *)spins;
}
int main(void) {
    int *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p[0] = 1;
    page = p;
    pthread_t t;
    pthread_create(&t, 0, reader, 0);
    while (!started) ;
    for (volatile long i = 0; i < 20000000; i++) ;
    int *q = mmap(p, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    q[0] = 2;
    pthread_join(t, 0);
    printf("%s\n", q == p ? "replaced" : "moved");
    return 0;
}"#,
        &["-pthread"],
    );
    let before = m.settle();
    let opts = RunOptions {
        no_preempt: true,
        timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    let r = run(&m, &vm, &[prog.to_str().unwrap()], opts);
    assert_eq!(r.out.status, Status::Exited(0), "{:?}", r.out.log);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "replaced\n");
    let ipis: u64 = r.out.cpus.iter().map(|c| c.tlb_ipis).sum();
    assert!(ipis > 0, "no shootdown kicked the reader: {:?}", r.out.cpus);
    assert_clean(&m, before, "shootdown");
}

/// `CLONE_VM` without `CLONE_THREAD`: a child made by `clone(CLONE_VM | SIGCHLD)` on a stack
/// of its own writes the parent's globals and heap and maps memory the parent then reads
/// (one address space, two processes); and a `vfork` from a process with a second thread
/// leaves that thread running in the shared address space — the vfork child sees it count
/// on while the parent waits (before, the address space moved to the child and the thread
/// died at its next exit). Output and status equal the native run; every page comes back.
#[test]
fn clone_vm_children_share_the_address_space_and_vfork_leaves_threads_running() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "clonevm",
        r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
static char global[32];
static char *heap;
static char *mapped;
static volatile long ticks, stop;
static int child(void *arg) {
    strcpy(global, "global from child");
    strcpy(heap, (const char *)arg);
    mapped = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) return 1;
    for (int i = 0; i < (1 << 20); i += 4096) mapped[i] = (char)(i >> 12);
    return getpid() != getppid() ? 7 : 2;
}
static void *counter(void *a) {
    while (!stop) ticks++;
    return a;
}
int main(void) {
    heap = malloc(64);
    char *stack = malloc(1 << 16);
    int pid = clone(child, stack + (1 << 16), CLONE_VM | SIGCHLD, "heap from child");
    if (pid < 0) { perror("clone"); return 1; }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
    long sum = 0;
    for (int i = 0; i < (1 << 20); i += 4096) sum += (unsigned char)mapped[i];
    printf("%s | %s | status %d | sum %ld\n", global, heap, WEXITSTATUS(st), sum);
    pthread_t t;
    pthread_create(&t, 0, counter, 0);
    while (ticks < 1000) ;
    long t0 = ticks, seen = 0;
    int v = vfork();
    if (v == 0) {
        for (long i = 0; i < 4000000000L && ticks < t0 + 10000000; i++) ;
        _exit(ticks >= t0 + 10000000 ? 0 : 1);
    }
    waitpid(v, &st, 0);
    seen = ticks - t0;
    stop = 1;
    pthread_join(t, 0);
    printf("vfork child saw the thread count on: %s, thread alive: %s\n",
           WEXITSTATUS(st) == 0 ? "yes" : "no", seen >= 10000000 ? "yes" : "no");
    return 0;
}"#,
        &["-pthread"],
    );
    let before = m.settle();
    let r = same_as_native(&m, &vm, &[prog.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.contains("global from child | heap from child | status 7 | sum 32640\n"),
        "{out}"
    );
    assert!(
        out.contains("saw the thread count on: yes, thread alive: yes"),
        "{out}"
    );
    assert_clean(&m, before, "clone(CLONE_VM) and vfork with a thread");
}

/// Fault counts of whole process trees — a `bash` pipeline, `gcc` with the `cc1`, `as`,
/// `collect2` and `ld` it spawns, and a C program whose `vfork` child writes 64 pages of
/// its parent's memory — per process (each from its fork to its exit, the first from its
/// exec; a `vfork` child's faults in the borrowed address space are its own) and summed,
/// with warm page caches on both sides: each within 10% of the host kernel's, seen by
/// ptrace following every process of the native run. (Before fork left to faults the
/// entries of mappings without anonymous pages, the pipeline's children took 19–20 faults
/// fewer than the host's: 78 against 97 for `seq`.)
#[test]
fn fault_counts_of_process_trees_match_the_host() {
    use mmkit_sim::exec_cmd::{resolve, run_native_tree};
    const TEST: &str = "fault_counts_of_process_trees_match_the_host";
    let Some((m, vm)) = machine(None) else { return };
    if let Err(why) = &mmkit_sim::hostview::host_caps().ptrace {
        mmkit_sim::hostview::skip(TEST, why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    )
    .unwrap();
    let exe = dir.path().join("hello");
    let vforker = cc(
        dir.path(),
        "vforker",
        r#"#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    volatile char *p = mmap(0, 64 << 12, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pid_t c = vfork();
    if (c == 0) {
        for (int i = 0; i < 64; i++) p[i << 12] = (char)i;
        _exit(0);
    }
    int st; waitpid(c, &st, 0);
    int sum = 0;
    for (int i = 0; i < 64; i++) sum += p[i << 12];
    printf("%d\n", sum);
    return 0;
}"#,
        &[],
    );
    let cases: [&[&str]; 3] = [
        &["bash", "-c", "seq 1 100000 | sort -rn | head -5"],
        &["gcc", src.to_str().unwrap(), "-o", exe.to_str().unwrap()],
        &[vforker.to_str().unwrap()],
    ];
    // The same executable on both sides, however it was named.
    let canon = |p: &str| {
        std::fs::canonicalize(p)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| p.to_string())
    };
    for argv in cases {
        let Ok(path) = resolve(argv[0]) else {
            mmkit_sim::hostview::skip(TEST, &format!("no {} on this host", argv[0]));
            continue;
        };
        // Fault-around maps what the page cache holds: warm ours as the host's is warm.
        run(&m, &vm, argv, RunOptions::default());
        let before = m.settle();
        let ours = run(&m, &vm, argv, RunOptions::default());
        assert_eq!(
            ours.out.status,
            Status::Exited(0),
            "{argv:?}: {:?}",
            ours.out.log
        );
        assert_clean(&m, before, &argv.join(" "));
        let args: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let host = run_native_tree(&path, &args, &common::kvm::env()).unwrap();
        assert_eq!(host.code, 0, "{argv:?}: the native run's status");
        assert_eq!(ours.stdout, host.stdout, "{argv:?}: stdout");
        eprintln!("{argv:?}: minor+major faults, mmkit against the host (pid, program)");
        let mut left: Vec<_> = host.processes.iter().collect();
        for o in &ours.out.processes {
            let exe = canon(&o.exe);
            let i = left
                .iter()
                .position(|h| canon(&h.exe) == exe)
                .unwrap_or_else(|| panic!("{argv:?}: {exe} ran here, not on the host"));
            let h = left.remove(i);
            let (a, b) = (o.min_flt + o.maj_flt, h.min_flt + h.maj_flt);
            eprintln!(
                "  {:>6} {:>6}   {} / {} {exe}  (ours by kind: anon {}, zero {}, file {}, cow {}, swap {})",
                a, b, o.pid, h.pid, o.by_kind[0], o.by_kind[1], o.by_kind[2], o.by_kind[3], o.by_kind[4]
            );
            assert!(
                within(a, b, 10),
                "{argv:?}: {exe} took {a} faults here, {b} on the host"
            );
        }
        assert!(left.is_empty(), "{argv:?}: only on the host: {left:?}");
        let total = |v: &mut dyn Iterator<Item = u64>| v.sum::<u64>();
        let a = total(&mut ours.out.processes.iter().map(|p| p.min_flt + p.maj_flt));
        let b = total(&mut host.processes.iter().map(|p| p.min_flt + p.maj_flt));
        eprintln!("  {a:>6} {b:>6}   in all");
        assert!(
            within(a, b, 10),
            "{argv:?}: {a} faults here, {b} on the host"
        );
    }
}

/// A shared futex word in a THP: the waiter sleeps while a PMD maps the word huge, the
/// other thread splits that PMD (`MADV_DONTNEED` of another 4 KiB of it) and wakes it. The
/// key of a futex in anonymous memory is the address space and the address, as in Linux,
/// so the wake reaches the waiter (keyed by the frame, it was keyed one way while huge and
/// another after the split, and the waiter slept to its timeout; glibc's `pthread_join`
/// hung for ever where the stack's top was a THP). Found by a reviewer.
#[test]
fn a_futex_wake_after_its_thp_is_split_reaches_the_waiter() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "futex_thp",
        FUTEX_THP_C,
        &["-static", "-pthread"],
    );
    let before = m.settle();
    let r = run(&m, &vm, &[prog.to_str().unwrap()], RunOptions::default());
    assert_eq!(r.out.status, Status::Exited(0), "{:?}", r.out.log);
    let out = String::from_utf8_lossy(&r.stdout);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["wait woken", "woke 1"], "{out}");
    assert_clean(&m, before, "a futex in a THP");
}

const FUTEX_THP_C: &str = r#"/* A shared futex word in a THP: the waiter sleeps while the PMD maps it huge; the waker
 * splits the PMD (MADV_DONTNEED of another 4 KiB of the THP) and then wakes. Linux keys a
 * futex in anonymous memory by (mm, address): the waiter wakes. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#define H (2ul << 20)
static volatile uint32_t *w;
static unsigned char *r;
static void *waker(void *a) {
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, 0);
    if (a) madvise(r + H / 2, 4096, MADV_DONTNEED); /* split the PMD */
    *w = 1;
    long n = syscall(SYS_futex, w, FUTEX_WAKE, 1, 0, 0, 0);
    printf("woke %ld\n", n);
    return 0;
}
int main(int argc, char **argv) {
    int split = argc < 2 || strcmp(argv[1], "nosplit");
    unsigned char *raw = mmap(0, 2 * H, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r = (unsigned char *)(((uintptr_t)raw + H - 1) & ~(H - 1));
    if (madvise(r, H, MADV_HUGEPAGE)) return 2;
    memset(r, 0, H);
    w = (volatile uint32_t *)(r + 0x1000);
    pthread_t t;
    pthread_create(&t, 0, waker, (void *)(uintptr_t)split);
    struct timespec to = {3, 0};
    long rc = syscall(SYS_futex, w, FUTEX_WAIT, 0, &to, 0, 0);
    printf("wait %s\n", rc == 0 ? "woken" : strerror(errno));
    pthread_join(t, 0);
    return 0;
}
"#;

/// `clone`/`clone3` with flag combinations Linux refuses (`CLONE_SIGHAND` without
/// `CLONE_VM`, `CLONE_THREAD` without `CLONE_SIGHAND`, `CLONE_NEWNS|CLONE_FS`, …) fail with
/// the host's `EINVAL`, not with this machine's "not yet" (`ENOSYS`): every line the host
/// answers `EINVAL` is the same on mmkit (the program tries 29 combinations; found by a
/// reviewer).
#[test]
fn invalid_clone_flags_are_einval_as_on_the_host() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "clone_flags",
        include_str!("fixtures/clone_flags.c"),
        &["-static"],
    );
    let host = std::process::Command::new(&prog).output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout).into_owned();
    let before = m.settle();
    let ours = run(&m, &vm, &[prog.to_str().unwrap()], RunOptions::default());
    let ours = String::from_utf8_lossy(&ours.stdout).into_owned();
    assert_eq!(host.lines().count(), ours.lines().count(), "{ours}");
    let wrong: Vec<String> = host
        .lines()
        .zip(ours.lines())
        .filter(|(h, o)| h.ends_with("err EINVAL") && h != o)
        .map(|(h, o)| format!("host: {h}\nours: {o}"))
        .collect();
    assert!(
        host.lines().any(|h| h.ends_with("err EINVAL")),
        "the host refused nothing: {host}"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_clean(&m, before, "clone flags");
}

/// A `CLONE_VM` child's `/proc/self/oom_score` and `statm` are its address space's — the
/// parent's, 64 MiB of it written — as on the host kernel (it said 0: the score looked only
/// at an address space of the task's own; found by a reviewer). Output equals the native
/// run's.
#[test]
fn a_clone_vm_childs_oom_score_and_statm_are_its_address_spaces() {
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "clone_vm_proc",
        include_str!("fixtures/clone_vm_proc.c"),
        &["-static"],
    );
    let before = m.settle();
    let r = run(&m, &vm, &[prog.to_str().unwrap()], RunOptions::default());
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("oom_score same: 1"), "{out}");
    assert!(out.contains("statm size same: 1"), "{out}");
    let score: u64 = out
        .split("same: 1 (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        score > 0,
        "64 MiB of anonymous memory scores above 0: {out}"
    );
    assert_clean(&m, before, "a CLONE_VM child's /proc");
}
