//! A row's values by column name, as uploads, versions and the conflict log carry
//! them: a map kept as one sorted vector. A server holds one upload's entries parsed
//! (up to 10,000, each with an `old` and a `new` row), and a `BTreeMap` spends a
//! 640-byte node on every row of one column; this spends 56 bytes a column. It
//! iterates and serializes in column order, as the `BTreeMap` did, so the wire form is
//! the same.

use std::fmt;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::value::Value;

/// Values by column name, in column order, each column once.
#[derive(Clone, Default, PartialEq)]
pub struct Row(Vec<(String, Value)>);

impl Row {
    pub const fn new() -> Row {
        Row(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, column: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.as_str().cmp(column))
    }

    pub fn get(&self, column: &str) -> Option<&Value> {
        self.find(column).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, column: &str) -> bool {
        self.find(column).is_ok()
    }

    /// Sets `column` to `value`; the value it had, if any.
    pub fn insert(&mut self, column: String, value: Value) -> Option<Value> {
        match self.find(&column) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (column, value));
                None
            }
        }
    }

    pub fn remove(&mut self, column: &str) -> Option<Value> {
        self.find(column).ok().map(|i| self.0.remove(i).1)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &Value)> + ExactSizeIterator {
        self.0.iter().map(|(c, v)| (c, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.0.iter().map(|(c, _)| c)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// Builds from pairs in any order; of a column given twice, the last value counts
    /// (as a `BTreeMap` collected from them would keep).
    fn from_pairs(mut pairs: Vec<(String, Value)>) -> Row {
        sort_keeping_last(&mut pairs);
        Row(pairs)
    }
}

/// Sorts `pairs` by column and keeps, of a column given more than once, its last value,
/// in place.
fn sort_keeping_last(pairs: &mut Vec<(String, Value)>) {
    // A stable sort keeps a repeated column's values in the order they came.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    // `dedup_by` drops the later of two equal neighbours: the later value is moved
    // into the one that stays first.
    pairs.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
}

/// A row's pairs as they are parsed. Repeated columns are dropped whenever the pairs
/// have doubled since the last time, so that a sender repeating one column millions of
/// times (an upload's text may be 32 MB of it) is held at about twice the distinct
/// columns, as a map would hold them once.
struct Collected {
    pairs: Vec<(String, Value)>,
    compact_at: usize,
}

impl Collected {
    const FIRST_COMPACTION: usize = 64;

    fn new(capacity: usize) -> Collected {
        Collected {
            pairs: Vec::with_capacity(capacity),
            compact_at: Self::FIRST_COMPACTION,
        }
    }

    fn push(&mut self, pair: (String, Value)) {
        self.pairs.push(pair);
        if self.pairs.len() >= self.compact_at {
            sort_keeping_last(&mut self.pairs);
            self.compact_at = (2 * self.pairs.len()).max(Self::FIRST_COMPACTION);
        }
    }

    fn into_row(self) -> Row {
        let mut pairs = self.pairs;
        sort_keeping_last(&mut pairs);
        // Moved into room of the exact size and the grown room freed whole: shrunk in
        // place, the freed tails stayed between live rows, and a device's send of
        // 100,000 updates peaked 4 MB higher.
        let mut exact = Vec::with_capacity(pairs.len());
        exact.append(&mut pairs);
        Row(exact)
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Index<&str> for Row {
    type Output = Value;
    fn index(&self, column: &str) -> &Value {
        match self.get(column) {
            Some(v) => v,
            None => panic!("no column {column:?} in the row"),
        }
    }
}

impl Index<&String> for Row {
    type Output = Value;
    fn index(&self, column: &String) -> &Value {
        &self[column.as_str()]
    }
}

impl FromIterator<(String, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(pairs: I) -> Row {
        Row::from_pairs(pairs.into_iter().collect())
    }
}

impl Extend<(String, Value)> for Row {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, pairs: I) {
        for (c, v) in pairs {
            self.insert(c, v);
        }
    }
}

impl IntoIterator for Row {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Row {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a String, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(c, v)| (c, v))
    }
}

impl<const N: usize> From<[(String, Value); N]> for Row {
    fn from(pairs: [(String, Value); N]) -> Row {
        Row::from_pairs(pairs.into())
    }
}

impl From<std::collections::BTreeMap<String, Value>> for Row {
    fn from(map: std::collections::BTreeMap<String, Value>) -> Row {
        // Already in order and each column once.
        Row(map.into_iter().collect())
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (c, v) in &self.0 {
            m.serialize_entry(c, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of column values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                // Size hints come from the sender: trusted only up to a small bound.
                let mut pairs = Collected::new(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_row())
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    fn pairs() -> impl Strategy<Value = Vec<(String, i64)>> {
        proptest::collection::vec(("[a-e]{1,2}", any::<i64>()), 0..12)
    }

    proptest! {
        /// Built, changed and read as a `BTreeMap` would be, and the same JSON both ways.
        #[test]
        fn behaves_as_a_btreemap(start in pairs(), more in pairs(), gone in "[a-e]{1,2}") {
            let to_value = |p: &Vec<(String, i64)>| -> Vec<(String, Value)> {
                p.iter().map(|(c, i)| (c.clone(), Value::Integer(*i))).collect()
            };
            let mut map: BTreeMap<String, Value> = to_value(&start).into_iter().collect();
            let mut row: Row = to_value(&start).into_iter().collect();
            prop_assert_eq!(row.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>());
            for (c, v) in to_value(&more) {
                prop_assert_eq!(row.insert(c.clone(), v.clone()), map.insert(c, v));
            }
            prop_assert_eq!(row.remove(&gone), map.remove(&gone));
            prop_assert_eq!(row.len(), map.len());
            prop_assert_eq!(row.get(&gone), map.get(&gone));
            prop_assert_eq!(row.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>());
            let json = serde_json::to_string(&row).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&map).unwrap());
            let back: Row = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &row);
            prop_assert_eq!(Row::from(map.clone()), row);
        }
    }

    /// A sender repeating a column (an upload's text may be 32 MB of it) is held at a
    /// few pairs while parsing, where all of them were held before: the order of
    /// repeats across compactions still keeps the last value.
    #[test]
    fn a_column_repeated_many_times_is_held_once() {
        let mut pairs = Collected::new(0);
        for i in 0..400_000 {
            let column = if i % 2 == 0 { "a" } else { "b" };
            pairs.push((column.to_string(), Value::Integer(i)));
            assert!(pairs.pairs.len() <= Collected::FIRST_COMPACTION, "{i}");
        }
        let row = pairs.into_row();
        assert_eq!(row["a"], Value::Integer(399_998));
        assert_eq!(row["b"], Value::Integer(399_999));
        // The same through the parser.
        let mut text = String::from("{");
        for i in 0..200_000 {
            text.push_str(&format!(r#""a":{i},"b":{i},"#));
        }
        text.push_str(r#""a":-1}"#);
        let mut de = serde_json::Deserializer::from_str(&text);
        let row = Row::deserialize(&mut de).unwrap();
        assert_eq!(row.len(), 2);
        assert_eq!(row["a"], Value::Integer(-1));
        assert_eq!(row["b"], Value::Integer(199_999));
        assert!(row.0.capacity() <= 2, "{}", row.0.capacity());
    }

    #[test]
    fn a_column_given_twice_keeps_its_last_value_as_a_map_would() {
        let text = r#"{"b": 1, "a": 2, "b": 3}"#;
        let row: Row = serde_json::from_str(text).unwrap();
        let map: BTreeMap<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(
            row.iter().collect::<Vec<_>>(),
            map.iter().collect::<Vec<_>>()
        );
        assert_eq!(row["b"], Value::Integer(3));
    }
}
