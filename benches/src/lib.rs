//! Criterion benchmarks live in `benches/`; end-to-end numbers come from `htex bench`.
