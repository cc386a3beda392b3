//! What response scrubbing costs: building a scrub table (done once per connection and cached),
//! and scanning response bytes through it.
//!
//! `cargo bench -p cordon-proxy --bench scrub`

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use cordon_proxy::credentials::{ScrubPattern, ScrubTable, Scrubber};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn patterns() -> Vec<ScrubPattern> {
    vec![
        ScrubPattern {
            needle: b"ghp_cordonBenchSecretValue0123456789".to_vec(),
            replacement: b"ghp_placeholderplaceholderplaceholder".to_vec(),
        },
        ScrubPattern {
            needle: b"eC1hY2Nlc3MtdG9rZW46Z2hwX2NvcmRvbkJlbmNoU2VjcmV0".to_vec(),
            replacement: b"eC1hY2Nlc3MtdG9rZW46cGxhY2Vob2xkZXI=".to_vec(),
        },
    ]
}

fn bench(c: &mut Criterion) {
    c.bench_function("scrub table build (2 values)", |b| {
        b.iter(|| black_box(ScrubTable::new(patterns())))
    });
    let table = Arc::new(ScrubTable::new(patterns()).expect("patterns are not empty"));
    let chunk = vec![b'a'; 64 * 1024];
    let mut group = c.benchmark_group("scrub scan");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("64 KiB chunk, no match", |b| {
        let mut scrubber = Scrubber::new(table.clone());
        b.iter(|| black_box(scrubber.push(&chunk, false)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
