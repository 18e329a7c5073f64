//! exec of real ELF files: the address space the kernel builds — the binary's segments, the
//! interpreter, the vDSO, the stack — compared line for line and figure for figure with the
//! host kernel's at the same moment (the exec stop of a ptraced child with randomization off,
//! as `setarch -R` runs it); the initial stack's contents; bss zeroing; randomization; the
//! bad-input errors; and pmap reading our /proc/PID/smaps.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::fs::binfmt_elf::at;
use mmkit::fs::exec::ExecImage;
use mmkit::fs::inode::{FMode, RamFile};
use mmkit::fs::proc::task_mmu::{proc_pid_maps, proc_pid_smaps};
use mmkit::Errno;
use mmkit_sim::exec::{exec_host, ExecSpec};
use mmkit_sim::hostview::{have_tool, host_caps, host_exec, skip, HostExec};
use mmkit_sim::Machine;
use std::process::Command;

const ENV: &[&str] = &["A=1", "HOME=/nonexistent"];

/// The host kernel's `/proc/PID/{maps,smaps}` of `path` right after its `execve` (before
/// the interpreter runs): a child with `ADDR_NO_RANDOMIZE` stops at exec under ptrace.
fn host_view(path: &str, env: &[&str]) -> (String, String) {
    match host_exec(path.as_bytes(), &[path.as_bytes()], env, true) {
        Ok(HostExec::Runs(img)) => (img.maps, img.smaps),
        other => panic!("the host did not run {path}: {other:?}"),
    }
}

fn ours(m: &Machine, path: &str, env: &[&str], no_aslr: bool) -> Result<ExecImage, String> {
    let spec = ExecSpec {
        path,
        argv: vec![path.to_string()],
        envp: env.iter().map(|s| s.to_string()).collect(),
        no_aslr,
    };
    m.on_cpu(0, |cpu| {
        exec_host(m, cpu, &spec).map_err(|e| format!("{e:#}"))
    })
}

/// The kernel-made mappings of `/bin/true` (a PIE with an interpreter), `ldconfig` (a static
/// PIE) and `ld.so` run directly equal the host kernel's at exec time, line for line, and so
/// do their smaps (Rss: the bss page padzero copied, the stack page the strings went to).
#[test]
fn exec_layout_equals_the_host_kernels() {
    const TEST: &str = "exec_layout_equals_the_host_kernels";
    let caps = host_caps();
    if let Err(why) = &caps.ptrace {
        skip(TEST, why);
        return;
    }
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let before = free_and_pcp(k);
    // The simulated CPU is the host's: protection keys make every smaps entry carry a
    // ProtectionKey: line on both sides, or on neither.
    assert_eq!(
        k.platform().cpu_features().pkeys_enabled(),
        caps.pkeys,
        "the machine's CPU is the host's"
    );
    let vdso_lines = |s: &str| -> String {
        s.lines()
            .filter(|l| {
                !(l.ends_with("[vvar]") || l.ends_with("[vvar_vclock]") || l.ends_with("[vdso]"))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let mut compared = 0;
    for path in [
        "/bin/true",
        "/sbin/ldconfig",
        "/usr/bin/bash",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        if !std::path::Path::new(path).exists() {
            skip(TEST, &format!("{path} does not exist on this host"));
            continue;
        }
        let (host_maps, host_smaps) = host_view(path, ENV);
        let img = ours(&m, path, ENV, true).unwrap();
        k.check_mm_invariants(&img.mm).unwrap();
        let our_maps = proc_pid_maps(&img.mm);
        let our_smaps = proc_pid_smaps(k, &img.mm);
        assert_eq!(
            our_smaps.contains("ProtectionKey:"),
            host_smaps.contains("ProtectionKey:"),
            "{path}: ProtectionKey: lines exactly when the host prints them"
        );
        match caps.same_vdso_layout() {
            Ok(()) => {
                for (i, (h, o)) in host_maps.lines().zip(our_maps.lines()).enumerate() {
                    assert_eq!(o, h, "{path}: maps line {i}");
                }
                assert_eq!(our_maps, host_maps, "{path}: maps");
                assert_eq!(our_smaps, host_smaps, "{path}: smaps");
            }
            Err(why) => {
                assert_eq!(
                    vdso_lines(&our_maps),
                    vdso_lines(&host_maps),
                    "{path}: maps"
                );
                skip(
                    TEST,
                    &format!("{path}: [vvar]/[vdso] lines and smaps not compared: {why}"),
                );
            }
        }
        compared += 1;
        m.on_cpu(0, |cpu| k.exit_mmap(cpu, img.mm));
    }
    assert!(compared > 0, "no program to compare found on this host");
    // Every page the images used is back once the page cache is dropped.
    m.on_cpu(0, |cpu| {
        k.drop_pagecache(cpu);
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(free_and_pcp(k), before, "pages leaked by exec + exit");
    assert_eq!(k.page_table_pages(), 0);
}

/// The initial stack holds argc, argv, envp and the auxiliary vector pointing at the right
/// things: strings read back through the MMU, AT_PHDR at the program headers' bytes, AT_BASE
/// at the interpreter, AT_RANDOM's 16 bytes; `[stack]` is the VMA holding start_stack.
#[test]
fn initial_stack_contents() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let spec = ExecSpec {
        path: "/bin/true",
        argv: vec!["true".into(), "--version".into(), String::new()],
        envp: vec!["PATH=/bin".into(), "X=y z".into()],
        no_aslr: true,
    };
    m.on_cpu(0, |cpu| {
        let mut img = exec_host(&m, cpu, &spec).unwrap();
        let mm = &mut img.mm;
        let word =
            |mm: &mut mmkit::mm::mm_types::MmStruct, a: u64| k.get_user_u64(cpu, mm, a).unwrap();
        let cstr = |mm: &mut mmkit::mm::mm_types::MmStruct, a: u64| {
            let mut out = Vec::new();
            let mut b = [0u8];
            let mut p = a;
            loop {
                k.copy_from_user(cpu, mm, &mut b, p).unwrap();
                if b[0] == 0 {
                    return String::from_utf8(out).unwrap();
                }
                out.push(b[0]);
                p += 1;
            }
        };
        assert_eq!(img.sp % 16, 0, "16-byte aligned stack");
        assert_eq!(mm.start_stack, img.sp);
        let mut p = img.sp;
        assert_eq!(word(mm, p), 3, "argc");
        p += 8;
        for want in ["true", "--version", ""] {
            let a = word(mm, p);
            assert_eq!(cstr(mm, a), want);
            p += 8;
        }
        assert_eq!(word(mm, p), 0);
        p += 8;
        for want in ["PATH=/bin", "X=y z"] {
            let a = word(mm, p);
            assert_eq!(cstr(mm, a), want);
            p += 8;
        }
        assert_eq!(word(mm, p), 0);
        p += 8;
        let mut auxv = Vec::new();
        loop {
            let (key, val) = (word(mm, p), word(mm, p + 8));
            p += 16;
            if key == at::AT_NULL {
                break;
            }
            auxv.push((key, val));
        }
        assert_eq!(auxv, img.auxv, "the auxv on the stack is the one reported");
        let get = |key| auxv.iter().find(|e| e.0 == key).unwrap().1;
        assert_eq!(cstr(mm, get(at::AT_EXECFN)), "/bin/true");
        assert_eq!(cstr(mm, get(at::AT_PLATFORM)), "x86_64");
        assert_eq!(get(at::AT_PAGESZ), 4096);
        // The interpreter right below mmap_base (no randomization: TASK_SIZE less the
        // 128 MiB minimum gap), AT_BASE at its first page; the vDSO image right below it.
        let maps = proc_pid_maps(mm);
        let range = |l: &str| -> (u64, u64) {
            let (a, b) = l.split(' ').next().unwrap().split_once('-').unwrap();
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            )
        };
        let exe = std::fs::canonicalize("/bin/true").unwrap();
        let interp: Vec<(u64, u64)> = maps
            .lines()
            .filter(|l| {
                l.split_whitespace().nth(4) != Some("0") && l.split_whitespace().count() == 6
            })
            .filter(|l| !l.ends_with(exe.to_str().unwrap()))
            .map(range)
            .collect();
        let base =
            mmkit::mm::mm_types::MmStruct::mmap_base_for(mmkit::mm::mm_types::DEFAULT_RLIMIT_STACK);
        assert_eq!(interp.iter().map(|r| r.1).max(), Some(base), "{maps}");
        assert_eq!(get(at::AT_BASE), interp.iter().map(|r| r.0).min().unwrap());
        let vdso = range(maps.lines().find(|l| l.ends_with("[vdso]")).unwrap());
        assert_eq!(get(at::AT_SYSINFO_EHDR), vdso.0, "[vdso]");
        assert_eq!(
            vdso.1,
            get(at::AT_BASE),
            "the vDSO right below the interpreter"
        );
        // AT_PHDR: the program headers, as the file has them at e_phoff.
        let file = std::fs::read("/bin/true").unwrap();
        let phoff = u64::from_le_bytes(file[32..40].try_into().unwrap()) as usize;
        let phnum = get(at::AT_PHNUM) as usize;
        let mut ph = vec![0u8; phnum * 56];
        k.copy_from_user(cpu, mm, &mut ph, get(at::AT_PHDR))
            .unwrap();
        assert_eq!(ph, file[phoff..phoff + phnum * 56]);
        // AT_ENTRY is the binary's entry point plus its load bias.
        let e_entry = u64::from_le_bytes(file[24..32].try_into().unwrap());
        assert_eq!(get(at::AT_ENTRY), 0x5555_5555_4000 + e_entry);
        // The stack VMA is named [stack]; the strings end just below its top.
        let maps = proc_pid_maps(mm);
        let stack = maps.lines().find(|l| l.ends_with("[stack]")).unwrap();
        assert!(
            stack.starts_with("7ffffffde000-7ffffffff000 rw-p"),
            "{stack}"
        );
        assert_eq!(cstr(mm, mm.arg_start), "true");
        assert_eq!(cstr(mm, mm.env_start), "PATH=/bin");
        assert!(mm.env_end <= 0x7fff_ffff_f000 - 8);
        k.exit_mmap(cpu, img.mm);
    });
}

/// The data segment's file bytes are there and the bss tail of its last file page reads as
/// zeroes (padzero), through a private copy: the page cache keeps the file's bytes.
#[test]
fn data_segment_and_bss_tail() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let file = std::fs::read("/bin/true").unwrap();
    let spec = ExecSpec {
        path: "/bin/true",
        argv: vec!["/bin/true".into()],
        envp: vec![],
        no_aslr: true,
    };
    // Find the RW PT_LOAD.
    let phoff = u64::from_le_bytes(file[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(file[56..58].try_into().unwrap()) as usize;
    let rw = (0..phnum)
        .map(|i| &file[phoff + i * 56..phoff + (i + 1) * 56])
        .find(|p| {
            u32::from_le_bytes(p[0..4].try_into().unwrap()) == 1
                && u32::from_le_bytes(p[4..8].try_into().unwrap()) & 2 != 0
        })
        .unwrap();
    let f = |o: usize| u64::from_le_bytes(rw[o..o + 8].try_into().unwrap());
    let (off, vaddr, filesz, memsz) = (f(8), f(16), f(32), f(40));
    assert!(memsz > filesz, "/bin/true has a bss");
    m.on_cpu(0, |cpu| {
        let mut img = exec_host(&m, cpu, &spec).unwrap();
        let base = 0x5555_5555_4000u64;
        let mut got = vec![0u8; filesz as usize];
        k.user_read(cpu, &mut img.mm, base + vaddr, &mut got)
            .unwrap();
        assert_eq!(got, file[off as usize..(off + filesz) as usize]);
        let end = base + vaddr + filesz;
        let tail = 4096 - (end & 0xfff);
        let mut z = vec![0xffu8; tail as usize];
        k.user_read(cpu, &mut img.mm, end, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0), "bss tail zeroed");
        // The cached file page still has the file's bytes past filesz.
        let inode = m
            .hostfs
            .inode(k, cpu, std::path::Path::new("/bin/true"))
            .unwrap();
        let mut cached = vec![0u8; tail as usize];
        k.filemap_read(cpu, &inode, off + filesz, &mut cached)
            .unwrap();
        let want_end = ((off + filesz + tail) as usize).min(file.len());
        assert_eq!(
            &cached[..want_end - (off + filesz) as usize],
            &file[(off + filesz) as usize..want_end]
        );
        k.exit_mmap(cpu, img.mm);
    });
}

/// With randomization the binary, the mmap base and the stack move, within Linux's ranges.
#[test]
fn randomized_layouts_differ() {
    let m = boot_mem(256, 1, "");
    let a = ours(&m, "/bin/true", ENV, false).unwrap();
    let b = ours(&m, "/bin/true", ENV, false).unwrap();
    let first = |img: &ExecImage| img.mm.vmas().next().unwrap().vm_start;
    let (fa, fb) = (first(&a), first(&b));
    assert_ne!((fa, a.sp), (fb, b.sp), "two execs with ASLR differ");
    for (img, f) in [(&a, fa), (&b, fb)] {
        assert!((0x5555_5555_4000..0x5555_5555_4000 + (1u64 << 40)).contains(&f));
        assert!(img.sp > 0x7ff0_0000_0000 && img.sp < 0x7fff_ffff_f000);
        m.kernel.check_mm_invariants(&img.mm).unwrap();
    }
    m.on_cpu(0, |cpu| {
        m.kernel.exit_mmap(cpu, a.mm);
        m.kernel.exit_mmap(cpu, b.mm);
    });
}

/// Bad executables are ENOEXEC, oversized arguments E2BIG, and a failed exec leaks nothing.
#[test]
fn exec_errors() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    let before = free_and_pcp(k);
    m.on_cpu(0, |cpu| {
        let run = |bytes: Vec<u8>, argv: Vec<Vec<u8>>| {
            let inode = k.new_inode(Box::new(RamFile::new(bytes)), (0, 2), 7, "/tmp/x");
            let file = k.open(&inode, FMode::READ).unwrap();
            let argv: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
            let params = mmkit::fs::exec::ExecParams {
                argv: &argv,
                envp: &[],
                filename: b"/tmp/x",
                randomize: false,
                rlimit_stack: 8 << 20,
            };
            let r = k
                .execve(cpu, &file, &params, &mut |_| Err(Errno::ENOENT))
                .map(|img| k.exit_mmap(cpu, img.mm));
            k.fput(cpu, file);
            k.evict_inode(cpu, &inode).unwrap();
            r
        };
        // A script whose interpreter cannot be opened gets open_exec's error (binfmt_script);
        // one with no interpreter name is not a format anybody takes.
        assert_eq!(run(b"#!/bin/sh\n".to_vec(), vec![]), Err(Errno::ENOENT));
        assert_eq!(run(b"#!  \n".to_vec(), vec![]), Err(Errno::ENOEXEC));
        assert_eq!(
            run(Vec::new(), vec![]),
            Err(Errno::ENOEXEC),
            "an empty file"
        );
        assert_eq!(run(vec![0x7f, b'E', b'L'], vec![]), Err(Errno::ENOEXEC));
        let mut truncated = std::fs::read("/bin/true").unwrap();
        truncated.truncate(100);
        assert_eq!(run(truncated, vec![]), Err(Errno::ENOEXEC), "phdrs cut off");
        let mut wrong_machine = std::fs::read("/bin/true").unwrap();
        wrong_machine[18] = 0xb7; // EM_AARCH64
        assert_eq!(run(wrong_machine, vec![]), Err(Errno::ENOEXEC));
        let good = std::fs::read("/bin/true").unwrap();
        assert_eq!(
            run(good.clone(), vec![b"x".to_vec()]),
            Err(Errno::ENOENT),
            "the interpreter cannot be opened"
        );
        let huge = vec![b'a'; 40 * 4096];
        assert_eq!(
            run(good.clone(), vec![huge]),
            Err(Errno::E2BIG),
            "MAX_ARG_STRLEN"
        );
        let many: Vec<Vec<u8>> = (0..100).map(|_| vec![b'b'; 30 * 1024]).collect();
        assert_eq!(
            run(good, many),
            Err(Errno::E2BIG),
            "over a quarter of the stack"
        );
        k.drop_pagecache(cpu);
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(free_and_pcp(k), before, "failed execs leak nothing");
}

/// pmap (procps) reads our /proc/PID/maps and smaps and sums our figures.
#[test]
fn pmap_reads_our_smaps() {
    if let Err(why) = host_caps().mount_ns.clone().and(have_tool("pmap")) {
        skip("pmap_reads_our_smaps", &why);
        return;
    }
    let m = boot_mem(256, 1, "");
    let img = ours(&m, "/bin/true", ENV, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let smaps = proc_pid_smaps(&m.kernel, &img.mm);
    std::fs::write(dir.path().join("smaps"), &smaps).unwrap();
    std::fs::write(dir.path().join("maps"), proc_pid_maps(&img.mm)).unwrap();
    let script = format!(
        "mount --bind {d}/smaps /proc/$$/smaps && mount --bind {d}/maps /proc/$$/maps && pmap -x $$",
        d = dir.path().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let total = out.lines().find(|l| l.starts_with("total kB")).unwrap();
    let nums: Vec<u64> = total
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let kb = |label: &str| -> u64 {
        smaps
            .lines()
            .filter(|l| l.starts_with(label))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        nums,
        vec![kb("Size:"), kb("Rss:"), kb("Private_Dirty:")],
        "{out}"
    );
    // The resident total is the host kernel's for the same exec (the bss pages padzero
    // copied, the stack page the strings went to).
    match host_caps().ptrace {
        Ok(()) => {
            let (_, host_smaps) = host_view("/bin/true", ENV);
            let host_rss: u64 = host_smaps
                .lines()
                .filter(|l| l.starts_with("Rss:"))
                .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
                .sum();
            assert_eq!(kb("Rss:"), host_rss);
        }
        Err(ref why) => skip("pmap_reads_our_smaps", &format!("Rss not compared: {why}")),
    }
    assert!(out.contains("ld-linux-x86-64.so.2") && out.contains("true"));
    m.on_cpu(0, |cpu| m.kernel.exit_mmap(cpu, img.mm));
}
