//! On-demand-paging (ODP) memory for the soft-RoCE device.
//!
//! This crate will hold the umem (a registered range with a device page table
//! kept coherent by [`notifier`]), its fault and invalidation paths, and the
//! address-space event sources. It is empty until those land; the dependency
//! on the notifier already fixes the layering (provider -> odp -> notifier).
