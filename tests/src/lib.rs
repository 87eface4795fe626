//! Support for the integration tests: real servers on loopback, emulator helpers, a fake Kubernetes API server.
pub mod aws;
pub mod backends;
pub mod fault_proxy;
pub mod kube_api;
pub mod provisioner_replica;
pub mod provisioner_support;
pub mod raw_backend;
pub use gatehouse_lab::terraform;
