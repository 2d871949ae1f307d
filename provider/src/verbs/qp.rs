//! Reliable-connected queue pairs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use super::cq::{CqImpl, UserCq};
use super::mr::PdImpl;
use super::{CompletionQueue, Gid, Mtu, ProtectionDomain, RecvWr, SendWr, VerbsError};
use crate::device::Device;
use crate::rc::{CachedRegions, DEFAULT_PKEY, Peer, QpCore, QpState};
#[cfg(feature = "rdma-core")]
use crate::rdma_core::RdmaQp;
use crate::wire::ROCE_V2_PORT;

/// Queue sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Send work requests outstanding.
    pub max_send_wr: u32,
    /// Receive work requests outstanding.
    pub max_recv_wr: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 1024,
            max_recv_wr: 1024,
        }
    }
}

/// What one end tells the other to connect (what perftest and
/// `ibv_rc_pingpong` exchange).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteInfo {
    /// Queue pair number.
    pub qp_num: u32,
    /// First PSN it sends.
    pub psn: u32,
    /// Its GID (address).
    pub gid: Gid,
    /// Its UDP port (4791 for every real RoCE device).
    pub port: u16,
    /// Path MTU to use.
    pub mtu: Mtu,
}

/// What the RTR -> RTS transition sets (verbs' `ibv_qp_attr` fields of
/// that step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtsAttr {
    /// First PSN this queue pair sends (24 bits).
    pub sq_psn: u32,
    /// Retransmit timeout exponent (see [`QueuePairBuilder::timeout`]).
    pub timeout: u8,
    /// Retries after timeouts (7: unlimited).
    pub retry_cnt: u8,
    /// Retries after RNR NAKs (7: unlimited).
    pub rnr_retry: u8,
    /// READs and atomics kept outstanding (at least 1).
    pub max_rd_atomic: u8,
}

/// Builds a queue pair (verbs' `ibv_qp_init_attr` plus the connection
/// attributes set later).
pub struct QueuePairBuilder<'a> {
    pd: &'a ProtectionDomain,
    send_cq: &'a CompletionQueue,
    recv_cq: &'a CompletionQueue,
    caps: QpCaps,
    timeout: u8,
    retry_cnt: u8,
    rnr_retry: u8,
    min_rnr_timer: u8,
    max_rd_atomic: u8,
}

impl<'a> QueuePairBuilder<'a> {
    pub(crate) fn new(
        pd: &'a ProtectionDomain,
        send_cq: &'a CompletionQueue,
        recv_cq: &'a CompletionQueue,
    ) -> Self {
        QueuePairBuilder {
            pd,
            send_cq,
            recv_cq,
            caps: QpCaps::default(),
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 16,
        }
    }

    /// Queue sizes.
    pub fn caps(mut self, caps: QpCaps) -> Self {
        self.caps = caps;
        self
    }

    /// Retransmit timeout exponent: 4.096 µs × 2^t (default 14, 67 ms; 0
    /// waits forever).
    pub fn timeout(mut self, t: u8) -> Self {
        self.timeout = t.min(31);
        self
    }

    /// Retries after timeouts (default and 7: unlimited, as rxe counts).
    pub fn retry_cnt(mut self, n: u8) -> Self {
        self.retry_cnt = n.min(7);
        self
    }

    /// Retries after RNR NAKs (default and 7: unlimited).
    pub fn rnr_retry(mut self, n: u8) -> Self {
        self.rnr_retry = n.min(7);
        self
    }

    /// RNR timer code this queue pair asks peers to wait (default 12,
    /// 0.64 ms).
    pub fn min_rnr_timer(mut self, code: u8) -> Self {
        self.min_rnr_timer = code & 0x1f;
        self
    }

    /// READs and atomics this queue pair keeps outstanding (default 16).
    pub fn max_rd_atomic(mut self, n: u8) -> Self {
        self.max_rd_atomic = n.max(1);
        self
    }

    /// Creates the queue pair, in the RESET state.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for empty queues, or completion
    /// queues of another device; on a verbs device, queues above its
    /// limits or a failed `ibv_create_qp`.
    pub fn build(self) -> Result<QueuePair, VerbsError> {
        if self.caps.max_send_wr == 0 || self.caps.max_recv_wr == 0 {
            return Err(VerbsError::InvalidArgument("queue size 0"));
        }
        let imp = match (&self.pd.imp, &self.send_cq.imp, &self.recv_cq.imp) {
            (PdImpl::User { dev, id }, CqImpl::User(scq), CqImpl::User(rcq)) => {
                QpImpl::User(self.build_user(dev, *id, scq, rcq))
            }
            #[cfg(feature = "rdma-core")]
            (PdImpl::Rdma(pd), CqImpl::Rdma(scq), CqImpl::Rdma(rcq)) => {
                QpImpl::Rdma(self.build_rdma(pd, scq, rcq)?)
            }
            #[cfg(feature = "rdma-core")]
            _ => {
                return Err(VerbsError::InvalidArgument(
                    "completion queue of another device",
                ));
            }
        };
        Ok(QueuePair {
            imp,
            _pd: self.pd.clone(),
            _send_cq: self.send_cq.clone(),
            _recv_cq: self.recv_cq.clone(),
        })
    }

    /// A queue pair of the userspace device.
    fn build_user(&self, dev: &Arc<Device>, pd: u32, scq: &UserCq, rcq: &UserCq) -> UserQp {
        let core = Arc::new(QpCore::new(
            dev.new_qpn(),
            pd,
            scq.inner.clone(),
            rcq.inner.clone(),
            self.caps.max_send_wr as usize,
            self.caps.max_recv_wr as usize,
        ));
        dev.add_qp(Arc::clone(&core));
        UserQp {
            core,
            dev: Arc::clone(dev),
            psn: initial_psn(),
            timeout: self.timeout,
            retry_cnt: self.retry_cnt,
            rnr_retry: self.rnr_retry,
            min_rnr_timer: self.min_rnr_timer,
            max_rd_atomic: self.max_rd_atomic,
            flow_port: AtomicU16::new(0),
        }
    }

    /// A queue pair of a verbs device.
    #[cfg(feature = "rdma-core")]
    fn build_rdma(
        &self,
        pd: &Arc<crate::rdma_core::RdmaPd>,
        scq: &Arc<crate::rdma_core::RdmaCq>,
        rcq: &Arc<crate::rdma_core::RdmaCq>,
    ) -> Result<RdmaQp, VerbsError> {
        let psn = initial_psn();
        let config = crate::rdma_core::RdmaQpConfig {
            max_send_wr: self.caps.max_send_wr,
            max_recv_wr: self.caps.max_recv_wr,
            psn,
            rts: RtsAttr {
                sq_psn: psn,
                timeout: self.timeout,
                retry_cnt: self.retry_cnt,
                rnr_retry: self.rnr_retry,
                max_rd_atomic: self.max_rd_atomic,
            },
            min_rnr_timer: self.min_rnr_timer,
        };
        RdmaQp::new(pd, scq, rcq, config)
    }
}

/// A random initial PSN: with the addresses checked, the PSN window is
/// what a blind sender spoofing the peer's address must guess.
fn initial_psn() -> u32 {
    rand::random::<u32>() & 0xff_ffff
}

/// A reliable-connected queue pair; dropping it destroys it.
pub struct QueuePair {
    imp: QpImpl,
    _pd: ProtectionDomain,
    _send_cq: CompletionQueue,
    _recv_cq: CompletionQueue,
}

/// The backend of a queue pair.
enum QpImpl {
    User(UserQp),
    #[cfg(feature = "rdma-core")]
    Rdma(RdmaQp),
}

/// A queue pair of the userspace device.
struct UserQp {
    core: Arc<QpCore>,
    dev: Arc<Device>,
    psn: u32,
    timeout: u8,
    retry_cnt: u8,
    rnr_retry: u8,
    min_rnr_timer: u8,
    max_rd_atomic: u8,
    /// The UDP source port opened for the connection's flow at RTR (0:
    /// none, the device's own port).
    flow_port: AtomicU16,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.qp_num())
            .field("state", &self.state())
            .finish()
    }
}

impl QueuePair {
    /// The queue pair number.
    pub fn qp_num(&self) -> u32 {
        match &self.imp {
            QpImpl::User(u) => u.qp_num(),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.qp_num(),
        }
    }

    /// The current state (a verbs device: as the device reports it).
    pub fn state(&self) -> QpState {
        match &self.imp {
            QpImpl::User(u) => u.state(),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.state(),
        }
    }

    /// What the peer needs to connect to this queue pair, at path MTU
    /// `mtu` (a verbs device: its IPv4-mapped RoCEv2 GID if it has one,
    /// else its global IPv6 one, and port 4791).
    pub fn endpoint(&self, mtu: Mtu) -> RemoteInfo {
        match &self.imp {
            QpImpl::User(u) => u.endpoint(mtu),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.endpoint(mtu),
        }
    }

    /// RESET -> INIT.
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any other state.
    pub fn to_init(&self) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.to_init(),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.to_init(),
        }
    }

    /// INIT -> RTR, toward `remote`.
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but INIT.
    pub fn to_rtr(&self, remote: &RemoteInfo) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.to_rtr(remote),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.to_rtr(remote, r.min_rnr_timer()),
        }
    }

    /// INIT -> RTR toward `remote`, asking peers to wait RNR timer code
    /// `min_rnr_timer` (for verbs' `ibv_modify_qp`, which sets it here
    /// rather than at creation). On a verbs device the address vector
    /// carries a GRH to `remote.gid` from our GID of the same family (hop
    /// limit 64, port 1).
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but INIT; on a verbs device
    /// [`VerbsError::InvalidArgument`] for a port other than 4791 or a
    /// GID family the device has no RoCEv2 GID of.
    pub fn to_rtr_with(&self, remote: &RemoteInfo, min_rnr_timer: u8) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.to_rtr_with(remote, min_rnr_timer),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.to_rtr(remote, min_rnr_timer),
        }
    }

    /// The UDP source port this queue pair sends from: its flow's port as
    /// kernel rxe computes it from the two QP numbers (0xC000 and up), or
    /// the device's own port before RTR, when flow ports are off
    /// ([`crate::DeviceOptions::flow_source_ports`]) or when the flow's
    /// port could not be bound (counted in
    /// [`crate::DeviceStats::tx_flow_port_fallbacks`]). A verbs device
    /// picks its source ports in the kernel: 4791 here.
    pub fn udp_source_port(&self) -> u16 {
        match &self.imp {
            QpImpl::User(u) => u.udp_source_port(),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(_) => ROCE_V2_PORT,
        }
    }

    /// RTR -> RTS, with the attributes given at creation and the PSN of
    /// [`Self::endpoint`].
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but RTR.
    pub fn to_rts(&self) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.to_rts(),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.to_rts(&r.default_rts()),
        }
    }

    /// RTR -> RTS with explicit attributes (for verbs' `ibv_modify_qp`,
    /// where the application picks the PSN it told its peer).
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but RTR.
    pub fn to_rts_with(&self, attr: &RtsAttr) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.to_rts_with(attr),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.to_rts(attr),
        }
    }

    /// Any state -> ERROR (verbs' `IBV_QPS_ERR`, what applications do
    /// before destroying a connected queue pair): requests still queued
    /// complete with flush errors.
    pub fn to_error(&self) {
        match &self.imp {
            QpImpl::User(u) => u.to_error(),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.to_error(),
        }
    }

    /// RESET -> INIT -> RTR -> RTS toward `remote`. A queue pair already in
    /// INIT (to post receives before the peer can send) starts from there.
    ///
    /// # Errors
    /// As the transitions.
    pub fn connect(&self, remote: &RemoteInfo) -> Result<(), VerbsError> {
        if self.state() == QpState::Reset {
            self.to_init()?;
        }
        self.to_rtr(remote)?;
        self.to_rts()
    }

    /// Posts send work requests (`ibv_post_send`). Packets go out at once,
    /// as far as the window allows; the device's thread sends the rest as
    /// acknowledgements come in.
    ///
    /// # Errors
    /// [`VerbsError::BadState`] before RTS; [`VerbsError::QueueFull`];
    /// [`VerbsError::InvalidArgument`] for an atomic whose SGEs do not add
    /// up to 8 bytes, or (a verbs device) more SGEs than it takes; a
    /// verbs device's refusal as [`VerbsError::DeviceCall`].
    pub fn post_send(&self, wrs: &[SendWr<'_>]) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.post_send(wrs),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.post_send(wrs),
        }
    }

    /// Posts receive work requests (`ibv_post_recv`).
    ///
    /// # Errors
    /// [`VerbsError::BadState`] in RESET; [`VerbsError::QueueFull`].
    pub fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<(), VerbsError> {
        match &self.imp {
            QpImpl::User(u) => u.post_recv(wrs),
            #[cfg(feature = "rdma-core")]
            QpImpl::Rdma(r) => r.post_recv(wrs),
        }
    }
}

impl UserQp {
    /// The queue pair number.
    fn qp_num(&self) -> u32 {
        self.core.qpn
    }

    /// The current state.
    fn state(&self) -> QpState {
        self.core.state()
    }

    /// What the peer needs to connect to this queue pair, at path MTU
    /// `mtu`.
    fn endpoint(&self, mtu: Mtu) -> RemoteInfo {
        let addr = self.dev.local_addr();
        RemoteInfo {
            qp_num: self.core.qpn,
            psn: self.psn,
            gid: Gid::from_ip(addr.ip()),
            port: addr.port(),
            mtu,
        }
    }

    /// RESET -> INIT.
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any other state.
    fn to_init(&self) -> Result<(), VerbsError> {
        Ok(self.core.to_init()?)
    }

    /// INIT -> RTR, toward `remote`.
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but INIT.
    fn to_rtr(&self, remote: &RemoteInfo) -> Result<(), VerbsError> {
        self.to_rtr_with(remote, self.min_rnr_timer)
    }

    /// INIT -> RTR toward `remote`, asking peers to wait RNR timer code
    /// `min_rnr_timer` (for verbs' `ibv_modify_qp`, which sets it here
    /// rather than at creation).
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but INIT.
    fn to_rtr_with(&self, remote: &RemoteInfo, min_rnr_timer: u8) -> Result<(), VerbsError> {
        let port = if remote.port == 0 {
            ROCE_V2_PORT
        } else {
            remote.port
        };
        let remote_qpn = remote.qp_num & 0xff_ffff;
        let flow_port = self.dev.open_flow_port(self.core.qpn, remote_qpn);
        let peer = Peer {
            addr: SocketAddr::new(remote.gid.ip(), port),
            local: self.dev.local_addr().ip(),
            source_port: flow_port,
            qpn: remote_qpn,
            mtu: remote.mtu.bytes(),
            pkey: DEFAULT_PKEY,
        };
        if let Err(e) = self.core.to_rtr(peer, remote.psn, min_rnr_timer & 0x1f) {
            self.dev.close_flow_port(flow_port);
            return Err(e.into());
        }
        self.dev
            .close_flow_port(self.flow_port.swap(flow_port, Ordering::Relaxed));
        Ok(())
    }

    /// The UDP source port this queue pair sends from: its flow's port as
    /// kernel rxe computes it from the two QP numbers (0xC000 and up), or
    /// the device's own port before RTR, when flow ports are off
    /// ([`crate::DeviceOptions::flow_source_ports`]) or when the flow's
    /// port could not be bound (counted in
    /// [`crate::DeviceStats::tx_flow_port_fallbacks`]).
    fn udp_source_port(&self) -> u16 {
        match self.flow_port.load(Ordering::Relaxed) {
            0 => self.dev.local_addr().port(),
            port => port,
        }
    }

    /// RTR -> RTS, with the attributes given at creation and the PSN of
    /// [`Self::endpoint`].
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but RTR.
    fn to_rts(&self) -> Result<(), VerbsError> {
        self.to_rts_with(&RtsAttr {
            sq_psn: self.psn,
            timeout: self.timeout,
            retry_cnt: self.retry_cnt,
            rnr_retry: self.rnr_retry,
            max_rd_atomic: self.max_rd_atomic,
        })
    }

    /// RTR -> RTS with explicit attributes (for verbs' `ibv_modify_qp`,
    /// where the application picks the PSN it told its peer).
    ///
    /// # Errors
    /// [`VerbsError::BadState`] from any state but RTR.
    fn to_rts_with(&self, attr: &RtsAttr) -> Result<(), VerbsError> {
        Ok(self.core.to_rts(
            attr.sq_psn,
            attr.timeout.min(31),
            attr.retry_cnt.min(7),
            attr.rnr_retry.min(7),
            attr.max_rd_atomic.max(1),
        )?)
    }

    /// Any state -> ERROR (verbs' `IBV_QPS_ERR`, what applications do
    /// before destroying a connected queue pair): requests still queued
    /// complete with flush errors.
    fn to_error(&self) {
        let mut st = self.core.lock();
        self.core.fail(&mut st, None);
    }

    /// Posts send work requests (`ibv_post_send`). Packets go out at once,
    /// as far as the window allows; the device's thread sends the rest as
    /// acknowledgements come in.
    ///
    /// # Errors
    /// [`VerbsError::BadState`] before RTS; [`VerbsError::QueueFull`];
    /// [`VerbsError::InvalidArgument`] for an atomic whose SGEs do not add
    /// up to 8 bytes.
    fn post_send(&self, wrs: &[SendWr<'_>]) -> Result<(), VerbsError> {
        let posted = self.dev.in_send_order(&self.core, |out| {
            // The work requests of one post usually name one region.
            let regions = CachedRegions::new(self.dev.regions());
            self.core.post_send(&regions, wrs, out)
        });
        Ok(posted?)
    }

    /// Posts receive work requests (`ibv_post_recv`).
    ///
    /// # Errors
    /// [`VerbsError::BadState`] in RESET; [`VerbsError::QueueFull`].
    fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<(), VerbsError> {
        Ok(self.core.post_recv(wrs)?)
    }
}

impl Drop for UserQp {
    fn drop(&mut self) {
        self.dev.remove_qp(self.core.qpn);
        self.dev.close_flow_port(*self.flow_port.get_mut());
    }
}
