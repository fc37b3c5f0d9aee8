//! The executable spec. (Being written.)
