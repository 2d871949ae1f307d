//! Verbs-like RDMA API and the userspace soft-RoCE device.
//!
//! This crate will hold the API (contexts, protection domains, memory
//! regions, completion queues, queue pairs) and the RoCEv2 engine behind it.
//! It is empty until those land; it depends on [`odp`] for on-demand-paging
//! memory regions.
