//! The `mmkit` command line as a user meets it: bad input is a one-line error naming the
//! problem (exit 1, no backtrace even with `RUST_BACKTRACE=1`), options a subcommand would
//! ignore are refused, output paths are checked before the work, temporary files live in a
//! private directory and go away on Ctrl-C, and `mmkit` alone takes `run`'s options.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mmkit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mmkit"));
    c.env("RUST_BACKTRACE", "1");
    c
}

fn run(args: &[&str]) -> Output {
    mmkit().args(args).output().expect("mmkit runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user error: exit status 1, one `mmkit: error:` line naming `needle`, no backtrace.
fn assert_user_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.starts_with("mmkit: error: "), "{e}");
    assert!(e.contains(needle), "`{needle}` not named: {e}");
    assert!(!e.contains("backtrace") && !e.contains("Stack"), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

#[test]
fn sizes_that_wrap_are_errors() {
    let o = run(&["boot", "--mem", "18446744073709551615"]);
    assert_user_error(&o, "too large");
    let o = run(&["boot", "--mem", "16E"]);
    assert_user_error(&o, "--mem 16E");
    let o = run(&["boot", "--mem", "12X"]);
    assert_user_error(&o, "--mem 12X");
    // Too big for this host or for the machine: an error, not the host running out of memory.
    for big in ["4T", "60T"] {
        let o = run(&["boot", "--mem", big]);
        assert_eq!(o.status.code(), Some(1), "{big}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
}

#[test]
fn bad_sysctl_values_are_refused_naming_them() {
    let o = run(&[
        "boot",
        "--mem",
        "128M",
        "--cmdline",
        "sysctl.vm.min_free_kbytes=999999999999",
    ]);
    assert_user_error(&o, "sysctl.vm.min_free_kbytes=999999999999");
    let long = "quiet ".repeat(400);
    let o = run(&["boot", "--mem", "128M", "--cmdline", &long]);
    assert_user_error(&o, "COMMAND_LINE_SIZE");
}

#[test]
fn mmkit_alone_is_run_with_runs_options() {
    let o = run(&[
        "--mem",
        "256M",
        "--ops",
        "3000",
        "--max-live",
        "64",
        "--cpus",
        "1",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("running 3000 random page operations on each of 1 CPUs"),
        "{out}"
    );
    assert!(
        out.contains("buddyinfo equals the post-boot buddyinfo"),
        "{out}"
    );
    // Every timing says what it includes.
    assert!(out.contains("per operation (allocate or free, filling and checking every byte"));
    // With a subcommand, run's options at the top level are not mixed in.
    let o = run(&["--ops", "5", "boot"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn run_refuses_options_its_scenario_ignores() {
    for (args, named) in [
        (vec!["run", "--scenario", "pressure", "--ops", "5"], "--ops"),
        (
            vec!["run", "--scenario", "pressure", "--seed", "2"],
            "--seed",
        ),
        (
            vec!["run", "--scenario", "pressure", "--max-live", "2"],
            "--max-live",
        ),
        (
            vec!["run", "--scenario", "pressure", "--cpus", "1"],
            "--cpus 2",
        ),
        (vec!["run", "--svg", "x.svg"], "--svg"),
        // The pressure scenario boots the machine the options describe (it used to ignore
        // --cmdline, --e820, --cpus and --nodes): their mistakes are its errors.
        (
            vec!["run", "--scenario", "pressure", "--cmdline", "nonsense=1"],
            "nonsense=1",
        ),
        (
            vec![
                "run",
                "--scenario",
                "pressure",
                "--e820",
                "/nonexistent/map",
            ],
            "/nonexistent/map",
        ),
        (
            vec![
                "run",
                "--scenario",
                "pressure",
                "--mem",
                "128M",
                "--nodes",
                "9",
            ],
            "numa=fake=9",
        ),
    ] {
        let o = run(&args);
        assert_user_error(&o, named);
    }
    assert!(
        !std::path::Path::new("pressure.svg").exists(),
        "a failed run leaves no empty chart behind"
    );
    // Out-of-range counts are the parser's errors (exit 2), naming the option.
    for bad in [
        ["run", "--ops", "0"],
        ["run", "--max-live", "0"],
        ["boot", "--nodes", "0"],
    ] {
        let o = run(&bad);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains(bad[1]), "{}", stderr(&o));
    }
    for sub in ["exec-sweep", "boot", "run"] {
        let o = run(&[sub, "--cpu", "+pku"]);
        assert_user_error(&o, "--cpu");
    }
    // exec shows it: smaps gets ProtectionKey: lines.
    let o = run(&[
        "exec",
        "--mem",
        "128M",
        "--cpu",
        "+pku",
        "--smaps",
        "/bin/true",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ProtectionKey:"));
}

#[test]
fn proc_dir_on_procfs_is_refused() {
    for d in ["/proc", "/proc/self", "/sys"] {
        let o = run(&["boot", "--mem", "128M", "--proc-dir", d]);
        assert_user_error(&o, d);
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("views");
    let o = run(&["boot", "--mem", "128M", "--proc-dir", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(d.join("meminfo"))
        .unwrap()
        .starts_with("MemTotal:"));
}

#[test]
fn svg_path_is_checked_before_the_run() {
    let t = Instant::now();
    let o = run(&[
        "run",
        "--scenario",
        "pressure",
        "--svg",
        "/nonexistent/dir/p.svg",
    ]);
    assert_user_error(&o, "/nonexistent/dir/p.svg");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "it failed before running"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "run",
        "--scenario",
        "pressure",
        "--svg",
        dir.path().to_str().unwrap(),
    ]);
    assert_user_error(&o, "is a folder");
}

#[test]
fn boot_shows_slabinfo_and_vmallocinfo() {
    let plain = stdout(&run(&["boot", "--mem", "128M"]));
    for v in [
        "/proc/meminfo",
        "/proc/slabinfo",
        "/proc/vmallocinfo",
        "/proc/zoneinfo",
    ] {
        assert!(plain.contains(&format!("==> {v} <==")), "{v} missing");
    }
    // slab_debug changes what slabinfo shows (red zones and tracking enlarge objects).
    let debug = stdout(&run(&["boot", "--mem", "128M", "--cmdline", "slab_debug"]));
    let slabinfo = |s: &str| {
        s.split("==> /proc/slabinfo <==")
            .nth(1)
            .unwrap()
            .split("==>")
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(slabinfo(&plain), slabinfo(&debug));
}

#[test]
fn run_at_128m_comes_back_to_the_boot_buddyinfo() {
    let o = run(&["run", "--mem", "128M", "--ops", "30000"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("buddyinfo equals the post-boot buddyinfo"));
}

#[test]
fn exec_of_what_cannot_be_executed_is_an_error_not_a_hang() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: creating a FIFO at a fresh path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o755) }, 0);
    let noexec = t.path().join("noexec");
    std::fs::copy("/bin/true", &noexec).unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    for p in [&fifo, &t.path().to_path_buf(), &noexec] {
        let start = Instant::now();
        let mut child = mmkit()
            .args(["exec", "--mem", "128M", p.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("exec of {} hangs", p.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert_user_error(&o, "EACCES");
    }
}

/// The files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        }
        out.push(p);
    }
    out
}

/// The pressure scenario's swap file is never at a fixed path: a symlink planted where the
/// old fixed path was is not followed, two runs at once do not share a file, and nothing is
/// left behind.
#[test]
fn pressure_swap_file_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("mmkit-pressure.swap")).unwrap();
    let spawn = || {
        mmkit()
            .args(["run", "--scenario", "pressure", "--mem", "96M", "--svg"])
            .arg(tmp.path().join(format!("p{}.svg", rand_suffix())))
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("every page correct"));
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let left: Vec<_> = files_under(tmp.path())
        .into_iter()
        .filter(|p| !p.ends_with("victim") && !p.ends_with("mmkit-pressure.swap"))
        .filter(|p| p.extension().is_none_or(|e| e != "svg"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Ctrl-C (SIGINT) or SIGTERM in the middle of the pressure scenario removes its swap file
/// and ends the process by that signal.
#[test]
fn interrupted_pressure_run_removes_its_swap_file() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = mmkit()
            .args(["run", "--scenario", "pressure", "--mem", "512M", "--svg"])
            .arg(tmp.path().join("p.svg"))
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the swap file to exist.
        let start = Instant::now();
        let swap = loop {
            let found = files_under(tmp.path())
                .into_iter()
                .find(|p| p.file_name().is_some_and(|n| n == "swap"));
            if let Some(f) = found {
                break f;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before making its swap file"
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no swap file appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(swap.exists());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(sig),
            "ended by the signal: {status:?}"
        );
        let left: Vec<_> = files_under(tmp.path())
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "svg"))
            .collect();
        assert!(left.is_empty(), "left behind after signal {sig}: {left:?}");
    }
}
