//! gatehouse-provisioner: keeps the registrations of the ALB target group that the Terraform
//! module created in step with the cluster's nodes and the proxy's NodePort.
//!
//! Domain types: [`model`]. Pure core: [`handshake`], [`nodes`], [`proxy`], [`diff`], [`drift`],
//! [`plan`]. Adapters: [`aws`] (ELBv2 and EC2, with call counting), [`cluster`] (Nodes, the
//! proxy Service, its EndpointSlices and pods), [`inventory`] (a static NodeList file).
//! Orchestration: [`session`] (plan/sync/status once), [`watch`] (keep in step, with leader
//! election, [`lease`]), [`drain_hook`] (the proxy pod's preStop hook) and [`metrics`].

pub mod model;

pub mod diff;
pub mod drift;
pub mod handshake;
pub mod nodes;
pub mod plan;
pub mod proxy;

pub mod aws;
pub mod cli;
pub mod cluster;
pub mod drain_hook;
pub mod inventory;
pub mod lease;
pub mod metrics;
pub mod session;
pub mod watch;
