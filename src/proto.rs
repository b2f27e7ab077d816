//! Generated protocol code, kept apart from the code that uses it. The module
//! tree mirrors the proto packages so cross-package references resolve.
#![allow(clippy::all, clippy::pedantic)]

pub mod odp {
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("odp.agent.v1");
        }
    }
    pub mod coordinator {
        pub mod v1 {
            tonic::include_proto!("odp.coordinator.v1");
        }
    }
}

pub use odp::agent::v1 as agent;
pub use odp::coordinator::v1 as coordinator;

/// Every compiled proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("odp_descriptor");
