//! Compiles `proto/` with protox (no system `protoc`) into prost types,
//! pbjson serde implementations and tonic stubs.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "prjmanager/v1/config.proto",
    "prjmanager/v1/changelist.proto",
    "prjmanager/v1/run.proto",
    "prjmanager/v1/events.proto",
    "prjmanager/v1/state.proto",
    "prjmanager/v1/actions.proto",
    "prjmanager/v1/service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("prjmanager_descriptor.bin"), &descriptor_bytes)?;

    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        // Timestamps print as canonical proto3 JSON (`Z`), see src/proto/timestamp.rs.
        .extern_path(".google.protobuf.Timestamp", "crate::proto::Timestamp")
        .extern_path(".google.protobuf", "::pbjson_types")
        .skip_protoc_run()
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".prjmanager"])?;

    compile_esdb_wire(&out_dir)?;
    Ok(())
}

/// Compiles our own description of EventStoreDB's `Streams` wire contract
/// (`proto/esdb/`) into `$OUT_DIR/esdb_wire/`, server side only. Nothing in
/// the library includes it: the test double (`tests/common/esdb_double.rs`)
/// does, so the generated code stays out of the public API.
fn compile_esdb_wire(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let target = out_dir.join("esdb_wire");
    std::fs::create_dir_all(&target)?;
    let descriptors = protox::compile(
        [
            "event_store/shared.proto",
            "event_store/streams.proto",
            "event_store/serverfeatures.proto",
            "google/rpc/status.proto",
        ],
        ["proto/esdb"],
    )?;
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&target)
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
