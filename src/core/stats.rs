//! The `stats` JSON snapshot. (Being written.)
