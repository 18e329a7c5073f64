//! Real programs under memory pressure (`mmkit exec --mem SIZE --swap SIZE [--chart F.svg]`):
//! a program runs under `/dev/kvm` on the machine's vCPUs while kswapd runs on simulated
//! CPU 1, as its own thread, whenever the allocator wakes it (holding CPU 1 only while it
//! reclaims, so vCPU 1 does its kernel work between kswapd's runs) — and the faulting
//! CPU reclaims directly when kswapd falls behind (`__alloc_pages_slowpath`). Without swap,
//! when reclaim finds nothing more the fault ends in `pagefault_out_of_memory`: the OOM
//! killer picks the largest task, prints Linux's report, and the process ends with
//! SIGKILL (status 137) while the machine goes on.
//!
//! The run is watched with the pressure scenario's [`Watch`] (one mechanism for both): free
//! pages against the watermarks, LRU sizes and swap use sampled every few milliseconds by a
//! thread that holds no CPU, kswapd's runs, and the process's start and exit, for
//! [`crate::pressure::draw_svg_titled`].

use crate::exec::ExecSpec;
use crate::kvm::{run_program, Outcome, RunOptions, Vm};
use crate::machine::Machine;
use crate::pressure::{Report, Watch};
use anyhow::Result;
use std::time::Duration;

/// How often the sampler looks at the machine during a watched run.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(5);

/// Run `spec` on `vm` to its end with kswapd on simulated CPU 1 (when the machine has a
/// second CPU; with one, reclaim is direct only) and the machine sampled every
/// [`SAMPLE_PERIOD`]; the outcome and what was watched.
pub fn run_watched(
    m: &Machine,
    vm: &Vm,
    spec: &ExecSpec<'_>,
    opts: &RunOptions,
) -> Result<(Outcome, Report)> {
    run_watched_every(m, vm, spec, opts, Some(SAMPLE_PERIOD))
}

/// [`run_watched`] with the machine sampled every `period`, or, with `None`, only at the
/// start and the end (kswapd's runs and the marks are recorded either way): for a run
/// whose samples nobody reads (no chart, no swap report), as a sampler thread woken every
/// few milliseconds interrupts a vCPU in guest mode each time it runs on that vCPU's host
/// CPU.
pub fn run_watched_every(
    m: &Machine,
    vm: &Vm,
    spec: &ExecSpec<'_>,
    opts: &RunOptions,
    period: Option<Duration>,
) -> Result<(Outcome, Report)> {
    let watch = Watch::new(m)?;
    let name = spec
        .path
        .rsplit('/')
        .next()
        .unwrap_or(spec.path)
        .to_string();
    let run = || {
        watch.sample();
        watch.mark(format!("{name} starts"));
        let out = run_program(m, vm, spec, opts);
        if let Ok(o) = &out {
            watch.mark(format!("exit {}", o.status.code()));
        }
        out
    };
    let out = if m.kernel.nr_cpus() >= 2 {
        let o = watch.around(1, period, run);
        if period.is_none() {
            watch.sample();
        }
        o
    } else {
        let o = run();
        watch.sample();
        o
    }?;
    Ok((out, watch.report(0)))
}
