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
        // The guard is built only on success: a guard built and dropped on failure would
        // release a lock someone else holds (its `Drop` stores 0).
        if self
            .state
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(RwLockWriteGuard { lock: self })
        } else {
            None
        }
    }

    /// `try_read`: a read side if no writer holds the lock now.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let s = self.state.load(Ordering::Relaxed);
        if s < WRITER - 1
            && self
                .state
                .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            Some(RwLockReadGuard { lock: self })
        } else {
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_try_write_leaves_the_holders_lock_alone() {
        let l = RwLock::new(0u32);
        let r = l.read();
        assert!(l.try_write().is_none());
        // The reader still holds it: no writer may enter, another reader may.
        assert!(l.try_write().is_none());
        let r2 = l.try_read().expect("readers share the lock");
        drop(r2);
        drop(r);
        let mut w = l.try_write().expect("free once the readers are gone");
        *w = 7;
        assert!(l.try_write().is_none());
        assert!(l.try_read().is_none());
        drop(w);
        assert_eq!(*l.read(), 7);
        assert!(l.try_write().is_some());
    }

    #[test]
    fn a_failed_try_lock_leaves_the_holders_lock_alone() {
        let l = SpinLock::new(0u32);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        assert!(l.is_locked());
        drop(g);
        assert!(!l.is_locked());
        assert!(l.try_lock().is_some());
    }

    #[test]
    fn readers_and_writers_on_threads_never_overlap() {
        extern crate std;
        use core::sync::atomic::AtomicU32;
        let l = RwLock::new((0u64, 0u64));
        let inside = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (l, inside) = (&l, &inside);
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        if (i + t) % 3 == 0 {
                            let g = if i % 2 == 0 {
                                l.try_write()
                            } else {
                                Some(l.write())
                            };
                            if let Some(mut g) = g {
                                assert_eq!(inside.swap(WRITER, Ordering::SeqCst), 0);
                                g.0 += 1;
                                g.1 += 1;
                                inside.store(0, Ordering::SeqCst);
                            }
                        } else {
                            let g = if i % 2 == 0 {
                                l.try_read()
                            } else {
                                Some(l.read())
                            };
                            if let Some(g) = g {
                                assert_ne!(inside.fetch_add(1, Ordering::SeqCst), WRITER);
                                assert_eq!(g.0, g.1);
                                inside.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(l.state.load(Ordering::Relaxed), 0);
    }
}
