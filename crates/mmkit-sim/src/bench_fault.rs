//! `mmkit bench fault`: page faults through the software MMU beside the host kernel doing the
//! same and beside the copy/zero that bounds them.
//!
//! - `anon-fault`: mmap 16 MiB of anonymous memory, write one byte to every page, munmap —
//!   per page — beside the host kernel doing exactly that;
//! - `anon-fault-memset`: the same figure beside a bare 4 KiB `memset` (a fault must zero a
//!   page, so this is its physical limit); the note adds zeroing each page of a 16 MiB buffer,
//!   which is as cold in cache as the pages a fault gets;
//! - `anon-fault-thp`: the same with `MADV_HUGEPAGE` (one 2 MiB fault per 512 pages), per
//!   4 KiB page, beside the host kernel doing exactly that; the note gives it against zeroing
//!   the same 16 MiB page by page (the physical limit: a THP fault zeroes 2 MiB);
//! - `anon-fault-mthp64`: the same 16 MiB with the 64 KiB mTHP size `always` (one fault per
//!   16 pages), per 4 KiB page, beside zeroing the same 16 MiB page by page;
//! - `cow-fault`: after fork, the child writes every page of 16 MiB — per page, fork and exit
//!   not timed — beside the host kernel's COW fault in a forked child;
//! - `fork-exit`: fork (`dup_mmap`) of an address space with 16 MiB written and 32 small
//!   written mappings, and the child's exit (`exit_mmap`) at once — per fork — beside the host
//!   kernel forking this process with the same 16 MiB written, the child exiting at once;
//! - `fork-exit-mthp64`: the same with the 16 MiB in 64 KiB mTHP folios (`always`), whose
//!   PTEs fork copies and exit zaps a folio's run at a time;
//! - `file-read-fault`: map a cached 16 MiB file privately, read every page, munmap — per page
//!   — beside the host doing the same on a file in its page cache. The file was just written
//!   by one `write`, on the host through its file system, in mmkit through
//!   `generic_perform_write`: both cache it as the write left it (PMD-sized folios where the
//!   host's file system has large folios) and map what they cached (by PMDs for those);
//! - `file-read-fault-thp`: the same with `MADV_HUGEPAGE` on both sides: file THPs mapped by
//!   one PMD per 2 MiB on both;
//! - `fault-count-*`: the patterns of `fault_counts` (a process exec'd here vs this host
//!   process): time per fault and the minor/major counts of both.

use crate::bench::{measure, row, Row};
use crate::machine::{Machine, MachineSpec};
use anyhow::Result;
use mmkit::fs::inode::FMode;
use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use std::hint::black_box;
use std::time::Instant;

const LEN: u64 = 16 << 20;
const PAGES: u64 = LEN >> 12;

/// Host: mmap `len` anonymous bytes, write a byte per page, munmap.
pub(crate) fn host_anon_touch(len: usize) {
    // SAFETY: a private anonymous mapping we touch and unmap ourselves.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "host mmap");
        for i in (0..len).step_by(4096) {
            std::ptr::write_volatile((p as *mut u8).add(i), 1);
        }
        libc::munmap(p, len);
    }
}

/// Host: mmap `len` anonymous bytes, `MADV_HUGEPAGE`, write a byte per page, munmap.
pub(crate) fn host_anon_touch_thp(len: usize) {
    // SAFETY: a private anonymous mapping we advise, touch and unmap ourselves.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "host mmap");
        libc::madvise(p, len, libc::MADV_HUGEPAGE);
        for i in (0..len).step_by(4096) {
            std::ptr::write_volatile((p as *mut u8).add(i), 1);
        }
        libc::munmap(p, len);
    }
}

/// Host: best-of-5 ns per page of a forked child's first write to each page of a populated
/// private mapping (the COW fault), measured in the child and sent back through a pipe.
fn host_cow_per_page(len: usize) -> f64 {
    let mut best = f64::MAX;
    // SAFETY: a private anonymous mapping, populated here, unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "host mmap");
    for _ in 0..6 {
        let mut fds = [0i32; 2];
        // SAFETY: plain pipe/fork/waitpid; the child only writes memory, reads the clock,
        // writes the pipe and exits.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                let t = Instant::now();
                for i in (0..len).step_by(4096) {
                    std::ptr::write_volatile((p as *mut u8).add(i), 2);
                }
                let ns = t.elapsed().as_nanos() as f64 / (len / 4096) as f64;
                let b = ns.to_le_bytes();
                libc::write(fds[1], b.as_ptr().cast(), 8);
                libc::_exit(0);
            }
            let mut b = [0u8; 8];
            libc::read(fds[0], b.as_mut_ptr().cast(), 8);
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
            best = best.min(f64::from_le_bytes(b));
        }
    }
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, len) };
    best
}

/// Host: best-of-5 ns per fork of this process with `len` bytes of written private memory,
/// the child exiting at once (`_exit`), the parent waiting for it.
fn host_fork_exit(len: usize, forks: u64) -> f64 {
    // SAFETY: a private anonymous mapping, populated here, unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "host mmap");
    for i in (0..len).step_by(4096) {
        // SAFETY: inside our mapping.
        unsafe { std::ptr::write_volatile((p as *mut u8).add(i), 1) };
    }
    let (ns, _) = measure(forks, || {
        for _ in 0..forks {
            // SAFETY: plain fork/_exit/waitpid; the child does nothing but exit.
            unsafe {
                let pid = libc::fork();
                assert!(pid >= 0, "fork");
                if pid == 0 {
                    libc::_exit(0);
                }
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
            }
        }
    });
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, len) };
    ns
}

/// The fault rows (filter `fault`, or a row name).
pub fn fault_rows(filter: &str) -> Result<Vec<Row>> {
    let want = |n: &str| filter.is_empty() || n.starts_with(filter);
    let m = Machine::boot(&MachineSpec::default())?;
    let k = &m.kernel;
    let mut rows = Vec::new();
    let rw = PROT_READ | PROT_WRITE;
    let anon = MAP_PRIVATE | MAP_ANONYMOUS;
    if want("anon-fault") {
        let ours = m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).expect("mm");
            let r = measure(PAGES, || {
                let a = k.mmap(cpu, &mut mm, 0, LEN, rw, anon, 0).expect("mmap");
                for i in 0..PAGES {
                    k.user_write(cpu, &mut mm, a + (i << 12), &[1])
                        .expect("anonymous write fault");
                }
                k.munmap(cpu, &mut mm, a, LEN).expect("munmap");
            });
            k.exit_mmap(cpu, mm);
            r
        });
        let host = measure(PAGES, || host_anon_touch(LEN as usize));
        // Zeroing the same 16 MiB page by page: the physical limit of faults that must each
        // zero a page (the pages a fault gets are no hotter than these). A hot 4 KiB memset
        // (one buffer in L1) is reported beside it.
        let mut big = vec![0u8; LEN as usize];
        let memset = measure(PAGES, || {
            for (i, p) in big.chunks_mut(4096).enumerate() {
                p.fill(i as u8);
            }
            black_box(&mut big);
        });
        let mut buf = vec![0u8; 4096];
        let hot = measure(1_000_000, || {
            for i in 0..1_000_000u32 {
                buf.fill(i as u8);
                black_box(&mut buf);
            }
        });
        rows.push(row(
            "anon-fault",
            ours,
            "host kernel: mmap 16 MiB, write every page, munmap",
            host.0,
            Some(String::from("per 4 KiB page")),
        ));
        rows.push(row(
            "anon-fault-memset",
            ours,
            "a bare 4 KiB memset",
            hot.0,
            Some(format!(
                "ours / memset = {:.2}; zeroing each page of the same 16 MiB takes {:.1} ns ({:.2}x)",
                ours.0 / hot.0,
                memset.0,
                ours.0 / memset.0
            )),
        ));
    }
    if want("anon-fault-thp") {
        let ours = m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).expect("mm");
            let r = measure(PAGES, || {
                let a = k.mmap(cpu, &mut mm, 0, LEN, rw, anon, 0).expect("mmap");
                k.madvise(cpu, &mut mm, a, LEN, mmkit::mm::madvise::MADV_HUGEPAGE)
                    .expect("madvise");
                for i in 0..PAGES {
                    k.user_write(cpu, &mut mm, a + (i << 12), &[1])
                        .expect("anonymous write fault");
                }
                k.munmap(cpu, &mut mm, a, LEN).expect("munmap");
            });
            k.exit_mmap(cpu, mm);
            r
        });
        let host = measure(PAGES, || host_anon_touch_thp(LEN as usize));
        let mut big = vec![0u8; LEN as usize];
        let memset = measure(PAGES, || {
            for (i, p) in big.chunks_mut(4096).enumerate() {
                p.fill(i as u8);
            }
            black_box(&mut big);
        });
        rows.push(row(
            "anon-fault-thp",
            ours,
            "host kernel: mmap 16 MiB, MADV_HUGEPAGE, write every page, munmap",
            host.0,
            Some(format!(
                "per 4 KiB page; zeroing each page of the same 16 MiB takes {:.1} ns (ours {:.2}x)",
                memset.0,
                ours.0 / memset.0
            )),
        ));
    }
    if want("anon-fault-mthp64") {
        // 64 KiB mTHP `always` (one fault per 16 pages, each mapping a 64 KiB folio by 16
        // PTEs), no MADV_HUGEPAGE; the host's 64 KiB size is whatever it is and cannot be
        // changed without root, so the anchor is zeroing the same 16 MiB page by page.
        use mmkit::mm::huge_memory::ThpPolicy;
        let was = k.mthp_enabled(64).expect("64 KiB is an mTHP size");
        k.set_mthp_enabled(64, ThpPolicy::Always)
            .expect("64 KiB is an mTHP size");
        let ours = m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).expect("mm");
            let r = measure(PAGES, || {
                let a = k.mmap(cpu, &mut mm, 0, LEN, rw, anon, 0).expect("mmap");
                for i in 0..PAGES {
                    k.user_write(cpu, &mut mm, a + (i << 12), &[1])
                        .expect("anonymous write fault");
                }
                k.munmap(cpu, &mut mm, a, LEN).expect("munmap");
            });
            k.exit_mmap(cpu, mm);
            r
        });
        k.set_mthp_enabled(64, was).expect("64 KiB is an mTHP size");
        let mut big = vec![0u8; LEN as usize];
        let memset = measure(PAGES, || {
            for (i, p) in big.chunks_mut(4096).enumerate() {
                p.fill(i as u8);
            }
            black_box(&mut big);
        });
        let host =
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled")
                .map_or_else(|_| String::from("none"), |s| s.trim().to_string());
        rows.push(row(
            "anon-fault-mthp64",
            ours,
            "zeroing each page of the same 16 MiB",
            memset.0,
            Some(format!(
                "per 4 KiB page, 64 KiB mTHP always; the host's hugepages-64kB/enabled: {host}"
            )),
        ));
    }
    if want("cow-fault") {
        let ours = m.on_cpu(0, |cpu| {
            let mut parent = k.mm_alloc(cpu).expect("mm");
            let a = k.mmap(cpu, &mut parent, 0, LEN, rw, anon, 0).expect("mmap");
            for i in 0..PAGES {
                k.user_write(cpu, &mut parent, a + (i << 12), &[1])
                    .expect("write");
            }
            let mut best = (f64::MAX, f64::MAX);
            for _ in 0..6 {
                let mut child = k.dup_mmap(cpu, &parent).expect("fork");
                let r = measure_once(PAGES, || {
                    for i in 0..PAGES {
                        k.user_write(cpu, &mut child, a + (i << 12), &[2])
                            .expect("COW fault");
                    }
                });
                k.exit_mmap(cpu, child);
                if r.0 < best.0 {
                    best = r;
                }
            }
            k.exit_mmap(cpu, parent);
            best
        });
        let host = host_cow_per_page(LEN as usize);
        rows.push(row(
            "cow-fault",
            ours,
            "host kernel: a forked child's first write to each page",
            host,
            Some(String::from("per 4 KiB page, fork not timed")),
        ));
    }
    // fork-exit with 4 KiB pages, then with the 16 MiB in 64 KiB mTHP folios (`always`),
    // which fork copies and exit zaps a folio's run of PTEs at a time.
    for (name, mthp) in [("fork-exit", false), ("fork-exit-mthp64", true)] {
        if !want(name) {
            continue;
        }
        use mmkit::mm::huge_memory::ThpPolicy;
        const FORKS: u64 = 20;
        let was = k.mthp_enabled(64).expect("64 KiB is an mTHP size");
        if mthp {
            k.set_mthp_enabled(64, ThpPolicy::Always)
                .expect("64 KiB is an mTHP size");
        }
        let (ours, vmas) = m.on_cpu(0, |cpu| {
            let mut parent = k.mm_alloc(cpu).expect("mm");
            let a = k.mmap(cpu, &mut parent, 0, LEN, rw, anon, 0).expect("mmap");
            for i in 0..PAGES {
                k.user_write(cpu, &mut parent, a + (i << 12), &[1])
                    .expect("write");
            }
            // Small mappings, every other one read-only so that they stay separate VMAs.
            for j in 0..32 {
                let s = k
                    .mmap(cpu, &mut parent, 0, 2 << 12, rw, anon, 0)
                    .expect("mmap");
                k.user_write(cpu, &mut parent, s, &[1]).expect("write");
                if j % 2 == 1 {
                    k.mprotect(cpu, &mut parent, s, 2 << 12, PROT_READ)
                        .expect("mprotect");
                }
            }
            let r = measure(FORKS, || {
                for _ in 0..FORKS {
                    let child = k.dup_mmap(cpu, &parent).expect("fork");
                    k.exit_mmap(cpu, child);
                }
            });
            let vmas = parent.map_count();
            k.exit_mmap(cpu, parent);
            (r, vmas)
        });
        k.set_mthp_enabled(64, was).expect("64 KiB is an mTHP size");
        let host = host_fork_exit(LEN as usize, FORKS);
        rows.push(row(
            name,
            ours,
            "host kernel: fork with 16 MiB written, the child exits at once, waitpid",
            host,
            Some(if mthp {
                format!("per fork; {vmas} VMAs; ours in 64 KiB folios, the host's as it is set")
            } else {
                format!("per fork; {vmas} VMAs")
            }),
        ));
    }
    for huge in [false, true] {
        let name = if huge {
            "file-read-fault-thp"
        } else {
            "file-read-fault"
        };
        if want(name) {
            rows.push(file_read_fault_row(&m, name, huge)?);
        }
    }
    if want("fault-count") {
        let dir = crate::tempfiles::PrivateDir::new("mmkit-bench.")?;
        for c in crate::fault_counts::compare(&m, dir.path())? {
            let faults = |f: mmkit::mm::uaccess::FaultCounts| (f.min_flt + f.maj_flt).max(1);
            let per = c.ours_ns as f64 / faults(c.ours) as f64;
            rows.push(row(
                &format!("fault-count-{}", c.name),
                (per, 0.0),
                "host kernel, same pattern (ns per fault)",
                c.host_ns as f64 / faults(c.host) as f64,
                Some(format!(
                    "faults minor/major: ours {}/{}, host {}/{}",
                    c.ours.min_flt, c.ours.maj_flt, c.host.min_flt, c.host.maj_flt
                )),
            ));
        }
    }
    Ok(rows)
}

/// One timed run of `f` (which performs `ops` operations): (ns, TSC ticks) per op.
fn measure_once(ops: u64, f: impl FnOnce()) -> (f64, f64) {
    let (t, c) = (Instant::now(), crate::bench::tsc());
    f();
    (
        t.elapsed().as_nanos() as f64 / ops as f64,
        (crate::bench::tsc() - c) as f64 / ops as f64,
    )
}

/// Host: map `LEN` bytes of `file` privately read-only (with `MADV_HUGEPAGE` when `huge`).
fn host_map_file(file: &std::fs::File, huge: bool) -> *mut libc::c_void {
    use std::os::fd::AsRawFd;
    // SAFETY: a new private read-only mapping of our file at an address of the kernel's
    // choosing; the caller unmaps it with `host_unmap_file`.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            LEN as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert!(p != libc::MAP_FAILED, "host mmap");
        if huge {
            libc::madvise(p, LEN as usize, libc::MADV_HUGEPAGE);
        }
        p
    }
}

/// Host: read a byte of every page of a mapping `host_map_file` made.
fn host_read_pages(p: *mut libc::c_void) {
    for i in (0..LEN as usize).step_by(4096) {
        // SAFETY: inside the `LEN`-byte readable mapping at `p`.
        black_box(unsafe { std::ptr::read_volatile((p as *const u8).add(i)) });
    }
}

/// Host: unmap what `host_map_file` mapped.
fn host_unmap_file(p: *mut libc::c_void) {
    // SAFETY: exactly the mapping `host_map_file` made, no longer used.
    unsafe { libc::munmap(p, LEN as usize) };
}

/// The host's loop of `file_read_fault_row` over a mapping populated first: what its loads
/// cost by themselves (ns per page).
fn host_populated_reads(file: &std::fs::File, huge: bool) -> f64 {
    let p = host_map_file(file, huge);
    host_read_pages(p);
    let r = measure(PAGES, || host_read_pages(p));
    host_unmap_file(p);
    r.0
}

/// `file-read-fault` / `file-read-fault-thp`: mmap a 16 MiB file privately (with
/// `MADV_HUGEPAGE` on both sides when `huge`), read a byte of every page, munmap; per page,
/// the warm-up round having cached the file on both sides.
fn file_read_fault_row(m: &Machine, name: &str, huge: bool) -> Result<Row> {
    use mmkit::mm::madvise::MADV_HUGEPAGE;
    let k = &m.kernel;
    let dir = crate::tempfiles::PrivateDir::new("mmkit-bench.")?;
    let path = dir.path().join("file");
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data)?;
    let ours = m.on_cpu(0, |cpu| -> Result<((f64, f64), f64)> {
        let inode = m.hostfs.inode(k, cpu, &path)?;
        // The write that made the file, through our write path as through the host's
        // (what a forwarded write does once the host has the bytes).
        k.generic_perform_write(cpu, &inode, 0, &data);
        let f = k.open(&inode, FMode::READ)?;
        let mut mm = k.mm_alloc(cpu)?;
        let mut b = [0u8; 1];
        let r = measure(PAGES, || {
            let a = k
                .do_mmap(cpu, &mut mm, Some(&f), 0, LEN, PROT_READ, MAP_PRIVATE, 0)
                .expect("mmap");
            if huge {
                k.madvise(cpu, &mut mm, a, LEN, MADV_HUGEPAGE)
                    .expect("madvise");
            }
            for i in 0..PAGES {
                k.user_read(cpu, &mut mm, a + (i << 12), &mut b)
                    .expect("read");
            }
            k.munmap(cpu, &mut mm, a, LEN).expect("munmap");
        });
        // The same reads over the mapping once populated: what the software MMU's loads
        // cost by themselves (TLB hits but for a walk per page, or per 2 MiB with THPs).
        let a = k.do_mmap(cpu, &mut mm, Some(&f), 0, LEN, PROT_READ, MAP_PRIVATE, 0)?;
        if huge {
            k.madvise(cpu, &mut mm, a, LEN, MADV_HUGEPAGE)?;
        }
        let populate = |mm: &mut mmkit::mm::mm_types::MmStruct, b: &mut [u8; 1]| {
            for i in 0..PAGES {
                k.user_read(cpu, mm, a + (i << 12), b).expect("read");
            }
        };
        populate(&mut mm, &mut b);
        let reads = measure(PAGES, || populate(&mut mm, &mut b));
        k.munmap(cpu, &mut mm, a, LEN)?;
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        Ok((r, reads.0))
    })?;
    let (ours, reads) = ours;
    let file = std::fs::File::open(&path)?;
    let host_reads = host_populated_reads(&file, huge);
    let host = measure(PAGES, || {
        let p = host_map_file(&file, huge);
        host_read_pages(p);
        host_unmap_file(p);
    });
    let note = format!(
        "per 4 KiB page; {}; the reads alone over the mapping populated: ours (the software \
         MMU) {reads:.1} ns, the host's {host_reads:.1} ns; so faults, mapping and munmap: \
         ours {:.1} ns, the host's {:.1} ns",
        if huge {
            "file THPs, one PMD per 2 MiB on both sides"
        } else {
            "both cached as the write that made the file left it"
        },
        ours.0 - reads,
        host.0 - host_reads,
    );
    Ok(row(
        name,
        ours,
        &format!(
            "host kernel: mmap a cached 16 MiB file{}, read every page, munmap",
            if huge { ", MADV_HUGEPAGE" } else { "" }
        ),
        host.0,
        Some(note),
    ))
}
