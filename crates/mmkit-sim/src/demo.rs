//! The main job (`mmkit` with no command, so `cargo run --release`): boot the default
//! machine, run a real program on it under `/dev/kvm` — python3 computing a hash of a JSON
//! document, or `ls -la /usr/bin` where python3 is absent — and show what it did to memory:
//! its faults by kind, the machine's pages by zone and LRU list and the page tables and slab
//! caches in use at its `exit_group`, buddyinfo before and after, and every page back once
//! it is gone and the page cache dropped.

use crate::exec::ExecSpec;
use crate::kvm::process::Proc;
use crate::kvm::{kvm_usable, run_program, RunOptions, Vm};
use crate::machine::{Machine, MachineSpec};
use anyhow::{bail, Result};
use mmkit::fs::proc::{buddyinfo::buddyinfo, proc_files};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What `/proc` said at the program's `exit_group`, before its memory went.
#[derive(Default)]
struct AtExit {
    zoneinfo: String,
    slabinfo: String,
    meminfo: String,
    maps: usize,
}

/// Why the demo cannot run here (`/dev/kvm` missing or unusable), or `Ok`.
pub fn available() -> Result<()> {
    kvm_usable()
}

/// The `zoneinfo` figures of each populated zone: name and (free, anon inactive/active,
/// file inactive/active) pages.
fn zone_rows(zoneinfo: &str) -> Vec<(String, [u64; 5])> {
    let mut rows: Vec<(String, [u64; 5])> = Vec::new();
    for l in zoneinfo.lines() {
        if let Some(z) = l.strip_prefix("Node ") {
            let name = z.split_whitespace().last().unwrap_or("?").to_string();
            rows.push((name, [0; 5]));
            continue;
        }
        let mut w = l.split_whitespace();
        let (Some(key), Some(v)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        let i = match key {
            "nr_free_pages" => 0,
            "nr_zone_inactive_anon" => 1,
            "nr_zone_active_anon" => 2,
            "nr_zone_inactive_file" => 3,
            "nr_zone_active_file" => 4,
            _ => continue,
        };
        if let Some(r) = rows.last_mut() {
            r.1[i] = v;
        }
    }
    rows
}

/// `slabinfo` lines whose active objects differ between `before` and `after`.
fn slab_changes(before: &str, after: &str) -> Vec<String> {
    let active = |s: &str| -> Vec<(String, u64, String)> {
        s.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("slabinfo"))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next()?.to_string();
                let n = w.next()?.parse().ok()?;
                Some((name, n, l.to_string()))
            })
            .collect()
    };
    let b = active(before);
    active(after)
        .into_iter()
        .filter(|(name, n, _)| b.iter().find(|x| &x.0 == name).is_none_or(|x| x.1 != *n))
        .map(|(_, _, l)| l)
        .collect()
}

fn meminfo_kb(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Run the main job on a machine built from `spec`.
pub fn run(spec: &MachineSpec) -> Result<()> {
    let m = Machine::boot(spec)?;
    let vm = Vm::new(&m)?;
    let k = &m.kernel;
    let py = "import json, hashlib; d = {str(i): [i, i * i, str(i)] for i in range(100000)}; \
              print(len(d), hashlib.sha256(json.dumps(d).encode()).hexdigest())";
    let argv: Vec<&str> = if Path::new("/usr/bin/python3").exists() {
        vec!["/usr/bin/python3", "-c", py]
    } else {
        vec!["/usr/bin/ls", "-la", "/usr/bin"]
    };
    println!(
        "mmkit: {} MiB machine, {} CPUs; running {} under /dev/kvm, every page of it in mmkit's frames",
        (k.totalram_pages() * 4) >> 10,
        spec.cpus,
        argv.iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a.to_string() })
            .collect::<Vec<_>>()
            .join(" ")
    );
    let free_before = m.settle();
    let buddy_before = buddyinfo(k);
    let slab_before = k.proc_slabinfo();
    let at_exit: Arc<Mutex<AtExit>> = Arc::default();
    let seen = at_exit.clone();
    let hook = Arc::new(
        move |p: &mut Proc<'_>, _: &mmkit::CpuGuard<'_>, nr: u64, _: [u64; 6]| {
            if nr != libc::SYS_exit_group as u64 {
                return;
            }
            let mut s = seen.lock().expect("demo lock");
            for (name, text) in proc_files(p.k) {
                match name {
                    "zoneinfo" => s.zoneinfo = text,
                    "slabinfo" => s.slabinfo = text,
                    "meminfo" => s.meminfo = text,
                    _ => {}
                }
            }
            s.maps = p.mm().map_count();
        },
    );
    let out_file = tempfile::tempfile()?;
    let opts = RunOptions {
        syscall_hook: Some(hook),
        stdout: Some(Arc::new(out_file.try_clone()?.into())),
        ..Default::default()
    };
    let spec = ExecSpec {
        path: argv[0],
        argv: argv.iter().map(|s| s.to_string()).collect(),
        envp: vec!["PATH=/usr/bin:/bin".into(), "LANG=C".into()],
        no_aslr: false,
    };
    let t = std::time::Instant::now();
    let out = run_program(&m, &vm, &spec, &opts)?;
    let wall = t.elapsed();
    let stdout = {
        use std::io::{Read, Seek};
        let mut f = out_file;
        f.rewind()?;
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        s
    };
    let lines: Vec<&str> = stdout.lines().collect();
    println!("\n######## the program ########");
    for l in lines.iter().take(3) {
        println!("  | {l}");
    }
    if lines.len() > 3 {
        println!("  | … {} more lines", lines.len() - 3);
    }
    println!(
        "exit status {}; {:.2} s ({} VM exits: one per guest fault and per system call)",
        out.status.code(),
        wall.as_secs_f64(),
        out.exits
    );
    const KINDS: [&str; 5] = ["anonymous", "zero page", "file", "copy-on-write", "swap-in"];
    println!(
        "\n######## its page faults: {} minor, {} major ########",
        out.min_flt, out.maj_flt
    );
    for (name, n) in KINDS.iter().zip(out.faults_by_kind) {
        println!("  {name:<14} {n:>7}");
    }
    println!(
        "  {:<14} {:>7}  (taken inside system calls, copying to or from its memory)",
        "in the kernel",
        (out.min_flt + out.maj_flt).saturating_sub(out.user_faults)
    );
    let s = at_exit.lock().expect("demo lock");
    println!(
        "\n######## at exit_group: {} VMAs, VmHWM {} kB, RSS anon {} kB + file {} kB ########",
        s.maps, out.vm_hwm_kb, out.rss_kb.0, out.rss_kb.1
    );
    println!(
        "  {:<8} {:>10} {:>14} {:>12} {:>14} {:>12}",
        "zone", "free", "inactive_anon", "active_anon", "inactive_file", "active_file"
    );
    for (zone, v) in zone_rows(&s.zoneinfo)
        .into_iter()
        .filter(|(_, v)| v.iter().any(|&x| x > 0))
    {
        println!(
            "  {zone:<8} {:>10} {:>14} {:>12} {:>14} {:>12}",
            v[0], v[1], v[2], v[3], v[4]
        );
    }
    println!(
        "  page tables: {} kB; page cache: {} kB; anonymous: {} kB (/proc/meminfo)",
        meminfo_kb(&s.meminfo, "PageTables:"),
        meminfo_kb(&s.meminfo, "Cached:"),
        meminfo_kb(&s.meminfo, "AnonPages:")
    );
    let slabs = slab_changes(&slab_before, &s.slabinfo);
    if slabs.is_empty() {
        println!("  slab caches: none changed (VMAs, anon_vmas and mm_structs are not slab objects here)");
    } else {
        println!("  slab caches in use (/proc/slabinfo lines that changed):");
        for l in slabs {
            println!("    {l}");
        }
    }
    drop(s);
    println!("\n######## buddyinfo before the program ########\n{buddy_before}");
    let free_after = m.settle();
    println!(
        "######## buddyinfo after it exited and the page cache was dropped ########\n{}",
        buddyinfo(k)
    );
    k.check_invariants()
        .map_err(|e| anyhow::anyhow!("invariant broken: {e}"))?;
    if free_after != free_before {
        bail!(
            "{} pages did not come back ({} free before, {} after)",
            free_before as i64 - free_after as i64,
            free_before,
            free_after
        );
    }
    println!(
        "every page is back: {free_after} free pages, as before the program; invariants hold."
    );
    Ok(())
}
