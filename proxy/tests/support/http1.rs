//! Raw HTTP/1.1 on a byte stream, for tests that must see exactly what crossed the wire (fake
//! upstreams that record bodies byte for byte, clients that send hand-made requests).

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads until `buf` holds a head; returns it (lower-cased) and leaves what follows in `buf`.
pub async fn take_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).to_lowercase());
        }
        fill(stream, buf).await?;
    }
}

/// Reads the body `head` announces from `buf` and the stream; `None` if the stream ends first.
pub async fn take_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &str,
) -> Option<Vec<u8>> {
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        let mut body = Vec::new();
        loop {
            let line = take_line(stream, buf).await?;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                return Some(body);
            }
        }
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < length {
        fill(stream, buf).await?;
    }
    Some(buf.drain(..length).collect())
}

pub async fn take_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..end + 2).collect();
            return Some(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        fill(stream, buf).await?;
    }
}

pub async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}
