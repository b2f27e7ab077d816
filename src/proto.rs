//! Generated protocol code, kept apart from the code that uses it.
#![allow(clippy::all, clippy::pedantic)]

pub mod agent {
    tonic::include_proto!("odp.agent.v1");
}

/// Every compiled proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("odp_descriptor");
