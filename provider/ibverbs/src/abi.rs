//! Every exported function under its C name, for the trampolines of
//! `exports` (which name `crate::abi::NAME` and `crate::abi::compat::NAME`).

pub(crate) use crate::async_event::*;
pub(crate) use crate::context::*;
pub(crate) use crate::cq::*;
pub(crate) use crate::device::*;
pub(crate) use crate::mr::*;
pub(crate) use crate::qp::*;
pub(crate) use crate::qp_ex::ibv_qp_to_qp_ex;
pub(crate) use crate::text::*;
pub(crate) use crate::unsupported::*;
