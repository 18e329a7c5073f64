//! A file that shrinks (`truncate_pagecache`): nothing past its new end stays mapped or
//! cached — file pages, file THPs cut by the end, private copies COW made — the page
//! holding the end keeps its bytes before it and reads zeroes after, and when the file grows
//! again the bytes it grows by read as zeroes, through `read` and through mappings.

mod common;

use common::boot_mem;
use common::files::*;
use mmkit::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
use mmkit::fs::inode::FMode;
use mmkit::mm::filemap::NR_FILE_PAGES;
use mmkit::mm::madvise::MADV_HUGEPAGE;
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES};
use mmkit::mm::mmap::*;
use mmkit::Kernel;

const PAGE: u64 = 4096;

fn check_all(k: &Kernel, mms: &[&MmStruct]) {
    k.check_pagecache_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    for mm in mms {
        k.check_mm_invariants(mm).unwrap();
    }
    k.check_deferred_split_invariants().unwrap();
    k.check_invariants().unwrap();
    assert_eq!(k.bad_page_reports(), 0, "{:?}", k.dmesg());
}

/// A 4 MiB file cached in PMD-sized folios, mapped shared by one address space (by PMDs)
/// and privately by another (by PTEs, two pages written: one copy before the new end, one
/// past it), shrinks to 2 MiB + 3 pages + 100 bytes — inside the second file THP — and then
/// grows back to 4 MiB.
#[test]
fn a_shrinking_file_leaves_nothing_past_its_end_and_grows_back_zeroed() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0x7a11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    let len = pages * PAGE;
    let new_len = HPAGE_PMD_SIZE + 3 * PAGE + 100;
    let eof_page = new_len / PAGE; // 515: holds the new end
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let (mut shared, mut private) = (k.mm_alloc(cpu).unwrap(), k.mm_alloc(cpu).unwrap());
        let at = 0x4000_0000;
        let s = k
            .do_mmap(
                cpu,
                &mut shared,
                Some(&f),
                at,
                len,
                PROT_READ,
                MAP_SHARED,
                0,
            )
            .unwrap();
        k.madvise(cpu, &mut shared, s, len, MADV_HUGEPAGE).unwrap();
        read_pages(k, cpu, &mut shared, s, &data, 0..pages);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096, "mapped by PMDs");
        let p = k
            .do_mmap(
                cpu,
                &mut private,
                Some(&f),
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE,
                0,
            )
            .unwrap();
        read_pages(k, cpu, &mut private, p, &data, 0..pages);
        k.user_write(cpu, &mut private, p + 2 * PAGE, b"before")
            .unwrap();
        k.user_write(cpu, &mut private, p + 700 * PAGE, b"past")
            .unwrap();
        assert_eq!(private.counter(MM_ANONPAGES), 2);

        resize(k, cpu, &entry, &path, new_len);
        check_all(k, &[&shared, &private]);

        // The page holding the end: its bytes before it, zeroes after, in both mappings.
        let mut buf = vec![0u8; PAGE as usize];
        let tail = (new_len % PAGE) as usize;
        let off = (eof_page * PAGE) as usize;
        for (mm, a) in [(&mut shared, s), (&mut private, p)] {
            k.user_read(cpu, mm, a + eof_page * PAGE, &mut buf).unwrap();
            assert_eq!(&buf[..tail], &data[off..off + tail], "before the end");
            assert!(buf[tail..].iter().all(|&b| b == 0), "zeroes after the end");
            // Past the end: SIGBUS, the private copy past it included (even_cows).
            for i in [eof_page + 1, 600, 700, pages - 1] {
                assert!(
                    k.user_read(cpu, mm, a + i * PAGE, &mut buf[..1]).is_err(),
                    "page {i} past the end still readable"
                );
            }
        }
        // The private copy before the end is kept.
        k.user_read(cpu, &mut private, p + 2 * PAGE, &mut buf[..6])
            .unwrap();
        assert_eq!(&buf[..6], b"before");
        assert_eq!(
            private.counter(MM_ANONPAGES),
            1,
            "the copy past the end went"
        );
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 2048, "the cut PMD went");
        // Nothing cached past the end: the THP holding it was split.
        for i in eof_page + 1..pages {
            assert!(inode.cached_pfn(i).is_none(), "page {i} still cached");
        }
        assert_eq!(k.filemap_read(cpu, &inode, new_len, &mut buf).unwrap(), 0);

        // The file grows back: what it grows by reads as zeroes, through read and mappings.
        resize(k, cpu, &entry, &path, len);
        let mut grown = vec![0xffu8; (len - new_len) as usize];
        assert_eq!(
            k.filemap_read(cpu, &inode, new_len, &mut grown).unwrap(),
            grown.len()
        );
        assert!(grown.iter().all(|&b| b == 0), "old bytes came back by read");
        for (mm, a) in [(&mut shared, s), (&mut private, p)] {
            k.user_read(cpu, mm, a + eof_page * PAGE, &mut buf).unwrap();
            assert_eq!(&buf[..tail], &data[off..off + tail]);
            assert!(buf[tail..].iter().all(|&b| b == 0));
            for i in [eof_page + 1, 600, 700, pages - 1] {
                k.user_read(cpu, mm, a + i * PAGE, &mut buf).unwrap();
                assert!(buf.iter().all(|&b| b == 0), "page {i}: old bytes came back");
            }
        }
        read_pages(k, cpu, &mut shared, s, &data, 0..eof_page);
        check_all(k, &[&shared, &private]);
        k.exit_mmap(cpu, shared);
        k.exit_mmap(cpu, private);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// A cached file opened again after it was emptied on the host (`open` with `O_TRUNC`):
/// opening it sees the new size and drops the whole cache; a mapping made before has
/// nothing left to read.
#[test]
fn opening_a_file_emptied_on_the_host_drops_its_cache() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let data = file_bytes(64, 0x0e);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let inode = m.hostfs.inode(k, cpu, &path).unwrap();
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = data.len() as u64;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_SHARED, 0)
            .unwrap();
        read_pages(k, cpu, &mut mm, a, &data, 0..64);
        assert!(inode.cached_pfn(0).is_some());
        drop(std::fs::File::create(&path).unwrap()); // O_TRUNC on the host
        let again = m.hostfs.inode(k, cpu, &path).unwrap();
        assert!(std::sync::Arc::ptr_eq(&again, &inode), "one inode per file");
        assert!(
            (0..64).all(|i| inode.cached_pfn(i).is_none()),
            "cache dropped"
        );
        let mut b = [0u8; 1];
        assert!(k.user_read(cpu, &mut mm, a, &mut b).is_err(), "SIGBUS");
        check_all(k, &[&mm]);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
    });
}

/// A program on /dev/kvm writes a 4 MiB file, maps it shared (`MADV_HUGEPAGE`), shrinks it
/// with `ftruncate` into its second 2 MiB and grows it back, then opens it again with
/// `O_TRUNC`, writes 5 bytes and grows it to 8 KiB: what it reads through the old mapping,
/// `pread` and a new mapping is what it reads natively (zeroes where the file grew).
#[test]
fn a_program_truncating_its_file_reads_what_it_reads_natively() {
    use common::kvm::{assert_clean, cc, env, machine, run};
    use mmkit_sim::kvm::process::Status;
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "trunc",
        r#"#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define LEN (4L << 20)
static unsigned long sum(const volatile unsigned char *p, long n) {
    unsigned long s = 0;
    for (long i = 0; i < n; i++) s = s * 31 + p[i];
    return s;
}
static unsigned char buf[LEN];
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    for (long i = 0; i < LEN; i++) buf[i] = 'A' + i % 23;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, buf, LEN) != LEN) return 3;
    unsigned char *m = mmap(0, LEN, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return 4;
    madvise(m, LEN, MADV_HUGEPAGE);
    printf("mapped %lx\n", sum(m, LEN));
    long nl = (2L << 20) + 3 * 4096 + 100;
    if (ftruncate(fd, nl)) return 5;
    printf("end page %lx\n", sum(m + (nl & ~4095L), 4096));
    if (ftruncate(fd, LEN)) return 6;
    printf("grown, old map %lx\n", sum(m + nl, LEN - nl));
    memset(buf, 0xff, LEN);
    printf("grown, pread %ld %lx\n", (long)pread(fd, buf, LEN - nl, nl), sum(buf, LEN - nl));
    munmap(m, LEN);
    int fd2 = open(argv[1], O_RDWR | O_TRUNC);
    if (fd2 < 0 || write(fd2, "hello", 5) != 5 || ftruncate(fd2, 8192)) return 7;
    memset(buf, 0xff, 8192);
    printf("reopened, pread %ld %lx\n", (long)pread(fd2, buf, 8192, 0), sum(buf, 8192));
    unsigned char *m2 = mmap(0, 8192, PROT_READ, MAP_SHARED, fd2, 0);
    if (m2 == MAP_FAILED) return 8;
    printf("reopened, map %lx\n", sum(m2, 8192));
    return 0;
}"#,
        &["-static"],
    );
    let before = m.settle();
    let path = dir.path().join("trunc.dat");
    let argv = [prog.to_str().unwrap(), path.to_str().unwrap()];
    let ours = run(&m, &vm, &argv, Default::default());
    assert_eq!(ours.out.status, Status::Exited(0), "{:?}", ours.out.log);
    let native = mmkit_sim::exec_cmd::run_native(&prog, &argv.map(str::to_owned), &env()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&native.stdout),
        "mmkit vs the host kernel"
    );
    m.on_cpu(0, |cpu| m.hostfs.release_writers(&m.kernel, cpu));
    assert_clean(&m, before, "trunc");
}
