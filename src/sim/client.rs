//! Simulated clients: each opens connections, sends random valid and
//! invalid requests (pipelined, split, sometimes left half-sent), reads
//! slowly or not at all for a while, closes or resets, and records what it
//! sent and what it read, with the simulated time of each.

use std::rc::Rc;

use super::exec::sleep_ms;
use super::net::Shared;
use super::rng::Rng;
use super::World;
use crate::wire::{decode_request, Decoded, Request};

/// One client connection, as its client saw it.
pub struct ConnRec {
    pub client: usize,
    pub inc: u64,
    pub pipe: Shared,
    pub opened_ms: u64,
    /// Everything sent, and (end offset, time) of each write.
    pub sent: Vec<u8>,
    pub writes: Vec<(usize, u64)>,
    /// Bytes read and not yet a whole line.
    pub partial: Vec<u8>,
    /// Whole lines read, with the time each was read.
    pub lines: Vec<(String, u64)>,
    /// The client closed (or reset) its end.
    pub client_closed: bool,
    /// The client read the end of the stream.
    pub eof: bool,
    /// The client sent an overlong line (and so nothing after it).
    pub overlong: bool,
}

impl ConnRec {
    pub fn new(client: usize, inc: u64, pipe: Shared, now: u64) -> ConnRec {
        ConnRec {
            client,
            inc,
            pipe,
            opened_ms: now,
            sent: Vec::new(),
            writes: Vec::new(),
            partial: Vec::new(),
            lines: Vec::new(),
            client_closed: false,
            eof: false,
            overlong: false,
        }
    }

    pub fn send(&mut self, bytes: &[u8], now: u64) {
        if self.client_closed || self.eof || self.overlong {
            return;
        }
        self.pipe.borrow_mut().client_write(bytes);
        self.sent.extend_from_slice(bytes);
        self.writes.push((self.sent.len(), now));
    }

    /// Takes what arrived.
    pub fn take_input(&mut self, now: u64) {
        if self.client_closed || self.eof {
            return;
        }
        let got = self.pipe.borrow_mut().client_read();
        match got {
            None => self.eof = true,
            Some(bytes) => {
                self.partial.extend_from_slice(&bytes);
                while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.partial.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line[..i]).into_owned();
                    self.lines.push((line, now));
                }
            }
        }
    }

    /// The requests sent, as the server's decoder frames them, with the
    /// time the last byte of each was sent.
    pub fn decoded(&self) -> Vec<(Result<Request, crate::wire::ParseError>, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < self.sent.len() {
            let (item, n) = match decode_request(&self.sent[at..]) {
                Decoded::NeedMore => break,
                Decoded::Request { req, consumed } => (Ok(req), consumed),
                Decoded::Invalid { error, consumed } => (Err(error), consumed.max(1)),
            };
            at += n;
            let t = self
                .writes
                .iter()
                .find(|(end, _)| *end >= at)
                .map_or(0, |w| w.1);
            out.push((item, t));
            if matches!(out.last(), Some((Err(e), _)) if e.is_fatal()) {
                break;
            }
        }
        out
    }

    pub fn requests(&self) -> usize {
        self.decoded().len()
    }
}

const LOCKS: [&str; 2] = ["a", "b"];
const CHANNELS: [&str; 2] = ["ch.1", "ch.2"];

/// A client's memory of its grants (to release and renew them).
struct Held {
    tokens: Vec<(bool, String, String)>,
}

fn token_of(line: &str) -> Option<String> {
    let mut w = line.split(' ');
    match (w.next(), w.next(), w.next()) {
        (Some("ok" | "acquired"), Some(t), Some(_)) if t.len() == 32 => Some(t.to_string()),
        _ => None,
    }
}

fn request(rng: &mut Rng, held: &Held) -> Vec<u8> {
    request_text(rng, held).into_bytes()
}

fn request_text(rng: &mut Rng, held: &Held) -> String {
    let key = LOCKS[rng.below(2) as usize];
    let t = rng.below(4);
    let lease = |rng: &mut Rng| {
        if rng.chance(500) {
            format!(" {}", 1 + rng.below(4))
        } else {
            String::new()
        }
    };
    let tok = |rng: &mut Rng, sem: bool| {
        let mine: Vec<_> = held.tokens.iter().filter(|h| h.0 == sem).collect();
        if !mine.is_empty() && rng.chance(850) {
            let h = mine[rng.below(mine.len() as u64) as usize];
            (h.1.clone(), h.2.clone())
        } else {
            (
                key.to_string(),
                "0123456789abcdef0123456789abcdef".to_string(),
            )
        }
    };
    match rng.below(22) {
        0..=4 => format!("l\n{key}\n{t}{}\n", lease(rng)),
        5..=6 => format!("sl\ns\n{t} {}{}\n", 1 + rng.below(2), lease(rng)),
        7..=8 => {
            let (k, tk) = tok(rng, false);
            format!("r\n{k}\n{tk}\n")
        }
        9 => {
            let (k, tk) = tok(rng, false);
            format!("n\n{k}\n{tk}{}\n", lease(rng))
        }
        10 => format!("e\n{key}\n{}\n", lease(rng).trim()),
        11 => format!("w\n{key}\n{t}\n"),
        12 => {
            let (k, tk) = tok(rng, true);
            format!("sr\n{}\n{tk}\n", if k == key { "s" } else { &k })
        }
        13 => format!(
            "listen\n{}\n\n",
            ["ch.*", "ch.1", ">"][rng.below(3) as usize]
        ),
        14 => format!("unlisten\n{}\n\n", ["ch.*", "ch.1"][rng.below(2) as usize]),
        15 => format!(
            "signal\n{}\np{}\n",
            CHANNELS[rng.below(2) as usize],
            rng.below(100)
        ),
        16 => "ping\n_\n\n".to_string(),
        17 => "stats\n_\n\n".to_string(),
        18 => [
            "bogus\n_\n\n",
            "l\nk\nabc\n",
            "l\n\n1\n",
            "sl\ns\n1 0\n",
            "r\na\n\n",
        ][rng.below(5) as usize]
            .to_string(),
        19 => format!("l\na b\n{t}\n"),
        _ => "ping\n_\n\n".to_string(),
    }
}

/// One client's life.
pub async fn run(world: Rc<World>, client: usize, mut rng: Rng) {
    let mut conn: Option<usize> = None;
    let mut held = Held { tokens: Vec::new() };
    let mut stalled_until = 0u64;
    let mut half: Option<Vec<u8>> = None;
    loop {
        let now = world.exec.now();
        let quiet = now >= world.quiesce_at;
        if let Some(i) = conn {
            if now >= stalled_until || quiet {
                let mut conns = world.conns.borrow_mut();
                let c = &mut conns[i];
                let before = c.lines.len();
                c.take_input(now);
                for (line, _) in &c.lines[before..] {
                    if let Some(t) = token_of(line) {
                        // Which key: the client does not track it exactly;
                        // a release with the wrong key is valid traffic.
                        let sem = rng.chance(300);
                        let key = if sem {
                            "s"
                        } else {
                            LOCKS[rng.below(2) as usize]
                        };
                        held.tokens.push((sem, key.to_string(), t));
                        if held.tokens.len() > 8 {
                            held.tokens.remove(0);
                        }
                    }
                }
                if c.eof {
                    conn = None;
                    half = None;
                }
            }
        }
        if quiet {
            sleep_ms(50).await;
            continue;
        }
        match conn {
            None => {
                if rng.chance(300) {
                    conn = world.connect(client);
                }
            }
            Some(i) => {
                let mut conns = world.conns.borrow_mut();
                let c = &mut conns[i];
                if let Some(rest) = half.take() {
                    if rng.chance(700) {
                        c.send(&rest, now);
                    } else {
                        half = Some(rest);
                    }
                }
                match rng.below(100) {
                    0..=54 if half.is_none() => {
                        let mut bytes = Vec::new();
                        for _ in 0..1 + rng.below(3) {
                            bytes.extend(request(&mut rng, &held));
                        }
                        c.send(&bytes, now);
                    }
                    55..=58 if half.is_none() => {
                        let r = request(&mut rng, &held);
                        let cut = 1 + rng.below(r.len() as u64 - 1) as usize;
                        c.send(&r[..cut], now);
                        half = Some(r[cut..].to_vec());
                    }
                    59 if half.is_none() => {
                        let mut r = b"l\n".to_vec();
                        r.extend(std::iter::repeat_n(b'k', 300));
                        r.extend(b"\n1\n");
                        c.send(&r, now);
                        c.overlong = true;
                    }
                    60..=63 => stalled_until = now + rng.below(8_000),
                    64..=65 => {
                        c.pipe.borrow_mut().client_close(false);
                        c.client_closed = true;
                        conn = None;
                        half = None;
                    }
                    66 => {
                        c.pipe.borrow_mut().client_close(true);
                        c.client_closed = true;
                        conn = None;
                        half = None;
                    }
                    _ => {}
                }
            }
        }
        let pause = [0, 1, 10, 100, 1_000, 3_000][rng.below(6) as usize];
        sleep_ms(pause + rng.below(pause + 1)).await;
    }
}
