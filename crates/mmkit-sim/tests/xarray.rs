//! The page cache's radix tree against a BTreeMap model, with its invariants (counts,
//! shrinking, no empty nodes) checked after every step, over sparse and dense indices.

use mmkit::mm::xarray::XArray;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64),
    Remove(u64),
    Retain(u64),
}

fn index() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..200, 0u64..100_000, any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn xarray_matches_a_map(ops in proptest::collection::vec(prop_oneof![
        (index(), any::<u64>()).prop_map(|(i, v)| Op::Insert(i, v)),
        index().prop_map(Op::Remove),
        (1u64..7).prop_map(Op::Retain),
    ], 1..120)) {
        let mut xa = XArray::default();
        let mut model = BTreeMap::new();
        for op in &ops {
            match *op {
                Op::Insert(i, v) => prop_assert_eq!(xa.insert(i, v), model.insert(i, v)),
                Op::Remove(i) => prop_assert_eq!(xa.remove(i), model.remove(&i)),
                Op::Retain(m) => {
                    xa.retain(|i, _| i % m != 0);
                    model.retain(|i, _| i % m != 0);
                }
            }
            prop_assert!(xa.check().is_ok(), "{:?} after {:?}", xa.check(), op);
            prop_assert_eq!(xa.len(), model.len());
            let all: Vec<(u64, u64)> = xa.iter().collect();
            let want: Vec<(u64, u64)> = model.iter().map(|(&i, &v)| (i, v)).collect();
            prop_assert_eq!(all, want);
        }
        for (&i, &v) in &model {
            prop_assert_eq!(xa.get(i), Some(v));
        }
        prop_assert_eq!(xa.get(u64::MAX - 1).is_some(), model.contains_key(&(u64::MAX - 1)));
    }
}
