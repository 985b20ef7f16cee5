//! Drivers that feed arbitrary bytes to the parts of the node that take input from peers:
//! the frame decoder ([`frames`]) and the room core ([`room_core`]). Each asserts its own
//! invariants and panics when one breaks.
//!
//! They run three ways: under libFuzzer (`fuzz/libfuzzer`, see the README), under proptest
//! with random bytes, and over the saved corpus in `fuzz/corpus` (both in `cargo test`).

pub mod frames;
pub mod room_core;
