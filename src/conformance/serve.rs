//! The scripted server for client authors: `dflockd conformance serve`
//! plays the scripts of `spec/conformance/client/` against a connecting
//! client and says whether the client did the right thing.
//!
//! A real server rarely produces the awkward cases a client must survive:
//! a reply split across TCP segments, a `sig` push between a request and
//! its reply, `error_draining`, a connection closed in the middle of a
//! reply, a lease that runs out while the client renews it,
//! `error_not_leader` with or without an address, a slow reply, a refused
//! token. The scripted server produces each on purpose.
//!
//! It listens on three loopback ports: *main* (the address the client is
//! given), *peer* (a second member, which `error_not_leader {peer}` names)
//! and *control*. A client author's test sends `start NAME` on the control
//! connection, runs its client's operation against main (the script's
//! `!client:` header says which), then sends `verdict`, which waits for the
//! script to finish and answers `pass` or `fail WHY`. Connections are
//! numbered in the order the server accepts them, on either listener.
//!
//! The control protocol is one line per request and one line per answer:
//! `list` → `ok NAME ...`; `addrs` → `ok main=A peer=A`; `start NAME` →
//! `ok`; `verdict` → `pass` or `fail WHY`; anything else → `error WHY`.
//!
//! Plain blocking sockets and one thread per script run, like the rest of
//! the runner: the server serves one client test at a time, and every wait
//! has a deadline (the read timeout, 5 s unless configured).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argh::FromArgs;

use super::client::{Conn, ReadLine};
use super::matcher::{match_line, quoted};
use super::run::describe_read;
use super::script::{parse_script, Action, Listener, Script, ScriptError, Step};
use super::transcript::Text;

/// Where the scripted server listens, and how long it waits.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// 127.0.0.1 unless told otherwise.
    pub host: IpAddr,
    /// The port for the client under test; 0 picks a free one.
    pub port: u16,
    /// The second member's port; 0 picks a free one.
    pub peer_port: u16,
    /// The control port; 0 picks a free one.
    pub control_port: u16,
    /// How long the server waits for each line (or connection) from the
    /// client. 5 s.
    pub read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            peer_port: 0,
            control_port: 0,
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// What a finished run concluded: `Ok` when the client did everything the
/// script expects, else `origin:line: what happened instead`.
pub type Verdict = Result<(), String>;

/// The client scripts built into the binary, parsed and sorted by name.
pub fn builtin_scripts() -> Vec<Script> {
    embedded::CLIENT_SCRIPTS
        .iter()
        .map(|(file, bytes)| {
            let name = file.strip_suffix(".txt").unwrap_or(file);
            // Checked by this crate's tests: a parse error is a bug here.
            parse_script(name, &format!("builtin:client/{file}"), bytes)
                .unwrap_or_else(|e| panic!("built-in client script does not parse: {e}"))
        })
        .collect()
}

/// The scripts of a directory (`*.txt`), sorted by name.
pub fn load_scripts(dir: &Path) -> Result<Vec<Script>, String> {
    let read_err = |e: io::Error| format!("cannot read {}: {e}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(read_err)?;
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            parse_script(&name, &path.display().to_string(), &bytes)
                .map_err(|e: ScriptError| e.to_string())
        })
        .collect()
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/conformance_client_embedded.rs"));
}

/// A running scripted server. Its threads live until the process ends.
pub struct ScriptedServer {
    main: SocketAddr,
    peer: SocketAddr,
    control: SocketAddr,
    state: Arc<State>,
}

struct State {
    scripts: Vec<Script>,
    read_timeout: Duration,
    main: SocketAddr,
    peer: SocketAddr,
    run: Mutex<RunState>,
    finished: Condvar,
    /// Called with the scenario's name and its verdict as each run ends.
    on_verdict: Mutex<Option<OnVerdict>>,
}

type OnVerdict = Box<dyn Fn(&str, &Verdict) + Send>;

#[derive(Default)]
struct RunState {
    /// Increases with every `start`; a run reports only if still current.
    id: u64,
    scenario: Option<String>,
    /// Where accepted client connections go; `None` between runs (they are
    /// closed at once).
    incoming: Option<Sender<(TcpStream, Listener)>>,
    verdict: Option<Verdict>,
    /// Tells a superseded run to stop at its next step.
    abandon: Option<Arc<AtomicBool>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ScriptedServer {
    /// Binds the three listeners and starts serving `scripts`.
    pub fn start(opts: &ServeOptions, scripts: Vec<Script>) -> io::Result<ScriptedServer> {
        let bind = |port| TcpListener::bind(SocketAddr::new(opts.host, port));
        let (main_l, peer_l, control_l) = (
            bind(opts.port)?,
            bind(opts.peer_port)?,
            bind(opts.control_port)?,
        );
        let (main, peer, control) = (
            main_l.local_addr()?,
            peer_l.local_addr()?,
            control_l.local_addr()?,
        );
        let state = Arc::new(State {
            scripts,
            read_timeout: opts.read_timeout,
            main,
            peer,
            run: Mutex::new(RunState::default()),
            finished: Condvar::new(),
            on_verdict: Mutex::new(None),
        });
        for (listener, which) in [(main_l, Listener::Main), (peer_l, Listener::Peer)] {
            let state = state.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let run = state.lock();
                    if let Some(tx) = &run.incoming {
                        let _ = tx.send((stream, which));
                    }
                    // Otherwise no run is waiting: dropping it closes it.
                }
            });
        }
        let control_state = state.clone();
        std::thread::spawn(move || {
            for stream in control_l.incoming().flatten() {
                let state = control_state.clone();
                std::thread::spawn(move || serve_control(stream, &state));
            }
        });
        Ok(ScriptedServer {
            main,
            peer,
            control,
            state,
        })
    }

    /// The address the client under test is given.
    pub fn main_addr(&self) -> SocketAddr {
        self.main
    }

    /// The second member's address (what `error_not_leader {peer}` names).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The control port.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// The scripts it serves.
    pub fn scripts(&self) -> &[Script] {
        &self.state.scripts
    }

    /// Calls `f` with each scenario's name and verdict as its run ends.
    pub fn on_verdict(&self, f: impl Fn(&str, &Verdict) + Send + 'static) {
        *self
            .state
            .on_verdict
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Starts a run of the scenario `name` (`.txt` may be given), ending
    /// any run in progress; its verdict is then lost.
    pub fn start_scenario(&self, name: &str) -> Result<(), String> {
        start_scenario(&self.state, name)
    }

    /// A handle that starts runs like [`ScriptedServer::start_scenario`],
    /// for use from a verdict callback.
    pub fn starter(&self) -> impl Fn(&str) -> Result<(), String> + Send + 'static {
        let state = self.state.clone();
        move |name| start_scenario(&state, name)
    }

    /// Waits for the current run to finish and returns its verdict.
    pub fn verdict(&self) -> Result<Verdict, String> {
        verdict(&self.state)
    }
}

fn start_scenario(state: &Arc<State>, name: &str) -> Result<(), String> {
    let name = name.strip_suffix(".txt").unwrap_or(name);
    let Some(script) = state.scripts.iter().find(|s| s.name == name).cloned() else {
        let hint = super::did_you_mean(name, state.scripts.iter().map(|s| s.name.as_str()));
        return Err(format!("no scenario `{name}`{hint}"));
    };
    let (tx, rx) = mpsc::channel();
    let abandon = Arc::new(AtomicBool::new(false));
    let id = {
        let mut run = state.lock();
        if let Some(old) = run.abandon.replace(abandon.clone()) {
            old.store(true, Ordering::SeqCst);
        }
        run.id += 1;
        run.scenario = Some(script.name.clone());
        run.incoming = Some(tx);
        run.verdict = None;
        run.id
    };
    let state = state.clone();
    std::thread::spawn(move || {
        let verdict = play(&script, rx, &state, &abandon);
        let mut run = state.lock();
        if run.id != id {
            return;
        }
        run.incoming = None;
        run.verdict = Some(verdict.clone());
        drop(run);
        state.finished.notify_all();
        if let Some(f) = &*state.on_verdict.lock().unwrap_or_else(|e| e.into_inner()) {
            f(&script.name, &verdict);
        }
    });
    Ok(())
}

fn verdict(state: &State) -> Result<Verdict, String> {
    let mut run = state.lock();
    if run.scenario.is_none() {
        return Err("no scenario started (send `start NAME` first)".into());
    }
    loop {
        if let Some(v) = &run.verdict {
            return Ok(v.clone());
        }
        run = state.finished.wait(run).unwrap_or_else(|e| e.into_inner());
    }
}

/// Serves one control connection: one line in, one line out.
fn serve_control(stream: TcpStream, state: &Arc<State>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    // A bound on what one control connection may send in all.
    let mut lines = BufReader::new(stream).take(1 << 20).lines();
    while let Some(Ok(line)) = lines.next() {
        let line = line.trim();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        let answer = match (cmd, arg.trim()) {
            ("list", "") => {
                let names: Vec<&str> = state.scripts.iter().map(|s| s.name.as_str()).collect();
                format!("ok {}", names.join(" "))
            }
            ("addrs", "") => format!("ok main={} peer={}", state.main, state.peer),
            ("start", name) if !name.is_empty() => match start_scenario(state, name) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            ("verdict", "") => match verdict(state) {
                Ok(Ok(())) => "pass".into(),
                Ok(Err(why)) => format!("fail {}", why.replace('\n', " ")),
                Err(e) => format!("error {e}"),
            },
            _ => "error unknown request; the requests are list, addrs, start NAME, verdict".into(),
        };
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}

/// One run of `script`: the verdict.
fn play(
    script: &Script,
    incoming: Receiver<(TcpStream, Listener)>,
    state: &State,
    abandon: &AtomicBool,
) -> Verdict {
    let mut vars = HashMap::new();
    vars.insert("main".to_string(), state.main.to_string().into_bytes());
    vars.insert("peer".to_string(), state.peer.to_string().into_bytes());
    let mut p = Player {
        incoming,
        conns: Vec::new(),
        selected: 0,
        vars,
        split: None,
        within: None,
        timeout: state.read_timeout,
    };
    for step in &script.steps {
        if abandon.load(Ordering::SeqCst) {
            return Err("abandoned: another scenario was started".into());
        }
        p.step(step)
            .map_err(|why| format!("{}:{}: {why}", script.origin, step.line))?;
    }
    // Every connection the client opened must be one the script expects.
    let expected = script
        .steps
        .iter()
        .filter_map(|s| match s.action {
            Action::Select(n, _) => Some(n as usize),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let opened = p.conns.len() + p.incoming.try_iter().count();
    if opened > expected {
        return Err(format!(
            "{}: the client opened {opened} connections; the scenario expects {expected}",
            script.origin
        ));
    }
    Ok(())
}

struct Player {
    incoming: Receiver<(TcpStream, Listener)>,
    /// Accepted connections in order; `None` once the script closed one.
    conns: Vec<(Option<Conn>, Listener)>,
    /// 1-based; 0 before the first `@N`.
    selected: usize,
    vars: HashMap<String, Vec<u8>>,
    split: Option<(usize, u64)>,
    within: Option<Duration>,
    timeout: Duration,
}

impl Player {
    fn step(&mut self, step: &Step) -> Result<(), String> {
        match &step.action {
            Action::Select(n, listener) => {
                let n = *n as usize;
                self.accept_until(n)?;
                let got = self.conns[n - 1].1;
                if let Some(want) = listener {
                    if got != *want {
                        return Err(format!(
                            "connection {n} arrived on {}; the scenario expects it on {}",
                            got.name(),
                            want.name()
                        ));
                    }
                }
                self.selected = n;
                Ok(())
            }
            Action::Close(n) => {
                if let Some(conn) = self.conns.get_mut(*n as usize - 1).and_then(|c| c.0.take()) {
                    conn.close();
                }
                Ok(())
            }
            Action::Expect(pats) => {
                let timeout = self.within.take().unwrap_or(self.timeout);
                let vars = &self.vars;
                let conn = selected(&mut self.conns, self.selected)?;
                let line = match conn.read_line(timeout) {
                    ReadLine::Line(line) => line,
                    other => {
                        return Err(format!(
                            "expected the client to send \"{}\", got {}",
                            step.source,
                            describe_read(&other, timeout)
                        ))
                    }
                };
                let binds = match_line(pats, vars, &line).map_err(|why| {
                    format!(
                        "expected the client to send \"{}\", got {} ({why})",
                        step.source,
                        quoted(&line)
                    )
                })?;
                self.vars.extend(binds);
                Ok(())
            }
            Action::ExpectEof => {
                let timeout = self.within.take().unwrap_or(self.timeout);
                let conn = selected(&mut self.conns, self.selected)?;
                conn.expect_eof(timeout).map_err(|got| {
                    format!(
                        "expected the client to close the connection, got {}",
                        describe_read(&got, timeout)
                    )
                })
            }
            Action::Send { text, lf } => {
                let mut bytes = Vec::new();
                for piece in text {
                    match piece {
                        Text::Bytes(b) => bytes.extend_from_slice(b),
                        Text::Var(name) => bytes.extend_from_slice(
                            self.vars.get(name).map(Vec::as_slice).unwrap_or_default(),
                        ),
                    }
                }
                if *lf {
                    bytes.push(b'\n');
                }
                let split = self.split;
                let conn = selected(&mut self.conns, self.selected)?;
                let sent = match split {
                    None => conn.write_raw(&bytes),
                    Some((size, pause)) => {
                        bytes.chunks(size).enumerate().try_for_each(|(i, piece)| {
                            if i > 0 {
                                // The pause is the behaviour under test: with
                                // nodelay, each piece leaves as its own segment.
                                std::thread::sleep(Duration::from_millis(pause));
                            }
                            conn.write_raw(piece)
                        })
                    }
                };
                sent.map_err(|e| format!("cannot send to connection {}: {e}", self.selected))
            }
            Action::Split(split) => {
                self.split = *split;
                Ok(())
            }
            Action::Pause(ms) => {
                // A slow server is the behaviour under test.
                std::thread::sleep(Duration::from_millis(*ms));
                Ok(())
            }
            Action::Within(ms) => {
                self.within = Some(Duration::from_millis(*ms));
                Ok(())
            }
        }
    }

    /// Waits until the client has opened `n` connections.
    fn accept_until(&mut self, n: usize) -> Result<(), String> {
        if self.conns.len() >= n {
            return Ok(());
        }
        let wait = self.within.take().unwrap_or(self.timeout);
        let deadline = Instant::now() + wait;
        while self.conns.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok((stream, which)) => {
                    let conn = Conn::from_stream(stream)
                        .map_err(|e| format!("connection {}: {e}", self.conns.len() + 1))?;
                    self.conns.push((Some(conn), which));
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the client did not open connection {n} within {}s",
                        wait.as_secs_f64()
                    ));
                }
            }
        }
        Ok(())
    }
}

fn selected(conns: &mut [(Option<Conn>, Listener)], n: usize) -> Result<&mut Conn, String> {
    conns
        .get_mut(n.wrapping_sub(1))
        .and_then(|c| c.0.as_mut())
        .ok_or_else(|| format!("connection {n} is closed"))
}

/// Play scripted server scenarios against a client under test (see
/// spec/conformance/client/README.md).
#[derive(FromArgs)]
struct Args {
    /// address to listen on (default 127.0.0.1)
    #[argh(option, default = "IpAddr::V4(Ipv4Addr::LOCALHOST)")]
    host: IpAddr,
    /// port for the client under test (default 0: any free port)
    #[argh(option, default = "0")]
    port: u16,
    /// port of the second member that error_not_leader names (default 0)
    #[argh(option, default = "0")]
    peer_port: u16,
    /// port of the control connection (default 0)
    #[argh(option, default = "0")]
    control_port: u16,
    /// play this scenario again and again, printing each verdict (without
    /// it, wait for `start NAME` on the control port)
    #[argh(option)]
    scenario: Option<String>,
    /// list the scenarios, what the client does and what a correct client
    /// does, then exit
    #[argh(switch)]
    list: bool,
    /// seconds to wait for each line from the client (default 5)
    #[argh(option, default = "5")]
    read_timeout: u64,
    /// directory of scripts to play instead of the built-in copy of
    /// spec/conformance/client
    #[argh(option)]
    dir: Option<PathBuf>,
}

/// `dflockd conformance serve`: prints `main ADDR peer ADDR control ADDR`,
/// then one line per finished run (`pass  NAME` or `FAIL  NAME: why`), and
/// runs until it is stopped. Returns 2 for a usage error.
pub fn main(command: &str, args: &[&str]) -> u8 {
    let args = match Args::from_args(&[command], args) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    0
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    2
                }
            };
        }
    };
    let scripts = match &args.dir {
        Some(dir) => match load_scripts(dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{command}: {e}");
                return 2;
            }
        },
        None => builtin_scripts(),
    };
    if args.list {
        for s in &scripts {
            let servers: Vec<&str> = s.servers.iter().map(|l| l.name()).collect();
            println!(
                "{}\n  client (given {}): {}\n  correct: {}",
                s.name,
                servers.join(", "),
                s.client,
                s.correct
            );
        }
        return 0;
    }
    let opts = ServeOptions {
        host: args.host,
        port: args.port,
        peer_port: args.peer_port,
        control_port: args.control_port,
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
    };
    let server = match ScriptedServer::start(&opts, scripts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{command}: cannot listen: {e}");
            return 2;
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    let again = args.scenario.clone().map(|name| (name, server.starter()));
    server.on_verdict(move |name, verdict| {
        // Each finished run of --scenario starts the next one before its
        // verdict is printed, so a client that reads the verdict and
        // connects again finds the next run waiting.
        if let Some((name, start)) = &again {
            if let Err(e) = start(name) {
                let _ = tx.send(e);
            }
        }
        match verdict {
            Ok(()) => println!("pass  {name}"),
            Err(why) => println!("FAIL  {name}: {why}"),
        }
        let _ = io::stdout().flush();
    });
    // The verdict callback is in place before the first run starts: a run
    // that ended before it was registered would print nothing and start no
    // next run (a client that connected at once, on a busy machine).
    if let Some(name) = &args.scenario {
        if let Err(e) = server.start_scenario(name) {
            eprintln!("{command}: {e}");
            return 2;
        }
    }
    println!(
        "main {} peer {} control {}",
        server.main_addr(),
        server.peer_addr(),
        server.control_addr()
    );
    let _ = io::stdout().flush();
    if let Ok(e) = rx.recv() {
        eprintln!("{command}: {e}");
        return 2;
    }
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_scripts_parse() {
        let scripts = super::builtin_scripts();
        assert!(scripts.len() >= 9, "{} scripts", scripts.len());
        for s in &scripts {
            assert!(!s.name.ends_with(".txt"), "{}", s.name);
        }
    }
}
