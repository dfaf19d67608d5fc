//! Compiles `proto/ebb/v1/*.proto` with protox (pure Rust), so a fresh machine
//! needs no `protoc` binary, and writes the descriptor set for gRPC reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ebb/v1/common.proto",
        "proto/ebb/v1/jobs.proto",
        "proto/ebb/v1/market.proto",
        "proto/ebb/v1/executor.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("ebb_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // types tonic-types and callers use.
        .compile_fds(descriptors)?;
    Ok(())
}
