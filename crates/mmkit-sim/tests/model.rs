//! Property test: random alloc/free/drain sequences against a reference model (the set of
//! blocks we hold). After every step the allocator's invariants hold, no two held blocks
//! overlap, every block is in a zone its GFP mask allows, every page is either free, on a
//! pcp list, or held, and held bytes are intact.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::gfp::{Gfp, GFP_ATOMIC, GFP_DMA32, GFP_HIGHUSER_MOVABLE, GFP_KERNEL};
use mmkit::Page;
use mmkit_sim::workload::{check, fill};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Alloc { order: u32, gfp: usize },
    Free(usize),
    Drain,
}

const GFPS: [Gfp; 5] = [
    GFP_KERNEL,
    GFP_HIGHUSER_MOVABLE,
    GFP_DMA32,
    Gfp::GFP_DMA,
    GFP_ATOMIC,
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..=10, 0usize..5).prop_map(|(order, gfp)| Op::Alloc { order: order.min(if order > 6 { order } else { order % 4 }), gfp }),
        4 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn allocator_matches_model(ops in proptest::collection::vec(op(), 1..160)) {
        let m = boot_mem(96, 1, "");
        let k = &m.kernel;
        let managed = k.totalram_pages();
        m.on_cpu(0, |cpu| {
            let mut held: Vec<(&Page, u32, u64)> = Vec::new();
            let mut ranges: BTreeMap<u64, u64> = BTreeMap::new();
            for (step, op) in ops.iter().enumerate() {
                match *op {
                    Op::Alloc { order, gfp } => {
                        let g = GFPS[gfp];
                        if let Some(p) = k.alloc_pages(cpu, g | Gfp::__GFP_NOWARN, order) {
                            let pfn = k.page_to_pfn(p).0;
                            prop_assert_eq!(pfn % (1 << order), 0, "block not aligned to its order");
                            prop_assert!(p.zonenum() <= g.zone().unwrap(), "zone above the mask's limit");
                            let end = pfn + (1 << order);
                            if let Some((&s, &e)) = ranges.range(..end).next_back() {
                                prop_assert!(e <= pfn || s >= end, "block {:#x}+{} overlaps a held block {:#x}-{:#x}", pfn, order, s, e);
                            }
                            ranges.insert(pfn, end);
                            fill(k, p, order, step as u64);
                            held.push((p, order, step as u64));
                        }
                    }
                    Op::Free(i) if !held.is_empty() => {
                        let (p, o, tag) = held.swap_remove(i % held.len());
                        prop_assert!(check(k, p, o, tag).is_ok(), "bytes of a held block changed");
                        ranges.remove(&k.page_to_pfn(p).0);
                        k.__free_pages(cpu, p, o);
                    }
                    Op::Free(_) => {}
                    Op::Drain => k.drain_local_pages(cpu),
                }
                prop_assert!(k.check_invariants().is_ok(), "{:?}", k.check_invariants());
                let held_pages: u64 = held.iter().map(|b| 1u64 << b.1).sum();
                prop_assert_eq!(free_and_pcp(k) + held_pages, managed);
            }
            for (p, o, tag) in held.drain(..) {
                prop_assert!(check(k, p, o, tag).is_ok());
                k.__free_pages(cpu, p, o);
            }
            k.drain_all_pages(cpu);
            prop_assert_eq!(k.global_free_pages(), managed);
            prop_assert_eq!(k.bad_page_reports(), 0);
            Ok(())
        })?;
    }
}
