//! `check_slab_invariants()`: what must hold between slabs, node lists, freelists and array
//! caches whenever no CPU is inside the slab allocator.
//!
//! - every slab on a node's full/partial/free list is `PG_slab`, belongs to the cache and the
//!   node, and has `num`/some/no objects in use respectively; `total_slabs`, `free_slabs` and
//!   `free_objects` equal what the lists hold;
//! - a slab's free indices (`freelist[active..num]`) are distinct and below `num`;
//! - every object in a per-CPU or shared array belongs to a slab of this cache, is an object
//!   start, is counted as in use by its slab, and appears only once; arrays stay within
//!   their limit;
//! - the pages counted in `nr_slab_reclaimable`/`nr_slab_unreclaimable` are the pages of all
//!   slabs.

use crate::mm::list::PageList;
use crate::mm::slab::{KmemCache, SlabFlags};
use crate::mm::slab_page::Slab;
use crate::Kernel;
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

impl Kernel {
    /// Check every slab invariant (see the module doc). Takes each CPU in turn to read its
    /// array caches, so it may sleep: call it without holding a CPU.
    pub fn check_slab_invariants(&self) -> Result<(), String> {
        let (mut rec_pages, mut unrec_pages) = (0u64, 0u64);
        for c in self.live_caches() {
            let pages = self
                .check_cache(c)
                .map_err(|e| format!("cache {}: {e}", c.name))?;
            if c.flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT) {
                rec_pages += pages;
            } else {
                unrec_pages += pages;
            }
        }
        let (r, u) = self.slab_pages();
        if (r, u) != (rec_pages, unrec_pages) {
            return Err(format!(
                "slab page counters ({r}, {u}) but slabs hold ({rec_pages}, {unrec_pages})"
            ));
        }
        Ok(())
    }

    fn check_cache(&self, c: &KmemCache) -> Result<u64, String> {
        let mut in_use: BTreeSet<usize> = BTreeSet::new();
        let mut pages = 0;
        for (nid, node) in c.nodes.iter().enumerate() {
            let n = node.lock();
            let mut objs = 0u64;
            let mut slabs = 0u64;
            let lists: [(&PageList, &str); 3] = [
                (&n.slabs_full, "full"),
                (&n.slabs_partial, "partial"),
                (&n.slabs_free, "free"),
            ];
            for (list, kind) in lists {
                for pfn in list.iter(&self.mem_map) {
                    let p = match Slab::from_page(self.mem_map.page(pfn)) {
                        Some(s) if core::ptr::eq(s.slab_cache(), c) && s.nid() == nid => s,
                        _ => {
                            return Err(format!(
                                "slab {pfn:#x} on node {nid}'s {kind} list is not this cache's"
                            ))
                        }
                    };
                    let active = p.active();
                    let ok = match kind {
                        "full" => active == c.num,
                        "partial" => active > 0 && active < c.num,
                        _ => active == 0,
                    };
                    if !ok {
                        return Err(format!(
                            "slab {pfn:#x} with {active}/{} in use is on the {kind} list",
                            c.num
                        ));
                    }
                    let fl = self.freelist(pfn, p, c) as *const u16;
                    let mut seen = vec![false; c.num as usize];
                    for i in active..c.num {
                        // SAFETY: the freelist has `num` entries in memory the slab owns; the
                        // node lock is held.
                        let idx = unsafe { fl.add(i as usize).read_unaligned() } as usize;
                        if idx >= c.num as usize || seen[idx] {
                            return Err(format!(
                                "slab {pfn:#x}: freelist index {idx} out of range or repeated"
                            ));
                        }
                        seen[idx] = true;
                    }
                    let s_mem = self.s_mem(pfn, p, c);
                    for (i, free) in seen.iter().enumerate() {
                        if !free {
                            in_use.insert(s_mem + i * c.size as usize);
                        }
                    }
                    objs += (c.num - active) as u64;
                    slabs += 1;
                    pages += 1 << c.gfporder;
                }
            }
            if slabs != n.total_slabs
                || n.slabs_free.iter(&self.mem_map).count() as u64 != n.free_slabs
                || objs != n.free_objects
            {
                return Err(format!(
                    "node {nid}: lists hold {slabs} slabs / {objs} free objects, counters say {} / {} (free slabs {})",
                    n.total_slabs, n.free_objects, n.free_slabs
                ));
            }
        }
        let mut arrays: Vec<(String, Vec<usize>, u32)> = Vec::new();
        for cpu in 0..self.nr_cpus() {
            let g = self.get_cpu_id(cpu).map_err(|e| format!("{e}"))?;
            // SAFETY: a handle this kernel just gave out; the array is only read, and
            // copied before anything else runs on this CPU.
            let ac = unsafe { c.array_of(&g) };
            arrays.push((format!("cpu {cpu} array"), ac.entries().to_vec(), ac.limit));
        }
        for (nid, node) in c.nodes.iter().enumerate() {
            if let Some(sh) = node.lock().shared.as_ref() {
                arrays.push((
                    format!("node {nid} shared array"),
                    sh.entries().to_vec(),
                    sh.limit,
                ));
            }
        }
        let mut cached = BTreeSet::new();
        for (name, entries, limit) in arrays {
            if entries.len() as u32 > limit {
                return Err(format!("{name} holds {} > limit {limit}", entries.len()));
            }
            for o in entries {
                if !in_use.contains(&o) {
                    return Err(format!(
                        "{name} holds {o:#x}, which no slab counts as in use"
                    ));
                }
                if !cached.insert(o) {
                    return Err(format!(
                        "{name} holds {o:#x} twice (or another array has it)"
                    ));
                }
            }
        }
        Ok(pages)
    }
}
