//! The cluster-mode model (`spec/cluster.md` §8).
//!
//! Both CI configurations explore their whole bounded space: every safety
//! property holds, the reachability properties are reached (so the model
//! is not vacuous), and the number of unique states is pinned (a change
//! means the model or the machine changed behaviour: look before updating
//! it). Then each planted bug ([`ClusterBug`]) must be caught by the
//! properties meant to catch it, with a counterexample that replays.

use std::collections::BTreeSet;

use dflockd_model::cluster::checker::{
    ALWAYS, CLOCK_AHEAD, CLOCK_BACK, FENCES, LINEARIZABLE, LIVE_LIMIT, ORPHAN_KEPT,
    ORPHAN_RELEASED, SOMETIMES,
};
use dflockd_model::cluster::{ClusterBug, ClusterConfig, ClusterModel};
use stateright::{Checker, HasDiscoveries, Model};

/// Explores `cfg` completely; the reachability properties in `unreachable`
/// are expected not to be found.
fn check_all(cfg: ClusterConfig, unreachable: &[&str]) -> usize {
    let checker = ClusterModel::new(cfg).checker().spawn_bfs().join();
    assert!(checker.is_done());
    for name in ALWAYS {
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
    checker.unique_state_count()
}

// Linearizable against the single node across one leader crash or
// deposition; orphans outlive the horizon, so none is ever released.
#[test]
fn cluster_ci_configuration_satisfies_every_property() {
    assert_eq!(check_all(ClusterConfig::ci(), &[ORPHAN_RELEASED]), 592_692);
}

// Orphans released by their TTL, and never before it.
#[test]
fn cluster_orphan_configuration_satisfies_every_property() {
    assert_eq!(check_all(ClusterConfig::orphans(), &[]), 291_582);
}

/// Runs the checker on a broken cluster until it finds a counterexample
/// for `property`, then replays it.
fn catch(bug: ClusterBug, property: &'static str, base: fn() -> ClusterConfig) {
    let mut cfg = base();
    cfg.bug = bug;
    let checker = ClusterModel::new(cfg)
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("{bug:?} is not caught by {property:?}"));
    checker.assert_discovery(property, path.into_actions());
}

macro_rules! caught {
    ($($name:ident: $bug:ident by $property:ident in $base:ident;)*) => {
        $(
            #[test]
            fn $name() {
                catch(ClusterBug::$bug, $property, ClusterConfig::$base);
            }
        )*
        /// Every planted bug has a test above.
        #[test]
        fn every_cluster_bug_is_tested() {
            let tested: BTreeSet<String> = [$(format!("{:?}", ClusterBug::$bug)),*].into();
            let all: BTreeSet<String> =
                ClusterBug::ALL.iter().map(|b| format!("{b:?}")).collect();
            assert_eq!(tested, all);
        }
        /// Every safety property is shown to fail somewhere.
        #[test]
        fn every_cluster_property_is_exercised() {
            let exercised: BTreeSet<&str> = [$($property),*].into();
            let all: BTreeSet<&str> = ALWAYS.iter().copied().collect();
            assert_eq!(exercised, all);
        }
    };
}

caught! {
    reply_before_commit_is_not_linearizable: ReplyBeforeCommit by LINEARIZABLE in ci;
    reply_before_commit_double_grants: ReplyBeforeCommit by LIVE_LIMIT in ci;
    reply_before_commit_reuses_a_fence: ReplyBeforeCommit by FENCES in ci;
    clock_restart_goes_back: ClockRestart by CLOCK_BACK in ci;
    clock_restart_is_not_linearizable: ClockRestart by LINEARIZABLE in ci;
    early_orphan_release_is_caught: OrphanReleasedEarly by ORPHAN_KEPT in orphans;
    early_orphan_release_is_not_linearizable: OrphanReleasedEarly by LINEARIZABLE in ci;
    clock_double_count_runs_ahead: ClockDoubleCounts by CLOCK_AHEAD in ci;
}
