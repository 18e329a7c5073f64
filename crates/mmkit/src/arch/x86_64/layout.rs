//! The x86-64 4-level virtual memory map (`Documentation/arch/x86/x86_64/mm.rst`,
//! `arch/x86/include/asm/page_64_types.h`, `pgtable_64_types.h`) and the kernel image's
//! physical placement.

/// `PAGE_OFFSET`: start of the direct map of all physical memory.
pub const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// `VMALLOC_START`.
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// `VMALLOC_END` (32 TiB of vmalloc space).
pub const VMALLOC_END: u64 = 0xffff_e8ff_ffff_ffff;
/// `VMEMMAP_START`.
pub const VMEMMAP_START: u64 = 0xffff_ea00_0000_0000;
/// `__START_KERNEL_map`.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// `CONFIG_PHYSICAL_START`: where the kernel image is loaded (16 MiB).
pub const PHYSICAL_START: u64 = 0x100_0000;
/// `CONFIG_PHYSICAL_ALIGN`.
pub const PHYSICAL_ALIGN: u64 = 0x20_0000;

/// Sizes of the kernel image's sections, in bytes. The defaults are those of a Linux 6.x
/// x86-64 distribution kernel (`Memory: … (18478K kernel code, 2544K rwdata, 10280K rodata,
/// 3728K init, 1168K bss …)`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// `.text`.
    pub code: u64,
    /// `.data` and friends.
    pub rwdata: u64,
    /// `.rodata`.
    pub rodata: u64,
    /// `.init.*`.
    pub init: u64,
    /// `.bss`.
    pub bss: u64,
}

impl Default for KernelImage {
    fn default() -> Self {
        Self {
            code: 18478 << 10,
            rwdata: 2544 << 10,
            rodata: 10280 << 10,
            init: 3728 << 10,
            bss: 1168 << 10,
        }
    }
}

/// Where each section landed: `[start, end)` physical.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct ImagePlacement {
    /// Kernel code.
    pub code: (u64, u64),
    /// Kernel rodata.
    pub rodata: (u64, u64),
    /// Kernel data (rwdata and init).
    pub data: (u64, u64),
    /// Kernel bss.
    pub bss: (u64, u64),
}

impl ImagePlacement {
    /// `_text`..`_end`.
    pub fn whole(&self) -> (u64, u64) {
        (self.code.0, self.bss.1)
    }
}

impl KernelImage {
    /// Lay the image out from `base` as vmlinux's linker script does: code, rodata on the
    /// next 2 MiB boundary, data (+init) on the next, bss page-aligned after it.
    pub fn place(&self, base: u64) -> ImagePlacement {
        use crate::addr::align_up;
        let code = (base, base + self.code);
        let ro = align_up(code.1, PHYSICAL_ALIGN);
        let rodata = (ro, ro + self.rodata);
        let d = align_up(rodata.1, PHYSICAL_ALIGN);
        let data = (d, d + self.rwdata + self.init);
        let b = align_up(data.1, crate::addr::PAGE_SIZE);
        let bss = (b, align_up(b + self.bss, crate::addr::PAGE_SIZE));
        ImagePlacement {
            code,
            rodata,
            data,
            bss,
        }
    }
}
