//! Our verbs types to libibverbs' and back.

use verbs_sys as sys;

use crate::{AccessFlags, Mtu, OdpCaps, QpState, WcOpcode, WcStatus, WorkCompletion};

/// Access flags: ours have verbs' bit values; only the ones we know pass.
pub(crate) fn access(flags: AccessFlags) -> u32 {
    flags.bits()
        & (sys::ibv_access_flags_IBV_ACCESS_LOCAL_WRITE
            | sys::ibv_access_flags_IBV_ACCESS_REMOTE_WRITE
            | sys::ibv_access_flags_IBV_ACCESS_REMOTE_READ
            | sys::ibv_access_flags_IBV_ACCESS_REMOTE_ATOMIC
            | sys::ibv_access_flags_IBV_ACCESS_ON_DEMAND)
}

/// A path MTU for verbs.
pub(crate) fn mtu(m: Mtu) -> sys::ibv_mtu {
    match m {
        Mtu::Mtu256 => sys::ibv_mtu_IBV_MTU_256,
        Mtu::Mtu512 => sys::ibv_mtu_IBV_MTU_512,
        Mtu::Mtu1024 => sys::ibv_mtu_IBV_MTU_1024,
        Mtu::Mtu2048 => sys::ibv_mtu_IBV_MTU_2048,
        Mtu::Mtu4096 => sys::ibv_mtu_IBV_MTU_4096,
    }
}

/// A verbs MTU as ours (unknown values: the smallest).
pub(crate) fn mtu_from(m: sys::ibv_mtu) -> Mtu {
    match m {
        sys::ibv_mtu_IBV_MTU_512 => Mtu::Mtu512,
        sys::ibv_mtu_IBV_MTU_1024 => Mtu::Mtu1024,
        sys::ibv_mtu_IBV_MTU_2048 => Mtu::Mtu2048,
        sys::ibv_mtu_IBV_MTU_4096 => Mtu::Mtu4096,
        _ => Mtu::Mtu256,
    }
}

/// A queue-pair state for verbs.
pub(crate) fn qp_state(s: QpState) -> sys::ibv_qp_state {
    match s {
        QpState::Reset => sys::ibv_qp_state_IBV_QPS_RESET,
        QpState::Init => sys::ibv_qp_state_IBV_QPS_INIT,
        QpState::Rtr => sys::ibv_qp_state_IBV_QPS_RTR,
        QpState::Rts => sys::ibv_qp_state_IBV_QPS_RTS,
        QpState::Error => sys::ibv_qp_state_IBV_QPS_ERR,
    }
}

/// A verbs queue-pair state as ours (SQD/SQE, which we never ask for,
/// count as RTS and ERROR).
pub(crate) fn qp_state_from(s: sys::ibv_qp_state) -> QpState {
    match s {
        sys::ibv_qp_state_IBV_QPS_RESET => QpState::Reset,
        sys::ibv_qp_state_IBV_QPS_INIT => QpState::Init,
        sys::ibv_qp_state_IBV_QPS_RTR => QpState::Rtr,
        sys::ibv_qp_state_IBV_QPS_RTS | sys::ibv_qp_state_IBV_QPS_SQD => QpState::Rts,
        _ => QpState::Error,
    }
}

/// No ODP at all.
pub(crate) const NO_ODP: OdpCaps = OdpCaps {
    general: false,
    implicit: false,
    rc_send: false,
    rc_recv: false,
    rc_write: false,
    rc_read: false,
    rc_atomic: false,
    prefetch: false,
};

/// The RC transport's ODP capabilities.
pub(crate) fn odp_caps(caps: &sys::ibv_odp_caps) -> OdpCaps {
    let general = caps.general_caps;
    let rc = caps.per_transport_caps.rc_odp_caps;
    let has = |bit: u32| rc & bit != 0;
    OdpCaps {
        general: general & u64::from(sys::ibv_odp_general_caps_IBV_ODP_SUPPORT) != 0,
        implicit: general & u64::from(sys::ibv_odp_general_caps_IBV_ODP_SUPPORT_IMPLICIT) != 0,
        rc_send: has(sys::ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_SEND),
        rc_recv: has(sys::ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_RECV),
        rc_write: has(sys::ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_WRITE),
        rc_read: has(sys::ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_READ),
        rc_atomic: has(sys::ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_ATOMIC),
        // Whether the provider implements ibv_advise_mr shows only when it
        // is called (rxe: EOPNOTSUPP); the kernel's ODP is what prefetch
        // needs.
        prefetch: false,
    }
}

/// A verbs completion status as ours; statuses we have no name for take
/// the nearest one.
fn status(s: sys::ibv_wc_status) -> WcStatus {
    match s {
        sys::ibv_wc_status_IBV_WC_SUCCESS => WcStatus::Success,
        sys::ibv_wc_status_IBV_WC_LOC_LEN_ERR => WcStatus::LocalLengthError,
        sys::ibv_wc_status_IBV_WC_LOC_PROT_ERR | sys::ibv_wc_status_IBV_WC_LOC_ACCESS_ERR => {
            WcStatus::LocalProtectionError
        }
        sys::ibv_wc_status_IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlushError,
        sys::ibv_wc_status_IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccessError,
        sys::ibv_wc_status_IBV_WC_REM_INV_REQ_ERR
        | sys::ibv_wc_status_IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemoteInvalidRequest,
        sys::ibv_wc_status_IBV_WC_REM_OP_ERR
        | sys::ibv_wc_status_IBV_WC_BAD_RESP_ERR
        | sys::ibv_wc_status_IBV_WC_REM_ABORT_ERR => WcStatus::RemoteOperationalError,
        sys::ibv_wc_status_IBV_WC_RETRY_EXC_ERR | sys::ibv_wc_status_IBV_WC_RESP_TIMEOUT_ERR => {
            WcStatus::RetryExceeded
        }
        sys::ibv_wc_status_IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
        _ => WcStatus::LocalQpOperationError,
    }
}

/// A verbs completion opcode as ours (receive-side opcodes have bit 7
/// set; others we never post count as sends).
fn opcode(o: sys::ibv_wc_opcode) -> WcOpcode {
    match o {
        sys::ibv_wc_opcode_IBV_WC_SEND => WcOpcode::Send,
        sys::ibv_wc_opcode_IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
        sys::ibv_wc_opcode_IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
        sys::ibv_wc_opcode_IBV_WC_COMP_SWAP => WcOpcode::CompareSwap,
        sys::ibv_wc_opcode_IBV_WC_FETCH_ADD => WcOpcode::FetchAdd,
        sys::ibv_wc_opcode_IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
        o if o & sys::ibv_wc_opcode_IBV_WC_RECV != 0 => WcOpcode::Recv,
        _ => WcOpcode::Send,
    }
}

/// A verbs work completion as ours; immediate data (network order in
/// verbs) as the number the sender posted.
pub(crate) fn completion(wc: &sys::ibv_wc) -> WorkCompletion {
    let with_imm = wc.wc_flags & sys::ibv_wc_flags_IBV_WC_WITH_IMM != 0;
    WorkCompletion {
        wr_id: wc.wr_id,
        status: status(wc.status),
        opcode: opcode(wc.opcode),
        byte_len: wc.byte_len,
        // SAFETY: with IBV_WC_WITH_IMM the union holds the immediate data;
        // both members are plain u32s anyway.
        imm_data: with_imm.then(|| u32::from_be(unsafe { wc.__bindgen_anon_1.imm_data })),
        qp_num: wc.qp_num,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_bits_are_verbs_bits() {
        let all = AccessFlags::all();
        assert_eq!(access(all), all.bits());
        assert_eq!(
            access(AccessFlags::ON_DEMAND),
            sys::ibv_access_flags_IBV_ACCESS_ON_DEMAND
        );
    }

    #[test]
    fn mtus_and_states_round_trip() {
        for m in [
            Mtu::Mtu256,
            Mtu::Mtu512,
            Mtu::Mtu1024,
            Mtu::Mtu2048,
            Mtu::Mtu4096,
        ] {
            assert_eq!(mtu_from(mtu(m)), m);
        }
        for s in [
            QpState::Reset,
            QpState::Init,
            QpState::Rtr,
            QpState::Rts,
            QpState::Error,
        ] {
            assert_eq!(qp_state_from(qp_state(s)), s);
        }
    }

    #[test]
    fn immediate_data_comes_back_in_host_order() {
        // SAFETY: ibv_wc is plain data; all zeros is a valid value.
        let mut wc: sys::ibv_wc = unsafe { std::mem::zeroed() };
        wc.opcode = sys::ibv_wc_opcode_IBV_WC_RECV;
        wc.wc_flags = sys::ibv_wc_flags_IBV_WC_WITH_IMM;
        wc.__bindgen_anon_1.imm_data = 0x1234_5678u32.to_be();
        wc.status = sys::ibv_wc_status_IBV_WC_REM_ACCESS_ERR;
        let ours = completion(&wc);
        assert_eq!(ours.imm_data, Some(0x1234_5678));
        assert_eq!(ours.opcode, WcOpcode::Recv);
        assert_eq!(ours.status, WcStatus::RemoteAccessError);
    }
}
