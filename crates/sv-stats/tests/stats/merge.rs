//! Merging partial accumulators in any grouping equals one sequential pass.

use proptest::prelude::*;
use sv_stats::Accumulator;

fn image(side: u32) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), (side * side * 3) as usize)
}

fn case() -> impl Strategy<Value = (u32, Vec<Vec<u8>>, Vec<usize>, Vec<usize>)> {
    (1u32..=9).prop_flat_map(|side| {
        (
            Just(side),
            prop::collection::vec(image(side), 0..12),
            prop::collection::vec(0usize..100, 0..12),
            prop::collection::vec(0usize..100, 0..12),
        )
    })
}

proptest! {
    #[test]
    fn any_grouping_equals_one_pass((side, images, cuts, order) in case()) {
        let mut seq = Accumulator::new(side).unwrap();
        for img in &images {
            seq.add_image(img).unwrap();
        }
        // Split into contiguous groups at the drawn cut points.
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (images.len() + 1)).collect();
        bounds.push(0);
        bounds.push(images.len());
        bounds.sort_unstable();
        let mut parts: Vec<Accumulator> = bounds
            .windows(2)
            .map(|w| {
                let mut a = Accumulator::new(side).unwrap();
                for img in &images[w[0]..w[1]] {
                    a.add_image(img).unwrap();
                }
                a
            })
            .collect();
        // Merge pairs in a drawn order (a random merge tree) until one is left.
        let mut pick = order.into_iter().cycle();
        while parts.len() > 1 {
            let i = pick.next().unwrap_or(0) % (parts.len() - 1);
            let right = parts.remove(i + 1);
            parts[i].merge(&right).unwrap();
        }
        let merged = parts.pop().unwrap();
        prop_assert_eq!(merged.totals(), seq.totals());
        prop_assert_eq!(merged.element_sums(), seq.element_sums());
        prop_assert_eq!(merged.mean_image_chw(), seq.mean_image_chw());
    }
}

#[test]
fn merging_across_the_lane_flush_is_exact() {
    // 300 images in one accumulator (its u16 lanes flush at 257) against 3 merged.
    let side = 3;
    let imgs: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            (0..27u32)
                .map(|k| ((i * 7 + k * 13) % 256) as u8 | 0x80)
                .collect()
        })
        .collect();
    let mut one = Accumulator::new(side).unwrap();
    let mut parts = [
        Accumulator::new(side).unwrap(),
        Accumulator::new(side).unwrap(),
        Accumulator::new(side).unwrap(),
    ];
    for (i, img) in imgs.iter().enumerate() {
        one.add_image(img).unwrap();
        parts[i * 3 / imgs.len()].add_image(img).unwrap();
    }
    let [mut a, b, c] = parts;
    a.merge(&b).unwrap();
    a.merge(&c).unwrap();
    assert_eq!(a.totals(), one.totals());
    assert_eq!(a.element_sums(), one.element_sums());
}
