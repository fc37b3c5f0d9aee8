//! The stateright model of `spec/semantics.md` §11.
//!
//! The CI configurations explore their whole bounded space: every safety
//! and liveness property holds, every reachability property is reached,
//! and the number of unique states is pinned (a change in it means the
//! model or the machine changed behaviour: look before updating it).
//!
//! Then each deliberately broken machine ([`Bug`]) must be caught: the
//! checker has to find a counterexample for the property meant to catch
//! it, and the counterexample must replay. Together these show that no
//! property is vacuous.
//!
//! Symmetry reduction (depth-first) is checked against the plain
//! breadth-first run of the CI configuration: the same verdicts from fewer
//! states, and a planted bug still caught.

use std::collections::BTreeSet;

use dflockd_model::checker::{LockModel, ModelConfig, ALWAYS, EVENTUALLY, SOMETIMES};
use dflockd_model::Bug;
use stateright::{Checker, HasDiscoveries, Model};

/// Explores `cfg` completely and checks every property's verdict; the
/// reachability properties the configuration cannot reach
/// (`ModelConfig::unreachable`) are expected *not* to be found.
fn check_all(cfg: ModelConfig) -> usize {
    let unreachable = cfg.unreachable();
    let checker = LockModel::new(cfg).checker().spawn_bfs().join();
    verdicts(&checker, &unreachable);
    checker.unique_state_count()
}

fn verdicts(checker: &impl Checker<LockModel>, unreachable: &[&str]) {
    assert!(checker.is_done());
    for name in ALWAYS.iter().chain(&EVENTUALLY) {
        if let Some(path) = checker.discovery(name) {
            panic!("{name:?} fails: {:?}", path.into_actions());
        }
    }
    for name in SOMETIMES {
        let found = checker.discovery(name).is_some();
        assert_eq!(
            found,
            !unreachable.contains(&name),
            "{name:?} reached: {found}"
        );
    }
}

// The counts grew when the machine started to remember the grant that
// answered a connection's blocked request until its next input (semantics
// §9.1: what a cancel that loses the race releases): states that differ
// only in that memory are now told apart.
#[test]
fn ci_configuration_satisfies_every_property() {
    assert_eq!(check_all(ModelConfig::ci()), 1_472_536);
}

// Clients are interchangeable: counting states up to a permutation of the
// clients gives the same verdicts from about half the states (2 clients).
#[test]
fn symmetry_reduction_keeps_every_verdict() {
    let cfg = ModelConfig::ci();
    let unreachable = cfg.unreachable();
    let checker = LockModel::new(cfg).checker().symmetry().spawn_dfs().join();
    verdicts(&checker, &unreachable);
    assert_eq!(checker.unique_state_count(), 699_527);
}

#[test]
fn symmetry_reduction_still_catches_a_planted_bug() {
    let mut cfg = ModelConfig::ci();
    cfg.bug = Bug::GrantUntold;
    let property = "every blocked request is answered exactly once";
    let checker = LockModel::new(cfg)
        .checker()
        .symmetry()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_dfs()
        .join();
    let path = checker.discovery(property).expect("caught");
    checker.assert_discovery(property, path.into_actions());
}

// Semantics §12 and §3.3: clients listen and signal between lock requests,
// and a second waiter on a key is refused.
#[test]
fn with_signals_and_a_waiter_cap_every_property_still_holds() {
    assert_eq!(check_all(ModelConfig::signals()), 378_743);
}

// D6: without auto-release a disconnect never hands a lock over, and the
// slots it keeps must still expire and be handed off.
#[test]
fn without_auto_release_every_property_still_holds() {
    let mut cfg = ModelConfig::ci();
    cfg.machine.auto_release_on_disconnect = false;
    cfg.drain = false;
    assert_eq!(check_all(cfg), 885_245);
}

// Semantics §9.1 with §9: a driver cancelling a blocked request (the HTTP
// front, when its client goes away), and connections dropping, in any order.
#[test]
fn with_cancels_and_drops_every_property_still_holds() {
    assert_eq!(check_all(ModelConfig::cancels_and_drops()), 2_689_982);
}

// Semantics §9.1, §9.2, §10: the decisions the drivers used to make (the
// read deadline, the failed authentication's close and pause, a cancel
// that loses the race to the grant), on clients that authenticate.
#[test]
fn driver_decisions_satisfy_every_property() {
    assert_eq!(check_all(ModelConfig::driver()), 290_261);
}

/// Runs the checker on a broken machine until it finds a counterexample for
/// `property`, then replays it.
fn catch(bug: Bug, property: &'static str, tweak: fn(&mut ModelConfig)) {
    let mut cfg = ModelConfig::ci();
    tweak(&mut cfg);
    cfg.bug = bug;
    let checker = LockModel::new(cfg)
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("{bug:?} is not caught by {property:?}"));
    checker.assert_discovery(property, path.into_actions());
}

fn ci(_: &mut ModelConfig) {}

/// The driver-decisions configuration (keeping the bug).
fn driver(cfg: &mut ModelConfig) {
    let bug = cfg.bug;
    *cfg = ModelConfig::driver();
    cfg.bug = bug;
}

/// One cancel per client instead of a drop.
fn cancels(cfg: &mut ModelConfig) {
    cfg.cancels_per_client = 1;
    cfg.drops_per_client = 0;
}

fn signals(cfg: &mut ModelConfig) {
    *cfg = ModelConfig::signals();
}

/// Liveness counterexamples end at the horizon: a shorter one is found sooner.
fn short(cfg: &mut ModelConfig) {
    cfg.horizon_s = 3;
    cfg.drain = false;
    cfg.two_phase = false;
}

macro_rules! caught {
    ($($name:ident: $bug:ident by $property:literal $(, $tweak:ident)?;)*) => {
        $(
            #[test]
            fn $name() {
                catch(Bug::$bug, $property, caught!(@tweak $($tweak)?));
            }
        )*
        /// Every broken variant has a test above.
        #[test]
        fn every_bug_is_tested() {
            let tested: BTreeSet<String> = [$(format!("{:?}", Bug::$bug)),*].into();
            let all: BTreeSet<String> = Bug::ALL.iter().map(|b| format!("{b:?}")).collect();
            assert_eq!(tested, all);
        }
        /// Every safety and liveness property is shown to fail somewhere.
        #[test]
        fn every_failure_property_is_exercised() {
            let exercised: BTreeSet<&str> = [$($property),*].into();
            let all: BTreeSet<&str> = ALWAYS.iter().chain(&EVENTUALLY).copied().collect();
            assert_eq!(exercised, all);
        }
    };
    (@tweak) => { ci };
    (@tweak $tweak:ident) => { $tweak };
}

caught! {
    double_grant_breaks_mutual_exclusion: DoubleGrant by "mutual exclusion";
    double_grant_breaks_semaphore_limit: DoubleGrant by "semaphore within limit";
    grant_from_back_breaks_fifo: GrantFromBack by "fifo grant order";
    granting_a_timed_out_waiter_is_caught: GrantTimedOutWaiter by "no grant to a dead waiter";
    keeping_a_timed_out_waiter_is_caught: TimeoutKeepsWaiter by "no grant to a dead waiter";
    keeping_a_disconnected_waiter_is_caught: DisconnectKeepsWaiters by "no grant to a dead waiter";
    renew_without_extending_is_caught: RenewNoExtend by "renewed lease honoured";
    reused_fence_is_caught: FenceNotIncremented by "fencing tokens increase";
    waiter_left_in_queue_is_caught: WaiterLeftInQueue by "no waiter is also a holder";
    never_expiring_lease_is_caught: LeaseNeverExpires by "expired lease is reclaimed", short;
    resurrecting_renew_is_caught: RenewResurrectsExpired by "expired lease is reclaimed", short;
    missing_hand_off_on_expiry_is_caught: NoHandoffOnExpiry by "head waiter granted or timed out", short;
    keeping_a_cancelled_waiter_is_caught: CancelKeepsWaiter by "no grant to a dead waiter", cancels;
    untold_timeout_is_caught: TimeoutUntold by "every blocked request is answered exactly once";
    untold_grant_is_caught: GrantUntold by "every blocked request is answered exactly once";
    signal_twice_is_caught: SignalTwice by "a signal reaches each listener once", signals;
    cutting_an_idle_owner_is_caught: IdleCutsOwner by "an owner is not cut for idleness", driver;
    an_open_connection_after_failed_auth_is_caught: AuthFailureStaysOpen by "failed authentication closes after the pause", driver;
    keeping_a_grant_that_lost_to_a_cancel_is_caught: CancelIgnoresGrant by "a cancelled request holds nothing", driver;
}
