//! Admission by bytes in flight (`http.max_inflight_bytes`): the request-body bytes a node holds
//! at once — being read, proposed or forwarded — are bounded, whatever the number of requests.
//! A request whose body would go over the budget is refused with 503 `overloaded` and
//! `Retry-After` before its bytes are buffered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The node's budget, shared by every HTTP worker.
#[derive(Clone, Debug)]
pub struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

/// Bytes reserved from a [`Budget`]; released when dropped (the request finished, failed or was
/// cancelled by a disconnecting client).
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown with [`Reservation::grow`].
    pub fn empty(&self) -> Reservation {
        Reservation {
            used: Arc::clone(&self.used),
            bytes: 0,
        }
    }

    /// Reserves `bytes` more for `reservation`, or returns false (nothing reserved) when the
    /// budget cannot hold them.
    fn add(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }
}

impl Reservation {
    /// Grows the reservation by `bytes`; false (unchanged) when the budget is exhausted.
    pub fn grow(&mut self, budget: &Budget, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        if budget.add(bytes) {
            self.bytes += bytes;
            true
        } else {
            false
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding7_reservations_are_bounded_and_released() {
        let budget = Budget::new(100);
        let mut a = budget.empty();
        assert!(a.grow(&budget, 60));
        let mut b = budget.empty();
        assert!(!b.grow(&budget, 41), "over the budget");
        assert_eq!(b.bytes(), 0);
        assert!(b.grow(&budget, 40));
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        let mut c = budget.empty();
        assert!(!c.grow(&budget, usize::MAX), "no overflow");
        assert_eq!(budget.in_use(), 0);
    }
}
