//! Runnable examples of conclave's public APIs; see `examples/examples/`.
