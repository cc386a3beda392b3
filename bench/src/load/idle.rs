//! Many idle keep-alive connections held open at once: each is opened, verified, and used for
//! one request (so the proxy has intercepted it and holds its upstream side too), then left
//! idle until the holder is dropped.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::config::LoadConfig;
use super::sender::Sender;

/// Connections opened concurrently while building up the idle set.
const OPENING_CONCURRENCY: usize = 32;

#[derive(Debug)]
pub struct Held {
    connections: Vec<Sender>,
    pub failed: u64,
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
}

impl Held {
    pub fn count(&self) -> usize {
        self.connections.len()
    }
}

/// Opens up to `count` connections as `config` describes (its duration bounds the whole
/// build-up), each answering one request 2xx, and keeps them.
pub async fn hold(config: &LoadConfig, count: usize) -> anyhow::Result<Held> {
    config.validate()?;
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut held = Held {
        connections: Vec::with_capacity(count),
        failed: 0,
        error_samples: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut opening = JoinSet::new();
    let mut started = 0usize;
    loop {
        while started < count && opening.len() < OPENING_CONCURRENCY && Instant::now() < deadline {
            let config = config.clone();
            let host = config.host_for(started as u64);
            started += 1;
            opening.spawn(async move {
                let mut sender = Sender::connect(&config, &host).await?;
                let (status, _) = sender.get(&config, &host).await?;
                anyhow::ensure!((200..300).contains(&status), "status {status}");
                anyhow::Ok(sender)
            });
        }
        let Some(opened) = opening.join_next().await else {
            break;
        };
        match opened {
            Ok(Ok(sender)) => held.connections.push(sender),
            Ok(Err(e)) => {
                held.failed += 1;
                if held.error_samples.len() < 5 {
                    held.error_samples.push(format!("{e:#}"));
                }
            }
            Err(e) => anyhow::bail!("an opening task panicked: {e}"),
        }
    }
    held.elapsed = start.elapsed();
    Ok(held)
}
