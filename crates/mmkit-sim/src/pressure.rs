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
use std::time::{Duration, Instant};

/// One sample: time (ms), free pages and the watermarks of the node's largest zone, and the
/// machine's LRU sizes and swap use.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Milliseconds since the start.
    pub ms: f64,
    /// Free pages in the zone.
    pub free: u64,
    /// `min`, `low`, `high`.
    pub wmarks: [u64; 3],
    /// Pages on the anonymous LRU lists (active + inactive), every node.
    pub anon: u64,
    /// Pages on the file LRU lists (active + inactive), every node.
    pub file: u64,
    /// Swap slots in use.
    pub swap_used: u64,
}

/// What the scenario measured.
pub struct Report {
    /// Samples over time.
    pub samples: Vec<Sample>,
    /// Times (ms) kswapd ran.
    pub kswapd_runs: Vec<f64>,
    /// Process starts and exits: time (ms) and what happened (`start pid 1`, `exit 137`).
    pub marks: Vec<(f64, String)>,
    /// Pages the process wrote and checked.
    pub pages: u64,
    /// `/proc/vmstat` lines of interest after the run.
    pub stats: Vec<(String, u64)>,
}

/// The `/proc/vmstat` counters a pressure run reports.
pub const STATS: [&str; 11] = [
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
    "oom_kill",
];

/// The [`STATS`] counters of `k` now.
pub fn stats(k: &mmkit::Kernel) -> Vec<(String, u64)> {
    STATS
        .iter()
        .map(|n| (n.to_string(), vm_event(k, n).unwrap_or(0)))
        .collect()
}

/// A swap file made as `mkswap` makes one, in a new private directory, and swapped on;
/// [`SwapFile::off`] swaps it off, and the directory goes when this is dropped (or the
/// process is interrupted).
pub struct SwapFile {
    dir: PrivateDir,
    path: String,
    /// Its size in pages (the header page included).
    pub pages: u64,
}

impl SwapFile {
    /// Make a swap file of `bytes` in a new private directory under `parent` and swap it on
    /// for `m` (priority -2, as the first `swapon` without `-p`).
    pub fn on(m: &Machine, bytes: u64, parent: &Path) -> Result<Self> {
        let dir = PrivateDir::new_in(parent, "mmkit-swap.")?;
        let p = dir.path().join("swap");
        let swap = make_swap_file(&p, bytes)?;
        let path = p.to_string_lossy().into_owned();
        m.kernel
            .swapon(std::sync::Arc::new(swap), &path, -2)
            .map_err(|e| anyhow::anyhow!("swapon {path}: {e}"))?;
        Ok(Self {
            dir,
            path,
            pages: bytes >> 12,
        })
    }

    /// Its path (in the private directory).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `swapoff`, then remove the file and its directory.
    pub fn off(self, m: &Machine) -> Result<()> {
        m.on_cpu(0, |cpu| m.kernel.swapoff(cpu, &self.path))
            .map_err(|e| anyhow::anyhow!("swapoff {}: {e}", self.path))?;
        drop(self.dir);
        Ok(())
    }
}

/// What a pressure run watches: samples of free pages against the watermarks, LRU sizes and
/// swap use, kswapd's runs, and process starts and exits, all timed from one start.
pub struct Watch<'m> {
    m: &'m Machine,
    zone: &'m mmkit::mm::mmzone::Zone,
    start: Instant,
    samples: Mutex<Vec<Sample>>,
    runs: Mutex<Vec<f64>>,
    marks: Mutex<Vec<(f64, String)>>,
}

impl<'m> Watch<'m> {
    /// Start watching `m` (node 0's largest zone for free pages and watermarks).
    pub fn new(m: &'m Machine) -> Result<Self> {
        let zone = m.kernel.nodes[0]
            .zones
            .iter()
            .max_by_key(|z| z.managed())
            .context("a zone")?;
        Ok(Self {
            m,
            zone,
            start: Instant::now(),
            samples: Mutex::new(Vec::new()),
            runs: Mutex::new(Vec::new()),
            marks: Mutex::new(Vec::new()),
        })
    }

    /// Milliseconds since the start.
    pub fn ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Take one sample now (from any thread: it needs no CPU).
    pub fn sample(&self) {
        use mmkit::mm::mmzone::{
            LRU_ACTIVE_ANON, LRU_ACTIVE_FILE, LRU_INACTIVE_ANON, LRU_INACTIVE_FILE,
        };
        let k = &self.m.kernel;
        let lru = |l| (0..k.nodes.len()).map(|n| k.lru_size(n, l)).sum::<u64>();
        let (total, free, _) = k.swap_totals();
        let s = Sample {
            ms: self.ms(),
            free: self.zone.free_pages().max(0) as u64,
            wmarks: [Wmark::Min, Wmark::Low, Wmark::High].map(|w| self.zone.wmark(w)),
            anon: lru(LRU_ACTIVE_ANON) + lru(LRU_INACTIVE_ANON),
            file: lru(LRU_ACTIVE_FILE) + lru(LRU_INACTIVE_FILE),
            swap_used: total.saturating_sub(free),
        };
        self.samples.lock().expect("samples").push(s);
    }

    /// Mark an event on the time axis (a process start or exit).
    pub fn mark(&self, what: impl Into<String>) {
        let t = self.ms();
        self.marks.lock().expect("marks").push((t, what.into()));
    }

    /// Sample every `period` until `done`.
    pub fn sampler(&self, period: Duration, done: &AtomicBool) {
        while !done.load(Ordering::Acquire) {
            self.sample();
            std::thread::sleep(period);
        }
        self.sample();
    }

    /// kswapd on simulated CPU `cpu` until `done`: whenever the allocator has woken a node's
    /// kswapd, one `balance_pgdat` of that node (each run timed); in between it sleeps on
    /// the machine's [`KswapdWait`](crate::machine::KswapdWait) until `wakeup_kswapd` or
    /// the end of the run wakes it (`kswapd_try_to_sleep`). It holds the CPU only while it
    /// reclaims, as a kthread scheduled there would, so a task running on that CPU waits
    /// only for the runs.
    pub fn kswapd(&self, cpu: usize, done: &AtomicBool) {
        let k = &self.m.kernel;
        let woken = || (0..k.nodes.len()).any(|nid| k.kswapd_woken(nid));
        loop {
            self.m
                .kswapd_wait
                .sleep_until(|| done.load(Ordering::Acquire) || woken());
            if done.load(Ordering::Acquire) {
                return;
            }
            for nid in 0..k.nodes.len() {
                if k.kswapd_woken(nid) {
                    self.runs.lock().expect("runs").push(self.ms());
                    self.m.on_cpu(cpu, |c| k.balance_pgdat(c, nid));
                }
            }
        }
    }

    /// Run `f` with kswapd on CPU `kswapd_cpu` and, with `period`, a sampler beside it;
    /// both stop when `f` returns.
    pub fn around<R>(
        &self,
        kswapd_cpu: usize,
        period: Option<Duration>,
        f: impl FnOnce() -> R,
    ) -> R {
        let done = &AtomicBool::new(false);
        std::thread::scope(|s| {
            // Named as Linux names node 0's (one thread serves every node here).
            std::thread::Builder::new()
                .name("kswapd0".into())
                .spawn_scoped(s, move || self.kswapd(kswapd_cpu, done))
                .expect("spawning kswapd");
            if let Some(p) = period {
                s.spawn(move || self.sampler(p, done));
            }
            // Stop them however `f` ends (a panic too: the scope would wait forever), waking
            // kswapd from its sleep.
            struct Stop<'a>(&'a AtomicBool, &'a crate::machine::KswapdWait);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                    self.1.wake();
                }
            }
            let _stop = Stop(done, &self.m.kswapd_wait);
            f()
        })
    }

    /// The report: what was watched, with `pages` and the counters of [`STATS`].
    pub fn report(self, pages: u64) -> Report {
        let stats = stats(&self.m.kernel);
        Report {
            samples: self.samples.into_inner().expect("samples"),
            kswapd_runs: self.runs.into_inner().expect("runs"),
            marks: self.marks.into_inner().expect("marks"),
            pages,
            stats,
        }
    }
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
    let ram = k.totalram_pages() << 12;
    let swap = SwapFile::on(m, (ram * 2).max(1 << 20), parent)?;
    let pages = k.totalram_pages() * 3 / 2;
    let watch = Watch::new(m)?;
    let mut tasks = TaskTable::default();
    let bar = crate::progress::bar(pages * 2, "pressure: pages");
    let result: Result<()> = watch.around(1, None, || {
        m.on_cpu(0, |cpu| -> Result<()> {
            let pid = spawn_host(m, &mut tasks, cpu, &true_spec())?;
            watch.mark(format!("start pid {pid}"));
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
                    watch.sample();
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
                    watch.sample();
                    bar.inc(64);
                }
            }
            tasks.exit(k, cpu, pid, 0)?;
            watch.mark("exit 0");
            watch.sample();
            Ok(())
        })
    });
    bar.finish_and_clear();
    result?;
    swap.off(m)?;
    Ok(watch.report(pages))
}

/// Most points a series gets in the chart: longer runs are thinned (each kept point is
/// the lowest free count, or the last value, of its stretch), so the SVG stays small.
const MAX_POINTS: usize = 1500;

/// Draw the run into `path` as an SVG chart of two panels over the same time axis: above,
/// free pages of node 0's largest zone against its min/low/high watermarks, with kswapd's
/// runs as ticks along the bottom; below, the anonymous and file LRU sizes and swap used.
/// Process starts and exits are vertical lines across both.
pub fn draw_svg(r: &Report, path: &Path) -> Result<()> {
    draw_svg_titled(
        r,
        path,
        "mmkit pressure: free pages vs watermarks (kswapd runs marked)",
    )
}

/// [`draw_svg`] with a title of the caller's.
pub fn draw_svg_titled(r: &Report, path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let t_max = r
        .samples
        .iter()
        .map(|s| s.ms)
        .chain(r.marks.iter().map(|m| m.0))
        .fold(1.0f64, f64::max);
    // Thin the samples: the minimum of `free` in each stretch (the dips are the story),
    // the last value of the others.
    let step = r.samples.len().div_ceil(MAX_POINTS).max(1);
    let thinned: Vec<Sample> = r
        .samples
        .chunks(step)
        .map(|c| {
            let mut s = *c.last().expect("chunks are not empty");
            s.free = c.iter().map(|x| x.free).min().unwrap_or(s.free);
            s
        })
        .collect();
    // The interesting band is around the watermarks: show up to four times `high` (free
    // memory starts far above it and leaves the chart at the top until pressure builds).
    let high = r.samples.iter().map(|s| s.wmarks[2]).max().unwrap_or(1);
    let y_max = (high * 4).max(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (ms)")
        .y_desc("free pages")
        .draw()?;
    let series = |f: &dyn Fn(&Sample) -> u64, cap: f64| -> Vec<(f64, f64)> {
        thinned
            .iter()
            .map(|s| (s.ms, (f(s) as f64).min(cap)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(series(&|s| s.free, y_max), &BLUE))?
        .label("free")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    for (i, (name, color)) in [("min", RED), ("low", MAGENTA), ("high", GREEN)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_series(LineSeries::new(series(&|s| s.wmarks[i], y_max), color))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    // kswapd runs: one tick per run, at most one per thousandth of the time axis.
    let mut ticks: Vec<f64> = r
        .kswapd_runs
        .iter()
        .map(|&t| (t / t_max * 1000.0).floor())
        .collect();
    ticks.dedup();
    chart
        .draw_series(ticks.iter().map(|&b| {
            let t = b * t_max / 1000.0;
            PathElement::new(vec![(t, 0.0), (t, y_max * 0.04)], BLACK)
        }))?
        .label(format!("kswapd runs ({})", r.kswapd_runs.len()))
        .legend(|(x, y)| PathElement::new(vec![(x + 10, y - 5), (x + 10, y + 5)], BLACK));
    let marks = |y1: f64| {
        r.marks
            .iter()
            .map(move |(t, _)| PathElement::new(vec![(*t, 0.0), (*t, y1)], BLACK.mix(0.5)))
    };
    chart.draw_series(marks(y_max))?;
    // Each mark's label beside its line: on the right of it, or on the left near the end.
    chart.draw_series(r.marks.iter().map(|(t, what)| {
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let h = if *t > t_max * 0.8 {
            HPos::Right
        } else {
            HPos::Left
        };
        let style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(h, VPos::Bottom));
        Text::new(format!(" {what} "), (*t, y_max * 0.06), style)
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    // Below: LRU sizes and swap used, in MiB.
    let mib = |p: u64| p as f64 / 256.0;
    let y2 = r
        .samples
        .iter()
        .map(|s| s.anon.max(s.file).max(s.swap_used))
        .max()
        .map_or(1.0, |p| mib(p).max(1.0) * 1.05);
    let mut lower = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y2)?;
    lower
        .configure_mesh()
        .x_desc("time (ms)")
        .y_desc("MiB")
        .draw()?;
    let series2 = |f: &dyn Fn(&Sample) -> u64| -> Vec<(f64, f64)> {
        thinned.iter().map(|s| (s.ms, mib(f(s)))).collect()
    };
    for (name, color, f) in [
        (
            "anon LRU",
            RED,
            &(|s: &Sample| s.anon) as &dyn Fn(&Sample) -> u64,
        ),
        ("file LRU", BLUE, &|s: &Sample| s.file),
        ("swap used", BLACK, &|s: &Sample| s.swap_used),
    ] {
        lower
            .draw_series(LineSeries::new(series2(f), color))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    lower.draw_series(marks(y2))?;
    lower
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
