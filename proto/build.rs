//! Compiles the .proto files with protox (pure Rust, no system protoc) and feeds
//! the descriptor set to tonic's code generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/nereid/v1/sysinfo.proto",
        "proto/nereid/v1/registry.proto",
        "proto/nereid/v1/agent.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
