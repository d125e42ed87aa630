//! The server's integration tests, in one binary: each module starts real
//! servers (SQLite files, PostgreSQL, NATS, MQTT clients) the way a user
//! would. One binary links the server once instead of once per file,
//! which is most of what these tests cost to build.
//!
//! Run one file's tests with `cargo test --release -p server --test it
//! access::`.

mod common;

mod access;
mod cluster;
mod command_timer;
mod commands;
mod desired;
mod devices;
mod edge;
mod export;
mod failover;
mod faults;
mod feed;
mod history;
mod hostile;
mod http_ingest;
mod mqtt_ws;
mod pipeline;
mod postgres;
mod sessions;
