//! A simulated disk for the fence state file ([`crate::engine::fence::Disk`]),
//! with faults: failed writes (fsync), renames and directory syncs; and a
//! crash, after which a rename not made durable by a directory sync may be
//! lost.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::rng::Rng;
use crate::engine::fence::Disk;

#[derive(Debug)]
pub struct State {
    /// What a reader sees now.
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// What survives a crash for sure.
    durable: BTreeMap<PathBuf, Vec<u8>>,
    rng: Rng,
    /// Failure rate of each operation, per mille.
    pub fail_per_mille: u64,
    pub failures: u64,
    pub writes: u64,
}

#[derive(Clone, Debug)]
pub struct SimDisk(pub Arc<Mutex<State>>);

impl SimDisk {
    pub fn new(rng: Rng, fail_per_mille: u64) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(State {
            files: BTreeMap::new(),
            durable: BTreeMap::new(),
            rng,
            fail_per_mille,
            failures: 0,
            writes: 0,
        })))
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The machine crashed: what was not synced may be lost, or not.
    pub fn crash(&self) {
        let mut s = self.st();
        if s.rng.chance(500) {
            s.files = s.durable.clone();
        } else {
            s.durable = s.files.clone();
        }
    }
}

fn fault(s: &mut State, op: &str) -> io::Result<()> {
    if s.rng.chance(s.fail_per_mille) {
        s.failures += 1;
        return Err(io::Error::other(format!("simulated {op} failure")));
    }
    Ok(())
}

impl Disk for SimDisk {
    fn read(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let s = self.st();
        Ok(s.files
            .get(path)
            .map(|b| b[..b.len().min(limit as usize + 1)].to_vec()))
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.st();
        s.writes += 1;
        if let Err(e) = fault(&mut s, "fsync") {
            // A torn temporary file.
            let torn = bytes[..bytes.len() / 2].to_vec();
            s.files.insert(path.to_path_buf(), torn);
            return Err(e);
        }
        s.files.insert(path.to_path_buf(), bytes.to_vec());
        s.durable.insert(path.to_path_buf(), bytes.to_vec());
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.st().files.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.st();
        fault(&mut s, "rename")?;
        match s.files.remove(from) {
            Some(b) => {
                s.files.insert(to.to_path_buf(), b);
                Ok(())
            }
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.st();
        fault(&mut s, "directory fsync")?;
        s.durable = s.files.clone();
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.st().files.contains_key(path)
    }
}
