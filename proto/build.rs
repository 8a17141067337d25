//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`)
//! and generates tonic clients and servers from the descriptor set. The
//! encoded descriptor set is written to `OUT_DIR` for gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "ruse/common/v1/common.proto",
    "ruse/agent/v1/agent.proto",
    "ruse/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("ruse_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-call buffers: a Session lives for days (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
