//! The smol driver. (Being written.)

pub mod fence_file;
