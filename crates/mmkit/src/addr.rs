//! Physical and virtual addresses, page frame numbers and alignment helpers.
//!
//! Mirrors `include/linux/pfn.h` (`PFN_UP`, `PFN_DOWN`, `PFN_PHYS`) and the
//! `PAGE_SIZE`/`PAGE_SHIFT` definitions of `arch/x86/include/asm/page_types.h`.

use core::fmt;

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size: 4 KiB, as on x86-64.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask that clears the offset within a page.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

/// A page frame number: a physical address divided by `PAGE_SIZE`.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

/// A physical address.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A (kernel or user) virtual address.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub u64);

impl Pfn {
    /// `PFN_PHYS`: the physical address of the first byte of this frame.
    pub const fn phys(self) -> PhysAddr {
        PhysAddr(self.0 << PAGE_SHIFT)
    }
}

/// `pfn + n`: the frame `n` frames further on.
impl core::ops::Add<u64> for Pfn {
    type Output = Pfn;
    #[inline]
    fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
}

/// `pfn += n`.
impl core::ops::AddAssign<u64> for Pfn {
    #[inline]
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

/// `pfn -= n`.
impl core::ops::SubAssign<u64> for Pfn {
    #[inline]
    fn sub_assign(&mut self, n: u64) {
        self.0 -= n;
    }
}

/// `pfn - n`: the frame `n` frames back.
impl core::ops::Sub<u64> for Pfn {
    type Output = Pfn;
    #[inline]
    fn sub(self, n: u64) -> Pfn {
        Pfn(self.0 - n)
    }
}

/// `a - b`: how many frames `b` lies below `a`.
impl core::ops::Sub<Pfn> for Pfn {
    type Output = u64;
    #[inline]
    fn sub(self, b: Pfn) -> u64 {
        self.0 - b.0
    }
}

impl PhysAddr {
    /// `PFN_DOWN`: the frame containing this address.
    pub const fn pfn_down(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
    /// `PFN_UP`: the first frame starting at or above this address.
    pub const fn pfn_up(self) -> Pfn {
        Pfn(self.0.div_ceil(PAGE_SIZE))
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn:{:#x}", self.0)
    }
}
/// The frame number alone, so `{pfn:#x}` prints as Linux's `pfn:%#lx` does.
impl fmt::LowerHex for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}
impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pa:{:#x}", self.0)
    }
}
impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "va:{:#x}", self.0)
    }
}

/// Round `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Round `x` up to a multiple of `align` (a power of two); saturates at the top.
pub const fn align_up(x: u64, align: u64) -> u64 {
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => !(align - 1),
    }
}

/// `int_sqrt`: the integer square root (floor), as `lib/math/int_sqrt.c` computes it.
pub const fn int_sqrt(x: u64) -> u64 {
    if x <= 1 {
        return x;
    }
    let mut m: u64 = 1 << ((63 - x.leading_zeros()) & !1);
    let mut y: u64 = 0;
    let mut x = x;
    while m != 0 {
        let b = y + m;
        y >>= 1;
        if x >= b {
            x -= b;
            y += m;
        }
        m >>= 2;
    }
    y
}

/// `fls`: position of the most significant set bit, 1-based; 0 for 0.
pub const fn fls(x: u64) -> u32 {
    64 - x.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_sqrt_is_floor_sqrt() {
        for x in [0u64, 1, 2, 3, 4, 15, 16, 17, 99, 100, 1 << 40, u64::MAX] {
            let r = int_sqrt(x);
            assert!(r.checked_mul(r).is_some_and(|v| v <= x), "{x}");
            assert!((r + 1).checked_mul(r + 1).is_none_or(|v| v > x), "{x}");
        }
    }

    #[test]
    fn pfn_rounding() {
        assert_eq!(PhysAddr(0x9fbff).pfn_down(), Pfn(0x9f));
        assert_eq!(PhysAddr(0x9fc00).pfn_up(), Pfn(0xa0));
        assert_eq!(PhysAddr(0x1000).pfn_up(), Pfn(1));
        assert_eq!(align_up(u64::MAX, 4096), !4095);
    }
}
