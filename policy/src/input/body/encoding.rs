//! Undoing `Content-Encoding` for the policy, with a hard cap on the decoded size.
//!
//! The body is forwarded as sent; only the policy's copy is decoded. The decoder is read
//! through `Take(max + 1)`, so a decompression bomb costs at most `max_decoded_bytes` (plus
//! `Vec` growth) of memory and the work to produce it, never more.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::{MultiGzDecoder, ZlibDecoder};

use super::{BodyError, BodyErrorKind};

/// A decoded body, or its first `max_decoded_bytes` when `complete` is false.
#[derive(Debug)]
pub(super) struct Decoded<'a> {
    pub(super) bytes: Cow<'a, [u8]>,
    pub(super) complete: bool,
}

/// Decodes `body` as `content_encoding` says. `truncated`: `body` is a prefix, so a stream
/// that stops early is expected rather than an error.
pub(super) fn decode<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    max_decoded_bytes: usize,
    truncated: bool,
) -> Result<Decoded<'a>, BodyError> {
    let mut codings = content_encoding
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    let (coding, rest) = (codings.next(), codings.next());
    let coding = match (coding, rest) {
        (None, _) => {
            return Ok(match body.get(..max_decoded_bytes) {
                Some(prefix) if prefix.len() < body.len() => Decoded {
                    bytes: Cow::Borrowed(prefix),
                    complete: false,
                },
                _ => Decoded {
                    bytes: Cow::Borrowed(body),
                    complete: true,
                },
            });
        }
        (Some(coding), None) => coding.to_ascii_lowercase(),
        (Some(_), Some(_)) => {
            return Err(unsupported(content_encoding.unwrap_or_default()));
        }
    };
    if body.is_empty() {
        return Ok(Decoded {
            bytes: Cow::Borrowed(body),
            complete: true,
        });
    }
    match coding.as_str() {
        // Every gzip member, as Go's and most servers' readers decode them: decoding only the
        // first would let a second member reach the upstream unseen.
        "gzip" | "x-gzip" => read_capped(MultiGzDecoder::new(body), max_decoded_bytes, truncated),
        // HTTP's "deflate" is the zlib format (RFC 9110 section 8.4.1.2).
        "deflate" => read_capped(ZlibDecoder::new(body), max_decoded_bytes, truncated),
        _ => Err(unsupported(&coding)),
    }
}

fn read_capped(
    decoder: impl Read,
    max_decoded_bytes: usize,
    truncated: bool,
) -> Result<Decoded<'static>, BodyError> {
    let cap = u64::try_from(max_decoded_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut out = Vec::new();
    // On an error, read_to_end keeps what was decoded before it.
    if let Err(e) = decoder.take(cap).read_to_end(&mut out)
        && !truncated
    {
        return Err(BodyError::new(
            BodyErrorKind::InvalidEncoding,
            format!("the body is not valid for its Content-Encoding: {e}"),
        ));
    }
    let complete = out.len() <= max_decoded_bytes;
    out.truncate(max_decoded_bytes);
    Ok(Decoded {
        bytes: Cow::Owned(out),
        complete,
    })
}

fn unsupported(coding: &str) -> BodyError {
    BodyError::new(
        BodyErrorKind::UnsupportedEncoding,
        format!(
            "Content-Encoding {coding:?} is not decoded for the policy (gzip, x-gzip and \
             deflate are, one coding at most)"
        ),
    )
}
