//! What a CPU needs to enter the kernel from user mode: the GDT (`arch/x86/kernel/cpu/
//! common.c`'s `gdt_page`, Linux's selector layout), the IDT (`arch/x86/kernel/idt.c`:
//! `idt_table`, `idt_setup_traps`), a TSS with the ring-0 stack per CPU (`cpu_tss_rw`,
//! `cpu_entry_area`), the `SYSCALL` target (`syscall_init`: `MSR_LSTAR`, `MSR_STAR`,
//! `MSR_SYSCALL_MASK`) and the entry code itself (`entry_64.S`'s `asm_exc_*` and
//! `entry_SYSCALL_64`).
//!
//! A machine whose user programs run on a real (virtual) CPU — the simulator's `/dev/kvm`
//! platform — needs these in memory. They live where Linux keeps them: the code in the kernel
//! image's text, the IDT in its data, each CPU's GDT, TSS and entry stack in its bss — pages
//! memblock reserved at boot with the image, so building them costs no memory and changes
//! no count. They are mapped at the kernel image's virtual addresses
//! (`__START_KERNEL_map`, kernel text at `0xffffffff81000000`) in the kernel page tables, and
//! every address space gets them because `pgd_alloc` copies the kernel half of `init_mm`'s
//! PGD, as Linux's `pgd_ctor` does.
//!
//! The entry code is the smallest a hypervisor-backed kernel needs, since the kernel itself
//! runs outside the guest: each exception vector's stub pushes a zero error code where the
//! CPU pushes none, then `out`s to the I/O port [`EXCEPTION_PORT_BASE`] + vector — an exit to
//! the host, which handles the exception with the exception frame on the entry stack — and
//! returns with `add rsp, 8; iretq`. The `SYSCALL` stub `out`s to [`SYSCALL_PORT`] and
//! `sysretq`s. A host may rewrite the frame (or the registers) before resuming.

use super::layout::START_KERNEL_MAP;
use super::pgtable::{PgProt, Pte, PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL_ROX};
use crate::addr::{Pfn, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::Kernel;
use alloc::vec::Vec;

/// `__KERNEL_CS` (GDT entry 2).
pub const KERNEL_CS: u16 = 0x10;
/// `__KERNEL_DS` (GDT entry 3).
pub const KERNEL_DS: u16 = 0x18;
/// `__USER32_CS` (GDT entry 4, RPL 3): the base of `MSR_STAR`'s user half.
pub const USER32_CS: u16 = 0x23;
/// `__USER_DS` (GDT entry 5, RPL 3).
pub const USER_DS: u16 = 0x2b;
/// `__USER_CS` (GDT entry 6, RPL 3).
pub const USER_CS: u16 = 0x33;
/// `GDT_ENTRY_TSS * 8` (entry 8, 16 bytes).
pub const TSS_SELECTOR: u16 = 0x40;
/// GDT entries (`GDT_ENTRIES` is 16 in Linux).
pub const GDT_ENTRIES: usize = 16;

/// The I/O port exception vector `v` exits on: `EXCEPTION_PORT_BASE + v`.
pub const EXCEPTION_PORT_BASE: u16 = 0xe0;
/// The I/O port the `SYSCALL` stub exits on.
pub const SYSCALL_PORT: u16 = 0xd0;
/// The I/O port an unexpected interrupt (vectors 32 and up) exits on.
pub const INTERRUPT_PORT: u16 = 0xd1;

/// `X86_TRAP_DE`.
pub const X86_TRAP_DE: u8 = 0;
/// `X86_TRAP_DB`.
pub const X86_TRAP_DB: u8 = 1;
/// `X86_TRAP_BP` (`int3`).
pub const X86_TRAP_BP: u8 = 3;
/// `X86_TRAP_UD`.
pub const X86_TRAP_UD: u8 = 6;
/// `X86_TRAP_NM`.
pub const X86_TRAP_NM: u8 = 7;
/// `X86_TRAP_GP`.
pub const X86_TRAP_GP: u8 = 13;
/// `X86_TRAP_PF`.
pub const X86_TRAP_PF: u8 = 14;
/// `X86_TRAP_MF`.
pub const X86_TRAP_MF: u8 = 16;
/// `X86_TRAP_AC`.
pub const X86_TRAP_AC: u8 = 17;
/// `X86_TRAP_XF` (SIMD floating point).
pub const X86_TRAP_XF: u8 = 19;

/// Vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: [u8; 8] = [8, 10, 11, 12, 13, 14, 17, 21];
/// Bytes of code per exception stub.
const STUB_STRIDE: u64 = 16;
/// Offset of the `SYSCALL` stub in the entry text page.
const SYSCALL_STUB: u64 = 0x400;
/// Offset of the interrupt stub in the entry text page.
const INTERRUPT_STUB: u64 = 0x440;

/// `MSR_STAR`: `SYSRET` loads CS from bits 63:48 + 16 and SS from + 8 (`__USER32_CS`),
/// `SYSCALL` CS from bits 47:32 (`__KERNEL_CS`).
pub const MSR_STAR_VALUE: u64 = ((USER32_CS as u64) << 48) | ((KERNEL_CS as u64) << 32);
/// `MSR_SYSCALL_MASK` as Linux sets it: TF, DF, IF, IOPL, NT, RF, AC, ID cleared on entry.
pub const SYSCALL_MASK: u64 = 0x0004_7700;

/// Where everything is, for the platform that loads it into its CPUs.
#[derive(Clone, Debug)]
pub struct CpuEntryArea {
    /// The IDT's virtual address (`idt_table`) and limit.
    pub idt: (u64, u16),
    /// Per CPU: the GDT's virtual address and limit.
    pub gdt: Vec<(u64, u16)>,
    /// Per CPU: the TSS's virtual address (its limit is 0x67).
    pub tss: Vec<u64>,
    /// Per CPU: the entry stack, as (lowest virtual address, physical address of that page);
    /// the stack's top is one page above.
    pub stack: Vec<(u64, PhysAddr)>,
    /// `MSR_LSTAR`: the `SYSCALL` entry.
    pub lstar: u64,
}

impl CpuEntryArea {
    /// The physical address of virtual address `va` on CPU `cpu`'s entry stack, if it is on
    /// it (where the host reads an exception frame).
    pub fn stack_phys(&self, cpu: usize, va: u64) -> Option<PhysAddr> {
        let (lo, pa) = *self.stack.get(cpu)?;
        let off = va.checked_sub(lo)?;
        (off < PAGE_SIZE).then(|| PhysAddr(pa.0 + off))
    }
}

/// A 64-bit code or data segment descriptor (`GDT_ENTRY_INIT` with flags).
const fn seg(flags: u64) -> u64 {
    (flags << 40) | 0xffff | (0xf << 48)
}

impl Kernel {
    /// The virtual address of physical address `pa` inside the kernel image
    /// (`__START_KERNEL_map` + 16 MiB is `_text`, wherever the image was loaded).
    fn image_va(&self, pa: u64) -> u64 {
        START_KERNEL_MAP
            + crate::arch::x86_64::layout::PHYSICAL_START
            + (pa - self.boot.image.code.0)
    }

    /// Map the image page at `pa` at its kernel-image address in `init_mm`.
    fn map_image_page(&self, cpu: &CpuGuard<'_>, pa: u64, prot: PgProt) -> Result<u64, Errno> {
        let va = self.image_va(pa);
        let pt = self.kernel_page_tables();
        let mut c = self.pte_cursor_alloc(cpu, pt, va, va + PAGE_SIZE)?;
        c.lock();
        let pte = Pte::new(Pfn(pa >> PAGE_SHIFT), prot);
        let cur = c.get();
        if cur != pte {
            c.install(Pte(0), pte).map_err(|_| Errno::EEXIST)?;
        }
        Ok(va)
    }

    /// `trap_init` + `cpu_init` + `syscall_init` for every CPU: write the entry code, the IDT,
    /// and each CPU's GDT, TSS and entry stack into the kernel image's pages, and map them in
    /// the kernel page tables. Call before the first address space that should run on a
    /// real CPU is created (its PGD copies the kernel half). Calling it again rewrites the
    /// same pages. `ENOSPC` when the image's bss is too small for this many CPUs.
    pub fn setup_cpu_entry_area(&self, cpu: &CpuGuard<'_>) -> Result<CpuEntryArea, Errno> {
        let img = self.boot.image;
        let ncpu = self.nr_cpus() as u64;
        // bss: the zero page first, then two pages per CPU (GDT+TSS, entry stack).
        if img.bss.0 + (1 + 2 * ncpu) * PAGE_SIZE > img.bss.1 {
            return Err(Errno::ENOSPC);
        }
        // data: after the vDSO data pages (vvar), the IDT.
        let vvar_pages = super::vdso::VVAR_PAGES + super::vdso::VVAR_VCLOCK_PAGES;
        let idt_pa = img.data.0 + (vvar_pages + 2) * PAGE_SIZE;
        if idt_pa + PAGE_SIZE > img.data.1 {
            return Err(Errno::ENOSPC);
        }
        // The entry code: the first page of the kernel text.
        let text_pa = img.code.0;
        let mut text = [0u8; PAGE_SIZE as usize];
        let text_va = self.image_va(text_pa);
        for v in 0u8..32 {
            let o = (v as u64 * STUB_STRIDE) as usize;
            let mut code: Vec<u8> = Vec::new();
            if !ERROR_CODE_VECTORS.contains(&v) {
                code.extend_from_slice(&[0x6a, 0x00]); // push $0
            }
            code.extend_from_slice(&[0xe6, (EXCEPTION_PORT_BASE + v as u16) as u8]); // out %al, $port
            code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08]); // add $8, %rsp
            code.extend_from_slice(&[0x48, 0xcf]); // iretq
            text[o..o + code.len()].copy_from_slice(&code);
        }
        let sys = SYSCALL_STUB as usize;
        // out %al, $SYSCALL_PORT; sysretq
        text[sys..sys + 5].copy_from_slice(&[0xe6, SYSCALL_PORT as u8, 0x48, 0x0f, 0x07]);
        let irq = INTERRUPT_STUB as usize;
        // out %al, $INTERRUPT_PORT; iretq
        text[irq..irq + 4].copy_from_slice(&[0xe6, INTERRUPT_PORT as u8, 0x48, 0xcf]);
        self.phys_write(PhysAddr(text_pa), &text);
        self.map_image_page(cpu, text_pa, PAGE_KERNEL_ROX)?;

        // The IDT: interrupt gates (type 0xe, DPL 0) into the stubs.
        let mut idt = [0u8; PAGE_SIZE as usize];
        for v in 0..256u64 {
            let target = if v < 32 {
                text_va + v * STUB_STRIDE
            } else {
                text_va + INTERRUPT_STUB
            };
            let lo = (target & 0xffff)
                | ((KERNEL_CS as u64) << 16)
                | (0x8e << 40)
                | (((target >> 16) & 0xffff) << 48);
            let hi = target >> 32;
            let o = (v * 16) as usize;
            idt[o..o + 8].copy_from_slice(&lo.to_le_bytes());
            idt[o + 8..o + 16].copy_from_slice(&hi.to_le_bytes());
        }
        self.phys_write(PhysAddr(idt_pa), &idt);
        let idt_va = self.map_image_page(cpu, idt_pa, PAGE_KERNEL_RO)?;

        let mut area = CpuEntryArea {
            idt: (idt_va, 256 * 16 - 1),
            gdt: Vec::new(),
            tss: Vec::new(),
            stack: Vec::new(),
            lstar: text_va + SYSCALL_STUB,
        };
        for c in 0..ncpu {
            let gdt_pa = img.bss.0 + (1 + 2 * c) * PAGE_SIZE;
            let stack_pa = gdt_pa + PAGE_SIZE;
            let gdt_va = self.image_va(gdt_pa);
            let stack_va = self.image_va(stack_pa);
            // The TSS sits after the GDT in the same page.
            let tss_off = (GDT_ENTRIES * 8) as u64;
            let tss_va = gdt_va + tss_off;
            let mut page = [0u8; PAGE_SIZE as usize];
            let mut gdt = [0u64; GDT_ENTRIES];
            gdt[(KERNEL_CS >> 3) as usize] = seg(0xa09b); // L, P, DPL0, code, accessed
            gdt[(KERNEL_DS >> 3) as usize] = seg(0xc093); // DB, P, DPL0, data, accessed
            gdt[(USER32_CS >> 3) as usize] = seg(0xc0fb); // DB, P, DPL3, code
            gdt[(USER_DS >> 3) as usize] = seg(0xc0f3); // DB, P, DPL3, data
            gdt[(USER_CS >> 3) as usize] = seg(0xa0fb); // L, P, DPL3, code
                                                        // The TSS descriptor: a 16-byte system descriptor, type 9 (available 64-bit TSS).
            let limit = 0x67u64;
            let t = tss_va;
            gdt[(TSS_SELECTOR >> 3) as usize] =
                limit | ((t & 0xff_ffff) << 16) | (0x89 << 40) | (((t >> 24) & 0xff) << 56);
            gdt[(TSS_SELECTOR >> 3) as usize + 1] = t >> 32;
            for (i, d) in gdt.iter().enumerate() {
                page[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
            }
            // struct x86_hw_tss: rsp0 at 4; the I/O bitmap offset past the limit (none).
            let o = tss_off as usize;
            let rsp0 = stack_va + PAGE_SIZE;
            page[o + 4..o + 12].copy_from_slice(&rsp0.to_le_bytes());
            page[o + 0x66..o + 0x68].copy_from_slice(&0x68u16.to_le_bytes());
            self.phys_write(PhysAddr(gdt_pa), &page);
            self.phys_write(PhysAddr(stack_pa), &[0u8; PAGE_SIZE as usize]);
            self.map_image_page(cpu, gdt_pa, PAGE_KERNEL)?;
            self.map_image_page(cpu, stack_pa, PAGE_KERNEL)?;
            area.gdt.push((gdt_va, (GDT_ENTRIES * 8 - 1) as u16));
            area.tss.push(tss_va);
            area.stack.push((stack_va, PhysAddr(stack_pa)));
        }
        Ok(area)
    }
}
