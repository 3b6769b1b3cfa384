//! Generated code for Voice Kraliki's gRPC contracts (`proto/` at the workspace root).
//!
//! - [`audio::v1`]: `kraliki.audio.v1.AudioProcessor` — decoding, voice activity, analytics.
//! - [`provider::v1`]: `kraliki.provider.v1.ProviderGateway` — STT, chat, TTS, sentiment.
//! - [`perftools::profiles`]: the pprof `Profile` message served by `/debug/pprof/profile`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//! - [`errors`]: the reasons a `Status` carries as `google.rpc.ErrorInfo`, so that callers
//!   decide by code and reason, never by the message's text.
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

pub mod errors {
    //! Structured error reasons. A service that answers an error whose code alone does not say
    //! what to do (`ResourceExhausted`: is the input too large, or are we busy?) attaches a
    //! `google.rpc.ErrorInfo` in the standard `grpc-status-details-bin` trailer, with domain
    //! [`DOMAIN`] and one of the [`Reason`]s. Clients of other languages read it with their
    //! gRPC rich-error support.

    use std::collections::HashMap;

    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt as _};

    /// The `ErrorInfo.domain` of Voice Kraliki's services.
    pub const DOMAIN: &str = "voice-kraliki";

    /// Why a request failed, beyond its gRPC code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Reason {
        /// The input is larger or longer than a configured limit: the same request will never
        /// succeed (`INPUT_TOO_LARGE`).
        InputTooLarge,
        /// The input is malformed or unsupported (`INVALID_INPUT`).
        InvalidInput,
        /// Every slot for this kind of work is taken: retry later, or elsewhere (`BUSY`).
        Busy,
        /// A fault inside the service, not caused by the input (`INTERNAL`).
        Internal,
        /// No AI provider is configured for the capability (`PROVIDER_NOT_CONFIGURED`);
        /// metadata `capability` and `provider`.
        ProviderNotConfigured,
        /// The AI provider refused the request or our credentials (`PROVIDER_REJECTED`);
        /// metadata `capability` and `provider`.
        ProviderRejected,
        /// The AI provider failed, timed out or could not be reached (`PROVIDER_FAILED`);
        /// metadata `capability` and `provider`.
        ProviderFailed,
    }

    /// Every reason, in declaration order.
    pub const REASONS: [Reason; 7] = [
        Reason::InputTooLarge,
        Reason::InvalidInput,
        Reason::Busy,
        Reason::Internal,
        Reason::ProviderNotConfigured,
        Reason::ProviderRejected,
        Reason::ProviderFailed,
    ];

    impl Reason {
        /// The `ErrorInfo.reason` string.
        pub fn as_str(self) -> &'static str {
            match self {
                Self::InputTooLarge => "INPUT_TOO_LARGE",
                Self::InvalidInput => "INVALID_INPUT",
                Self::Busy => "BUSY",
                Self::Internal => "INTERNAL",
                Self::ProviderNotConfigured => "PROVIDER_NOT_CONFIGURED",
                Self::ProviderRejected => "PROVIDER_REJECTED",
                Self::ProviderFailed => "PROVIDER_FAILED",
            }
        }

        fn parse(s: &str) -> Option<Self> {
            REASONS.into_iter().find(|r| r.as_str() == s)
        }
    }

    /// A status with `code`, `message` and `reason` as its `ErrorInfo`.
    pub fn status(code: Code, message: impl Into<String>, reason: Reason) -> Status {
        Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(reason.as_str(), DOMAIN, HashMap::new()),
        )
    }

    /// A status with `code`, `message`, and `reason` with `metadata` as its `ErrorInfo`.
    pub fn status_with(
        code: Code,
        message: impl Into<String>,
        reason: Reason,
        metadata: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Status {
        let metadata: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Status::with_error_details(code, message, ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata))
    }

    /// The reason `status` carries, if it carries one of ours.
    pub fn reason(status: &Status) -> Option<Reason> {
        info(status).map(|(reason, _)| reason)
    }

    /// The reason `status` carries with its metadata, if it carries one of ours.
    pub fn info(status: &Status) -> Option<(Reason, HashMap<String, String>)> {
        let info = status.get_details_error_info().filter(|info| info.domain == DOMAIN)?;
        Some((Reason::parse(&info.reason)?, info.metadata))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reasons_survive_the_wire_form() {
            for r in REASONS {
                let s = status(Code::ResourceExhausted, "whatever the text says", r);
                // What a client receives: code, message and the details bytes.
                let received = Status::with_details(s.code(), s.message(), s.details().to_vec().into());
                assert_eq!(reason(&received), Some(r));
            }
            assert_eq!(reason(&Status::resource_exhausted("recording exceeds the limit")), None);
            let foreign = Status::with_error_details(
                Code::ResourceExhausted,
                "x",
                ErrorDetails::with_error_info("BUSY", "example.com", HashMap::new()),
            );
            assert_eq!(reason(&foreign), None, "another domain's reason is not ours");
            let s = status_with(
                Code::FailedPrecondition,
                "no stt provider is configured",
                Reason::ProviderNotConfigured,
                [("capability", "stt".to_string()), ("provider", "none".to_string())],
            );
            let received = Status::with_details(s.code(), s.message(), s.details().to_vec().into());
            let (r, metadata) = info(&received).expect("our reason");
            assert_eq!(r, Reason::ProviderNotConfigured);
            assert_eq!(metadata.get("capability").map(String::as_str), Some("stt"));
            assert_eq!(metadata.get("provider").map(String::as_str), Some("none"));
        }
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
