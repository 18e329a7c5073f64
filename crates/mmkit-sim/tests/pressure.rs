//! The pressure scenario runs to completion with every page checked, kswapd and swap both
//! work, and the chart is written.

#[test]
fn pressure_scenario_runs_and_draws() {
    let dir = tempfile::tempdir().unwrap();
    let r = mmkit_sim::pressure::run(128 << 20, dir.path()).unwrap();
    let stat = |n: &str| r.stats.iter().find(|s| s.0 == n).unwrap().1;
    assert!(stat("pswpout") > 0 && stat("pswpin") > 0);
    assert!(stat("pgsteal_kswapd") > 0, "kswapd reclaimed");
    assert!(!r.kswapd_runs.is_empty());
    // Free memory went down to the watermarks and was held near them.
    let low_point = r.samples.iter().map(|s| s.free).min().unwrap();
    let high = r.samples[0].wmarks[2];
    assert!(low_point < high * 2, "pressure reached the watermarks");
    let svg = dir.path().join("p.svg");
    mmkit_sim::pressure::draw_svg(&r, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("polyline") && text.contains("kswapd"));
}

/// `/proc/self/task/TID/status`'s `voluntary_ctxt_switches` of this process's `kswapd0`
/// thread (`None` while it has not started).
fn kswapd_sleeps() -> Option<u64> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "kswapd0" {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

/// kswapd sleeps until the allocator wakes it (`wakeup_kswapd` → `Platform::wake_kswapd`),
/// as Linux's does: idle for 300 ms it goes to sleep a handful of times at most (polling
/// every 100 µs, it slept thousands of times, each a timer interrupt on a host CPU that a
/// vCPU in guest mode pays a world switch for), and once woken it runs.
#[test]
fn kswapd_sleeps_until_woken() {
    use mmkit_sim::machine::{Machine, MachineSpec};
    let spec = MachineSpec {
        e820: mmkit::arch::x86_64::e820::E820Table::for_mem_size(64 << 20).unwrap(),
        cpus: 2,
        cmdline: String::new(),
    };
    let m = Machine::boot(&spec).unwrap();
    let watch = mmkit_sim::pressure::Watch::new(&m).unwrap();
    watch.around(1, None, || {
        let t0 = std::time::Instant::now();
        let before = loop {
            if let Some(n) = kswapd_sleeps() {
                break n;
            }
            assert!(t0.elapsed().as_secs() < 10, "no kswapd0 thread");
            std::thread::yield_now();
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let idle = kswapd_sleeps().unwrap() - before;
        assert!(
            idle <= 5,
            "kswapd woke {idle} times in 300 ms with nothing to do"
        );
        // Allocate until the allocator finds the zones below their low watermark and
        // wakes kswapd (its slow path's `wakeup_kswapd`): kswapd runs (within seconds, even
        // on a loaded host).
        let k = &m.kernel;
        let gfp = mmkit::gfp::GFP_KERNEL | mmkit::Gfp::__GFP_NOWARN;
        let wakeups = k.kswapd_wakeups(0);
        let mut held = Vec::new();
        m.on_cpu(0, |cpu| {
            while k.kswapd_wakeups(0) == wakeups {
                held.push(
                    k.alloc_pages(cpu, gfp, 0)
                        .expect("memory above the low watermark"),
                );
            }
        });
        let t1 = std::time::Instant::now();
        while k.kswapd_woken(0) && t1.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!k.kswapd_woken(0), "kswapd did not run once woken");
        m.on_cpu(0, |cpu| {
            for p in held {
                k.__free_pages(cpu, p, 0);
            }
        });
    });
}
