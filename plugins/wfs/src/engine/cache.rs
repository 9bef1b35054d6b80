//! A bounded cache of verified blocks (file data, or decoded tree nodes): two generations
//! (hot and cold); a hit in the cold one moves the block back to the hot one, and when the
//! hot one is full the cold one is dropped. Memory stays under the configured number of
//! blocks.

use std::collections::HashMap;
use std::sync::Arc;

/// Cached data blocks by block number.
pub type BlockCache = Cache<Arc<[u8]>>;

/// Cached values by block number.
pub struct Cache<T> {
    hot: HashMap<u64, T>,
    cold: HashMap<u64, T>,
    capacity: usize,
}

impl<T: Clone> Cache<T> {
    /// A cache of at most `capacity` blocks (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Cache { hot: HashMap::new(), cold: HashMap::new(), capacity }
    }
    /// A cached block.
    pub fn get(&mut self, block: u64) -> Option<T> {
        if let Some(b) = self.hot.get(&block) {
            return Some(b.clone());
        }
        let b = self.cold.remove(&block)?;
        self.insert(block, b.clone());
        Some(b)
    }
    /// Caches a block.
    pub fn insert(&mut self, block: u64, data: T) {
        if self.capacity == 0 {
            return;
        }
        if self.hot.len() >= self.capacity.div_ceil(2) {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.cold.remove(&block);
        self.hot.insert(block, data);
    }
    /// Forgets a block (it is being rewritten or freed).
    pub fn remove(&mut self, block: u64) {
        self.hot.remove(&block);
        self.cold.remove(&block);
    }
    /// The most blocks it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Blocks held.
    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_recent_blocks() {
        let mut c = BlockCache::new(10);
        for i in 0..100u64 {
            c.insert(i, Arc::from(vec![i as u8; 4]));
            assert!(c.len() <= 10);
        }
        assert_eq!(c.get(99).unwrap()[0], 99);
        assert!(c.get(0).is_none());
    }
}
