//! The ELF loader (`fs/binfmt_elf.c`, and `fs/compat_binfmt_elf.c` which builds the same
//! code for ia32 programs): `load_elf_binary`, `load_elf_phdrs`, `load_elf_interp`,
//! `elf_load` (`elf_map` + `padzero` + the anonymous bss pages), `total_mapping_size`,
//! `maximum_alignment`, `create_elf_tables` (argc, argv, envp and the auxiliary vector on
//! the new stack).
//!
//! Everything read from the file is untrusted, and is handled as Linux handles it: the
//! header comes from the first bytes exec already read; the program headers are read only
//! when their table is at most 64 KiB (`load_elf_phdrs`), from `e_phoff`, and nothing else is
//! sized by the header; `PT_INTERP` is at most `PATH_MAX` bytes, must end in a NUL and is
//! used up to its first NUL; address arithmetic on header fields wraps as C's `unsigned long`
//! does and every result is checked before use (`BAD_ADDR`, `TASK_SIZE`). What Linux does not
//! check is not checked either (`e_ident`'s class, data and version bytes, `e_version`).
//!
//! Before the point of no return (`begin_new_exec`) a bad file is `ENOEXEC`, a bad
//! interpreter `ELIBBAD`, a short read `EIO`; after it, a mapping that cannot be made is an
//! error that kills the task in Linux ([`crate::fs::exec::ExecError::fatal`]).
//!
//! Layout, as Linux x86-64 lays it out: an `ET_EXEC` binary at its addresses; a PIE with an
//! interpreter at `ELF_ET_DYN_BASE` (plus `arch_mmap_rnd` when randomizing, aligned to its
//! largest `p_align`); a static PIE or a loader run directly wherever `get_unmapped_area`
//! puts it — 2 MiB-aligned by the file system's `thp_get_unmapped_area` when it is that
//! large, or at its own larger alignment; the interpreter top-down below `mmap_base`; then
//! the vDSO. A 32-bit program gets the compat layout: `TASK_SIZE` of 4 GiB less a page, the
//! mmap base below it, `ELF_ET_DYN_BASE` at 4 MiB, a 32-bit stack and auxiliary vector
//! (`AT_SYSINFO`), no `[vsyscall]`, and `READ_IMPLIES_EXEC` when it has no `PT_GNU_STACK`.

use crate::addr::{PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::exec::{Binprm, InterpOpener, StartState, PATH_MAX};
use crate::fs::inode::File;
use crate::mm::mm_types::{MmStruct, VmFlags, TASK_SIZE};
use crate::mm::mmap::{
    MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE,
};
use crate::Kernel;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use object::elf::{
    FileHeader32, FileHeader64, ProgramHeader32, ProgramHeader64, EM_386, EM_X86_64, ET_DYN,
    ET_EXEC, PF_R, PF_W, PF_X, PT_GNU_STACK, PT_INTERP, PT_LOAD,
};
use object::LittleEndian as LE;

/// `ELF_ET_DYN_BASE` for 64-bit tasks: 2/3 of `DEFAULT_MAP_WINDOW`.
pub const ELF_ET_DYN_BASE: u64 = TASK_SIZE / 3 * 2;
/// `ELF_ET_DYN_BASE` for 32-bit tasks (`mmap_is_ia32()`).
pub const ELF_ET_DYN_BASE_32: u64 = 0x0040_0000;
/// `IA32_PAGE_OFFSET`: `TASK_SIZE` (and `STACK_TOP`) of a 32-bit task.
pub const IA32_PAGE_OFFSET: u64 = 0xffff_e000;
/// The `ELF_PLATFORM` string (`AT_PLATFORM`).
pub const ELF_PLATFORM: &[u8] = b"x86_64";
/// `COMPAT_ELF_PLATFORM`.
pub const COMPAT_ELF_PLATFORM: &[u8] = b"i686";
/// `__kernel_vsyscall`'s offset in the 32-bit vDSO image (`AT_SYSINFO` = image + this), as
/// Linux 6.18's `vdso_image_32` has it.
pub const VDSO32_SYSINFO_OFFSET: u64 = 0x5e0;
/// `EM_486` (Linux's `elf_check_arch_ia32` accepts it beside `EM_386`).
const EM_486: u16 = 6;
/// `ELF_MIN_ALIGN`.
const ELF_MIN_ALIGN: u64 = PAGE_SIZE;

/// `AT_*` auxiliary vector keys (`include/uapi/linux/auxvec.h`).
pub mod at {
    #![allow(missing_docs)]
    pub const AT_NULL: u64 = 0;
    pub const AT_PHDR: u64 = 3;
    pub const AT_PHENT: u64 = 4;
    pub const AT_PHNUM: u64 = 5;
    pub const AT_PAGESZ: u64 = 6;
    pub const AT_BASE: u64 = 7;
    pub const AT_FLAGS: u64 = 8;
    pub const AT_ENTRY: u64 = 9;
    pub const AT_UID: u64 = 11;
    pub const AT_EUID: u64 = 12;
    pub const AT_GID: u64 = 13;
    pub const AT_EGID: u64 = 14;
    pub const AT_PLATFORM: u64 = 15;
    pub const AT_HWCAP: u64 = 16;
    pub const AT_CLKTCK: u64 = 17;
    pub const AT_SECURE: u64 = 23;
    pub const AT_RANDOM: u64 = 25;
    pub const AT_HWCAP2: u64 = 26;
    pub const AT_RSEQ_FEATURE_SIZE: u64 = 27;
    pub const AT_RSEQ_ALIGN: u64 = 28;
    pub const AT_EXECFN: u64 = 31;
    pub const AT_SYSINFO: u64 = 32;
    pub const AT_SYSINFO_EHDR: u64 = 33;
    pub const AT_MINSIGSTKSZ: u64 = 51;
}

/// The binary formats exec tries, in Linux's registration order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum BinFmt {
    /// `binfmt_script`.
    Script,
    /// `binfmt_elf` / `compat_binfmt_elf`.
    Elf(ElfClass),
}

/// Which ELF loader: the native 64-bit one or the ia32 compat one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum ElfClass {
    /// `binfmt_elf`: `Elf64_Ehdr`, `EM_X86_64`.
    Elf64,
    /// `compat_binfmt_elf`: `Elf32_Ehdr`, `EM_386`/`EM_486`.
    Ia32,
}

/// An ELF header's fields, widened.
#[derive(Copy, Clone, Debug)]
struct Ehdr {
    e_type: u16,
    e_machine: u16,
    e_entry: u64,
    e_phoff: u64,
    e_phentsize: u16,
    e_phnum: u16,
}

/// One program header, widened.
#[derive(Copy, Clone, Debug)]
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_filesz: u64,
    p_memsz: u64,
    p_align: u64,
}

impl ElfClass {
    /// `sizeof(struct elfhdr)`.
    fn ehdr_size(self) -> usize {
        match self {
            ElfClass::Elf64 => 64,
            ElfClass::Ia32 => 52,
        }
    }

    /// `sizeof(struct elf_phdr)`.
    fn phdr_size(self) -> usize {
        match self {
            ElfClass::Elf64 => 56,
            ElfClass::Ia32 => 32,
        }
    }

    /// `sizeof(elf_addr_t)`: the stack word.
    fn word(self) -> u64 {
        match self {
            ElfClass::Elf64 => 8,
            ElfClass::Ia32 => 4,
        }
    }

    /// `elf_check_arch`.
    fn check_arch(self, e_machine: u16) -> bool {
        match self {
            ElfClass::Elf64 => e_machine == EM_X86_64,
            ElfClass::Ia32 => e_machine == EM_386 || e_machine == EM_486,
        }
    }

    /// `TASK_SIZE` after `SET_PERSONALITY`.
    fn task_size(self) -> u64 {
        match self {
            ElfClass::Elf64 => TASK_SIZE,
            ElfClass::Ia32 => IA32_PAGE_OFFSET,
        }
    }

    /// `STACK_RND_MASK`.
    fn stack_rnd_mask(self) -> u64 {
        match self {
            ElfClass::Elf64 => crate::fs::exec::STACK_RND_MASK,
            ElfClass::Ia32 => crate::fs::exec::STACK_RND_MASK_32,
        }
    }

    /// `ELF_ET_DYN_BASE`.
    fn et_dyn_base(self) -> u64 {
        match self {
            ElfClass::Elf64 => ELF_ET_DYN_BASE,
            ElfClass::Ia32 => ELF_ET_DYN_BASE_32,
        }
    }

    /// The header, read from `buf` (at least `ehdr_size` bytes, zero-padded by the caller)
    /// as the loader's `struct elfhdr`: no field is validated here.
    fn ehdr(self, buf: &[u8]) -> Ehdr {
        match self {
            ElfClass::Elf64 => {
                let (h, _) = object::pod::from_bytes::<FileHeader64<LE>>(&buf[..64])
                    .expect("64 bytes hold an Elf64_Ehdr");
                Ehdr {
                    e_type: h.e_type.get(LE),
                    e_machine: h.e_machine.get(LE),
                    e_entry: h.e_entry.get(LE),
                    e_phoff: h.e_phoff.get(LE),
                    e_phentsize: h.e_phentsize.get(LE),
                    e_phnum: h.e_phnum.get(LE),
                }
            }
            ElfClass::Ia32 => {
                let (h, _) = object::pod::from_bytes::<FileHeader32<LE>>(&buf[..52])
                    .expect("52 bytes hold an Elf32_Ehdr");
                Ehdr {
                    e_type: h.e_type.get(LE),
                    e_machine: h.e_machine.get(LE),
                    e_entry: u64::from(h.e_entry.get(LE)),
                    e_phoff: u64::from(h.e_phoff.get(LE)),
                    e_phentsize: h.e_phentsize.get(LE),
                    e_phnum: h.e_phnum.get(LE),
                }
            }
        }
    }

    /// Decode a program header table read from the file.
    fn phdrs(self, data: &[u8]) -> Vec<Phdr> {
        data.chunks_exact(self.phdr_size())
            .map(|c| match self {
                ElfClass::Elf64 => {
                    let (p, _) = object::pod::from_bytes::<ProgramHeader64<LE>>(c)
                        .expect("56 bytes hold an Elf64_Phdr");
                    Phdr {
                        p_type: p.p_type.get(LE),
                        p_flags: p.p_flags.get(LE),
                        p_offset: p.p_offset.get(LE),
                        p_vaddr: p.p_vaddr.get(LE),
                        p_filesz: p.p_filesz.get(LE),
                        p_memsz: p.p_memsz.get(LE),
                        p_align: p.p_align.get(LE),
                    }
                }
                ElfClass::Ia32 => {
                    let (p, _) = object::pod::from_bytes::<ProgramHeader32<LE>>(c)
                        .expect("32 bytes hold an Elf32_Phdr");
                    Phdr {
                        p_type: p.p_type.get(LE),
                        p_flags: p.p_flags.get(LE),
                        p_offset: u64::from(p.p_offset.get(LE)),
                        p_vaddr: u64::from(p.p_vaddr.get(LE)),
                        p_filesz: u64::from(p.p_filesz.get(LE)),
                        p_memsz: u64::from(p.p_memsz.get(LE)),
                        p_align: u64::from(p.p_align.get(LE)),
                    }
                }
            })
            .collect()
    }
}

/// `ELF_PAGESTART`.
fn pagestart(v: u64) -> u64 {
    v & !(ELF_MIN_ALIGN - 1)
}

/// `ELF_PAGEOFFSET`.
fn pageoffset(v: u64) -> u64 {
    v & (ELF_MIN_ALIGN - 1)
}

/// `ELF_PAGEALIGN`, wrapping as C's `unsigned long` does.
fn pagealign(v: u64) -> u64 {
    v.wrapping_add(ELF_MIN_ALIGN - 1) & !(ELF_MIN_ALIGN - 1)
}

/// `total_mapping_size`: from the first PT_LOAD's page to the end of the last (wrapping).
fn total_mapping_size(phdrs: &[Phdr]) -> u64 {
    let mut loads = phdrs.iter().filter(|p| p.p_type == PT_LOAD);
    let Some(first) = loads.next() else {
        return 0;
    };
    let last = loads.next_back().unwrap_or(first);
    last.p_vaddr
        .wrapping_add(last.p_memsz)
        .wrapping_sub(pagestart(first.p_vaddr))
}

/// `maximum_alignment`: the largest power-of-two `p_align` of the PT_LOADs, page-aligned.
fn maximum_alignment(phdrs: &[Phdr]) -> u64 {
    let a = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_align.is_power_of_two())
        .map(|p| p.p_align)
        .max()
        .unwrap_or(0);
    pagealign(a)
}

/// `make_prot`: PF_* to PROT_*.
fn make_prot(p_flags: u32) -> u32 {
    let mut prot = 0;
    if p_flags & PF_R != 0 {
        prot |= PROT_READ;
    }
    if p_flags & PF_W != 0 {
        prot |= PROT_WRITE;
    }
    if p_flags & PF_X != 0 {
        prot |= PROT_EXEC;
    }
    prot
}

/// What `load_elf_binary` knows about the interpreter before the point of no return.
struct Interp {
    file: Arc<File>,
    ehdr: Ehdr,
    phdrs: Vec<Phdr>,
}

impl Kernel {
    /// `elf_read`: exactly `buf.len()` bytes at `pos`, or `EIO`.
    fn elf_read(
        &self,
        cpu: &CpuGuard<'_>,
        file: &File,
        buf: &mut [u8],
        pos: u64,
    ) -> Result<(), Errno> {
        match self.filemap_read(cpu, &file.inode, pos, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            _ => Err(Errno::EIO),
        }
    }

    /// `load_elf_phdrs`: the program header table, when its entries are the class's size
    /// and it holds 1 to 64 KiB; read from `e_phoff` in full. `None` otherwise.
    fn load_elf_phdrs(
        &self,
        cpu: &CpuGuard<'_>,
        file: &File,
        h: &Ehdr,
        class: ElfClass,
    ) -> Option<Vec<Phdr>> {
        if usize::from(h.e_phentsize) != class.phdr_size() {
            return None;
        }
        let size = class.phdr_size() * usize::from(h.e_phnum);
        if size == 0 || size > 65536 {
            return None;
        }
        let mut data = vec![0u8; size];
        self.elf_read(cpu, file, &mut data, h.e_phoff).ok()?;
        Some(class.phdrs(&data))
    }

    /// `vm_mmap`'s checks in front of `do_mmap`: an offset that would wrap or is not
    /// page-aligned is `EINVAL`.
    #[allow(clippy::too_many_arguments)] // vm_mmap's own arguments plus the CPU and the mm
    fn vm_mmap(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        file: &Arc<File>,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        off: u64,
    ) -> Result<u64, Errno> {
        if off.wrapping_add(pagealign(len)) < off || off & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        self.do_mmap(cpu, mm, Some(file), addr, len, prot, flags, off)
    }

    /// `elf_map`: map a segment's file part (the first segment of an image reserves the
    /// whole `total_size` and gives back the rest, so the image's place is chosen at once).
    #[allow(clippy::too_many_arguments)] // elf_map's own arguments plus the CPU and the mm
    fn elf_map(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        file: &Arc<File>,
        addr: u64,
        p: &Phdr,
        prot: u32,
        flags: u32,
        total_size: u64,
    ) -> Result<u64, Errno> {
        let size = pagealign(p.p_filesz.wrapping_add(pageoffset(p.p_vaddr)));
        let off = p.p_offset.wrapping_sub(pageoffset(p.p_vaddr));
        let addr = pagestart(addr);
        if size == 0 {
            return Ok(addr);
        }
        if total_size != 0 {
            let total = pagealign(total_size);
            let a = self.vm_mmap(cpu, mm, file, addr, total, prot, flags, off)?;
            if a < mm.task_size {
                // Nothing to give back (or a bogus size) is vm_munmap's EINVAL, ignored.
                let _ = self.munmap(cpu, mm, a.wrapping_add(size), total.wrapping_sub(size));
            }
            Ok(a)
        } else {
            self.vm_mmap(cpu, mm, file, addr, size, prot, flags, off)
        }
    }

    /// `padzero`: the rest of the page after the file part reads as zeroes.
    fn padzero(&self, cpu: &CpuGuard<'_>, mm: &mut MmStruct, addr: u64) -> Result<(), Errno> {
        let n = pageoffset(addr);
        if n != 0 {
            self.clear_user(cpu, mm, addr, ELF_MIN_ALIGN - n)
                .map_err(|_| Errno::EFAULT)?;
        }
        Ok(())
    }

    /// `elf_load`: map one PT_LOAD at `addr` (its address plus the load bias): the file part
    /// with `elf_map`, the tail of its last page zeroed (`padzero`, an error only for a
    /// writable segment), and whole pages past the file part as anonymous memory
    /// (`vm_brk_flags`). Returns the mapping's address.
    #[allow(clippy::too_many_arguments)] // elf_load's own arguments plus the CPU and the mm
    fn elf_load(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        file: &Arc<File>,
        addr: u64,
        p: &Phdr,
        prot: u32,
        flags: u32,
        total_size: u64,
    ) -> Result<u64, Errno> {
        let (map_addr, zero_start, zero_end);
        if p.p_filesz != 0 {
            map_addr = self.elf_map(cpu, mm, file, addr, p, prot, flags, total_size)?;
            if map_addr >= mm.task_size {
                return Ok(map_addr);
            }
            let base = map_addr.wrapping_add(pageoffset(p.p_vaddr));
            zero_start = base.wrapping_add(p.p_filesz);
            zero_end = base.wrapping_add(p.p_memsz);
            if p.p_memsz > p.p_filesz
                && self.padzero(cpu, mm, zero_start).is_err()
                && prot & PROT_WRITE != 0
            {
                return Err(Errno::EFAULT);
            }
        } else {
            map_addr = pagestart(addr);
            zero_start = map_addr;
            zero_end = zero_start
                .wrapping_add(pageoffset(p.p_vaddr))
                .wrapping_add(p.p_memsz);
        }
        if p.p_memsz > p.p_filesz {
            let (zs, ze) = (pagealign(zero_start), pagealign(zero_end));
            self.vm_brk_flags(cpu, mm, zs, ze.wrapping_sub(zs), prot & PROT_EXEC != 0)?;
        }
        Ok(map_addr)
    }

    /// `vm_brk_flags`: anonymous data pages at `[addr, addr + len)` (bss), replacing what
    /// was there; executable when asked or under `READ_IMPLIES_EXEC`. `ENOMEM` when the
    /// range leaves the address space (`check_brk_limits`), `EINVAL` when unaligned.
    pub(crate) fn vm_brk_flags(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        request: u64,
        exec: bool,
    ) -> Result<(), Errno> {
        let Some(len) = request.checked_next_multiple_of(PAGE_SIZE) else {
            return Err(Errno::ENOMEM);
        };
        if len == 0 {
            return Ok(());
        }
        // check_brk_limits: get_unmapped_area(NULL, addr, len, 0, MAP_FIXED).
        if len > mm.task_size || addr > mm.task_size - len {
            return Err(Errno::ENOMEM);
        }
        if addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if addr < crate::mm::mm_types::MMAP_MIN_ADDR {
            return Err(Errno::EPERM);
        }
        let mut flags = VmFlags::VM_READ
            | VmFlags::VM_WRITE
            | VmFlags::VM_MAYREAD
            | VmFlags::VM_MAYWRITE
            | VmFlags::VM_MAYEXEC
            | VmFlags::VM_ACCOUNT;
        if exec || mm.read_implies_exec {
            flags |= VmFlags::VM_EXEC;
        }
        self.munmap(cpu, mm, addr, len)?;
        if mm.map_count() >= mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        self.mmap_region(mm, addr, len, flags, addr >> PAGE_SHIFT, None, None);
        Ok(())
    }

    /// `load_elf_interp`: map the interpreter (its first segment wherever
    /// `get_unmapped_area` puts the whole image — below `mmap_base`, top-down — the rest
    /// fixed after it). Returns its load address (`AT_BASE`).
    fn load_elf_interp(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        interp: &Interp,
        no_base: u64,
    ) -> Result<u64, Errno> {
        let h = &interp.ehdr;
        // Linux returns ~0UL here, which its caller reads as -EPERM.
        if h.e_type != ET_EXEC && h.e_type != ET_DYN {
            return Err(Errno::EPERM);
        }
        let mut total_size = total_mapping_size(&interp.phdrs);
        if total_size == 0 {
            return Err(Errno::EINVAL);
        }
        let task_size = mm.task_size;
        let (mut load_addr, mut load_addr_set) = (0u64, false);
        for p in interp.phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            let mut flags = MAP_PRIVATE;
            let prot = make_prot(p.p_flags);
            let vaddr = p.p_vaddr;
            if h.e_type == ET_EXEC || load_addr_set {
                flags |= MAP_FIXED;
            } else if no_base != 0 && h.e_type == ET_DYN {
                load_addr = vaddr.wrapping_neg();
            }
            let map_addr = self.elf_load(
                cpu,
                mm,
                &interp.file,
                load_addr.wrapping_add(vaddr),
                p,
                prot,
                flags,
                total_size,
            )?;
            total_size = 0;
            if map_addr >= task_size {
                return Err(Errno::EINVAL);
            }
            if !load_addr_set && h.e_type == ET_DYN {
                load_addr = map_addr.wrapping_sub(pagestart(vaddr));
                load_addr_set = true;
            }
            let k = load_addr.wrapping_add(p.p_vaddr);
            if k >= task_size
                || p.p_filesz > p.p_memsz
                || p.p_memsz > task_size
                || task_size - p.p_memsz < k
            {
                return Err(Errno::ENOMEM);
            }
        }
        Ok(load_addr)
    }

    /// `load_elf_binary` for `class` (`binfmt_elf`, or `compat_binfmt_elf` for ia32): check
    /// the header in `bprm.buf`, read the program headers, open and check the interpreter,
    /// cross the point of no return, set the personality and layout, place the stack, map
    /// the segments and the interpreter, set `brk`, map the vDSO, and write argc, argv,
    /// envp and the auxiliary vector (`create_elf_tables`).
    pub(crate) fn load_elf_binary(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        open_exec: &mut InterpOpener<'_>,
        class: ElfClass,
    ) -> Result<StartState, Errno> {
        let file = bprm.file.clone();
        let elf_ex = class.ehdr(&bprm.buf);
        if bprm.buf[..4] != *b"\x7fELF"
            || (elf_ex.e_type != ET_EXEC && elf_ex.e_type != ET_DYN)
            || !class.check_arch(elf_ex.e_machine)
        {
            return Err(Errno::ENOEXEC);
        }
        let phdrs = self
            .load_elf_phdrs(cpu, &file, &elf_ex, class)
            .ok_or(Errno::ENOEXEC)?;

        // The first PT_INTERP: its path, the interpreter opened, its header read.
        let mut interp_file = None;
        if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
            if p.p_filesz > PATH_MAX || p.p_filesz < 2 {
                return Err(Errno::ENOEXEC);
            }
            let mut path = vec![0u8; p.p_filesz as usize];
            self.elf_read(cpu, &file, &mut path, p.p_offset)?;
            if path.last() != Some(&0) {
                return Err(Errno::ENOEXEC);
            }
            let name = &path[..path.iter().position(|&c| c == 0).unwrap_or(path.len())];
            let f = open_exec(name)?;
            let mut head = [0u8; 64];
            self.elf_read(cpu, &f, &mut head[..class.ehdr_size()], 0)?;
            interp_file = Some((f, head));
        }
        // PT_GNU_STACK: Some(executable) when present (the last one counts).
        let executable_stack = phdrs
            .iter()
            .rev()
            .find(|p| p.p_type == PT_GNU_STACK)
            .map(|p| p.p_flags & PF_X != 0);
        // Some simple consistency checks for the interpreter.
        let interp = match interp_file {
            Some((f, head)) => {
                if head[..4] != *b"\x7fELF" {
                    return Err(Errno::ELIBBAD);
                }
                let ehdr = class.ehdr(&head);
                if !class.check_arch(ehdr.e_machine) {
                    return Err(Errno::ELIBBAD);
                }
                let phdrs = self
                    .load_elf_phdrs(cpu, &f, &ehdr, class)
                    .ok_or(Errno::ELIBBAD)?;
                Some(Interp {
                    file: f,
                    ehdr,
                    phdrs,
                })
            }
            None => None,
        };

        // The point of no return.
        let randomize = self.begin_new_exec(bprm);
        // SET_PERSONALITY2, elf_read_implies_exec, setup_new_exec (arch_pick_mmap_layout).
        let compat = class == ElfClass::Ia32;
        let task_size = class.task_size();
        {
            let mm = &mut bprm.mm;
            mm.compat = compat;
            mm.task_size = task_size;
            mm.read_implies_exec = compat && executable_stack.is_none();
            let (rnd, pad) = if randomize {
                (
                    self.arch_mmap_rnd(compat),
                    class.stack_rnd_mask() << PAGE_SHIFT,
                )
            } else {
                (0, 0)
            };
            mm.mmap_base = MmStruct::mmap_base(rnd, task_size, mm.rlimit_stack, pad);
        }
        self.setup_arg_pages(
            cpu,
            bprm,
            task_size,
            class.stack_rnd_mask(),
            randomize,
            executable_stack,
        )?;

        // The executable's segments.
        let mm = &mut bprm.mm;
        let mut load_bias = 0u64;
        let mut first = true;
        let (mut start_code, mut end_code, mut start_data, mut end_data) =
            (u64::MAX, 0u64, 0u64, 0u64);
        let mut elf_brk = 0u64;
        let mut phdr_addr = 0u64;
        for p in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            let prot = make_prot(p.p_flags);
            let mut flags = MAP_PRIVATE;
            let vaddr = p.p_vaddr;
            let mut total_size = 0;
            if !first {
                flags |= MAP_FIXED;
            } else if elf_ex.e_type == ET_EXEC {
                flags |= MAP_FIXED_NOREPLACE;
            } else {
                total_size = total_mapping_size(&phdrs);
                if total_size == 0 {
                    return Err(Errno::EINVAL);
                }
                let alignment = maximum_alignment(&phdrs);
                if interp.is_some() {
                    load_bias = class.et_dyn_base();
                    if randomize {
                        load_bias = load_bias.wrapping_add(self.arch_mmap_rnd(compat));
                    }
                    if alignment != 0 {
                        load_bias &= !(alignment - 1);
                    }
                    flags |= MAP_FIXED_NOREPLACE;
                } else if alignment > ELF_MIN_ALIGN {
                    // A loader with a large alignment: see where the image would go, then
                    // put it there aligned.
                    let a = self.elf_load(cpu, mm, &file, 0, p, prot, flags, total_size)?;
                    if a >= mm.task_size {
                        return Err(Errno::EINVAL);
                    }
                    let _ = self.munmap(cpu, mm, a, total_size);
                    load_bias = a & !(alignment - 1);
                    flags |= MAP_FIXED_NOREPLACE;
                } else {
                    load_bias = 0;
                }
                load_bias = pagestart(load_bias.wrapping_sub(vaddr));
            }
            let a = self.elf_load(
                cpu,
                mm,
                &file,
                load_bias.wrapping_add(vaddr),
                p,
                prot,
                flags,
                total_size,
            )?;
            if a >= mm.task_size {
                return Err(Errno::EINVAL);
            }
            if first {
                first = false;
                if elf_ex.e_type == ET_DYN {
                    load_bias = load_bias
                        .wrapping_add(a.wrapping_sub(pagestart(load_bias.wrapping_add(vaddr))));
                }
            }
            if p.p_offset <= elf_ex.e_phoff && elf_ex.e_phoff < p.p_offset.wrapping_add(p.p_filesz)
            {
                phdr_addr = elf_ex
                    .e_phoff
                    .wrapping_sub(p.p_offset)
                    .wrapping_add(p.p_vaddr);
            }
            let k = p.p_vaddr;
            if p.p_flags & PF_X != 0 && k < start_code {
                start_code = k;
            }
            if start_data < k {
                start_data = k;
            }
            if k >= task_size
                || p.p_filesz > p.p_memsz
                || p.p_memsz > task_size
                || task_size - p.p_memsz < k
            {
                return Err(Errno::EINVAL);
            }
            let k = p.p_vaddr + p.p_filesz;
            if p.p_flags & PF_X != 0 && end_code < k {
                end_code = k;
            }
            if end_data < k {
                end_data = k;
            }
            elf_brk = elf_brk.max(p.p_vaddr + p.p_memsz);
        }
        let e_entry = elf_ex.e_entry.wrapping_add(load_bias);
        phdr_addr = phdr_addr.wrapping_add(load_bias);
        elf_brk = elf_brk.wrapping_add(load_bias);
        mm.start_code = start_code.wrapping_add(load_bias);
        mm.end_code = end_code.wrapping_add(load_bias);
        mm.start_data = start_data.wrapping_add(load_bias);
        mm.end_data = end_data.wrapping_add(load_bias);
        mm.start_brk = pagealign(elf_brk);
        mm.brk = mm.start_brk;

        // The interpreter.
        let (entry, interp_base) = match &interp {
            Some(i) => {
                let base = self.load_elf_interp(cpu, mm, i, load_bias)?;
                let entry = base.wrapping_add(i.ehdr.e_entry);
                if entry >= task_size {
                    return Err(Errno::EINVAL);
                }
                (entry, base)
            }
            None => {
                if e_entry >= task_size {
                    return Err(Errno::EINVAL);
                }
                (e_entry, 0)
            }
        };

        let vdso = self.map_vdso(cpu, mm)?;
        let (sp, auxv) = self.create_elf_tables(
            cpu,
            bprm,
            class,
            &elf_ex,
            randomize,
            ElfTables {
                interp_load_addr: interp_base,
                e_entry,
                phdr_addr,
                vdso,
            },
        )?;
        let mm = &mut bprm.mm;
        mm.start_stack = sp;

        // brk: away from a loader run directly, a page above the image otherwise, then
        // randomized (arch_randomize_brk: 32 MiB for 32-bit tasks, 1 GiB for 64-bit).
        if randomize {
            let b = if elf_ex.e_type == ET_DYN && interp.is_none() {
                class.et_dyn_base()
            } else {
                mm.brk + PAGE_SIZE
            };
            let range = if compat { 32 << 20 } else { 1 << 30 };
            let b = self.randomize_page(b, range);
            mm.start_brk = b;
            mm.brk = b;
        }
        Ok(StartState { entry, sp, auxv })
    }

    /// `randomize_page(start, range)`: a random page-aligned address in `[start, start +
    /// range)`.
    fn randomize_page(&self, mut start: u64, mut range: u64) -> u64 {
        if start & (PAGE_SIZE - 1) != 0 {
            let aligned = pagealign(start);
            range = range.saturating_sub(aligned.wrapping_sub(start));
            start = aligned;
        }
        if start > u64::MAX - range {
            range = u64::MAX - start;
        }
        range >>= PAGE_SHIFT;
        if range == 0 {
            return start;
        }
        start + ((self.platform().get_random_u64() % range) << PAGE_SHIFT)
    }

    /// `create_elf_tables`: below the strings, the platform string and 16 random bytes;
    /// then (16-byte aligned) argc, the argv pointers, NULL, the envp pointers, NULL and the
    /// auxiliary vector ending in `AT_NULL`, in words of the program's class. Sets
    /// `arg_end`/`env_start`/`env_end`. Returns the stack pointer and the auxv as written.
    fn create_elf_tables(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        class: ElfClass,
        elf_ex: &Ehdr,
        randomize: bool,
        t: ElfTables,
    ) -> Result<(u64, Vec<(u64, u64)>), Errno> {
        let w = class.word();
        // arch_align_stack.
        let mut p = bprm.p;
        if randomize {
            p -= u64::from(self.platform().get_random_u64() as u32 % 8192);
        }
        p &= !0xf;
        let platform = match class {
            ElfClass::Elf64 => ELF_PLATFORM,
            ElfClass::Ia32 => COMPAT_ELF_PLATFORM,
        };
        let mm = &mut bprm.mm;
        p -= platform.len() as u64 + 1;
        let u_platform = p;
        let mut plat = platform.to_vec();
        plat.push(0);
        self.copy_to_user(cpu, mm, u_platform, &plat)?;
        p -= 16;
        let u_rand = p;
        let rnd = [
            self.platform().get_random_u64().to_le_bytes(),
            self.platform().get_random_u64().to_le_bytes(),
        ]
        .concat();
        self.copy_to_user(cpu, mm, u_rand, &rnd)?;

        let cpuf = self.platform().cpu_features();
        let mut auxv: Vec<(u64, u64)> = Vec::with_capacity(24);
        // ARCH_DLINFO / ARCH_DLINFO_IA32.
        if class == ElfClass::Ia32 {
            auxv.push((at::AT_SYSINFO, t.vdso + VDSO32_SYSINFO_OFFSET));
        }
        auxv.extend_from_slice(&[
            (at::AT_SYSINFO_EHDR, t.vdso),
            (at::AT_MINSIGSTKSZ, cpuf.sigframe_size()),
            (at::AT_HWCAP, cpuf.elf_hwcap()),
            (at::AT_PAGESZ, PAGE_SIZE),
            (at::AT_CLKTCK, 100),
            (at::AT_PHDR, t.phdr_addr),
            (at::AT_PHENT, class.phdr_size() as u64),
            (at::AT_PHNUM, u64::from(elf_ex.e_phnum)),
            (at::AT_BASE, t.interp_load_addr),
            (at::AT_FLAGS, 0),
            (at::AT_ENTRY, t.e_entry),
            (at::AT_UID, 0),
            (at::AT_EUID, 0),
            (at::AT_GID, 0),
            (at::AT_EGID, 0),
            (at::AT_SECURE, 0),
            (at::AT_RANDOM, u_rand),
            (at::AT_HWCAP2, cpuf.elf_hwcap2()),
            (at::AT_EXECFN, bprm.exec),
            (at::AT_PLATFORM, u_platform),
            (at::AT_RSEQ_FEATURE_SIZE, 28),
            (at::AT_RSEQ_ALIGN, 32),
        ]);
        let ei_words = (auxv.len() as u64 + 1) * 2;
        let (argc, envc) = (bprm.argc as u64, bprm.envc as u64);
        let items = (argc + 1) + (envc + 1) + 1;
        let sp = (p - ei_words * w - items * w) & !0xf; // STACK_ROUND
                                                        // The strings sit from bprm.p up: argv first, then envp (the reverse of the order
                                                        // they were copied in).
        let mut words: Vec<u64> = Vec::with_capacity((items + ei_words) as usize);
        words.push(argc);
        let mut s = bprm.p;
        let mut strings = bprm.strings.iter().rev();
        for _ in 0..argc {
            words.push(s);
            s += strings.next().map_or(0, |x| x.len() as u64);
        }
        words.push(0);
        mm.arg_end = s;
        mm.env_start = s;
        for _ in 0..envc {
            words.push(s);
            s += strings.next().map_or(0, |x| x.len() as u64);
        }
        words.push(0);
        mm.env_end = s;
        for &(k, v) in auxv.iter().chain(core::iter::once(&(at::AT_NULL, 0))) {
            words.push(k);
            words.push(v);
        }
        let bytes: Vec<u8> = match class {
            ElfClass::Elf64 => words.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ElfClass::Ia32 => words
                .iter()
                .flat_map(|&x| (x as u32).to_le_bytes())
                .collect(),
        };
        self.copy_to_user(cpu, mm, sp, &bytes)?;
        Ok((sp, auxv))
    }
}

/// The addresses `create_elf_tables` puts in the auxiliary vector.
struct ElfTables {
    interp_load_addr: u64,
    e_entry: u64,
    phdr_addr: u64,
    vdso: u64,
}
