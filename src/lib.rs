//! pullwatch: can this node pull its images right now, and if not, why?
//! The engine behind `pullwatch diagnose` (and, later, the agent): checks, reasons, routes, reports.

pub mod agent;
pub mod backoff;
pub mod bounded_file;
pub mod check;
pub mod config;
pub mod credentials;
pub mod diagnose;
pub mod discovery;
#[cfg(test)]
mod docs_sync;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod go_duration;
pub mod http_client;
pub mod peer_guard;
pub mod platform;
pub mod proxy;
pub mod reason;
pub mod reference;
pub mod report;
pub mod route;
pub mod runtime;
pub mod targets;
pub mod text;
pub mod trust;

/// The CRI API version pullwatch speaks (the `k8s-cri` crate's `v1`).
pub const CRI_API_VERSION: &str = "v1";

/// Git revision baked in at build time (`unknown` outside a checkout).
pub const REVISION: &str = env!("PULLWATCH_REVISION");
