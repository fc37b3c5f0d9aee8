//! The inputs that report what a connection's transport saw, and the rules
//! for them that a driver used to apply on its own: the read deadline
//! (§9.2, D11) and releasing a grant that beat a cancel (§9.1). The
//! authentication failure's close and pause (§10) are in `handle`.

use super::{Bug, Cause, Event, Machine, Output, RecordState, Why};

impl Machine {
    /// §9.2: `conn`'s read deadline passed; `partial` when part of a
    /// request was buffered. A stalled request is cut (`error`, close); an
    /// idle connection that owns something stays (no output); any other
    /// idle connection is closed with `error`. Before authentication the
    /// answer is `error_auth` (closed after the pause), while draining
    /// `error_draining`, as for any request. A blocked or unknown
    /// connection has no read deadline: nothing happens.
    pub fn read_deadline(&mut self, now_ms: u64, conn: u64, partial: bool) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance_to(now_ms, &mut out);
        let Some(c) = self.conn_index(conn) else {
            return out;
        };
        assert!(!self.conns[c].closing, "read deadline after Close");
        if self.is_blocked(conn) {
            return out;
        }
        self.conns[c].answered = None;
        let owner = self.owns_anything(conn) && self.bug != Bug::IdleCutsOwner;
        if partial || !owner {
            let why = if partial { Why::Stalled } else { Why::Idle };
            if self.draining {
                self.reply(&mut out, conn, "error_draining");
                self.close(&mut out, conn, Why::Draining);
            } else if !self.conns[c].authed {
                self.reply(&mut out, conn, "error_auth");
                let pause_ms = self.cfg.auth_failure_pause_ms;
                self.close(&mut out, conn, Why::AuthFailed { pause_ms });
            } else {
                self.reply(&mut out, conn, "error");
                self.close(&mut out, conn, why);
            }
        }
        self.check_invariants();
        out
    }

    /// §9.2: a connection *owns something* while it holds a slot, has a
    /// queue position (a blocked request or a `queued` two-phase waiter),
    /// has a two-phase record, or has a subscription.
    pub fn owns_anything(&self, conn: u64) -> bool {
        self.resources.iter().any(|r| {
            r.holders.iter().any(|h| h.conn == conn) || r.waiters.iter().any(|w| w.conn == conn)
        }) || self.records.iter().any(|r| r.conn == conn)
            || self.subs.iter().any(|s| s.conn == conn)
    }

    /// §9.1: the cancel came after the grant with fence `fence` answered
    /// `conn`'s blocked request: release it, as an `r` with its token would
    /// (if it is still `conn`'s), with hand-off; nothing is replied.
    pub(super) fn release_answered(
        &mut self,
        now: u64,
        conn: u64,
        fence: u64,
        out: &mut Vec<Output>,
    ) {
        let Some((ri, hi)) = self.locate_holder(fence) else {
            return;
        };
        if self.resources[ri].holders[hi].conn != conn {
            return;
        }
        let holder = self.resources[ri].holders.remove(hi);
        let (space, key) = (self.resources[ri].space, self.resources[ri].key.clone());
        // §4: as a release, it drops the record naming this token.
        self.records.retain(|rec| {
            !(rec.conn == conn
                && rec.space == space
                && rec.key == key
                && matches!(&rec.state, RecordState::Granted { token, .. } if *token == holder.token))
        });
        self.touch(ri, now);
        self.event(Event::Release {
            space,
            key,
            fence: holder.fence,
        });
        self.hand_off(ri, now, Cause::Release, out);
    }
}
