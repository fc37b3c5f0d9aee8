#!/usr/bin/env bash
# Soak of cluster mode's fault tests (spec/cluster.md §10): many more random fault schedules
# than CI runs, against three `dflockd` member processes on loopback (and, with TOY=1, against
# the toy service on the replication layer alone).
#
#   scripts/cluster-soak.sh              # 200 schedules, about 12 minutes on 2 cores
#   SCHEDULES=1000 scripts/cluster-soak.sh
#   SEED=137 scripts/cluster-soak.sh     # replay one schedule
#   TOY=1 scripts/cluster-soak.sh        # the toy members instead
#
# A failing schedule prints its seed and the checker's findings; its whole history is
# written to $DUMP.<seed> (default /tmp/dflockd-fault-history). Every process the tests start
# is stopped by its PID when its schedule ends.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEDULES=${SCHEDULES:-200}
DUMP=${DUMP:-/tmp/dflockd-fault-history}
export DFLOCKD_FAULT_SCHEDULES=$SCHEDULES
export DFLOCKD_TOY_SCHEDULES=$SCHEDULES
export DFLOCKD_FAULT_DUMP=$DUMP
if [[ -n ${SEED:-} ]]; then
    export DFLOCKD_FAULT_SEED=$SEED
fi
if [[ -n ${TOY:-} ]]; then
    filter=random_fault_schedules_against_the_toy
else
    filter=random_fault_schedules_against_the_server
fi
exec cargo test --release --test cluster "$filter" -- --nocapture
