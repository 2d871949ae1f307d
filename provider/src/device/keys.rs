//! The memory-region key table: keys in rxe's shape, an index in the upper
//! 24 bits and a random 8-bit key in the low byte, so that a key cannot be
//! guessed from the order of registrations.

use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Indices are 24 bits; 0 is never used, so no key is 0.
const INDEX_LIMIT: u32 = 1 << 24;

/// Registered regions by key index.
pub(crate) struct KeyTable<T: ?Sized> {
    /// A fast integer hash: keys are ours (only lookups take a peer's
    /// value), so collisions cannot be forced.
    by_index: FxHashMap<u32, Arc<T>>,
    next_index: u32,
    last_low: u8,
}

impl<T: ?Sized> Default for KeyTable<T> {
    fn default() -> Self {
        KeyTable {
            by_index: FxHashMap::default(),
            next_index: 1,
            last_low: 0,
        }
    }
}

impl<T: ?Sized> KeyTable<T> {
    /// Registers the value `make` builds from its new key, and returns it.
    /// The index is the next one not in use (cyclically); the low byte is
    /// random and differs from the previous key's, as rxe's
    /// `rxe_get_next_key` does. `None` when all 2^24 - 1 indices are taken.
    pub(crate) fn insert(&mut self, make: impl FnOnce(u32) -> Arc<T>) -> Option<Arc<T>> {
        let index = self.free_index()?;
        let low = loop {
            let low: u8 = rand::random();
            if low != self.last_low {
                break low;
            }
        };
        self.last_low = low;
        let value = make(index << 8 | u32::from(low));
        self.by_index.insert(index, Arc::clone(&value));
        Some(value)
    }

    /// The value registered under exactly `key` (index and low byte).
    pub(crate) fn get(&self, key: u32, key_of: impl Fn(&T) -> u32) -> Option<&Arc<T>> {
        self.by_index
            .get(&(key >> 8))
            .filter(|value| key_of(value) == key)
    }

    /// Removes the value registered under exactly `key`.
    pub(crate) fn remove(&mut self, key: u32, key_of: impl Fn(&T) -> u32) -> Option<Arc<T>> {
        self.get(key, &key_of)?;
        self.by_index.remove(&(key >> 8))
    }

    fn free_index(&mut self) -> Option<u32> {
        if self.by_index.len() >= (INDEX_LIMIT - 1) as usize {
            return None;
        }
        loop {
            let index = self.next_index;
            self.next_index = if index + 1 == INDEX_LIMIT {
                1
            } else {
                index + 1
            };
            if !self.by_index.contains_key(&index) {
                return Some(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(k: &u32) -> u32 {
        *k
    }

    #[test]
    fn keys_carry_a_random_low_byte_that_changes_every_registration() {
        let mut table = KeyTable::<u32>::default();
        let mut lows = Vec::new();
        let mut previous = None;
        for _ in 0..64 {
            let key = *table.insert(Arc::new).unwrap();
            assert_ne!(Some(key & 0xff), previous, "a new low byte every time");
            assert!(table.get(key, key_of).is_some());
            assert!(table.get(key ^ 1, key_of).is_none(), "the low byte counts");
            assert!(table.remove(key ^ 0x80, key_of).is_none());
            assert_eq!(table.remove(key, key_of).as_deref(), Some(&key));
            lows.push(key & 0xff);
            previous = Some(key & 0xff);
        }
        lows.sort_unstable();
        lows.dedup();
        assert!(lows.len() > 8, "low bytes are drawn at random: {lows:?}");
    }

    #[test]
    fn indices_in_use_are_skipped_when_the_counter_wraps() {
        let mut table = KeyTable::<u32>::default();
        let a = *table.insert(Arc::new).unwrap();
        let b = *table.insert(Arc::new).unwrap();
        assert_eq!((a >> 8, b >> 8), (1, 2));
        table.next_index = INDEX_LIMIT - 1;
        let c = *table.insert(Arc::new).unwrap();
        let d = *table.insert(Arc::new).unwrap();
        assert_eq!((c >> 8, d >> 8), (INDEX_LIMIT - 1, 3), "0, 1 and 2 skipped");
    }
}
