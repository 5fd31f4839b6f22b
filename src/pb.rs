//! Generated protobuf and gRPC code (quarantined, lints relaxed).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `svckit.base.v1`: the API every node serves.
pub mod base {
    pub mod v1 {
        tonic::include_proto!("svckit.base.v1");
    }
    /// Encoded descriptor set of `svckit.base.v1`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/svckit_base_descriptor.bin"));
}

/// `xds.data.orca.v3` and `xds.service.orca.v3`: ORCA load reports.
pub mod xds {
    pub mod data {
        pub mod orca {
            pub mod v3 {
                tonic::include_proto!("xds.data.orca.v3");
            }
        }
    }
    pub mod service {
        pub mod orca {
            pub mod v3 {
                tonic::include_proto!("xds.service.orca.v3");
            }
        }
    }
    /// Encoded descriptor set of the ORCA protos, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/xds_orca_descriptor.bin"));
}
