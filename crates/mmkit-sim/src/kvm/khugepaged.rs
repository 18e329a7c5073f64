//! khugepaged as a kernel thread of a run (`mm/khugepaged.c`'s `khugepaged()` thread
//! function with `khugepaged_wait_work`): a host thread that sleeps
//! `scan_sleep_millisecs` (`alloc_sleep_millisecs` after a THP could not be allocated),
//! then takes the kernel lock — which is every address space's `mmap_lock` here — and, on
//! the machine's last simulated CPU, does one wakeup's scan (`khugepaged_do_scan`) over
//! the address spaces on its list. Its collapses flush through the same TLB shootdown as
//! every other change (a vCPU running the address space leaves the guest before a page's
//! entry is copied), so a program's memory turns into 2 MiB mappings while it runs.

use super::smp::{KthreadStop, Smp};
use crate::machine::Machine;
use mmkit::mm::khugepaged::KhugepagedScan;
use std::time::Duration;

/// Run khugepaged until `stop`; returns the THPs it made. It sleeps its whole period at
/// once (`wait_event_freezable_timeout` on `khugepaged_wait`), woken early only by the end
/// of the run.
pub fn khugepaged(m: &Machine, smp: &Smp, stop: &KthreadStop) -> u64 {
    let k = &m.kernel;
    let cpu = k.nr_cpus() - 1;
    let mut scan = KhugepagedScan::default();
    let mut alloc_failed = false;
    let mut made = 0;
    loop {
        let t = k.khugepaged_tunables();
        let ms = if alloc_failed {
            t.alloc_sleep_millisecs
        } else {
            t.scan_sleep_millisecs
        };
        if stop.sleep(Duration::from_millis(u64::from(ms))) {
            return made;
        }
        let w = smp.with_kernel(|tasks, _| {
            m.on_cpu(cpu, |c| k.khugepaged_do_scan(c, &mut scan, tasks.mms_mut()))
        });
        made += w.collapsed;
        alloc_failed = w.alloc_failed;
    }
}
