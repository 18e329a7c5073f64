//! Real programs under memory pressure on mmkit under /dev/kvm (issue 13, "Pressure"): a
//! python3 program that fills 320 MiB on a 160 MiB machine with 512 MiB of swap prints what
//! it prints natively, with kswapd (on CPU 1) and swap doing the work, as `/proc/vmstat`
//! read on mmkit shows; without swap the same program is OOM-killed with Linux's report
//! and status 137, and the machine goes on running programs. After every run every page
//! and every swap slot is back.
//!
//! Where /dev/kvm cannot be used, each test says so and returns; with `MMKIT_REQUIRE_KVM`
//! set that is a failure instead.
//!
//! Cost, measured on the nested `kvm_pvm` hypervisor this was built on: each guest fault is
//! one VM exit (~200-300 µs with reclaim and swap I/O behind it), and the program takes
//! ~82k anonymous faults to fill its 320 MiB and ~82k swap-in faults to read it back, so the
//! swap test runs for about a minute; the OOM test about 10 s.

mod common;
use mmkit_sim::exec::ExecSpec;
use mmkit_sim::kvm::process::Status;
use mmkit_sim::kvm::{Outcome, RunOptions, Vm};
use mmkit_sim::pressure::{Report, SwapFile};
use mmkit_sim::pressure_exec::run_watched;
use mmkit_sim::Machine;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

/// 320 chunks of 1 MiB (as many small mappings, which Linux's heuristic overcommit lets
/// through one by one even where one 320 MiB mapping would be refused), each filled with a
/// pattern, then a CRC-32 over all of them: the README's program.
const FILL_320M: &str = include_str!("../../../docs/fill320.py");

const PYTHON: &str = "/usr/bin/python3";

/// A 160 MiB machine with 2 CPUs (the program on 0, kswapd on 1) and its VM, or `None`
/// (with the reason printed) where /dev/kvm or python3 cannot be used.
fn machine() -> Option<(Machine, Vm)> {
    if !common::kvm::kvm_usable_or_skip() {
        return None;
    }
    if !Path::new(PYTHON).exists() {
        eprintln!("SKIPPED: no {PYTHON} here");
        return None;
    }
    let m = common::boot_mem(160, 2, "");
    let vm = Vm::new(&m).unwrap();
    Some((m, vm))
}

fn env() -> Vec<String> {
    vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".into(),
        "LANG=C".into(),
        "HOME=/nonexistent".into(),
    ]
}

/// Run `argv` on `m` with kswapd on CPU 1, watched, its standard output captured.
fn run(m: &Machine, vm: &Vm, argv: &[&str]) -> (Outcome, Report, Vec<u8>) {
    let spec = ExecSpec {
        path: argv[0],
        argv: argv.iter().map(|s| s.to_string()).collect(),
        envp: env(),
        no_aslr: true,
    };
    let mut f = tempfile::tempfile().unwrap();
    let opts = RunOptions {
        stdout: Some(Arc::new(f.try_clone().unwrap().into())),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (out, report) = run_watched(m, vm, &spec, &opts).unwrap();
    eprintln!(
        "{}: status {}, {:.1} s wall, {} guest faults, {} minor + {} major, kswapd ran {} times",
        argv.join(" ").chars().take(40).collect::<String>(),
        out.status.code(),
        t0.elapsed().as_secs_f64(),
        out.user_faults,
        out.min_flt,
        out.maj_flt,
        report.kswapd_runs.len()
    );
    let mut stdout = Vec::new();
    f.rewind().unwrap();
    f.read_to_end(&mut stdout).unwrap();
    (out, report, stdout)
}

/// What the host prints for the same program.
fn native(argv: &[&str]) -> Vec<u8> {
    let o = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env().iter().filter_map(|e| e.split_once('=')))
        .output()
        .unwrap();
    assert!(o.status.success(), "the native run failed: {o:?}");
    o.stdout
}

/// `/proc/vmstat` as a program running on mmkit reads it (`cat`), as name → value.
fn vmstat_on_mmkit(m: &Machine, vm: &Vm) -> std::collections::HashMap<String, u64> {
    let (out, _, text) = run(m, vm, &["/bin/cat", "/proc/vmstat"]);
    assert_eq!(out.status, Status::Exited(0));
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(' ')?;
            Some((n.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Every checker passes, every page is back (`before` free after settling) and no swap
/// slot is in use.
fn assert_clean(m: &Machine, before: u64, what: &str) {
    let k = &m.kernel;
    common::kvm::assert_clean(m, before, what);
    let (total, free, cached) = k.swap_totals();
    assert_eq!(
        (free, cached),
        (total, 0),
        "{what}: swap slots still in use"
    );
}

/// The 320 MiB program on a 160 MiB machine with 512 MiB of swap prints what it prints
/// natively; swap and kswapd did it (`pswpout`, `pgsteal_kswapd` in `/proc/vmstat` read on
/// mmkit); free memory was held at the watermarks; every page and slot comes back.
#[test]
fn python_larger_than_ram_completes_through_swap() {
    let Some((m, vm)) = machine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let before = m.settle();
    let swap = SwapFile::on(&m, 512 << 20, dir.path()).unwrap();
    let argv = [PYTHON, "-c", FILL_320M];
    let (out, report, stdout) = run(&m, &vm, &argv);
    assert_eq!(out.status, Status::Exited(0), "log: {:?}", out.log);
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&native(&argv))
    );
    // More than RAM went through: 320 MiB of anonymous faults, much of it read back from
    // swap.
    assert!(out.faults_by_kind[0] >= 80_000, "{:?}", out.faults_by_kind);
    assert!(
        out.faults_by_kind[4] > 0,
        "swap-ins: {:?}",
        out.faults_by_kind
    );
    assert!(!report.kswapd_runs.is_empty(), "kswapd ran");
    let high = report.samples[0].wmarks[2];
    let low_point = report.samples.iter().map(|s| s.free).min().unwrap();
    assert!(
        low_point < high * 2,
        "free memory came down to the watermarks"
    );
    assert!(report.samples.iter().any(|s| s.swap_used > 0));
    assert_clean(&m, before, "python3 through swap");
    let vmstat = vmstat_on_mmkit(&m, &vm);
    eprintln!(
        "/proc/vmstat on mmkit: pswpout {} pswpin {} pgsteal_kswapd {} pgsteal_direct {} allocstall_normal {}",
        vmstat["pswpout"],
        vmstat["pswpin"],
        vmstat["pgsteal_kswapd"],
        vmstat["pgsteal_direct"],
        vmstat["allocstall_normal"]
    );
    assert!(vmstat["pswpout"] > 0, "pswpout");
    assert!(vmstat["pgsteal_kswapd"] > 0, "pgsteal_kswapd");
    assert_eq!(vmstat["oom_kill"], 0);
    assert_clean(&m, before, "cat /proc/vmstat");
    swap.off(&m).unwrap();
    assert_clean(&m, before, "swapoff");
}

/// Without swap the same program runs out of memory: the OOM killer picks it (the
/// largest task), prints Linux's report, and it ends with SIGKILL (137); the machine gives
/// every page back and runs the next program.
#[test]
fn python_larger_than_ram_without_swap_is_oom_killed_and_the_machine_goes_on() {
    let Some((m, vm)) = machine() else { return };
    let before = m.settle();
    let (out, _, stdout) = run(&m, &vm, &[PYTHON, "-c", FILL_320M]);
    assert_eq!(out.status, Status::Signaled(9), "log: {:?}", out.log);
    assert_eq!(out.status.code(), 137);
    assert!(stdout.is_empty());
    let log = out.log.join("\n");
    for line in [
        "python3 invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=0, oom_score_adj=0",
        "Mem-Info:",
        "Tasks state (memory values in pages):",
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=python3,pid=",
        "Out of memory: Killed process ",
    ] {
        assert!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    let killed = out
        .log
        .iter()
        .find(|l| l.contains("Out of memory: Killed process"))
        .unwrap();
    let anon_kb: u64 = killed
        .split("anon-rss:")
        .nth(1)
        .and_then(|s| s.split("kB").next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        anon_kb > 64 << 10,
        "the victim held most of RAM in anonymous memory: {killed}"
    );
    // What the run reports of the killed process is what it was when it was killed: its
    // faults (each page it filled took one) and its peak, not an empty task.
    assert!(
        out.min_flt + out.maj_flt >= anon_kb / 4,
        "faults {} + {} for {anon_kb} kB of anonymous memory",
        out.min_flt,
        out.maj_flt
    );
    assert!(
        out.vm_hwm_kb >= anon_kb,
        "VmHWM {} kB below the anon-rss {anon_kb} kB the report printed",
        out.vm_hwm_kb
    );
    assert_clean(&m, before, "the OOM-killed python3");
    // The machine goes on: a program runs and prints what it prints natively.
    let argv = [PYTHON, "-c", "print(sum(range(10**6)))"];
    let (out, _, stdout) = run(&m, &vm, &argv);
    assert_eq!(out.status, Status::Exited(0));
    assert_eq!(stdout, native(&argv));
    assert_clean(&m, before, "python3 after the OOM kill");
    let vmstat = vmstat_on_mmkit(&m, &vm);
    assert_eq!(vmstat["oom_kill"], 1);
    assert_eq!(vmstat["pswpout"], 0);
    assert_clean(&m, before, "cat /proc/vmstat");
}

fn mmkit() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mmkit"));
    c.env("RUST_BACKTRACE", "1");
    c
}

/// Bad `--swap` values and options that cannot go together are one-line errors naming the
/// problem, before any work (no KVM needed to see them).
#[test]
fn bad_swap_and_chart_options_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("c.svg");
    let chart = chart.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--swap", "12Q"],
            "--swap 12Q: not a size like 512M or 1G",
        ),
        (vec!["--swap", "-1"], "--swap -1: not a size"),
        (vec!["--swap", "4K"], "--swap 4K: too small"),
        (vec!["--swap", "17T"], "--swap 17T: too large"),
        (
            vec!["--swap", "64M", "--maps"],
            "--swap is for a run; --maps does not run the program",
        ),
        (
            vec!["--chart", chart, "--smaps"],
            "--chart draws a run; --smaps does not run the program",
        ),
        (
            vec!["--swap", "64M", "--cpus", "1"],
            "--swap and --chart need --cpus 2 or more",
        ),
        (vec!["--chart", "/"], "--chart /: is a folder"),
    ] {
        let o = mmkit()
            .arg("exec")
            .args(&args)
            .arg("/bin/true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.starts_with("mmkit: error: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    assert!(
        !Path::new(chart).exists(),
        "no chart file made for a refused run"
    );
}

/// `mmkit exec --mem --swap --chart`: the program runs, the chart is drawn with its parts,
/// and the swap file's private directory is gone afterwards.
#[test]
fn exec_with_swap_draws_the_chart_and_leaves_no_swap_file() {
    if machine().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let chart = tmp.path().join("run.svg");
    let o = mmkit()
        .args([
            "exec", "--mem", "160M", "--swap", "64M", "--stat", "--chart",
        ])
        .arg(&chart)
        .args([PYTHON, "-c", "print(len(bytearray(8 << 20)))"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "8388608\n");
    assert!(err.contains("reclaim:     kswapd ran"), "{err}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    for part in [
        "<svg",
        "free",
        "min",
        "high",
        "kswapd runs",
        "anon LRU",
        "file LRU",
        "swap used",
        "python3 starts",
        "exit 0",
    ] {
        assert!(svg.contains(part), "no `{part}` in the chart");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &chart)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Ctrl-C (SIGINT) or SIGTERM while a program runs with `--swap` removes the swap file's
/// private directory and ends mmkit by that signal (SIGINT by way of the program, which
/// dies of it, as python sleeping does).
#[test]
fn interrupted_exec_with_swap_removes_its_swap_file() {
    if machine().is_none() {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = mmkit()
            .args(["exec", "--mem", "160M", "--swap", "64M", PYTHON, "-c"])
            .arg("import time; print('ready', flush=True); time.sleep(60)")
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let swap = loop {
            let found = std::fs::read_dir(tmp.path())
                .unwrap()
                .filter_map(|d| Some(d.ok()?.path().join("swap")))
                .find(|p| p.exists());
            if let Some(f) = found {
                break f;
            }
            assert!(child.try_wait().unwrap().is_none(), "mmkit ended early");
            assert!(start.elapsed().as_secs() < 60, "no swap file appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Let the program start (a Ctrl-C in python's own startup ends it with status 1,
        // natively too), then interrupt it.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "ready\n");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(sig),
            "ended by the signal: {status:?}"
        );
        assert!(!swap.exists());
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind after signal {sig}: {left:?}");
    }
}
