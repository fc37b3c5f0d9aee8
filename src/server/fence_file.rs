//! Placeholder; replaced by the fence-file branch.
use std::path::Path;
pub const FENCE_RANGE: u64 = 1 << 20;
#[derive(Debug)]
pub struct FenceFileError(String);
impl std::fmt::Display for FenceFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
pub struct FenceFile;
impl FenceFile {
    pub fn open(_p: &Path) -> Result<(FenceFile, u64), FenceFileError> {
        Err(FenceFileError("unimplemented".into()))
    }
    pub fn persist(&mut self, _c: u64) -> Result<(), FenceFileError> {
        Ok(())
    }
}
pub fn startup_fence(p: u64, w: u64) -> (u64, u64) {
    let s = p.max(w);
    (s, s + FENCE_RANGE)
}
