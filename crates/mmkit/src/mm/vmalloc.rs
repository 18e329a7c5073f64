//! vmalloc: virtually contiguous kernel memory (`mm/vmalloc.c`: `alloc_vmap_area`,
//! `__vmalloc_node_range`, `vfree`, `vmap`/`vunmap`, `vmalloc_to_page`, `is_vmalloc_addr`,
//! lazy purging with `__purge_vmap_area_lazy`; `mm/util.c`'s `kvmalloc_node`/`kvfree`).
//!
//! Areas are carved from `[VMALLOC_START, VMALLOC_END]` by the augmented free tree of
//! [`crate::mm::vmap_tree`] (lowest fit), each followed by a guard page, and mapped with
//! `PAGE_KERNEL` into the kernel page tables (`init_mm`) through a page-table cursor. `vfree`
//! unmaps through a gather, which flushes the TLBs before the pages go back — where Linux
//! frees vmalloc pages before its lazy flush, trusting that nothing touches a freed area, here
//! flush-before-free holds for kernel mappings as for user ones — and keeps the address range
//! out of use until a purge, when more than `lazy_max_pages` are pending, as Linux does. Busy
//! areas are kept in an address-ordered map (`vmap_area_root`).
//!
//! Invariants: busy areas and free ranges and pending-purge ranges never overlap and together
//! cover the vmalloc space; every page of a `vmalloc` area is mapped at its address.

use crate::addr::{Pfn, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::layout::{PAGE_OFFSET, VMALLOC_END, VMALLOC_START};
use crate::arch::x86_64::pgtable::{PgProt, Pte, PAGE_KERNEL};
use crate::arch::x86_64::tlb::Access;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::mm::page::Page;
use crate::mm::vmap_tree::FreeTree;
use crate::Kernel;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::panic::Location;
use core::ptr::NonNull;

/// One past the last vmalloc address.
pub const VMALLOC_LIMIT: u64 = VMALLOC_END + 1;

/// What an area is (`VM_ALLOC`, `VM_MAP`, `VM_USERMAP`).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum AreaKind {
    /// `vmalloc`: pages allocated and owned by the area.
    Alloc {
        /// `VM_USERMAP` (vmalloc_user).
        user: bool,
    },
    /// `vmap`: pages the caller owns.
    Map,
}

/// `struct vm_struct` (with its `struct vmap_area`: the range and the guard page): one
/// vmalloc or vmap area. Not to be confused with a process VMA, [`crate::mm::mm_types::VmArea`].
#[derive(Clone, Debug)]
pub struct VmStruct {
    /// First address.
    pub start: u64,
    /// Size including the guard page.
    pub size: u64,
    /// The mapped pages' pfns.
    pub pages: Vec<Pfn>,
    /// What kind of area.
    pub kind: AreaKind,
    /// Who created it.
    pub caller: Option<&'static Location<'static>>,
}

/// The vmalloc space.
pub struct VmapState {
    busy: BTreeMap<u64, VmStruct>,
    free: FreeTree,
    purge: Vec<(u64, u64)>,
    lazy_pages: u64,
    /// Pages owned by `vmalloc` areas (`vmalloc_nr_pages`).
    pub nr_vmalloc_pages: u64,
}

impl VmapState {
    /// No vmalloc space yet: `vmalloc_init` hands it out.
    pub(crate) fn new() -> Self {
        Self {
            busy: BTreeMap::new(),
            free: FreeTree::new(),
            purge: Vec::new(),
            lazy_pages: 0,
            nr_vmalloc_pages: 0,
        }
    }
}

impl Kernel {
    /// `vmalloc_init` → `vmap_init_free_space`: the whole vmalloc range
    /// `[VMALLOC_START, VMALLOC_LIMIT)` becomes free space (boot calls this once, after
    /// `kmem_cache_init`, as Linux's `mm_core_init` does).
    pub(crate) fn vmalloc_init(&self) {
        let mut v = self.vmap.lock();
        let ok = v.free.free(VMALLOC_START, VMALLOC_LIMIT);
        debug_assert!(ok, "vmalloc_init ran twice");
    }

    /// `lazy_max_pages`: `fls(num_online_cpus) * 32 MiB` of pages.
    fn lazy_max_pages(&self) -> u64 {
        crate::addr::fls(self.nr_cpus() as u64) as u64 * ((32 << 20) >> PAGE_SHIFT)
    }

    fn init_mm(&self) -> &crate::arch::x86_64::pgtable::PgTable {
        self.init_mm.as_ref().expect("init_mm is set up at boot")
    }

    /// The kernel page tables (`init_mm.pgd`).
    pub fn kernel_page_tables(&self) -> &crate::arch::x86_64::pgtable::PgTable {
        self.init_mm()
    }

    /// `alloc_vmap_area`: an address range of `size` bytes, purging lazily freed areas and
    /// retrying once when the space is full.
    fn alloc_vmap_area(&self, size: u64, align: u64) -> Option<u64> {
        let first = self.vmap.lock().free.alloc(size, align, VMALLOC_START);
        first.or_else(|| {
            self.purge_vmap_area_lazy();
            self.vmap.lock().free.alloc(size, align, VMALLOC_START)
        })
    }

    /// `__purge_vmap_area_lazy`: every pending range's addresses become free. (Their
    /// translations were flushed when they were unmapped.)
    pub fn purge_vmap_area_lazy(&self) {
        let pending: Vec<(u64, u64)> = core::mem::take(&mut self.vmap.lock().purge);
        if pending.is_empty() {
            return;
        }
        let mut v = self.vmap.lock();
        for (s, e) in pending {
            let ok = v.free.free(s, e);
            debug_assert!(ok, "purged range overlapped free space");
        }
        v.lazy_pages = 0;
    }

    /// `vmap_pages_range`: map `pages` at `start` in the kernel page tables (tables allocated
    /// as needed). False when a table cannot be allocated (the caller unmaps what was mapped).
    fn vmap_pages_range(
        &self,
        cpu: &CpuGuard<'_>,
        start: u64,
        pages: &[&Page],
        prot: PgProt,
    ) -> bool {
        let end = start + ((pages.len() as u64) << PAGE_SHIFT);
        let Ok(mut c) = self.pte_cursor_alloc(cpu, self.init_mm(), start, end) else {
            return false;
        };
        for (i, p) in pages.iter().enumerate() {
            let va = start + ((i as u64) << PAGE_SHIFT);
            let pte = Pte::new(self.page_to_pfn(p), prot);
            if !c.seek(va) || c.install(Pte(0), pte).is_err() {
                return false;
            }
        }
        true
    }

    /// `vunmap_range`: clear the kernel PTEs of `[start, end)` through a gather, which flushes
    /// every TLB before it drops the pages' references when `free_pages` (a `vmalloc` area,
    /// which owns them).
    fn vunmap_range(&self, cpu: &CpuGuard<'_>, start: u64, end: u64, free_pages: bool) {
        let pt = self.init_mm();
        let mut tlb = crate::mm::mmu_gather::MmuGather::new(self, cpu, pt);
        let mut c = self.pte_cursor(pt, start, end);
        while c.next_entry().is_some() {
            let old = c.clear(&mut tlb);
            if free_pages {
                if let Some(page) = self.pfn_to_page(old.pfn()) {
                    tlb.remove_page(page);
                }
            }
        }
        drop(c);
        tlb.finish();
    }

    /// `__vmalloc_node`: `size` bytes of virtually contiguous memory from `nid` (or the local
    /// node), followed by a guard page. The returned address is in the vmalloc area; reach
    /// its bytes with [`Kernel::kernel_write`]/[`Kernel::kernel_read`].
    #[track_caller]
    pub fn __vmalloc_node(
        &self,
        cpu: &CpuGuard<'_>,
        size: usize,
        gfp: Gfp,
        nid: Option<usize>,
        user: bool,
    ) -> Option<VirtAddr> {
        let caller = Location::caller();
        let total = self.totalram_pages() << PAGE_SHIFT;
        if size == 0 || size as u64 > total {
            if size != 0 && !gfp.contains(Gfp::__GFP_NOWARN) {
                self.printk(&format!("vmalloc error: size {size}, exceeds total pages"));
            }
            return None;
        }
        let bytes = crate::addr::align_up(size as u64, PAGE_SIZE);
        let nr = (bytes >> PAGE_SHIFT) as usize;
        let Some(start) = self.alloc_vmap_area(bytes + PAGE_SIZE, PAGE_SIZE) else {
            if !gfp.contains(Gfp::__GFP_NOWARN) {
                self.printk(&format!(
                    "vmap allocation for size {} failed: use vmalloc=<size> to increase size",
                    bytes + PAGE_SIZE
                ));
            }
            return None;
        };
        let nid = nid.unwrap_or(cpu.node());
        let mut pages: Vec<&Page> = Vec::with_capacity(nr);
        let page_gfp = (gfp & !Gfp::__GFP_COMP) | Gfp::__GFP_NOWARN;
        for _ in 0..nr {
            match self.alloc_pages_node(cpu, nid, page_gfp, 0) {
                Some(p) => pages.push(p),
                None => break,
            }
        }
        let mapped = pages.len() == nr && self.vmap_pages_range(cpu, start, &pages, PAGE_KERNEL);
        if !mapped {
            // What was mapped is unmapped (and flushed) before the pages go back.
            self.vunmap_range(cpu, start, start + bytes, false);
            for p in &pages {
                self.__free_pages(cpu, p, 0);
            }
            self.vmap.lock().free.free(start, start + bytes + PAGE_SIZE);
            if !gfp.contains(Gfp::__GFP_NOWARN) {
                self.printk(&format!("vmalloc error: size {bytes}, page order 0, failed to allocate pages, mode:{gfp}"));
            }
            return None;
        }
        let area = VmStruct {
            start,
            size: bytes + PAGE_SIZE,
            pages: pages.iter().map(|p| self.page_to_pfn(p)).collect(),
            kind: AreaKind::Alloc { user },
            caller: Some(caller),
        };
        let mut v = self.vmap.lock();
        v.nr_vmalloc_pages += nr as u64;
        v.busy.insert(start, area);
        Some(VirtAddr(start))
    }

    /// `vmalloc(size)`.
    #[track_caller]
    pub fn vmalloc(&self, cpu: &CpuGuard<'_>, size: usize) -> Option<VirtAddr> {
        self.__vmalloc_node(cpu, size, Gfp::GFP_KERNEL, None, false)
    }

    /// `vzalloc(size)`: zeroed.
    #[track_caller]
    pub fn vzalloc(&self, cpu: &CpuGuard<'_>, size: usize) -> Option<VirtAddr> {
        self.__vmalloc_node(cpu, size, Gfp::GFP_KERNEL | Gfp::__GFP_ZERO, None, false)
    }

    /// `vmalloc_node(size, nid)`.
    #[track_caller]
    pub fn vmalloc_node(&self, cpu: &CpuGuard<'_>, size: usize, nid: usize) -> Option<VirtAddr> {
        self.__vmalloc_node(cpu, size, Gfp::GFP_KERNEL, Some(nid), false)
    }

    /// `vmalloc_user(size)`: zeroed, marked `VM_USERMAP` (may be mapped to user space).
    #[track_caller]
    pub fn vmalloc_user(&self, cpu: &CpuGuard<'_>, size: usize) -> Option<VirtAddr> {
        self.__vmalloc_node(cpu, size, Gfp::GFP_KERNEL | Gfp::__GFP_ZERO, None, true)
    }

    /// `vmap(pages, prot)`: map pages the caller owns at a fresh vmalloc address.
    #[track_caller]
    pub fn vmap(&self, cpu: &CpuGuard<'_>, pages: &[&Page], prot: PgProt) -> Option<VirtAddr> {
        let caller = Location::caller();
        if pages.is_empty() {
            return None;
        }
        let bytes = (pages.len() as u64) << PAGE_SHIFT;
        let start = self.alloc_vmap_area(bytes + PAGE_SIZE, PAGE_SIZE)?;
        if !self.vmap_pages_range(cpu, start, pages, prot) {
            self.vunmap_range(cpu, start, start + bytes, false);
            self.vmap.lock().free.free(start, start + bytes + PAGE_SIZE);
            return None;
        }
        let area = VmStruct {
            start,
            size: bytes + PAGE_SIZE,
            pages: pages.iter().map(|p| self.page_to_pfn(p)).collect(),
            kind: AreaKind::Map,
            caller: Some(caller),
        };
        self.vmap.lock().busy.insert(start, area);
        Some(VirtAddr(start))
    }

    /// Remove the area starting at `va`: unmap it, free its pages if it owns them, and queue
    /// its range for the lazy purge. `want_alloc` says whether the caller is `vfree` (true) or
    /// `vunmap` (false); a mismatch or an unknown address is reported and ignored.
    fn remove_vm_area(
        &self,
        cpu: &CpuGuard<'_>,
        va: VirtAddr,
        want_alloc: bool,
    ) -> Result<(), Errno> {
        let name = if want_alloc { "vfree" } else { "vunmap" };
        let area = {
            let mut v = self.vmap.lock();
            match v.busy.get(&va.0) {
                Some(a) if matches!(a.kind, AreaKind::Alloc { .. }) == want_alloc => {
                    v.busy.remove(&va.0)
                }
                _ => None,
            }
        };
        let Some(area) = area else {
            self.printk(&format!(
                "Trying to {name}() nonexistent vm area ({:#x})",
                va.0
            ));
            return Err(Errno::EINVAL);
        };
        let owned = matches!(area.kind, AreaKind::Alloc { .. });
        let end = area.start + ((area.pages.len() as u64) << PAGE_SHIFT);
        self.vunmap_range(cpu, area.start, end, owned);
        let purge_now = {
            let mut v = self.vmap.lock();
            if let AreaKind::Alloc { .. } = area.kind {
                v.nr_vmalloc_pages -= area.pages.len() as u64;
            }
            v.purge.push((area.start, area.start + area.size));
            v.lazy_pages += area.size >> PAGE_SHIFT;
            v.lazy_pages > self.lazy_max_pages()
        };
        if purge_now {
            self.purge_vmap_area_lazy();
        }
        Ok(())
    }

    /// `vfree(addr)`: NULL is a no-op; an address that does not start a vmalloc area is
    /// reported and ignored.
    pub fn vfree(&self, cpu: &CpuGuard<'_>, va: VirtAddr) {
        if va.0 != 0 {
            let _ = self.remove_vm_area(cpu, va, true);
        }
    }

    /// `vunmap(addr)` of a `vmap` area (the pages stay the caller's).
    pub fn vunmap(&self, cpu: &CpuGuard<'_>, va: VirtAddr) {
        let _ = self.remove_vm_area(cpu, va, false);
    }

    /// `is_vmalloc_addr`.
    pub fn is_vmalloc_addr(&self, va: VirtAddr) -> bool {
        (VMALLOC_START..VMALLOC_LIMIT).contains(&va.0)
    }

    /// `vmalloc_to_page`: the page mapped at a vmalloc address, by walking the kernel page
    /// tables.
    pub fn vmalloc_to_page(&self, va: VirtAddr) -> Option<&Page> {
        if !self.is_vmalloc_addr(va) {
            return None;
        }
        let pte = self.pte_lookup(self.init_mm(), va.0)?;
        if !pte.is_present() {
            return None;
        }
        self.pfn_to_page(pte.pfn())
    }

    /// `kvmalloc_node`: kmalloc first (quietly, without retrying hard, for more than a page),
    /// then vmalloc when kmalloc fails and the mask may block. Returns a kernel virtual
    /// address: in the direct map for kmalloc memory, in the vmalloc area otherwise.
    #[track_caller]
    pub fn kvmalloc(&self, cpu: &CpuGuard<'_>, size: usize, gfp: Gfp) -> Option<VirtAddr> {
        let mut kflags = gfp;
        if size > PAGE_SIZE as usize {
            kflags |= Gfp::__GFP_NOWARN;
            if !kflags.contains(Gfp::__GFP_RETRY_MAYFAIL) {
                kflags |= Gfp::__GFP_NORETRY;
            }
            kflags.remove(Gfp::__GFP_NOFAIL);
        }
        if let Some(p) = self.kmalloc(cpu, size, kflags) {
            if p.as_ptr() as usize <= crate::mm::slab_common::ZERO_SIZE_PTR {
                return None;
            }
            return Some(VirtAddr(
                PAGE_OFFSET + self.direct_map.pa(p.as_ptr() as usize),
            ));
        }
        if size <= PAGE_SIZE as usize || !gfp.allows_blocking() {
            return None;
        }
        self.__vmalloc_node(cpu, size, gfp, None, false)
    }

    /// `kvfree`: `vfree` for vmalloc addresses, `kfree` for the rest.
    pub fn kvfree(&self, cpu: &CpuGuard<'_>, va: VirtAddr) {
        if va.0 == 0 {
            return;
        }
        if self.is_vmalloc_addr(va) {
            self.vfree(cpu, va);
        } else {
            let host = self.direct_map.ptr(va.0.wrapping_sub(PAGE_OFFSET));
            self.kfree(cpu, NonNull::new(host));
        }
    }

    /// Copy `buf` to kernel virtual address `va` (direct map or vmalloc), page by page; the
    /// vmalloc part goes through this CPU's MMU. `EFAULT` on anything unmapped or not
    /// allocated.
    pub fn kernel_write(&self, cpu: &CpuGuard<'_>, va: VirtAddr, buf: &[u8]) -> Result<(), Errno> {
        self.kernel_copy(
            cpu,
            va,
            buf.len(),
            |page, off, range| self.write_page(page, off, &buf[range]),
            true,
        )
    }

    /// Copy from kernel virtual address `va` into `buf`; see [`Kernel::kernel_write`].
    pub fn kernel_read(
        &self,
        cpu: &CpuGuard<'_>,
        va: VirtAddr,
        buf: &mut [u8],
    ) -> Result<(), Errno> {
        let cell = core::cell::RefCell::new(buf);
        let n = cell.borrow().len();
        self.kernel_copy(
            cpu,
            va,
            n,
            |page, off, range| self.read_page(page, off, &mut cell.borrow_mut()[range]),
            false,
        )
    }

    fn kernel_copy(
        &self,
        cpu: &CpuGuard<'_>,
        va: VirtAddr,
        len: usize,
        mut f: impl FnMut(&Page, usize, core::ops::Range<usize>) -> Result<(), Errno>,
        write: bool,
    ) -> Result<(), Errno> {
        let mut done = 0;
        while done < len {
            let a = va.0.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let off = (a & (PAGE_SIZE - 1)) as usize;
            let n = (PAGE_SIZE as usize - off).min(len - done);
            let mut copy = |pa: u64| {
                let page = self
                    .pfn_to_page(crate::PhysAddr(pa).pfn_down())
                    .ok_or(Errno::EFAULT)?;
                f(page, off, done..done + n)
            };
            if self.is_vmalloc_addr(VirtAddr(a)) {
                let acc = if write {
                    Access::KERNEL_WRITE
                } else {
                    Access::KERNEL_READ
                };
                self.mmu_access(cpu, self.init_mm(), a, acc, copy)
                    .map_err(|_| Errno::EFAULT)??;
            } else {
                copy(a.checked_sub(PAGE_OFFSET).ok_or(Errno::EFAULT)?)?;
            }
            done += n;
        }
        Ok(())
    }

    /// `/proc/vmallocinfo`.
    pub fn proc_vmallocinfo(&self) -> String {
        let v = self.vmap.lock();
        let mut lines: Vec<(u64, String)> = Vec::new();
        for a in v.busy.values() {
            let mut s = String::new();
            let _ = write!(
                s,
                "0x{:016x}-0x{:016x} {:7}",
                a.start,
                a.start + a.size,
                a.size
            );
            if let Some(c) = a.caller {
                let _ = write!(s, " {}:{}", c.file(), c.line());
            }
            if !a.pages.is_empty() && matches!(a.kind, AreaKind::Alloc { .. }) {
                let _ = write!(s, " pages={}", a.pages.len());
            }
            match a.kind {
                AreaKind::Alloc { user } => {
                    s.push_str(" vmalloc");
                    if user {
                        s.push_str(" user");
                    }
                }
                AreaKind::Map => s.push_str(" vmap"),
            }
            let mut per_node = alloc::vec![0u64; self.nodes.len()];
            for &pfn in &a.pages {
                per_node[self.mem_map.page(pfn).nid()] += 1;
            }
            for (n, c) in per_node.iter().enumerate().filter(|(_, c)| **c > 0) {
                let _ = write!(s, " N{n}={c}");
            }
            lines.push((a.start, s));
        }
        for &(s, e) in &v.purge {
            lines.push((
                s,
                format!("0x{s:016x}-0x{e:016x} {:7} unpurged vm_area", e - s),
            ));
        }
        lines.sort_by_key(|l| l.0);
        let mut out = String::new();
        for (_, l) in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// Pages owned by vmalloc areas (`VmallocUsed`).
    pub fn vmalloc_nr_pages(&self) -> u64 {
        self.vmap.lock().nr_vmalloc_pages
    }

    /// vmalloc invariants: busy, pending and free ranges are disjoint and cover the vmalloc
    /// space; the free tree is consistent; every page of a busy area is mapped at its address.
    pub fn check_vmalloc_invariants(&self) -> Result<(), String> {
        let v = self.vmap.lock();
        v.free.check().map_err(String::from)?;
        let mut all: Vec<(u64, u64)> = v
            .busy
            .values()
            .map(|a| (a.start, a.start + a.size))
            .collect();
        all.extend(v.purge.iter().copied());
        all.extend(v.free.iter());
        all.sort_unstable();
        let mut cur = VMALLOC_START;
        for (s, e) in all {
            if s != cur {
                return Err(format!(
                    "vmalloc space: gap or overlap at {cur:#x} (next range starts at {s:#x})"
                ));
            }
            cur = e;
        }
        if cur != VMALLOC_LIMIT {
            return Err(format!("vmalloc space ends at {cur:#x}"));
        }
        for a in v.busy.values() {
            for (i, &pfn) in a.pages.iter().enumerate() {
                let va = a.start + ((i as u64) << PAGE_SHIFT);
                match self.pte_lookup(self.init_mm(), va) {
                    Some(p) if p.pfn() == pfn => {}
                    other => {
                        return Err(format!(
                            "vmalloc {va:#x}: expected pfn {pfn:#x}, page table has {other:?}"
                        ))
                    }
                }
            }
            let guard = a.start + ((a.pages.len() as u64) << PAGE_SHIFT);
            if self
                .pte_lookup(self.init_mm(), guard)
                .is_some_and(|p| !p.is_none())
            {
                return Err(format!("vmalloc guard page {guard:#x} is mapped"));
            }
        }
        Ok(())
    }
}
