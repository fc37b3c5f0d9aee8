//! The stateright model. (Being written.)
