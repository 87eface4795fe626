//! The local ingress lab: the whole request path on one machine, for the quickstart and the
//! end-to-end tests. Emulated ALB (the Terraform example applied against MiniStack) -> loopback
//! "nodes" each running the real `gatehouse-proxy` -> demo services, with the real
//! `gatehouse-provisioner` keeping the target group in step.

pub mod alb;
pub mod demo;
pub mod files;
pub mod lab;
pub mod process;
pub mod quickstart;
pub mod terraform;

pub use lab::{Lab, LabSpec, Progress};
