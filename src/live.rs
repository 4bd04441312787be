//! A value in force that a reload replaces whole: readers take a snapshot
//! (an `Arc`) and use it to the end of what they judge, so nothing is
//! judged by a mix of the old value and the new one.

use std::sync::{Arc, RwLock};

/// The value in force, shared by everyone who reads it.
#[derive(Debug)]
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(Arc::clone(&self.0))
    }
}

impl<T> Live<T> {
    pub fn new(value: Arc<T>) -> Live<T> {
        Live(Arc::new(RwLock::new(value)))
    }

    /// A snapshot of the value in force now.
    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `value` in force; snapshots taken before keep the old one.
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_keeps_its_value_across_a_swap() {
        let live = Live::new(Arc::new(1));
        let before = live.get();
        live.clone().set(Arc::new(2));
        assert_eq!((*before, *live.get()), (1, 2));
    }
}
