//! [`BoundedMap`]: what authenticating a request looked up, kept in memory with a bound
//! (the accounts of `crate::users::cache`, the verified tokens of `super::tokens`). Past the
//! bound every entry is dropped at once: simpler than finding the oldest, and each entry is
//! cheap to look up again. Each user keeps its own check of whether an entry is still good.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub struct BoundedMap<K, V> {
    most: usize,
    entries: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash, V: Clone> BoundedMap<K, V> {
    /// A map of at most `most` entries.
    pub fn new(most: usize) -> Self {
        Self {
            most,
            entries: Mutex::default(),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.lock().get(key).cloned()
    }

    /// Keeps `value` under `key`, first dropping every entry if the map is full.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.most {
            entries.clear();
        }
        entries.insert(key, value);
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_drops_every_entry_before_the_next() {
        let map = BoundedMap::new(2);
        map.insert("a".to_owned(), 1);
        map.insert("b".to_owned(), 2);
        assert_eq!(
            (map.get("a"), map.get("b"), map.len()),
            (Some(1), Some(2), 2)
        );
        map.insert("b".to_owned(), 3);
        assert_eq!((map.get("a"), map.get("b"), map.len()), (None, Some(3), 1));
        map.remove("b");
        assert!(map.is_empty());
    }
}
