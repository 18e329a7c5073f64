//! exec of arbitrary bytes: the input is split into an executable and the file every
//! interpreter path opens (so `PT_INTERP` and `#!` lines reach a second arbitrary file), and
//! exec'd — 64-bit, ia32 or script. Whatever happens, the new address space (when there is
//! one) passes every check, and once it is gone every page comes back.
//!
//! Input: byte 0 holds flags (bit 0 randomize, bit 1 set-user-ID, bits 2-7 the stack limit
//! in 256 KiB steps), bytes 1-4 the executable's length (little-endian, capped by what is
//! there), then the executable, then the interpreter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::fs::exec::ExecParams;
use mmkit::fs::inode::{FMode, FileAttr, RamFile};
use mmkit_sim::{Machine, MachineSpec};
use std::sync::OnceLock;

fn machine() -> &'static (Machine, u64) {
    static M: OnceLock<(Machine, u64)> = OnceLock::new();
    M.get_or_init(|| {
        let m = Machine::boot(&MachineSpec {
            e820: E820Table::for_mem_size(128 << 20).expect("128 MiB is a machine"),
            cpus: 1,
            cmdline: String::new(),
        })
        .expect("the fuzz machine boots");
        let free = settle(&m);
        (m, free)
    })
}

/// Drop the page cache and drain the per-CPU lists; the free page count then.
fn settle(m: &Machine) -> u64 {
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        k.drop_pagecache(cpu);
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    k.global_free_pages()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let n = (u32::from_le_bytes([data[1], data[2], data[3], data[4]]) as usize).min(data.len() - 5);
    let (exe_bytes, interp_bytes) = data[5..].split_at(n);
    let (m, free) = machine();
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let attr = FileAttr {
            mode: if flags & 2 != 0 { 0o104755 } else { 0o100755 },
            ..FileAttr::default()
        };
        let exe = k.new_inode(
            Box::new(RamFile::with_attr(exe_bytes.to_vec(), attr)),
            (0, 1),
            1,
            "/fuzz/exe",
        );
        let interp = k.new_inode(
            Box::new(RamFile::new(interp_bytes.to_vec())),
            (0, 1),
            2,
            "/fuzz/interp",
        );
        let file = k.open(&exe, FMode::READ).unwrap();
        let argv: [&[u8]; 2] = [b"/fuzz/exe", b"--flag"];
        let envp: [&[u8]; 1] = [b"A=1"];
        let params = ExecParams {
            argv: &argv,
            envp: &envp,
            filename: b"/fuzz/exe",
            randomize: flags & 1 != 0,
            rlimit_stack: (u64::from(flags >> 2) + 1) << 18,
        };
        let mut open = |_: &[u8]| k.open(&interp, FMode::READ);
        match k.do_execve(cpu, &file, &params, &mut open) {
            Ok(img) => {
                k.check_mm_invariants(&img.mm).unwrap();
                let _ = mmkit::fs::proc::task_mmu::proc_pid_maps(&img.mm);
                let _ = mmkit::fs::proc::task_mmu::proc_pid_smaps(k, &img.mm);
                assert!(img.mm.vmas().all(|v| v.vm_end <= img.mm.task_size));
                k.exit_mmap(cpu, img.mm);
            }
            Err(_) => {}
        }
        k.fput(cpu, file);
        k.evict_inode(cpu, &exe).unwrap();
        k.evict_inode(cpu, &interp).unwrap();
    });
    k.check_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    assert_eq!(settle(m), *free, "pages leaked by an exec");
    assert_eq!(k.page_table_pages(), 0, "page tables leaked by an exec");
});
