//! A runtime thread's poller: sockets registered once, edge-triggered, for
//! reads and writes; a wait with a millisecond timeout; a cross-thread
//! notification.
//!
//! On Linux it is epoll used directly: a wait is one `epoll_wait`, and a
//! socket is never re-armed, so a request costs the server `epoll_wait`,
//! `recv` and `send` and nothing else. (`polling`'s wait also sets a
//! timerfd, re-arms it and its notifier, and reads the notifier every time:
//! five system calls where one does.) Elsewhere it is `polling` in edge
//! mode, which the same readiness logic drives; tests run both on Linux.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// A socket became readable and/or writable (or hung up, which both
/// reading and writing will report).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    pub key: usize,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the socket failed: reads (writes) will not
    /// block from now on, whatever the last transfer looked like.
    pub hup: bool,
}

/// Which poller a runtime uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// epoll, directly (Linux only).
    Epoll,
    /// The `polling` crate, edge-triggered (every platform).
    Portable,
}

impl Backend {
    /// epoll where there is one.
    pub fn best() -> Backend {
        if cfg!(target_os = "linux") {
            Backend::Epoll
        } else {
            Backend::Portable
        }
    }
}

pub(crate) enum Poller {
    #[cfg(target_os = "linux")]
    Epoll(epoll::Epoll),
    Portable(Portable),
}

impl Poller {
    pub fn new(backend: Backend) -> io::Result<Poller> {
        match backend {
            #[cfg(target_os = "linux")]
            Backend::Epoll => Ok(Poller::Epoll(epoll::Epoll::new()?)),
            #[cfg(not(target_os = "linux"))]
            Backend::Epoll => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "epoll exists only on Linux",
            )),
            Backend::Portable => Ok(Poller::Portable(Portable {
                poller: polling::Poller::new()?,
                events: std::sync::Mutex::new(polling::Events::new()),
            })),
        }
    }

    /// Registers `fd` under `key`, edge-triggered for reads and writes.
    ///
    /// # Safety
    ///
    /// `fd` must be deleted ([`Poller::delete`]) before it is closed.
    pub unsafe fn add(&self, fd: RawFd, key: usize) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Poller::Epoll(e) => e.add(fd, key),
            Poller::Portable(p) => {
                p.poller
                    .add_with_mode(fd, polling::Event::all(key), polling::PollMode::Edge)
            }
        }
    }

    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Poller::Epoll(e) => e.delete(fd.as_raw_fd()),
            Poller::Portable(p) => p.poller.delete(fd),
        }
    }

    /// Waits for events (or `timeout`, or a notification) and appends them
    /// to `out`. A notification yields no event.
    pub fn wait(&self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Poller::Epoll(e) => e.wait(out, timeout),
            Poller::Portable(p) => {
                let mut events = super::lock(&p.events);
                events.clear();
                p.poller.wait(&mut events, timeout)?;
                out.extend(events.iter().map(|ev| Ready {
                    key: ev.key,
                    readable: ev.readable,
                    writable: ev.writable,
                    // `polling` does not say hang-up apart from
                    // readability: count every event as one, which turns
                    // the short-transfer shortcut of `net` off here.
                    hup: true,
                }));
                Ok(())
            }
        }
    }

    /// Wakes the current or next [`Poller::wait`].
    pub fn notify(&self) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Poller::Epoll(e) => e.notify(),
            Poller::Portable(p) => p.poller.notify(),
        }
    }
}

pub(crate) struct Portable {
    poller: polling::Poller,
    events: std::sync::Mutex<polling::Events>,
}

#[cfg(target_os = "linux")]
mod epoll {
    //! epoll through libc. Every call checks its result; the file
    //! descriptors are owned here and closed on drop.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::Ready;

    /// The `epoll_event.u64` of the notification eventfd.
    const NOTIFY: u64 = u64::MAX;
    /// Events taken from the kernel per wait.
    const BATCH: usize = 256;

    pub(crate) struct Epoll {
        epoll: OwnedFd,
        eventfd: OwnedFd,
        buf: Mutex<Vec<libc::epoll_event>>,
    }

    fn check(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    impl Epoll {
        pub fn new() -> io::Result<Epoll> {
            // SAFETY: plain system calls; the descriptors they return are
            // owned from here on.
            let epoll =
                unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            let eventfd = unsafe {
                OwnedFd::from_raw_fd(check(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?)
            };
            let e = Epoll {
                epoll,
                eventfd,
                buf: Mutex::new(Vec::with_capacity(BATCH)),
            };
            // Level-triggered: readable until `wait` reads it back to zero.
            e.ctl(
                libc::EPOLL_CTL_ADD,
                e.eventfd.as_raw_fd(),
                libc::EPOLLIN as u32,
                NOTIFY,
            )?;
            Ok(e)
        }

        fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
            let mut ev = libc::epoll_event { events, u64: data };
            // SAFETY: `ev` lives across the call; epoll copies it.
            check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) })?;
            Ok(())
        }

        pub fn add(&self, fd: RawFd, key: usize) -> io::Result<()> {
            let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            self.ctl(libc::EPOLL_CTL_ADD, fd, events, key as u64)
        }

        pub fn delete(&self, fd: RawFd) -> io::Result<()> {
            self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
        }

        pub fn wait(&self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
            // Milliseconds, rounded up so a timer is never woken early.
            let ms = match timeout {
                None => -1,
                Some(t) => {
                    let ms = t.as_nanos().div_ceil(1_000_000);
                    ms.min(libc::c_int::MAX as u128) as libc::c_int
                }
            };
            let mut buf = super::super::lock(&self.buf);
            buf.clear();
            // SAFETY: the kernel writes at most `capacity` entries into the
            // buffer, and `set_len` takes only as many as it reports.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.capacity() as libc::c_int,
                    ms,
                )
            };
            let n = match check(n) {
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            unsafe { buf.set_len(n) };
            for ev in buf.iter() {
                let (events, data) = (ev.events, ev.u64);
                if data == NOTIFY {
                    let mut count = 0u64;
                    // SAFETY: reads 8 bytes into `count`. EAGAIN (already
                    // drained) is fine.
                    unsafe {
                        libc::read(self.eventfd.as_raw_fd(), (&mut count as *mut u64).cast(), 8)
                    };
                    continue;
                }
                let hup = events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
                let rdhup = events & libc::EPOLLRDHUP as u32 != 0;
                out.push(Ready {
                    key: data as usize,
                    readable: hup || rdhup || events & libc::EPOLLIN as u32 != 0,
                    writable: hup || events & libc::EPOLLOUT as u32 != 0,
                    hup: hup || rdhup,
                });
            }
            Ok(())
        }

        pub fn notify(&self) -> io::Result<()> {
            let one = 1u64;
            // SAFETY: writes the 8 bytes of `one`.
            let r =
                unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            if r < 0 {
                let e = io::Error::last_os_error();
                // The counter is full: a notification is pending anyway.
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}
