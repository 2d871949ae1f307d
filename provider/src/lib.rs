//! Verbs-like RDMA API and the userspace soft-RoCE device.
//!
//! So far: [`wire`], the RoCEv2 wire format (headers, packets, ICRC),
//! checked against real kernel-rxe traffic. The API (contexts, protection
//! domains, memory regions, completion queues, queue pairs) and the RoCEv2
//! engine come next; memory regions with on-demand paging use [`odp`].

pub mod wire;
