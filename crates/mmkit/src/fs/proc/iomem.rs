//! `/proc/iomem` from the e820 table (`e820__reserve_resources`) with the kernel image's
//! sections as children of the System RAM range that holds them.

use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;

fn range(s: &mut String, indent: usize, start: u64, end_incl: u64, name: &str) {
    let _ = writeln!(
        s,
        "{:indent$}{:08x}-{:08x} : {}",
        "",
        start,
        end_incl,
        name,
        indent = indent
    );
}

/// `/proc/iomem`.
pub fn iomem(k: &Kernel) -> String {
    let mut s = String::new();
    let img = &k.boot.image;
    let children = [
        (img.code, "Kernel code"),
        (img.rodata, "Kernel rodata"),
        (img.data, "Kernel data"),
        (img.bss, "Kernel bss"),
    ];
    for e in &k.e820.entries {
        range(&mut s, 0, e.addr, e.end() - 1, e.typ.iomem_name());
        for (r, name) in children {
            if r.0 >= e.addr && r.1 <= e.end() && r.1 > r.0 {
                range(&mut s, 2, r.0, r.1 - 1, name);
            }
        }
    }
    s
}
