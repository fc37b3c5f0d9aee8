//! HTTP sessions: each one is a core connection (Decision D8), connected
//! and disconnected through the engine's door exactly as a TCP connection
//! is.
//!
//! Lifetime (Decision D9): a session dies on `DELETE`, or when the sweeper
//! finds it without a request for 2 × the idle timeout (and none in
//! flight). An HTTP client that goes away while its request is blocked in
//! the core withdraws only that request (see [`InFlight`]). Requests on one session are serialised by
//! the session's async `gate`, so the core never sees a second request from
//! a connection whose first is still blocked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::core::ConnId;
use crate::engine::mailbox::{Delivery, Mailbox};
use crate::engine::{Engine, Input, Transport};
use crate::sync::Arc;
use crate::wire::Request;

use super::limits::PerIp;

/// One HTTP session.
pub struct Session {
    pub id: String,
    pub conn: ConnId,
    /// The remote IP that created it (`--http-max-sessions-per-ip`).
    pub ip: IpAddr,
    pub mailbox: Arc<Mailbox>,
    /// Serialises the session's requests.
    pub gate: smol::lock::Mutex<()>,
    /// Set (before the core forgets the connection) when the session ends.
    pub dead: AtomicBool,
    /// Requests currently being served on this session.
    pub in_flight: AtomicUsize,
    last_seen: std::sync::Mutex<Instant>,
}

impl Session {
    // The runtime's clock, so that on the simulator's thread sessions idle
    // and expire on the simulated clock; the thread's last reading
    // (`rt::loop_now`: touched twice per request, and idleness is counted
    // in seconds).
    pub fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = crate::rt::loop_now();
    }

    fn idle_for(&self) -> Duration {
        let last = *self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        crate::rt::now().saturating_duration_since(last)
    }
}

/// Why a session could not be created.
pub enum CreateError {
    MaxSessions,
    MaxSessionsPerIp,
    Random,
}

/// Hashes session ids for [`Sessions`]: xxh3 of the id's bytes. The ids
/// in the table are 128 random bits each, made by the server, so nobody
/// can choose keys that collide; a looked-up id, whatever a client sends,
/// only probes. Keyed SipHash (the default) guards against chosen keys
/// and cost more than the rest of the lookup.
#[derive(Default)]
pub struct SessionIdHasher(u64);

impl std::hash::Hasher for SessionIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(17) ^ xxhash_rust::xxh3::xxh3_64(bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap = HashMap<String, Arc<Session>, std::hash::BuildHasherDefault<SessionIdHasher>>;

/// The table of live sessions.
#[derive(Default)]
pub struct Sessions {
    map: std::sync::Mutex<IdMap>,
    /// Live sessions per creating IP; locked only while `map` is held.
    per_ip: std::sync::Mutex<PerIp>,
    /// Requests blocked in the core right now (long polls), for `/metrics`.
    blocked: AtomicUsize,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, IdMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock and semaphore requests blocked in the core right now.
    pub fn blocked(&self) -> usize {
        self.blocked.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map().get(id).cloned()
    }

    /// Registers a new core connection for a session, authenticating it
    /// when the server has an auth token (the HTTP layer checked the bearer
    /// token already).
    /// `max` caps the sessions, `max_per_ip` those created from `ip` (0 =
    /// unlimited).
    pub fn create(&self, front: &super::Front, ip: IpAddr) -> Result<Arc<Session>, CreateError> {
        let max = front.settings.max_sessions;
        let max_per_ip = front.settings.max_sessions_per_ip;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|_| CreateError::Random)?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.map();
        if max > 0 && map.len() >= max {
            return Err(CreateError::MaxSessions);
        }
        if !self
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_add(ip, max_per_ip)
        {
            return Err(CreateError::MaxSessionsPerIp);
        }
        let mailbox = Arc::new(Mailbox::new());
        let engine = &front.engine;
        let conn = engine.connect(Transport::Http, Some(mailbox.clone()));
        if let Some(token) = front.auth_token.clone() {
            let req = Request::Auth {
                token: token.into_boxed_slice(),
            };
            engine.apply(conn, Input::Request(req));
        }
        let s = Arc::new(Session {
            id: id.clone(),
            conn,
            ip,
            mailbox,
            gate: smol::lock::Mutex::new(()),
            dead: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_seen: std::sync::Mutex::new(crate::rt::now()),
        });
        map.insert(id, s.clone());
        Ok(s)
    }

    /// Ends a session: the core runs its disconnect cleanup (waiters leave,
    /// held slots are released as for a closed TCP connection) and a request
    /// still waiting on the session's mailbox is woken with a close.
    /// Returns whether the session was alive.
    pub fn kill(&self, engine: &Engine, session: &Session) -> bool {
        let removed = {
            let mut map = self.map();
            match map.get(&session.id) {
                Some(s) if std::ptr::eq(Arc::as_ptr(s), session) => {
                    self.per_ip
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(session.ip);
                    map.remove(&session.id)
                }
                _ => None,
            }
        };
        if session.dead.swap(true, Ordering::SeqCst) {
            return false;
        }
        engine.apply(session.conn, Input::Disconnect);
        session.mailbox.push(Delivery::Abort);
        removed.is_some()
    }

    /// Kills every session idle for longer than `max_idle` with no request
    /// in flight.
    pub fn sweep(&self, engine: &Engine, max_idle: Duration) {
        let mut stale: Vec<Arc<Session>> = self
            .map()
            .values()
            .filter(|s| s.in_flight.load(Ordering::SeqCst) == 0 && s.idle_for() > max_idle)
            .cloned()
            .collect();
        // In connection order, not the map's (random) order: the core sees
        // the same disconnects in the same order on a simulator's replay.
        stale.sort_by_key(|s| s.conn.0);
        for s in stale {
            // Re-check: a request may have started since.
            if s.in_flight.load(Ordering::SeqCst) == 0 && s.idle_for() > max_idle {
                if crate::planted::is(crate::planted::Bug::SweepKeepsHoldings) {
                    self.map().remove(&s.id);
                    continue;
                }
                self.kill(engine, &s);
            }
        }
    }
}

/// Marks a request in flight on a session for as long as it lives, and
/// holds the session's turn (its `gate`) once [`InFlight::take_turn`] got it.
///
/// If it is dropped while a request is blocked in the core (the HTTP client
/// went away, so hyper dropped the handler), only that request is
/// withdrawn, before the turn passes to the session's next request: the
/// engine applies [`Input::Cancel`], with which the core withdraws the
/// waiter (semantics §9.1) or, if the grant won the race, releases it. The
/// grant's reply, already in the session's mailbox, is discarded. The
/// session and its other holdings stay.
pub struct InFlight<'a> {
    pub sessions: &'a Sessions,
    pub engine: &'a Engine,
    pub session: &'a Session,
    /// The request is blocked in the core.
    blocked: bool,
    turn: Option<smol::lock::MutexGuard<'a, ()>>,
}

impl<'a> InFlight<'a> {
    pub fn new(sessions: &'a Sessions, engine: &'a Engine, session: &'a Session) -> Self {
        session.in_flight.fetch_add(1, Ordering::SeqCst);
        session.touch();
        InFlight {
            sessions,
            engine,
            session,
            blocked: false,
            turn: None,
        }
    }

    /// The request is blocked in the core: from now until
    /// [`InFlight::unblock`], dropping the guard withdraws it.
    pub fn block(&mut self) {
        if !self.blocked {
            self.sessions.blocked.fetch_add(1, Ordering::Relaxed);
        }
        self.blocked = true;
    }

    /// The blocked request was answered (or its session ended).
    pub fn unblock(&mut self) {
        if std::mem::take(&mut self.blocked) {
            self.sessions.blocked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits for the session's earlier requests to finish.
    pub async fn take_turn(&mut self) {
        self.turn = Some(self.session.gate.lock().await);
    }

    /// Withdraws the blocked request (see the type's docs).
    fn withdraw(&self) {
        let (engine, session) = (self.engine, self.session);
        // What the cancel leaves for the session itself (the `timeout`
        // answering the withdrawn request) is nobody's to read.
        let (_, outcome) = engine.apply(session.conn, Input::Cancel);
        if outcome.gone {
            return;
        }
        // A grant that beat the cancel was routed here under the engine's
        // lock before the cancel released it: drop its reply.
        let mut closed = false;
        while let Some(d) = session.mailbox.try_recv() {
            closed |= matches!(d, Delivery::Close(_) | Delivery::Abort);
        }
        if closed {
            self.sessions.kill(engine, session);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.blocked) {
            self.withdraw();
            self.sessions.blocked.fetch_sub(1, Ordering::Relaxed);
        }
        // Only now may the session's next request reach the core.
        drop(self.turn.take());
        self.session.touch();
        self.session.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Distinct session ids hash apart, in every bit the table uses: the
    /// low bits pick the bucket, the top seven are hashbrown's tags.
    #[test]
    fn session_ids_hash_apart() {
        let build = std::hash::BuildHasherDefault::<SessionIdHasher>::default();
        let ids: Vec<String> = (0u128..4096)
            .map(|i| format!("{:032x}", i * 0x9e37_79b9))
            .collect();
        let hashes: std::collections::HashSet<u64> =
            ids.iter().map(|id| build.hash_one(id)).collect();
        assert_eq!(hashes.len(), ids.len());
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let top: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(
            low.len() > 2000,
            "low 12 bits take {} of 4096 values",
            low.len()
        );
        assert_eq!(top.len(), 128, "the top seven bits take every value");
        // The same id hashes the same (the table finds what it stored).
        assert_eq!(build.hash_one(&ids[7]), build.hash_one(ids[7].clone()));
    }
}
