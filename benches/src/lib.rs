//! Criterion benchmark suites for conclave; see `benches/benches/`.
