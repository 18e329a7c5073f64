//! `mmkit`: boot a simulated machine running the mmkit memory-management library, watch it,
//! and measure it.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::cmdline::memparse;
use mmkit_sim::machine::{Machine, MachineSpec};
use mmkit_sim::{bench, cli, procfs, workload};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mmkit",
    version,
    about = "The Linux memory-management subsystem in Rust, on a simulated machine",
    after_help = "Without arguments, mmkit runs the main job: a real program (python3, or ls without it) on the default machine under /dev/kvm, and what it did to memory; without a usable /dev/kvm, the synthetic workload of `mmkit run`. With run's options and no subcommand, mmkit is `mmkit run`.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a machine, print its boot log and its /proc memory views.
    Boot {
        #[command(flatten)]
        machine: MachineArgs,
        /// Write the /proc views as files into this folder instead of printing them.
        #[arg(long)]
        proc_dir: Option<PathBuf>,
    },
    /// Boot a machine and run an allocation workload on every CPU, printing the views
    /// before and after (the default command).
    Run(RunArgs),
    /// Run a host executable on mmkit (under /dev/kvm): every page it touches is mmkit's,
    /// its faults and memory system calls are handled by mmkit, the rest go to the host.
    /// Options come before PROG; everything after it is the program's.
    Exec {
        #[command(flatten)]
        machine: MachineArgs,
        /// Disable address-space randomization (as `setarch -R`).
        #[arg(long)]
        no_aslr: bool,
        /// Do not run: print /proc/PID/maps as exec left it.
        #[arg(long)]
        maps: bool,
        /// Do not run: print /proc/PID/smaps as exec left it.
        #[arg(long)]
        smaps: bool,
        /// An environment string NAME=value (repeatable); without any, the caller's
        /// environment is passed.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Print every system call as strace does (to stderr).
        #[arg(long)]
        strace: bool,
        /// Print every page fault: address, ip, error code, kind, minor/major (to stderr).
        #[arg(long)]
        trace_faults: bool,
        /// Kill the program after this long (e.g. 2s, 500ms, 1m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// At exit, print faults, VmHWM, RSS, system calls, VM exits and where time went.
        #[arg(long)]
        stat: bool,
        /// Also run the program natively (ASLR off on both sides) and compare.
        #[arg(long)]
        compare: bool,
        /// Swap: a swap file of this size (e.g. 512M), made as mkswap does in a private
        /// temporary directory, swapped on for the run, removed after it (even on Ctrl-C).
        #[arg(long, value_name = "SIZE")]
        swap: Option<String>,
        /// Draw the run as an SVG chart: free pages against the watermarks, anon and file
        /// LRU sizes, swap used, kswapd's runs, the process's start and exit.
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<PathBuf>,
        /// The program and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PROG [ARGS]"
        )]
        cmd: Vec<String>,
    },
    /// Exec every program in some directories on the host kernel and on the machine, and
    /// compare the outcomes and the maps at the exec stop (default: /usr/bin and /usr/sbin).
    ExecSweep {
        #[command(flatten)]
        machine: MachineArgs,
        /// One JSON object per program instead of the summary.
        #[arg(long)]
        json: bool,
        /// The directories.
        dirs: Vec<PathBuf>,
    },
    /// Time the hot paths beside their anchors (filter: a group such as `page`, or a row name).
    Bench {
        /// Only rows whose name or group matches.
        filter: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The workloads `run` can run.
#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Random page and kmalloc allocations on every CPU, every byte checked.
    Alloc,
    /// A process writing 1.5x RAM through swap while kswapd runs; draws an SVG chart.
    Pressure,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    machine: MachineArgs,
    /// Operations per CPU [alloc; default 200000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    ops: Option<u64>,
    /// Most blocks a CPU holds at once [alloc; default 4096].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_live: Option<u64>,
    /// Random seed [alloc; default 1].
    #[arg(long)]
    seed: Option<u64>,
    /// The scenario (or workload).
    #[arg(long, visible_alias = "workload", value_enum, default_value_t = Scenario::Alloc)]
    scenario: Scenario,
    /// Where the pressure scenario writes its chart [pressure; default pressure.svg].
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct MachineArgs {
    /// Firmware memory map: dmesg `BIOS-e820:` lines (default: the seed's 8 GiB laptop map).
    #[arg(long, conflicts_with = "mem")]
    e820: Option<PathBuf>,
    /// Generate a PC memory map of this size (e.g. 4G, 512M).
    #[arg(long)]
    mem: Option<String>,
    /// NUMA nodes (numa=fake=N).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    nodes: u64,
    /// CPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    cpus: u64,
    /// Extra kernel command line (movablecore=, kernelcore=, sysctl.vm.*=).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// The simulated CPU: `host` (default: the host's features), `baseline`, or changes to
    /// the host's such as `+pku`, `-fsgsbase`, `xsave=2696`.
    #[arg(long, default_value = "host")]
    cpu: String,
}

impl MachineArgs {
    fn spec(&self) -> Result<MachineSpec> {
        self.spec_or(None)
    }

    /// The machine, with `default_mem` bytes when neither --mem nor --e820 is given.
    fn spec_or(&self, default_mem: Option<u64>) -> Result<MachineSpec> {
        let e820 = match (&self.e820, &self.mem, default_mem) {
            (Some(p), _, _) => MachineSpec::from_e820_file(p)?,
            (None, Some(m), _) => {
                let bytes = memparse(m)
                    .with_context(|| format!("--mem {m}: not a size like 4G or 512M"))?;
                E820Table::for_mem_size(bytes).with_context(|| format!("--mem {m}"))?
            }
            (None, None, Some(b)) => E820Table::for_mem_size(b)?,
            (None, None, None) => MachineSpec::default().e820,
        };
        let mut cmdline = self.cmdline.clone();
        if self.nodes > 1 {
            cmdline = format!("numa=fake={} {cmdline}", self.nodes);
        }
        Ok(MachineSpec {
            e820,
            cpus: self.cpus as usize,
            cmdline: cmdline.trim().to_string(),
        })
    }

    fn boot(&self, spec: &MachineSpec) -> Result<Machine> {
        Machine::boot_with_cpu(spec, mmkit_sim::cpu::parse_cpu(&self.cpu)?)
    }

    /// `--cpu` changes only what a program sees of the CPU (its auxv, smaps): refuse it
    /// where nothing shows it.
    fn no_cpu(&self, what: &str) -> Result<()> {
        if self.cpu != "host" {
            bail!("--cpu changes only what exec shows (auxv, smaps); {what} would ignore it");
        }
        Ok(())
    }
}

/// A duration like `2s`, `500ms`, `1m` or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 2s or 500ms"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn print_views(m: &Machine, which: &[&str]) {
    for (name, text) in mmkit::fs::proc::proc_files(&m.kernel) {
        if which.contains(&name) {
            println!("==> /proc/{name} <==\n{text}");
        }
    }
}

/// The options `run` takes that a scenario would ignore: refuse them, naming them.
fn check_run_options(r: &RunArgs) -> Result<()> {
    fn given(set: bool, name: &'static str) -> Option<&'static str> {
        set.then_some(name)
    }
    match r.scenario {
        Scenario::Alloc => {
            if let Some(n) = given(r.svg.is_some(), "--svg") {
                bail!("{n} is for --scenario pressure (the alloc scenario draws no chart)");
            }
        }
        Scenario::Pressure => {
            let ignored: Vec<&str> = [
                given(r.ops.is_some(), "--ops"),
                given(r.max_live.is_some(), "--max-live"),
                given(r.seed.is_some(), "--seed"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !ignored.is_empty() {
                bail!(
                    "{} not used by --scenario pressure (it writes 1.5x RAM once, in order)",
                    ignored.join(", ")
                );
            }
            if r.machine.cpus < 2 {
                bail!("--scenario pressure needs --cpus 2 or more (the process on CPU 0, kswapd on CPU 1)");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Like any Unix tool, end quietly when the reader of our output goes away (`| head`)
    // instead of failing on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // Plain user errors get one line, never a backtrace (even with RUST_BACKTRACE set).
    let r = real_main(cli);
    mmkit_sim::tempfiles::yield_to_a_dying_signal();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmkit: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    mmkit_sim::tempfiles::install_signal_cleanup()?;
    if cli.cmd.is_none() && std::env::args_os().len() == 1 {
        // The main job: a real program on mmkit, or the synthetic load where it cannot run.
        match mmkit_sim::demo::available() {
            Ok(()) => return mmkit_sim::demo::run(&MachineSpec::default()),
            Err(e) => println!(
                "mmkit: no real program can run here ({e:#}); running the synthetic workload instead (mmkit run --workload alloc)"
            ),
        }
    }
    match cli.cmd.unwrap_or(Cmd::Run(cli.run)) {
        Cmd::Boot { machine, proc_dir } => {
            machine.no_cpu("boot")?;
            if let Some(d) = &proc_dir {
                cli::check_proc_dir(d)?;
            }
            let m = machine.boot(&machine.spec()?)?;
            for l in m.kernel.dmesg() {
                println!("{l}");
            }
            match proc_dir {
                Some(d) => {
                    procfs::write_proc_dir(&m.kernel, &d)?;
                    println!("wrote /proc views to {}", d.display());
                }
                None => print_views(
                    &m,
                    &[
                        "meminfo",
                        "buddyinfo",
                        "pagetypeinfo",
                        "zoneinfo",
                        "vmstat",
                        "iomem",
                        "slabinfo",
                        "vmallocinfo",
                    ],
                ),
            }
        }
        Cmd::Run(r) => {
            r.machine.no_cpu("run")?;
            check_run_options(&r)?;
            match r.scenario {
                Scenario::Pressure => run_pressure(&r)?,
                Scenario::Alloc => run_alloc(&r)?,
            }
        }
        Cmd::Exec {
            machine,
            no_aslr,
            maps,
            smaps,
            env,
            strace,
            trace_faults,
            timeout,
            stat,
            compare,
            swap,
            chart,
            cmd,
        } => {
            // Ctrl-C reaches the program (its foreground process group), as it would
            // natively; mmkit ends when the program does.
            mmkit_sim::kvm::tty::enable_sigint_forwarding();
            let swap = swap.as_deref().map(cli::parse_swap).transpose()?;
            if maps || smaps {
                let what = if maps { "--maps" } else { "--smaps" };
                if swap.is_some() {
                    bail!("--swap is for a run; {what} does not run the program");
                }
                if chart.is_some() {
                    bail!("--chart draws a run; {what} does not run the program");
                }
            }
            if (swap.is_some() || chart.is_some()) && machine.cpus < 2 {
                bail!("--swap and --chart need --cpus 2 or more (the program on CPU 0, kswapd on CPU 1)");
            }
            let chart = chart
                .as_deref()
                .map(|p| cli::create_chart("--chart", p))
                .transpose()?;
            let code = (|| {
                let m = machine.boot(&machine.spec()?)?;
                let envp = if env.is_empty() {
                    std::env::vars().map(|(k, v)| format!("{k}={v}")).collect()
                } else {
                    env
                };
                let opts = mmkit_sim::kvm::RunOptions {
                    strace,
                    trace_faults,
                    timeout,
                    stdout: None,
                    syscall_hook: None,
                    no_preempt: false,
                };
                let pressure = mmkit_sim::exec_cmd::Pressure {
                    swap,
                    chart: chart.clone(),
                };
                mmkit_sim::exec_cmd::exec(
                    &m, &cmd, envp, no_aslr, maps, smaps, &opts, stat, compare, &pressure,
                )
            })();
            if code.is_err() {
                // Do not leave the empty chart file made up front behind.
                if let Some(c) = &chart {
                    let _ = std::fs::remove_file(c);
                }
            }
            let code = code?;
            if mmkit_sim::kvm::tty::dies_by_sigint() {
                // The program died of the Ctrl-C: so does mmkit (its files are gone by now).
                let _ = signal_hook::low_level::emulate_default_handler(libc::SIGINT);
            }
            mmkit_sim::tempfiles::yield_to_a_dying_signal();
            std::process::exit(code);
        }
        Cmd::ExecSweep {
            machine,
            json,
            dirs,
        } => {
            let dirs = if dirs.is_empty() {
                mmkit_sim::exec_sweep::default_dirs()
            } else {
                dirs
            };
            machine.no_cpu("exec-sweep (it compares with the host kernel, on the host's CPU)")?;
            let progs = mmkit_sim::exec_sweep::programs(&dirs)?;
            let r = mmkit_sim::exec_sweep::sweep(&machine.spec()?, &progs)?;
            if json {
                for row in &r.rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                print!("{}", r.summary());
            }
        }
        Cmd::Bench { filter, json } => {
            let rows = bench::run(filter.as_deref().unwrap_or(""))?;
            if rows.is_empty() {
                bail!(
                    "no benchmark matches `{}` (groups: page, slab, vm, fault, reclaim, exec)",
                    filter.unwrap_or_default()
                );
            }
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", bench::table(&rows));
            }
        }
    }
    Ok(())
}

/// `run --scenario pressure`: the machine the options describe (256 MiB by default), its
/// swap file in a private temporary directory, the chart checked up front.
fn run_pressure(r: &RunArgs) -> Result<()> {
    let svg = cli::create_svg(r.svg.as_deref().unwrap_or("pressure.svg".as_ref()))?;
    let res = pressure_chart(r, &svg);
    if res.is_err() {
        // Do not leave the empty chart file made up front behind.
        let _ = std::fs::remove_file(&svg);
    }
    res
}

fn pressure_chart(r: &RunArgs, svg: &std::path::Path) -> Result<()> {
    let spec = r.machine.spec_or(Some(256 << 20))?;
    let m = r.machine.boot(&spec)?;
    let ram = m.kernel.totalram_pages() << 12;
    let dir = std::env::temp_dir();
    println!(
        "pressure: {} MiB of RAM, a {} MiB swap file in a private directory under {}",
        ram >> 20,
        (ram * 2) >> 20,
        dir.display()
    );
    let res = mmkit_sim::pressure::run_spec(&m, &dir)?;
    println!(
        "a process wrote and read back {} pages ({} MiB, 1.5x RAM): every page correct",
        res.pages,
        res.pages >> 8
    );
    println!("kswapd ran {} times", res.kswapd_runs.len());
    for (n, v) in &res.stats {
        println!("{n:<32} {v}");
    }
    mmkit_sim::pressure::draw_svg(&res, svg)
        .with_context(|| format!("--svg {}: cannot write the chart", svg.display()))?;
    println!(
        "chart: {} (above: free pages of node 0's largest zone against its min/low/high watermarks over time, ticks for kswapd runs; below: anon and file LRU sizes and swap used)",
        svg.display()
    );
    Ok(())
}

/// `run` (the alloc scenario): page then kmalloc workloads on every CPU, then everything
/// freed, with the views before and after and the check that every page came back.
fn run_alloc(r: &RunArgs) -> Result<()> {
    let ops = r.ops.unwrap_or(200_000) as usize;
    let max_live = r.max_live.unwrap_or(4096) as usize;
    let seed = r.seed.unwrap_or(1);
    let m = r.machine.boot(&r.machine.spec()?)?;
    for l in m.kernel.dmesg() {
        println!("{l}");
    }
    println!("\n######## after boot ########");
    print_views(&m, &["buddyinfo", "meminfo"]);
    let boot_buddy = mmkit::fs::proc::buddyinfo::buddyinfo(&m.kernel);
    let boot_free = m.kernel.global_free_pages();
    let cpus = m.kernel.nr_cpus();
    println!("######## running {ops} random page operations on each of {cpus} CPUs ########");
    let reports = workload::run_all_cpus(&m, ops, max_live, seed)?;
    for (c, r) in reports.iter().enumerate() {
        println!(
            "cpu {c}: {} allocations ({} pages, {} failed), {} MiB checked byte for byte; {} per operation (allocate or free, filling and checking every byte: not the allocator alone, see `mmkit bench page`)",
            r.allocs,
            r.pages,
            r.failures,
            r.bytes_checked >> 20,
            per_op(r.elapsed, ops)
        );
    }
    println!("\n######## running {ops} random kmalloc/kfree operations on each CPU ########");
    let reports = workload::run_kmalloc_all_cpus(&m, ops, max_live, seed)?;
    for (c, r) in reports.iter().enumerate() {
        println!(
            "cpu {c}: {} kmallocs ({} failed), {} MiB checked byte for byte; {} per operation (kmalloc or kfree, filling and checking every byte: see `mmkit bench slab` for the allocator alone)",
            r.allocs,
            r.failures,
            r.bytes_checked >> 20,
            per_op(r.elapsed, ops)
        );
    }
    println!("\n######## after the workloads (objects cached in array caches, pages on per-CPU lists) ########");
    print_views(&m, &["buddyinfo", "slabinfo", "meminfo"]);
    m.kernel
        .check_slab_invariants()
        .map_err(|e| anyhow::anyhow!("slab invariant broken: {e}"))?;
    m.kernel.kmem_cache_shrink_all()?;
    m.on_cpu(0, |cpu| m.kernel.drain_all_pages(cpu));
    println!("######## after kmem_cache_shrink of every cache and drain_all_pages ########");
    print_views(&m, &["buddyinfo", "pagetypeinfo", "vmstat"]);
    let after = mmkit::fs::proc::buddyinfo::buddyinfo(&m.kernel);
    m.kernel
        .check_invariants()
        .map_err(|e| anyhow::anyhow!("invariant broken: {e}"))?;
    m.kernel
        .check_slab_invariants()
        .map_err(|e| anyhow::anyhow!("slab invariant broken: {e}"))?;
    let free = m.kernel.global_free_pages();
    if free != boot_free || m.kernel.slab_pages() != (0, 0) {
        bail!(
            "pages did not all come back: {free} free after the run, {boot_free} after boot, slab pages {:?}",
            m.kernel.slab_pages()
        );
    }
    if after != boot_buddy {
        bail!("every page came back but they did not all coalesce: buddyinfo differs from the post-boot one (see pagetypeinfo above)");
    }
    println!("buddyinfo equals the post-boot buddyinfo: every slab page and block came back and coalesced; invariants hold.");
    Ok(())
}

/// Time per operation, in the unit that reads best.
fn per_op(elapsed: std::time::Duration, ops: usize) -> String {
    let ns = elapsed.as_nanos() as f64 / ops.max(1) as f64;
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}
