//! The differential comparator (`dflockd::differential::run`) over
//! scenarios built by libFuzzer: the production core and the reference
//! model must give the same replies, closes, deadlines and stats at every
//! step, a second core with its timer on time the same outputs, and the
//! model's client-side monitor must find the properties of semantics §11
//! kept. The proptest in `tests/differential.rs` drives the same function.
#![no_main]

use dflockd::differential::{run, Scenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: Scenario| {
    if s.steps.len() > 200 {
        return;
    }
    if let Err(d) = run(&s) {
        panic!("core and model disagree: {d}\n{s:#?}");
    }
});
