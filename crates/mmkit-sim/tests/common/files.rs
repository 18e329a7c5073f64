//! Helpers for the page-cache and THP tests: file contents, `/proc` fields, memory files
//! cached in large folios, reading a mapping back against the file.

use mmkit::fs::inode::{Inode, RamFile};
use mmkit::fs::proc::task_mmu::proc_pid_smaps;
use mmkit::mm::mm_types::MmStruct;
use mmkit::{CpuGuard, Kernel};
use std::sync::Arc;

const PAGE: u64 = 4096;

/// File bytes that differ in every page and every offset (`pages` pages, a xorshift from
/// `seed`).
pub fn file_bytes(pages: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..pages * PAGE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A `/proc` value in kB ("  1234 kB").
pub fn kb_value(s: &str) -> u64 {
    s.trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// The smaps field `name` (kB) of the VMA starting at `start`.
pub fn smaps_field(k: &Kernel, mm: &MmStruct, start: u64, name: &str) -> u64 {
    let smaps = proc_pid_smaps(k, mm);
    let head = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    lines.next().expect("the VMA is in smaps");
    let l = lines
        .find(|l| l.starts_with(name))
        .expect("the field is in smaps");
    kb_value(&l[name.len()..])
}

/// The meminfo field `name` (kB).
pub fn meminfo_field(k: &Kernel, name: &str) -> u64 {
    let m = mmkit::fs::proc::meminfo::meminfo(k);
    let l = m.lines().find(|l| l.starts_with(name)).unwrap();
    kb_value(&l[name.len()..])
}

/// A memory file holding `data`, cached in large folios if `large`.
pub fn new_file(k: &Kernel, data: &[u8], ino: u64, large: bool) -> Arc<Inode> {
    let inode = k.new_inode(Box::new(RamFile::new(data.to_vec())), (0, 2), ino, "/f");
    if large {
        inode.mapping_set_large_folios();
    }
    inode
}

/// Free pages (buddy and per-CPU lists) after every CPU batch went back.
pub fn drain_and_count(m: &mmkit_sim::Machine) -> u64 {
    m.on_cpu(0, |cpu| {
        m.kernel.lru_add_drain_all(cpu);
        m.kernel.drain_all_pages(cpu);
    });
    super::free_and_pcp(&m.kernel)
}

/// Read pages `pages` of the mapping at `a` and compare each with the file's `data`.
pub fn read_pages(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    a: u64,
    data: &[u8],
    pages: impl Iterator<Item = u64>,
) {
    let mut buf = vec![0u8; PAGE as usize];
    for i in pages {
        k.user_read(cpu, mm, a + i * PAGE, &mut buf).unwrap();
        let off = (i * PAGE) as usize;
        assert_eq!(&buf[..], &data[off..off + PAGE as usize], "page {i}");
    }
}

/// The host file at `path` registered with the machine through a read-write descriptor
/// (writeback can reach it), as a program's `open(O_RDWR)` registers it.
pub fn register(
    m: &mmkit_sim::Machine,
    cpu: &CpuGuard<'_>,
    path: &std::path::Path,
) -> mmkit_sim::hostfs::HostEntry {
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    m.hostfs
        .inode_of(&m.kernel, cpu, rw, &path.to_string_lossy(), true)
        .unwrap()
}

/// Resize the host file and tell the machine (`truncate_setsize`).
pub fn resize(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    entry: &mmkit_sim::hostfs::HostEntry,
    path: &std::path::Path,
    len: u64,
) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
    mmkit_sim::hostfs::truncate_setsize(k, cpu, entry, len);
}
