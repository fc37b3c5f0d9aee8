//! Images (what a cluster member's snapshot holds of its core): a core
//! rebuilt from the image of another holds the same holders, queues and
//! fences and answers every later input exactly as its source does; an
//! image that breaks a resource's limit is refused.

use super::*;
use crate::core::CoreImage;

/// Full locks and semaphores, a queue behind each, and a connection holding
/// several keys: the state a snapshot must carry whole.
fn busy() -> H {
    check(
        cfg(),
        3,
        vec![
            (0, c(1, l("a", 0, 10)), "c1: ok #1 10"),
            (0, c(1, sl("s", 0, 2, 20)), "c1: ok #2 20"),
            (0, c(2, sl("s", 0, 2, 20)), "c2: ok #3 20"),
            (0, c(3, l("b", 0, 30)), "c3: ok #4 30"),
            (1, c(2, l("a", 60, 10)), ""),
            (1, c(3, sl("s", 60, 2, 20)), ""),
        ],
    )
}

fn holders(image: &CoreImage) -> usize {
    let v = serde_json::to_value(image).expect("an image serializes");
    v["holders"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_core_rebuilt_from_an_image_continues_exactly_as_its_source() {
    let mut source = busy();
    let image = source.core.image();
    assert_eq!(holders(&image), 4, "every live holder is in the image");
    let restored = Core::from_image(cfg(), image.clone()).expect("a valid image restores");
    assert_eq!(restored.image(), image, "the round trip is exact");
    let mut copy = H {
        core: restored,
        t: 1,
    };
    // The same inputs give the same effects on both: hand-offs to the
    // queued waiters, then expiry of what is left.
    for (t, input, expect) in [
        (2, c(1, r("a", 1)), "c1: ok | c2: ok #5 10"),
        (3, c(2, sr("s", 3)), "c2: ok | c3: ok #6 20"),
        (30_000, In::Tick, ""),
    ] {
        let a = show(&source.apply(t, input.clone()));
        let b = show(&copy.apply(t, input));
        assert_eq!(a, b, "t={t}");
        if !expect.is_empty() {
            assert_eq!(a, expect, "t={t}");
        }
    }
    assert_eq!(copy.core.image(), source.core.image());
}

#[test]
fn an_image_whose_holders_exceed_a_limit_is_refused() {
    let h = busy();
    let mut v = serde_json::to_value(h.core.image()).expect("an image serializes");
    // Lower the semaphore's limit below its two holders.
    for r in v["resources"].as_array_mut().expect("resources").iter_mut() {
        if r["limit"] == 2 {
            r["limit"] = 1.into();
        }
    }
    let bad: CoreImage = serde_json::from_value(v).expect("still well-formed");
    assert!(Core::from_image(cfg(), bad).is_err());
}

#[test]
fn an_image_keeps_what_the_core_remembers_between_inputs() {
    // The grant that answered c2's blocked request (remembered until c2's
    // next input, to settle a cancel that races it) and an evicted slow
    // consumer are state too: a restored core must know both.
    let mut h = busy();
    h.apply(2, c(1, r("a", 1)));
    h.apply(2, In::Connect);
    h.apply(
        2,
        c(
            4,
            Request::Listen {
                pattern: key("ch"),
                group: None,
            },
        ),
    );
    let signal = || Request::Signal {
        channel: key("ch"),
        payload: b"p"[..].into(),
    };
    while h.core.outstanding_pushes(ConnId(4)) < super::super::PUSH_QUEUE_FRAMES {
        h.apply(2, c(1, signal()));
    }
    assert!(show(&h.apply(2, c(1, signal()))).contains("c4: close (slow)"));
    let image = h.core.image();
    let restored = Core::from_image(cfg(), image.clone()).expect("a valid image restores");
    assert_eq!(restored.image(), image, "the round trip is exact");
    let mut copy = H {
        core: restored,
        t: 2,
    };
    for input in [In::Cancel(2), c(1, signal())] {
        assert_eq!(
            show(&h.apply(3, input.clone())),
            show(&copy.apply(3, input))
        );
    }
}
