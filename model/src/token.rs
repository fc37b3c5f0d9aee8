//! Fencing tokens (§6, D7): 16 lowercase hex digits of the fence, then 16
//! of `SipHash-2-4(salt_key, fence)`. The salt is a keyed hash rather than
//! randomness so the model and the core issue byte-identical tokens from
//! the same configuration.

use std::hash::Hasher;

/// The salt half of the token with fence `fence`: SipHash-2-4 keyed with
/// `(key[0], key[1])` over the fence written as one `u64`.
pub fn salt(key: [u64; 2], fence: u64) -> u64 {
    let mut h = siphasher::sip::SipHasher24::new_with_keys(key[0], key[1]);
    h.write_u64(fence);
    h.finish()
}

/// The token text for `fence`, exactly as it appears on the wire.
pub fn token_text(key: [u64; 2], fence: u64) -> String {
    format!("{:016x}{:016x}", fence, salt(key, fence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_32_lowercase_hex_and_starts_with_the_fence() {
        let t = token_text([1, 2], 0x1234);
        assert_eq!(t.len(), 32);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(t.starts_with("0000000000001234"));
        assert_eq!(&t[16..], format!("{:016x}", salt([1, 2], 0x1234)));
    }

    #[test]
    fn salt_depends_on_key_and_fence() {
        assert_ne!(salt([0, 0], 1), salt([0, 0], 2));
        assert_ne!(salt([0, 0], 1), salt([0, 1], 1));
    }

    #[test]
    fn tokens_sort_in_fence_order() {
        let a = token_text([7, 9], 0xff);
        let b = token_text([7, 9], 0x100);
        assert!(a < b);
    }
}
