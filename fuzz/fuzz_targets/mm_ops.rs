//! Random address-space operations — mmap (anonymous, private and shared file mappings of
//! a file cached in large folios, file THPs included; fixed, populated), munmap, mprotect, mremap, madvise, brk, mlock/munlock, msync, fork,
//! exit, and loads and stores through the MMU — with arbitrary arguments, on a small machine
//! with swap, under reclaim, with the THP policies (the top-level one and each mTHP size's)
//! changed at random and the deferred split queue's shrinker run. After every step every invariant checker runs (address spaces,
//! reverse map, LRU, swap, page cache, page allocator); at the end every page, page table,
//! `anon_vma` and swap slot must be back.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::fs::inode::{FMode, RamFile};
use mmkit::mm::mm_types::MmStruct;
use mmkit::mm::mmap::*;
use mmkit::mm::mremap::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE};
use mmkit::Kernel;
use mmkit_sim::{Machine, MachineSpec};
use std::sync::{Arc, OnceLock};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// A page inside (or just past) one of the process's VMAs.
    InVma { sel: u8, page: u16 },
    /// Anything at all.
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Pages(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Mmap {
        p: u8,
        addr: Addr,
        len: Len,
        prot: u8,
        flags: u32,
        file: bool,
        off_pages: u8,
    },
    Munmap {
        p: u8,
        addr: Addr,
        len: Len,
    },
    Mprotect {
        p: u8,
        addr: Addr,
        len: Len,
        prot: u8,
    },
    Mremap {
        p: u8,
        addr: Addr,
        old: Len,
        new: Len,
        flags: u8,
        to: Addr,
    },
    Madvise {
        p: u8,
        addr: Addr,
        len: Len,
        advice: u8,
    },
    Brk {
        p: u8,
        pages: i16,
    },
    Mlock {
        p: u8,
        addr: Addr,
        len: Len,
    },
    Munlock {
        p: u8,
        addr: Addr,
        len: Len,
    },
    Msync {
        p: u8,
        addr: Addr,
        len: Len,
        flags: u8,
    },
    Fork {
        p: u8,
    },
    Exit {
        p: u8,
    },
    Write {
        p: u8,
        addr: Addr,
        len: u16,
        byte: u8,
    },
    Read {
        p: u8,
        addr: Addr,
        len: u16,
    },
    Kswapd,
    DropCaches,
    /// Set the top-level THP policy (`size` 0) or one size's (16 KiB … 2 MiB).
    ThpPolicy {
        size: u8,
        policy: u8,
    },
}

/// The sizes `hugepages-<N>kB/enabled` exists for.
const THP_SIZES_KB: [u64; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];

/// Linux's defaults: `enabled=madvise` (this build's), 2 MiB `inherit`, the others `never`.
fn reset_thp_policies(k: &Kernel) {
    use mmkit::mm::huge_memory::{ThpEnabled, ThpPolicy};
    k.set_thp_enabled(ThpEnabled::Madvise);
    for kb in THP_SIZES_KB {
        let p = if kb == 2048 {
            ThpPolicy::Inherit
        } else {
            ThpPolicy::Never
        };
        k.set_mthp_enabled(kb, p).expect("a size Linux has");
    }
}

const PAGE: u64 = 4096;
const SWAP_PAGES: usize = 8192;

struct World {
    m: Machine,
    free: u64,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let m = Machine::boot(&MachineSpec {
            e820: E820Table::for_mem_size(64 << 20).expect("64 MiB is a machine"),
            cpus: 1,
            cmdline: String::new(),
        })
        .expect("the fuzz machine boots");
        let mut swap = vec![0u8; SWAP_PAGES * 4096];
        swap[..4096].copy_from_slice(&mmkit::mm::swapfile::mkswap_header(SWAP_PAGES as u64));
        m.kernel
            .swapon(Arc::new(RamFile::new(swap)), "/fuzz/swap", -2)
            .expect("swapon");
        let free = settle(&m);
        World { m, free }
    })
}

fn settle(m: &Machine) -> u64 {
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.drain_all_pages(cpu);
    });
    k.global_free_pages()
}

fn addr_of(mm: &MmStruct, a: Addr) -> u64 {
    match a {
        Addr::Raw(x) => x,
        Addr::InVma { sel, page } => {
            let v: Vec<(u64, u64)> = mm.vmas().map(|v| (v.vm_start, v.vm_end)).collect();
            if v.is_empty() {
                return 0x1000_0000 + u64::from(page) * PAGE;
            }
            let (s, e) = v[sel as usize % v.len()];
            (s + u64::from(page) * PAGE).min(e)
        }
    }
}

fn len_of(l: Len) -> u64 {
    match l {
        Len::Pages(p) => u64::from(p % 4096) * PAGE,
        Len::Raw(x) => x,
    }
}

fn check_all(k: &Kernel, procs: &[MmStruct]) {
    for mm in procs {
        k.check_mm_invariants(mm).unwrap();
    }
    k.check_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_swap_invariants().unwrap();
    k.check_pagecache_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    k.check_deferred_split_invariants().unwrap();
}

fuzz_target!(|ops: Vec<Op>| {
    let w = world();
    let (m, k) = (&w.m, &w.m.kernel);
    // 4 MiB in large folios: a MADV_HUGEPAGE mapping of it reads PMD-sized folios and
    // maps them by PMDs where the mapping is aligned (file THPs).
    let inode = k.new_inode(
        Box::new(RamFile::new(vec![0x5a; 4 << 20])),
        (0, 9),
        9,
        "/fuzz/file",
    );
    inode.mapping_set_large_folios();
    let file = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
    // Every input starts from the same policies (the machine is shared between inputs).
    reset_thp_policies(k);
    m.on_cpu(0, |cpu| {
        let new_mm = || -> MmStruct {
            let mut mm = k.mm_alloc(cpu).expect("an empty mm");
            mm.start_brk = 0x5555_0000_0000;
            mm.brk = mm.start_brk;
            mm
        };
        let mut procs = vec![new_mm()];
        for op in ops.iter().take(64) {
            let pick = |p: u8, n: usize| p as usize % n;
            match *op {
                Op::Mmap {
                    p,
                    addr,
                    len,
                    prot,
                    flags,
                    file: with_file,
                    off_pages,
                } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let len = len_of(len);
                    // Populating is bounded by the harness (root has no RLIMIT_MEMLOCK).
                    let mut flags = flags
                        & (MAP_SHARED
                            | MAP_PRIVATE
                            | MAP_FIXED
                            | MAP_ANONYMOUS
                            | MAP_GROWSDOWN
                            | MAP_LOCKED
                            | MAP_NORESERVE
                            | MAP_POPULATE
                            | MAP_FIXED_NOREPLACE
                            | MAP_SHARED_VALIDATE);
                    if len > 1024 * PAGE {
                        flags &= !(MAP_POPULATE | MAP_LOCKED);
                    }
                    let f = if with_file { Some(&file) } else { None };
                    if f.is_none() {
                        flags |= MAP_ANONYMOUS;
                    }
                    let _ = k.do_mmap(
                        cpu,
                        mm,
                        f,
                        a,
                        len,
                        u32::from(prot & 0xf),
                        flags,
                        u64::from(off_pages) * PAGE,
                    );
                }
                Op::Munmap { p, addr, len } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let _ = k.munmap(cpu, mm, a, len_of(len));
                }
                Op::Mprotect { p, addr, len, prot } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let _ = k.mprotect(cpu, mm, a, len_of(len), u32::from(prot & 0xf));
                }
                Op::Mremap {
                    p,
                    addr,
                    old,
                    new,
                    flags,
                    to,
                } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let t = addr_of(mm, to);
                    let f = u32::from(flags) & (MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP);
                    let _ = k.mremap(cpu, mm, a, len_of(old), len_of(new), f, t);
                }
                Op::Madvise {
                    p,
                    addr,
                    len,
                    advice,
                } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    // The advice Linux has (THP ones included), and a few it does not.
                    const ADVICE: [u32; 12] = [0, 1, 2, 3, 4, 8, 14, 15, 25, 5, 9, 12];
                    let advice = ADVICE[usize::from(advice) % ADVICE.len()];
                    let _ = k.madvise(cpu, mm, a, len_of(len), advice);
                }
                Op::Brk { p, pages } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let b = mm.brk.wrapping_add_signed(i64::from(pages) * PAGE as i64);
                    let _ = k.brk(cpu, mm, b);
                }
                Op::Mlock { p, addr, len } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let len = len_of(len);
                    if len <= 1024 * PAGE {
                        let _ = k.mlock(cpu, mm, a, len);
                    }
                }
                Op::Munlock { p, addr, len } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let _ = k.munlock(cpu, mm, a, len_of(len));
                }
                Op::Msync {
                    p,
                    addr,
                    len,
                    flags,
                } => {
                    let mm = &procs[pick(p, procs.len())];
                    let a = addr_of(mm, addr);
                    let _ = k.msync(cpu, mm, a, len_of(len), u32::from(flags & 7));
                }
                Op::Fork { p } => {
                    if procs.len() < 4 {
                        let i = pick(p, procs.len());
                        if let Ok(child) = k.dup_mmap(cpu, &procs[i]) {
                            procs.push(child);
                        }
                    }
                }
                Op::Exit { p } => {
                    if procs.len() > 1 {
                        let mm = procs.swap_remove(pick(p, procs.len()));
                        k.exit_mmap(cpu, mm);
                    }
                }
                Op::Write { p, addr, len, byte } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let buf = vec![byte; usize::from(len % 16384)];
                    if k.user_write(cpu, mm, a, &buf).is_ok() {
                        // What was written reads back (unless the range spans a shared
                        // mapping another process also writes: there is none mid-step).
                        let mut back = vec![0u8; buf.len()];
                        k.user_read(cpu, mm, a, &mut back).unwrap();
                        assert_eq!(back, buf, "bytes written at {a:#x} read back");
                    }
                }
                Op::Read { p, addr, len } => {
                    let n = procs.len();
                    let mm = &mut procs[pick(p, n)];
                    let a = addr_of(mm, addr);
                    let mut buf = vec![0u8; usize::from(len % 16384)];
                    let _ = k.user_read(cpu, mm, a, &mut buf);
                }
                Op::Kswapd => {
                    k.balance_pgdat(cpu, 0);
                }
                Op::DropCaches => {
                    let _ = k.drop_caches(cpu, 3);
                }
                Op::ThpPolicy { size, policy } => {
                    use mmkit::mm::huge_memory::{ThpEnabled, ThpPolicy};
                    let sizes = THP_SIZES_KB.len() + 1;
                    match size as usize % sizes {
                        0 => k.set_thp_enabled(match policy % 3 {
                            0 => ThpEnabled::Always,
                            1 => ThpEnabled::Madvise,
                            _ => ThpEnabled::Never,
                        }),
                        i => {
                            let p = match policy % 4 {
                                0 => ThpPolicy::Always,
                                1 => ThpPolicy::Inherit,
                                2 => ThpPolicy::Madvise,
                                _ => ThpPolicy::Never,
                            };
                            k.set_mthp_enabled(THP_SIZES_KB[i - 1], p)
                                .expect("a size Linux has");
                        }
                    }
                }
            }
            check_all(k, &procs);
        }
        for mm in procs {
            k.exit_mmap(cpu, mm);
        }
    });
    m.on_cpu(0, |cpu| {
        k.fput(cpu, file);
        k.evict_inode(cpu, &inode).unwrap();
    });
    let free = settle(m);
    check_all(k, &[]);
    assert_eq!(k.nr_anon_vmas(), 0, "anon_vmas leaked");
    assert_eq!(k.page_table_pages(), 0, "page tables leaked");
    let (total, free_slots, _) = k.swap_totals();
    assert_eq!(total, free_slots, "swap slots leaked");
    assert_eq!(free, w.free, "pages leaked");
});
