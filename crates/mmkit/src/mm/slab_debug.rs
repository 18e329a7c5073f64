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

/// One buffer of a debugging cache — `[redzone1][object][pad][redzone2][user]` at `objp` —
/// which the holder has exclusive use of. Every debug word and object byte is reached
/// through it, within the buffer and no longer than the value lives.
struct DebugBuf<'c> {
    c: &'c KmemCache,
    objp: usize,
}

impl<'c> DebugBuf<'c> {
    /// # Safety
    ///
    /// `objp` is the start of one of `c`'s buffers (`c.size` bytes at a multiple of
    /// `c.size` from a slab's first object, in RAM the kernel maps), and for as long as the
    /// returned value lives nothing else reads or writes that buffer.
    unsafe fn new(c: &'c KmemCache, objp: usize) -> Self {
        Self { c, objp }
    }

    fn redzone1(&self) -> usize {
        0
    }
    fn redzone2(&self) -> usize {
        let user = if self.c.flags.contains(SlabFlags::SLAB_STORE_USER) {
            8
        } else {
            0
        };
        self.c.size as usize - 8 - user
    }
    fn user_word(&self) -> usize {
        self.c.size as usize - 8
    }

    /// The 8-byte debug word at `off` bytes into the buffer.
    fn rd(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.c.size as usize);
        // SAFETY: `off + 8` is within the buffer (asserted), which `new`'s contract gives
        // us; debug words are not aligned in general.
        unsafe { ((self.objp + off) as *const u64).read_unaligned() }
    }
    fn wr(&mut self, off: usize, v: u64) {
        assert!(off + 8 <= self.c.size as usize);
        // SAFETY: as in `rd`, and the buffer is ours alone (`new`'s contract).
        unsafe { ((self.objp + off) as *mut u64).write_unaligned(v) }
    }

    /// The object's bytes, borrowed from this value.
    fn object(&mut self) -> &mut [u8] {
        // SAFETY: `[obj_offset, obj_offset + object_size)` lies inside the buffer (the cache
        // sized it so), which is ours alone while `self` lives (`new`'s contract); the slice
        // cannot outlive `self`.
        unsafe {
            core::slice::from_raw_parts_mut(
                (self.objp + self.c.obj_offset as usize) as *mut u8,
                self.c.object_size as usize,
            )
        }
    }

    fn poison(&mut self, val: u8) {
        let o = self.object();
        o.fill(val);
        if val == POISON_FREE {
            if let Some(l) = o.last_mut() {
                *l = POISON_END;
            }
        }
    }
}

/// `cache_init_objs`' debug part: a new object is free.
///
/// # Safety
///
/// `objp` is the start of one of `c`'s buffers in a slab being set up, which nothing else
/// reaches yet.
pub(crate) unsafe fn init_obj(c: &KmemCache, objp: usize) {
    // SAFETY: the caller's contract is DebugBuf::new's.
    let mut b = unsafe { DebugBuf::new(c, objp) };
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        b.wr(b.redzone1(), RED_INACTIVE);
        b.wr(b.redzone2(), RED_INACTIVE);
    }
    if c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        b.wr(b.user_word(), 0);
    }
    if c.flags.contains(SlabFlags::SLAB_POISON) {
        b.poison(POISON_FREE);
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
    PAGE_OFFSET + k.direct_map.pa(addr)
}

fn last_users(k: &Kernel, b: &DebugBuf<'_>) -> String {
    if !b.c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        return String::new();
    }
    let w = b.rd(b.user_word());
    format!(
        "Last user: allocated at {}, freed at {}",
        caller_name(k, w as u32),
        caller_name(k, (w >> 32) as u32)
    )
}

fn record(k: &Kernel, b: &mut DebugBuf<'_>, caller: Caller, free: bool) {
    if !b.c.flags.contains(SlabFlags::SLAB_STORE_USER) {
        return;
    }
    let id = intern(k, caller) as u64;
    let w = b.rd(b.user_word());
    let w = if free {
        (w & 0xffff_ffff) | (id << 32)
    } else {
        id
    };
    b.wr(b.user_word(), w);
}

/// `check_poison_obj`: report the lines of a free object whose poison changed.
fn check_poison(k: &Kernel, b: &mut DebugBuf<'_>) {
    let c = b.c;
    let o = b.object().to_vec();
    let n = o.len();
    let bad = |i: usize, b: u8| b != if i + 1 == n { POISON_END } else { POISON_FREE };
    let Some(first) = o.iter().enumerate().position(|(i, &b)| bad(i, b)) else {
        return;
    };
    k.printk(&format!(
        "Slab corruption (Not tainted): {} start={:#x}, len={}",
        c.name,
        va(k, b.objp + c.obj_offset as usize),
        c.object_size
    ));
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        k.printk(&format!(
            "Redzone: {:#x}/{:#x}",
            b.rd(b.redzone1()),
            b.rd(b.redzone2())
        ));
    }
    let lu = last_users(k, b);
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
    b.poison(POISON_FREE);
}

fn slab_error(k: &Kernel, b: &DebugBuf<'_>, func: &str, msg: &str) {
    let c = b.c;
    k.printk(&format!(
        "slab error in {func}(): cache `{}': {msg}",
        c.name
    ));
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        k.printk(&format!(
            "{:#x}: redzone 1:{:#x}, redzone 2:{:#x}",
            va(k, b.objp),
            b.rd(b.redzone1()),
            b.rd(b.redzone2())
        ));
    }
    let lu = last_users(k, b);
    if !lu.is_empty() {
        k.printk(&lu);
    }
    k.slab_reports
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// `cache_alloc_debugcheck_after`: check the poison and red zones of an object being handed
/// out, mark it allocated, record the caller; returns the caller's pointer.
///
/// # Safety
///
/// `objp` is the start of one of `c`'s buffers, just taken off a per-CPU array or a slab by
/// this CPU: nothing else reaches it until it is handed out.
pub(crate) unsafe fn alloc_debugcheck_after(
    k: &Kernel,
    c: &KmemCache,
    objp: usize,
    caller: Caller,
) -> usize {
    // SAFETY: the caller's contract is DebugBuf::new's.
    let mut b = unsafe { DebugBuf::new(c, objp) };
    if c.flags.contains(SlabFlags::SLAB_POISON) {
        check_poison(k, &mut b);
        b.poison(POISON_INUSE);
    }
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        if b.rd(b.redzone1()) != RED_INACTIVE || b.rd(b.redzone2()) != RED_INACTIVE {
            slab_error(
                k,
                &b,
                "cache_alloc_debugcheck_after",
                "double free, or memory outside object was overwritten",
            );
        }
        b.wr(b.redzone1(), RED_ACTIVE);
        b.wr(b.redzone2(), RED_ACTIVE);
    }
    record(k, &mut b, caller, false);
    if let (Some(ctor), true) = (c.ctor, c.flags.contains(SlabFlags::SLAB_POISON)) {
        ctor(b.object());
        c.ctor_calls
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    objp + c.obj_offset as usize
}

/// `cache_free_debugcheck`: verify the red zones of an object being freed. `None` means a
/// double free: reported, and the free is dropped.
///
/// # Safety
///
/// `addr` is an object start of `c` (`slab_free_checked` verified it), being freed by its
/// owner, so nothing else reaches its buffer during the check. A double free of an object
/// that another CPU has meanwhile allocated again breaks this, as it corrupts memory in
/// Linux: the red zones are there to report the double frees that do not race.
pub(crate) unsafe fn free_debugcheck(
    k: &Kernel,
    c: &KmemCache,
    addr: usize,
    caller: Caller,
) -> Option<usize> {
    let objp = addr - c.obj_offset as usize;
    // SAFETY: `objp` is the buffer of the object at `addr`; the caller's contract gives us
    // exclusive use of it.
    let mut b = unsafe { DebugBuf::new(c, objp) };
    if c.flags.contains(SlabFlags::SLAB_RED_ZONE) {
        let (r1, r2) = (b.rd(b.redzone1()), b.rd(b.redzone2()));
        if r1 == RED_INACTIVE && r2 == RED_INACTIVE {
            record(k, &mut b, caller, true);
            slab_error(k, &b, "verify_redzone_free", "double free detected");
            return None;
        }
        if r1 != RED_ACTIVE || r2 != RED_ACTIVE {
            slab_error(
                k,
                &b,
                "verify_redzone_free",
                "memory outside object was overwritten",
            );
        }
        b.wr(b.redzone1(), RED_INACTIVE);
        b.wr(b.redzone2(), RED_INACTIVE);
    }
    record(k, &mut b, caller, true);
    if c.flags.contains(SlabFlags::SLAB_POISON) {
        b.poison(POISON_FREE);
    }
    Some(objp)
}
