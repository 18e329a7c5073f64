//! VMA changes and the reverse map (`mm/vma.c`): `vma_prepare`/`vma_complete` — the
//! `i_mmap` and `anon_vma` locks taken for writing around every change the reverse map can
//! see — and the operations made under them: linking a VMA into its address space and the
//! reverse map (`vma_link`: `vma_iter_store`, `vma_link_file`, `anon_vma_chain_link`),
//! removing one (`vma_complete`'s `remove`, `unlink_file_vma`, the chain entries of
//! `unlink_anon_vmas`), moving its bounds in place (`vma_expand`, `vma_shrink`,
//! `vma_set_range`), `__split_vma` (the new part chained like the old, `anon_vma_clone`),
//! `vma_merge_new_range` and `vma_merge_existing_range` (`vma_modify`), changing its flags
//! (`vm_flags_reset`), and `anon_vma_prepare` (`mm/rmap.c`: `find_mergeable_anon_vma`).
//!
//! The reverse map points at the VMAs themselves ([`VmaRef`], the VMA tree's slots): an
//! `anon_vma` chain entry or an `i_mmap` entry is the VMA, so a VMA that grows, shrinks or
//! changes its flags is changed in one place, under the locks, and a walker reads its current
//! `vm_start`/`vm_end`/`vm_pgoff`/`vm_flags` — never a copy. Locking, as Linux's: walkers hold
//! the `anon_vma` or `i_mmap` lock for reading (`rmap_walk`); a change holds the `mmap_lock`
//! for writing (`&mut MmStruct`) and, through [`VmaLocks`], the write side of the locks of
//! every list the VMAs it touches are on. Lock order: `i_mmap` before `anon_vma` (Linux's
//! `i_mmap_rwsem` → `anon_vma->rwsem`); because a walker holding an `anon_vma` lock may
//! reclaim and so take an `i_mmap` lock for reading, `vma_prepare` never waits for the
//! `anon_vma` lock while holding an `i_mmap` lock: it lets go and tries again.

use crate::fs::inode::{File, Inode};
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags, VmaId};
use crate::mm::rmap::AnonVmas;
use crate::mm::vma_tree::VmaRef;
use crate::sync::RwLockWriteGuard;
use crate::Kernel;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// The VMAs on one reverse-map list (an `anon_vma`'s chain entries, a file's `i_mmap`).
pub(crate) type RmapList = Vec<VmaRef>;

/// `struct vma_prepare`: the reverse-map locks held for writing while VMAs change, released
/// on drop (`vma_complete`). Every change to a VMA the reverse map can reach goes through
/// one; each checks that it covers the VMA it changes.
pub(crate) struct VmaLocks<'a> {
    /// The file's inode and its `i_mmap` (`i_mmap_lock_write`).
    i_mmap: Option<(&'a Inode, RwLockWriteGuard<'a, RmapList>)>,
    /// `anon_vma_lock_write`: one lock for every `anon_vma` here.
    anon: Option<RwLockWriteGuard<'a, AnonVmas>>,
}

impl VmaLocks<'_> {
    /// Panics (a kernel bug) unless these locks cover every reverse-map list `v` is on: a
    /// change made without them would race with walkers reading it.
    fn covers(&self, v: &VmArea) {
        assert!(
            v.anon_vma.is_none() || self.anon.is_some(),
            "BUG: VMA {:#x}-{:#x} changed without its anon_vma lock",
            v.vm_start,
            v.vm_end
        );
        if let Some(f) = &v.vm_file {
            assert!(
                self.i_mmap
                    .as_ref()
                    .is_some_and(|(i, _)| core::ptr::eq(*i, &*f.inode)),
                "BUG: VMA {:#x}-{:#x} changed without its file's i_mmap lock",
                v.vm_start,
                v.vm_end
            );
        }
    }

    /// `vma_link`: put `v` into `mm`'s tree and the reverse map (chained to its `anon_vma`
    /// and each ancestor, `anon_vma_chain_link`; in its file's `i_mmap`). Returns its id.
    pub(crate) fn link(&mut self, mm: &mut MmStruct, v: VmArea) -> VmaId {
        self.covers(&v);
        let (anon_vma, file) = (v.anon_vma, v.vm_file.is_some());
        mm.vmacache.set(None);
        let id = mm.vmas.insert(v, &mm.pt, &mm.rss_stat);
        if let Some(av) = anon_vma {
            let avs = self.anon.as_mut().expect("covers checked it");
            avs.for_chain_mut(av, |a| a.avcs.push(mm.vmas.vma_ref(id)));
        }
        if file {
            let (_, list) = self.i_mmap.as_mut().expect("covers checked it");
            list.push(mm.vmas.vma_ref(id));
        }
        id
    }

    /// Take the VMA `id` out of `mm`'s tree and the reverse map; returns it. Its `anon_vma`s
    /// stay (the caller calls [`Kernel::unlink_anon_vmas`] once the locks are dropped).
    pub(crate) fn unlink(&mut self, mm: &mut MmStruct, id: VmaId) -> VmArea {
        let v = mm.vma(id);
        self.covers(v);
        if let Some(av) = v.anon_vma {
            let avs = self.anon.as_mut().expect("covers checked it");
            avs.for_chain_mut(av, |a| a.avcs.retain(|r| !mm.vmas.is(id, r)));
        }
        if v.vm_file.is_some() {
            let (_, list) = self.i_mmap.as_mut().expect("covers checked it");
            list.retain(|r| !mm.vmas.is(id, r));
        }
        mm.vmacache.set(None);
        // SAFETY: the VMA just left every reverse-map list it was on (`covers`: those are
        // the lists whose locks we hold).
        unsafe { mm.vmas.remove(id) }
    }

    /// `vma_set_range` (`vma_expand`, `vma_shrink`): the VMA `id` now spans `[start, end)`
    /// at page offset `pgoff`, in place. The new range may overlap no other VMA.
    pub(crate) fn set_range(
        &mut self,
        mm: &mut MmStruct,
        id: VmaId,
        start: u64,
        end: u64,
        pgoff: u64,
    ) {
        self.covers(mm.vma(id));
        // SAFETY: `covers` checked that we hold the write side of the lock of every
        // reverse-map list the VMA is on, and `&mut MmStruct` is the `mmap_lock`.
        unsafe { mm.vmas.set_range(id, start, end, pgoff) };
        mm.vmacache.set(None);
    }

    /// `vm_flags_reset` + `vma_set_page_prot`: the VMA `id` gets `flags` and the protection
    /// they call for, in place.
    pub(crate) fn set_flags(&mut self, mm: &mut MmStruct, id: VmaId, flags: VmFlags) {
        self.covers(mm.vma(id));
        // SAFETY: as in `set_range`.
        let v = unsafe { mm.vmas.by_id_mut(id) };
        v.vm_flags = flags;
        v.vm_page_prot = VmArea::prot_for(flags, VmArea::writenotify(v.vm_file.as_ref()));
    }

    /// The VMA `id`, which has none yet, takes `anon_vma` `av` and is chained to it and each
    /// ancestor (`anon_vma_prepare`'s `anon_vma_chain_link`, `dup_anon_vma` on a merge).
    pub(crate) fn set_anon_vma(&mut self, mm: &mut MmStruct, id: VmaId, av: u32) {
        self.covers(mm.vma(id));
        debug_assert!(mm.vma(id).anon_vma.is_none());
        let avs = self
            .anon
            .as_mut()
            .expect("BUG: anon_vma set without its lock");
        avs.for_chain_mut(av, |a| a.avcs.push(mm.vmas.vma_ref(id)));
        // SAFETY: as in `set_range`; the file's lock, if any, is held (`covers`) and the
        // anon_vma lock just above.
        unsafe { mm.vmas.by_id_mut(id) }.anon_vma = Some(av);
    }

    /// The `anon_vma`s, locked for writing.
    pub(crate) fn anon_vmas(&mut self) -> &mut AnonVmas {
        self.anon.as_mut().expect("BUG: anon_vma lock not taken")
    }
}

/// What [`Kernel::merge_plan`] found: which neighbours a range merges with, and the
/// `anon_vma` the merged VMA has.
struct Merge {
    prev: Option<VmaId>,
    next: Option<VmaId>,
    anon: Option<u32>,
}

/// `is_mergeable_anon_vma`: at most one has pages yet, or they share the `anon_vma`.
fn anon_compatible(a: Option<u32>, b: Option<u32>) -> bool {
    a.is_none() || b.is_none() || a == b
}

impl Kernel {
    /// `vma_prepare`: take the write side of the reverse-map locks a change to VMAs of
    /// `file` (and, with `anon`, VMAs that have or get an `anon_vma`) needs.
    pub(crate) fn vma_prepare<'a>(
        &'a self,
        file: Option<&'a Arc<File>>,
        anon: bool,
    ) -> VmaLocks<'a> {
        let inode = file.map(|f| &*f.inode);
        loop {
            let i_mmap = inode.map(|i| (i, i.i_mmap.write()));
            if !anon {
                return VmaLocks { i_mmap, anon: None };
            }
            if i_mmap.is_none() {
                let a = self.anon_vmas.write();
                return VmaLocks {
                    i_mmap,
                    anon: Some(a),
                };
            }
            if let Some(a) = self.anon_vmas.try_write() {
                return VmaLocks {
                    i_mmap,
                    anon: Some(a),
                };
            }
            // A walker holds an anon_vma lock and may need this i_mmap lock: let it finish.
            drop(i_mmap);
            crate::sync::relax();
        }
    }

    /// `vma_link`: put `v` into `mm`'s tree and the reverse map. Returns its id.
    pub(crate) fn vma_link(&self, mm: &mut MmStruct, v: VmArea) -> VmaId {
        let file = v.vm_file.clone();
        let mut l = self.vma_prepare(file.as_ref(), v.anon_vma.is_some());
        let id = l.link(mm, v);
        drop(l);
        id
    }

    /// Remove the VMA `id` from `mm`'s tree and the reverse map and return it. Its
    /// `anon_vma`s stay (the caller calls [`Kernel::unlink_anon_vmas`] when it is gone).
    pub(crate) fn vma_unlink(&self, mm: &mut MmStruct, id: VmaId) -> VmArea {
        let v = mm.vma(id);
        let file = v.vm_file.clone();
        let mut l = self.vma_prepare(file.as_ref(), v.anon_vma.is_some());
        let v = l.unlink(mm, id);
        drop(l);
        v
    }

    /// `vma_expand`/`vma_shrink`: the VMA `id` spans `[start, end)` at `pgoff` from now on —
    /// in place, under the reverse-map locks, so a walker sees the old range or the new.
    pub(crate) fn vma_set_range(
        &self,
        mm: &mut MmStruct,
        id: VmaId,
        start: u64,
        end: u64,
        pgoff: u64,
    ) {
        let v = mm.vma(id);
        let file = v.vm_file.clone();
        let mut l = self.vma_prepare(file.as_ref(), v.anon_vma.is_some());
        l.set_range(mm, id, start, end, pgoff);
    }

    /// `vm_flags_reset`: the VMA `id` gets `flags` (and the protection they call for).
    pub(crate) fn vma_set_flags(&self, mm: &mut MmStruct, id: VmaId, flags: VmFlags) {
        let v = mm.vma(id);
        let file = v.vm_file.clone();
        let mut l = self.vma_prepare(file.as_ref(), v.anon_vma.is_some());
        l.set_flags(mm, id, flags);
    }

    /// `__split_vma(vma, addr, new_below = 0)`: the VMA `id` keeps `[vm_start, addr)` and a
    /// new VMA, chained where it is (`anon_vma_clone`) and in the same `i_mmap`, takes
    /// `[addr, vm_end)`; one locked step, so a walker sees the whole or both parts. Returns
    /// the new VMA's id.
    pub(crate) fn split_vma(&self, mm: &mut MmStruct, id: VmaId, addr: u64) -> VmaId {
        let v = mm.vma(id);
        debug_assert!(v.vm_start < addr && addr < v.vm_end);
        let upper = VmArea {
            vm_start: addr,
            vm_pgoff: v.vm_pgoff + ((addr - v.vm_start) >> crate::PAGE_SHIFT),
            ..v.clone()
        };
        let (start, pgoff) = (v.vm_start, v.vm_pgoff);
        let file = v.vm_file.clone();
        let mut l = self.vma_prepare(file.as_ref(), v.anon_vma.is_some());
        l.set_range(mm, id, start, addr, pgoff);
        l.link(mm, upper)
    }

    /// The neighbours `[start, end)` (its page offset `pgoff`, its `anon_vma` `anon`, the
    /// rest of its fields as `like`'s) can merge with: the VMA ending at `start`, then —
    /// with the `anon_vma` merging with it gives — the one starting at `end`.
    fn merge_plan(&self, mm: &MmStruct, like: &VmArea, start: u64, end: u64, pgoff: u64) -> Merge {
        // can_merge's rules, with `like`'s fields at [start, end) and `pgoff`.
        let same = |a: &VmArea| {
            a.vm_flags == like.vm_flags
                && a.name == like.name
                && match (&a.vm_file, &like.vm_file) {
                    (None, None) => true,
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                    _ => false,
                }
                && !a.vm_flags.intersects(crate::mm::mmap::VM_SPECIAL)
        };
        let pages = (end - start) >> crate::PAGE_SHIFT;
        let mut anon = like.anon_vma;
        let prev = mm.vmas.id_of(start).filter(|&p| {
            let a = mm.vma(p);
            same(a) && a.vm_pgoff + a.pages() == pgoff && anon_compatible(a.anon_vma, anon)
        });
        if let Some(p) = prev {
            anon = anon.or(mm.vma(p).anon_vma);
        }
        let next = mm
            .vmas
            .first_from_id(end + 1)
            .filter(|&(s, _, n)| {
                let b = mm.vma(n);
                s == end
                    && same(b)
                    && pgoff + pages == b.vm_pgoff
                    && anon_compatible(anon, b.anon_vma)
            })
            .map(|(_, _, n)| n);
        if let Some(n) = next {
            anon = anon.or(mm.vma(n).anon_vma);
        }
        Merge { prev, next, anon }
    }

    /// `vma_merge_new_range`, else `vma_link`: insert `new` into a hole, merging it with the
    /// VMA ending at its start (which grows in place, `vma_expand`) and the one starting at
    /// its end (removed into the first, or moved down in place when it alone merges) where
    /// `can_merge` allows. Returns the id of the VMA now covering `new`'s range.
    pub(crate) fn vma_merge_new_range(&self, mm: &mut MmStruct, new: VmArea) -> VmaId {
        let plan = self.merge_plan(mm, &new, new.vm_start, new.vm_end, new.vm_pgoff);
        if plan.prev.is_none() && plan.next.is_none() {
            return self.vma_link(mm, new);
        }
        let file = new.vm_file.clone();
        let mut gone = None;
        let id = {
            let mut l = self.vma_prepare(file.as_ref(), plan.anon.is_some());
            let id = match (plan.prev, plan.next) {
                (Some(p), next) => {
                    let end = match next {
                        Some(n) => {
                            let v = l.unlink(mm, n);
                            gone = v.anon_vma;
                            v.vm_end
                        }
                        None => new.vm_end,
                    };
                    let (s, o) = (mm.vma(p).vm_start, mm.vma(p).vm_pgoff);
                    l.set_range(mm, p, s, end, o);
                    p
                }
                (None, Some(n)) => {
                    let e = mm.vma(n).vm_end;
                    l.set_range(mm, n, new.vm_start, e, new.vm_pgoff);
                    n
                }
                (None, None) => unreachable!("handled above"),
            };
            if let (None, Some(av)) = (mm.vma(id).anon_vma, plan.anon) {
                l.set_anon_vma(mm, id, av);
            }
            id
        };
        // can_merge lets only one anon_vma through: these are no-ops unless that rule
        // changes (an anon_vma made for `new` that the merge did not take is freed).
        for av in gone.into_iter().chain(new.anon_vma) {
            if mm.vma(id).anon_vma != Some(av) {
                self.unlink_anon_vmas(av);
            }
        }
        id
    }

    /// `vma_merge_existing_range`: after the VMA `id` changed (its flags), merge it with the
    /// neighbours `can_merge` allows — the one below grows over it (and over the one above,
    /// if that merges too), else it grows over the one above. Returns the id of the VMA now
    /// covering its range.
    pub(crate) fn vma_merge_existing_range(&self, mm: &mut MmStruct, id: VmaId) -> VmaId {
        let v = mm.vma(id);
        let plan = self.merge_plan(mm, v, v.vm_start, v.vm_end, v.vm_pgoff);
        if plan.prev.is_none() && plan.next.is_none() {
            return id;
        }
        let file = v.vm_file.clone();
        let mut gone: Vec<u32> = Vec::new();
        let survivor = {
            let mut l = self.vma_prepare(file.as_ref(), plan.anon.is_some());
            let mut end = mm.vma(id).vm_end;
            if let Some(n) = plan.next {
                let v = l.unlink(mm, n);
                gone.extend(v.anon_vma);
                end = v.vm_end;
            }
            let survivor = match plan.prev {
                Some(p) => {
                    let v = l.unlink(mm, id);
                    gone.extend(v.anon_vma);
                    let (s, o) = (mm.vma(p).vm_start, mm.vma(p).vm_pgoff);
                    l.set_range(mm, p, s, end, o);
                    p
                }
                None => {
                    let (s, o) = (mm.vma(id).vm_start, mm.vma(id).vm_pgoff);
                    l.set_range(mm, id, s, end, o);
                    id
                }
            };
            if let (None, Some(av)) = (mm.vma(survivor).anon_vma, plan.anon) {
                l.set_anon_vma(mm, survivor, av);
            }
            survivor
        };
        for av in gone {
            if mm.vma(survivor).anon_vma != Some(av) {
                self.unlink_anon_vmas(av);
            }
        }
        survivor
    }

    /// `find_mergeable_anon_vma`: the `anon_vma` of a neighbour `vma` could share — adjacent,
    /// compatible (`anon_vma_compatible`: same file and flags but for access bits,
    /// contiguous offsets) and chained to nothing but its own root `anon_vma`
    /// (`reusable_anon_vma`) — so the two can still merge later.
    fn find_mergeable_anon_vma(avs: &AnonVmas, mm: &MmStruct, vma: &VmArea) -> Option<u32> {
        let compatible = |a: &VmArea, b: &VmArea| {
            let ignore =
                VmFlags::VM_READ | VmFlags::VM_WRITE | VmFlags::VM_EXEC | VmFlags::VM_SOFTDIRTY;
            a.vm_end == b.vm_start
                && a.vm_file.is_none()
                && b.vm_file.is_none()
                && (a.vm_flags ^ b.vm_flags) - ignore == VmFlags::empty()
                && b.vm_pgoff == a.vm_pgoff + a.pages()
        };
        let singular = |old: &VmArea| {
            old.anon_vma
                .filter(|id| avs.map.get(id).is_some_and(|a| a.parent == *id))
        };
        let next = mm
            .vmas
            .first_from(vma.vm_end + 1)
            .filter(|n| compatible(vma, n))
            .and_then(singular);
        next.or_else(|| {
            mm.find_vma_prev(vma.vm_start)
                .filter(|p| compatible(p, vma))
                .and_then(singular)
        })
    }

    /// `anon_vma_prepare`: give the VMA `id` an `anon_vma` before its first anonymous page —
    /// a mergeable neighbour's or a new one — in place (the VMA keeps its identity); returns
    /// the `anon_vma`'s id.
    pub(crate) fn anon_vma_prepare(&self, mm: &mut MmStruct, id: VmaId) -> u32 {
        if let Some(av) = mm.vma(id).anon_vma {
            return av;
        }
        let file = mm.vma(id).vm_file.clone();
        let mut l = self.vma_prepare(file.as_ref(), true);
        let avs = l.anon_vmas();
        let av =
            Self::find_mergeable_anon_vma(avs, mm, mm.vma(id)).unwrap_or_else(|| avs.alloc(None));
        l.set_anon_vma(mm, id, av);
        av
    }
}
