//! Member processes: the real `dflockd` binary in cluster mode, or this
//! test binary re-run as a toy member (see `toy.rs`); started, stopped,
//! frozen and resumed always by PID, never by name: other engineers run
//! the same binaries on this machine.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::toy::{MemberSpec, MEMBER_ENV};

/// The test that becomes a member process when [`MEMBER_ENV`] is set.
const MEMBER_TEST: &str = "toy_member_process";

/// What a member process runs.
pub enum Launch {
    /// The toy service of `toy.rs` (this test binary).
    Toy(MemberSpec),
    /// The `dflockd` binary with these arguments; it serves once its
    /// client port accepts connections.
    Server {
        dir: PathBuf,
        args: Vec<String>,
        client: SocketAddr,
    },
}

/// One member process (or none, while it is down).
pub struct Member {
    pub id: u64,
    pub launch: Launch,
    child: Option<Child>,
    stopped: bool,
}

impl Member {
    pub fn new(id: u64, launch: Launch) -> Member {
        Member {
            id,
            launch,
            child: None,
            stopped: false,
        }
    }

    /// Starts the process and waits (bounded) until it serves.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "member {} is running", self.id);
        let (mut command, dir) = match &self.launch {
            Launch::Toy(spec) => {
                let mut c = Command::new(std::env::current_exe().expect("the test binary"));
                c.args([
                    MEMBER_TEST,
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(MEMBER_ENV, spec.encode());
                (c, spec.dir.clone())
            }
            Launch::Server { dir, args, .. } => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_dflockd"));
                c.args(args);
                (c, dir.clone())
            }
        };
        // Panics, bind failures and log lines, kept beside the member's
        // directory (appended across restarts).
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("stderr"))
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start a member");
        if let Launch::Server { client, .. } = &self.launch {
            let client = *client;
            let pid = child.id();
            self.child = Some(child);
            self.stopped = false;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if TcpStream::connect_timeout(&client, Duration::from_millis(200)).is_ok() {
                    return;
                }
                if !self.alive() {
                    self.kill9();
                    panic!("member {} (pid {pid}) exited before it served", self.id);
                }
                if Instant::now() >= deadline {
                    self.kill9();
                    panic!("member {} (pid {pid}) did not become ready", self.id);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The member prints `TOY-MEMBER-READY ID` once it serves.
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("TOY-MEMBER-READY ") {
                    let _ = tx.send(());
                }
            }
        });
        let pid = child.id();
        self.child = Some(child);
        self.stopped = false;
        // Ready, or dead (a port it could not bind): whichever comes first.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return,
                Err(_) if !self.alive() => {
                    self.kill9();
                    panic!("member {} (pid {pid}) exited before it served", self.id);
                }
                Err(_) if Instant::now() >= deadline => {
                    self.kill9();
                    panic!("member {} (pid {pid}) did not become ready", self.id);
                }
                Err(_) => {}
            }
        }
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            let pid = c.id() as libc::pid_t;
            // SAFETY: kill(2) on the PID of a child we started and have
            // not reaped: it cannot name another process.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// `kill -9`, then reaps the process.
    pub fn kill9(&mut self) {
        if self.stopped {
            // A stopped process dies of SIGKILL as well; no SIGCONT needed.
            self.stopped = false;
        }
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// `SIGSTOP`: the process freezes with its sockets open.
    pub fn freeze(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// `SIGCONT`.
    pub fn thaw(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// Whether the process is still alive (not exited on its own).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `f` holds, polling every few ms, or panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
