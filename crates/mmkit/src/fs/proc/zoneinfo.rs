//! `/proc/zoneinfo` (`zoneinfo_show_print`).

use crate::mm::mmzone::{Wmark, MAX_NR_ZONES};
use crate::mm::vmstat_names::{NODE_STAT_NAMES, NUMA_STAT_NAMES, ZONE_STAT_NAMES};
use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::Ordering::Relaxed;

/// `/proc/zoneinfo`.
pub fn zoneinfo(k: &Kernel) -> String {
    let mut s = String::new();
    for n in &k.nodes {
        let first_populated = n.zones.iter().position(|z| z.populated());
        for (zi, z) in n.zones.iter().enumerate() {
            let _ = write!(s, "Node {}, zone {:>8}", n.node_id, z.zone_type.name());
            if Some(zi) == first_populated {
                s.push_str("\n  per-node stats");
                for (i, name) in NODE_STAT_NAMES.iter().enumerate() {
                    let _ = write!(
                        s,
                        "\n      {:<12} {}",
                        name,
                        k.node_page_state(n.node_id, i)
                    );
                }
            }
            let _ = write!(
                s,
                "\n  pages free     {}\n        boost    {}\n        min      {}\n        low      {}\n        high     {}\n        promo    {}\n        spanned  {}\n        present  {}\n        managed  {}\n        cma      {}",
                z.free_pages().max(0),
                0,
                z.wmark(Wmark::Min),
                z.wmark(Wmark::Low),
                z.wmark(Wmark::High),
                z.wmark(Wmark::Promo),
                z.spanned_pages,
                z.present_pages,
                z.managed(),
                0
            );
            let _ = write!(
                s,
                "\n        protection: ({}",
                z.lowmem_reserve[0].load(Relaxed)
            );
            for r in &z.lowmem_reserve[1..MAX_NR_ZONES] {
                let _ = write!(s, ", {}", r.load(Relaxed));
            }
            s.push(')');
            if !z.populated() {
                s.push('\n');
                continue;
            }
            for (i, name) in ZONE_STAT_NAMES.iter().enumerate() {
                let _ = write!(s, "\n      {:<12} {}", name, z.stat(i).max(0));
            }
            let gz = z.node * MAX_NR_ZONES + z.zone_type as usize;
            for (i, name) in NUMA_STAT_NAMES.iter().enumerate() {
                let v: u64 = (0..k.nr_cpus())
                    .map(|c| k.cpus.get(c).vmstat.numa[gz].0[i].load(Relaxed))
                    .sum();
                let _ = write!(s, "\n      {:<12} {}", name, v);
            }
            s.push_str("\n  pagesets");
            for (cpu, pcp) in z.pcp.iter().enumerate() {
                let p = pcp.lock();
                let _ = write!(
                    s,
                    "\n    cpu: {}\n              count:    {}\n              high:     {}\n              batch:    {}\n              high_min: {}\n              high_max: {}",
                    cpu, p.count, p.high, p.batch, p.high_min, p.high_max
                );
                drop(p);
                let _ = write!(
                    s,
                    "\n  vm stats threshold: {}",
                    z.stat_threshold(k.nr_cpus())
                );
            }
            let _ = write!(
                s,
                "\n  node_unreclaimable:  {}\n  start_pfn:           {}\n",
                0, z.zone_start_pfn
            );
        }
    }
    s
}
