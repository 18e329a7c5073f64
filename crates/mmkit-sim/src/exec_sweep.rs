//! `mmkit exec-sweep`: exec every program in some directories (by default `/usr/bin` and
//! `/usr/sbin`) both on the host kernel (a ptraced child stopped at its exec, randomization
//! off) and on the simulated machine, and compare what each did: the outcome (runs, which
//! errno, or killed after the point of no return) and, when both run, `/proc/PID/maps` at
//! that moment, byte for byte.
//!
//! Programs are ELF files and `#!` scripts, reached through every directory entry
//! (symlinks too, as `execve` of that path would). Set-user-ID and set-group-ID programs are
//! randomized by both kernels (`PER_CLEAR_ON_SETID` clears `ADDR_NO_RANDOMIZE`), so their
//! maps are compared by shape: the same mappings (sizes, permissions, offsets, files) at
//! addresses that differ.

use crate::exec::{exec_outcome, ExecSpec};
use crate::hostview::{host_exec, HostExec};
use crate::machine::{Machine, MachineSpec};
use anyhow::{bail, Result};
use mmkit::fs::proc::task_mmu::proc_pid_maps;
use serde::Serialize;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The environment both sides get.
pub const SWEEP_ENV: &[&str] = &["A=1", "HOME=/nonexistent"];

/// What an exec did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// The new image was built (the program would start).
    Runs,
    /// `execve` failed with this errno.
    Errno(i32),
    /// The task was killed by this signal (an error after the point of no return).
    Killed(i32),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Runs => f.write_str("runs"),
            Outcome::Errno(e) => match mmkit::Errno::from_code(*e) {
                Some(n) => write!(f, "{}", format!("{n}").split(':').next().unwrap_or("")),
                None => write!(f, "errno {e}"),
            },
            Outcome::Killed(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// How the two maps compare when both ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MapsCmp {
    /// Byte for byte.
    Equal,
    /// Randomized on both sides (set-id): the same mappings at other addresses, and with
    /// the set-id bits ignored (a nosuid mount) equal byte for byte.
    EqualNosuid,
    /// Randomized on both sides (set-id): the same mappings at other addresses (this host
    /// cannot make the nosuid mount that would fix them).
    SameShape,
    /// Different: the first differing line of each (host, ours).
    Differ(String, String),
}

/// One program.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The path exec'd.
    pub path: String,
    /// `elf` or `script`.
    pub kind: &'static str,
    /// The host kernel's outcome.
    pub host: Outcome,
    /// Ours.
    pub ours: Outcome,
    /// The maps, when both ran.
    pub maps: Option<MapsCmp>,
}

/// The whole sweep.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Every program, in directory order.
    pub rows: Vec<Row>,
}

impl Report {
    /// Programs of `kind` whose outcomes agree, and all of them.
    pub fn outcomes(&self, kind: &str) -> (usize, usize) {
        let rows: Vec<&Row> = self.rows.iter().filter(|r| r.kind == kind).collect();
        (rows.iter().filter(|r| r.host == r.ours).count(), rows.len())
    }

    /// Programs of `kind` both ran: (maps equal byte for byte, of which set-id ones compared
    /// with their set-id bits ignored, randomized alike but not compared byte for byte, all).
    pub fn maps(&self, kind: &str) -> (usize, usize, usize, usize) {
        let both: Vec<&MapsCmp> = self
            .rows
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.maps.as_ref())
            .collect();
        let count = |m: &MapsCmp| both.iter().filter(|x| **x == m).count();
        let nosuid = count(&MapsCmp::EqualNosuid);
        (
            count(&MapsCmp::Equal) + nosuid,
            nosuid,
            count(&MapsCmp::SameShape),
            both.len(),
        )
    }

    /// A summary a person can read: the figures, then every disagreement.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for kind in ["elf", "script"] {
            let (agree, all) = self.outcomes(kind);
            if all == 0 {
                continue;
            }
            let (eq, nosuid, shape, both) = self.maps(kind);
            let what = if kind == "elf" {
                "ELF programs"
            } else {
                "#! scripts"
            };
            s.push_str(&format!(
                "{what}: {all}; exec outcome (runs / errno / killed) agrees with the host kernel for {agree} ({:.2}%)\n",
                pct(agree, all)
            ));
            s.push_str(&format!(
                "  both ran: {both}; /proc/PID/maps at the exec stop equal byte for byte: {eq} ({:.2}%)\n",
                pct(eq, both),
            ));
            if nosuid > 0 {
                s.push_str(&format!(
                    "  ({nosuid} of them set-id programs, which both kernels randomize: compared byte for byte with their set-id bits ignored on a nosuid mount, and by shape randomized)\n"
                ));
            }
            if shape > 0 {
                s.push_str(&format!(
                    "  randomized on both sides (set-id), same mappings at other addresses, not compared byte for byte (no nosuid mount here): {shape}\n"
                ));
            }
        }
        let bad: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.host != r.ours || matches!(r.maps, Some(MapsCmp::Differ(..))))
            .collect();
        if !bad.is_empty() {
            s.push_str(&format!("{} disagreements:\n", bad.len()));
            for r in bad {
                match &r.maps {
                    Some(MapsCmp::Differ(h, o)) => s.push_str(&format!(
                        "  {}: maps differ\n    host: {h}\n    ours: {o}\n",
                        r.path
                    )),
                    _ => s.push_str(&format!("  {}: host {}, ours {}\n", r.path, r.host, r.ours)),
                }
            }
        }
        s
    }
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

/// The programs under `dirs`: every entry (following symlinks) that is a regular file
/// starting with an ELF magic or `#!`, sorted by path.
pub fn programs(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, &'static str)>> {
    let mut out = Vec::new();
    for d in dirs {
        let rd = match std::fs::read_dir(d) {
            Ok(rd) => rd,
            Err(e) => bail!("cannot list {}: {e}", d.display()),
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::metadata(&p) else {
                continue;
            };
            if !md.is_file() {
                continue;
            }
            let mut head = [0u8; 4];
            let Ok(f) = std::fs::File::open(&p) else {
                continue;
            };
            use std::io::Read;
            if (&f).read_exact(&mut head).is_err() {
                continue;
            }
            if head == *b"\x7fELF" {
                out.push((p, "elf"));
            } else if head[..2] == *b"#!" {
                out.push((p, "script"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `maps` with each line's address range replaced by its size, sorted: what a randomized
/// layout keeps.
fn shape(maps: &str) -> Vec<String> {
    let mut v: Vec<String> = maps
        .lines()
        .map(|l| {
            let (range, rest) = l.split_once(' ').unwrap_or((l, ""));
            let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
            let size =
                u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0);
            let rest: Vec<&str> = rest.split_whitespace().collect();
            format!("{size:x} {}", rest.join(" "))
        })
        .collect();
    v.sort();
    v
}

fn first_difference(host: &str, ours: &str) -> (String, String) {
    let (h, o): (Vec<&str>, Vec<&str>) = (host.lines().collect(), ours.lines().collect());
    for i in 0..h.len().max(o.len()) {
        let (a, b) = (
            h.get(i).copied().unwrap_or("(none)"),
            o.get(i).copied().unwrap_or("(none)"),
        );
        if a != b {
            return (a.to_string(), b.to_string());
        }
    }
    (String::new(), String::new())
}

/// The maps of `path` exec'd with its set-id bits ignored, on the host (a private nosuid
/// bind mount) and on `m` (whose host file system is seen nosuid); `None` when this host
/// cannot make the mount (not root).
fn nosuid_maps(
    m: &Machine,
    path: &Path,
    cred: &mmkit::fs::namei::Cred,
) -> Result<Option<(String, String)>> {
    let pb = path.as_os_str().as_bytes();
    let host = match crate::hostview::host_exec_nosuid(pb, &[pb], SWEEP_ENV) {
        Ok(HostExec::Runs(img)) => img.maps,
        Ok(other) => bail!(
            "{}: the host did not run it nosuid: {other:?}",
            path.display()
        ),
        Err(_) => return Ok(None),
    };
    let pstr = path.to_string_lossy().into_owned();
    let spec = ExecSpec {
        path: &pstr,
        argv: vec![pstr.clone()],
        envp: SWEEP_ENV.iter().map(|s| s.to_string()).collect(),
        no_aslr: true,
    };
    let ours = m.on_cpu(0, |cpu| match exec_outcome(m, cpu, &spec, cred) {
        Ok(img) => {
            let maps = proc_pid_maps(&img.mm);
            m.kernel.exit_mmap(cpu, img.mm);
            Ok(maps)
        }
        Err(e) => Err(anyhow::anyhow!(crate::exec::describe(&pstr, e))),
    })?;
    Ok(Some((host, ours)))
}

/// Run the sweep over `programs`, on a machine booted from `spec`.
pub fn sweep(spec: &MachineSpec, programs: &[(PathBuf, &'static str)]) -> Result<Report> {
    let m = Machine::boot(spec)?;
    let nosuid_machine = Machine::boot(spec)?;
    nosuid_machine.hostfs.set_nosuid(true);
    let cred = crate::hostfs::host_cred();
    let bar = crate::progress::bar(programs.len() as u64, "exec sweep");
    let mut report = Report::default();
    for (i, (path, kind)) in programs.iter().enumerate() {
        bar.inc(1);
        let pstr = path.to_string_lossy().into_owned();
        let pb = path.as_os_str().as_bytes();
        let host = match host_exec(pb, &[pb], SWEEP_ENV, true) {
            Ok(h) => h,
            Err(why) => bail!("the host kernel's side cannot be observed: {why}"),
        };
        let exec_spec = ExecSpec {
            path: &pstr,
            argv: vec![pstr.clone()],
            envp: SWEEP_ENV.iter().map(|s| s.to_string()).collect(),
            no_aslr: true,
        };
        let ours = m.on_cpu(0, |cpu| {
            let r = exec_outcome(&m, cpu, &exec_spec, &cred);
            let out = match &r {
                Ok(img) => Ok(proc_pid_maps(&img.mm)),
                Err(e) => Err(*e),
            };
            if let Ok(img) = r {
                m.kernel.exit_mmap(cpu, img.mm);
            }
            out
        });
        let setid = std::fs::metadata(path)
            .map(|md| {
                let mode = md.permissions().mode();
                mode & 0o4000 != 0 || mode & 0o2010 == 0o2010
            })
            .unwrap_or(false);
        let (host_o, host_maps) = match host {
            HostExec::Runs(img) => (Outcome::Runs, Some(img.maps)),
            HostExec::Failed(e) => (Outcome::Errno(e), None),
            HostExec::Killed(s) => (Outcome::Killed(s), None),
        };
        let (our_o, our_maps) = match ours {
            Ok(maps) => (Outcome::Runs, Some(maps)),
            Err(e) if e.fatal => (Outcome::Killed(libc::SIGSEGV), None),
            Err(e) => (Outcome::Errno(e.errno.code()), None),
        };
        let maps = match (&host_maps, &our_maps) {
            (Some(h), Some(o)) if h == o => Some(MapsCmp::Equal),
            (Some(h), Some(o)) if setid && shape(h) == shape(o) => {
                // Randomized alike; with the set-id bits ignored (nosuid) both must give
                // the same fixed layout.
                match nosuid_maps(&nosuid_machine, path, &cred)? {
                    Some((h, o)) if h == o => Some(MapsCmp::EqualNosuid),
                    Some((h, o)) => {
                        let (a, b) = first_difference(&h, &o);
                        Some(MapsCmp::Differ(a, b))
                    }
                    None => Some(MapsCmp::SameShape),
                }
            }
            (Some(h), Some(o)) => {
                let (a, b) = first_difference(h, o);
                Some(MapsCmp::Differ(a, b))
            }
            _ => None,
        };
        report.rows.push(Row {
            path: pstr,
            kind,
            host: host_o,
            ours: our_o,
            maps,
        });
        // Keep the page cache of programs already compared from filling the machine.
        if i % 64 == 63 {
            m.on_cpu(0, |cpu| m.kernel.drop_pagecache(cpu));
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

/// The default directories.
pub fn default_dirs() -> Vec<PathBuf> {
    [Path::new("/usr/bin"), Path::new("/usr/sbin")]
        .iter()
        .map(|p| p.to_path_buf())
        .collect()
}
