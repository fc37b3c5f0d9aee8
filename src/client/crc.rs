//! CRC-32 (IEEE 802.3, the zlib/`hash/crc32` one) and the key-to-server
//! sharding every upstream client uses: `crc32(key) % servers`.
//!
//! Reflected polynomial 0xEDB88320, initial value and final XOR 0xFFFFFFFF.
//! The table is built at compile time.

const POLY: u32 = 0xEDB8_8320;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32/IEEE of `bytes` (equal to Python's `zlib.crc32`, Go's
/// `crc32.ChecksumIEEE`).
///
/// ```
/// assert_eq!(dflockd::client::crc32(b"123456789"), 0xCBF4_3926);
/// ```
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// The index of the server that owns `key` among `n` servers:
/// `crc32(key) % n`, as upstream's Go, Python and TypeScript clients.
///
/// # Panics
/// If `n` is 0.
pub fn shard(key: &[u8], n: usize) -> usize {
    assert!(n > 0, "shard: empty server list");
    (crc32(key) as usize) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"a"), 0xE8B7_BE43);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn sharding() {
        assert_eq!(shard(b"123456789", 1), 0);
        assert_eq!(shard(b"123456789", 7), (0xCBF4_3926u32 % 7) as usize);
        assert_eq!(shard(b"a", 3), (0xE8B7_BE43u32 % 3) as usize);
    }
}
