//! Memory pressure: swap to a real swap file (made by mkswap) with every byte checked after
//! swap-out and swap-in, across fork; kswapd keeping free memory between the watermarks;
//! clean file pages dropped and re-read; dirty shared pages written back before they are
//! freed; the OOM killer choosing the biggest task; swapoff bringing everything back; and no
//! page lost at the end.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::arch::x86_64::fault::SIGKILL;
use mmkit::fs::inode::{FMode, RamFile};
use mmkit::kernel::task::TaskTable;
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_SWAPENTS};
use mmkit::mm::mmap::*;
use mmkit::mm::mmzone::{Wmark, ZoneType};
use mmkit::{CpuGuard, Kernel};
use mmkit_sim::exec::{spawn_host, true_spec};
use mmkit_sim::hostfs::make_swap_file;
use mmkit_sim::Machine;
use std::sync::Arc;

const RW: u32 = PROT_READ | PROT_WRITE;
const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

fn page_bytes(i: u64, seed: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    for c in b.chunks_mut(8) {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        c.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// Write a distinct 64-byte pattern at the start and end of each page.
fn fill(k: &Kernel, cpu: &CpuGuard<'_>, mm: &mut MmStruct, base: u64, pages: u64, seed: u64) {
    for i in 0..pages {
        let b = page_bytes(i, seed);
        k.user_write(cpu, mm, base + (i << 12), &b).unwrap();
        k.user_write(cpu, mm, base + (i << 12) + 4032, &b).unwrap();
    }
}

/// Check what `fill` wrote (with `seed_of(i)` per page).
fn verify(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    base: u64,
    pages: u64,
    seed_of: impl Fn(u64) -> u64,
) {
    let mut got = [0u8; 64];
    for i in 0..pages {
        let want = page_bytes(i, seed_of(i));
        k.user_read(cpu, mm, base + (i << 12), &mut got).unwrap();
        assert_eq!(got, want, "page {i} start");
        k.user_read(cpu, mm, base + (i << 12) + 4032, &mut got)
            .unwrap();
        assert_eq!(got, want, "page {i} end");
    }
}

fn spawn_true(m: &Machine, tasks: &mut TaskTable) -> u32 {
    m.on_cpu(0, |cpu| spawn_host(m, tasks, cpu, &true_spec()).unwrap())
}

fn swapon(m: &Machine, dir: &std::path::Path, mib: u64) -> String {
    let path = dir.join("swapfile");
    let f = make_swap_file(&path, mib << 20).unwrap();
    let p = path.to_string_lossy().into_owned();
    m.kernel.swapon(Arc::new(f), &p, -2).unwrap();
    p
}

fn event(k: &Kernel, name: &str) -> u64 {
    mmkit::fs::proc::vmstat::vm_event(k, name).expect("a vmstat event name")
}

fn teardown_check(m: &Machine, before: u64) {
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.drain_all_pages(cpu);
    });
    k.check_lru_invariants().unwrap();
    k.check_swap_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    assert_eq!(k.nr_anon_vmas(), 0, "anon_vmas leaked");
    assert_eq!(free_and_pcp(k), before, "pages leaked");
    assert_eq!(k.page_table_pages(), 0);
}

/// A process writes more than RAM; everything it wrote reads back after swap-out and
/// swap-in, in it and in a child forked while much of it was on swap; the child's writes stay
/// its own.
#[test]
fn working_set_larger_than_ram_survives_swap_across_fork() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let path = swapon(&m, dir.path(), 256);
    assert!(k.proc_swaps().contains("swapfile"));
    let ram_pages = k.totalram_pages();
    let pages = ram_pages + ram_pages / 2;
    let mut tasks = TaskTable::default();
    let pid = spawn_true(&m, &mut tasks);
    let child = m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
        let base = k.mmap(cpu, mm, 0, pages << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, mm, base, pages, 1);
        assert!(mm.counter(MM_SWAPENTS) > 0, "some of it went to swap");
        k.check_mm_invariants(mm).unwrap();
        verify(k, cpu, mm, base, pages, |_| 1);
        let c = tasks.fork(k, cpu, pid).unwrap();
        let cm = tasks.get_mut(c).unwrap().mm.as_mut().unwrap();
        for i in (0..pages).step_by(16) {
            let b = page_bytes(i, 2);
            k.user_write(cpu, cm, base + (i << 12), &b).unwrap();
            k.user_write(cpu, cm, base + (i << 12) + 4032, &b).unwrap();
        }
        verify(k, cpu, cm, base, pages, |i| if i % 16 == 0 { 2 } else { 1 });
        let pm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
        verify(k, cpu, pm, base, pages, |_| 1);
        k.check_mm_invariants(pm).unwrap();
        k.check_swap_invariants().unwrap();
        k.check_lru_invariants().unwrap();
        (c, base)
    });
    assert!(event(k, "pswpout") > 0 && event(k, "pswpin") > 0);
    assert!(event(k, "allocstall_normal") > 0, "direct reclaim ran");
    m.on_cpu(0, |cpu| {
        tasks.exit(k, cpu, child.0, 0).unwrap();
        assert_eq!(tasks.wait(pid, Some(child.0)), Ok((child.0, 0)));
        let pm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
        verify(k, cpu, pm, child.1, pages, |_| 1);
        tasks.exit(k, cpu, pid, 0).unwrap();
        k.check_swap_invariants().unwrap();
        k.swapoff(cpu, &path).unwrap();
        assert_eq!(
            k.swap_totals(),
            (0, 0, 0),
            "the area is gone with every slot"
        );
    });
    teardown_check(&m, before);
}

/// kswapd, woken from the allocator's slow path and run each time it is, keeps free memory
/// from falling to the min watermark (no direct reclaim) and leaves each zone above high.
#[test]
fn kswapd_keeps_free_memory_between_min_and_high() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    // A file half again as big as RAM (in host memory, default 128 KiB readahead), read page
    // by page through a mapping: a steady stream of new page-cache pages reclaim can drop.
    let pages = k.totalram_pages() * 3 / 2;
    let inode = k.new_inode(
        Box::new(RamFile::new(vec![7u8; (pages << 12) as usize])),
        (0, 2),
        11,
        "/big",
    );
    let mut mm = m.on_cpu(0, |cpu| k.mm_alloc(cpu).unwrap());
    let (mut runs, mut min_free) = (0, u64::MAX);
    m.on_cpu(0, |cpu| {
        let f = k.open(&inode, FMode::READ).unwrap();
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                pages << 12,
                PROT_READ,
                MAP_PRIVATE,
                0,
            )
            .unwrap();
        let zone = k.nodes[0]
            .zones
            .iter()
            .filter(|z| z.managed() > 0)
            .max_by_key(|z| z.managed())
            .unwrap();
        let mut b = [0u8; 1];
        for i in 0..pages {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut b).unwrap();
            assert_eq!(b[0], 7);
            // Fault-around mapped the window: unmap the pages read so they can go.
            if i % 16 == 15 {
                k.madvise_dontneed(cpu, &mut mm, a + ((i - 15) << 12), 16 << 12)
                    .unwrap();
            }
            min_free = min_free.min(zone.free_pages().max(0) as u64);
            if k.kswapd_woken(0) {
                k.balance_pgdat(cpu, 0);
                runs += 1;
                assert!(
                    k.pgdat_balanced(0, Wmark::High, ZoneType::Movable),
                    "kswapd stopped short of high"
                );
            }
        }
        assert!(
            min_free >= zone.wmark(Wmark::Min),
            "free fell to min: {min_free}"
        );
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert!(runs > 0 && k.kswapd_wakeups(0) >= runs);
    assert!(event(k, "pgsteal_kswapd") > 0);
    assert_eq!(
        event(k, "allocstall_normal"),
        0,
        "kswapd kept up: no direct reclaim"
    );
    k.check_lru_invariants().unwrap();
}

/// A clean file page is dropped by reclaim and read again, with the same bytes, on the next
/// access (a major fault); a dirty page of a shared mapping reaches the file before its page
/// is freed.
#[test]
fn clean_pages_dropped_dirty_pages_written_back() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let data: Vec<u8> = (0..64 * 4096).map(|i| (i % 253) as u8).collect();
    let inode = k.new_inode(Box::new(RamFile::new(data.clone())), (0, 2), 9, "/data");
    m.on_cpu(0, |cpu| {
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, 64 << 12, RW, MAP_SHARED, 0)
            .unwrap();
        let mut page = vec![0u8; 4096];
        k.user_read(cpu, &mut mm, a, &mut page).unwrap();
        k.user_write(cpu, &mut mm, a + (10 << 12), b"dirty bytes")
            .unwrap();
        k.lru_add_drain(cpu);
        // Reclaim until the cache is empty: the first passes harvest Accessed bits.
        for _ in 0..20 {
            if inode.nrpages() == 0 {
                break;
            }
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
        }
        assert_eq!(inode.nrpages(), 0, "every page reclaimed");
        let mut on_file = [0u8; 11];
        inode.data().read_at(10 << 12, &mut on_file).unwrap();
        assert_eq!(&on_file, b"dirty bytes", "written back before it was freed");
        let majors = mm.faults.maj_flt;
        k.user_read(cpu, &mut mm, a, &mut page).unwrap();
        assert_eq!(page, data[..4096], "re-read with the same bytes");
        assert_eq!(mm.faults.maj_flt, majors + 1);
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert!(event(k, "pgsteal_direct") > 0);
}

/// The OOM killer and `CLONE_VM`: a process running in another's address space is judged by
/// that address space and listed in the report with its figures (`dump_tasks` lists every
/// process); its `oom_score_adj` is the address space's (`__set_oom_adj` sets it on every
/// user); and the kill takes every process in the address space, so its memory is freed at
/// once — the bystander lives, and every page comes back.
#[test]
fn oom_killer_kills_every_process_sharing_the_victims_memory() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let mut tasks = TaskTable::default();
    let small = spawn_true(&m, &mut tasks);
    let hog = spawn_true(&m, &mut tasks);
    let sharer = tasks.clone_vm(hog).unwrap();
    tasks.set_oom_score_adj(sharer, 300).unwrap();
    assert_eq!(
        tasks.get(hog).unwrap().oom_score_adj,
        300,
        "the address space's"
    );
    assert_eq!(tasks.get(small).unwrap().oom_score_adj, 0);
    let killed = m.on_cpu(0, |cpu| {
        let mm = tasks.mm_mut(small).unwrap();
        let a = k.mmap(cpu, mm, 0, 4 << 20, RW, ANON, 0).unwrap();
        fill(k, cpu, mm, a, 1024, 1);
        // The sharer fills the address space it shares with the hog.
        let mm = tasks.mm_mut(sharer).unwrap();
        let a = k
            .mmap(cpu, mm, 0, 1 << 30, RW, ANON | MAP_NORESERVE, 0)
            .unwrap();
        let mut i = 0u64;
        loop {
            let mm = tasks.mm_mut(sharer).unwrap();
            match k.user_write(cpu, mm, a + (i << 12), &[1]) {
                Ok(()) => i += 1,
                Err(s) => {
                    assert_eq!(s.signo, SIGKILL, "out of memory");
                    let score = |p| k.oom_score(tasks.get(p).unwrap(), tasks.mm_of(p));
                    assert_eq!(score(sharer), score(hog), "one address space, one score");
                    assert!(score(sharer) > score(small));
                    break tasks
                        .out_of_memory(k, cpu, sharer, mmkit::gfp::GFP_HIGHUSER_MOVABLE, 0)
                        .unwrap();
                }
            }
        }
    });
    assert!(killed == hog || killed == sharer, "killed {killed}");
    for p in [hog, sharer] {
        // Dead: a zombie, or already reaped (nobody waits for a child of pid 0).
        assert!(
            tasks
                .get(p)
                .is_none_or(|t| t.state == mmkit::kernel::task::TaskState::Zombie),
            "{p} shared the victim's memory"
        );
        assert!(tasks.mm_of(p).is_none());
    }
    assert_eq!(
        tasks.get(small).unwrap().state,
        mmkit::kernel::task::TaskState::Running
    );
    let log = k.dmesg().join("\n");
    // dump_tasks: a line for each user of the address space, with its (the same) rss.
    // The dump_tasks line of `p`, from its `[  pid  ]` column on.
    let line = |p: u32| {
        let tag = format!("[{p:>7}]");
        let l = log
            .lines()
            .find(|l| l.contains(&tag))
            .unwrap_or_else(|| panic!("no dump_tasks line for {p}: {log}"));
        l[l.find(&tag).unwrap() + tag.len()..].to_string()
    };
    // uid, tgid, total_vm, rss.
    let rss = |l: &str| l.split_whitespace().nth(3).map(str::to_owned);
    assert_eq!(
        rss(&line(hog)),
        rss(&line(sharer)),
        "{}\n{}",
        line(hog),
        line(sharer)
    );
    assert!(line(sharer).ends_with(" 300 true"), "{}", line(sharer));
    m.on_cpu(0, |cpu| {
        tasks.exit(k, cpu, small, 0).unwrap();
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    m.settle();
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// Without swap, an anonymous hog runs the machine out of memory; the OOM killer picks the
/// biggest task (the hog, not the smaller ones), prints Linux's report, and the others keep
/// running and allocating.
#[test]
fn oom_killer_kills_the_biggest_task() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let mut tasks = TaskTable::default();
    let small = spawn_true(&m, &mut tasks);
    let protected = spawn_true(&m, &mut tasks);
    let hog = spawn_true(&m, &mut tasks);
    tasks.set_oom_score_adj(protected, -1000).unwrap();
    assert_eq!(
        tasks.set_oom_score_adj(small, 1001),
        Err(mmkit::Errno::EINVAL)
    );
    let killed = m.on_cpu(0, |cpu| {
        for (pid, mib) in [(small, 4u64), (protected, 8)] {
            let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
            let a = k.mmap(cpu, mm, 0, mib << 20, RW, ANON, 0).unwrap();
            fill(k, cpu, mm, a, mib << 8, pid as u64);
        }
        let mm = tasks.get_mut(hog).unwrap().mm.as_mut().unwrap();
        let a = k
            .mmap(cpu, mm, 0, 1 << 30, RW, ANON | MAP_NORESERVE, 0)
            .unwrap();
        let mut i = 0u64;
        loop {
            let mm = tasks.get_mut(hog).unwrap().mm.as_mut().unwrap();
            match k.user_write(cpu, mm, a + (i << 12), &[1]) {
                Ok(()) => i += 1,
                Err(s) => {
                    assert_eq!(s.signo, SIGKILL, "out of memory");
                    let score_hog = k.oom_score(tasks.get(hog).unwrap(), tasks.mm_of(hog));
                    let score_small = k.oom_score(tasks.get(small).unwrap(), tasks.mm_of(small));
                    assert!(score_hog > score_small);
                    assert_eq!(
                        k.oom_score(tasks.get(protected).unwrap(), tasks.mm_of(protected)),
                        0
                    );
                    use mmkit::fs::proc::array::{proc_pid_oom_score, proc_pid_oom_score_adj};
                    assert_eq!(
                        proc_pid_oom_score(
                            k,
                            tasks.get(protected).unwrap(),
                            tasks.mm_of(protected)
                        ),
                        "0\n"
                    );
                    assert_eq!(
                        proc_pid_oom_score_adj(tasks.get(protected).unwrap()),
                        "-1000\n"
                    );
                    break tasks
                        .out_of_memory(k, cpu, hog, mmkit::gfp::GFP_HIGHUSER_MOVABLE, 0)
                        .unwrap();
                }
            }
        }
    });
    assert_eq!(killed, hog);
    let log = k.dmesg().join("\n");
    assert!(
        log.contains("true invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=0"),
        "{log}"
    );
    assert!(log.contains(&format!(
        "Out of memory: Killed process {hog} (true) total-vm:"
    )));
    assert!(log.contains("[  pid  ]   uid  tgid total_vm      rss rss_anon"));
    assert_eq!(event(k, "oom_kill"), 1);
    // The machine keeps running: the survivors still have their bytes and can allocate.
    m.on_cpu(0, |cpu| {
        for (pid, mib) in [(small, 4u64), (protected, 8)] {
            let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
            let base = mm.vmas().find(|v| v.pages() == mib << 8).unwrap().vm_start;
            verify(k, cpu, mm, base, mib << 8, |_| pid as u64);
            let b = k.mmap(cpu, mm, 0, 4 << 20, RW, ANON, 0).unwrap();
            fill(k, cpu, mm, b, 1024, 5);
        }
        assert!(tasks.get(hog).is_none(), "the parentless hog was released");
        tasks.exit(k, cpu, small, 0).unwrap();
        tasks.exit(k, cpu, protected, 0).unwrap();
    });
    teardown_check(&m, before);
}

/// swapoff brings every swapped page back into the page tables that referred to it: the
/// process then has no swap entries, its bytes are intact, and the area is gone.
#[test]
fn swapoff_returns_every_page() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let path = swapon(&m, dir.path(), 128);
    let mut tasks = TaskTable::default();
    let keep = spawn_true(&m, &mut tasks);
    let pressure = spawn_true(&m, &mut tasks);
    let ram = k.totalram_pages();
    m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(keep).unwrap().mm.as_mut().unwrap();
        let a = k.mmap(cpu, mm, 0, (ram / 3) << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, mm, a, ram / 3, 3);
        let pm = tasks.get_mut(pressure).unwrap().mm.as_mut().unwrap();
        let b = k.mmap(cpu, pm, 0, ram << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, pm, b, ram, 4);
        let mm = tasks.get_mut(keep).unwrap().mm.as_mut().unwrap();
        assert!(mm.counter(MM_SWAPENTS) > 0, "part of it was swapped out");
        tasks.exit(k, cpu, pressure, 0).unwrap();
        k.swapoff(cpu, &path).unwrap();
        let mm = tasks.get_mut(keep).unwrap().mm.as_mut().unwrap();
        assert_eq!(mm.counter(MM_SWAPENTS), 0);
        assert!(mm.counter(MM_ANONPAGES) >= ram / 3);
        assert_eq!(k.swap_totals(), (0, 0, 0));
        assert!(!k.proc_swaps().contains("swapfile"));
        k.check_mm_invariants(mm).unwrap();
        verify(k, cpu, mm, a, ram / 3, |_| 3);
        tasks.exit(k, cpu, keep, 0).unwrap();
    });
    teardown_check(&m, before);
}

/// `vm_swap_full`: with more than half of the swap in use, pages read back from swap give
/// their slots up at once (until half is free again); with swap to spare they keep them.
/// Either way every byte reads back, and again after a second round of swap-out (a page
/// that gave its slot up is written to a new one).
#[test]
fn swapped_in_pages_free_their_slots_when_swap_is_half_full() {
    for (swap_mib, full) in [(16u64, true), (128, false)] {
        let m = boot_mem(128, 1, "");
        let k = &m.kernel;
        let dir = tempfile::tempdir().unwrap();
        m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
        let before = free_and_pcp(k);
        let path = swapon(&m, dir.path(), swap_mib);
        let pages = (12 << 20) >> 12;
        m.on_cpu(0, |cpu| {
            // An address space of its own: nothing but the region goes to swap.
            let mut own = k.mm_alloc(cpu).unwrap();
            let mm = &mut own;
            let a = k.mmap(cpu, mm, 0, pages << 12, RW, ANON, 0).unwrap();
            fill(k, cpu, mm, a, pages, 11);
            for _ in 0..4000 {
                if mm.counter(MM_SWAPENTS) == pages {
                    break;
                }
                k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            }
            assert_eq!(mm.counter(MM_SWAPENTS), pages, "all of it on swap");
            let (total, free0, _) = k.swap_totals();
            assert_eq!(total - free0, pages);
            assert_eq!(k.vm_swap_full(), full);
            verify(k, cpu, mm, a, pages, |_| 11);
            let (_, free1, _) = k.swap_totals();
            if full {
                // Slots went back while more than half was used: half is free now (a
                // readahead page still in the swap cache may hold a few more).
                assert!(
                    free1 * 2 >= total - 64 && free1 > free0,
                    "{free0} -> {free1} of {total}"
                );
            } else {
                assert_eq!(free1, free0, "with swap to spare, the copies on swap stay");
            }
            k.check_swap_invariants().unwrap();
            k.check_mm_invariants(mm).unwrap();
            // Out and in again: the pages that gave their slots up are dirty and go to new
            // slots; nothing is lost.
            for _ in 0..4000 {
                if mm.counter(MM_SWAPENTS) == pages {
                    break;
                }
                k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            }
            assert_eq!(mm.counter(MM_SWAPENTS), pages, "all of it on swap again");
            verify(k, cpu, mm, a, pages, |_| 11);
            k.exit_mmap(cpu, own);
            k.swapoff(cpu, &path).unwrap();
        });
        teardown_check(&m, before);
    }
}

/// With free memory cut into single pages between a process's pages, an order-4 allocation
/// succeeds by compaction: pages move (their bytes, PTEs, reverse-map links and LRU places
/// with them) and the process reads back exactly what it wrote.
#[test]
fn compaction_assembles_a_high_order_block() {
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        // Fill memory until the allocator gives up (no swap: the fault fails), then free
        // every other page, and take away what high-order blocks remain without reclaim.
        let a = k
            .mmap(cpu, &mut mm, 0, 1 << 30, RW, ANON | MAP_NORESERVE, 0)
            .unwrap();
        let mut pages = 0;
        while k
            .user_write(cpu, &mut mm, a + (pages << 12), &page_bytes(pages, 9))
            .is_ok()
        {
            k.user_write(
                cpu,
                &mut mm,
                a + (pages << 12) + 4032,
                &page_bytes(pages, 9),
            )
            .unwrap();
            pages += 1;
        }
        for i in (0..pages).step_by(2) {
            k.madvise_dontneed(cpu, &mut mm, a + (i << 12), 4096)
                .unwrap();
        }
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
        let nowait = mmkit::gfp::Gfp::GFP_NOWAIT | mmkit::Gfp::__GFP_NOWARN;
        let mut held = Vec::new();
        while let Some(p) = k.alloc_pages(cpu, nowait, 4) {
            held.push(p);
        }
        let before = event(k, "compact_stall");
        let block = k
            .alloc_pages(cpu, mmkit::gfp::GFP_KERNEL | mmkit::Gfp::__GFP_NOWARN, 4)
            .expect("compaction made an order-4 block");
        assert!(event(k, "compact_stall") > before);
        assert!(event(k, "pgmigrate_success") > 0);
        k.check_mm_invariants(&mm).unwrap();
        k.check_lru_invariants().unwrap();
        let mut got = [0u8; 64];
        for i in (1..pages).step_by(2) {
            let want = page_bytes(i, 9);
            k.user_read(cpu, &mut mm, a + (i << 12), &mut got).unwrap();
            assert_eq!(got, want, "page {i} after migration");
            k.user_read(cpu, &mut mm, a + (i << 12) + 4032, &mut got)
                .unwrap();
            assert_eq!(got, want, "page {i} end after migration");
        }
        k.__free_pages(cpu, block, 4);
        for p in held {
            k.__free_pages(cpu, p, 4);
        }
        k.exit_mmap(cpu, mm);
    });
}

/// Randomized processes under memory pressure with swap: writes, reads checked against a
/// model, forks, exits, MADV_DONTNEED, kswapd runs and drop_caches, with every checker —
/// address spaces, reverse map, LRU, swap, page cache, page allocator — after every step,
/// and every page and slot back at the end.
#[test]
fn random_processes_under_pressure_keep_every_invariant() {
    processes_under_pressure(false);
}

/// The same with the memory in `MADV_HUGEPAGE` THPs: reclaim splits them before swap-out,
/// fork copies and writes split them, and every checker passes after every step.
#[test]
fn random_thp_processes_under_pressure_keep_every_invariant() {
    processes_under_pressure(true);
}

fn processes_under_pressure(thp: bool) {
    use rand::{Rng, SeedableRng};
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let path = swapon(&m, dir.path(), 128);
    let mut tasks = TaskTable::default();
    let first = spawn_true(&m, &mut tasks);
    let pages = k.totalram_pages() * 5 / 4; // more than RAM: it cannot all stay
    let base = m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(first).unwrap().mm.as_mut().unwrap();
        let a = k.mmap(cpu, mm, 0, pages << 12, RW, ANON, 0).unwrap();
        if thp {
            k.madvise(cpu, mm, a, pages << 12, mmkit::mm::madvise::MADV_HUGEPAGE)
                .unwrap();
        }
        a
    });
    // The first process writes all of it (kswapd balances a node as soon as one usable zone
    // is, as Linux's pgdat_balanced does, so only real shortage sends pages to swap).
    m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(first).unwrap().mm.as_mut().unwrap();
        for p in 0..pages {
            k.user_write(cpu, mm, base + (p << 12) + 7, &[1]).unwrap();
        }
    });
    // pid -> model of page -> value (0 = never written: reads as zero)
    let mut model: std::collections::BTreeMap<u32, Vec<u8>> =
        [(first, vec![1; pages as usize])].into();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    m.on_cpu(0, |cpu| {
        for step in 0..300 {
            let pids: Vec<u32> = model.keys().copied().collect();
            let pid = pids[rng.random_range(0..pids.len())];
            match rng.random_range(0..20) {
                0 if model.len() < 3 => {
                    let c = tasks.fork(k, cpu, pid).unwrap();
                    let copy = model[&pid].clone();
                    model.insert(c, copy);
                }
                1 if model.len() > 1 => {
                    tasks.exit(k, cpu, pid, 0).unwrap();
                    let _ = tasks.wait(tasks.get(pid).map_or(0, |t| t.ppid), Some(pid));
                    model.remove(&pid);
                }
                2 => {
                    let p = rng.random_range(0..pages - 16);
                    let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
                    k.madvise_dontneed(cpu, mm, base + (p << 12), 16 << 12)
                        .unwrap();
                    model.get_mut(&pid).unwrap()[p as usize..p as usize + 16].fill(0);
                }
                3 => {
                    k.balance_pgdat(cpu, 0);
                }
                4 => {
                    k.drop_caches(cpu, 3).unwrap();
                }
                5..=12 => {
                    // A run of writes: enough to push the others out to swap.
                    let start = rng.random_range(0..pages);
                    let n = rng.random_range(1..2048).min(pages - start);
                    let v: u8 = rng.random_range(1..=255);
                    let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
                    for p in start..start + n {
                        k.user_write(cpu, mm, base + (p << 12) + 7, &[v]).unwrap();
                    }
                    model.get_mut(&pid).unwrap()[start as usize..(start + n) as usize].fill(v);
                }
                _ => {
                    let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
                    for _ in 0..64 {
                        let p = rng.random_range(0..pages);
                        let mut b = [0u8];
                        k.user_read(cpu, mm, base + (p << 12) + 7, &mut b).unwrap();
                        assert_eq!(
                            b[0], model[&pid][p as usize],
                            "step {step}: pid {pid} page {p}"
                        );
                    }
                }
            }
            for t in tasks.iter() {
                if let Some(mm) = &t.mm {
                    k.check_mm_invariants(mm).unwrap();
                }
            }
            k.check_lru_invariants().unwrap();
            k.check_swap_invariants().unwrap();
            k.check_pagecache_invariants().unwrap();
            k.check_anon_vma_invariants().unwrap();
            k.check_invariants().unwrap();
        }
        assert!(event(k, "pswpout") > 0, "the run reached swap");
        if thp {
            assert!(event(k, "thp_fault_alloc") > 0, "THPs were mapped");
            assert!(event(k, "thp_split_page") > 0, "and split");
        }
        for pid in model.keys().copied().collect::<Vec<_>>() {
            let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
            let mut b = [0u8];
            for p in (0..pages).step_by(7) {
                k.user_read(cpu, mm, base + (p << 12) + 7, &mut b).unwrap();
                assert_eq!(b[0], model[&pid][p as usize]);
            }
            tasks.exit(k, cpu, pid, 0).unwrap();
        }
        k.swapoff(cpu, &path).unwrap();
    });
    teardown_check(&m, before);
}

/// Two processes on two CPUs overflow RAM at once while kswapd runs on a third: reclaim
/// unmaps pages of one address space while the other faults, and every byte survives. Each
/// holds its 3/4 of RAM until the other has filled its own (on a busy host the two threads
/// could otherwise run one after the other, each fitting in RAM, and nothing would be
/// swapped).
#[test]
fn concurrent_pressure_on_two_cpus_with_kswapd() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let filled = AtomicUsize::new(0);
    let m = boot_mem(128, 3, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = swapon(&m, dir.path(), 256);
    let pages = k.totalram_pages() * 3 / 4;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            m.on_cpu(2, |cpu| {
                while !done.load(Ordering::Relaxed) {
                    if k.kswapd_woken(0) {
                        k.balance_pgdat(cpu, 0);
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        });
        let workers: Vec<_> = (0..2)
            .map(|c| {
                let (m, filled) = (&m, &filled);
                s.spawn(move || {
                    m.on_cpu(c, |cpu| {
                        let mut tasks = TaskTable::default();
                        let pid = spawn_host(m, &mut tasks, cpu, &true_spec()).unwrap();
                        let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
                        let a = k.mmap(cpu, mm, 0, pages << 12, RW, ANON, 0).unwrap();
                        fill(k, cpu, mm, a, pages, 100 + c as u64);
                        // Both hold their memory at once (bounded: a worker that panicked
                        // never arrives).
                        filled.fetch_add(1, Ordering::SeqCst);
                        let t0 = std::time::Instant::now();
                        while filled.load(Ordering::SeqCst) < 2
                            && t0.elapsed() < std::time::Duration::from_secs(120)
                        {
                            std::thread::yield_now();
                        }
                        verify(k, cpu, mm, a, pages, |_| 100 + c as u64);
                        k.check_mm_invariants(mm).unwrap();
                        tasks.exit(k, cpu, pid, 0).unwrap();
                    })
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        // Stop kswapd's loop before reporting a worker's failure, or the scope waits forever.
        done.store(true, Ordering::Relaxed);
        for r in results {
            if let Err(e) = r {
                std::panic::resume_unwind(e);
            }
        }
    });
    assert!(event(k, "pswpout") > 0);
    m.on_cpu(0, |cpu| k.swapoff(cpu, &path).unwrap());
    k.check_lru_invariants().unwrap();
    k.check_swap_invariants().unwrap();
}

/// MADV_FREE: lazily freed pages go when reclaim comes, without a byte written anywhere
/// (there is no swap here) and read back as zeroes; a page written again after the advice,
/// even one whose Accessed bit reclaim had already harvested, keeps its bytes (it is
/// swap-backed anonymous memory again); a page shared with a child is not touched; the
/// advice is refused for file mappings and reports a hole.
#[test]
fn madv_free_pages_are_dropped_unless_written_again() {
    use mmkit::gfp::GFP_KERNEL;
    use mmkit::mm::madvise::{MADV_FREE, MADV_WILLNEED};
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    m.on_cpu(0, |cpu| {
        const N: u64 = 64;
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, N << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, &mut mm, a, N, 1);
        // A child copies every page on write but 62, which the two keep sharing.
        let mut child = k.dup_mmap(cpu, &mm).unwrap();
        for i in (0..N).filter(|&i| i != 62) {
            k.user_write(cpu, &mut child, a + (i << 12), &page_bytes(i, 3))
                .unwrap();
        }
        let lazy0 = event(k, "pglazyfree");
        k.madvise(cpu, &mut mm, a, N << 12, MADV_FREE).unwrap();
        assert_eq!(
            event(k, "pglazyfree") - lazy0,
            N - 1,
            "all but the shared page"
        );
        // Written again after the advice: pages 5 (plainly) and 7 (its Accessed bit then
        // harvested, as a reclaim scan would).
        k.user_write(cpu, &mut mm, a + (5 << 12), &page_bytes(5, 2))
            .unwrap();
        k.user_write(cpu, &mut mm, a + (7 << 12), &page_bytes(7, 2))
            .unwrap();
        let p7 = k
            .pfn_to_page(k.pte_lookup(&mm.pt, a + (7 << 12)).unwrap().pfn())
            .unwrap();
        k.page_referenced(cpu, p7);
        let freed0 = (event(k, "pglazyfreed"), event(k, "pswpout"));
        for _ in 0..64 {
            k.try_to_free_pages(cpu, GFP_KERNEL);
        }
        let dropped = event(k, "pglazyfreed") - freed0.0;
        assert_eq!(
            dropped,
            N - 3,
            "every lazily freed page but the two written again"
        );
        assert_eq!(event(k, "pswpout"), freed0.1, "nothing written");
        assert_eq!(mm.counter(MM_ANONPAGES), 3);
        assert!(
            p7.test(mmkit::mm::page::PageFlags::SWAPBACKED),
            "page 7 is anonymous again"
        );
        let mut b = [0u8; 64];
        for i in 0..N {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut b).unwrap();
            let want = match i {
                5 | 7 => page_bytes(i, 2),
                62 => page_bytes(i, 1),
                _ => [0; 64],
            };
            assert_eq!(b, want, "page {i}");
            k.user_read(cpu, &mut child, a + (i << 12), &mut b).unwrap();
            let theirs = page_bytes(i, if i == 62 { 1 } else { 3 });
            assert_eq!(b, theirs, "the child's page {i}");
        }
        k.check_mm_invariants(&mm).unwrap();
        k.check_lru_invariants().unwrap();
        // Only private anonymous memory; holes are reported.
        let inode = k.new_inode(Box::new(RamFile::new(vec![7; 8192])), (0, 2), 9, "/f");
        let f = k.open(&inode, FMode::READ).unwrap();
        let x = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, 8192, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        assert_eq!(
            k.madvise(cpu, &mut mm, x, 8192, MADV_FREE),
            Err(mmkit::Errno::EINVAL)
        );
        assert_eq!(
            k.madvise(cpu, &mut mm, x, 8192, 99),
            Err(mmkit::Errno::EINVAL)
        );
        k.madvise(cpu, &mut mm, x, 8192, MADV_WILLNEED).unwrap();
        k.munmap(cpu, &mut mm, a + (10 << 12), 4096).unwrap();
        assert_eq!(
            k.madvise(cpu, &mut mm, a, 16 << 12, MADV_FREE),
            Err(mmkit::Errno::ENOMEM)
        );
        k.exit_mmap(cpu, child);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
    teardown_check(&m, before);
}

/// MADV_WILLNEED on anonymous memory (`madvise_willneed` → `swapin_walk_pmd_entry`): the
/// swapped-out pages of the range are read into the swap cache without being mapped, so
/// touching them afterwards is a minor fault that reads nothing; a hole in the range is
/// `ENOMEM`, after the pages beyond it have been read too.
#[test]
fn madv_willneed_reads_swapped_out_anonymous_pages() {
    use mmkit::gfp::GFP_KERNEL;
    use mmkit::mm::madvise::MADV_WILLNEED;
    use mmkit::mm::swap_state::NR_SWAPCACHE;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    let path = swapon(&m, dir.path(), 64);
    m.on_cpu(0, |cpu| {
        const N: u64 = 256;
        const HOLE: u64 = 100;
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, N << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, &mut mm, a, N, 6);
        k.munmap(cpu, &mut mm, a + (HOLE << 12), 4096).unwrap();
        for _ in 0..500 {
            if mm.counter(MM_SWAPENTS) == N - 1 {
                break;
            }
            k.try_to_free_pages(cpu, GFP_KERNEL);
        }
        let swapped = mm.counter(MM_SWAPENTS);
        assert_eq!(swapped, N - 1, "every page of the range is on swap");
        let anon = mm.counter(MM_ANONPAGES);
        let (cached0, pswpin0) = (k.global_node_page_state(NR_SWAPCACHE), event(k, "pswpin"));
        assert_eq!(
            k.madvise(cpu, &mut mm, a, N << 12, MADV_WILLNEED),
            Err(mmkit::Errno::ENOMEM)
        );
        let read = event(k, "pswpin") - pswpin0;
        let cached = k.global_node_page_state(NR_SWAPCACHE);
        assert_eq!(
            cached,
            cached0 + read,
            "every page read is in the swap cache"
        );
        assert!(
            cached >= swapped,
            "the whole range, past the hole: {cached}"
        );
        assert_eq!(mm.counter(MM_SWAPENTS), swapped, "nothing was mapped");
        assert_eq!(mm.counter(MM_ANONPAGES), anon);
        k.check_swap_invariants().unwrap();
        k.check_lru_invariants().unwrap();
        let (maj0, pswpin1) = (event(k, "pgmajfault"), event(k, "pswpin"));
        let mut got = [0u8; 64];
        for i in (0..N).filter(|&i| i != HOLE) {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut got).unwrap();
            assert_eq!(got, page_bytes(i, 6), "page {i}");
        }
        assert_eq!(event(k, "pgmajfault"), maj0, "only minor faults");
        assert_eq!(event(k, "pswpin"), pswpin1, "nothing read again");
        assert_eq!(mm.counter(MM_SWAPENTS), 0);
        verify(k, cpu, &mut mm, a, HOLE, |_| 6);
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
        k.swapoff(cpu, &path).unwrap();
    });
    teardown_check(&m, before);
}

/// A page swap readahead brought into the swap cache (still in this CPU's LRU add batch)
/// gives its slot back when the last swap PTE that referred to it goes (here at munmap and
/// at exit): `free_swap_and_cache`
/// reclaims an unmapped swap-cache page whatever else holds a reference to it, as
/// `__try_to_reclaim_swap(TTRS_UNMAPPED)` does. (It required no other reference, so such
/// pages kept their slots after the process unmapped everything.)
#[test]
fn unmapping_frees_readahead_swap_cache() {
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = swapon(&m, dir.path(), 256);
    let mut tasks = TaskTable::default();
    let pid = spawn_true(&m, &mut tasks);
    m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
        let pages = k.totalram_pages() * 3 / 2;
        let a = k.mmap(cpu, mm, 0, pages << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, mm, a, pages, 5);
        assert!(event(k, "pswpout") > 0, "pages went to swap");
        // The first pages were written first and are on swap: reading one swaps it in with
        // its readahead window; nothing drains the LRU add batch before the unmap.
        let mut b = [0u8; 8];
        k.user_read(cpu, mm, a, &mut b).unwrap();
        assert!(
            k.swap_totals().2 > 1,
            "readahead put several pages in the swap cache"
        );
        k.munmap(cpu, mm, a, pages << 12).unwrap();
        // The readahead window also holds pages of the process's other mappings (its
        // stack, its data): they go with the process.
        tasks.exit(k, cpu, pid, 0).unwrap();
        let (total, free, cached) = k.swap_totals();
        assert_eq!(
            (free, cached),
            (total, 0),
            "every slot and swap-cache page let go"
        );
        k.swapoff(cpu, &path).unwrap();
    });
}

/// A freed page keeps none of its flags: `free_pages_prepare` clears every flag
/// (`PAGE_FLAGS_CHECK_AT_PREP` is all of them but `PG_hwpoison`). Pages that had been
/// anonymous memory kept `PG_swapbacked`; handed out again as a shared anonymous mapping's
/// page cache, reclaim took them for anonymous memory and put them in the swap cache while
/// they were still in the page cache, where they kept their swap slots after every process
/// had gone (found by the mm_ops fuzzer with long operation sequences).
#[test]
fn recycled_pages_carry_no_stale_flags() {
    use mmkit::addr::Pfn;
    use mmkit::mm::page::PageFlags;
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = swapon(&m, dir.path(), 256);
    let mut tasks = TaskTable::default();
    let pid = spawn_true(&m, &mut tasks);
    m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
        let ram = k.totalram_pages();
        // Anonymous memory through swap, then gone: its pages are free again.
        let a = k
            .mmap(cpu, mm, 0, (ram * 3 / 2) << 12, RW, ANON, 0)
            .unwrap();
        fill(k, cpu, mm, a, ram * 3 / 2, 1);
        assert!(event(k, "pswpout") > 0, "pages went to swap");
        k.munmap(cpu, mm, a, (ram * 3 / 2) << 12).unwrap();
        // A shared anonymous mapping takes them for its page cache.
        let n = ram / 4;
        let s = k
            .mmap(cpu, mm, 0, n << 12, RW, MAP_SHARED | MAP_ANONYMOUS, 0)
            .unwrap();
        fill(k, cpu, mm, s, n, 2);
        let stale = (0..n)
            .filter_map(|i| k.pte_lookup(&mm.pt, s + (i << 12)))
            .filter(|p| p.is_present())
            .map(|p| k.pfn_to_page(Pfn(p.pfn().0)).unwrap().flags())
            .filter(|f| f.intersects(PageFlags::SWAPBACKED | PageFlags::OWNER_PRIV_1))
            .count();
        assert_eq!(
            stale, 0,
            "page-cache pages marked swap-backed or swap cache"
        );
        // Pressure again: reclaim must treat them as the memory file's pages.
        let b = k.mmap(cpu, mm, 0, ram << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, mm, b, ram, 3);
        verify(k, cpu, mm, s, n, |_| 2);
        k.munmap(cpu, mm, b, ram << 12).unwrap();
        k.munmap(cpu, mm, s, n << 12).unwrap();
        tasks.exit(k, cpu, pid, 0).unwrap();
        let (total, free, cached) = k.swap_totals();
        assert_eq!(
            (free, cached),
            (total, 0),
            "every slot and swap-cache page let go"
        );
        k.swapoff(cpu, &path).unwrap();
    });
}
