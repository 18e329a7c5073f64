//! `mmkit`: boot a simulated machine running the mmkit memory-management library, watch it,
//! and measure it.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::cmdline::memparse;
use mmkit_sim::machine::{Machine, MachineSpec};
use mmkit_sim::{bench, procfs, workload};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mmkit",
    version,
    about = "The Linux memory-management subsystem in Rust, on a simulated machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
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
    Run {
        #[command(flatten)]
        machine: MachineArgs,
        /// Operations per CPU.
        #[arg(long, default_value_t = 200_000)]
        ops: usize,
        /// Most blocks a CPU holds at once.
        #[arg(long, default_value_t = 4096)]
        max_live: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The scenario: `alloc` (page and kmalloc workloads) or `pressure` (a process
        /// writing 1.5x RAM through swap while kswapd runs; draws an SVG chart).
        #[arg(long, default_value = "alloc")]
        scenario: String,
        /// Where the pressure scenario writes its chart.
        #[arg(long, default_value = "pressure.svg")]
        svg: PathBuf,
    },
    /// Exec a host executable in a fresh address space and print its memory map as the
    /// kernel left it (before the program runs), as `/proc/PID/maps` shows it.
    Exec {
        #[command(flatten)]
        machine: MachineArgs,
        /// Disable address-space randomization (as `setarch -R`).
        #[arg(long)]
        no_aslr: bool,
        /// Print /proc/PID/maps (the default view).
        #[arg(long)]
        maps: bool,
        /// Print /proc/PID/smaps.
        #[arg(long)]
        smaps: bool,
        /// An environment string NAME=value (repeatable); without any, the caller's
        /// environment is passed.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// The executable.
        path: String,
        /// Its arguments (argv[0] is the path).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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

#[derive(Args, Clone)]
struct MachineArgs {
    /// Firmware memory map: dmesg `BIOS-e820:` lines (default: the seed's 8 GiB laptop map).
    #[arg(long, conflicts_with = "mem")]
    e820: Option<PathBuf>,
    /// Generate a PC memory map of this size (e.g. 4G, 512M).
    #[arg(long)]
    mem: Option<String>,
    /// NUMA nodes (numa=fake=N).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: usize,
    /// Extra kernel command line (movablecore=, kernelcore=, sysctl.vm.*=).
    #[arg(long, default_value = "")]
    cmdline: String,
}

impl MachineArgs {
    fn spec(&self) -> Result<MachineSpec> {
        let e820 = match (&self.e820, &self.mem) {
            (Some(p), _) => MachineSpec::from_e820_file(p)?,
            (None, Some(m)) => {
                let bytes = memparse(m)
                    .with_context(|| format!("--mem {m}: not a size like 4G or 512M"))?;
                E820Table::for_mem_size(bytes)?
            }
            (None, None) => MachineSpec::default().e820,
        };
        if self.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let mut cmdline = self.cmdline.clone();
        if self.nodes > 1 {
            cmdline = format!("numa=fake={} {cmdline}", self.nodes);
        }
        Ok(MachineSpec {
            e820,
            cpus: self.cpus,
            cmdline: cmdline.trim().to_string(),
        })
    }
}

impl Default for MachineArgs {
    fn default() -> Self {
        Self {
            e820: None,
            mem: None,
            nodes: 1,
            cpus: 2,
            cmdline: String::new(),
        }
    }
}

fn print_views(m: &Machine, which: &[&str]) {
    for (name, text) in mmkit::fs::proc::proc_files(&m.kernel) {
        if which.contains(&name) {
            println!("==> /proc/{name} <==\n{text}");
        }
    }
}

fn main() -> Result<()> {
    // Like any Unix tool, end quietly when the reader of our output goes away (`| head`)
    // instead of failing on the broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let cmd = cli.cmd.unwrap_or(Cmd::Run {
        machine: MachineArgs::default(),
        ops: 200_000,
        max_live: 4096,
        seed: 1,
        scenario: String::from("alloc"),
        svg: PathBuf::from("pressure.svg"),
    });
    match cmd {
        Cmd::Boot { machine, proc_dir } => {
            let m = Machine::boot(&machine.spec()?)?;
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
                    ],
                ),
            }
        }
        Cmd::Run {
            scenario,
            svg,
            machine,
            ..
        } if scenario == "pressure" => {
            let mem = match &machine.mem {
                Some(m) => memparse(m).with_context(|| format!("--mem {m}: not a size"))?,
                None => 256 << 20,
            };
            let dir = std::env::temp_dir();
            println!(
                "pressure: {} MiB of RAM, a {} MiB swap file in {}",
                mem >> 20,
                mem >> 19,
                dir.display()
            );
            let r = mmkit_sim::pressure::run(mem, &dir)?;
            println!(
                "a process wrote and read back {} pages ({} MiB, 1.5x RAM): every page correct",
                r.pages,
                r.pages >> 8
            );
            println!("kswapd ran {} times", r.kswapd_runs.len());
            for (n, v) in &r.stats {
                println!("{n:<32} {v}");
            }
            mmkit_sim::pressure::draw_svg(&r, &svg)?;
            println!("chart: {}", svg.display());
        }
        Cmd::Run { scenario, .. } if scenario != "alloc" => {
            bail!("unknown scenario `{scenario}` (scenarios: alloc, pressure)");
        }
        Cmd::Run {
            machine,
            ops,
            max_live,
            seed,
            ..
        } => {
            let m = Machine::boot(&machine.spec()?)?;
            for l in m.kernel.dmesg() {
                println!("{l}");
            }
            println!("\n######## after boot ########");
            print_views(&m, &["buddyinfo", "meminfo"]);
            let boot_buddy = mmkit::fs::proc::buddyinfo::buddyinfo(&m.kernel);
            println!(
                "######## running {ops} random page operations on each of {} CPUs ########",
                m.kernel.nr_cpus()
            );
            let reports = workload::run_all_cpus(&m, ops, max_live, seed)?;
            for (c, r) in reports.iter().enumerate() {
                println!(
                    "cpu {c}: {} allocations ({} pages, {} failed), {} MiB checked byte for byte, {:.0} ns per operation",
                    r.allocs,
                    r.pages,
                    r.failures,
                    r.bytes_checked >> 20,
                    r.elapsed.as_nanos() as f64 / ops as f64
                );
            }
            println!(
                "\n######## running {ops} random kmalloc/kfree operations on each CPU ########"
            );
            let reports = workload::run_kmalloc_all_cpus(&m, ops, max_live, seed)?;
            for (c, r) in reports.iter().enumerate() {
                println!(
                    "cpu {c}: {} kmallocs ({} failed), {} MiB checked byte for byte, {:.0} ns per operation",
                    r.allocs,
                    r.failures,
                    r.bytes_checked >> 20,
                    r.elapsed.as_nanos() as f64 / ops as f64
                );
            }
            println!("\n######## after the workloads (objects cached in array caches, pages on per-CPU lists) ########");
            print_views(&m, &["buddyinfo", "slabinfo", "meminfo"]);
            m.kernel
                .check_slab_invariants()
                .map_err(|e| anyhow::anyhow!("slab invariant broken: {e}"))?;
            m.kernel.kmem_cache_shrink_all()?;
            m.on_cpu(0, |cpu| m.kernel.drain_all_pages(cpu));
            println!(
                "######## after kmem_cache_shrink of every cache and drain_all_pages ########"
            );
            print_views(&m, &["buddyinfo", "pagetypeinfo", "vmstat"]);
            let after = mmkit::fs::proc::buddyinfo::buddyinfo(&m.kernel);
            m.kernel
                .check_invariants()
                .map_err(|e| anyhow::anyhow!("invariant broken: {e}"))?;
            m.kernel
                .check_slab_invariants()
                .map_err(|e| anyhow::anyhow!("slab invariant broken: {e}"))?;
            if after == boot_buddy && m.kernel.slab_pages() == (0, 0) {
                println!("buddyinfo equals the post-boot buddyinfo: every slab page and block came back and coalesced; invariants hold.");
            } else {
                bail!("buddyinfo after freeing everything differs from the post-boot one");
            }
        }
        Cmd::Exec {
            machine,
            no_aslr,
            maps,
            smaps,
            env,
            path,
            args,
        } => {
            let m = Machine::boot(&machine.spec()?)?;
            let mut argv = vec![path.clone()];
            argv.extend(args);
            let envp = if env.is_empty() {
                std::env::vars().map(|(k, v)| format!("{k}={v}")).collect()
            } else {
                env
            };
            let spec = mmkit_sim::exec::ExecSpec {
                path: &path,
                argv,
                envp,
                no_aslr,
            };
            m.on_cpu(0, |cpu| -> Result<()> {
                let img = mmkit_sim::exec::exec_host(&m, cpu, &spec)?;
                if maps || !smaps {
                    print!("{}", mmkit::fs::proc::task_mmu::proc_pid_maps(&img.mm));
                }
                if smaps {
                    print!(
                        "{}",
                        mmkit::fs::proc::task_mmu::proc_pid_smaps(&m.kernel, &img.mm)
                    );
                }
                m.kernel.exit_mmap(cpu, img.mm);
                Ok(())
            })?;
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
                    "no benchmark matches `{}` (groups: page, slab, vm, fault, reclaim)",
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
