//! The node's UDP port, served by one QUIC endpoint per thread: a lane. Each lane is a
//! single-threaded runtime that drives its endpoint and every task of that endpoint's
//! connections, so a datagram, its connection and the connection's room streams are handled
//! on one thread, where tokio's work-stealing runtime woke a second thread for most of them
//! (benches/RESULTS.md, "One endpoint per thread").
//!
//! The lanes' sockets share the port (`SO_REUSEPORT`). A classic BPF program attached to the
//! group steers each datagram by its destination connection id, whose first byte the node
//! chose to be the lane's number (`cids`), so a client whose address changes (a NAT that
//! rebinds, a migration) still reaches its connection's lane; a client's first Initial, whose
//! id the client chose, goes to the lane that its id's byte picks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::wakes::Doorbell;

/// The most lanes: the connection id's first byte names one.
pub const MAX_LANES: usize = 64;

/// One endpoint on the node's port, and the thread whose runtime drives it.
pub struct Lane {
    pub endpoint: quinn::Endpoint,
    /// Where the endpoint's connections are served.
    pub runtime: Handle,
    /// Dropped to end the thread (with the lane, or by `join`): its runtime then stops,
    /// with what still runs on it.
    _stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// Every lane of the node's port.
pub struct Lanes(Vec<Lane>);

impl Lanes {
    /// Binds `count` sockets to `addr` (one plain socket for a count of 1; at most
    /// [`MAX_LANES`]) and makes an endpoint on each with `endpoint`, given the lane's number,
    /// inside the lane's runtime. The endpoint's connection ids must begin with that number
    /// (see [`endpoint_config`](crate::endpoint_config)).
    ///
    /// # Errors
    /// The address cannot be bound, a thread cannot be started, or `endpoint` fails.
    pub fn bind(
        addr: SocketAddr,
        count: usize,
        endpoint: impl Fn(u8, std::net::UdpSocket) -> std::io::Result<quinn::Endpoint>,
    ) -> anyhow::Result<Self> {
        let sockets = sockets(addr, count.clamp(1, MAX_LANES))?;
        let mut lanes = Vec::with_capacity(sockets.len());
        for (number, socket) in sockets.into_iter().enumerate() {
            let (runtime, stop, thread) = spawn_runtime(number)?;
            let endpoint = {
                // quinn spawns the endpoint's driver on the runtime it is made in.
                let _entered = runtime.enter();
                endpoint(number as u8, socket).context("starting the QUIC endpoint")?
            };
            lanes.push(Lane { endpoint, runtime, _stop: stop, thread });
        }
        Ok(Self(lanes))
    }

    /// The first lane's endpoint: every lane has the same address.
    #[must_use]
    pub fn first(&self) -> &quinn::Endpoint {
        &self.0[0].endpoint
    }

    /// The lanes, by number.
    pub fn iter(&self) -> impl Iterator<Item = &Lane> {
        self.0.iter()
    }

    /// Stops every lane's runtime and waits for its thread: blocks, for `spawn_blocking`.
    pub fn join(self) {
        // Every lane told first, so that they stop side by side.
        let threads: Vec<_> = self.0.into_iter().map(|lane| lane.thread).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A thread running a single-threaded runtime until its stop sender is dropped.
fn spawn_runtime(number: usize) -> anyhow::Result<(Handle, oneshot::Sender<()>, JoinHandle<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(format!("chat-lane-{number}-blocking"))
        .build()
        .context("making a lane's runtime")?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("chat-lane-{number}"))
        .spawn(move || {
            let bell = Arc::new(Doorbell::default());
            crate::wakes::enter(Arc::clone(&bell));
            runtime.spawn(crate::wakes::relay(bell));
            let _ = runtime.block_on(stopped);
        })
        .context("starting a lane's thread")?;
    Ok((handle, stop, thread))
}

/// One plain socket for one lane; for more, as many sockets sharing the port, with the
/// steering program attached.
fn sockets(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    let bound = std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    if count == 1 {
        return Ok(vec![bound]);
    }
    shared_port(bound, count)
}

#[cfg(target_os = "linux")]
fn shared_port(
    probe: std::net::UdpSocket,
    count: usize,
) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
    use std::os::fd::AsRawFd;

    // The plain bind above proved the port free (or chose one for port 0): a port shared
    // with a process of the same user would have taken part of its traffic. It is let go
    // for the lanes, which then hold it together; another node binding it afterwards fails
    // as before, since its own first bind is a plain one.
    let addr = probe.local_addr().context("reading the bound address")?;
    drop(probe);
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
            .context("making a UDP socket")?;
        socket::setsockopt(&fd, sockopt::ReusePort, &true).context("setting SO_REUSEPORT")?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
            .with_context(|| format!("binding UDP {addr} for another lane"))?;
        sockets.push(std::net::UdpSocket::from(fd));
    }
    let mut program = steering(count as u32);
    let program = nix::libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    socket::setsockopt(&sockets[0], sockopt::AttachReusePortCbpf, &program)
        .context("attaching the lanes' steering program (SO_ATTACH_REUSEPORT_CBPF)")?;
    Ok(sockets)
}

/// Elsewhere one lane: the steering is Linux's.
#[cfg(not(target_os = "linux"))]
fn shared_port(
    bound: std::net::UdpSocket,
    _count: usize,
) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    Ok(vec![bound])
}

/// The classic BPF program that picks a datagram's socket in the group: the first byte of
/// its destination connection id, modulo the lanes. The program sees the UDP payload. A
/// long header (first bit set) has its id at byte 6 (after the first byte, the version and
/// the id's length); a short header at byte 1. A datagram too short to read falls to lane 0.
#[cfg(target_os = "linux")]
fn steering(lanes: u32) -> Vec<nix::libc::sock_filter> {
    use nix::libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JA, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_MOD, BPF_RET,
        sock_filter,
    };
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter { code: code as u16, jt, jf, k };
    vec![
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
        // Long header: on to the next instruction; short: two further.
        op(BPF_JMP | BPF_JSET | BPF_K, 0, 2, 0x80),
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 6),
        op(BPF_JMP | BPF_JA, 0, 0, 1),
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 1),
        op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, lanes),
        op(BPF_RET | BPF_A, 0, 0, 0),
    ]
}

/// `socket` for a lane's endpoint: quinn's own tokio socket, except that a receive that
/// drains the socket says so. quinn's endpoint driver reads until the socket reports
/// `WouldBlock`, so every wake cost a second `recvmmsg` that found nothing (about one a
/// message; benches/RESULTS.md, "One `recvmmsg` a wake").
///
/// # Errors
/// The socket cannot be registered with this thread's runtime.
pub fn udp_socket(socket: std::net::UdpSocket) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
    #[cfg(target_os = "linux")]
    {
        Ok(Arc::new(drained::DrainedSocket::new(socket)?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)
    }
}

#[cfg(target_os = "linux")]
mod drained {
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, ready};

    use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
    use tokio::io::Interest;

    /// A UDP socket whose readiness is cleared as soon as a receive takes fewer datagrams
    /// than it had room for. Linux's `recvmmsg` on a non-blocking socket stops early only
    /// when the queue is empty; a datagram that comes after still raises an edge in epoll,
    /// which tokio's driver sees on its next turn, so none waits unread.
    #[derive(Debug)]
    pub(super) struct DrainedSocket {
        io: tokio::net::UdpSocket,
        state: UdpSocketState,
    }

    impl DrainedSocket {
        pub(super) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
            let state = UdpSocketState::new((&socket).into())?;
            socket.set_nonblocking(true)?;
            Ok(Self { io: tokio::net::UdpSocket::from_std(socket)?, state })
        }
    }

    impl quinn::AsyncUdpSocket for DrainedSocket {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
            Box::pin(Writable(self))
        }

        fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
            self.io.try_io(Interest::WRITABLE, || self.state.send((&self.io).into(), transmit))
        }

        fn poll_recv(
            &self,
            cx: &mut Context,
            bufs: &mut [io::IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            loop {
                ready!(self.io.poll_recv_ready(cx))?;
                let mut drained = None;
                let received = self.io.try_io(Interest::READABLE, || {
                    let taken = self.state.recv((&self.io).into(), bufs, meta)?;
                    if taken < bufs.len() {
                        // Told as `WouldBlock`, which is what clears tokio's readiness.
                        drained = Some(taken);
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(taken)
                });
                match (received, drained) {
                    (_, Some(taken)) | (Ok(taken), None) => return Poll::Ready(Ok(taken)),
                    (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {}
                    (Err(e), None) => return Poll::Ready(Err(e)),
                }
            }
        }

        fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
            self.io.local_addr()
        }

        fn may_fragment(&self) -> bool {
            self.state.may_fragment()
        }

        fn max_transmit_segments(&self) -> usize {
            self.state.max_gso_segments()
        }

        fn max_receive_segments(&self) -> usize {
            self.state.gro_segments()
        }
    }

    /// Waits for the socket to take sends again, after one found it full.
    #[derive(Debug)]
    struct Writable(Arc<DrainedSocket>);

    impl quinn::UdpPoller for Writable {
        fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
            self.0.io.poll_send_ready(cx)
        }
    }
}
