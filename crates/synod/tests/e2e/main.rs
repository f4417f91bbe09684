//! End-to-end tests: real `synod server` processes on loopback, driven by clients nobody here
//! wrote (the `etcd-client` crate, etcdctl) and by `synod`'s own CLI. One test binary for the
//! crate, to keep link time down.

mod harness;

mod auth;
mod backup;
mod bench;
mod cli;
mod client_recipes;
mod cluster;
mod console;
mod crash;
mod differential;
mod etcdctl;
mod gateway;
mod hardening;
mod kv;
mod lease;
mod maintenance;
mod metrics;
mod recipes;
mod telemetry;
mod tls;
mod watch;
mod zookeeper;
