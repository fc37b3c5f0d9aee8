//! Member processes: the real `dflockd` binary in cluster mode, or this
//! test binary re-run as a toy member (see `toy.rs`); started, stopped,
//! frozen and resumed always by PID, never by name: other engineers run
//! the same binaries on this machine.
//!
//! The evidence of a failure: a member's stderr goes to a file beside its
//! directory, appended across restarts, and the harness writes a line of
//! its own there (UTC time, the server's log format) at each start, `kill
//! -9`, `SIGSTOP` and `SIGCONT`, so its panics and log lines read in the
//! order of the faults. [`Member::report`] gives how the process ended
//! (exit code or signal) and the file's last lines: what a failing test
//! prints, since the directory goes with the test.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

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

/// Lines of a member's stderr a failure report shows.
pub const STDERR_TAIL_LINES: usize = 40;

/// One member process (or none, while it is down).
pub struct Member {
    pub id: u64,
    pub launch: Launch,
    child: Option<Child>,
    stopped: bool,
    /// The PID and status of every process of this member that ended
    /// without the harness killing it, as [`Member::alive`] found them
    /// (kept across restarts: a fault may restart a member that ended).
    exits: Vec<(u32, ExitStatus)>,
}

impl Member {
    pub fn new(id: u64, launch: Launch) -> Member {
        Member {
            id,
            launch,
            child: None,
            stopped: false,
            exits: Vec::new(),
        }
    }

    /// The member's directory (its stderr file is beside it).
    fn dir(&self) -> &std::path::Path {
        match &self.launch {
            Launch::Toy(spec) => &spec.dir,
            Launch::Server { dir, .. } => dir,
        }
    }

    /// Where the member's stderr goes, across restarts.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir().with_extension("stderr")
    }

    /// Appends a harness line to the member's stderr file: what the
    /// harness did to it, and when (the time format of the server's log
    /// lines, so they interleave).
    fn note(&self, what: &str) {
        self.note_pid(self.child.as_ref().map(Child::id), what);
    }

    fn note_pid(&self, pid: Option<u32>, what: &str) {
        let line = format!(
            "{} HARNESS member {} (pid {}): {what}\n",
            dflockd::logging::timestamp(SystemTime::now()),
            self.id,
            pid.map_or("-".to_owned(), |p| p.to_string()),
        );
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
        {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// How the member stands, and the last [`STDERR_TAIL_LINES`] lines of
    /// its stderr: what a failure message carries.
    pub fn report(&mut self) -> String {
        let pid = self.pid().unwrap_or(0);
        let mut state = if self.alive() {
            if self.stopped {
                format!("frozen (SIGSTOP), pid {pid}")
            } else {
                format!("running, pid {pid}")
            }
        } else if self.child.is_some() {
            "ended".to_owned()
        } else {
            "down (killed by the harness)".to_owned()
        };
        for (pid, status) in &self.exits {
            state.push_str(&format!("; EXITED BY ITSELF, pid {pid}: {status}"));
        }
        let path = self.stderr_path();
        format!(
            "member {}: {state}\n  last {STDERR_TAIL_LINES} lines of {}:\n{}",
            self.id,
            path.display(),
            tail(&path, STDERR_TAIL_LINES)
        )
    }

    /// A start that failed: the member's evidence, then the process gone,
    /// then the test's panic.
    fn give_up(&mut self, pid: u32, why: &str) -> ! {
        let report = self.report();
        self.kill9();
        panic!("member {} (pid {pid}) {why}\n{report}", self.id);
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
        // A process group of its own. The kernel sends SIGHUP (and then
        // SIGCONT) to the stopped processes of a process group that becomes
        // orphaned: sharing the test's group, a member frozen by `freeze`
        // died of that SIGHUP whenever a process above the test (the shell
        // or `timeout` that ran it) ended meanwhile; both fault tests freeze
        // their leader at once on schedule 5, so both lost it together.
        // Alone in its group under a living parent, a member's group is
        // never orphaned. It then no longer gets a terminal's Ctrl-C, so it
        // dies with the thread that started it instead (PR_SET_PDEATHSIG),
        // never outliving its test.
        command.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure calls only
        // async-signal-safe functions (prctl, getppid, _exit) and
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent died before the prctl: nobody will kill us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
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
        self.note_pid(Some(child.id()), "started");
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
                    self.give_up(pid, "exited before it served");
                }
                if Instant::now() >= deadline {
                    self.give_up(pid, "did not become ready");
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
                    self.give_up(pid, "exited before it served");
                }
                Err(_) if Instant::now() >= deadline => {
                    self.give_up(pid, "did not become ready");
                }
                Err(_) => {}
            }
        }
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The running (or ended, not yet restarted) process's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        if self.alive() {
            self.note("kill -9");
        }
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// `SIGSTOP`: the process freezes with its sockets open.
    pub fn freeze(&mut self) {
        self.note("SIGSTOP");
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// `SIGCONT`.
    pub fn thaw(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
        self.note("SIGCONT");
    }

    /// Whether the process is still alive (not exited on its own). A
    /// process found ended is reaped here, its status kept for
    /// [`Member::report`] and noted in its stderr file.
    pub fn alive(&mut self) -> bool {
        let Some(c) = &mut self.child else {
            return false;
        };
        match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                let pid = c.id();
                if self.exits.last().is_none_or(|(p, _)| *p != pid) {
                    self.exits.push((pid, status));
                    self.note(&format!("found exited by itself: {status}"));
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Whether a process of this member ended without the harness
    /// killing it (the one running now, or an earlier one).
    pub fn exited_by_itself(&mut self) -> bool {
        self.alive();
        !self.exits.is_empty()
    }
}

/// The last `lines` lines of the file at `path` (of its last 64 KiB at
/// most), indented; or why it could not be read.
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let shown = &all[all.len().saturating_sub(lines)..];
            if shown.is_empty() {
                return "    (empty)".to_owned();
            }
            shown
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (unreadable: {e})"),
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

/// The OOM kills counted in this process's memory cgroup (the members'
/// too, unless something moved them): cgroup v2 `memory.events`, or v1
/// `memory.oom_control`. A member ended by `SIGKILL` that the harness
/// did not send, with this count up, was the kernel's choice: a kill the
/// container's kernel log may not show.
pub fn oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let count = |path: String| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    };
    let mut found = None;
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next()?, f.next()?);
        if controllers.is_empty() {
            found = found.or_else(|| count(format!("/sys/fs/cgroup{path}/memory.events")));
        } else if controllers.split(',').any(|c| c == "memory") {
            found = count(format!("/sys/fs/cgroup/memory{path}/memory.oom_control")).or(found);
        }
    }
    found
}
