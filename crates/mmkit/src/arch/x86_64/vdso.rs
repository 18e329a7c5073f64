//! The vDSO and its data pages (`arch/x86/entry/vdso/vma.c`: `map_vdso`,
//! `arch_setup_additional_pages`), laid out as Linux 6.18 does: `[vvar]` (4 pages),
//! `[vvar_vclock]` (2 pages) and the 2-page `[vdso]` image above them, in one area from
//! `get_unmapped_area` (so below the interpreter, top-down).
//!
//! The image lives in the kernel's rodata and the data pages in its data section; both are
//! reserved kernel pages that every process maps (special mappings: `VM_PFNMAP` for the data,
//! no refcounting). Their contents are not simulated — no user code runs here — so the
//! mappings carry Linux's addresses, sizes and flags, and faults map the right frames.

use crate::addr::{PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::mm::mm_types::{MmStruct, VmFlags};
use crate::Kernel;

/// Pages of `[vvar]` (the vDSO data page and its time-namespace/arch pages).
pub const VVAR_PAGES: u64 = 4;
/// Pages of `[vvar_vclock]` (the pvclock and Hyper-V clock pages).
pub const VVAR_VCLOCK_PAGES: u64 = 2;
/// Pages of the `[vdso]` image (`vdso_image_64.size`).
pub const VDSO_IMAGE_PAGES: u64 = 2;

/// Flags of the data mappings: `VM_READ|VM_MAYREAD|VM_IO|VM_DONTDUMP|VM_PFNMAP|VM_DONTEXPAND`
/// (smaps: `rd mr pf io de dd`).
const VVAR_FLAGS: VmFlags = VmFlags::VM_READ
    .union(VmFlags::VM_MAYREAD)
    .union(VmFlags::VM_IO)
    .union(VmFlags::VM_DONTDUMP)
    .union(VmFlags::VM_PFNMAP)
    .union(VmFlags::VM_DONTEXPAND);
/// Flags of the image: `VM_READ|VM_EXEC|VM_MAYREAD|VM_MAYWRITE|VM_MAYEXEC|VM_DONTEXPAND`
/// (smaps: `rd ex mr mw me de`).
const VDSO_FLAGS: VmFlags = VmFlags::VM_READ
    .union(VmFlags::VM_EXEC)
    .union(VmFlags::VM_MAYREAD)
    .union(VmFlags::VM_MAYWRITE)
    .union(VmFlags::VM_MAYEXEC)
    .union(VmFlags::VM_DONTEXPAND);

impl Kernel {
    /// `map_vdso`: map the data pages and the image into `mm`; returns the image's address
    /// (`mm->context.vdso`, `AT_SYSINFO_EHDR`).
    pub fn map_vdso(&self, _cpu: &CpuGuard<'_>, mm: &mut MmStruct) -> Result<u64, Errno> {
        let total = (VVAR_PAGES + VVAR_VCLOCK_PAGES + VDSO_IMAGE_PAGES) << PAGE_SHIFT;
        let addr = self.get_unmapped_area(mm, 0, total, 0)?;
        let image = self.boot.image;
        let data_pfn = image.data.0 >> PAGE_SHIFT;
        let text_pfn = image.rodata.0 >> PAGE_SHIFT;
        let parts = [
            (VVAR_PAGES, VVAR_FLAGS, "[vvar]", data_pfn),
            (
                VVAR_VCLOCK_PAGES,
                VVAR_FLAGS,
                "[vvar_vclock]",
                data_pfn + VVAR_PAGES,
            ),
            (VDSO_IMAGE_PAGES, VDSO_FLAGS, "[vdso]", text_pfn),
        ];
        let mut at = addr;
        for (pages, flags, name, pfn) in parts {
            let len = pages * PAGE_SIZE;
            self.install_special_mapping(mm, at, len, flags, name, crate::Pfn(pfn));
            at += len;
        }
        Ok(addr + ((VVAR_PAGES + VVAR_VCLOCK_PAGES) << PAGE_SHIFT))
    }
}
