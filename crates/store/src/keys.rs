//! Blocks of integer keys reserved for devices, written once for both engines: how
//! many a block holds, when a device's blocks are topped up, and reserved values
//! gathered into blocks. Each engine reserves from the table's own key source
//! (`sqlite/keys.rs`: the AUTOINCREMENT counter; `postgres/keys.rs`: the sequence)
//! and records the blocks per device and table (`fieldsync_key_blocks`,
//! `fieldsync.key_blocks`); uploads claim their inserted keys against them
//! (`UploadTx::claim_key`).

use fieldsync_proto::wire::KeyBlock;

/// Keys in one block: a crew's inserts into one table between two contacts.
pub const KEY_BLOCK_KEYS: i64 = 1000;

/// Whether a device holding `blocks` (its unused parts) gets a new block: when fewer
/// than half a block's keys remain, so the next contact tops it up before it runs out.
pub(crate) fn needs_top_up(blocks: &[KeyBlock], block_keys: i64) -> bool {
    let left: i64 = blocks.iter().map(|b| (b.last - b.next + 1).max(0)).sum();
    left < (block_keys + 1) / 2
}

/// Reserved values (in any order) as runs of consecutive values: the blocks they
/// make. Values a concurrent writer took between them split a run.
pub(crate) fn runs(mut values: Vec<i64>) -> Vec<(i64, i64)> {
    values.sort_unstable();
    values.dedup();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for v in values {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(v) => *last = v,
            _ => out.push((v, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(first: i64, last: i64, next: i64) -> KeyBlock {
        KeyBlock {
            table: "t".into(),
            first,
            last,
            next,
        }
    }

    #[test]
    fn values_gather_into_runs() {
        assert_eq!(runs(vec![]), vec![]);
        assert_eq!(runs(vec![3, 1, 2]), vec![(1, 3)]);
        assert_eq!(runs(vec![1, 2, 4, 5, 9]), vec![(1, 2), (4, 5), (9, 9)]);
        assert_eq!(
            runs(vec![i64::MAX, i64::MAX - 1]),
            vec![(i64::MAX - 1, i64::MAX)]
        );
    }

    #[test]
    fn a_block_is_topped_up_below_half() {
        assert!(needs_top_up(&[], 10));
        assert!(!needs_top_up(&[block(1, 10, 1)], 10));
        assert!(!needs_top_up(&[block(1, 10, 6)], 10));
        assert!(needs_top_up(&[block(1, 10, 7)], 10));
        assert!(needs_top_up(&[block(1, 10, 11)], 10));
        assert!(!needs_top_up(&[block(1, 10, 8), block(20, 22, 20)], 10));
    }
}
