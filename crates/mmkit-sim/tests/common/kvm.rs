//! Helpers of the tests that run real programs under /dev/kvm.

use mmkit_sim::exec::ExecSpec;
use mmkit_sim::exec_cmd::resolve;
use mmkit_sim::kvm::{run_program, Outcome, RunOptions, Vm};
use mmkit_sim::{Machine, MachineSpec};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether /dev/kvm can be used; where it cannot, the reason is printed (a skip) — or,
/// with `MMKIT_REQUIRE_KVM` set (CI sets it when /dev/kvm exists), the test fails.
pub fn kvm_usable_or_skip() -> bool {
    if let Err(e) = mmkit_sim::kvm::kvm_usable() {
        assert!(
            std::env::var_os("MMKIT_REQUIRE_KVM").is_none(),
            "MMKIT_REQUIRE_KVM is set but /dev/kvm cannot be used: {e:#}"
        );
        eprintln!("SKIPPED: /dev/kvm cannot be used here: {e:#}");
        return false;
    }
    true
}

/// A machine and its VM, or `None` (with the reason printed) where /dev/kvm is unusable.
pub fn machine(mem: Option<u64>) -> Option<(Machine, Vm)> {
    if !kvm_usable_or_skip() {
        return None;
    }
    let spec = match mem {
        Some(mib) => MachineSpec {
            e820: mmkit::arch::x86_64::e820::E820Table::for_mem_size(mib << 20).unwrap(),
            ..Default::default()
        },
        None => MachineSpec::default(),
    };
    let m = Machine::boot(&spec).unwrap();
    let vm = Vm::new(&m).unwrap();
    Some((m, vm))
}

/// The environment both runs get.
pub fn env() -> Vec<String> {
    vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".into(),
        "LANG=C".into(),
        "HOME=/nonexistent".into(),
    ]
}

pub struct Ran {
    pub out: Outcome,
    pub stdout: Vec<u8>,
}

/// Run `argv` on `m` with ASLR off, its standard output captured.
pub fn run(m: &Machine, vm: &Vm, argv: &[&str], opts: RunOptions) -> Ran {
    let path = resolve(argv[0]).unwrap().to_string_lossy().into_owned();
    let spec = ExecSpec {
        path: &path,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        envp: env(),
        no_aslr: true,
    };
    let mut f = tempfile::tempfile().unwrap();
    let mut opts = opts;
    opts.stdout = Some(Arc::new(f.try_clone().unwrap().into()));
    let out = run_program(m, vm, &spec, &opts).unwrap();
    let mut stdout = Vec::new();
    f.rewind().unwrap();
    f.read_to_end(&mut stdout).unwrap();
    Ran { out, stdout }
}

/// Every checker passes and every page is back.
pub fn assert_clean(m: &Machine, before: u64, what: &str) {
    let k = &m.kernel;
    assert_eq!(m.settle(), before, "{what}: pages leaked");
    k.check_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    k.check_swap_invariants().unwrap();
    assert_eq!(k.nr_anon_vmas(), 0, "{what}: anon_vmas leaked");
}

/// Build a C program with the host's compiler.
pub fn cc(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let exe = dir.join(name);
    let st = std::process::Command::new("cc")
        .args(flags)
        .arg("-O2")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .status()
        .expect("a C compiler (cc) to build the test programs");
    assert!(st.success(), "cc {name}.c failed");
    exe
}

pub fn within(ours: u64, host: u64, pct: u64) -> bool {
    let d = ours.abs_diff(host);
    d * 100 <= host.max(1) * pct
}

/// Run `argv` on mmkit and natively (a plain child of this process with the same
/// environment, `SIGPIPE` at its default action as a shell gives it): the same standard
/// output and status.
pub fn same_as_native(m: &Machine, vm: &Vm, argv: &[&str]) -> Ran {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let ours = run(m, vm, argv, RunOptions::default());
    let mut cmd = std::process::Command::new(resolve(argv[0]).unwrap());
    cmd.args(&argv[1..]).env_clear();
    for e in env() {
        let (k, v) = e.split_once('=').unwrap();
        cmd.env(k, v);
    }
    // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    let native = cmd.stderr(std::process::Stdio::null()).output().unwrap();
    let code = native
        .status
        .code()
        .unwrap_or_else(|| 128 + native.status.signal().unwrap_or(0));
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&native.stdout),
        "{argv:?}: stdout (native status {code})"
    );
    assert_eq!(ours.out.status.code(), code, "{argv:?}: status");
    ours
}
