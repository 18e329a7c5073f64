//! GFP ("get free pages") flags, as `include/linux/gfp_types.h` defines them for Linux 6.x.
//! The two derivations the allocator makes from them — `gfp_zone()` (the highest zone an
//! allocation may use) and `gfp_migratetype()` (which free lists it prefers) — are methods
//! defined with the allocator (`mm/page_alloc`), which owns zones and migrate types.

use core::fmt;

pub use self::flag_defs::*;
#[allow(missing_docs)] // the flag names are Linux's own; see the kernel headers named above
mod flag_defs {
    bitflags::bitflags! {
        /// A GFP mask. Bit values are Linux 6.x's, so `mode:0x…` in reports means what it means there.
        #[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
        pub struct Gfp: u32 {
            const __GFP_DMA = 0x01;
            const __GFP_HIGHMEM = 0x02;
            const __GFP_DMA32 = 0x04;
            const __GFP_MOVABLE = 0x08;
            const __GFP_RECLAIMABLE = 0x10;
            const __GFP_HIGH = 0x20;
            const __GFP_IO = 0x40;
            const __GFP_FS = 0x80;
            const __GFP_ZERO = 0x100;
            const __GFP_DIRECT_RECLAIM = 0x400;
            const __GFP_KSWAPD_RECLAIM = 0x800;
            const __GFP_WRITE = 0x1000;
            const __GFP_NOWARN = 0x2000;
            const __GFP_RETRY_MAYFAIL = 0x4000;
            const __GFP_NOFAIL = 0x8000;
            const __GFP_NORETRY = 0x10000;
            const __GFP_MEMALLOC = 0x20000;
            const __GFP_COMP = 0x40000;
            const __GFP_NOMEMALLOC = 0x80000;
            const __GFP_HARDWALL = 0x100000;
            const __GFP_THISNODE = 0x200000;
            const __GFP_ACCOUNT = 0x400000;

            const __GFP_RECLAIM = Self::__GFP_DIRECT_RECLAIM.bits() | Self::__GFP_KSWAPD_RECLAIM.bits();
            const GFP_ATOMIC = Self::__GFP_HIGH.bits() | Self::__GFP_KSWAPD_RECLAIM.bits();
            const GFP_KERNEL = Self::__GFP_RECLAIM.bits() | Self::__GFP_IO.bits() | Self::__GFP_FS.bits();
            const GFP_KERNEL_ACCOUNT = Self::GFP_KERNEL.bits() | Self::__GFP_ACCOUNT.bits();
            const GFP_NOWAIT = Self::__GFP_KSWAPD_RECLAIM.bits();
            const GFP_NOIO = Self::__GFP_RECLAIM.bits();
            const GFP_NOFS = Self::__GFP_RECLAIM.bits() | Self::__GFP_IO.bits();
            const GFP_USER = Self::GFP_KERNEL.bits() | Self::__GFP_HARDWALL.bits();
            const GFP_DMA = Self::__GFP_DMA.bits();
            const GFP_DMA32 = Self::__GFP_DMA32.bits();
            const GFP_HIGHUSER = Self::GFP_USER.bits() | Self::__GFP_HIGHMEM.bits();
            const GFP_HIGHUSER_MOVABLE = Self::GFP_HIGHUSER.bits() | Self::__GFP_MOVABLE.bits();
        }
    }
}

/// Shorthands in Linux's spelling.
pub const GFP_KERNEL: Gfp = Gfp::GFP_KERNEL;
/// See [`Gfp::GFP_ATOMIC`].
pub const GFP_ATOMIC: Gfp = Gfp::GFP_ATOMIC;
/// See [`Gfp::GFP_NOWAIT`].
pub const GFP_NOWAIT: Gfp = Gfp::GFP_NOWAIT;
/// See [`Gfp::GFP_USER`].
pub const GFP_USER: Gfp = Gfp::GFP_USER;
/// See [`Gfp::GFP_HIGHUSER_MOVABLE`].
pub const GFP_HIGHUSER_MOVABLE: Gfp = Gfp::GFP_HIGHUSER_MOVABLE;
/// See [`Gfp::GFP_DMA`].
pub const GFP_DMA: Gfp = Gfp::GFP_DMA;
/// See [`Gfp::GFP_DMA32`].
pub const GFP_DMA32: Gfp = Gfp::GFP_DMA32;

const ZONE_MASK: u32 = Gfp::__GFP_DMA.bits()
    | Gfp::__GFP_HIGHMEM.bits()
    | Gfp::__GFP_DMA32.bits()
    | Gfp::__GFP_MOVABLE.bits();

impl Gfp {
    /// Whether the zone-modifier bits form a valid combination (see [`Gfp::zone`]).
    pub fn zone_bits(self) -> u32 {
        self.bits() & ZONE_MASK
    }

    /// `gfpflags_allow_blocking()`.
    pub fn allows_blocking(self) -> bool {
        self.contains(Gfp::__GFP_DIRECT_RECLAIM)
    }
}

/// Names tried in order when printing a mask, as `%pGg` does (`__def_gfpflag_names`).
const GFP_NAMES: &[(Gfp, &str)] = &[
    (Gfp::GFP_HIGHUSER_MOVABLE, "GFP_HIGHUSER_MOVABLE"),
    (Gfp::GFP_HIGHUSER, "GFP_HIGHUSER"),
    (Gfp::GFP_USER, "GFP_USER"),
    (Gfp::GFP_KERNEL_ACCOUNT, "GFP_KERNEL_ACCOUNT"),
    (Gfp::GFP_KERNEL, "GFP_KERNEL"),
    (Gfp::GFP_NOFS, "GFP_NOFS"),
    (Gfp::GFP_ATOMIC, "GFP_ATOMIC"),
    (Gfp::GFP_NOIO, "GFP_NOIO"),
    (Gfp::GFP_NOWAIT, "GFP_NOWAIT"),
    (Gfp::GFP_DMA, "GFP_DMA"),
    (Gfp::__GFP_HIGHMEM, "__GFP_HIGHMEM"),
    (Gfp::GFP_DMA32, "GFP_DMA32"),
    (Gfp::__GFP_HIGH, "__GFP_HIGH"),
    (Gfp::__GFP_IO, "__GFP_IO"),
    (Gfp::__GFP_FS, "__GFP_FS"),
    (Gfp::__GFP_ZERO, "__GFP_ZERO"),
    (Gfp::__GFP_DIRECT_RECLAIM, "__GFP_DIRECT_RECLAIM"),
    (Gfp::__GFP_KSWAPD_RECLAIM, "__GFP_KSWAPD_RECLAIM"),
    (Gfp::__GFP_WRITE, "__GFP_WRITE"),
    (Gfp::__GFP_NOWARN, "__GFP_NOWARN"),
    (Gfp::__GFP_RETRY_MAYFAIL, "__GFP_RETRY_MAYFAIL"),
    (Gfp::__GFP_NOFAIL, "__GFP_NOFAIL"),
    (Gfp::__GFP_NORETRY, "__GFP_NORETRY"),
    (Gfp::__GFP_MEMALLOC, "__GFP_MEMALLOC"),
    (Gfp::__GFP_COMP, "__GFP_COMP"),
    (Gfp::__GFP_NOMEMALLOC, "__GFP_NOMEMALLOC"),
    (Gfp::__GFP_HARDWALL, "__GFP_HARDWALL"),
    (Gfp::__GFP_THISNODE, "__GFP_THISNODE"),
    (Gfp::__GFP_ACCOUNT, "__GFP_ACCOUNT"),
    (Gfp::__GFP_MOVABLE, "__GFP_MOVABLE"),
    (Gfp::__GFP_RECLAIMABLE, "__GFP_RECLAIMABLE"),
];

/// `%pGg`: `0xcc0(GFP_KERNEL)`, `0x140cc0(GFP_USER|__GFP_COMP)`, `0x0()`.
impl fmt::Display for Gfp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}(", self.bits())?;
        let mut rest = *self;
        let mut first = true;
        for (mask, name) in GFP_NAMES {
            if !mask.is_empty() && rest.contains(*mask) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest.remove(*mask);
            }
        }
        if !rest.is_empty() {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{:#x}", rest.bits())?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::mmzone::ZoneType;
    use crate::mm::page_alloc::MigrateType;
    extern crate std;
    use std::format;

    #[test]
    fn values_match_linux() {
        assert_eq!(GFP_KERNEL.bits(), 0xcc0);
        assert_eq!(GFP_ATOMIC.bits(), 0x820);
        assert_eq!(GFP_HIGHUSER_MOVABLE.bits(), 0x100cca);
        assert_eq!(format!("{}", GFP_KERNEL), "0xcc0(GFP_KERNEL)");
        assert_eq!(
            format!("{}", GFP_KERNEL | Gfp::__GFP_ZERO | Gfp::__GFP_COMP),
            "0x40dc0(GFP_KERNEL|__GFP_ZERO|__GFP_COMP)"
        );
        assert_eq!(
            format!("{}", GFP_HIGHUSER_MOVABLE),
            "0x100cca(GFP_HIGHUSER_MOVABLE)"
        );
    }

    #[test]
    fn zones() {
        assert_eq!(GFP_KERNEL.zone(), Some(ZoneType::Normal));
        assert_eq!(GFP_DMA.zone(), Some(ZoneType::Dma));
        assert_eq!(
            (GFP_KERNEL | Gfp::__GFP_DMA32).zone(),
            Some(ZoneType::Dma32)
        );
        assert_eq!(GFP_HIGHUSER_MOVABLE.zone(), Some(ZoneType::Movable));
        assert_eq!((Gfp::__GFP_DMA | Gfp::__GFP_DMA32).zone(), None);
        assert_eq!(GFP_HIGHUSER_MOVABLE.migratetype(), MigrateType::Movable);
    }
}
