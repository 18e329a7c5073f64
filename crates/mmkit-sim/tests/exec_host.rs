//! exec of files built to probe the loader — bad headers, odd interpreters, FIFOs and
//! directories, missing execute bits, `#!` scripts and their nesting limit, set-user-ID
//! files, 32-bit programs, images large enough for 2 MiB alignment — run on the host kernel
//! (a ptraced child stopped at its exec, randomization off) and on the machine: the outcome
//! (runs, which errno, killed after the point of no return) must be the same, and when both
//! run, `/proc/PID/maps` must be equal. Each case here was wrong before (refused, hung,
//! panicked, or laid out differently).

mod common;
use common::{boot_mem, elf_file, Seg};
use mmkit::fs::proc::task_mmu::{proc_pid_maps, proc_pid_smaps};
use mmkit_sim::exec::{exec_outcome, ExecSpec};
use mmkit_sim::hostfs::host_cred;
use mmkit_sim::hostview::{host_caps, host_exec, skip, HostExec};
use mmkit_sim::Machine;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ENV: &[&str] = &["A=1", "HOME=/nonexistent"];

/// What an exec did, comparable across the two kernels.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Runs(String),
    Errno(i32),
    Killed,
}

fn host(path: &Path) -> Outcome {
    let p = path.as_os_str().as_encoded_bytes();
    match host_exec(p, &[p], ENV, true).expect("the host side runs") {
        HostExec::Runs(img) => Outcome::Runs(img.maps),
        HostExec::Failed(e) => Outcome::Errno(e),
        HostExec::Killed(_) => Outcome::Killed,
    }
}

fn ours(m: &Machine, path: &Path) -> Outcome {
    let p = path.to_str().unwrap();
    let spec = ExecSpec {
        path: p,
        argv: vec![p.to_string()],
        envp: ENV.iter().map(|s| s.to_string()).collect(),
        no_aslr: true,
    };
    m.on_cpu(0, |cpu| match exec_outcome(m, cpu, &spec, &host_cred()) {
        Ok(img) => {
            m.kernel.check_mm_invariants(&img.mm).unwrap();
            let maps = proc_pid_maps(&img.mm);
            m.kernel.exit_mmap(cpu, img.mm);
            Outcome::Runs(maps)
        }
        Err(e) if e.fatal => Outcome::Killed,
        Err(e) => Outcome::Errno(e.errno.code()),
    })
}

/// Without the vDSO lines, when the host kernel lays those out as before 6.13.
fn comparable(o: Outcome) -> Outcome {
    match o {
        Outcome::Runs(maps) if host_caps().same_vdso_layout().is_err() => Outcome::Runs(
            maps.lines()
                .filter(|l| {
                    !(l.ends_with("[vvar]")
                        || l.ends_with("[vvar_vclock]")
                        || l.ends_with("[vdso]"))
                })
                .map(|l| format!("{l}\n"))
                .collect(),
        ),
        o => o,
    }
}

/// Compare `path` on both kernels; returns the host's outcome.
fn same(m: &Machine, path: &Path) -> Outcome {
    let (h, o) = (comparable(host(path)), comparable(ours(m, path)));
    assert_eq!(o, h, "{}: ours vs the host kernel's", path.display());
    h
}

/// The host's side can be observed here, or the test says why not.
fn can_compare(test: &str) -> bool {
    let caps = host_caps();
    if let Err(why) = &caps.ptrace {
        skip(test, why);
        return false;
    }
    if let Err(why) = caps.same_vdso_layout() {
        skip(test, &format!("[vvar]/[vdso] lines not compared: {why}"));
    }
    true
}

fn write_exec(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Headers Linux refuses or accepts, and interpreters it cannot use, derived from the
/// host's own /bin/true: a huge e_phoff (it made our loader allocate e_phoff bytes), a
/// header table over 64 KiB, the wrong entry size, a PT_INTERP without its NUL; a version
/// byte, class byte or data byte Linux does not check, no PT_LOAD at all, a NUL-padded
/// interpreter path; interpreters that are a directory, a FIFO (this hung), not executable,
/// a script or empty; and a FIFO, a directory, a device, a file without execute permission,
/// an empty file and a missing path exec'd directly.
#[test]
fn bad_headers_and_interpreters_as_the_host_kernel() {
    const TEST: &str = "bad_headers_and_interpreters_as_the_host_kernel";
    if !can_compare(TEST) {
        return;
    }
    let Ok(orig) = std::fs::read("/bin/true") else {
        skip(TEST, "/bin/true cannot be read on this host");
        return;
    };
    if orig.len() < 64 || orig[..4] != *b"\x7fELF" || orig[4] != 2 {
        skip(TEST, "/bin/true is not a 64-bit ELF file here");
        return;
    }
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (phoff, phnum) = (u64at(&orig, 32) as usize, u16at(&orig, 56) as usize);
    let interp = (0..phnum)
        .map(|i| phoff + 56 * i)
        .find(|&o| u32::from_le_bytes(orig[o..o + 4].try_into().unwrap()) == 3)
        .map(|o| {
            (
                o,
                u64at(&orig, o + 8) as usize,
                u64at(&orig, o + 32) as usize,
            )
        });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a FIFO at a fresh path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o755) }, 0);
    write_exec(d, "nox", &orig, 0o644);
    write_exec(d, "script", b"#!/bin/sh\necho\n", 0o755);
    write_exec(d, "empty", b"", 0o755);
    let variant = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = orig.clone();
        f(&mut b);
        write_exec(d, name, &b, 0o755)
    };
    let mut cases = vec![
        variant("huge_phoff", &|b| {
            b[32..40].copy_from_slice(&0xffff_ffff_ff00u64.to_le_bytes())
        }),
        variant("phnum_huge", &|b| {
            b[56..58].copy_from_slice(&0xffffu16.to_le_bytes())
        }),
        variant("phentsize", &|b| {
            b[54..56].copy_from_slice(&32u16.to_le_bytes())
        }),
        variant("bad_version", &|b| {
            b[6] = 7;
            b[20..24].copy_from_slice(&9u32.to_le_bytes());
        }),
        variant("class_byte", &|b| b[4] = 1),
        variant("data_byte", &|b| b[5] = 2),
        variant("no_load", &|b| {
            for i in 0..phnum {
                let o = phoff + 56 * i;
                if u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 1 {
                    b[o..o + 4].copy_from_slice(&0u32.to_le_bytes());
                }
            }
        }),
    ];
    if let Some((_, off, size)) = interp {
        let set = |path: String, pad_junk: bool| {
            move |b: &mut Vec<u8>| {
                let mut v = path.clone().into_bytes();
                v.push(0);
                if pad_junk {
                    v.extend_from_slice(b"XX\0");
                }
                assert!(v.len() <= size, "the interpreter path fits");
                v.resize(size, 0);
                b[off..off + size].copy_from_slice(&v);
            }
        };
        let real = String::from_utf8_lossy(&orig[off..off + size])
            .trim_end_matches('\0')
            .to_string();
        // A short name for the real interpreter, so NULs fit after it.
        std::os::unix::fs::symlink(&real, d.join("ld")).unwrap();
        let real = d.join("ld").to_str().unwrap().to_string();
        let p = |n: &str| d.join(n).to_str().unwrap().to_string();
        for (name, path, junk) in [
            ("interp_dir", "/tmp".to_string(), false),
            ("interp_fifo", p("fifo"), false),
            ("interp_nox", p("nox"), false),
            ("interp_script", p("script"), false),
            ("interp_empty", p("empty"), false),
            ("interp_nul_padded", real.clone(), false),
            ("interp_nul_junk", real, true),
        ] {
            if path.len() + 1 + if junk { 3 } else { 0 } <= size {
                cases.push(variant(name, &set(path.clone(), junk)));
            }
        }
        cases.push(variant("interp_unterminated", &|b| {
            b[off + size - 1] = b'x'
        }));
    }
    cases.extend([fifo, d.to_path_buf(), d.join("nox"), d.join("empty")]);
    // A character device and a missing path.
    cases.extend([PathBuf::from("/dev/null"), d.join("missing")]);
    let m = boot_mem(256, 1, "");
    for c in &cases {
        same(&m, c);
    }
}

/// `#!` scripts: an interpreter with one argument, a chain of five scripts (the most
/// exec_binprm allows) and of six (ELOOP), no interpreter name (ENOEXEC), a missing one
/// (ENOENT), "#!" alone, and NULs in the line.
#[test]
fn scripts_as_the_host_kernel() {
    const TEST: &str = "scripts_as_the_host_kernel";
    if !can_compare(TEST) {
        return;
    }
    if !Path::new("/bin/sh").exists() {
        skip(TEST, "no /bin/sh on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = boot_mem(256, 1, "");
    let mut prev = String::from("/bin/sh");
    let mut chain = Vec::new();
    for i in 1..=7 {
        let p = write_exec(
            d,
            &format!("s{i}"),
            format!("#!{prev}\necho\n").as_bytes(),
            0o755,
        );
        prev = p.to_str().unwrap().to_string();
        chain.push(p);
    }
    for (i, p) in chain.iter().enumerate() {
        let h = same(&m, p);
        if i < 5 {
            assert!(matches!(h, Outcome::Runs(_)), "{} levels run", i + 1);
        } else {
            assert_eq!(h, Outcome::Errno(libc::ELOOP), "{} levels: ELOOP", i + 1);
        }
    }
    for (name, text) in [
        ("with_arg", &b"#! /bin/sh  -e  \necho\n"[..]),
        ("no_name", b"#!\n"),
        ("blanks", b"#!  \t \n"),
        ("missing", b"#!/nonexistent/interpreter\n"),
        ("bang_only", b"#!"),
        ("nul_before_name", b"#!\0/bin/sh\n"),
        ("nul_in_arg", b"#! /bin/sh\0 -x\n"),
    ] {
        let p = write_exec(d, name, text, 0o755);
        same(&m, &p);
    }
}

/// A set-user-ID copy of /bin/true: exec clears ADDR_NO_RANDOMIZE for it
/// (PER_CLEAR_ON_SETID) on the host, and so it does here — two execs land in different
/// places exactly when the host's do (not at all on a nosuid mount).
#[test]
fn setuid_files_are_randomized_as_the_host_does() {
    const TEST: &str = "setuid_files_are_randomized_as_the_host_does";
    if !can_compare(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Ok(orig) = std::fs::read("/bin/true") else {
        skip(TEST, "/bin/true cannot be read on this host");
        return;
    };
    let p = write_exec(dir.path(), "suid", &orig, 0o4755);
    let m = boot_mem(256, 1, "");
    let (h1, h2) = (host(&p), host(&p));
    let (o1, o2) = (ours(&m, &p), ours(&m, &p));
    let host_random = h1 != h2;
    assert_eq!(
        o1 != o2,
        host_random,
        "randomized exactly when the host randomizes"
    );
    if !host_random {
        skip(
            TEST,
            "the host does not randomize it (a nosuid mount?): compared as fixed maps",
        );
        assert_eq!(comparable(o1), comparable(h1));
    }
    // A plain copy stays fixed.
    let q = write_exec(dir.path(), "plain", &orig, 0o755);
    assert_eq!(ours(&m, &q), ours(&m, &q));
}

/// 32-bit programs (ia32) get the compat layout: addresses below 4 GiB, the stack at
/// 0xffffe000, the mmap base 128 MiB below it, no [vsyscall]; without PT_GNU_STACK,
/// READ_IMPLIES_EXEC makes data executable. A static executable, one with PT_GNU_STACK, and
/// a static PIE are compared with the host kernel's maps.
#[test]
fn ia32_programs_as_the_host_kernel() {
    const TEST: &str = "ia32_programs_as_the_host_kernel";
    if !can_compare(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = Seg {
        flags: 5,
        offset: 0,
        vaddr: 0x0804_8000,
        filesz: 0x180,
        memsz: 0x180,
        align: 0x1000,
    };
    let data = Seg {
        flags: 6,
        offset: 0x1000,
        vaddr: 0x0804_9000,
        filesz: 0x40,
        memsz: 0x3000,
        align: 0x1000,
    };
    let pie = [
        Seg { vaddr: 0, ..text },
        Seg {
            vaddr: 0x1000,
            ..data
        },
    ];
    let files = [
        write_exec(
            d,
            "exec32",
            &elf_file(false, 2, 0x0804_8100, &[text, data], None, None),
            0o755,
        ),
        write_exec(
            d,
            "exec32_nx",
            &elf_file(false, 2, 0x0804_8100, &[text, data], None, Some(6)),
            0o755,
        ),
        write_exec(
            d,
            "pie32",
            &elf_file(false, 3, 0x100, &pie, None, Some(6)),
            0o755,
        ),
    ];
    let m = boot_mem(256, 1, "");
    if !host_caps().ia32 {
        skip(
            TEST,
            "the host kernel does not run 32-bit programs: only our layout is checked",
        );
    }
    for f in &files {
        let o = ours(&m, f);
        let Outcome::Runs(maps) = &o else {
            panic!("{}: {o:?}", f.display());
        };
        assert!(
            maps.lines()
                .any(|l| l.starts_with("fffdd000-ffffe000") && l.ends_with("[stack]")),
            "{maps}"
        );
        assert!(!maps.contains("[vsyscall]"));
        if host_caps().ia32 {
            assert_eq!(comparable(o), comparable(host(f)), "{}", f.display());
        }
    }
    // The 32-bit auxiliary vector: AT_SYSINFO (the vDSO's __kernel_vsyscall, whose
    // offset is the kernel build's) first, then as the 64-bit one, in 4-byte words.
    if host_caps().ia32 {
        for f in &files {
            let pb = f.as_os_str().as_encoded_bytes();
            let HostExec::Runs(h) = host_exec(pb, &[pb], ENV, true).unwrap() else {
                panic!("the host runs {}", f.display());
            };
            let host: Vec<(u64, u64)> = h
                .auxv
                .chunks_exact(8)
                .map(|c| {
                    (
                        u64::from(u32::from_le_bytes(c[..4].try_into().unwrap())),
                        u64::from(u32::from_le_bytes(c[4..].try_into().unwrap())),
                    )
                })
                .take_while(|e| e.0 != 0)
                .collect();
            let p = f.to_str().unwrap();
            let spec = ExecSpec {
                path: p,
                argv: vec![p.to_string()],
                envp: ENV.iter().map(|s| s.to_string()).collect(),
                no_aslr: true,
            };
            let ours = m.on_cpu(0, |cpu| {
                let img = exec_outcome(&m, cpu, &spec, &host_cred()).unwrap();
                assert!(img.compat);
                let a = img.auxv.clone();
                m.kernel.exit_mmap(cpu, img.mm);
                a
            });
            let root = host_caps().root;
            let keep = |v: &[(u64, u64)]| -> Vec<(u64, u64)> {
                v.iter()
                    .map(|&(k, v)| if k == 32 { (k, 0) } else { (k, v) })
                    .filter(|e| root || !(11..=14).contains(&e.0))
                    .collect()
            };
            assert_eq!(keep(&ours), keep(&host), "{} auxv", f.display());
        }
    }
    // READ_IMPLIES_EXEC without PT_GNU_STACK: the data and bss are executable.
    let Outcome::Runs(rie) = ours(&m, &files[0]) else {
        unreachable!()
    };
    assert!(
        rie.lines().any(|l| l.starts_with("0804a000-0804c000 rwxp")),
        "{rie}"
    );
    let Outcome::Runs(nx) = ours(&m, &files[1]) else {
        unreachable!()
    };
    assert!(
        nx.lines().any(|l| l.starts_with("0804a000-0804c000 rw-p")),
        "{nx}"
    );
}

/// Images of 2 MiB or more run directly (static PIEs, loaders) are placed by the file
/// system's thp_get_unmapped_area: 2 MiB-aligned where the host's file system does that
/// (ext4, xfs, btrfs…); and one asking for a 2 MiB p_align gets it. Compared with the host.
#[test]
fn large_images_are_placed_as_the_host_kernel_places_them() {
    const TEST: &str = "large_images_are_placed_as_the_host_kernel_places_them";
    if !can_compare(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seg = |vaddr: u64, filesz: u64, memsz: u64, align: u64, offset: u64, flags: u32| Seg {
        flags,
        offset,
        vaddr,
        filesz,
        memsz,
        align,
    };
    let big = [
        seg(0, 0x200, 0x200, 0x1000, 0, 5),
        seg(0x1000, 0x100, 0x30_0000, 0x1000, 0x1000, 6),
    ];
    let big_file = [
        seg(0, 0x22_0000, 0x22_0000, 0x1000, 0, 5),
        seg(0x22_1000, 0x100, 0x2000, 0x1000, 0x22_1000, 6),
    ];
    let aligned = [
        seg(0, 0x200, 0x200, 0x20_0000, 0, 5),
        seg(0x20_1000, 0x100, 0x2000, 0x20_0000, 0x1000, 6),
    ];
    let small = [
        seg(0, 0x200, 0x200, 0x1000, 0, 5),
        seg(0x1000, 0x100, 0x2000, 0x1000, 0x1000, 6),
    ];
    let m = boot_mem(256, 1, "");
    let mut seen_aligned = false;
    for (name, segs) in [
        ("big_bss", &big[..]),
        ("big_file", &big_file),
        ("p_align_2m", &aligned),
        ("small", &small),
    ] {
        let f = write_exec(
            d,
            name,
            &elf_file(true, 3, 0x100, segs, None, Some(6)),
            0o755,
        );
        let h = same(&m, &f);
        if let Outcome::Runs(maps) = h {
            let first = u64::from_str_radix(maps.split('-').next().unwrap(), 16).unwrap();
            seen_aligned |= first.is_multiple_of(2 << 20);
        }
    }
    if !seen_aligned {
        skip(
            TEST,
            "the host's temporary directory's file system places nothing at 2 MiB",
        );
    }
    // Anonymous memory: Linux 6.7+ aligns private anonymous mappings that are a multiple of
    // 2 MiB; the host does it for its own process as we do for ours.
    if !Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        skip(
            TEST,
            "the host kernel has no THP: anonymous alignment not compared",
        );
        return;
    }
    // SAFETY: an anonymous mapping of our own, unmapped right away.
    let host_aligned = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4 << 20,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        libc::munmap(p, 4 << 20);
        (p as u64).is_multiple_of(2 << 20)
    };
    // mremap moving an anonymous mapping to 4 MiB places it by the same rule.
    // SAFETY: anonymous mappings of our own, unmapped right away.
    let host_moved_aligned = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        // A neighbour right above, so the mapping cannot grow in place.
        let guard = libc::mmap(
            (p as *mut u8).add(1 << 20).cast(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        let q = libc::mremap(p, 1 << 20, 4 << 20, libc::MREMAP_MAYMOVE);
        assert_ne!(q, libc::MAP_FAILED);
        libc::munmap(q, 4 << 20);
        if guard != libc::MAP_FAILED {
            libc::munmap(guard, 4096);
        }
        (q as u64).is_multiple_of(2 << 20)
    };
    let ours_moved_aligned = m.on_cpu(0, |cpu| {
        let k = &m.kernel;
        let mut mm = k.mm_alloc(cpu).unwrap();
        use mmkit::mm::mmap::*;
        let p = k
            .mmap(
                cpu,
                &mut mm,
                0,
                1 << 20,
                PROT_READ,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        k.mmap(
            cpu,
            &mut mm,
            p + (1 << 20),
            4096,
            PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            0,
        )
        .unwrap();
        let q = k
            .mremap(
                cpu,
                &mut mm,
                p,
                1 << 20,
                4 << 20,
                mmkit::mm::mremap::MREMAP_MAYMOVE,
                0,
            )
            .unwrap();
        k.exit_mmap(cpu, mm);
        q.is_multiple_of(2 << 20)
    });
    assert_eq!(ours_moved_aligned, host_moved_aligned, "mremap's placement");
    let ours_aligned = m.on_cpu(0, |cpu| {
        let k = &m.kernel;
        let mut mm = k.mm_alloc(cpu).unwrap();
        use mmkit::mm::mmap::*;
        let a = k
            .mmap(
                cpu,
                &mut mm,
                0,
                4 << 20,
                PROT_READ,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        let odd = k
            .mmap(
                cpu,
                &mut mm,
                0,
                3 << 20,
                PROT_READ,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        k.exit_mmap(cpu, mm);
        assert_ne!(
            odd % (2 << 20),
            0,
            "3 MiB is not a multiple of 2 MiB: not aligned"
        );
        a.is_multiple_of(2 << 20)
    });
    assert_eq!(ours_aligned, host_aligned);
}

/// The machine's CPU decides smaps' ProtectionKey: lines (arch_show_smap): a CPU with
/// protection keys enabled prints one for every mapping, [vsyscall] included, right after
/// THPeligible; one without prints none — whatever the host has.
#[test]
fn protection_key_lines_follow_the_machines_cpu() {
    let spec = mmkit_sim::MachineSpec {
        e820: mmkit::arch::x86_64::e820::E820Table::for_mem_size(256 << 20).unwrap(),
        cpus: 1,
        cmdline: String::new(),
    };
    for pku in [true, false] {
        let cpu = mmkit_sim::cpu::parse_cpu(if pku { "+pku" } else { "-pku" }).unwrap();
        let m = Machine::boot_with_cpu(&spec, cpu).unwrap();
        let spec = ExecSpec {
            path: "/bin/true",
            argv: vec!["/bin/true".into()],
            envp: vec![],
            no_aslr: true,
        };
        m.on_cpu(0, |c| {
            let img = mmkit_sim::exec::exec_host(&m, c, &spec).unwrap();
            let smaps = proc_pid_smaps(&m.kernel, &img.mm);
            let entries = smaps.matches("VmFlags:").count();
            let keys = smaps.matches("\nProtectionKey:         0\n").count();
            assert_eq!(keys, if pku { entries } else { 0 }, "{smaps}");
            if pku {
                assert!(
                    smaps.contains("THPeligible:           0\nProtectionKey:         0\nVmFlags:")
                );
            }
            m.kernel.exit_mmap(c, img.mm);
        });
    }
}

/// The auxiliary vector of /bin/true equals the host kernel's for the same exec: the CPU's
/// AT_HWCAP, AT_HWCAP2 and AT_MINSIGSTKSZ come from the host's CPU, the rest from the image.
#[test]
fn auxv_equals_the_host_kernels() {
    const TEST: &str = "auxv_equals_the_host_kernels";
    if !can_compare(TEST) {
        return;
    }
    let p = Path::new("/bin/true");
    let pb = p.as_os_str().as_encoded_bytes();
    let HostExec::Runs(h) = host_exec(pb, &[pb], ENV, true).unwrap() else {
        panic!("the host runs /bin/true");
    };
    let host: Vec<(u64, u64)> = h
        .auxv
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .take_while(|e| e.0 != 0)
        .collect();
    let m = boot_mem(256, 1, "");
    let spec = ExecSpec {
        path: "/bin/true",
        argv: vec!["/bin/true".into()],
        envp: ENV.iter().map(|s| s.to_string()).collect(),
        no_aslr: true,
    };
    let ours = m.on_cpu(0, |cpu| {
        let img = mmkit_sim::exec::exec_host(&m, cpu, &spec).unwrap();
        let a = img.auxv.clone();
        m.kernel.exit_mmap(cpu, img.mm);
        a
    });
    let ids = [11u64, 12, 13, 14];
    let root = host_caps().root;
    if !root {
        skip(
            TEST,
            "not root: AT_UID/AT_EUID/AT_GID/AT_EGID (0 here) not compared",
        );
    }
    let keep = |v: &[(u64, u64)]| -> Vec<(u64, u64)> {
        v.iter()
            .copied()
            .filter(|e| root || !ids.contains(&e.0))
            .collect()
    };
    assert_eq!(keep(&ours), keep(&host));
}
