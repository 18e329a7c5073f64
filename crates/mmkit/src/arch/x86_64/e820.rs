//! The BIOS e820 memory map: parsing, sanitizing, editing and printing, as
//! `arch/x86/kernel/e820.c` does it (`e820__update_table`, `e820__range_update`,
//! `e820__range_remove`, `e820__print_table`, `e820__end_of_ram_pfn`).
//!
//! Invariants after [`E820Table::sanitize`]: entries are sorted by address, do not overlap,
//! have non-zero size, and no two adjacent entries have the same type (except the types
//! `e820_nomerge` keeps apart: PRAM and soft reserved). Where firmware entries overlap, the
//! higher type number wins, as in Linux's change-point algorithm; the sweep keeps the types
//! of the entries covering the current point in a counted ordered set, so sanitizing `n`
//! entries takes O(n log n) (Linux's table is capped at `E820_MAX_ENTRIES`; ours is a vector,
//! so a map of 100,000 entries must not be quadratic).

use crate::addr::{Pfn, PhysAddr, PAGE_SIZE};
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// Highest physical address bit the x86-64 4-level kernel maps (`MAX_PHYSMEM_BITS`).
pub const MAX_PHYSMEM_BITS: u32 = 46;
/// `MAX_ARCH_PFN`: the first pfn the architecture cannot address.
pub const MAX_ARCH_PFN: u64 = 1 << (MAX_PHYSMEM_BITS - crate::addr::PAGE_SHIFT);

/// An e820 region type; the discriminant is the firmware's number.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum E820Type {
    /// Type 1: usable RAM.
    Ram,
    /// Type 2: reserved.
    Reserved,
    /// Type 3: ACPI tables, reclaimable after boot.
    Acpi,
    /// Type 4: ACPI non-volatile storage.
    Nvs,
    /// Type 5: unusable.
    Unusable,
    /// Type 7: persistent memory.
    Pmem,
    /// Type 12: legacy persistent memory (PRAM).
    Pram,
    /// Type 0xefffffff: soft reserved (EFI specific-purpose memory).
    SoftReserved,
    /// Any other firmware type number.
    Other(u32),
}

impl E820Type {
    /// The firmware's type number.
    pub fn number(self) -> u32 {
        match self {
            E820Type::Ram => 1,
            E820Type::Reserved => 2,
            E820Type::Acpi => 3,
            E820Type::Nvs => 4,
            E820Type::Unusable => 5,
            E820Type::Pmem => 7,
            E820Type::Pram => 12,
            E820Type::SoftReserved => 0xefff_ffff,
            E820Type::Other(n) => n,
        }
    }

    /// The type for a firmware number.
    pub fn from_number(n: u32) -> Self {
        match n {
            1 => E820Type::Ram,
            2 => E820Type::Reserved,
            3 => E820Type::Acpi,
            4 => E820Type::Nvs,
            5 => E820Type::Unusable,
            7 => E820Type::Pmem,
            12 => E820Type::Pram,
            0xefff_ffff => E820Type::SoftReserved,
            n => E820Type::Other(n),
        }
    }

    /// The name `/proc/iomem` gives a region of this type (`e820_type_to_string`).
    pub fn iomem_name(self) -> &'static str {
        match self {
            E820Type::Ram => "System RAM",
            E820Type::Acpi => "ACPI Tables",
            E820Type::Nvs => "ACPI Non-volatile Storage",
            E820Type::Unusable => "Unusable memory",
            E820Type::Pram => "Persistent Memory (legacy)",
            E820Type::Pmem => "Persistent Memory",
            E820Type::SoftReserved => "Soft Reserved",
            E820Type::Reserved | E820Type::Other(_) => "Reserved",
        }
    }
}

/// `e820_print_type`: `usable`, `reserved`, `ACPI data`, `persistent (type 12)`, …
impl fmt::Display for E820Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E820Type::Ram => f.write_str("usable"),
            E820Type::Reserved => f.write_str("reserved"),
            E820Type::SoftReserved => f.write_str("soft reserved"),
            E820Type::Acpi => f.write_str("ACPI data"),
            E820Type::Nvs => f.write_str("ACPI NVS"),
            E820Type::Unusable => f.write_str("unusable"),
            E820Type::Pmem | E820Type::Pram => write!(f, "persistent (type {})", self.number()),
            E820Type::Other(n) => write!(f, "type {n}"),
        }
    }
}

/// One e820 entry: `[addr, addr + size)`.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Region type.
    pub typ: E820Type,
}

impl E820Entry {
    /// One past the last byte (saturating: an entry that would wrap ends at the top).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Why an e820 map was rejected. Line numbers are 1-based lines of the input text.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum E820Error {
    /// A `BIOS-e820:` line that does not parse.
    #[error("e820 map line {line}: {reason}: `{text}`")]
    Malformed {
        /// Line number.
        line: usize,
        /// The offending line.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry whose end lies below its start.
    #[error("e820 map line {line}: inverted range {start:#x}-{end:#x} (end below start)")]
    Inverted {
        /// Line number.
        line: usize,
        /// Start as written.
        start: u64,
        /// End as written.
        end: u64,
    },
    /// An entry beyond what x86-64 can address.
    #[error(
        "e820 map line {line}: range ends at {end:#x}, beyond the 52-bit physical address space"
    )]
    BeyondPhysical {
        /// Line number.
        line: usize,
        /// End as written (inclusive).
        end: u64,
    },
    /// Input with no e820 lines at all.
    #[error("no `BIOS-e820: [mem 0x…-0x…] TYPE` lines found in the e820 map")]
    Empty,
    /// A map with no usable RAM after sanitizing.
    #[error("the e820 map has no usable RAM")]
    NoUsableRam,
    /// A `--mem` size that cannot make a machine.
    #[error("memory size {0:#x} bytes is too small for a machine (need at least 64 MiB)")]
    TooSmall(u64),
    /// A `--mem` size whose map would end beyond the physical address space.
    #[error(
        "memory size {0} bytes is too large: the map would end beyond the {MAX_PHYSMEM_BITS}-bit physical address space"
    )]
    TooLarge(u64),
}

/// The e820 table (`struct e820_table`).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct E820Table {
    /// Entries; sorted and disjoint after `sanitize`.
    pub entries: Vec<E820Entry>,
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.is_empty() || h.len() > 16 {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

fn parse_type(s: &str) -> Option<E820Type> {
    let s = s.trim();
    Some(match s {
        "usable" => E820Type::Ram,
        "reserved" => E820Type::Reserved,
        "ACPI data" => E820Type::Acpi,
        "ACPI NVS" => E820Type::Nvs,
        "unusable" => E820Type::Unusable,
        "soft reserved" => E820Type::SoftReserved,
        _ => {
            let n = s
                .strip_prefix("persistent (type ")
                .and_then(|r| r.strip_suffix(')'))
                .or_else(|| s.strip_prefix("type "))?;
            E820Type::from_number(n.trim().parse().ok()?)
        }
    })
}

impl E820Table {
    /// Parse dmesg-style lines (`[    0.000000] BIOS-e820: [mem 0x…-0x…] usable`, with or
    /// without the timestamp). Lines without `BIOS-e820:` are ignored, so a whole dmesg can be
    /// given; a `BIOS-e820:` line that does not parse is an error naming the line.
    pub fn parse(text: &str) -> Result<Self, E820Error> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let Some(pos) = raw.find("BIOS-e820:") else {
                continue;
            };
            let bad = |reason| E820Error::Malformed {
                line,
                text: raw.trim().to_string(),
                reason,
            };
            let rest = raw[pos + "BIOS-e820:".len()..].trim();
            let rest = rest
                .strip_prefix("[mem ")
                .ok_or_else(|| bad("expected `[mem `"))?;
            let close = rest.find(']').ok_or_else(|| bad("missing `]`"))?;
            let (range, typ) = (&rest[..close], &rest[close + 1..]);
            let (a, b) = range
                .split_once('-')
                .ok_or_else(|| bad("expected `START-END`"))?;
            let start = parse_hex(a).ok_or_else(|| bad("start is not a hex number"))?;
            let last = parse_hex(b).ok_or_else(|| bad("end is not a hex number"))?;
            let typ = parse_type(typ).ok_or_else(|| bad("unknown e820 type"))?;
            if last < start {
                return Err(E820Error::Inverted {
                    line,
                    start,
                    end: last,
                });
            }
            if last >= (1u64 << 52) {
                return Err(E820Error::BeyondPhysical { line, end: last });
            }
            entries.push(E820Entry {
                addr: start,
                size: last - start + 1,
                typ,
            });
        }
        if entries.is_empty() {
            return Err(E820Error::Empty);
        }
        Ok(Self { entries })
    }

    /// A plausible PC map for `bytes` of RAM, like QEMU's: conventional memory below 640 KiB,
    /// the VGA/BIOS hole to 1 MiB, RAM to 3 GiB, the PCI hole to 4 GiB, the rest above 4 GiB.
    pub fn for_mem_size(bytes: u64) -> Result<Self, E820Error> {
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let bytes = bytes & !(PAGE_SIZE - 1);
        if bytes < 64 * MIB {
            return Err(E820Error::TooSmall(bytes));
        }
        // Above 3 GiB the rest of RAM starts at 4 GiB: the map ends at bytes + 1 GiB.
        if bytes > (1 << MAX_PHYSMEM_BITS) - GIB {
            return Err(E820Error::TooLarge(bytes));
        }
        let mut e = Vec::new();
        let mut push = |addr, end: u64, typ| {
            e.push(E820Entry {
                addr,
                size: end - addr,
                typ,
            })
        };
        push(0, 0x9fc00, E820Type::Ram);
        push(0x9fc00, 0xa0000, E820Type::Reserved);
        push(0xf0000, 0x100000, E820Type::Reserved);
        let low_top = 3 * GIB;
        if bytes <= low_top {
            push(0x100000, bytes, E820Type::Ram);
        } else {
            push(0x100000, low_top, E820Type::Ram);
            push(0xfeff_c000, 0xff00_0000, E820Type::Reserved);
            push(0xfffc_0000, 4 * GIB, E820Type::Reserved);
            push(4 * GIB, 4 * GIB + (bytes - low_top), E820Type::Ram);
        }
        Ok(Self { entries: e })
    }

    /// `e820__update_table`: resolve overlaps toward the higher type, drop empty entries,
    /// merge adjacent entries of the same type (but not PRAM or soft reserved ones:
    /// `e820_nomerge`), and sort. Entries whose end would wrap past 2^64 make Linux refuse the
    /// whole table; [`E820Table::parse`] cannot produce them, and here they are dropped.
    pub fn sanitize(&mut self) {
        // Change points: each entry's start and end. At one address, ends sort before starts
        // so the type in force is settled once per address.
        let mut points: Vec<(u64, bool, u32)> = Vec::with_capacity(self.entries.len() * 2);
        for e in &self.entries {
            // Type 0 never wins a change point in Linux: such an entry covers nothing.
            if e.size == 0 || e.typ.number() == 0 || e.addr.checked_add(e.size).is_none() {
                continue;
            }
            points.push((e.addr, true, e.typ.number()));
            points.push((e.addr + e.size, false, e.typ.number()));
        }
        points.sort_unstable_by_key(|&(addr, start, _)| (addr, start));
        // The types covering the sweep position, with multiplicity; the highest wins.
        let mut active: BTreeMap<u32, usize> = BTreeMap::new();
        let mut out: Vec<E820Entry> = Vec::new();
        let mut i = 0;
        while i < points.len() {
            let addr = points[i].0;
            while i < points.len() && points[i].0 == addr {
                let (_, start, t) = points[i];
                if start {
                    *active.entry(t).or_insert(0) += 1;
                } else if let Some(c) = active.get_mut(&t) {
                    *c -= 1;
                    if *c == 0 {
                        active.remove(&t);
                    }
                }
                i += 1;
            }
            let Some((&t, _)) = active.last_key_value() else {
                continue;
            };
            let Some(next) = points.get(i).map(|p| p.0) else {
                break;
            };
            let typ = E820Type::from_number(t);
            let nomerge = matches!(typ, E820Type::Pram | E820Type::SoftReserved);
            match out.last_mut() {
                Some(last) if last.typ == typ && last.end() == addr && !nomerge => {
                    last.size += next - addr
                }
                _ => out.push(E820Entry {
                    addr,
                    size: next - addr,
                    typ,
                }),
            }
        }
        self.entries = out;
    }

    /// Change the type of `[start, start + size)` from `old` to `new` (or delete it when `new`
    /// is `None`) wherever it currently is `old`, splitting entries as needed.
    fn retype(&mut self, start: u64, size: u64, old: E820Type, new: Option<E820Type>) {
        let end = start.saturating_add(size);
        let mut out = Vec::with_capacity(self.entries.len() + 2);
        for e in &self.entries {
            if e.typ != old || e.end() <= start || e.addr >= end {
                out.push(*e);
                continue;
            }
            let (ov_lo, ov_hi) = (e.addr.max(start), e.end().min(end));
            if e.addr < ov_lo {
                out.push(E820Entry {
                    addr: e.addr,
                    size: ov_lo - e.addr,
                    typ: e.typ,
                });
            }
            if let Some(t) = new {
                out.push(E820Entry {
                    addr: ov_lo,
                    size: ov_hi - ov_lo,
                    typ: t,
                });
            }
            if ov_hi < e.end() {
                out.push(E820Entry {
                    addr: ov_hi,
                    size: e.end() - ov_hi,
                    typ: e.typ,
                });
            }
        }
        self.entries = out;
        self.sanitize();
    }

    /// `e820__range_update`: returns the dmesg line it prints.
    pub fn range_update(&mut self, start: u64, size: u64, old: E820Type, new: E820Type) -> String {
        self.retype(start, size, old, Some(new));
        let mut s = String::new();
        let _ = write!(
            s,
            "e820: update [mem {:#010x}-{:#010x}] {} ==> {}",
            start,
            start + size - 1,
            old,
            new
        );
        s
    }

    /// `e820__range_remove`: returns the dmesg line it prints.
    pub fn range_remove(&mut self, start: u64, size: u64, old: E820Type) -> String {
        self.retype(start, size, old, None);
        let mut s = String::new();
        let _ = write!(
            s,
            "e820: remove [mem {:#010x}-{:#010x}] {}",
            start,
            start + size - 1,
            old
        );
        s
    }

    /// `e820__print_table`: one `PREFIX: [mem 0x…-0x…] type` line per entry.
    pub fn print_lines(&self, prefix: &str) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| {
                let mut s = String::new();
                let _ = write!(
                    s,
                    "{prefix}: [mem {:#018x}-{:#018x}] {}",
                    e.addr,
                    e.end() - 1,
                    e.typ
                );
                s
            })
            .collect()
    }

    /// `e820__end_of_ram_pfn` / `e820__end_of_low_ram_pfn`: the end of usable RAM below
    /// `limit_pfn`, clamped to `MAX_ARCH_PFN`.
    pub fn end_pfn(&self, limit_pfn: u64) -> Pfn {
        let mut last = 0;
        for e in self.entries.iter().filter(|e| e.typ == E820Type::Ram) {
            let s = PhysAddr(e.addr).pfn_down().0;
            let end = PhysAddr(e.end()).pfn_down().0;
            if s >= limit_pfn {
                continue;
            }
            last = last.max(end.min(limit_pfn));
        }
        Pfn(last.min(MAX_ARCH_PFN))
    }

    /// Usable RAM ranges as whole pages `[start_pfn, end_pfn)` (edges trimmed inward,
    /// `memblock_trim_memory(PAGE_SIZE)`), empty ones dropped.
    pub fn usable_pfn_ranges(&self) -> Vec<(u64, u64)> {
        self.entries
            .iter()
            .filter(|e| e.typ == E820Type::Ram)
            .map(|e| {
                (
                    PhysAddr(e.addr).pfn_up().0,
                    PhysAddr(e.end()).pfn_down().0.min(MAX_ARCH_PFN),
                )
            })
            .filter(|(s, e)| s < e)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn t(v: &[(u64, u64, E820Type)]) -> E820Table {
        E820Table {
            entries: v
                .iter()
                .map(|&(a, e, typ)| E820Entry {
                    addr: a,
                    size: e - a,
                    typ,
                })
                .collect(),
        }
    }

    #[test]
    fn parses_with_and_without_timestamps() {
        let m = E820Table::parse(
            "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n\
             BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved\n\
             random line\n\
             [    0.000000] BIOS-e820: [mem 0x00000000cc8e3000-0x00000000cc8e3fff] ACPI NVS\n\
             BIOS-e820: [mem 0x00000000d7fa3000-0x00000000d7ffefff] ACPI data\n\
             BIOS-e820: [mem 0x0000000100000000-0x00000001ffffffff] persistent (type 12)\n",
        )
        .unwrap();
        assert_eq!(m.entries.len(), 5);
        assert_eq!(
            m.entries[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                typ: E820Type::Ram
            }
        );
        assert_eq!(m.entries[2].typ, E820Type::Nvs);
        assert_eq!(m.entries[3].typ, E820Type::Acpi);
        assert_eq!(m.entries[4].typ, E820Type::Pram);
        assert_eq!(
            m.print_lines("BIOS-e820")[4],
            "BIOS-e820: [mem 0x0000000100000000-0x00000001ffffffff] persistent (type 12)"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = E820Table::parse("x\nBIOS-e820: [mem 0x1000-0x0fff] usable").unwrap_err();
        assert_eq!(
            e,
            E820Error::Inverted {
                line: 2,
                start: 0x1000,
                end: 0xfff
            }
        );
        let e = E820Table::parse("BIOS-e820: [mem 0x1000-0x1fff] usabel").unwrap_err();
        assert!(
            matches!(
                e,
                E820Error::Malformed {
                    line: 1,
                    reason: "unknown e820 type",
                    ..
                }
            ),
            "{e}"
        );
        let e = E820Table::parse("BIOS-e820: [mem 0x1000 0x1fff] usable").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = E820Table::parse("BIOS-e820: [mem 0xg000-0x1fff] usable").unwrap_err();
        assert!(matches!(
            e,
            E820Error::Malformed {
                reason: "start is not a hex number",
                ..
            }
        ));
        assert_eq!(
            E820Table::parse("nothing here").unwrap_err(),
            E820Error::Empty
        );
        let e = E820Table::parse("BIOS-e820: [mem 0x0-0xffffffffffffffff] usable").unwrap_err();
        assert!(matches!(e, E820Error::BeyondPhysical { line: 1, .. }));
    }

    #[test]
    fn sanitize_resolves_overlaps_toward_higher_type() {
        use E820Type::*;
        // usable 0-0x10000 overlapped by reserved 0x8000-0x9000 and ACPI 0xf000-0x12000.
        let mut m = t(&[
            (0, 0x10000, Ram),
            (0x8000, 0x9000, Reserved),
            (0xf000, 0x12000, Acpi),
            (0x20000, 0x20000, Ram),
        ]);
        m.sanitize();
        assert_eq!(
            m,
            t(&[
                (0, 0x8000, Ram),
                (0x8000, 0x9000, Reserved),
                (0x9000, 0xf000, Ram),
                (0xf000, 0x12000, Acpi)
            ])
        );
    }

    #[test]
    fn sanitize_merges_adjacent_and_sorts() {
        use E820Type::*;
        let mut m = t(&[
            (0x3000, 0x4000, Ram),
            (0, 0x1000, Ram),
            (0x1000, 0x3000, Ram),
            (0x5000, 0x6000, Ram),
        ]);
        m.sanitize();
        assert_eq!(m, t(&[(0, 0x4000, Ram), (0x5000, 0x6000, Ram)]));
        // Identical duplicates collapse; contained same-type entries disappear.
        let mut m = t(&[
            (0, 0x4000, Reserved),
            (0, 0x4000, Reserved),
            (0x1000, 0x2000, Reserved),
        ]);
        m.sanitize();
        assert_eq!(m, t(&[(0, 0x4000, Reserved)]));
    }

    #[test]
    fn soft_reserved_prints_by_name_and_is_not_merged() {
        use E820Type::*;
        let m = E820Table::parse(
            "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] soft reserved\n\
             BIOS-e820: [mem 0x0000000140000000-0x000000017fffffff] soft reserved",
        )
        .unwrap();
        assert_eq!(m.entries[0].typ, SoftReserved);
        assert_eq!(SoftReserved.number(), 0xefff_ffff);
        assert_eq!(E820Type::from_number(0xefff_ffff), SoftReserved);
        assert_eq!(SoftReserved.iomem_name(), "Soft Reserved");
        let mut s = m.clone();
        s.sanitize();
        assert_eq!(
            s.entries.len(),
            2,
            "e820_nomerge keeps soft reserved ranges apart"
        );
        assert_eq!(
            s.print_lines("BIOS-e820"),
            [
                "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] soft reserved",
                "BIOS-e820: [mem 0x0000000140000000-0x000000017fffffff] soft reserved"
            ]
        );
        // It outranks every other type where they overlap.
        let mut m = t(&[(0, 0x4000, Ram), (0x1000, 0x2000, SoftReserved)]);
        m.sanitize();
        assert_eq!(
            m,
            t(&[
                (0, 0x1000, Ram),
                (0x1000, 0x2000, SoftReserved),
                (0x2000, 0x4000, Ram)
            ])
        );
    }

    #[test]
    fn sanitize_many_entries_is_fast_and_right() {
        use E820Type::*;
        // 200,000 entries: alternating usable/reserved 64 KiB pieces, each piece also
        // described twice (an exact duplicate and an overlapping reserved sliver), shuffled.
        let n = 50_000u64;
        let mut v = Vec::new();
        for i in 0..n {
            let a = 0x10_0000 + i * 0x1_0000;
            let typ = if i % 2 == 0 { Ram } else { Reserved };
            v.push(E820Entry {
                addr: a,
                size: 0x1_0000,
                typ,
            });
            v.push(E820Entry {
                addr: a,
                size: 0x1_0000,
                typ,
            });
            v.push(E820Entry {
                addr: a + 0x8000,
                size: 0x1000,
                typ: Reserved,
            });
            v.push(E820Entry {
                addr: a,
                size: 0,
                typ: Acpi,
            });
        }
        // A deterministic shuffle.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut m = E820Table { entries: v };
        m.sanitize();
        // Every RAM piece is cut by its reserved sliver; reserved pieces swallow theirs and
        // merge with the sliver of the RAM piece before them... piece by piece:
        let mut want: Vec<E820Entry> = Vec::new();
        let mut push = |addr: u64, end: u64, typ| match want.last_mut() {
            Some(l) if l.typ == typ && l.end() == addr => l.size = end - l.addr,
            _ => want.push(E820Entry {
                addr,
                size: end - addr,
                typ,
            }),
        };
        for i in 0..n {
            let a = 0x10_0000 + i * 0x1_0000;
            if i % 2 == 0 {
                push(a, a + 0x8000, Ram);
                push(a + 0x8000, a + 0x9000, Reserved);
                push(a + 0x9000, a + 0x1_0000, Ram);
            } else {
                push(a, a + 0x1_0000, Reserved);
            }
        }
        assert_eq!(m.entries, want);
    }

    #[test]
    fn generated_map_sizes_are_checked() {
        assert_eq!(
            E820Table::for_mem_size(u64::MAX).unwrap_err(),
            E820Error::TooLarge(!0xfff)
        );
        assert!(E820Table::for_mem_size((1 << 46) - (1 << 30)).is_ok());
        assert!(E820Table::for_mem_size((1 << 46) - (1 << 30) + 4096).is_err());
    }

    #[test]
    fn update_and_remove_split_entries() {
        use E820Type::*;
        let mut m = t(&[(0, 0x9fc00, Ram), (0x100000, 0x200000, Ram)]);
        let l = m.range_update(0, 0x1000, Ram, Reserved);
        assert_eq!(
            l,
            "e820: update [mem 0x00000000-0x00000fff] usable ==> reserved"
        );
        let l = m.range_remove(0xa0000, 0x60000, Ram);
        assert_eq!(l, "e820: remove [mem 0x000a0000-0x000fffff] usable");
        assert_eq!(
            m,
            t(&[
                (0, 0x1000, Reserved),
                (0x1000, 0x9fc00, Ram),
                (0x100000, 0x200000, Ram)
            ])
        );
        let mut m = t(&[(0, 0x10000, Ram)]);
        m.range_update(0x4000, 0x1000, Ram, Unusable);
        assert_eq!(
            m,
            t(&[
                (0, 0x4000, Ram),
                (0x4000, 0x5000, Unusable),
                (0x5000, 0x10000, Ram)
            ])
        );
    }

    #[test]
    fn usable_ranges_trim_to_pages() {
        use E820Type::*;
        let m = t(&[(0x800, 0x9fc00, Ram), (0x100000, 0x100800, Ram)]);
        assert_eq!(m.usable_pfn_ranges(), vec![(1, 0x9f)]);
        assert_eq!(m.end_pfn(u64::MAX), Pfn(0x100));
    }

    #[test]
    fn generated_maps() {
        let m = E820Table::for_mem_size(8 << 30).unwrap();
        let ram: u64 = m.usable_pfn_ranges().iter().map(|(s, e)| e - s).sum();
        assert_eq!(ram, (8u64 << 30) / 4096 - 1 - 0x60); // minus the 640K-1M hole and the tail of low mem
        assert!(E820Table::for_mem_size(1 << 20).is_err());
    }
}
