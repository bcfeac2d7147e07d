//! Maps bounded in bytes, for the per-backend caches of the extension. Every entry is charged
//! what it takes: its slot in the table (key, value and charge, counted twice for the table's
//! spare capacity) and the heap it owns, as the caller estimates it (`json_bytes`, `str_bytes`,
//! `Policy::heap_bytes`). An insert that would pass the limit empties the map first: what is
//! asked next is read again. A count bound would let long names or large overrides take many
//! times the memory it allows; a byte bound does not, whatever callers send.

use serde_json::{Map, Value};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// What an `Rc` adds to what it holds (its two counts), for the callers' estimates.
pub const RC_BYTES: usize = 2 * std::mem::size_of::<usize>();

/// Bytes a map spends per entry beyond key, value and charge (control byte, spare capacity).
fn slot_bytes<K, V>() -> usize {
    2 * std::mem::size_of::<(K, (V, usize))>() + 1
}

pub struct BoundedMap<K, V, S = std::collections::hash_map::RandomState> {
    map: HashMap<K, (V, usize), S>,
    bytes: usize,
    limit: usize,
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> BoundedMap<K, V, S> {
    /// An empty map that holds at most `limit` bytes of entries.
    pub fn new(limit: usize) -> Self {
        BoundedMap {
            map: HashMap::default(),
            bytes: 0,
            limit,
        }
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k).map(|(v, _)| v)
    }

    /// Inserts (or replaces) `k`, charged `heap` bytes beyond its slot. Empties the map first when
    /// the entry would not fit beside what it holds; an entry larger than the limit by itself is
    /// not kept at all (false).
    pub fn insert(&mut self, k: K, v: V, heap: usize) -> bool {
        let cost = heap.saturating_add(slot_bytes::<K, V>());
        if let Some((_, old)) = self.map.remove(&k) {
            self.bytes -= old;
        }
        if cost > self.limit {
            return false;
        }
        if self.bytes + cost > self.limit {
            self.clear();
        }
        self.bytes += cost;
        self.map.insert(k, (v, cost));
        true
    }

    /// Empties the map and gives its table back.
    pub fn clear(&mut self) {
        self.map = HashMap::default();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged to the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Heap bytes a string owns.
pub fn str_bytes(s: &str) -> usize {
    s.len()
}

const VALUE: usize = std::mem::size_of::<Value>();
/// A map entry: its key string, its value and the tree's links.
const ENTRY: usize = std::mem::size_of::<String>() + VALUE + 2 * std::mem::size_of::<usize>();

/// Heap bytes a JSON value owns beyond its own `Value` (its strings, arrays and maps, with a
/// map's per-entry overhead), approximately. Iterative: values may nest deeply.
pub fn json_bytes(v: &Value) -> usize {
    json_tree_bytes(vec![v])
}

/// Heap bytes a JSON object owns, as `json_bytes` counts them.
pub fn json_map_bytes(m: &Map<String, Value>) -> usize {
    m.keys().map(|k| ENTRY + k.len()).sum::<usize>() + json_tree_bytes(m.values().collect())
}

fn json_tree_bytes(mut stack: Vec<&Value>) -> usize {
    let mut total = 0usize;
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => total += s.len(),
            Value::Array(a) => {
                total += a.len() * VALUE;
                stack.extend(a.iter());
            }
            Value::Object(m) => {
                for (k, x) in m {
                    total += ENTRY + k.len();
                    stack.push(x);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_map_never_holds_more_than_its_limit() {
        let mut m: BoundedMap<u64, u64> = BoundedMap::new(10_000);
        for i in 0..100_000u64 {
            assert!(m.insert(i, i, (i % 97) as usize));
            assert!(m.bytes() <= 10_000, "{} bytes after {i}", m.bytes());
            assert_eq!(m.get(&i), Some(&i), "the entry just inserted is there");
        }
        assert!(m.len() > 10, "it held many entries, not one at a time");
    }

    #[test]
    fn a_replaced_entry_is_charged_once() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(1_000_000);
        m.insert(1, 1, 100);
        let once = m.bytes();
        for _ in 0..1000 {
            m.insert(1, 2, 100);
        }
        assert_eq!(m.bytes(), once);
        assert_eq!(m.get(&1), Some(&2));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn an_entry_larger_than_the_limit_is_not_kept_and_the_rest_stays() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(1_000);
        m.insert(1, 1, 10);
        assert!(!m.insert(2, 2, 5_000));
        assert_eq!(m.get(&2), None);
        assert_eq!(m.get(&1), Some(&1));
    }

    #[test]
    fn the_map_empties_when_an_entry_does_not_fit() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(1_000);
        let mut i = 0;
        while m.insert(i, i, 100) && m.len() as u32 == i + 1 {
            i += 1;
        }
        assert_eq!(m.len(), 1, "emptied, then holds the new entry");
        assert_eq!(m.get(&i), Some(&i));
        m.clear();
        assert_eq!((m.len(), m.bytes()), (0, 0));
    }

    #[test]
    fn json_bytes_grows_with_what_a_value_holds() {
        let small = json_bytes(&json!({"a": 1}));
        let long_key = json_bytes(&json!({"a".repeat(1000): 1}));
        let long_str = json_bytes(&json!({"a": "x".repeat(1000)}));
        let many = json_bytes(&json!((0..1000).collect::<Vec<_>>()));
        assert!(long_key >= small + 999 && long_str >= small + 1000);
        assert!(many >= 1000 * std::mem::size_of::<Value>());
        assert_eq!(json_bytes(&json!(null)), 0);
        let mut deep = json!(1);
        for _ in 0..1000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(json_bytes(&deep), 1000 * std::mem::size_of::<Value>());
    }
}
