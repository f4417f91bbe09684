//! Developer tasks for the Synod workspace.
//!
//! `cargo xtask codegen` regenerates `crates/synod-api/src/gen/` from the `.proto` files with
//! protox (a protobuf compiler in Rust, so no system `protoc` is needed), prost, tonic and pbjson.
//! `cargo xtask codegen --check` fails when the committed code is stale; CI runs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "synodpb/internal.proto",
    "synodpb/peer.proto",
    "synodpb/migrate.proto",
    "synodpb/zookeeper.proto",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["codegen"] => codegen(false),
        ["codegen", "--check"] => codegen(true),
        _ => bail!("usage: cargo xtask codegen [--check]"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn codegen(check: bool) -> Result<()> {
    let api = workspace_root().join("crates/synod-api");
    let include = api.join("proto");
    let committed = api.join("src/gen");
    let scratch = tempdir()?;

    let descriptors = protox::compile(PROTOS, [&include]).context("compiling protos")?;
    let encoded = prost::Message::encode_to_vec(&descriptors);

    // etcd's services answer oversize and undecodable messages as grpc-go does (see
    // `synod_api::codec`); the peer service between members keeps prost's codec and its own
    // limit. Both passes generate every package; the peer pass's `synodpb.rs` is the one kept.
    let peer_scratch = scratch.join("peer");
    std::fs::create_dir_all(&peer_scratch)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(&peer_scratch)
        .compile_fds(descriptors.clone())
        .context("generating prost and tonic code (peer)")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .codec_path("crate::codec::EtcdCodec")
        .out_dir(&scratch)
        .compile_fds(descriptors)
        .context("generating prost and tonic code")?;
    std::fs::rename(peer_scratch.join("synodpb.rs"), scratch.join("synodpb.rs"))?;
    std::fs::remove_dir_all(&peer_scratch)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .out_dir(&scratch)
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])
        .context("generating serde code")?;

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&scratch)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .expect("read_dir yields named entries")
            .to_owned();
        let fresh = std::fs::read_to_string(&path)?;
        let target = committed.join(&name);
        let current = std::fs::read_to_string(&target).unwrap_or_default();
        if fresh != current {
            stale.push(name.to_string_lossy().into_owned());
            if !check {
                std::fs::create_dir_all(&committed)?;
                std::fs::write(&target, fresh)?;
            }
        }
    }
    std::fs::remove_dir_all(&scratch)?;
    if check && !stale.is_empty() {
        bail!(
            "generated code is stale ({}); run `cargo xtask codegen`",
            stale.join(", ")
        );
    }
    if !check {
        println!("codegen: {} file(s) updated", stale.len());
    }
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("synod-codegen-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
