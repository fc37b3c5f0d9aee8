//! Hashers for the core's maps.
//!
//! Two kinds of keys reach a hash map here, and they need different hashers:
//! internal integer ids (fences, arrival numbers, connection and resource
//! ids) are allocated by the core itself, so a fast multiplicative hash is
//! safe; keys chosen by peers (lock and semaphore names) get SipHash with a
//! secret key, so that no client can aim many keys at one bucket. The core
//! draws no randomness: the secret comes in through the configuration.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Multiplicative hasher for internal integer ids (never peer-chosen).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub type IdBuild = BuildHasherDefault<IdHasher>;

/// SipHash-1-3 with a secret key for peer-chosen keys (HashDoS resistance
/// without the core drawing randomness).
#[derive(Clone)]
pub struct KeyBuild(pub [u64; 2]);

impl BuildHasher for KeyBuild {
    type Hasher = siphasher::sip::SipHasher13;
    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::Hash;

    fn hashes<T: Hash>(b: &impl BuildHasher, items: impl Iterator<Item = T>) -> usize {
        items.map(|x| b.hash_one(x)).collect::<HashSet<u64>>().len()
    }

    /// Distinct ids hash apart whatever their width (the core keys maps by
    /// u64 and u32 ids, and by pairs), so its maps never degrade to lists.
    #[test]
    fn ids_of_every_width_hash_apart() {
        let b = IdBuild::default();
        assert_eq!(hashes(&b, 0..1000u64), 1000);
        assert_eq!(hashes(&b, 0..1000u32), 1000);
        assert_eq!(hashes(&b, (0..1000u64).map(|i| (i, 7u32))), 1000);
        assert_eq!(
            hashes(&b, (0..1000usize).map(|i| [i as u8, (i >> 8) as u8])),
            1000
        );
    }

    /// Peer-chosen keys hash with the configured secret: two secrets give
    /// unrelated hashes (HashDoS resistance needs the secret to matter).
    #[test]
    fn key_hashes_depend_on_the_secret() {
        let (a, b) = (KeyBuild([1, 2]), KeyBuild([3, 4]));
        assert_eq!(a.hash_one(b"key"), KeyBuild([1, 2]).hash_one(b"key"));
        assert_ne!(a.hash_one(b"key"), b.hash_one(b"key"));
        assert_ne!(
            a.hash_one(b"key"),
            KeyBuild([0, 0]).hash_one(b"key"),
            "the secret is used"
        );
    }
}
