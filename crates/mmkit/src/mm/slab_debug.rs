//! SLAB debugging (`mm/slab.c` under `DEBUG`): red zones around each object, poisoning of
//! free objects, and the last allocating/freeing caller (`SLAB_RED_ZONE`, `SLAB_POISON`,
//! `SLAB_STORE_USER`, or all three with `slab_debug`), with Linux's reports:
//! `slab error in verify_redzone_free(): cache `…': double free detected`,
//! `… memory outside object was overwritten`, and `Slab corruption (Not tainted): …` for a
//! write after free (`check_poison_obj`).
//!
//! Buffer layout with everything on: `[redzone1 8][object][pad][redzone2 8][user 8]`. Red
//! zones hold `RED_INACTIVE` while the object is free and `RED_ACTIVE` while allocated; a free
//! object's bytes are `POISON_FREE` (0x6b) ending in `POISON_END` (0xa5), an allocated one's
//! start as `POISON_INUSE` (0x5a). The user word holds the interned alloc and free callers.
//!
//! A double free detected by the red zones is reported and ignored, so the allocator stays
//! consistent; an overrun or a write after free is reported, repaired, and the operation goes
//! on, as in Linux.

use crate::arch::x86_64::layout::PAGE_OFFSET;
use crate::mm::slab::{KmemCache, SlabFlags};
use crate::Kernel;
use alloc::format;
use alloc::string::String;
use core::fmt::Write;
use core::panic::Location;

/// `RED_INACTIVE`.
pub const RED_INACTIVE: u64 = 0x09F9_1102_9D74_E35B;
/// `RED_ACTIVE`.
pub const RED_ACTIVE: u64 = 0xD841_56C5_6356_88C0;
/// `POISON_INUSE`.
pub const POISON_INUSE: u8 = 0x5a;
/// `POISON_FREE`.
pub const POISON_FREE: u8 = 0x6b;
/// `POISON_END`.
pub const POISON_END: u8 = 0xa5;

/// Who called an allocator entry point (`_RET_IP_`), via `#[track_caller]`.
#[derive(Copy, Clone, Debug)]
pub struct Caller(pub(crate) Option<&'static Location<'static>>);

impl Caller {
    /// The caller of the `#[track_caller]` function this is called from.
    #[track_caller]
    #[inline]
    pub fn here() -> Self {
        Caller(Some(Location::caller()))
    }
    /// No caller (internal allocations).
    pub const fn none() -> Self {
        Caller(None)
    }
}

fn rd(addr: usize) -> u64 {
    // SAFETY: callers pass addresses of debug words inside a slab object this cache owns.
    unsafe { (addr as *const u64).read_unaligned() }
}
fn wr(addr: usize, v: u64) {
    // SAFETY: as in `rd`.
    unsafe { (addr as *mut u64).write_unaligned(v) }
}

fn redzone1(_c: &KmemCache, objp: usize) -> usize {
    objp
}
fn redzone2(c: &KmemCache, objp: usize) -> usize {
    let user = if c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        8
    } else {
        0
    };
    objp + c.size as usize - 8 - user
}
fn user_word(c: &KmemCache, objp: usize) -> usize {
    objp + c.size as usize - 8
}

fn object<'a>(c: &KmemCache, objp: usize) -> &'a mut [u8] {
    // SAFETY: the object area lies inside the buffer at `objp`, which the cache owns and the
    // caller (alloc/free path of this object) has exclusive use of.
    unsafe {
        core::slice::from_raw_parts_mut(
            (objp + c.obj_offset as usize) as *mut u8,
            c.object_size as usize,
        )
    }
}

fn poison(c: &KmemCache, objp: usize, val: u8) {
    let o = object(c, objp);
    o.fill(val);
    if val == POISON_FREE {
        if let Some(l) = o.last_mut() {
            *l = POISON_END;
        }
    }
}

/// `cache_init_objs`' debug part: a new object is free.
pub(crate) fn init_obj(c: &KmemCache, objp: usize) {
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        wr(redzone1(c, objp), RED_INACTIVE);
        wr(redzone2(c, objp), RED_INACTIVE);
    }
    if c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        wr(user_word(c, objp), 0);
    }
    if c.flags.contains(SlabFlags::SLAB_POISON) {
        poison(c, objp, POISON_FREE);
    }
}

fn intern(k: &Kernel, caller: Caller) -> u32 {
    let Some(loc) = caller.0 else { return 0 };
    let mut t = k.slab.callers.lock();
    if let Some(i) = t.iter().position(|l| core::ptr::eq(*l, loc)) {
        return i as u32 + 1;
    }
    t.push(loc);
    t.len() as u32
}

fn caller_name(k: &Kernel, id: u32) -> String {
    if id == 0 {
        return String::from("(none)");
    }
    match k.slab.callers.lock().get(id as usize - 1) {
        Some(l) => format!("{}:{}", l.file(), l.line()),
        None => String::from("(corrupted)"),
    }
}

fn va(k: &Kernel, addr: usize) -> u64 {
    PAGE_OFFSET + (addr - k.direct_map as usize) as u64
}

fn last_users(k: &Kernel, c: &KmemCache, objp: usize) -> String {
    if !c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        return String::new();
    }
    let w = rd(user_word(c, objp));
    format!(
        "Last user: allocated at {}, freed at {}",
        caller_name(k, w as u32),
        caller_name(k, (w >> 32) as u32)
    )
}

fn record(k: &Kernel, c: &KmemCache, objp: usize, caller: Caller, free: bool) {
    if !c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        return;
    }
    let id = intern(k, caller) as u64;
    let w = rd(user_word(c, objp));
    let w = if free {
        (w & 0xffff_ffff) | (id << 32)
    } else {
        id
    };
    wr(user_word(c, objp), w);
}

/// `check_poison_obj`: report the lines of a free object whose poison changed.
fn check_poison(k: &Kernel, c: &KmemCache, objp: usize) {
    let o = object(c, objp);
    let n = o.len();
    let bad = |i: usize, b: u8| b != if i + 1 == n { POISON_END } else { POISON_FREE };
    let Some(first) = o.iter().enumerate().position(|(i, &b)| bad(i, b)) else {
        return;
    };
    k.printk(&format!(
        "Slab corruption (Not tainted): {} start={:#x}, len={}",
        c.name,
        va(k, objp + c.obj_offset as usize),
        c.object_size
    ));
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        k.printk(&format!(
            "Redzone: {:#x}/{:#x}",
            rd(redzone1(c, objp)),
            rd(redzone2(c, objp))
        ));
    }
    let lu = last_users(k, c, objp);
    if !lu.is_empty() {
        k.printk(&lu);
    }
    let mut line_start = first & !15;
    while line_start < n {
        let end = (line_start + 16).min(n);
        if (line_start..end).any(|i| bad(i, o[i])) {
            let mut s = String::new();
            let _ = write!(s, "{line_start:03x}:");
            for b in &o[line_start..end] {
                let _ = write!(s, " {b:02x}");
            }
            k.printk(&s);
        }
        line_start += 16;
    }
    k.slab_reports
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    // Repair, so the next check reports only new damage.
    poison(c, objp, POISON_FREE);
}

fn slab_error(k: &Kernel, c: &KmemCache, func: &str, msg: &str, objp: usize) {
    k.printk(&format!(
        "slab error in {func}(): cache `{}': {msg}",
        c.name
    ));
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        k.printk(&format!(
            "{:#x}: redzone 1:{:#x}, redzone 2:{:#x}",
            va(k, objp),
            rd(redzone1(c, objp)),
            rd(redzone2(c, objp))
        ));
    }
    let lu = last_users(k, c, objp);
    if !lu.is_empty() {
        k.printk(&lu);
    }
    k.slab_reports
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// `cache_alloc_debugcheck_after`: check the poison and red zones of an object being handed
/// out, mark it allocated, record the caller; returns the caller's pointer.
pub(crate) fn alloc_debugcheck_after(
    k: &Kernel,
    c: &KmemCache,
    objp: usize,
    caller: Caller,
) -> usize {
    if c.flags.contains(SlabFlags::SLAB_POISON) {
        check_poison(k, c, objp);
        poison(c, objp, POISON_INUSE);
    }
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        if rd(redzone1(c, objp)) != RED_INACTIVE || rd(redzone2(c, objp)) != RED_INACTIVE {
            slab_error(
                k,
                c,
                "cache_alloc_debugcheck_after",
                "double free, or memory outside object was overwritten",
                objp,
            );
        }
        wr(redzone1(c, objp), RED_ACTIVE);
        wr(redzone2(c, objp), RED_ACTIVE);
    }
    record(k, c, objp, caller, false);
    if let (Some(ctor), true) = (c.ctor, c.flags.contains(SlabFlags::SLAB_POISON)) {
        ctor(object(c, objp));
        c.ctor_calls
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    objp + c.obj_offset as usize
}

/// `cache_free_debugcheck`: verify the red zones of an object being freed. `None` means a
/// double free: reported, and the free is dropped.
pub(crate) fn free_debugcheck(
    k: &Kernel,
    c: &KmemCache,
    addr: usize,
    caller: Caller,
) -> Option<usize> {
    let objp = addr - c.obj_offset as usize;
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        let (r1, r2) = (rd(redzone1(c, objp)), rd(redzone2(c, objp)));
        if r1 == RED_INACTIVE && r2 == RED_INACTIVE {
            record(k, c, objp, caller, true);
            slab_error(k, c, "verify_redzone_free", "double free detected", objp);
            return None;
        }
        if r1 != RED_ACTIVE || r2 != RED_ACTIVE {
            slab_error(
                k,
                c,
                "verify_redzone_free",
                "memory outside object was overwritten",
                objp,
            );
        }
        wr(redzone1(c, objp), RED_INACTIVE);
        wr(redzone2(c, objp), RED_INACTIVE);
    }
    record(k, c, objp, caller, true);
    if c.flags.contains(SlabFlags::SLAB_POISON) {
        poison(c, objp, POISON_FREE);
    }
    Some(objp)
}
