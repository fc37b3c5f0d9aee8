//! Arbitrary bytes through the request and reply decoders: never a panic,
//! every result consumes a sane number of bytes, and every request decoded
//! re-encodes to bytes that decode to the same request.
#![no_main]

use dflockd::wire::{
    decode_reply, decode_request, encode_reply, encode_request, Decoded, ReplyDecoded,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match decode_request(rest) {
            Decoded::NeedMore => break,
            Decoded::Request { req, consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                let mut bytes = Vec::new();
                encode_request(&req, &mut bytes);
                match decode_request(&bytes) {
                    Decoded::Request {
                        req: again,
                        consumed: n,
                    } => {
                        assert_eq!(again, req);
                        assert_eq!(n, bytes.len());
                    }
                    other => panic!("re-encoded {req:?} decodes as {other:?}"),
                }
                rest = &rest[consumed..];
            }
            Decoded::Invalid { consumed, .. } => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
            }
        }
    }
    let mut rest = data;
    loop {
        match decode_reply(rest) {
            ReplyDecoded::NeedMore => break,
            ReplyDecoded::Reply { reply, consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                let mut bytes = Vec::new();
                encode_reply(&reply, &mut bytes);
                match decode_reply(&bytes) {
                    ReplyDecoded::Reply {
                        reply: again,
                        consumed: n,
                    } => {
                        assert_eq!(again, reply);
                        assert_eq!(n, bytes.len());
                    }
                    other => panic!("re-encoded {reply:?} decodes as {other:?}"),
                }
                rest = &rest[consumed..];
            }
            ReplyDecoded::Push { consumed, .. } | ReplyDecoded::Invalid { consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                rest = &rest[consumed..];
            }
        }
    }
});
