//! The software MMU and per-CPU TLBs (`arch/x86/mm/tlb.c`: `flush_tlb_mm_range`,
//! `flush_tlb_kernel_range`, the `tlb_gen` protocol; `arch/x86/mm/fault.c`'s error codes).
//!
//! Each CPU has a small TLB of translations tagged with the address space's `ctx_id`. A flush
//! bumps the address space's `tlb_gen`; a CPU compares the generation it last synced for that
//! address space with the current one before using any of its entries and drops them when it
//! is behind — the generation scheme x86 Linux has used since 4.14, which flushes every CPU
//! without interrupting any. Until a flush, a CPU keeps using what it cached, so a missing
//! flush is a real, observable bug (stale translations), as on hardware.
//!
//! An access ([`Kernel::mmu_access`]: translate, then load or store) is atomic with respect to
//! a flush, as on hardware, where a store completes with the TLB entry it used and a TLB
//! shootdown waits for every CPU's acknowledgement: while a CPU is inside an access in an
//! address space, a flush of that address space waits for it to finish (the analogue of the
//! IPI `flush_tlb_mm_range` sends and waits for). So once a flush returns, no access that
//! could have used the old translation is still in flight, and every later one re-walks.
//!
//! A miss walks the four levels (the page-table module's hardware walker: atomic loads,
//! present/write/user/NX checked across levels, Accessed set on every entry used and Dirty on
//! the leaf for a write) and raises [`PageFault`] with the hardware error code. A 2 MiB leaf
//! (a PMD entry with PSE) ends the walk a level early and fills an entry of the TLB's
//! separate 2 MiB array (x86 cores keep 2M translations apart from 4K ones), which then
//! translates every address of the 2 MiB page; a flush of the address space — every flush
//! here is one, so `invlpg` of any address inside it too — drops it like any other entry.

use crate::arch::x86_64::pgtable::{PgTable, Pte, PteFlags, PTE_PFN_MASK};
use crate::cpu::CpuGuard;
use crate::sync::{CachePadded, PerCpu};
use crate::Kernel;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicU64, Ordering};

/// TLB entries per CPU (direct mapped by virtual page number).
pub const TLB_ENTRIES: usize = 64;
/// 2 MiB TLB entries per CPU (direct mapped by virtual 2 MiB page number).
pub const TLB_ENTRIES_2M: usize = 16;
/// The offset bits of a 2 MiB page.
const HUGE_OFFSET: u64 = (1 << 21) - 1;
/// Address spaces whose generation a CPU remembers at once.
const TLB_CONTEXTS: usize = 8;

/// `X86_PF_PROT`: the page was present (a protection violation, not a miss).
pub const X86_PF_PROT: u32 = 1 << 0;
/// `X86_PF_WRITE`.
pub const X86_PF_WRITE: u32 = 1 << 1;
/// `X86_PF_USER`.
pub const X86_PF_USER: u32 = 1 << 2;
/// `X86_PF_INSTR`.
pub const X86_PF_INSTR: u32 = 1 << 4;

/// What kind of access the MMU is asked to translate.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct Access {
    /// A write.
    pub write: bool,
    /// From user mode.
    pub user: bool,
    /// An instruction fetch.
    pub exec: bool,
}

impl Access {
    /// A user-mode read.
    pub const USER_READ: Access = Access {
        write: false,
        user: true,
        exec: false,
    };
    /// A user-mode write.
    pub const USER_WRITE: Access = Access {
        write: true,
        user: true,
        exec: false,
    };
    /// A user-mode instruction fetch.
    pub const USER_EXEC: Access = Access {
        write: false,
        user: true,
        exec: true,
    };
    /// A kernel read.
    pub const KERNEL_READ: Access = Access {
        write: false,
        user: false,
        exec: false,
    };
    /// A kernel write.
    pub const KERNEL_WRITE: Access = Access {
        write: true,
        user: false,
        exec: false,
    };

    fn error_code(self, present: bool) -> u32 {
        let bit = |on: bool, b: u32| if on { b } else { 0 };
        bit(present, X86_PF_PROT)
            | bit(self.write, X86_PF_WRITE)
            | bit(self.user, X86_PF_USER)
            | bit(self.exec, X86_PF_INSTR)
    }
}

/// A page fault: the faulting address (`cr2`) and the hardware error code.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct PageFault {
    /// The faulting virtual address.
    pub address: u64,
    /// `X86_PF_*` bits.
    pub error_code: u32,
}

#[derive(Copy, Clone, Default)]
struct TlbEntry {
    ctx: u64,
    vpn: u64,
    pte: u64,
}

/// One CPU's TLB.
pub struct Tlb {
    entries: [TlbEntry; TLB_ENTRIES],
    /// 2 MiB translations: `vpn` is the virtual 2 MiB page number, `pte` maps its first
    /// 4 KiB.
    huge: [TlbEntry; TLB_ENTRIES_2M],
    gens: [(u64, u64); TLB_CONTEXTS],
    next_gen_slot: usize,
    /// Translations served from the TLB.
    pub hits: u64,
    /// Translations that walked the tables.
    pub misses: u64,
}

impl Tlb {
    fn new() -> Self {
        Self {
            entries: [TlbEntry::default(); TLB_ENTRIES],
            huge: [TlbEntry::default(); TLB_ENTRIES_2M],
            gens: [(0, 0); TLB_CONTEXTS],
            next_gen_slot: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// `switch_mm_irqs_off`'s generation check: drop this address space's entries if a flush
    /// happened since we last synced.
    #[inline]
    fn sync(&mut self, pt: &PgTable) {
        let gen = pt.tlb_gen.load(Ordering::Acquire);
        if let Some(slot) = self.gens.iter_mut().find(|(c, _)| *c == pt.ctx_id) {
            if slot.1 == gen {
                return;
            }
            slot.1 = gen;
        } else {
            // A context we do not track: forget its entries and start tracking it.
            self.gens[self.next_gen_slot] = (pt.ctx_id, gen);
            self.next_gen_slot = (self.next_gen_slot + 1) % TLB_CONTEXTS;
        }
        for e in self
            .entries
            .iter_mut()
            .chain(self.huge.iter_mut())
            .filter(|e| e.ctx == pt.ctx_id)
        {
            *e = TlbEntry::default();
        }
        // Entries of contexts that fell out of `gens` can no longer be checked: drop them.
        let tracked = self.gens;
        for e in self.entries.iter_mut().chain(self.huge.iter_mut()) {
            if e.ctx != 0 && !tracked.iter().any(|(c, _)| *c == e.ctx) {
                *e = TlbEntry::default();
            }
        }
    }
}

/// One CPU's TLB and the flag that makes a second, nested borrow of it a panic instead of
/// two `&mut` to the same TLB.
struct TlbSlot {
    busy: Cell<bool>,
    tlb: UnsafeCell<Tlb>,
}

/// The per-CPU TLBs, each touched only by the holder of that CPU's handle, and what address
/// space each CPU is inside an access of (`0`: none), which flushes read.
pub struct Tlbs(PerCpu<CachePadded<TlbSlot>>, PerCpu<CachePadded<AtomicU64>>);

// SAFETY: slot `c` (its `busy` flag and its TLB) is only accessed through a `CpuGuard` of CPU
// `c` of the owning kernel (checked in `Kernel::with_tlb`), which is exclusive across threads
// and not `Send`; so only one thread ever touches a slot at a time, and `busy` makes the
// borrow within that thread exclusive. The access windows are atomics.
unsafe impl Sync for Tlbs {}
// SAFETY: the TLBs hold plain data.
unsafe impl Send for Tlbs {}

impl Tlbs {
    pub(crate) fn new(nr_cpus: usize) -> Self {
        Tlbs(
            PerCpu::new(nr_cpus, |_| {
                CachePadded(TlbSlot {
                    busy: Cell::new(false),
                    tlb: UnsafeCell::new(Tlb::new()),
                })
            }),
            PerCpu::new(nr_cpus, |_| CachePadded(AtomicU64::new(0))),
        )
    }
}

impl Kernel {
    /// Run `f` on this CPU's TLB. Exclusive: the CPU handle keeps other threads out, and a
    /// nested call (which would alias the `&mut`) panics.
    #[inline]
    fn with_tlb<R>(&self, cpu: &CpuGuard<'_>, f: impl FnOnce(&mut Tlb) -> R) -> R {
        assert!(
            core::ptr::eq(cpu.kernel, self),
            "BUG: a CPU handle of another machine was used"
        );
        let slot = &self.tlbs.0.get(cpu.id()).0;
        assert!(!slot.busy.replace(true), "BUG: nested use of a CPU's TLB");
        // SAFETY: `cpu` is this machine's exclusive handle on CPU `cpu.id()`, so no other
        // thread reaches this slot, and `busy` was false: no other borrow of this TLB exists
        // on this thread. The borrow ends before `busy` is cleared.
        let r = f(unsafe { &mut *slot.tlb.get() });
        slot.busy.set(false);
        r
    }

    /// This CPU's TLB hit and miss counts.
    pub fn tlb_stats(&self, cpu: &CpuGuard<'_>) -> (u64, u64) {
        self.with_tlb(cpu, |t| (t.hits, t.misses))
    }

    /// The TLBs' invariant, for the address spaces in `spaces`: a translation a CPU can
    /// still use (it was cached at its address space's current flush generation) agrees with
    /// the page tables — the entry is present and maps the same frame, for each 4 KiB of a
    /// 2 MiB entry — and that frame is in use. A live entry pointing elsewhere is a missing flush; one pointing to a free
    /// page is a use-after-free through a stale translation. Entries of other address spaces
    /// are not judged. Takes each CPU in turn (call without holding one), at a quiet point
    /// (no gather half done).
    pub fn check_tlb_invariants(&self, spaces: &[&PgTable]) -> Result<(), alloc::string::String> {
        for c in 0..self.nr_cpus() {
            let cpu = self.get_cpu_id(c).map_err(|_| "no such CPU")?;
            self.with_tlb(&cpu, |t| {
                let small = t.entries.iter().map(|e| (e, 12));
                let huge = t.huge.iter().map(|e| (e, 21));
                for (e, shift) in small.chain(huge).filter(|(e, _)| e.ctx != 0) {
                    let Some(pt) = spaces.iter().find(|p| p.ctx_id == e.ctx) else {
                        continue;
                    };
                    let gen = pt.tlb_gen.load(Ordering::Acquire);
                    if !t.gens.iter().any(|&(ctx, g)| ctx == e.ctx && g == gen) {
                        continue; // dropped at its next use
                    }
                    // Every 4 KiB the entry translates: one, or the 512 of a 2 MiB entry
                    // (whose folio may have been split, its pages freed one by one).
                    let base = e.vpn << shift;
                    let first = (e.pte & PTE_PFN_MASK) >> 12;
                    for i in 0..1u64 << (shift - 12) {
                        let (va, pfn) = (base + (i << 12), crate::Pfn(first + i));
                        if self
                            .pfn_to_page(pfn)
                            .is_some_and(|p| p.compound_head().refcount() <= 0)
                        {
                            return Err(alloc::format!(
                                "CPU {c}: a live TLB entry translates {va:#x} (context {}) to \
                                 {pfn:?}, a free page: a use-after-free through a stale \
                                 translation",
                                e.ctx
                            ));
                        }
                        let now = self.translation_lookup(pt, va).filter(|p| p.hw_present());
                        if now.is_none_or(|p| p.pfn() != pfn) {
                            return Err(alloc::format!(
                                "CPU {c}: a live TLB entry translates {va:#x} (context {}) to \
                                 {pfn:?}, but the page table has {now:?}: a missing TLB flush",
                                e.ctx
                            ));
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The MMU: translate `va` in `pt` for `access` on this CPU, through its TLB; a miss walks
    /// the tables (setting Accessed/Dirty). Returns the physical address or the fault.
    pub fn mmu_translate(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
        access: Access,
    ) -> Result<u64, PageFault> {
        self.with_tlb(cpu, |tlb| self.translate_in(tlb, pt, va, access))
    }

    /// [`Kernel::mmu_translate`] on a borrowed TLB.
    #[inline]
    fn translate_in(
        &self,
        tlb: &mut Tlb,
        pt: &PgTable,
        va: u64,
        access: Access,
    ) -> Result<u64, PageFault> {
        tlb.sync(pt);
        let vpn = va >> 12;
        let hvpn = va >> 21;
        // A write through a clean entry re-walks to set Dirty; a violation re-walks too (the
        // CPU drops the entry on a fault).
        let usable = |pte: u64| permitted(pte, access) && (!access.write || Pte(pte).dirty());
        let e = &mut tlb.entries[vpn as usize % TLB_ENTRIES];
        if e.ctx == pt.ctx_id && e.vpn == vpn {
            if usable(e.pte) {
                let pte = e.pte;
                tlb.hits += 1;
                return Ok((pte & PTE_PFN_MASK) | (va & 0xfff));
            }
            *e = TlbEntry::default();
        }
        let h = &mut tlb.huge[hvpn as usize % TLB_ENTRIES_2M];
        if h.ctx == pt.ctx_id && h.vpn == hvpn {
            if usable(h.pte) {
                let pte = h.pte;
                tlb.hits += 1;
                return Ok((pte & PTE_PFN_MASK) + (va & HUGE_OFFSET));
            }
            *h = TlbEntry::default();
        }
        tlb.misses += 1;
        let fault = |present| PageFault {
            address: va,
            error_code: access.error_code(present),
        };
        let walk = self
            .hw_walk(pt, va, access.write, |perms| permitted(perms, access))
            .map_err(fault)?;
        let (pte, leaf) = (walk.pte, walk.perms);
        let kept = (PteFlags::PRESENT | PteFlags::ACCESSED | PteFlags::DIRTY).bits();
        let cached = (pte & (PTE_PFN_MASK | kept))
            | (leaf & (PteFlags::RW | PteFlags::USER | PteFlags::NX).bits());
        if walk.huge {
            // The 2 MiB page's first 4 KiB: the piece the walk gave, moved back to its base.
            tlb.huge[hvpn as usize % TLB_ENTRIES_2M] = TlbEntry {
                ctx: pt.ctx_id,
                vpn: hvpn,
                pte: cached - ((va & HUGE_OFFSET) & !0xfff),
            };
        } else {
            tlb.entries[vpn as usize % TLB_ENTRIES] = TlbEntry {
                ctx: pt.ctx_id,
                vpn,
                pte: cached,
            };
        }
        Ok((pte & PTE_PFN_MASK) | (va & 0xfff))
    }

    /// An access by this CPU to `va` in `pt`: translate (through the TLB, walking on a miss)
    /// and call `f` with the physical address, all inside the access window a flush of `pt`
    /// waits for (see the module doc). A fault comes back before `f` runs.
    pub fn mmu_access<R>(
        &self,
        cpu: &CpuGuard<'_>,
        pt: &PgTable,
        va: u64,
        access: Access,
        f: impl FnOnce(u64) -> R,
    ) -> Result<R, PageFault> {
        let window = &self.tlbs.1.get(cpu.id()).0;
        // Publish the window before reading the generation (the flusher bumps it before it
        // reads the windows): either this access sees the new generation, or the flush sees
        // the window and waits.
        window.store(pt.ctx_id, Ordering::SeqCst);
        let r = self.mmu_translate(cpu, pt, va, access).map(f);
        window.store(0, Ordering::Release);
        r
    }

    /// `flush_tlb_mm_range` for the whole address space (`flush_tlb_mm`): every CPU drops its
    /// entries for `pt` before its next translation in it, and an access in flight on another
    /// CPU finishes before this returns.
    pub fn flush_tlb_mm(&self, pt: &PgTable) {
        pt.tlb_gen.fetch_add(1, Ordering::SeqCst);
        for w in self.tlbs.1.iter() {
            while w.0.load(Ordering::SeqCst) == pt.ctx_id {
                core::hint::spin_loop();
            }
        }
    }

    /// `flush_tlb_range`. Like Linux above `tlb_single_page_flush_ceiling`, this flushes the
    /// whole address space; the generation makes it reach every CPU.
    pub fn flush_tlb_range(&self, pt: &PgTable, _start: u64, _end: u64) {
        self.flush_tlb_mm(pt);
    }

    /// `flush_tlb_kernel_range`, for the kernel page tables.
    pub fn flush_tlb_kernel_range(&self, kernel_pt: &PgTable, start: u64, end: u64) {
        self.flush_tlb_range(kernel_pt, start, end);
    }
}

#[inline]
fn permitted(pte: u64, a: Access) -> bool {
    let f = PteFlags::from_bits_truncate(pte);
    (!a.write || f.contains(PteFlags::RW))
        && (!a.user || f.contains(PteFlags::USER))
        && (!a.exec || !f.contains(PteFlags::NX))
}
