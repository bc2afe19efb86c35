//! Per-node monotonic clocks with a bounded rate error, so that lease reads are exercised under
//! the clock skew the configuration claims to tolerate (thesis §6.4.1).

/// Parts per million: the unit of a clock's rate error.
const PPM: i128 = 1_000_000;

/// A node's monotonic clock: `local = offset + global * (1 + ppm / 10^6)`.
///
/// Every input the simulator gives a core is on that core's own clock, and every deadline the
/// core asks for ([`conclave_core::raft::Action::SetTimer`]) is converted back to global time with
/// [`NodeClock::to_global`], so a fast clock fires its timers early in real terms and a slow
/// one late, exactly as drift would on real hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeClock {
    /// The local reading at global time 0 (clocks of different nodes are not synchronised).
    pub offset: u64,
    /// Rate error in parts per million, `|ppm| < 10^6`.
    pub ppm: i64,
}

impl NodeClock {
    /// The local reading at global time `global`.
    pub fn local(&self, global: u64) -> u64 {
        let g = i128::from(global);
        let scaled = g + g * i128::from(self.ppm) / PPM;
        // `|ppm| < 10^6` keeps `scaled` non-negative and non-decreasing in `global`.
        self.offset + u64::try_from(scaled.max(0)).unwrap_or(u64::MAX)
    }

    /// The earliest global time at which the local clock reads at least `at` (never earlier
    /// than `not_before`).
    pub fn to_global(&self, at: u64, not_before: u64) -> u64 {
        if at <= self.local(not_before) {
            return not_before;
        }
        let want = i128::from(at - self.offset);
        let estimate = want * PPM / (PPM + i128::from(self.ppm));
        let mut g = u64::try_from(estimate.max(0))
            .unwrap_or(u64::MAX)
            .max(not_before);
        // Integer rounding may leave the estimate one or two ms off in either direction.
        while g > not_before && self.local(g - 1) >= at {
            g -= 1;
        }
        while self.local(g) < at {
            g += 1;
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_global_inverts_local() {
        for ppm in [-45_000, -1, 0, 7, 45_000] {
            let c = NodeClock {
                offset: 12_345,
                ppm,
            };
            for g in [0u64, 1, 99, 1_000, 123_457] {
                let at = c.local(g);
                let back = c.to_global(at, 0);
                assert!(c.local(back) >= at, "ppm {ppm} g {g}");
                assert!(back == 0 || c.local(back - 1) < at, "ppm {ppm} g {g}");
            }
            assert_eq!(c.to_global(0, 50), 50);
        }
    }

    #[test]
    fn rates_differ() {
        let fast = NodeClock {
            offset: 0,
            ppm: 45_000,
        };
        let slow = NodeClock {
            offset: 0,
            ppm: -45_000,
        };
        assert_eq!(fast.local(1_000), 1_045);
        assert_eq!(slow.local(1_000), 955);
    }
}
