//! Portcullis: an MCP-native gateway. One endpoint between agents and the
//! MCP servers they call.
//!
//! A request flows one way: [`server`] (HTTP listener and routing) →
//! [`gateway`] (the downstream MCP session) → [`registry`] (which upstream
//! owns a name) → [`upstream`] (the connection that forwards it), and back.
//! [`ratelimit`] admits each call before it is forwarded.
//! [`config`] and [`telemetry`] serve every layer; [`runtime`] assembles
//! them. See `ARCHITECTURE.md` for the map and its invariants.

// MCP logging, sampling and roots are deprecated by SEP-2577 in 2026-07-28,
// but clients and servers of 2025 revisions use them every day and the
// gateway must keep forwarding them.
#![allow(deprecated)]

pub mod auth;
pub mod config;
pub mod gateway;
pub mod llm;
pub mod policy;
pub mod ratelimit;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod upstream;
