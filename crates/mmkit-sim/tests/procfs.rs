//! /proc views: the same layout as the host kernel's files (fixtures captured from Linux 6.18
//! on this machine), and real procps tools (`free`, `vmstat -s`) reading our files through a
//! bind mount over /proc.

mod common;
use mmkit::fs::proc::{buddyinfo, iomem, meminfo, vmstat, zoneinfo};
use mmkit_sim::{Machine, MachineSpec};
use std::process::Command;

const HOST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/host-linux-6.18"
);

fn host(name: &str) -> String {
    std::fs::read_to_string(format!("{HOST}/{name}")).unwrap()
}

/// A line's shape: its leading spaces and its words with digits replaced, so widths of
/// labels and fixed columns are compared but values are not.
fn shape(line: &str) -> String {
    let indent = line.len() - line.trim_start().len();
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) && !w.contains('_') && !w.contains(':') {
                "N".into()
            } else {
                w.to_string()
            }
        })
        .collect();
    format!("{indent}|{}", words.join(" "))
}

fn machine() -> Machine {
    Machine::boot(&MachineSpec::default()).unwrap()
}

#[test]
fn meminfo_has_the_host_layout() {
    let m = machine();
    let ours = meminfo::meminfo(&m.kernel);
    let theirs = host("meminfo");
    let labels = |s: &str| s.lines().map(|l| l[..16].to_string()).collect::<Vec<_>>();
    assert_eq!(labels(&ours), labels(&theirs));
    for l in ours.lines() {
        assert!(l.ends_with(" kB") || l.starts_with("HugePages_"), "{l}");
    }
}

#[test]
fn vmstat_names_match_the_host() {
    let m = machine();
    let names = |s: &str| {
        s.lines()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&vmstat::vmstat(&m.kernel)), names(&host("vmstat")));
}

#[test]
fn buddyinfo_and_pagetypeinfo_layout() {
    let m = machine();
    let ours = buddyinfo::buddyinfo(&m.kernel);
    let theirs = host("buddyinfo");
    for (a, b) in ours.lines().zip(theirs.lines()) {
        assert_eq!(a.len(), b.len(), "`{a}` vs `{b}`");
        assert_eq!(&a[..21], &b[..21]);
    }
    assert_eq!(ours.lines().count(), 3);
    // pagetypeinfo: identical headers and row labels for the zones both machines have.
    let ours = buddyinfo::pagetypeinfo(&m.kernel);
    let theirs = host("pagetypeinfo");
    let ol: Vec<_> = ours.lines().collect();
    let tl: Vec<_> = theirs.lines().collect();
    assert_eq!(ol.len(), tl.len());
    for (a, b) in ol.iter().zip(tl.iter()) {
        assert_eq!(shape(a), shape(b));
        assert_eq!(a.len(), b.len(), "`{a}` vs `{b}`");
    }
}

/// Every line of our zoneinfo has the host's indentation and labels, in the host's order.
#[test]
fn zoneinfo_layout_matches_the_host() {
    let m = machine();
    let ours = zoneinfo::zoneinfo(&m.kernel);
    let theirs = host("zoneinfo");
    let ol: Vec<String> = ours.lines().map(shape).collect();
    let tl: Vec<String> = theirs.lines().map(shape).collect();
    assert_eq!(ol.len(), tl.len(), "line counts differ");
    for (i, (a, b)) in ol.iter().zip(tl.iter()).enumerate() {
        assert_eq!(a, b, "zoneinfo line {}", i + 1);
    }
    // The figures are ours: DMA on the default machine.
    assert!(ours.contains("        spanned  4095\n        present  3995\n        managed  3840\n"));
}

#[test]
fn iomem_lists_e820_and_kernel_image() {
    let m = machine();
    let s = iomem::iomem(&m.kernel);
    assert!(
        s.starts_with("00000000-00000fff : Reserved\n00001000-00057fff : System RAM\n"),
        "{s}"
    );
    assert!(s.contains("  01000000-"), "{s}");
    assert!(s.contains(" : Kernel code\n") && s.contains(" : Kernel bss\n"));
    assert!(s.contains("cc8e3000-cc8e3fff : ACPI Non-volatile Storage\n"));
    assert!(s.contains("100000000-2237fffff : System RAM\n"));
}

/// Run `cmd` with our file bind-mounted over `/proc/NAME` in a private mount namespace.
fn with_our_proc(dir: &std::path::Path, name: &str, cmd: &str) -> String {
    let script = format!(
        "mount --bind {}/{name} /proc/{name} && {cmd}",
        dir.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `free` and `vmstat -s` from procps parse our files and print our figures.
#[test]
fn procps_reads_our_files() {
    let caps = mmkit_sim::hostview::host_caps();
    let tools = ["free", "vmstat", "slabtop"]
        .into_iter()
        .try_for_each(mmkit_sim::hostview::have_tool);
    if let Err(why) = caps.mount_ns.clone().and(tools) {
        mmkit_sim::hostview::skip("procps_reads_our_files", &why);
        return;
    }
    let m = machine();
    let k = &m.kernel;
    // Allocate something so the figures are not the boot ones.
    let held: Vec<_> = m.on_cpu(0, |cpu| {
        (0..500)
            .map(|_| k.alloc_pages(cpu, mmkit::gfp::GFP_KERNEL, 9).unwrap())
            .collect()
    });
    let dir = tempfile::tempdir().unwrap();
    mmkit_sim::procfs::write_proc_dir(k, dir.path()).unwrap();
    let info = meminfo::si_meminfo(k);
    assert!(info.available > 0 && info.free <= info.total - 500 * 512);
    let out = with_our_proc(dir.path(), "meminfo", "free -k");
    let mem: Vec<u64> = out
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(mem[0], info.total * 4, "free's total:\n{out}");
    assert_eq!(mem[2], info.free * 4, "free's free:\n{out}");
    assert_eq!(mem[5], info.available * 4, "free's available:\n{out}");
    let out = with_our_proc(dir.path(), "meminfo", "vmstat -s");
    let total: u64 = out
        .lines()
        .find(|l| l.contains("K total memory"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, info.total * 4, "{out}");
    let free: u64 = out
        .lines()
        .find(|l| l.contains("K free memory"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(free, info.free * 4, "{out}");
    // vmstat -s takes paging and swapping figures from /proc/vmstat: ours has none yet.
    let out = with_our_proc(dir.path(), "vmstat", "vmstat -s");
    for line in [
        "0 K paged in",
        "0 K paged out",
        "0 pages swapped in",
        "0 pages swapped out",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == line),
            "`{line}` missing:\n{out}"
        );
    }
    m.on_cpu(0, |cpu| common::free_all(k, cpu, held, 9));
}
