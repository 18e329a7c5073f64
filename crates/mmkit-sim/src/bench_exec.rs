//! `mmkit bench exec`: real programs on mmkit under `/dev/kvm`, each beside the same thing on
//! the host kernel in the same run.
//!
//! - `exec-true`, `exec-python3`: a whole run (exec, every fault and system call, exit and
//!   teardown) against the native run of the same command (`fork` + `execve` + `wait`).
//! - `fault-exit`: one guest page fault's round trip — the guest's #PF through its IDT stub,
//!   the VM exit, mmkit's `do_user_addr_fault`, the resume — against the host kernel's own
//!   first-touch fault of an anonymous page.
//! - `syscall-exit`: one `getpid` round trip against the host's `getpid`.
//!
//! The per-event rows run a tiny static program (built here: an ELF header, two `PT_LOAD`s
//! and a loop) twice, with N₁ and N₂ events, and divide the difference of the two wall times
//! by N₂ − N₁, so exec and teardown cancel. The note says how much of a round trip is the
//! VMM's own work (mmkit's handler and the exit loop) and how many exits each run took.

use crate::bench::{measure, row, tsc, Row};
use crate::exec::ExecSpec;
use crate::kvm::{kvm_usable, run_program, Outcome, RunOptions, Vm};
use crate::machine::{Machine, MachineSpec};
use anyhow::{bail, Context, Result};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the tiny programs load: text at 4 MiB, their zero-filled data at 256 MiB.
const TEXT: u64 = 0x40_0000;
const DATA: u64 = 0x1000_0000;

/// A static x86-64 ELF executable: `code` at [`TEXT`] (read, execute) and `data_len` bytes
/// of zero-filled memory at [`DATA`] (read, write; no file bytes, as a `.bss`).
pub fn tiny_elf(code: &[u8], data_len: u64) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let code_off = (EHDR + 2 * PHDR) as u64;
    let mut f = Vec::with_capacity(code_off as usize + code.len());
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(TEXT + code_off).to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [EHDR as u16, PHDR as u16, 2, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let file_len = code_off + code.len() as u64;
    // (p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz)
    for (flags, off, vaddr, filesz, memsz) in [
        (5u32, 0u64, TEXT, file_len, file_len),
        (6, 0, DATA, 0, data_len),
    ] {
        f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f.extend_from_slice(&flags.to_le_bytes());
        for v in [off, vaddr, vaddr, filesz, memsz, 0x1000] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    f.extend_from_slice(code);
    f
}

/// `exit_group(0)`.
const EXIT0: [u8; 9] = [0xb8, 0xe7, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];

/// Write a byte to each of `n` pages of the data segment, then exit.
pub fn touch_pages_code(n: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xbf]; // mov rdi, DATA
    c.extend_from_slice(&DATA.to_le_bytes());
    c.extend_from_slice(&[0x48, 0xb9]); // mov rcx, n
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[
        0xc6, 0x07, 0x01, // loop: mov byte [rdi], 1
        0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, // add rdi, 4096
        0x48, 0xff, 0xc9, // dec rcx
        0x75, 0xf1, // jnz loop
    ]);
    c.extend_from_slice(&EXIT0);
    c
}

/// `getpid` `n` times, then exit.
pub fn getpid_code(n: u64) -> Vec<u8> {
    let mut c = vec![0x49, 0xbc]; // mov r12, n
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[
        0xb8, 0x27, 0, 0, 0, // loop: mov eax, SYS_getpid
        0x0f, 0x05, // syscall
        0x49, 0xff, 0xcc, // dec r12
        0x75, 0xf4, // jnz loop
    ]);
    c.extend_from_slice(&EXIT0);
    c
}

/// Run `argv` on `m` to its end with its output discarded; the run's wall time (and TSC
/// ticks) and outcome.
fn run_once(m: &Machine, vm: &Vm, argv: &[&str]) -> Result<(Duration, u64, Outcome)> {
    let spec = ExecSpec {
        path: argv[0],
        argv: argv.iter().map(|s| s.to_string()).collect(),
        envp: vec!["PATH=/usr/bin:/bin".into(), "LANG=C".into()],
        no_aslr: true,
    };
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let opts = RunOptions {
        stdout: Some(std::sync::Arc::new(null.into())),
        ..Default::default()
    };
    let (t, c) = (Instant::now(), tsc());
    let out = run_program(m, vm, &spec, &opts)?;
    let (wall, ticks) = (t.elapsed(), tsc() - c);
    if out.status.code() != 0 {
        bail!("{argv:?} ended with status {} on mmkit", out.status.code());
    }
    Ok((wall, ticks, out))
}

/// Best wall time of `runs` native runs of `argv`.
fn native_best(argv: &[&str], runs: usize) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let st = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C")
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {} natively", argv[0]))?;
        best = best.min(t.elapsed());
        if !st.success() {
            bail!("{argv:?} failed natively: {st}");
        }
    }
    Ok(best)
}

/// Best of `runs` runs on mmkit: wall time, ticks and the outcome of that run.
fn ours_best(m: &Machine, vm: &Vm, argv: &[&str], runs: usize) -> Result<(Duration, u64, Outcome)> {
    let mut best: Option<(Duration, u64, Outcome)> = None;
    for _ in 0..runs {
        let r = run_once(m, vm, argv)?;
        if best.as_ref().is_none_or(|b| r.0 < b.0) {
            best = Some(r);
        }
    }
    best.context("no run")
}

/// Per-event cost from two programs with `n1` and `n2` events: (wall ns, ticks, VMM ns) per
/// event and the exits and events of the larger run, best of three pairs.
fn per_event(
    m: &Machine,
    vm: &Vm,
    dir: &Path,
    name: &str,
    make: impl Fn(u64) -> Vec<u8>,
    data_pages: u64,
) -> Result<(f64, f64, f64, u64, u64)> {
    let (n1, n2) = (1_000u64, 6_000u64);
    let mut paths = Vec::new();
    for n in [n1, n2] {
        let p = dir.join(format!("{name}-{n}"));
        std::fs::write(&p, tiny_elf(&make(n), data_pages.max(1) << 12))?;
        let mut perm = std::fs::metadata(&p)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm)?;
        paths.push(p.to_string_lossy().into_owned());
    }
    run_once(m, vm, &[&paths[0]])?; // warm-up
    let mut best = (f64::MAX, 0.0, 0.0, 0, 0);
    for _ in 0..3 {
        let (w1, c1, o1) = run_once(m, vm, &[&paths[0]])?;
        let (w2, c2, o2) = run_once(m, vm, &[&paths[1]])?;
        let d = (n2 - n1) as f64;
        let wall = (w2.as_nanos() as f64 - w1.as_nanos() as f64) / d;
        let ticks = (c2 as f64 - c1 as f64) / d;
        let vmm = (o2.vmm.as_nanos() as f64 - o1.vmm.as_nanos() as f64) / d;
        if wall > 0.0 && wall < best.0 {
            best = (wall, ticks, vmm, o2.exits, o2.user_faults + o2.syscalls);
        }
    }
    Ok(best)
}

/// Host: ns per first-touch write fault of an anonymous page.
fn host_fault_ns() -> f64 {
    const LEN: usize = 16 << 20;
    measure((LEN / 4096) as u64, || {
        crate::bench_fault::host_anon_touch(LEN);
    })
    .0
}

/// Host: ns per `getpid`.
fn host_getpid_ns() -> f64 {
    const N: u64 = 200_000;
    measure(N, || {
        for _ in 0..N {
            // SAFETY: getpid has no arguments and no side effects.
            black_box(unsafe { libc::syscall(libc::SYS_getpid) });
        }
    })
    .0
}

/// The rows (filter `exec`, or a row name). Without a usable `/dev/kvm` there are none, and
/// the reason is printed.
pub fn exec_rows(filter: &str) -> Result<Vec<Row>> {
    let want = |n: &str| filter.is_empty() || n.starts_with(filter);
    if let Err(e) = kvm_usable() {
        eprintln!("mmkit bench: exec rows skipped: {e:#}");
        return Ok(Vec::new());
    }
    let m = Machine::boot(&MachineSpec::default())?;
    let vm = Vm::new(&m)?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let whole = |name: &str, argv: &[&str], runs: usize| -> Result<Row> {
        run_once(&m, &vm, argv)?; // warm the page cache, as the host's is
        let (ours, ticks, out) = ours_best(&m, &vm, argv, runs)?;
        let native = native_best(argv, runs)?;
        let ns = ours.as_nanos() as f64;
        Ok(row(
            name,
            (ns, ticks as f64),
            "native run",
            native.as_nanos() as f64,
            Some(format!(
                "{:.1}x slower; {} exits = {} guest faults + {} syscalls; {} faults in all; \
                 {:.0}% of the time in the guest",
                ns / native.as_nanos() as f64,
                out.exits,
                out.user_faults,
                out.syscalls,
                out.min_flt + out.maj_flt,
                100.0 * out.guest.as_nanos() as f64 / ns
            )),
        ))
    };
    if want("exec-true") {
        rows.push(whole("exec-true", &["/bin/true"], 5)?);
    }
    if want("exec-python3") && Path::new("/usr/bin/python3").exists() {
        rows.push(whole(
            "exec-python3",
            &[
                "/usr/bin/python3",
                "-c",
                "import json, hashlib; print(hashlib.sha256(json.dumps(list(range(200000))).encode()).hexdigest())",
            ],
            3,
        )?);
    }
    let event = |name: &str, make: &dyn Fn(u64) -> Vec<u8>, pages: u64, anchor: &str, host: f64| {
        let (wall, ticks, vmm, exits, events) = per_event(&m, &vm, dir.path(), name, make, pages)?;
        anyhow::Ok(row(
            name,
            (wall, ticks),
            anchor,
            host,
            Some(format!(
                "VMM's own work {:.0} ns = {:.1}% of the round trip; {exits} exits for {events} \
                 guest faults + syscalls",
                vmm,
                100.0 * vmm / wall
            )),
        ))
    };
    if want("fault-exit") {
        rows.push(event(
            "fault-exit",
            &touch_pages_code,
            6_000,
            "host page fault",
            host_fault_ns(),
        )?);
    }
    if want("syscall-exit") {
        rows.push(event(
            "syscall-exit",
            &getpid_code,
            0,
            "host getpid",
            host_getpid_ns(),
        )?);
    }
    Ok(rows)
}
