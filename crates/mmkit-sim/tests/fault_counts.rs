//! Our minor/major fault counts for a process exec'd here and running two touch patterns are
//! within 10% of the host kernel's for the same patterns run natively in the same test.

mod common;
use common::boot_mem;

#[test]
fn fault_counts_match_the_host_kernel() {
    let m = boot_mem(512, 1, "");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let results = mmkit_sim::fault_counts::compare(&m, dir.path()).unwrap();
    m.kernel.check_pagecache_invariants().unwrap();
    for c in results {
        eprintln!("{}: ours {:?} host {:?}", c.name, c.ours, c.host);
        let near = |ours: u64, host: u64| ours.abs_diff(host) * 10 <= host.max(1);
        assert!(
            near(c.ours.min_flt, c.host.min_flt) && near(c.ours.maj_flt, c.host.maj_flt),
            "{}: ours {:?} host {:?}",
            c.name,
            c.ours,
            c.host
        );
    }
}
