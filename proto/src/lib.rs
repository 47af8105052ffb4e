//! `ferry-proto`: the `ferry.v1` wire protocol, generated from the `.proto`
//! files beside this crate (`ferry/v1/*.proto`), and nothing else but the
//! one hand-written impl below.
//!
//! - [`v1`]: messages, `AgentService` and `OperatorService` clients and servers.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//! - `Debug` of `SetSecretRequest`, written by hand to hide the secret's value.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// Everything but the value, whose length alone is shown: a request logged
/// with `{:?}` (by us, or by a layer that logs requests) leaks no secret.
impl std::fmt::Debug for v1::SetSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecretRequest")
            .field("app", &self.app)
            .field("env", &self.env)
            .field("name", &self.name)
            .field(
                "value",
                &format_args!("<{} bytes hidden>", self.value.len()),
            )
            .finish()
    }
}

/// Encoded `FileDescriptorSet` of every `ferry.v1` file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));

#[cfg(test)]
mod tests {
    #[test]
    fn set_secret_request_debug_hides_the_value() {
        let req = super::v1::SetSecretRequest {
            app: "shop".into(),
            env: "production".into(),
            name: "API_KEY".into(),
            value: "hunter2-value".into(),
        };
        let text = format!("{req:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("API_KEY") && text.contains("<13 bytes hidden>"),
            "{text}"
        );
    }
}
