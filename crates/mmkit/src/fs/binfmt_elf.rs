//! The ELF loader (`fs/binfmt_elf.c`): `load_elf_binary`, `load_elf_interp`, `elf_load`
//! (`elf_map` + `padzero` + the anonymous bss pages), `total_mapping_size`,
//! `create_elf_tables` (argc, argv, envp and the auxiliary vector on the new stack).
//!
//! ELF64 x86-64 executables (`ET_EXEC`) and position-independent ones (`ET_DYN`): with an
//! interpreter a PIE is loaded at `ELF_ET_DYN_BASE` (2/3 of the address space, plus
//! `arch_mmap_rnd` when randomizing), the interpreter top-down below `mmap_base`, then the
//! vDSO below it; `start_brk` follows the highest segment. Headers are parsed with the
//! `object` crate and read through the page cache, as `kernel_read` does.

use crate::addr::{align_down, align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::exec::{Binprm, InterpOpener, StartState};
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
    FileHeader64, EM_X86_64, ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, PT_GNU_STACK, PT_INTERP, PT_LOAD,
    PT_PHDR,
};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// `ELF_ET_DYN_BASE` for 64-bit tasks: 2/3 of `DEFAULT_MAP_WINDOW`.
pub const ELF_ET_DYN_BASE: u64 = TASK_SIZE / 3 * 2;
/// The `ELF_PLATFORM` string (`AT_PLATFORM`).
pub const ELF_PLATFORM: &[u8] = b"x86_64";

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
    pub const AT_SYSINFO_EHDR: u64 = 33;
    pub const AT_MINSIGSTKSZ: u64 = 51;
}

/// The simulated CPU's `ELF_HWCAP` (CPUID.1:EDX of an x86-64 CPU with the usual features).
pub const ELF_HWCAP: u64 = 0x178b_fbff;
/// `ELF_HWCAP2`: `HWCAP2_FSGSBASE`.
pub const ELF_HWCAP2: u64 = 0x2;
/// `get_sigframe_size()` for an XSAVE area of AVX2 size (`AT_MINSIGSTKSZ`).
pub const MINSIGSTKSZ: u64 = 3376;

/// One program header, decoded.
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

/// A parsed ELF header and its program headers.
struct ElfImage {
    e_type: u16,
    e_entry: u64,
    e_phoff: u64,
    phdrs: Vec<Phdr>,
}

impl ElfImage {
    fn loads(&self) -> impl Iterator<Item = &Phdr> {
        self.phdrs.iter().filter(|p| p.p_type == PT_LOAD)
    }

    /// `total_mapping_size`: from the first PT_LOAD's page to the end of the last.
    fn total_mapping_size(&self) -> u64 {
        let (Some(first), Some(last)) = (self.loads().next(), self.loads().last()) else {
            return 0;
        };
        (last.p_vaddr + last.p_memsz).saturating_sub(align_down(first.p_vaddr, PAGE_SIZE))
    }

    /// `maximum_alignment`: the largest power-of-two `p_align` of the PT_LOADs.
    fn maximum_alignment(&self) -> u64 {
        self.loads()
            .map(|p| p.p_align)
            .filter(|a| a.is_power_of_two())
            .max()
            .unwrap_or(PAGE_SIZE)
            .max(PAGE_SIZE)
    }
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

impl Kernel {
    /// Read the ELF header and program headers of `file` (`ENOEXEC` unless it is an ELF64
    /// little-endian x86-64 executable or shared object with sane headers).
    fn read_elf(&self, cpu: &CpuGuard<'_>, file: &File) -> Result<ElfImage, Errno> {
        let inode = &file.inode;
        let mut head = [0u8; 64];
        if self.filemap_read(cpu, inode, 0, &mut head)? < head.len() {
            return Err(Errno::ENOEXEC);
        }
        let hdr = FileHeader64::<Endianness>::parse(&head[..]).map_err(|_| Errno::ENOEXEC)?;
        let endian = hdr.endian().map_err(|_| Errno::ENOEXEC)?;
        if endian != Endianness::Little {
            return Err(Errno::ENOEXEC);
        }
        let e_type = hdr.e_type(endian);
        if (e_type != ET_EXEC && e_type != ET_DYN) || hdr.e_machine(endian) != EM_X86_64 {
            return Err(Errno::ENOEXEC);
        }
        let phoff = hdr.e_phoff(endian);
        let phnum = u64::from(hdr.e_phnum.get(endian));
        let phentsize = u64::from(hdr.e_phentsize.get(endian));
        // elf_read_phdrs: the right entry size, 1..=65536/56 entries.
        if phentsize != 56 || phnum == 0 || phnum * 56 > 65536 {
            return Err(Errno::ENOEXEC);
        }
        let end = phoff.checked_add(phnum * 56).ok_or(Errno::ENOEXEC)?;
        let mut data = vec![0u8; end as usize];
        if self.filemap_read(cpu, inode, 0, &mut data)? < data.len() {
            return Err(Errno::ENOEXEC);
        }
        let hdr = FileHeader64::<Endianness>::parse(&data[..]).map_err(|_| Errno::ENOEXEC)?;
        let phdrs = hdr
            .program_headers(endian, &data[..])
            .map_err(|_| Errno::ENOEXEC)?
            .iter()
            .map(|p| Phdr {
                p_type: p.p_type(endian),
                p_flags: p.p_flags(endian),
                p_offset: p.p_offset(endian),
                p_vaddr: p.p_vaddr(endian),
                p_filesz: p.p_filesz(endian),
                p_memsz: p.p_memsz(endian),
                p_align: p.p_align(endian),
            })
            .collect::<Vec<_>>();
        for p in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
            // elf_map's checks: file part inside memory part, page offsets congruent, in
            // user space.
            if p.p_filesz > p.p_memsz
                || (p.p_offset & (PAGE_SIZE - 1)) != (p.p_vaddr & (PAGE_SIZE - 1))
                || p.p_vaddr
                    .checked_add(p.p_memsz)
                    .is_none_or(|e| e > TASK_SIZE)
            {
                return Err(Errno::ENOEXEC);
            }
        }
        if !phdrs.iter().any(|p| p.p_type == PT_LOAD) {
            return Err(Errno::ENOEXEC);
        }
        Ok(ElfImage {
            e_type,
            e_entry: hdr.e_entry(endian),
            e_phoff: phoff,
            phdrs,
        })
    }

    /// `elf_load`: map one PT_LOAD at `addr` (its virtual address plus the load bias) with
    /// `flags`; the first segment of an image reserves `total_size` and trims it. The file
    /// part is mapped privately, the rest of its last page zeroed (`padzero`), and whole
    /// pages past the file part become anonymous memory (`vm_brk_flags`). Returns the
    /// mapping address (page-aligned).
    #[allow(clippy::too_many_arguments)] // elf_load's own arguments plus the CPU and the mm
    fn elf_load(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        file: &Arc<File>,
        addr: u64,
        p: &Phdr,
        flags: u32,
        total_size: u64,
    ) -> Result<u64, Errno> {
        let prot = make_prot(p.p_flags);
        let in_page = p.p_vaddr & (PAGE_SIZE - 1);
        let map_start = align_down(addr, PAGE_SIZE);
        let map_addr = if p.p_filesz > 0 {
            // elf_map
            let size = align_up(p.p_filesz + in_page, PAGE_SIZE);
            let off = p.p_offset - in_page;
            if total_size > 0 {
                let total = align_up(total_size, PAGE_SIZE);
                let a = self.do_mmap(cpu, mm, Some(file), map_start, total, prot, flags, off)?;
                if total > size {
                    self.munmap(cpu, mm, a + size, total - size)?;
                }
                a
            } else {
                self.do_mmap(cpu, mm, Some(file), map_start, size, prot, flags, off)?
            }
        } else {
            map_start
        };
        if p.p_memsz > p.p_filesz {
            let zero_start = map_addr + in_page + p.p_filesz;
            let zero_end = map_addr + in_page + p.p_memsz;
            // padzero: the tail of the last file page reads as zeroes.
            if p.p_filesz > 0 && zero_start & (PAGE_SIZE - 1) != 0 {
                let n = PAGE_SIZE - (zero_start & (PAGE_SIZE - 1));
                if self.clear_user(cpu, mm, zero_start, n).is_err() && prot & PROT_WRITE != 0 {
                    return Err(Errno::EFAULT);
                }
            }
            let (zs, ze) = (
                align_up(zero_start, PAGE_SIZE),
                align_up(zero_end, PAGE_SIZE),
            );
            if ze > zs {
                self.vm_brk_flags(cpu, mm, zs, ze - zs, prot & PROT_EXEC != 0)?;
            }
        }
        Ok(map_addr)
    }

    /// `vm_brk_flags`: anonymous data pages at `[addr, addr + len)` (bss), replacing what
    /// was there.
    pub(crate) fn vm_brk_flags(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
        exec: bool,
    ) -> Result<(), Errno> {
        let mut flags = VmFlags::VM_READ
            | VmFlags::VM_WRITE
            | VmFlags::VM_MAYREAD
            | VmFlags::VM_MAYWRITE
            | VmFlags::VM_MAYEXEC
            | VmFlags::VM_ACCOUNT;
        if exec {
            flags |= VmFlags::VM_EXEC;
        }
        self.munmap(cpu, mm, addr, len)?;
        if mm.map_count() >= mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        self.mmap_region(mm, addr, len, flags, addr >> PAGE_SHIFT, None, None);
        Ok(())
    }

    /// `load_elf_interp`: map the interpreter top-down (its first segment wherever
    /// `get_unmapped_area` puts the whole image, the rest fixed after it). Returns its load
    /// address (`AT_BASE`).
    fn load_elf_interp(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        file: &Arc<File>,
        img: &ElfImage,
    ) -> Result<u64, Errno> {
        let total = img.total_mapping_size();
        if total == 0 {
            return Err(Errno::EINVAL);
        }
        let mut load_addr = 0u64;
        let mut first = true;
        for p in img.loads() {
            let (vaddr, flags) = if first && img.e_type == ET_DYN {
                (p.p_vaddr, MAP_PRIVATE)
            } else {
                (load_addr + p.p_vaddr, MAP_PRIVATE | MAP_FIXED)
            };
            let size = if first { total } else { 0 };
            let a = self.elf_load(cpu, mm, file, vaddr, p, flags, size)?;
            if first {
                if img.e_type == ET_DYN {
                    load_addr = a - align_down(p.p_vaddr, PAGE_SIZE);
                }
                first = false;
            }
        }
        Ok(load_addr)
    }

    /// `load_elf_binary`: map the executable and its interpreter, set `brk`, map the vDSO,
    /// and write argc/argv/envp/auxv (`create_elf_tables`). Returns (entry, sp, auxv).
    pub(crate) fn load_elf_binary(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        open_interp: &mut InterpOpener<'_>,
    ) -> Result<StartState, Errno> {
        let file = bprm.file.clone();
        let elf = self.read_elf(cpu, &file)?;
        let randomize = bprm.params.randomize;

        // PT_INTERP and PT_GNU_STACK.
        let mut interp = None;
        let mut executable_stack = false;
        for p in &elf.phdrs {
            if p.p_type == PT_INTERP {
                if p.p_filesz < 2 || p.p_filesz > 4096 {
                    return Err(Errno::ENOEXEC);
                }
                let mut path = vec![0u8; p.p_filesz as usize];
                self.filemap_read(cpu, &file.inode, p.p_offset, &mut path)?;
                if path.pop() != Some(0) {
                    return Err(Errno::ENOEXEC);
                }
                let f = open_interp(&path)?;
                let img = self.read_elf(cpu, &f)?;
                interp = Some((f, img));
            } else if p.p_type == PT_GNU_STACK {
                executable_stack = p.p_flags & PF_X != 0;
            }
        }

        // Point of no return (begin_new_exec) and setup_new_exec: the layout.
        let mm_base = MmStruct::mmap_base_for(bprm.mm.rlimit_stack);
        bprm.mm.mmap_base = if randomize {
            self.mmap_base_randomized(bprm.mm.rlimit_stack)
        } else {
            mm_base
        };
        self.setup_arg_pages(cpu, bprm, executable_stack)?;
        let mm = &mut bprm.mm;

        // The executable's segments.
        let mut load_bias = 0u64;
        let mut first = true;
        let (mut start_code, mut end_code, mut start_data, mut end_data) = (u64::MAX, 0, 0, 0);
        let mut elf_brk = 0u64;
        let mut phdr_addr = 0u64;
        for p in elf.loads() {
            let mut flags = MAP_PRIVATE;
            let mut total_size = 0;
            if first {
                if elf.e_type == ET_EXEC {
                    flags |= MAP_FIXED_NOREPLACE;
                } else if interp.is_some() {
                    let mut bias = ELF_ET_DYN_BASE;
                    if randomize {
                        bias += self.arch_mmap_rnd();
                    }
                    let align = elf.maximum_alignment();
                    if align > PAGE_SIZE {
                        bias &= !(align - 1);
                    }
                    load_bias = align_down(bias - p.p_vaddr, PAGE_SIZE);
                    flags |= MAP_FIXED_NOREPLACE;
                }
                total_size = elf.total_mapping_size();
                if total_size == 0 {
                    return Err(Errno::EINVAL);
                }
            } else {
                flags |= MAP_FIXED;
            }
            let a = self.elf_load(cpu, mm, &file, load_bias + p.p_vaddr, p, flags, total_size)?;
            if first {
                if elf.e_type == ET_DYN {
                    // A static PIE went wherever get_unmapped_area put it.
                    load_bias += a - align_down(load_bias + p.p_vaddr, PAGE_SIZE);
                }
                first = false;
            }
            if p.p_offset <= elf.e_phoff && elf.e_phoff < p.p_offset + p.p_filesz {
                phdr_addr = elf.e_phoff - p.p_offset + p.p_vaddr;
            }
            let k = p.p_vaddr;
            if p.p_flags & PF_X != 0 && k < start_code {
                start_code = k;
            }
            start_data = start_data.max(k);
            let k = p.p_vaddr + p.p_filesz;
            if p.p_flags & PF_X != 0 && end_code < k {
                end_code = k;
            }
            end_data = end_data.max(k);
            elf_brk = elf_brk.max(p.p_vaddr + p.p_memsz);
        }
        if let Some(ph) = elf.phdrs.iter().find(|p| p.p_type == PT_PHDR) {
            phdr_addr = ph.p_vaddr;
        }
        phdr_addr += load_bias;
        let e_entry = elf.e_entry + load_bias;
        mm.start_code = start_code.wrapping_add(load_bias);
        mm.end_code = end_code + load_bias;
        mm.start_data = start_data + load_bias;
        mm.end_data = end_data + load_bias;

        // The interpreter.
        let (entry, interp_base) = match &interp {
            Some((f, img)) => {
                let base = self.load_elf_interp(cpu, mm, f, img)?;
                (base + img.e_entry, base)
            }
            None => (e_entry, 0),
        };

        // brk right after the highest segment (randomized within 32 MiB when asked).
        let brk = align_up(elf_brk + load_bias, PAGE_SIZE);
        mm.start_brk = brk;
        mm.brk = brk;
        if randomize {
            let r = align_down(self.platform().get_random_u64() % 0x0200_0000, PAGE_SIZE);
            mm.start_brk = brk + r;
            mm.brk = brk + r;
        }

        let vdso = self.map_vdso(cpu, mm)?;
        mm.exe_file = Some(file.clone());

        let auxv = [
            (at::AT_SYSINFO_EHDR, vdso),
            (at::AT_MINSIGSTKSZ, MINSIGSTKSZ),
            (at::AT_HWCAP, ELF_HWCAP),
            (at::AT_PAGESZ, PAGE_SIZE),
            (at::AT_CLKTCK, 100),
            (at::AT_PHDR, phdr_addr),
            (at::AT_PHENT, 56),
            (at::AT_PHNUM, elf.phdrs.len() as u64),
            (at::AT_BASE, interp_base),
            (at::AT_FLAGS, 0),
            (at::AT_ENTRY, e_entry),
            (at::AT_UID, 0),
            (at::AT_EUID, 0),
            (at::AT_GID, 0),
            (at::AT_EGID, 0),
            (at::AT_SECURE, 0),
            (at::AT_RANDOM, 0), // filled in by create_elf_tables
            (at::AT_HWCAP2, ELF_HWCAP2),
            (at::AT_EXECFN, bprm.exec),
            (at::AT_PLATFORM, 0), // filled in by create_elf_tables
            (at::AT_RSEQ_FEATURE_SIZE, 28),
            (at::AT_RSEQ_ALIGN, 32),
        ];
        let (sp, auxv) = self.create_elf_tables(cpu, bprm, &auxv)?;
        bprm.mm.start_stack = sp;
        Ok(StartState { entry, sp, auxv })
    }

    /// `mmap_base()` with randomization: the gap below the stack also covers the stack's
    /// random range, and `arch_mmap_rnd` more is taken off.
    fn mmap_base_randomized(&self, rlimit_stack: u64) -> u64 {
        const MIN_GAP: u64 = 128 << 20;
        let max_gap = TASK_SIZE / 6 * 5;
        let pad =
            crate::mm::mm_types::STACK_GUARD_GAP + (crate::fs::exec::STACK_RND_MASK << PAGE_SHIFT);
        let gap = rlimit_stack.saturating_add(pad).clamp(MIN_GAP, max_gap);
        align_up(TASK_SIZE - gap - self.arch_mmap_rnd(), PAGE_SIZE)
    }

    /// `create_elf_tables`: below the strings, the platform string and 16 random bytes; then
    /// (16-byte aligned) argc, the argv pointers, NULL, the envp pointers, NULL and the
    /// auxiliary vector ending in `AT_NULL`. Sets `arg_end`/`env_start`/`env_end`. Returns
    /// the stack pointer and the auxv as written.
    fn create_elf_tables(
        &self,
        cpu: &CpuGuard<'_>,
        bprm: &mut Binprm<'_>,
        auxv: &[(u64, u64)],
    ) -> Result<(u64, Vec<(u64, u64)>), Errno> {
        let mut p = bprm.p & !0xf; // arch_align_stack
        let mm = &mut bprm.mm;
        p -= ELF_PLATFORM.len() as u64 + 1;
        let u_platform = p;
        let mut plat = ELF_PLATFORM.to_vec();
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
        let mut auxv: Vec<(u64, u64)> = auxv
            .iter()
            .map(|&(k, v)| match k {
                at::AT_RANDOM => (k, u_rand),
                at::AT_PLATFORM => (k, u_platform),
                _ => (k, v),
            })
            .collect();
        let ei_words = (auxv.len() as u64 + 1) * 2;
        let items = (bprm.argc as u64 + 1) + (bprm.envc as u64 + 1) + 1;
        let sp = (p - ei_words * 8 - items * 8) & !0xf; // STACK_ROUND
                                                        // The strings sit from bprm.p up: argv first, then envp.
        let mut words: Vec<u64> = Vec::with_capacity((items + ei_words) as usize);
        words.push(bprm.argc as u64);
        let params = bprm.params;
        let mut s = bprm.p;
        for a in params.argv {
            words.push(s);
            s += a.len() as u64 + 1;
        }
        words.push(0);
        mm.arg_end = s;
        mm.env_start = s;
        for e in params.envp {
            words.push(s);
            s += e.len() as u64 + 1;
        }
        words.push(0);
        mm.env_end = s;
        auxv.push((at::AT_NULL, 0));
        for &(k, v) in &auxv {
            words.push(k);
            words.push(v);
        }
        auxv.pop();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.copy_to_user(cpu, mm, sp, &bytes)?;
        Ok((sp, auxv))
    }
}
