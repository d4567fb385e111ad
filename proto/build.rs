//! Compiles `proto/gtpcharge/v1/*.proto` with protox (pure Rust, no protoc) and generates the tonic
//! server and client code; also writes the encoded descriptor set for gRPC reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "grpc")]
    {
        use protox::prost::Message;
        let descriptors = protox::compile(["gtpcharge/v1/billing.proto"], ["proto"])?;
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("gtpcharge_descriptor.bin"), descriptors.encode_to_vec())?;
        tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    }
    Ok(())
}
