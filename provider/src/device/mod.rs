//! The soft RoCE device: one UDP socket on one address (sending also from
//! its connections' flow ports), the key and queue-pair tables, and the
//! progress thread that runs the timers and receives packets, so that a
//! passive target makes progress without the application calling into the
//! library; application threads that poll receive in their own thread
//! instead ([`progress`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use rustc_hash::FxHashMap;

mod dispatch;
mod hold_watch;
mod keys;
mod lookups;
mod odp_events;
mod progress;

pub(crate) use odp_events::before_odp_registration;
pub use odp_events::{ODP_EVENTS_ENV, OdpEventSources, OdpEvents, UnknownOdpEvents};
pub(crate) use progress::Claim;

use keys::KeyTable;
use lookups::BatchLookups;

use crate::net::{
    Ipv4IdPolicy, Lossy, LossySocket, LossyStats, OutPacket, RoceSocket, SocketConfig, Transport,
};
use crate::rc::{Outbox, QpCore, Region, RegionTable};

/// Datagrams received per system call, and packets handed to the socket per
/// send call.
const BATCH: usize = 64;

/// Packets a send of a few (a ping-pong's request and acknowledgement)
/// prepares slots for.
const FEW: usize = 4;

/// A receive slot without GRO: the largest RoCE packet (4096-byte MTU plus
/// headers and ICRC) with room to spare, so an oversized datagram is seen
/// as truncated rather than silently cut.
const SLOT_BYTES: usize = 4096 + 256;

/// How a device's transport is set up.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// UDP port: 4791 for real RoCE peers, 0 for any free port.
    pub port: u16,
    /// Socket options (GSO, GRO, IPv6 checksums, IPv4 ICRC policy,
    /// buffer sizes).
    pub socket: SocketConfig,
    /// Seeded faults injected on every packet the device sends (tests of
    /// the transport's recovery).
    pub faults: Option<Lossy>,
    /// Which event source the device's ODP registrations start (by
    /// default the userfaultfd monitor; see [`OdpEvents`]).
    pub odp_events: OdpEvents,
    /// Send each connection's packets from the UDP source port kernel rxe
    /// gives its flow ([`crate::wire::udp_source_port`] of the two QP
    /// numbers; one send-only socket per port in use), so that ECMP
    /// fabrics spread connections as they do rxe's. Off: every packet
    /// goes out from the device's own port. Receiving is on the device's
    /// port either way.
    pub flow_source_ports: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            port: crate::wire::ROCE_V2_PORT,
            socket: SocketConfig {
                gro: true,
                recv_buffer: Some(8 << 20),
                send_buffer: Some(8 << 20),
                ..SocketConfig::default()
            },
            faults: None,
            odp_events: OdpEvents::Auto,
            flow_source_ports: true,
        }
    }
}

/// Counters of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Packets sent. A packet is counted before the system call that
    /// sends it (one the peer may already have answered is always
    /// counted); a reader concurrent with a failing send may briefly see
    /// the packets that call could not send.
    pub tx_packets: u64,
    /// Packets received and accepted by a queue pair.
    pub rx_packets: u64,
    /// Received datagrams that did not parse.
    pub rx_malformed: u64,
    /// Received packets with a wrong ICRC.
    pub rx_bad_icrc: u64,
    /// IPv4 packets whose ICRC matched only with a non-zero IP ID solved
    /// for (kernel rxe's packets, segments of a GSO send): a 16-bit check.
    pub rx_icrc_solved_ip_id: u64,
    /// Packets for a queue pair that does not exist.
    pub rx_unknown_qp: u64,
    /// Packets for a queue pair that cannot take them in its state (a
    /// request before RTR, a response before RTS, anything in ERROR).
    pub rx_qp_not_ready: u64,
    /// Packets whose source or destination address is not the one the
    /// queue pair was connected with (an off-path sender).
    pub rx_wrong_address: u64,
    /// Packets whose P_Key does not admit the queue pair's partition.
    pub rx_bad_pkey: u64,
    /// Packets the socket refused to send (each is recovered by the
    /// transport's retransmission).
    pub tx_errors: u64,
    /// Connections whose flow's UDP source port could not be bound (held
    /// by another user's socket): they send from the device's own port.
    pub tx_flow_port_fallbacks: u64,
    /// What fault injection did, on a device opened with faults.
    pub faults: Option<LossyStats>,
}

#[derive(Default)]
struct Counters {
    tx_packets: AtomicU64,
    rx_packets: AtomicU64,
    rx_malformed: AtomicU64,
    rx_bad_icrc: AtomicU64,
    rx_icrc_solved_ip_id: AtomicU64,
    rx_unknown_qp: AtomicU64,
    rx_qp_not_ready: AtomicU64,
    rx_wrong_address: AtomicU64,
    rx_bad_pkey: AtomicU64,
    tx_errors: AtomicU64,
    tx_flow_port_fallbacks: AtomicU64,
}

/// What the progress thread and the API share.
struct Shared {
    transport: Box<dyn Transport>,
    local: SocketAddr,
    ipv4_id: Ipv4IdPolicy,
    /// Outboxes for the application's threads to reuse, keeping their
    /// arenas' capacity.
    outboxes: Mutex<Vec<Outbox>>,
    mrs: RwLock<KeyTable<dyn Region>>,
    /// By number; a fast integer hash, as in [`KeyTable`].
    qps: RwLock<FxHashMap<u32, Arc<QpCore>>>,
    stop: AtomicBool,
    counters: Counters,
    /// The receive side, taken by whichever thread receives.
    rx: Mutex<progress::Rx>,
    /// When the device opened (the clock of [`progress::Manual`]).
    opened: Instant,
    /// Whether READ replies are in progress (mirrors the receive side's
    /// list, which only the receive lock's holder reads).
    replies_pending: AtomicBool,
    /// Whether the receive side holds acknowledgements back, against the
    /// progress thread's long sleeps (see [`hold_watch`]).
    hold_watch: hold_watch::HoldWatch,
    /// Application threads driving progress.
    manual: progress::Manual,
    /// The progress thread, to wake when application threads stop
    /// driving progress.
    progress_thread: std::sync::OnceLock<std::thread::Thread>,
}

impl RegionTable for Shared {
    fn find_mr(&self, key: u32) -> Option<Arc<dyn Region>> {
        self.mrs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key, |mr| mr.key())
            .cloned()
    }
}

impl Shared {
    /// Sends and empties `out`, up to [`BATCH`] packets per socket call.
    pub(super) fn send(&self, out: &mut Outbox) {
        self.send_with(out, None);
    }

    /// Sends and empties `first`, then `second`, in the same socket calls
    /// (up to [`BATCH`] packets each).
    fn send_with(&self, first: &mut Outbox, mut second: Option<&mut Outbox>) {
        let total = first.len() + second.as_ref().map_or(0, |o| o.len());
        if total == 0 {
            return;
        }
        // A ping-pong's request and acknowledgement need no 64 slots made
        // ready first.
        if total <= FEW {
            self.send_packets::<FEW>(first, second.as_deref_mut());
        } else {
            self.send_packets::<BATCH>(first, second.as_deref_mut());
        }
        first.clear();
        if let Some(o) = second {
            o.clear();
        }
    }

    /// Sends the packets of `first`, then `second`, up to `N` per socket
    /// call.
    fn send_packets<const N: usize>(&self, first: &mut Outbox, second: Option<&mut Outbox>) {
        // Filled field by field from each outbox's iterator in turn:
        // through one chained iterator (not inlined) each packet came back
        // through memory and was read wider than it was written, which
        // stalled every packet.
        let mut batch: [OutPacket<'_>; N] =
            std::array::from_fn(|_| OutPacket::new(self.local, &mut []));
        let mut n = 0;
        for out in std::iter::once(first).chain(second) {
            for (source_port, dest, bytes) in out.packets_mut() {
                let slot = &mut batch[n];
                slot.source_port = source_port;
                slot.dest = dest;
                slot.buf = bytes;
                n += 1;
                if n == N {
                    self.transmit(&mut batch);
                    n = 0;
                }
            }
        }
        self.transmit(&mut batch[..n]);
    }

    /// Hands `batch` to the socket, as many calls as it takes.
    fn transmit(&self, batch: &mut [OutPacket<'_>]) {
        let n = batch.len();
        let mut at = 0;
        while at < n {
            // Counted before the system call: on loopback the peer may
            // receive, answer and complete before it returns, and a
            // reader of the peer's completion must see this packet
            // counted. What the call did not send is taken back.
            let tried = (n - at) as u64;
            self.counters.tx_packets.fetch_add(tried, Relaxed);
            // A short count means the next packet failed; sending from
            // it again returns its error, and it is skipped (a lost
            // packet, which retransmission recovers).
            let sent = match self.transport.send_batch(&mut batch[at..n]) {
                Ok(sent) if sent > 0 => sent,
                Ok(_) | Err(_) => {
                    self.counters.tx_errors.fetch_add(1, Relaxed);
                    at += 1;
                    0
                }
            };
            at += sent;
            self.counters
                .tx_packets
                .fetch_sub(tried - sent as u64, Relaxed);
        }
    }

    /// Runs `f` with a pooled outbox, then sends what it queued.
    fn with_outbox<T>(&self, f: impl FnOnce(&mut Outbox) -> T) -> T {
        let pooled = self
            .outboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut out = pooled.unwrap_or_default();
        let result = f(&mut out);
        // Acknowledgements held back by a polling thread leave with these
        // packets, in the same system call: ahead of them if what was
        // posted may answer a message they acknowledge, else after them
        // (one GSO send).
        match self.deferred_acks() {
            Some(mut rx) => {
                let acks = rx.acks();
                if acks.must_lead() {
                    self.send_with(acks, Some(&mut out));
                } else {
                    self.send_with(&mut out, Some(acks));
                }
            }
            None => self.send(&mut out),
        }
        self.outboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(out);
        result
    }

    /// Like [`Self::with_outbox`], holding `qp`'s send-order lock until the
    /// packets are sent: for everything that builds requester packets.
    pub(super) fn in_send_order<T>(&self, qp: &QpCore, f: impl FnOnce(&mut Outbox) -> T) -> T {
        let _order = qp.send_order.lock().unwrap_or_else(PoisonError::into_inner);
        self.with_outbox(f)
    }

    /// [`Self::in_send_order`] with the caller's (empty) outbox: the
    /// progress thread's path for every response it receives.
    fn in_send_order_with<T>(
        &self,
        qp: &QpCore,
        out: &mut Outbox,
        f: impl FnOnce(&mut Outbox) -> T,
    ) -> T {
        let _order = qp.send_order.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(out);
        self.send(out);
        result
    }

    pub(super) fn qp(&self, qpn: u32) -> Option<Arc<QpCore>> {
        self.qps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&qpn)
            .cloned()
    }
}

/// One soft RoCE device (one address). Contexts opened on the same address
/// share it.
pub(crate) struct Device {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_qpn: AtomicU32,
    next_pd: AtomicU32,
    pub(crate) odp_events: OdpEvents,
    flow_source_ports: bool,
}

/// Open devices, by address.
static DEVICES: Mutex<Vec<(SocketAddr, Weak<Device>)>> = Mutex::new(Vec::new());

impl Device {
    /// The device bound to `ip:options.port`, opened with `options` if no
    /// context holds it yet (an open device keeps the options it was opened
    /// with).
    pub(crate) fn open(ip: IpAddr, options: &DeviceOptions) -> std::io::Result<Arc<Device>> {
        let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
        devices.retain(|(_, d)| d.strong_count() > 0);
        if options.port != 0
            && let Some(dev) = devices
                .iter()
                .find(|(a, _)| *a == SocketAddr::new(ip, options.port))
                .and_then(|(_, d)| d.upgrade())
        {
            return Ok(dev);
        }
        let socket =
            RoceSocket::bind_with(SocketAddr::new(ip, options.port), options.socket.clone())?;
        let local = socket.local_addr();
        let transport: Box<dyn Transport> = match options.faults {
            Some(faults) => Box::new(LossySocket::new(socket, faults)?),
            None => Box::new(socket),
        };
        let shared = Arc::new(Shared {
            transport,
            local,
            ipv4_id: options.socket.ipv4_id,
            outboxes: Mutex::new(Vec::new()),
            mrs: RwLock::new(KeyTable::default()),
            qps: RwLock::new(FxHashMap::default()),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            rx: Mutex::new(progress::Rx::new(options.socket.gro)),
            opened: Instant::now(),
            replies_pending: AtomicBool::new(false),
            hold_watch: hold_watch::HoldWatch::default(),
            manual: progress::Manual::default(),
            progress_thread: std::sync::OnceLock::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("roce-{local}"))
            .spawn(move || thread_shared.run())?;
        let _ = shared.progress_thread.set(thread.thread().clone());
        let dev = Arc::new(Device {
            shared,
            thread: Mutex::new(Some(thread)),
            // Counted from 17 by new_qpn.
            next_qpn: AtomicU32::new(0),
            next_pd: AtomicU32::new(1),
            odp_events: options.odp_events,
            flow_source_ports: options.flow_source_ports,
        });
        devices.push((local, Arc::downgrade(&dev)));
        Ok(dev)
    }

    /// The address and port the device's socket is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    pub(crate) fn new_pd(&self) -> u32 {
        self.next_pd.fetch_add(1, Relaxed)
    }

    /// A QP number not in use: counting up from 17 as rxe does, and after
    /// 2^24 - 17 of them wrapping to 17 again (0 and 1 are the special
    /// QPs of InfiniBand), skipping numbers still in use.
    pub(crate) fn new_qpn(&self) -> u32 {
        const FIRST: u32 = 17;
        loop {
            let n = self.next_qpn.fetch_add(1, Relaxed);
            let qpn = FIRST + n % ((1 << 24) - FIRST);
            if self.shared.qp(qpn).is_none() {
                return qpn;
            }
        }
    }

    /// Opens the UDP source port of the flow between queue pairs
    /// `local_qpn` and `remote_qpn` (see [`DeviceOptions::flow_source_ports`])
    /// and returns it; 0 (the device's own port) when flow ports are off or
    /// the port cannot be bound (counted). Each non-zero port returned needs
    /// one [`Self::close_flow_port`].
    pub(crate) fn open_flow_port(&self, local_qpn: u32, remote_qpn: u32) -> u16 {
        if !self.flow_source_ports {
            return 0;
        }
        let port = crate::wire::udp_source_port(0, local_qpn, remote_qpn);
        match self.shared.transport.open_source_port(port) {
            Ok(()) => port,
            Err(_) => {
                let fallbacks = &self.shared.counters.tx_flow_port_fallbacks;
                fallbacks.fetch_add(1, Relaxed);
                0
            }
        }
    }

    /// Gives back a port from [`Self::open_flow_port`] (0 does nothing),
    /// once every answer built so far has gone out (an acknowledgement
    /// held back for the queue pair leaves from its flow port, not from
    /// the device's).
    pub(crate) fn close_flow_port(&self, port: u16) {
        if port != 0 {
            self.shared.send_held_back();
            self.shared.transport.close_source_port(port);
        }
    }

    /// Registers the region `make` builds from its new key (see
    /// [`KeyTable::insert`]); `None` when the key space is exhausted. The
    /// table holds it as a [`Region`]; the caller gets it back as built.
    pub(crate) fn register_mr<R: Region + 'static>(
        &self,
        make: impl FnOnce(u32) -> R,
    ) -> Option<Arc<R>> {
        let mut made = None;
        self.shared
            .mrs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(|key| {
                let region = Arc::new(make(key));
                made = Some(Arc::clone(&region));
                region as Arc<dyn Region>
            })?;
        made
    }

    pub(crate) fn deregister_mr(&self, key: u32) {
        self.shared
            .mrs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key, |mr| mr.key());
    }

    pub(crate) fn lookup_mr(&self, key: u32) -> Option<Arc<dyn Region>> {
        self.shared.find_mr(key)
    }

    pub(crate) fn add_qp(&self, qp: Arc<QpCore>) {
        self.shared
            .qps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(qp.qpn, qp);
    }

    pub(crate) fn remove_qp(&self, qpn: u32) {
        self.shared
            .qps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&qpn);
    }

    /// The table of regions, for the engine's lookups.
    pub(crate) fn regions(&self) -> &dyn RegionTable {
        &*self.shared
    }

    /// Runs `f` with an outbox, then sends what it queued, in send order
    /// for `qp` (see [`QpCore::send_order`]).
    pub(crate) fn in_send_order<T>(&self, qp: &QpCore, f: impl FnOnce(&mut Outbox) -> T) -> T {
        self.shared.in_send_order(qp, f)
    }

    /// Runs `datagram` (BTH to ICRC) through the receive path as if the
    /// socket had delivered it from `src` to the device's own address:
    /// ICRC check, parse, dispatch; responses are sent.
    pub(crate) fn receive_datagram(&self, src: SocketAddr, datagram: &[u8]) {
        self.shared.receive_datagram(src, datagram);
    }

    /// Receives and handles what the socket holds, in the calling thread,
    /// unless another thread is receiving; returns the datagrams handled.
    /// While application threads call this, the progress thread leaves
    /// receiving to them (see [`progress`]).
    pub(crate) fn progress(&self, claim: progress::Claim) -> usize {
        self.shared.progress(claim)
    }

    /// Ends the calling thread's claim on the socket (see
    /// [`progress::Claim::Poll`]): it armed a completion queue and is about
    /// to wait.
    pub(crate) fn end_claim(&self) {
        progress::end_claim(&self.shared);
    }

    /// Marks the calling thread as driving progress until the guard drops
    /// (a completion-queue wait that spins).
    pub(crate) fn driving_progress(&self) -> progress::Driving<'_> {
        progress::Driving::new(&self.shared)
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> DeviceStats {
        let c = &self.shared.counters;
        DeviceStats {
            tx_packets: c.tx_packets.load(Relaxed),
            rx_packets: c.rx_packets.load(Relaxed),
            rx_malformed: c.rx_malformed.load(Relaxed),
            rx_bad_icrc: c.rx_bad_icrc.load(Relaxed),
            rx_icrc_solved_ip_id: c.rx_icrc_solved_ip_id.load(Relaxed),
            rx_unknown_qp: c.rx_unknown_qp.load(Relaxed),
            rx_qp_not_ready: c.rx_qp_not_ready.load(Relaxed),
            rx_wrong_address: c.rx_wrong_address.load(Relaxed),
            rx_bad_pkey: c.rx_bad_pkey.load(Relaxed),
            tx_errors: c.tx_errors.load(Relaxed),
            tx_flow_port_fallbacks: c.tx_flow_port_fallbacks.load(Relaxed),
            faults: self.shared.transport.fault_stats(),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}
