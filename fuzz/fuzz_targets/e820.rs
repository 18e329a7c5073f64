//! The e820 text parser and `e820__update_table` on arbitrary text; maps small enough for a
//! test machine are booted, and every allocator invariant must hold after boot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmkit::arch::x86_64::e820::{E820Table, E820Type};
use mmkit_sim::{Machine, MachineSpec};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(map) = E820Table::parse(&text) else {
        return;
    };
    let mut s = map.clone();
    s.sanitize();
    // e820__update_table's result: sorted, disjoint, non-empty, adjacent entries of one
    // type merged (except the types Linux keeps apart).
    for w in s.entries.windows(2) {
        assert!(w[0].end() <= w[1].addr, "overlap after sanitize: {w:?}");
        if w[0].end() == w[1].addr && w[0].typ == w[1].typ {
            assert!(
                matches!(w[0].typ, E820Type::Pram | E820Type::SoftReserved),
                "unmerged neighbours: {w:?}"
            );
        }
    }
    assert!(s.entries.iter().all(|e| e.size > 0));
    // Sanitizing is idempotent.
    let mut again = s.clone();
    again.sanitize();
    assert_eq!(again, s);
    let _ = s.print_lines("BIOS-e820");
    let _ = s.usable_pfn_ranges();
    // Boot what a test machine can hold.
    let end = s.end_pfn(mmkit::arch::x86_64::e820::MAX_ARCH_PFN).0 << 12;
    if end <= 512 << 20 {
        let spec = MachineSpec {
            e820: map,
            cpus: 1,
            cmdline: String::new(),
        };
        if let Ok(m) = Machine::boot(&spec) {
            m.kernel.check_invariants().unwrap();
            let _ = m.kernel.dmesg();
        }
    }
});
