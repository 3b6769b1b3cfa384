//! Generated code for Voice Kraliki's gRPC contracts (`proto/` at the workspace root).
//!
//! - [`audio::v1`]: `kraliki.audio.v1.AudioProcessor` — decoding, voice activity, analytics.
//! - [`provider::v1`]: `kraliki.provider.v1.ProviderGateway` — STT, chat, TTS, sentiment.
//! - [`perftools::profiles`]: the pprof `Profile` message served by `/debug/pprof/profile`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! The code is generated at build time with `protox`, so no system `protoc` is needed.

#![allow(clippy::all, clippy::pedantic, rust_2018_idioms)]

pub mod audio {
    pub mod v1 {
        tonic::include_proto!("kraliki.audio.v1");

        /// Fully-qualified gRPC service name, as served by health checking and reflection.
        pub const SERVICE_NAME: &str = "kraliki.audio.v1.AudioProcessor";
    }
}

pub mod provider {
    pub mod v1 {
        tonic::include_proto!("kraliki.provider.v1");

        /// Fully-qualified gRPC service name, as served by health checking and reflection.
        pub const SERVICE_NAME: &str = "kraliki.provider.v1.ProviderGateway";
    }
}

pub mod perftools {
    pub mod profiles {
        tonic::include_proto!("perftools.profiles");
    }
}

/// Encoded `FileDescriptorSet` of every proto file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_holds_both_services() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decode");
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                let pkg = f.package().to_string();
                f.service.iter().map(move |s| format!("{pkg}.{}", s.name()))
            })
            .collect();
        assert!(services.contains(&audio::v1::SERVICE_NAME.to_string()), "{services:?}");
        assert!(services.contains(&provider::v1::SERVICE_NAME.to_string()), "{services:?}");
    }

    #[test]
    fn frames_round_trip_with_sequence_and_timestamp() {
        let frame = audio::v1::AudioFrame {
            sequence_number: 42,
            timestamp: Some(prost_types::Duration { seconds: 1, nanos: 20_000_000 }),
            payload: vec![0xff; 160],
            received_at: None,
        };
        let back = audio::v1::AudioFrame::decode(frame.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, frame);
    }
}
