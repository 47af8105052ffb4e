//! Generates the Rust code for `ferry.v1` with protox (a pure-Rust protobuf
//! compiler), so no build needs a system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ferry/v1/common.proto",
        "ferry/v1/agent.proto",
        "ferry/v1/operator.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Kept for gRPC server reflection.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferry_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Carries a secret's value: its `Debug` is written by hand in
        // lib.rs, without the value, so no `{:?}` can ever log one.
        .skip_debug([".ferry.v1.SetSecretRequest"])
        .compile_fds(fds)?;
    Ok(())
}
