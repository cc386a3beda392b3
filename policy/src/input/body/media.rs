//! What a body's `Content-Type` says it is, and its text as Envoy presents it.

/// The body formats Cordon parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaType {
    /// `application/json` and every `+json` type (RFC 6839: `application/vnd.api+json`).
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/graphql`: the body is a GraphQL document.
    Graphql,
    Other,
}

impl MediaType {
    /// Classifies a `Content-Type` value by its essence (type/subtype, parameters dropped),
    /// case-insensitively. opa-envoy-plugin tests whether the raw value *contains*
    /// `application/json`; matching the essence keeps `text/plain; x=application/json` plain
    /// text while every JSON type it parses is parsed here too.
    pub(super) fn of(content_type: Option<&str>) -> Self {
        let Some(value) = content_type else {
            return MediaType::Other;
        };
        let essence = value.split(';').next().unwrap_or("").trim();
        let essence = essence.to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => MediaType::Json,
            "application/x-www-form-urlencoded" => MediaType::Form,
            "application/graphql" => MediaType::Graphql,
            e if e.ends_with("+json") && e.contains('/') => MediaType::Json,
            _ => MediaType::Other,
        }
    }
}

/// `bytes` as Envoy's ext_authz filter sends a body without `pack_as_bytes`: valid UTF-8 kept,
/// each byte that is not part of it replaced by `!` (Envoy's `sanitizeUtf8String`), one for
/// one, so the text has the body's length in bytes.
pub(super) fn envoy_text(bytes: &[u8]) -> String {
    let mut rest = bytes;
    let mut text = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                return text;
            }
            Err(e) => {
                let (valid, invalid) = rest.split_at(e.valid_up_to());
                // Checked by from_utf8 up to valid_up_to.
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                text.push('!');
                rest = invalid.get(1..).unwrap_or_default();
            }
        }
    }
}
