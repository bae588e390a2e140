//! Compiles the `.proto` files with the vendored `protoc`, so the build needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC from the env.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = [
        "proto/dtm/raft/v1/raft.proto",
        "proto/dtm/state/v1/state.proto",
        "proto/dtm/state/v1/security.proto",
        "proto/dtm/state/v1/gateway.proto",
        "proto/dtm/state/v1/batch.proto",
        "proto/dtm/state/v1/audit.proto",
        "proto/dtm/state/v1/monitoring.proto",
        "proto/dtm/state/v1/reporting.proto",
        "proto/dtm/state/v1/performance.proto",
        "proto/dtm/v1/ingest.proto",
    ];
    tonic_prost_build::configure()
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
