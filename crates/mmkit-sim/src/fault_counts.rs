//! Fault counts beside the host kernel's: a process exec'd on the simulated machine and this
//! host process run the same touch patterns — a sequential write of 64 MiB of anonymous
//! memory, random reads (4096 pages, seeded) of a 64 MiB file mapped privately, and a
//! sequential read of that file mapped with `MADV_HUGEPAGE` (file THPs where the host's file
//! system caches PMD-sized folios), with the file out of both page caches at the start of
//! each file pattern — and report minor and major faults (`getrusage(RUSAGE_THREAD)` on the
//! host, the task's `min_flt`/`maj_flt` here) and the mapping's `FilePmdMapped` at its end.

use crate::exec::{spawn_host, true_spec};
use crate::machine::Machine;
use anyhow::{bail, Result};
use mmkit::fs::inode::FMode;
use mmkit::kernel::task::TaskTable;
use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use mmkit::mm::uaccess::FaultCounts;
use rand::{Rng, SeedableRng};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Bytes each pattern covers.
pub const LEN: u64 = 64 << 20;
/// Random page reads of the file pattern.
pub const READS: usize = 4096;

/// One pattern's counts.
#[derive(Clone, Debug)]
pub struct Compared {
    /// Pattern name.
    pub name: &'static str,
    /// Ours.
    pub ours: FaultCounts,
    /// The host kernel's.
    pub host: FaultCounts,
    /// Our time for the pattern, ns.
    pub ours_ns: u64,
    /// The host's time for it, ns.
    pub host_ns: u64,
    /// `FilePmdMapped` (kB) of the pattern's mapping before its munmap: (ours, host's).
    pub pmd_mapped_kb: (u64, u64),
}

/// One pattern's run: faults, ns, `FilePmdMapped` kB.
type Run = (FaultCounts, u64, u64);

/// `FilePmdMapped` (kB) of this process's mapping that starts at `addr`.
fn host_file_pmd_mapped_kb(addr: usize) -> Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let head = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    if lines.next().is_none() {
        bail!("mapping {addr:#x} not in /proc/self/smaps");
    }
    Ok(smaps_kb(lines, "FilePmdMapped:"))
}

/// The value (kB) of the first `name` line among `lines` (0 if there is none).
fn smaps_kb<'a>(mut lines: impl Iterator<Item = &'a str>, name: &str) -> u64 {
    lines
        .find(|l| l.starts_with(name))
        .and_then(|l| {
            l[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Drop `f`'s pages from the host's page cache.
fn host_drop_cache(f: &std::fs::File) -> Result<()> {
    // SAFETY: advice on our own file descriptor.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        bail!("posix_fadvise(DONTNEED) failed: {r}");
    }
    Ok(())
}

fn rusage_thread() -> FaultCounts {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    FaultCounts {
        min_flt: ru.ru_minflt as u64,
        maj_flt: ru.ru_majflt as u64,
    }
}

fn delta(a: FaultCounts, b: FaultCounts) -> FaultCounts {
    FaultCounts {
        min_flt: b.min_flt - a.min_flt,
        maj_flt: b.maj_flt - a.maj_flt,
    }
}

/// The page indices the random-read pattern touches.
pub fn random_pages() -> Vec<u64> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    (0..READS).map(|_| rng.random_range(0..LEN >> 12)).collect()
}

/// Write a 64 MiB file of pseudo-random bytes in `dir` (a new file: `O_EXCL`, so nothing
/// planted there is followed) and return its path.
pub fn make_file(dir: &Path) -> Result<std::path::PathBuf> {
    use std::io::Write;
    let path = dir.join("fault-pattern.dat");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut data = vec![0u8; LEN as usize];
    rng.fill(&mut data[..]);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all(&data)?;
    f.sync_all()?;
    Ok(path)
}

/// The host kernel: the three patterns in this thread.
fn host(path: &Path, pages: &[u64]) -> Result<[Run; 3]> {
    let len = LEN as usize;
    let t = std::time::Instant::now();
    let a = rusage_thread();
    // SAFETY: a private anonymous mapping written and unmapped here.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            bail!("host mmap failed");
        }
        // The simulator has no THP: keep the host's faults 4 KiB too, whatever its
        // transparent_hugepage setting (with `always` it would fault 2 MiB at a time).
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        for i in (0..len).step_by(4096) {
            std::ptr::write_volatile((p as *mut u8).add(i), 1);
        }
        libc::munmap(p, len);
    }
    let anon = (delta(a, rusage_thread()), t.elapsed().as_nanos() as u64, 0);
    let f = std::fs::File::open(path)?;
    host_drop_cache(&f)?;
    let t = std::time::Instant::now();
    let a = rusage_thread();
    // SAFETY: a private read-only mapping of our file, read and unmapped here.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            bail!("host mmap of the file failed");
        }
        for &i in pages {
            std::hint::black_box(std::ptr::read_volatile(
                (p as *const u8).add((i << 12) as usize),
            ));
        }
        libc::munmap(p, len);
    }
    let rand = (delta(a, rusage_thread()), t.elapsed().as_nanos() as u64, 0);
    host_drop_cache(&f)?;
    let t = std::time::Instant::now();
    let a = rusage_thread();
    // SAFETY: a private read-only mapping of our file, advised, read and unmapped here.
    let pmd_kb = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            bail!("host mmap of the file failed");
        }
        libc::madvise(p, len, libc::MADV_HUGEPAGE);
        for i in (0..len).step_by(4096) {
            std::hint::black_box(std::ptr::read_volatile((p as *const u8).add(i)));
        }
        let faults = delta(a, rusage_thread());
        let kb = host_file_pmd_mapped_kb(p as usize);
        libc::munmap(p, len);
        (faults, kb?)
    };
    let thp = (pmd_kb.0, t.elapsed().as_nanos() as u64, pmd_kb.1);
    Ok([anon, rand, thp])
}

/// Ours: exec `/bin/true`, then the three patterns in that process.
fn ours(m: &Machine, path: &Path, pages: &[u64]) -> Result<[Run; 3]> {
    let k = &m.kernel;
    let mut tasks = TaskTable::default();
    m.on_cpu(0, |cpu| -> Result<[Run; 3]> {
        let pid = spawn_host(m, &mut tasks, cpu, &true_spec())?;
        let mm = tasks.mm_mut(pid)?;
        let t = std::time::Instant::now();
        let a = mm.faults;
        let va = k.mmap(
            cpu,
            mm,
            0,
            LEN,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            0,
        )?;
        for i in 0..LEN >> 12 {
            k.user_write(cpu, mm, va + (i << 12), &[1])
                .map_err(|s| anyhow::anyhow!("{s}"))?;
        }
        k.munmap(cpu, mm, va, LEN)?;
        let anon = (delta(a, mm.faults), t.elapsed().as_nanos() as u64, 0);
        let inode = m.hostfs.inode(k, cpu, path)?;
        let f = k.open(&inode, FMode::READ)?;
        let t = std::time::Instant::now();
        let a = mm.faults;
        let fa = k.do_mmap(cpu, mm, Some(&f), 0, LEN, PROT_READ, MAP_PRIVATE, 0)?;
        let mut b = [0u8; 1];
        for &i in pages {
            k.user_read(cpu, mm, fa + (i << 12), &mut b)
                .map_err(|s| anyhow::anyhow!("{s}"))?;
        }
        k.munmap(cpu, mm, fa, LEN)?;
        let rand = (delta(a, mm.faults), t.elapsed().as_nanos() as u64, 0);
        // POSIX_FADV_DONTNEED, as on the host: drain the LRU batches, then invalidate.
        k.lru_add_drain_all(cpu);
        k.invalidate_mapping_pages(cpu, &inode);
        let t = std::time::Instant::now();
        let a = mm.faults;
        let fa = k.do_mmap(cpu, mm, Some(&f), 0, LEN, PROT_READ, MAP_PRIVATE, 0)?;
        k.madvise(cpu, mm, fa, LEN, mmkit::mm::madvise::MADV_HUGEPAGE)?;
        for i in 0..LEN >> 12 {
            k.user_read(cpu, mm, fa + (i << 12), &mut b)
                .map_err(|s| anyhow::anyhow!("{s}"))?;
        }
        let faults = delta(a, mm.faults);
        let smaps = mmkit::fs::proc::task_mmu::proc_pid_smaps(k, mm);
        let head = format!("{fa:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines.next();
        let kb = smaps_kb(lines, "FilePmdMapped:");
        k.munmap(cpu, mm, fa, LEN)?;
        let thp = (faults, t.elapsed().as_nanos() as u64, kb);
        k.fput(cpu, f);
        tasks.exit(k, cpu, pid, 0)?;
        k.invalidate_mapping_pages(cpu, &inode);
        Ok([anon, rand, thp])
    })
}

/// Run the patterns on the host and on `m`, with a fresh file under `dir`.
pub fn compare(m: &Machine, dir: &Path) -> Result<Vec<Compared>> {
    let path = make_file(dir)?;
    let pages = random_pages();
    let h = host(&path, &pages)?;
    let o = ours(m, &path, &pages)?;
    Ok([
        "seq-write-64m",
        "rand-read-file-64m",
        "seq-read-file-thp-64m",
    ]
    .into_iter()
    .zip(h.into_iter().zip(o))
    .map(|(name, (h, o))| Compared {
        name,
        ours: o.0,
        host: h.0,
        ours_ns: o.1,
        host_ns: h.1,
        pmd_mapped_kb: (o.2, h.2),
    })
    .collect())
}
