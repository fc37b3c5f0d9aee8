//! The smol driver. (Being written.)
