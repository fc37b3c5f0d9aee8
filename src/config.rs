//! Command-line and environment configuration. (Being written.)
