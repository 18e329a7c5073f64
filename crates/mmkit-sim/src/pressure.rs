//! The pressure scenario (`mmkit run --scenario pressure`): a process exec'd on a small
//! machine with a swap file writes one and a half times RAM and reads it back, on CPU 0,
//! while kswapd runs on CPU 1 whenever the allocator wakes it (for every node). Free pages and
//! node 0's largest zone's min/low/high watermarks are sampled over time and drawn, with
//! kswapd's wake-ups marked, as an SVG chart.
//!
//! The swap file (twice RAM) lives in a private temporary directory
//! ([`crate::tempfiles::PrivateDir`]): never a fixed path another user could plant a symlink
//! at or another run could share, and removed when the run ends or is interrupted.

use crate::exec::{spawn_host, true_spec};
use crate::hostfs::make_swap_file;
use crate::machine::{Machine, MachineSpec};
use crate::tempfiles::PrivateDir;
use anyhow::{bail, Context, Result};
use mmkit::fs::proc::vmstat::vm_event;
use mmkit::kernel::task::TaskTable;
use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use mmkit::mm::mmzone::Wmark;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One sample: time (ms), free pages, and the watermarks of the node's largest zone.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Milliseconds since the start.
    pub ms: f64,
    /// Free pages in the zone.
    pub free: u64,
    /// `min`, `low`, `high`.
    pub wmarks: [u64; 3],
}

/// What the scenario measured.
pub struct Report {
    /// Samples over time.
    pub samples: Vec<Sample>,
    /// Times (ms) kswapd ran.
    pub kswapd_runs: Vec<f64>,
    /// Pages the process wrote and checked.
    pub pages: u64,
    /// `/proc/vmstat` lines of interest after the run.
    pub stats: Vec<(String, u64)>,
}

/// Run the scenario on a machine of `mem` bytes, with its swap file in a private directory
/// under `parent` (see [`run_spec`]).
pub fn run(mem: u64, parent: &Path) -> Result<Report> {
    let spec = MachineSpec {
        e820: mmkit::arch::x86_64::e820::E820Table::for_mem_size(mem)?,
        cpus: 2,
        cmdline: String::new(),
    };
    run_spec(&Machine::boot(&spec)?, parent)
}

/// Run the scenario on the booted machine `m` (at least 2 CPUs: the process on CPU 0,
/// kswapd on CPU 1), with a swap file of twice its RAM in a new private directory under
/// `parent`, removed when the run ends.
pub fn run_spec(m: &Machine, parent: &Path) -> Result<Report> {
    let k = &m.kernel;
    if k.nr_cpus() < 2 {
        bail!(
            "the pressure scenario needs at least 2 CPUs (the process on CPU 0, kswapd on CPU 1)"
        );
    }
    let dir = PrivateDir::new_in(parent, "mmkit-pressure.")?;
    let swap_path = dir.path().join("swap");
    let ram = k.totalram_pages() << 12;
    let swap = make_swap_file(&swap_path, (ram * 2).max(1 << 20))?;
    k.swapon(std::sync::Arc::new(swap), &swap_path.to_string_lossy(), -2)?;
    let zone = k.nodes[0]
        .zones
        .iter()
        .max_by_key(|z| z.managed())
        .context("a zone")?;
    let pages = k.totalram_pages() * 3 / 2;
    let start = Instant::now();
    let samples = Mutex::new(Vec::new());
    let runs = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let sample = || {
        samples.lock().expect("samples").push(Sample {
            ms: start.elapsed().as_secs_f64() * 1e3,
            free: zone.free_pages().max(0) as u64,
            wmarks: [Wmark::Min, Wmark::Low, Wmark::High].map(|w| zone.wmark(w)),
        });
    };
    let mut tasks = TaskTable::default();
    let bar = crate::progress::bar(pages * 2, "pressure: pages");
    let result: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            m.on_cpu(1, |cpu| {
                while !done.load(Ordering::Relaxed) {
                    let mut ran = false;
                    for nid in 0..k.nodes.len() {
                        if k.kswapd_woken(nid) {
                            runs.lock()
                                .expect("runs")
                                .push(start.elapsed().as_secs_f64() * 1e3);
                            k.balance_pgdat(cpu, nid);
                            ran = true;
                        }
                    }
                    if !ran {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                }
            })
        });
        let r = m.on_cpu(0, |cpu| -> Result<()> {
            let pid = spawn_host(m, &mut tasks, cpu, &true_spec())?;
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
            for i in 0..pages {
                let v = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes();
                k.user_write(cpu, mm, a + (i << 12) + 8, &v)
                    .map_err(|s| anyhow::anyhow!("{s}"))?;
                if i % 64 == 0 {
                    sample();
                    bar.inc(64);
                }
            }
            let mut b = [0u8; 4];
            for i in 0..pages {
                k.user_read(cpu, mm, a + (i << 12) + 8, &mut b)
                    .map_err(|s| anyhow::anyhow!("{s}"))?;
                if b != (i as u32).wrapping_mul(2_654_435_761).to_le_bytes() {
                    bail!("page {i} read back wrong after swap");
                }
                if i % 64 == 0 {
                    sample();
                    bar.inc(64);
                }
            }
            tasks.exit(k, cpu, pid, 0)?;
            Ok(())
        });
        done.store(true, Ordering::Relaxed);
        r
    });
    bar.finish_and_clear();
    result?;
    m.on_cpu(0, |cpu| k.swapoff(cpu, &swap_path.to_string_lossy()))?;
    drop(dir);
    let stats = [
        "pswpout",
        "pswpin",
        "pgscan_kswapd",
        "pgsteal_kswapd",
        "pgscan_direct",
        "pgsteal_direct",
        "allocstall_normal",
        "pgmajfault",
        "kswapd_low_wmark_hit_quickly",
        "kswapd_high_wmark_hit_quickly",
    ]
    .iter()
    .map(|n| (n.to_string(), vm_event(k, n).unwrap_or(0)))
    .collect();
    Ok(Report {
        samples: samples.into_inner().expect("samples"),
        kswapd_runs: runs.into_inner().expect("runs"),
        pages,
        stats,
    })
}

/// Draw free pages against the watermarks over time, kswapd runs as ticks, into `path`.
pub fn draw_svg(r: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let t_max = r.samples.last().map_or(1.0, |s| s.ms).max(1.0);
    // The interesting band is around the watermarks: show up to four times `high` (free
    // memory starts far above it and leaves the chart at the top until pressure builds).
    let high = r.samples.iter().map(|s| s.wmarks[2]).max().unwrap_or(1);
    let y_max = (high * 4) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mmkit pressure: free pages vs watermarks (kswapd runs marked)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (ms)")
        .y_desc("pages")
        .draw()?;
    let series = |f: &dyn Fn(&Sample) -> u64| -> Vec<(f64, f64)> {
        r.samples
            .iter()
            .map(|s| (s.ms, (f(s) as f64).min(y_max)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(series(&|s| s.free), &BLUE))?
        .label("free")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    for (i, (name, color)) in [("min", RED), ("low", MAGENTA), ("high", GREEN)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_series(LineSeries::new(series(&|s| s.wmarks[i]), color))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.draw_series(
        r.kswapd_runs
            .iter()
            .map(|&t| PathElement::new(vec![(t, 0.0), (t, y_max * 0.04)], BLACK)),
    )?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
