//! `mmkit bench reclaim`: swap and reclaim beside the device and the host.
//!
//! - `swap-out-in`: a process on a 128 MiB machine writes 1.5x RAM and reads it back (the
//!   second of two passes is timed, every byte checked); time per page swapped (out or in, the pages counted by `pswpout` + `pswpin`), beside raw 4 KiB
//!   `pwrite` then `pread` of the same number of pages of the same swap file (the physical
//!   limit of the device the pages go to);
//! - `reclaim-scan`: direct reclaim over a page cache larger than free memory; time per
//!   page scanned (`pgscan_direct`), beside a host `pread` of 4 KiB from its page cache
//!   (what refetching a dropped clean page costs at best).

use crate::bench::{row, Row};
use crate::exec::{spawn_host, true_spec};
use crate::hostfs::make_swap_file;
use crate::machine::{Machine, MachineSpec};
use anyhow::Result;
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::fs::inode::{FMode, RamFile};
use mmkit::fs::proc::vmstat::vm_event;
use mmkit::kernel::task::TaskTable;
use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use std::os::unix::fs::FileExt;
use std::time::Instant;

fn small_machine() -> Result<Machine> {
    Machine::boot(&MachineSpec {
        e820: E820Table::for_mem_size(128 << 20)?,
        cpus: 1,
        cmdline: String::new(),
    })
}

/// The reclaim rows.
pub fn reclaim_rows(filter: &str) -> Result<Vec<Row>> {
    let want = |n: &str| filter.is_empty() || n.starts_with(filter);
    let mut rows = Vec::new();
    if want("swap-out-in") {
        let mut best = (f64::MAX, 0.0, 0u64);
        let dir = crate::tempfiles::PrivateDir::new("mmkit-bench.")?;
        for _ in 0..3 {
            let m = small_machine()?;
            let k = &m.kernel;
            let path = dir.path().join("swap");
            let f = make_swap_file(&path, 256 << 20)?;
            k.swapon(std::sync::Arc::new(f), &path.to_string_lossy(), -2)?;
            let pages = k.totalram_pages() * 3 / 2;
            let mut tasks = TaskTable::default();
            let (ns, swapped) = m.on_cpu(0, |cpu| -> Result<(f64, u64)> {
                let pid = spawn_host(&m, &mut tasks, cpu, &true_spec())?;
                let mm = tasks.mm_mut(pid)?;
                let a = k.mmap(
                    cpu,
                    mm,
                    0,
                    pages << 12,
                    PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS,
                    0,
                )?;
                // A first pass warms the simulated RAM (its host pages fault in once); the
                // second pass is timed.
                let mut before = 0;
                let mut t = Instant::now();
                for pass in 0..2u8 {
                    if pass == 1 {
                        before = vm_event(k, "pswpout").unwrap_or(0)
                            + vm_event(k, "pswpin").unwrap_or(0);
                        t = Instant::now();
                    }
                    for i in 0..pages {
                        k.user_write(cpu, mm, a + (i << 12), &[pass])
                            .map_err(|s| anyhow::anyhow!("{s}"))?;
                    }
                    let mut b = [0u8];
                    for i in 0..pages {
                        k.user_read(cpu, mm, a + (i << 12), &mut b)
                            .map_err(|s| anyhow::anyhow!("{s}"))?;
                        anyhow::ensure!(b[0] == pass, "page {i} read back wrong");
                    }
                }
                let el = t.elapsed().as_nanos() as f64;
                let swapped = vm_event(k, "pswpout").unwrap_or(0)
                    + vm_event(k, "pswpin").unwrap_or(0)
                    - before;
                tasks.exit(k, cpu, pid, 0)?;
                k.swapoff(cpu, &path.to_string_lossy())?;
                Ok((el / swapped.max(1) as f64, swapped))
            })?;
            if ns < best.0 {
                best = (ns, 0.0, swapped);
            }
        }
        // The device: the same number of 4 KiB writes then reads of the swap file.
        let path = dir.path().join("raw");
        let f = make_swap_file(&path, 256 << 20)?;
        drop(f);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let n = best.2.max(1);
        let half = n / 2;
        let buf = [5u8; 4096];
        let mut rb = [0u8; 4096];
        let slots = (256 << 20) / 4096 - 1;
        let mut anchor = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for i in 0..half {
                file.write_all_at(&buf, ((i % slots) + 1) * 4096)?;
            }
            for i in 0..n - half {
                file.read_exact_at(&mut rb, ((i % slots) + 1) * 4096)?;
            }
            anchor = anchor.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        rows.push(row(
            "swap-out-in",
            (best.0, best.1),
            "raw 4 KiB pwrite/pread of the swap file",
            anchor,
            Some(format!(
                "{} pages swapped; {:.0} pages/s ours, {:.0} pages/s device",
                best.2,
                1e9 / best.0,
                1e9 / anchor
            )),
        ));
    }
    if want("reclaim-scan") {
        let m = small_machine()?;
        let k = &m.kernel;
        let pages = k.totalram_pages();
        let inode = k.new_inode(
            Box::new(RamFile::new(vec![3u8; (pages << 12) as usize])),
            (0, 2),
            1,
            "/cache",
        );
        let ns = m.on_cpu(0, |cpu| -> Result<f64> {
            let f = k.open(&inode, FMode::READ)?;
            // Fill the cache: read the file through read(2)'s path.
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < pages << 12 {
                off += k.filemap_read(cpu, &inode, off, &mut buf)? as u64;
            }
            let before = vm_event(k, "pgscan_direct").unwrap_or(0);
            let t = Instant::now();
            for _ in 0..200 {
                k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            }
            let el = t.elapsed().as_nanos() as f64;
            let scanned = vm_event(k, "pgscan_direct").unwrap_or(0) - before;
            k.fput(cpu, f);
            k.evict_inode(cpu, &inode)?;
            Ok(el / scanned.max(1) as f64)
        })?;
        let dir = crate::tempfiles::PrivateDir::new("mmkit-bench.")?;
        let path = dir.path().join("cached");
        std::fs::write(&path, vec![1u8; 16 << 20])?;
        let file = std::fs::File::open(&path)?;
        let mut rb = [0u8; 4096];
        let mut anchor = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for i in 0..4096u64 {
                file.read_exact_at(&mut rb, i * 4096)?;
            }
            anchor = anchor.min(t.elapsed().as_nanos() as f64 / 4096.0);
        }
        rows.push(row(
            "reclaim-scan",
            (ns, 0.0),
            "host pread of 4 KiB from its page cache",
            anchor,
            Some(String::from(
                "per page scanned by direct reclaim (clean page cache)",
            )),
        ));
    }
    Ok(rows)
}
