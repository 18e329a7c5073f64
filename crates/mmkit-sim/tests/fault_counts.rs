//! Our minor/major fault counts for a process exec'd here and running three touch patterns
//! are within 10% of the host kernel's for the same patterns run natively in the same test;
//! for the `MADV_HUGEPAGE` file read, `FilePmdMapped` is the host's too (where the host maps
//! file THPs at all).

mod common;
use common::boot_mem;

#[test]
fn fault_counts_match_the_host_kernel() {
    let m = boot_mem(512, 1, "");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let results = mmkit_sim::fault_counts::compare(&m, dir.path()).unwrap();
    m.kernel.check_pagecache_invariants().unwrap();
    for c in results {
        eprintln!(
            "{}: ours {:?} host {:?}, FilePmdMapped ours {} kB host {} kB",
            c.name, c.ours, c.host, c.pmd_mapped_kb.0, c.pmd_mapped_kb.1
        );
        if c.name.contains("thp") {
            if c.pmd_mapped_kb.1 == 0 {
                // The host's file system (or its kernel) caches no PMD-sized folios: its
                // faults are those of 4 KiB pages, which this pattern is not about.
                eprintln!(
                    "{}: not compared: the host mapped no file THP of the temporary file",
                    c.name
                );
                continue;
            }
            assert_eq!(
                c.pmd_mapped_kb.0, c.pmd_mapped_kb.1,
                "{}: FilePmdMapped ours vs the host's",
                c.name
            );
        }
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
