//! HTTP sessions: each one is a core connection (Decision D8), registered
//! with `server::register` and ended with `server::unregister`, exactly
//! as a TCP connection is.
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

use crate::core::{ConnId, Effect};
use crate::server::mailbox::{withdraw_blocked, Delivery, Mailbox};
use crate::server::{register, unregister, Shared};
use crate::sync::Arc;
use crate::wire::{Key, Request, Space};

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
    /// Set (before the core forgets the connection) when the session ends;
    /// checked under the core lock before every core input.
    pub dead: AtomicBool,
    /// Requests currently being served on this session.
    pub in_flight: AtomicUsize,
    last_seen: std::sync::Mutex<Instant>,
}

impl Session {
    pub fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Why a session could not be created.
pub enum CreateError {
    MaxSessions,
    MaxSessionsPerIp,
    Random,
}

/// The table of live sessions.
#[derive(Default)]
pub struct Sessions {
    map: std::sync::Mutex<HashMap<String, Arc<Session>>>,
    /// Live sessions per creating IP; locked only while `map` is held.
    per_ip: std::sync::Mutex<PerIp>,
    /// Requests blocked in the core right now (long polls), for `/metrics`.
    blocked: AtomicUsize,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
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
    pub fn create(
        &self,
        shared: &Shared,
        max: usize,
        max_per_ip: usize,
        ip: IpAddr,
    ) -> Result<Arc<Session>, CreateError> {
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
        let conn = register(shared, mailbox.clone());
        if let Some(token) = shared.cfg.core.auth_token.clone() {
            let mut effects: Vec<Effect> = Vec::new();
            let mut inner = shared.lock();
            let now = shared.clock(&inner);
            let req = Request::Auth {
                token: token.into_boxed_slice(),
            };
            inner.core.handle(now, conn, req, &mut effects);
            shared.after_core(&mut inner, &mut effects, Some(conn));
        }
        let s = Arc::new(Session {
            id: id.clone(),
            conn,
            ip,
            mailbox,
            gate: smol::lock::Mutex::new(()),
            dead: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_seen: std::sync::Mutex::new(Instant::now()),
        });
        map.insert(id, s.clone());
        Ok(s)
    }

    /// Ends a session: the core runs its disconnect cleanup (waiters leave,
    /// held slots are released as for a closed TCP connection) and a request
    /// still waiting on the session's mailbox is woken with a close.
    /// Returns whether the session was alive.
    pub fn kill(&self, shared: &Shared, session: &Session) -> bool {
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
        unregister(shared, session.conn);
        session.mailbox.push(Delivery::Close);
        removed.is_some()
    }

    /// Kills every session idle for longer than `max_idle` with no request
    /// in flight.
    pub fn sweep(&self, shared: &Shared, max_idle: Duration) {
        let stale: Vec<Arc<Session>> = self
            .map()
            .values()
            .filter(|s| s.in_flight.load(Ordering::SeqCst) == 0 && s.idle_for() > max_idle)
            .cloned()
            .collect();
        for s in stale {
            // Re-check: a request may have started since.
            if s.in_flight.load(Ordering::SeqCst) == 0 && s.idle_for() > max_idle {
                self.kill(shared, &s);
            }
        }
    }
}

/// Marks a request in flight on a session for as long as it lives, and
/// holds the session's turn (its `gate`) once [`InFlight::take_turn`] got it.
///
/// If it is dropped while a request is blocked in the core (`blocked_on`
/// set: the HTTP client went away, so hyper dropped the handler), only that
/// request is withdrawn, before the turn passes to the session's next
/// request: the core cancels it (semantics §9.1: its waiter leaves the
/// queue as if it timed out), and a grant that reached the session's
/// mailbox first is released. The session and its other holdings stay.
pub struct InFlight<'a> {
    pub sessions: &'a Sessions,
    pub shared: &'a Shared,
    pub session: &'a Session,
    /// The key of the blocked request, while it is blocked.
    blocked_on: Option<(Space, Key)>,
    turn: Option<smol::lock::MutexGuard<'a, ()>>,
}

impl<'a> InFlight<'a> {
    pub fn new(sessions: &'a Sessions, shared: &'a Shared, session: &'a Session) -> Self {
        session.in_flight.fetch_add(1, Ordering::SeqCst);
        session.touch();
        InFlight {
            sessions,
            shared,
            session,
            blocked_on: None,
            turn: None,
        }
    }

    /// The request is blocked in the core on `key` (or, with `None`, no
    /// longer is): from now until [`InFlight::unblock`], dropping the guard
    /// withdraws it.
    pub fn block(&mut self, on: Option<(Space, Key)>) {
        if on.is_some() && self.blocked_on.is_none() {
            self.sessions.blocked.fetch_add(1, Ordering::Relaxed);
        }
        self.blocked_on = on;
    }

    /// The blocked request was answered (or its session ended).
    pub fn unblock(&mut self) {
        if self.blocked_on.take().is_some() {
            self.sessions.blocked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits for the session's earlier requests to finish.
    pub async fn take_turn(&mut self) {
        self.turn = Some(self.session.gate.lock().await);
    }

    /// Withdraws the blocked request on `key` (see the type's docs).
    fn withdraw(&self, space: Space, key: Key) {
        let (shared, session) = (self.shared, self.session);
        let mut effects = Vec::new();
        let closed = {
            let mut inner = shared.lock();
            if session.dead.load(Ordering::SeqCst) {
                return;
            }
            let now = shared.clock(&inner);
            let closed = withdraw_blocked(
                &mut inner.core,
                now,
                session.conn,
                &session.mailbox,
                space,
                &key,
                &mut effects,
            );
            shared.after_core(&mut inner, &mut effects, Some(session.conn));
            // What is left is our own: the `timeout` answering the cancelled
            // request and the answer to the release, which nobody awaits.
            closed
        };
        if closed {
            self.sessions.kill(shared, session);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some((space, key)) = self.blocked_on.take() {
            self.withdraw(space, key);
            self.sessions.blocked.fetch_sub(1, Ordering::Relaxed);
        }
        // Only now may the session's next request reach the core.
        drop(self.turn.take());
        self.session.touch();
        self.session.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
