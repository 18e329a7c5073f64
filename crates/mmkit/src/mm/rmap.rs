//! Reverse-mapping bookkeeping (`mm/rmap.c`): what happens to a page's `_mapcount`,
//! `page->mapping` and the node's mapped-page counters when a PTE starts or stops mapping it
//! (`folio_add_new_anon_rmap`, `folio_add_file_rmap_pte`, `folio_dup_file_rmap_pte`,
//! `folio_remove_rmap_pte`).
//!
//! An anonymous page carries `PAGE_MAPPING_ANON` plus its `anon_vma` id in `page->mapping`
//! (Linux sets the low bit of the `anon_vma` pointer) and its linear page index in
//! `page->index`. `NR_ANON_MAPPED` / `NR_FILE_MAPPED` count pages mapped at least once.
//!
//! The reverse map itself (`anon_vma_chain` and the file's `i_mmap` tree): every VMA with an
//! `anon_vma` or a file is recorded, while it is linked into its address space
//! (`vma_link`/`vma_unlink`: every VMA change goes through them), as an [`RmapRecord`] — the
//! page tables, the RSS counters, the range and the page offset. `rmap_walk` turns a page's
//! index into an address in each recorded VMA and checks the PTE there (`page_vma_mapped_walk`);
//! `page_referenced` harvests and clears Accessed bits, `try_to_unmap` removes every mapping.
//!
//! Simplification: a forked child's VMAs share the parent's `anon_vma` instead of getting a
//! child `anon_vma` chained to it (`anon_vma_fork`); a walk may then visit VMAs that no longer
//! map the page, which the PTE check skips, so the result is the same.

use crate::arch::x86_64::pgtable::{PgTable, Pte, PteFlags};
use crate::cpu::CpuGuard;
use crate::mm::filemap::{NR_ANON_MAPPED, NR_FILE_MAPPED};
use crate::mm::mm_types::{MmStruct, RssStat, VmArea, VmFlags, MM_ANONPAGES, MM_FILEPAGES};
use crate::mm::page::{Page, PageFlags};
use crate::Kernel;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// One VMA as the reverse map sees it.
#[derive(Clone)]
pub struct RmapRecord {
    /// The address space's page tables.
    pub pt: Arc<PgTable>,
    /// Its RSS counters.
    pub rss: Arc<RssStat>,
    /// `vm_start`.
    pub start: u64,
    /// `vm_end`.
    pub end: u64,
    /// `vm_pgoff`.
    pub pgoff: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// `vm_page_prot`.
    pub prot: crate::arch::x86_64::pgtable::PgProt,
}

impl RmapRecord {
    /// `vma_address`: where `index` is mapped in this VMA, if inside it.
    fn address(&self, index: u64) -> Option<u64> {
        let off = index.checked_sub(self.pgoff)?;
        let a = self.start.checked_add(off.checked_mul(crate::PAGE_SIZE)?)?;
        (a < self.end).then_some(a)
    }

    fn same(&self, pt: &Arc<PgTable>, start: u64) -> bool {
        Arc::ptr_eq(&self.pt, pt) && self.start == start
    }
}

/// The kernel's `anon_vma`s: id → the VMAs using it.
#[derive(Default)]
pub(crate) struct AnonVmas {
    pub(crate) map: BTreeMap<u32, Vec<RmapRecord>>,
    pub(crate) next: u32,
}

/// `PAGE_MAPPING_ANON`: the mapping handle of an anonymous page.
pub const PAGE_MAPPING_ANON: u32 = 0x8000_0000;

/// Whether a page is anonymous (`PageAnon`).
#[inline]
pub fn page_anon(page: &Page) -> bool {
    page.mapping() & PAGE_MAPPING_ANON != 0
}

impl Kernel {
    /// `folio_add_new_anon_rmap`: a page just allocated for a fault becomes anonymous memory
    /// of `anon_vma` at linear index `index`, mapped by one PTE.
    pub(crate) fn page_add_new_anon_rmap(&self, page: &Page, anon_vma: u32, index: u64) {
        page.set_mapping(PAGE_MAPPING_ANON | anon_vma);
        page.set_index(index);
        // __folio_set_swapbacked: nobody else sees the new page yet.
        page.set_nonatomic(PageFlags::SWAPBACKED);
        page.set_mapcount(1);
        self.mod_node_page_state(page, NR_ANON_MAPPED, 1);
    }

    /// `folio_add_anon_rmap_pte` for a page coming back from swap: the first mapping makes it
    /// anonymous memory of `anon_vma` at `index` (as a new page), later ones just count.
    pub(crate) fn page_add_anon_rmap(&self, page: &Page, anon_vma: u32, index: u64) {
        if page.mapcount() == 0 {
            self.page_add_new_anon_rmap(page, anon_vma, index);
        } else {
            self.page_add_rmap(page);
        }
    }

    /// `folio_add_file_rmap_pte` / `folio_dup_*_rmap_pte`: one more PTE maps `page`.
    pub(crate) fn page_add_rmap(&self, page: &Page) {
        if page.inc_mapcount() == 1 {
            let item = if page_anon(page) {
                NR_ANON_MAPPED
            } else {
                NR_FILE_MAPPED
            };
            self.mod_node_page_state(page, item, 1);
        }
    }

    /// `folio_remove_rmap_pte`: one PTE stopped mapping `page`.
    pub(crate) fn page_remove_rmap(&self, page: &Page) {
        if page.dec_mapcount() == 0 {
            let item = if page_anon(page) {
                NR_ANON_MAPPED
            } else {
                NR_FILE_MAPPED
            };
            self.mod_node_page_state(page, item, -1);
        }
    }
}

impl Kernel {
    fn record_for(mm: &MmStruct, v: &VmArea) -> RmapRecord {
        RmapRecord {
            pt: mm.pt.clone(),
            rss: mm.rss_stat.clone(),
            start: v.vm_start,
            end: v.vm_end,
            pgoff: v.vm_pgoff,
            flags: v.vm_flags,
            prot: v.vm_page_prot,
        }
    }

    /// `vma_link`: put `v` into `mm`'s tree and the reverse map.
    pub(crate) fn vma_link(&self, mm: &mut MmStruct, v: VmArea) {
        if let Some(id) = v.anon_vma {
            self.anon_vmas
                .lock()
                .map
                .entry(id)
                .or_default()
                .push(Self::record_for(mm, &v));
        }
        if let Some(f) = &v.vm_file {
            f.inode.i_mmap.lock().push(Self::record_for(mm, &v));
        }
        mm.vmas.insert(v);
        mm.vmacache.set(None);
    }

    /// `vma_unlink`: take the VMA ending at `end` out of `mm`'s tree and the reverse map.
    pub(crate) fn vma_unlink(&self, mm: &mut MmStruct, end: u64) -> Option<VmArea> {
        let v = mm.vmas.remove(end)?;
        mm.vmacache.set(None);
        if let Some(id) = v.anon_vma {
            let mut av = self.anon_vmas.lock();
            if let Some(list) = av.map.get_mut(&id) {
                list.retain(|r| !r.same(&mm.pt, v.vm_start));
                if list.is_empty() {
                    av.map.remove(&id);
                }
            }
        }
        if let Some(f) = &v.vm_file {
            f.inode
                .i_mmap
                .lock()
                .retain(|r| !r.same(&mm.pt, v.vm_start));
        }
        Some(v)
    }

    /// `anon_vma_prepare`: give the VMA at `vma` (a copy of the linked one) an `anon_vma`
    /// before its first anonymous page; returns the id.
    pub(crate) fn anon_vma_prepare(&self, mm: &mut MmStruct, vma: &mut VmArea) -> u32 {
        // The linked VMA may have got one since the caller copied it.
        if let Some(id) = vma
            .anon_vma
            .or_else(|| mm.vma_lookup(vma.vm_start).and_then(|v| v.anon_vma))
        {
            vma.anon_vma = Some(id);
            return id;
        }
        let id = {
            let mut av = self.anon_vmas.lock();
            loop {
                av.next = (av.next + 1) & !PAGE_MAPPING_ANON;
                if av.next != 0 && !av.map.contains_key(&av.next) {
                    break av.next;
                }
            }
        };
        if let Some(mut v) = self.vma_unlink(mm, vma.vm_end) {
            v.anon_vma = Some(id);
            self.vma_link(mm, v);
        }
        vma.anon_vma = Some(id);
        id
    }

    /// The records of the VMAs that may map `page`, with its address in each.
    fn rmap_candidates(&self, page: &Page) -> Vec<(RmapRecord, u64)> {
        let index = page.index();
        let records: Vec<RmapRecord> = if page_anon(page) {
            let id = page.mapping() & !PAGE_MAPPING_ANON;
            self.anon_vmas
                .lock()
                .map
                .get(&id)
                .cloned()
                .unwrap_or_default()
        } else if let Some(inode) = self.inode_of_page(page) {
            inode.i_mmap.lock().clone()
        } else {
            Vec::new()
        };
        records
            .into_iter()
            .filter_map(|r| r.address(index).map(|a| (r, a)))
            .collect()
    }

    /// `rmap_walk`: call `f(record, address)` for every PTE mapping `page` (checked against
    /// the page's pfn, `page_vma_mapped_walk`); `f` returns false to stop.
    pub fn rmap_walk(&self, page: &Page, mut f: impl FnMut(&RmapRecord, u64) -> bool) {
        let pfn = self.page_to_pfn(page).0;
        for (r, a) in self.rmap_candidates(page) {
            let mapped = self
                .pte_lookup(&r.pt, a)
                .is_some_and(|p| p.is_present() && p.pfn() == pfn);
            if mapped && !f(&r, a) {
                return;
            }
        }
    }

    /// `folio_referenced`: how many PTEs mapping `page` had their Accessed bit set; the bits
    /// are cleared (and the TLBs flushed) so the next scan sees only new references. Also
    /// reports whether a mapping is `VM_LOCKED`.
    pub fn page_referenced(&self, page: &Page) -> (usize, bool) {
        let (mut n, mut locked) = (0, false);
        self.rmap_walk(page, |r, a| {
            if r.flags.contains(VmFlags::VM_LOCKED) {
                locked = true;
            }
            let old = self.pte_update(&r.pt, a, |p| p.mkold());
            if old.is_some_and(|p| p.young()) {
                self.flush_tlb_range(&r.pt, a, a + crate::PAGE_SIZE);
                n += 1;
            }
            true
        });
        (n, locked)
    }

    /// `folio_mkclean`: write-protect and clean every PTE mapping `page` (before writeback),
    /// so the next write faults and dirties the page again. Returns whether a PTE was dirty.
    pub fn page_mkclean(&self, page: &Page) -> bool {
        let mut dirty = false;
        self.rmap_walk(page, |r, a| {
            let old = self.pte_update(&r.pt, a, |p| {
                Pte(p.0 & !(PteFlags::RW | PteFlags::DIRTY).bits())
            });
            if let Some(o) = old {
                dirty |= o.dirty();
                if o.writable() || o.dirty() {
                    self.flush_tlb_range(&r.pt, a, a + crate::PAGE_SIZE);
                }
            }
            true
        });
        dirty
    }

    /// `try_to_unmap`: remove every PTE mapping `page`. A dirty PTE dirties the page; an
    /// anonymous page's PTEs become entries for its swap slot `swap`, each taking a reference
    /// on the slot before it is published (so a racing swap-in can drop it) — without a slot,
    /// or when a mapping is `VM_LOCKED`, nothing is unmapped and false is returned. True when
    /// the page is no longer mapped.
    pub fn try_to_unmap(
        &self,
        cpu: &CpuGuard<'_>,
        page: &Page,
        swap: Option<crate::mm::swapfile::SwpEntry>,
    ) -> bool {
        let anon = page_anon(page);
        if anon && swap.is_none() {
            return false;
        }
        let mut locked = false;
        self.rmap_walk(page, |r, _| {
            locked |= r.flags.contains(VmFlags::VM_LOCKED);
            !locked
        });
        if locked {
            return false;
        }
        let pfn = self.page_to_pfn(page).0;
        let swap_pte = swap.map(|e| e.to_pte()).unwrap_or_default();
        self.rmap_walk(page, |r, a| {
            if let Some(e) = swap {
                self.swap_duplicate(e, 1);
            }
            let old = self.pte_update(&r.pt, a, |p| {
                if p.is_present() && p.pfn() == pfn {
                    swap_pte
                } else {
                    p
                }
            });
            let Some(old) = old.filter(|p| p.is_present() && p.pfn() == pfn) else {
                if let Some(e) = swap {
                    self.swap_free(e);
                }
                return true;
            };
            self.flush_tlb_range(&r.pt, a, a + crate::PAGE_SIZE);
            if old.dirty() || old.0 & PteFlags::DIRTY.bits() != 0 {
                if anon {
                    page.set(PageFlags::DIRTY);
                } else {
                    self.set_page_dirty(page);
                }
            }
            if anon {
                r.rss[MM_ANONPAGES].fetch_sub(1, Ordering::Relaxed);
                r.rss[crate::mm::mm_types::MM_SWAPENTS].fetch_add(1, Ordering::Relaxed);
            } else {
                r.rss[MM_FILEPAGES].fetch_sub(1, Ordering::Relaxed);
            }
            self.page_remove_rmap(page);
            self.__free_pages(cpu, page, 0);
            true
        });
        page.mapcount() == 0
    }
}
