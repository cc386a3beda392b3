//! A custom tool's result: what a handler wrote, turned into the content blocks CMA's
//! `user.custom_tool_result` takes.
//!
//! A handler writes plain text, or a JSON object `{"content": [...], "is_error": bool}` whose
//! blocks are `{"type": "text", "text"}` or `{"type": "image", "source": {"type": "base64",
//! "media_type", "data"}}`. Anything else in that object, a bad block, an image too large or
//! too many images make an error result that says what was wrong, so the model (and the
//! operator reading the session) learns why rather than getting half an answer.

use base64::Engine;
use serde_json::{Value, json};

/// Images one result may carry.
pub const MAX_IMAGES: usize = 4;
/// Decoded bytes of one image.
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
/// The media types CMA lists for base64 image sources.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// One result, ready to post.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolReply {
    pub is_error: bool,
    /// Never empty (CMA refuses empty content).
    pub content: Vec<Value>,
}

impl ToolReply {
    pub fn text(is_error: bool, text: impl Into<String>) -> Self {
        let text = text.into();
        let text = if text.is_empty() {
            "(no output)".to_string()
        } else {
            text
        };
        Self {
            is_error,
            content: vec![json!({"type": "text", "text": text})],
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self::text(true, text)
    }

    /// Bytes of content, as posted (for the audit record).
    pub fn size(&self) -> usize {
        self.content.iter().map(|b| b.to_string().len()).sum()
    }

    /// The text of the blocks in one string, images as `[image/png]`, for the dashboard's
    /// session timeline (the store cuts it to an excerpt).
    pub fn excerpt(&self) -> String {
        let mut out = String::new();
        for block in &self.content {
            if !out.is_empty() {
                out.push('\n');
            }
            match block["type"].as_str() {
                Some("text") => out.push_str(block["text"].as_str().unwrap_or_default()),
                Some("image") => {
                    let media = block["source"]["media_type"].as_str().unwrap_or("image");
                    out.push_str(&format!("[{media}]"));
                }
                _ => out.push_str("[block]"),
            }
            // Enough for any excerpt: the rest would be cut anyway.
            if out.len() > 4096 {
                break;
            }
        }
        out
    }

    /// Images among the blocks.
    pub fn images(&self) -> usize {
        self.content.iter().filter(|b| b["type"] == "image").count()
    }

    /// The image blocks' media types and bytes, in order (one that does not decode is left
    /// out; results are checked before they get here, so none is).
    pub fn decoded_images(&self) -> Vec<(String, Vec<u8>)> {
        self.content
            .iter()
            .filter(|b| b["type"] == "image")
            .filter_map(|b| {
                let media = b["source"]["media_type"].as_str()?.to_string();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b["source"]["data"].as_str()?)
                    .ok()?;
                Some((media, data))
            })
            .collect()
    }
}

/// Reads what a handler wrote (standard output of a `run` tool, the body of an `http` one).
/// Output that is a JSON object with a `content` key is structured; anything else is text.
pub fn parse(output: &str) -> ToolReply {
    let trimmed = output.trim_start();
    if trimmed.starts_with('{')
        && let Ok(Value::Object(object)) = serde_json::from_str::<Value>(trimmed)
        && object.contains_key("content")
    {
        return structured(object);
    }
    ToolReply::text(false, output)
}

fn structured(mut object: serde_json::Map<String, Value>) -> ToolReply {
    let bad = |what: String| {
        ToolReply::error(format!(
            "[cordon] the tool's handler wrote a result object Cordon cannot pass on: {what}. \
             Expected {{\"content\": [blocks], \"is_error\": bool}} with text blocks \
             {{\"type\": \"text\", \"text\": ...}} and image blocks {{\"type\": \"image\", \
             \"source\": {{\"type\": \"base64\", \"media_type\": \"image/png\", \"data\": ...}}}}"
        ))
    };
    let is_error = match object.remove("is_error") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => return bad(format!("is_error is {other}, not true or false")),
    };
    if let Some(key) = object.keys().find(|k| *k != "content") {
        return bad(format!("unknown key {key:?}"));
    }
    let Some(Value::Array(blocks)) = object.remove("content") else {
        return bad("content is not a list".into());
    };
    if blocks.is_empty() {
        return ToolReply::text(is_error, "");
    }
    let mut content = Vec::with_capacity(blocks.len());
    let mut images = 0;
    for (i, block) in blocks.into_iter().enumerate() {
        match check_block(block, &mut images) {
            Ok(block) => content.push(block),
            Err(why) => return bad(format!("content[{i}]: {why}")),
        }
    }
    ToolReply { is_error, content }
}

fn check_block(block: Value, images: &mut usize) -> Result<Value, String> {
    let Value::Object(map) = &block else {
        return Err("not an object".into());
    };
    match map.get("type").and_then(Value::as_str) {
        Some("text") => match map.get("text") {
            Some(Value::String(_)) if map.len() == 2 => Ok(block),
            Some(Value::String(_)) => Err("a text block has only type and text".into()),
            _ => Err("a text block needs \"text\", a string".into()),
        },
        Some("image") => {
            *images += 1;
            if *images > MAX_IMAGES {
                return Err(format!("more than {MAX_IMAGES} images in one result"));
            }
            let source = map
                .get("source")
                .and_then(Value::as_object)
                .ok_or("an image block needs a \"source\" object")?;
            if source.get("type").and_then(Value::as_str) != Some("base64") {
                return Err("an image's source must be {\"type\": \"base64\", ...}".into());
            }
            let media = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !IMAGE_TYPES.contains(&media) {
                return Err(format!(
                    "media_type {media:?} is not one of {}",
                    IMAGE_TYPES.join(", ")
                ));
            }
            let data = source
                .get("data")
                .and_then(Value::as_str)
                .ok_or("an image source needs \"data\", base64")?;
            // Checked before decoding: base64 is 4/3 of the bytes.
            if data.len() / 4 * 3 > MAX_IMAGE_BYTES + 3 {
                return Err(format!(
                    "an image is over {} MiB",
                    MAX_IMAGE_BYTES / 1024 / 1024
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| format!("an image's data is not base64: {e}"))?;
            if !signature_matches(media, &bytes) {
                return Err(format!("an image's data is not a {media} file"));
            }
            Ok(
                json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
            )
        }
        Some(other) => Err(format!(
            "block type {other:?}: a custom tool's result carries text and image blocks"
        )),
        None => Err("a block needs a \"type\"".into()),
    }
}

/// Whether `bytes` start as a file of `media` does.
fn signature_matches(media: &str, bytes: &[u8]) -> bool {
    match media {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xff, 0xd8, 0xff]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n0000";

    fn png_block() -> Value {
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png",
            "data": base64::engine::general_purpose::STANDARD.encode(PNG)}})
    }

    #[test]
    fn plain_text_is_a_text_result_and_empty_is_no_output() {
        assert_eq!(parse("hello\n"), ToolReply::text(false, "hello\n"));
        assert_eq!(parse("").content[0]["text"], "(no output)");
        // JSON that is not a result object is text too.
        assert_eq!(parse("{\"a\": 1}").content[0]["text"], "{\"a\": 1}");
    }

    #[test]
    fn a_result_object_passes_text_and_images() {
        let out =
            json!({"content": [{"type": "text", "text": "chart"}, png_block()], "is_error": false});
        let reply = parse(&out.to_string());
        assert!(!reply.is_error);
        assert_eq!(reply.content.len(), 2);
        assert_eq!(reply.images(), 1);
        let err = parse(
            &json!({"content": [{"type": "text", "text": "no"}], "is_error": true}).to_string(),
        );
        assert!(err.is_error);
    }

    #[test]
    fn bad_blocks_are_error_results_that_say_why() {
        let cases = [
            (json!({"content": "x"}), "content is not a list"),
            (json!({"content": [], "extra": 1}), "unknown key \"extra\""),
            (
                json!({"content": [{"type": "video"}]}),
                "block type \"video\"",
            ),
            (json!({"content": [{"type": "text"}]}), "needs \"text\""),
            (
                json!({"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": ""}}]}),
                "media_type \"image/bmp\"",
            ),
            (
                json!({"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "!!"}}]}),
                "not base64",
            ),
            (
                json!({"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                    "data": base64::engine::general_purpose::STANDARD.encode(PNG)}}]}),
                "not a image/jpeg file",
            ),
            (
                json!({"content": [png_block(), png_block(), png_block(), png_block(), png_block()]}),
                "more than 4 images",
            ),
            (
                json!({"content": [], "is_error": "yes"}),
                "is_error is \"yes\"",
            ),
        ];
        for (output, why) in cases {
            let reply = parse(&output.to_string());
            assert!(reply.is_error, "{output}");
            let text = reply.content[0]["text"].as_str().unwrap();
            assert!(text.contains(why), "{why:?} in {text}");
        }
    }

    #[test]
    fn an_oversized_image_is_refused_before_decoding() {
        let data = "A".repeat(MAX_IMAGE_BYTES / 3 * 4 + 100);
        let out = json!({"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]});
        let reply = parse(&out.to_string());
        assert!(
            reply.content[0]["text"]
                .as_str()
                .unwrap()
                .contains("over 5 MiB")
        );
    }
}
