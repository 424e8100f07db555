//! pullwatch's integration tests against real parts: the binary run as a user runs it, the CNCF
//! registry, containerd, Prometheus and promtool, a DNS server, network namespaces and nft rules
//! (the harness is the `pullwatch-testkit` crate, `testkit/`). They need root and those tools,
//! so this one test binary is built only with the `real-parts` feature:
//! `cargo nextest run --features real-parts` (what `scripts/test.sh` runs). A tool or a
//! privilege missing fails the test that needs it, naming what is missing; nothing is skipped.

mod agent_api;
mod agent_cardinality;
mod agent_lifecycle;
mod agent_metrics;
mod agent_prometheus;
mod agent_runtime;
mod containerd_errors;
mod credential_provider;
mod deploy;
mod diagnose_network;
mod faults_files;
mod faults_input;
mod faults_listeners;
mod faults_peers;
mod faults_pods;
mod faults_routes;
mod fleet_cost;
mod harness_smoke;
mod https_first;
mod kube_pods;
mod node_credentials;
mod pod_pull_secrets;
mod pull_secrets;
mod registry_api;
mod runtime_client;
mod runtime_route;
mod targets;
