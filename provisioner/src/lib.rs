//! gatehouse-provisioner: keeps the registrations of the ALB target group that the Terraform
//! module created in step with the cluster's nodes and the proxy's NodePort.
//!
//! Pure core: [`handshake`], [`nodes`], [`diff`], [`drift`], [`plan`]. Adapters: [`aws`] (ELBv2,
//! with call counting), [`kube`] (Nodes, the proxy Service), [`inventory`] (a static NodeList
//! file). Orchestration: [`sync`] (plan/sync/status once), [`watch`] (keep in step, with leader
//! election, [`lease`]) and [`metrics`].

pub mod diff;
pub mod drift;
pub mod handshake;
pub mod nodes;
pub mod plan;

pub mod aws;
pub mod cli;
pub mod inventory;
pub mod kube;
pub mod lease;
pub mod metrics;
pub mod sync;
pub mod watch;
