//! The soft RoCE device: one UDP socket on one address, the key and
//! queue-pair tables, and the progress thread that receives packets and
//! runs the timers, so that a passive target makes progress without the
//! application calling into the library.

mod socket;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket::{Icrc, Socket};

use crate::rc::{Outbox, QpCore, Regions};
use crate::verbs::MrInner;
use crate::wire::PacketRepr;

/// Counters of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets received and handed to a queue pair.
    pub rx_packets: u64,
    /// Received datagrams that did not parse.
    pub rx_malformed: u64,
    /// Received packets with a wrong ICRC.
    pub rx_bad_icrc: u64,
    /// IPv4 packets whose ICRC could not be checked (sender's IP ID unknown).
    pub rx_icrc_unverified: u64,
    /// Packets for a queue pair that does not exist.
    pub rx_unknown_qp: u64,
    /// Send errors from the socket.
    pub tx_errors: u64,
}

#[derive(Default)]
struct Counters {
    tx_packets: AtomicU64,
    rx_packets: AtomicU64,
    rx_malformed: AtomicU64,
    rx_bad_icrc: AtomicU64,
    rx_icrc_unverified: AtomicU64,
    rx_unknown_qp: AtomicU64,
    tx_errors: AtomicU64,
}

/// What the progress thread and the API share.
struct Shared {
    socket: Socket,
    mrs: RwLock<HashMap<u32, Arc<MrInner>>>,
    qps: RwLock<HashMap<u32, Arc<QpCore>>>,
    stop: AtomicBool,
    counters: Counters,
}

impl Regions for Shared {
    fn lookup_mr(&self, key: u32) -> Option<Arc<MrInner>> {
        self.mrs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }
}

impl Shared {
    fn send(&self, out: &mut Outbox) {
        for (dst, mut bytes) in out.packets.drain(..) {
            match self.socket.send(dst, &mut bytes) {
                Ok(()) => self.counters.tx_packets.fetch_add(1, Relaxed),
                Err(_) => self.counters.tx_errors.fetch_add(1, Relaxed),
            };
        }
    }

    fn qp(&self, qpn: u32) -> Option<Arc<QpCore>> {
        self.qps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&qpn)
            .cloned()
    }

    /// The progress loop: receive, dispatch, run timers.
    fn run(&self) {
        let mut buf = vec![0u8; 1 << 16];
        let mut out = Outbox::default();
        while !self.stop.load(Relaxed) {
            let now = Instant::now();
            let qps: Vec<Arc<QpCore>> = self
                .qps
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            let mut wait = Duration::from_millis(20);
            for qp in &qps {
                match qp.deadline() {
                    Some(t) if t <= now => qp.on_timer(self, now, &mut out),
                    Some(t) => wait = wait.min(t - now),
                    None => {}
                }
            }
            self.send(&mut out);
            drop(qps);
            match self.socket.recv(&mut buf, wait) {
                Ok(Some((len, _src, icrc))) => self.dispatch(&buf[..len], icrc, &mut out),
                Ok(None) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
            self.send(&mut out);
        }
    }

    fn dispatch(&self, datagram: &[u8], icrc: Icrc, out: &mut Outbox) {
        match icrc {
            Icrc::Good => {}
            Icrc::Unverified => {
                self.counters.rx_icrc_unverified.fetch_add(1, Relaxed);
            }
            Icrc::Bad => {
                self.counters.rx_bad_icrc.fetch_add(1, Relaxed);
                return;
            }
        }
        let Ok(pkt) = PacketRepr::parse(datagram) else {
            self.counters.rx_malformed.fetch_add(1, Relaxed);
            return;
        };
        let Some(qp) = self.qp(pkt.bth.dest_qp) else {
            self.counters.rx_unknown_qp.fetch_add(1, Relaxed);
            return;
        };
        self.counters.rx_packets.fetch_add(1, Relaxed);
        qp.receive(self, &pkt, out);
    }
}

/// One soft RoCE device (one address). Contexts opened on the same address
/// share it.
pub(crate) struct Device {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_key: AtomicU32,
    next_qpn: AtomicU32,
    next_pd: AtomicU32,
}

/// Open devices, by address.
static DEVICES: Mutex<Vec<(SocketAddr, Weak<Device>)>> = Mutex::new(Vec::new());

impl Device {
    /// The device bound to `ip:port`, opened if no context holds it yet.
    pub(crate) fn open(ip: IpAddr, port: u16) -> std::io::Result<Arc<Device>> {
        let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
        devices.retain(|(_, d)| d.strong_count() > 0);
        if port != 0
            && let Some(dev) = devices
                .iter()
                .find(|(a, _)| *a == SocketAddr::new(ip, port))
                .and_then(|(_, d)| d.upgrade())
        {
            return Ok(dev);
        }
        let shared = Arc::new(Shared {
            socket: Socket::bind(ip, port)?,
            mrs: RwLock::new(HashMap::new()),
            qps: RwLock::new(HashMap::new()),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let local = shared.socket.local_addr();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("roce-{local}"))
            .spawn(move || thread_shared.run())?;
        let dev = Arc::new(Device {
            shared,
            thread: Mutex::new(Some(thread)),
            next_key: AtomicU32::new(1),
            // QP numbers 0 and 1 are special in InfiniBand; rxe starts at 17.
            next_qpn: AtomicU32::new(17),
            next_pd: AtomicU32::new(1),
        });
        devices.push((local, Arc::downgrade(&dev)));
        Ok(dev)
    }

    /// The address and port the device's socket is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.shared.socket.local_addr()
    }

    pub(crate) fn new_key(&self) -> u32 {
        // Index in the upper 24 bits, a varying low byte, like rxe's keys.
        let index = self.next_key.fetch_add(1, Relaxed);
        (index << 8) | (index.wrapping_mul(0x9d) & 0xff)
    }

    pub(crate) fn new_pd(&self) -> u32 {
        self.next_pd.fetch_add(1, Relaxed)
    }

    pub(crate) fn new_qpn(&self) -> u32 {
        self.next_qpn.fetch_add(1, Relaxed) & 0xff_ffff
    }

    pub(crate) fn register_mr(&self, mr: Arc<MrInner>) {
        self.shared
            .mrs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mr.key, mr);
    }

    pub(crate) fn deregister_mr(&self, key: u32) {
        self.shared
            .mrs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }

    pub(crate) fn lookup_mr(&self, key: u32) -> Option<Arc<MrInner>> {
        self.shared.lookup_mr(key)
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

    /// The regions, for the engine.
    pub(crate) fn regions(&self) -> &dyn Regions {
        &*self.shared
    }

    /// Sends what the engine produced.
    pub(crate) fn send(&self, out: &mut Outbox) {
        self.shared.send(out);
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> DeviceStats {
        let c = &self.shared.counters;
        DeviceStats {
            tx_packets: c.tx_packets.load(Relaxed),
            rx_packets: c.rx_packets.load(Relaxed),
            rx_malformed: c.rx_malformed.load(Relaxed),
            rx_bad_icrc: c.rx_bad_icrc.load(Relaxed),
            rx_icrc_unverified: c.rx_icrc_unverified.load(Relaxed),
            rx_unknown_qp: c.rx_unknown_qp.load(Relaxed),
            tx_errors: c.tx_errors.load(Relaxed),
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
