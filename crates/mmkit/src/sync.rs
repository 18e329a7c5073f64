//! The library's own locks and per-CPU storage (the analogue of `include/linux/spinlock.h`,
//! `include/linux/rwlock.h` and `include/linux/percpu.h`).
//!
//! [`SpinLock`] and [`RwLock`] spin briefly and then, with the `std` feature, yield the host
//! thread, so a simulator with more threads than host cores still makes progress. Without
//! `std` they only spin, as a kernel's locks do.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set spin lock protecting a `T`.
pub struct SpinLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialized by `locked`; `T: Send` is enough for the lock to be
// shared, as with `std::sync::Mutex`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: the lock owns its `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

/// Holding this guard is holding the lock.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(data: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(data),
        }
    }

    /// `spin_trylock()`.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(SpinLockGuard { lock: self })
        } else {
            None
        }
    }

    /// `spin_lock()`.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        if let Some(g) = self.try_lock() {
            return g;
        }
        self.lock_slow()
    }

    #[cold]
    fn lock_slow(&self) -> SpinLockGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(128) {
                    relax();
                } else {
                    core::hint::spin_loop();
                }
            }
            if let Some(g) = self.try_lock() {
                return g;
            }
        }
    }

    /// Mutable access without locking, for the exclusive owner (boot, teardown).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Whether someone holds the lock right now (for assertions only).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A reader-writer spin lock protecting a `T` (`rwlock_t`; it stands where Linux has the
/// `anon_vma` and `i_mmap` rw-semaphores). Readers share it; a writer excludes everyone.
/// Readers are preferred, as with `rwlock_t`: a reader that already holds it may take it again
/// (a reverse-map walk that reclaims and walks again) even while a writer waits.
pub struct RwLock<T> {
    /// Readers holding the lock, or `WRITER`.
    state: core::sync::atomic::AtomicU32,
    data: UnsafeCell<T>,
}

const WRITER: u32 = u32::MAX;

// SAFETY: readers get `&T` concurrently (so `T: Sync`), a writer `&mut T` alone (so `T: Send`).
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}
// SAFETY: the lock owns its `T`.
unsafe impl<T: Send> Send for RwLock<T> {}

/// Shared access through an [`RwLock`].
pub struct RwLockReadGuard<'a, T> {
    lock: &'a RwLock<T>,
}

/// Exclusive access through an [`RwLock`].
pub struct RwLockWriteGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> RwLock<T> {
    /// A new, unlocked lock.
    pub const fn new(data: T) -> Self {
        Self {
            state: core::sync::atomic::AtomicU32::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// `read_lock()`.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s != WRITER
                && s < WRITER - 1
                && self
                    .state
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return RwLockReadGuard { lock: self };
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(128) {
                relax();
            } else {
                core::hint::spin_loop();
            }
        }
    }

    /// `write_trylock()`: the write side if nobody holds the lock now.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        self.state
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(RwLockWriteGuard { lock: self })
    }

    /// `write_lock()`.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if self
                .state
                .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return RwLockWriteGuard { lock: self };
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(128) {
                relax();
            } else {
                core::hint::spin_loop();
            }
        }
    }

    /// Mutable access without locking, for the exclusive owner.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a read guard means no writer holds the lock, so only shared references exist.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for RwLockReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the write guard is the only access to `data` while it lives.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for RwLockWriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.state.store(0, Ordering::Release);
    }
}

/// Give the host CPU away briefly while waiting.
#[inline]
pub fn relax() {
    #[cfg(feature = "std")]
    {
        extern crate std;
        std::thread::yield_now();
    }
    #[cfg(not(feature = "std"))]
    core::hint::spin_loop();
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the lock, so no other reference to `data` exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// One `T` per CPU, each on its own cache line so CPUs never share a line on the fast path.
pub struct PerCpu<T> {
    slots: alloc::boxed::Box<[CachePadded<T>]>,
}

/// Aligns its contents to a 64-byte cache line.
#[repr(align(64))]
pub struct CachePadded<T>(pub T);

impl<T> PerCpu<T> {
    /// One slot per CPU, built by `f(cpu)`.
    pub fn new(nr_cpus: usize, mut f: impl FnMut(usize) -> T) -> Self {
        Self {
            slots: (0..nr_cpus).map(|c| CachePadded(f(c))).collect(),
        }
    }
    /// `per_cpu_ptr(ptr, cpu)`.
    #[inline]
    pub fn get(&self, cpu: usize) -> &T {
        &self.slots[cpu].0
    }
    /// Number of CPUs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Never true for a machine (there is always a CPU); here for completeness of the API.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// All slots in CPU order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &s.0)
    }
}
