//! The generated protobuf types of `proto/prjmanager/v1`, with proto3 JSON
//! serde implementations (pbjson) and the tonic service stubs.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

mod timestamp;

pub use timestamp::{OutOfRange, Timestamp};

include!(concat!(env!("OUT_DIR"), "/prjmanager.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/prjmanager.v1.serde.rs"));

/// The encoded `FileDescriptorSet` of every proto file (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/prjmanager_descriptor.bin"));
