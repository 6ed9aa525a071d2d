//! sipward: a sharded SIP authenticator for OAuth 2.0 bearer tokens (RFC 8898).
//!
//! Layers, from the wire inwards: [`shard`] owns sockets and runtimes and stays thin; [`sip`] and
//! [`auth`] are sans-io and hold every decision; [`token`] owns token sources and the shared cache;
//! [`config`] turns a TOML file into validated settings before anything binds; [`admin`] serves
//! metrics and health over HTTP and [`logs`] keeps repeated warnings down.
//!
//! sipward does not keep transaction or dialog state: every response is built from the request alone.

pub mod admin;
pub mod auth;
pub mod config;
pub mod forward;
pub mod logs;
pub mod shard;
pub mod sip;
pub mod token;
