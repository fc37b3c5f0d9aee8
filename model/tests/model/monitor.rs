//! The client-side monitor of §11 (`dflockd_model::monitor`): each property
//! it reports is shown to fire on a deliberately broken machine, and the
//! same session on the specification fires nothing. (The differential
//! tests run the monitor over the production core on every scenario.)

use std::collections::BTreeSet;

use dflockd_model::checker::{ALWAYS, EVENTUALLY};
use dflockd_model::monitor::{Monitor, PROPERTIES};
use dflockd_model::{Bug, Config, Machine, Op, Space};

/// A machine driven as the monitor needs: before every input its timer
/// fires at each deadline on time, so every output is seen at its instant.
struct Watched {
    m: Machine,
    mon: Monitor,
}

impl Watched {
    fn new(bug: Bug) -> Watched {
        let cfg = Config::default();
        Watched {
            mon: Monitor::new(cfg.auto_release_on_disconnect),
            m: Machine::with_bug(cfg, 0, bug),
        }
    }

    /// The timer fires at every deadline up to `t`, then at `t`.
    fn at(&mut self, t: u64) {
        while let Some(d) = self.m.next_deadline().filter(|d| *d < t) {
            let out = self.m.advance(d);
            self.mon.outputs(d, &out);
        }
        let out = self.m.advance(t);
        self.mon.outputs(t, &out);
    }

    fn connect(&mut self) -> u64 {
        let c = self.m.connect(0);
        self.mon.connect(c);
        c
    }

    fn send(&mut self, t: u64, conn: u64, op: Op) {
        self.at(t);
        self.mon.request(conn, &op);
        let out = self.m.handle(t, conn, op);
        self.mon.outputs(t, &out);
    }

    fn bye(&mut self, t: u64, conn: u64) {
        self.at(t);
        self.mon.disconnect(t, conn);
        let out = self.m.disconnect(t, conn);
        self.mon.outputs(t, &out);
    }

    /// The token of the last grant, as a client would send it back.
    fn token(&self) -> Vec<u8> {
        let fence = self.m.last_fence();
        dflockd_model::token::token_text([0, 0], fence).into_bytes()
    }
}

fn l(space: Space, key: &str, timeout_s: u64, limit: u64, lease_s: u64) -> Op {
    Op::Acquire {
        space,
        key: key.into(),
        timeout_s,
        limit,
        lease_s: Some(lease_s),
    }
}

fn lock(timeout_s: u64, lease_s: u64) -> Op {
    l(Space::Lock, "a", timeout_s, 1, lease_s)
}

fn r(token: Vec<u8>) -> Op {
    Op::Release {
        space: Space::Lock,
        key: b"a".to_vec(),
        token,
    }
}

/// Runs `session` on the specification (nothing may fire) and on `bug`
/// (`property` must fire).
fn fires(bug: Bug, property: &str, session: fn(&mut Watched)) {
    let mut good = Watched::new(Bug::None);
    session(&mut good);
    assert_eq!(good.mon.violation(), None, "on the specification");
    let mut bad = Watched::new(bug);
    session(&mut bad);
    let v = bad
        .mon
        .violation()
        .unwrap_or_else(|| panic!("{bug:?} not seen"));
    assert_eq!(v.property, property, "{v:?}");
}

macro_rules! fires {
    ($($name:ident: $bug:ident fires $property:literal, $session:expr;)*) => {
        $(
            #[test]
            fn $name() {
                fires(Bug::$bug, $property, $session);
            }
        )*
        /// Every property the monitor reports fires in some test above.
        #[test]
        fn every_property_fires_somewhere() {
            let fired: BTreeSet<&str> = [$($property),*].into();
            let all: BTreeSet<&str> = PROPERTIES.into();
            assert_eq!(fired, all);
        }
    };
}

fires! {
    double_grant_breaks_mutual_exclusion: DoubleGrant fires "mutual exclusion", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, lock(0, 5));
        w.send(0, b, lock(0, 5));
    };
    double_grant_breaks_the_semaphore_limit: DoubleGrant fires "semaphore within limit", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, l(Space::Sem, "s", 0, 1, 5));
        w.send(0, b, l(Space::Sem, "s", 0, 1, 5));
    };
    granting_from_the_back_breaks_fifo: GrantFromBack fires "fifo grant order", |w| {
        let (a, b, c) = (w.connect(), w.connect(), w.connect());
        w.send(0, a, lock(0, 5));
        let t = w.token();
        w.send(100, b, lock(10, 5));
        w.send(200, c, lock(10, 5));
        w.send(300, a, r(t));
    };
    granting_a_timed_out_waiter_is_seen: GrantTimedOutWaiter fires "no grant to a dead waiter", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, lock(0, 1));
        w.send(0, b, lock(1, 5));
        w.at(1000);
    };
    granting_a_gone_waiter_is_seen: DisconnectKeepsWaiters fires "no grant to a dead waiter", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, lock(0, 5));
        let t = w.token();
        w.send(0, b, lock(10, 5));
        w.bye(100, b);
        w.send(200, a, r(t));
    };
    a_renew_that_does_not_extend_is_seen: RenewNoExtend fires "renewed lease honoured", |w| {
        let a = w.connect();
        w.send(0, a, lock(0, 1));
        let t = w.token();
        w.send(500, a, Op::Renew { space: Space::Lock, key: b"a".to_vec(), token: t.clone(), lease_s: Some(5) });
        w.send(2000, a, r(t));
    };
    a_reused_fence_is_seen: FenceNotIncremented fires "fencing tokens increase", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, lock(0, 5));
        let t = w.token();
        w.send(0, b, lock(10, 5));
        w.send(100, a, r(t));
    };
    an_untold_timeout_is_seen: TimeoutUntold fires "every blocked request is answered exactly once", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, lock(0, 5));
        w.send(0, b, lock(1, 5));
        w.at(1000);
    };
    an_untold_grant_is_seen: GrantUntold fires "every blocked request is answered exactly once", |w| {
        let (a, b) = (w.connect(), w.connect());
        w.send(0, a, lock(0, 5));
        let t = w.token();
        w.send(0, b, lock(2, 5));
        w.send(100, a, r(t));
        w.at(2000);
    };
    a_lease_that_never_ends_is_seen: LeaseNeverExpires fires "expired lease is reclaimed", |w| {
        let a = w.connect();
        w.send(0, a, lock(0, 1));
        let t = w.token();
        w.send(2000, a, r(t));
    };
}

/// The monitor reports under §11 names only.
#[test]
fn the_monitor_speaks_of_properties_of_section_11() {
    for name in PROPERTIES {
        assert!(
            ALWAYS.contains(&name) || EVENTUALLY.contains(&name),
            "{name}"
        );
    }
}
