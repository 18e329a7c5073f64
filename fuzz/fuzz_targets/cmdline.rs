//! The kernel command line on arbitrary text: parsed, and when it parses, a 256 MiB machine
//! is booted with it (numa=fake splits, movablecore/kernelcore, watermark sysctls) and a
//! few allocations are made; every invariant must hold and the views must print.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::cmdline::{memparse, BootConfig};
use mmkit::gfp::{Gfp, GFP_KERNEL};
use mmkit_sim::{Machine, MachineSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = memparse(text);
    if BootConfig::parse(text).is_err() {
        return;
    }
    let spec = MachineSpec {
        e820: E820Table::for_mem_size(256 << 20).expect("256 MiB is a machine"),
        cpus: 2,
        cmdline: text.to_string(),
    };
    let Ok(m) = Machine::boot(&spec) else {
        return;
    };
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut held = Vec::new();
        for order in [0, 0, 3, 9] {
            if let Some(p) = k.alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, order) {
                held.push((p, order));
            }
        }
        for (p, o) in held {
            k.__free_pages(cpu, p, o);
        }
        k.drain_all_pages(cpu);
    });
    k.check_invariants().unwrap();
    // Every view prints (vmallocinfo may be empty on a machine that has vmalloc'd nothing).
    let views = mmkit::fs::proc::proc_files(k);
    assert!(views
        .iter()
        .any(|(n, t)| *n == "meminfo" && t.starts_with("MemTotal:")));
});
