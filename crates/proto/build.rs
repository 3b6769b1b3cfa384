//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates the tonic code,
//! plus the encoded descriptor set that gRPC server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "kraliki/audio/v1/audio.proto",
        "kraliki/provider/v1/provider.proto",
        "third_party/perftools/profiles/profile.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    // Speech audio in a recording's answer is the largest message there is (up to four times
    // the recording): as `Bytes` it is decoded by slicing the received buffer, not copied.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".kraliki.audio.v1.ChannelSpeech.pcm16_16khz")
        .compile_fds(fds)?;
    Ok(())
}
