//! Frame scanner throughput: bytes per second for 16-, 64- and 1024-byte
//! frames, fed as whole buffers and as random small chunks (1 to 64 bytes,
//! as a fragmenting peer would deliver them), counting; and whole buffers
//! with a sink that takes every frame's seq and end (what per-frame
//! observability would pay).
//!
//! Run: `cargo bench --bench scanner`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use foo_proxy::scanner::{Direction, Frame, FrameCounts, FrameSink, Scanner};
use std::hint::black_box;

/// About 1 MiB of `REQ <seq> <data>\n` frames, each exactly `frame_len` bytes.
fn stream(frame_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut seq = 0u64;
    while out.len() < 1 << 20 {
        seq += 1;
        let head = format!("REQ {seq} ");
        let pad = frame_len.saturating_sub(head.len() + 1).max(1);
        out.extend_from_slice(head.as_bytes());
        out.extend(std::iter::repeat_n(b'x', pad));
        out.push(b'\n');
    }
    out
}

/// Chunk boundaries 1 to 64 bytes apart, from a fixed seed.
fn cuts(len: usize) -> Vec<usize> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut at = 0;
    let mut cuts = Vec::new();
    while at < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        at = (at + 1 + (state % 64) as usize).min(len);
        cuts.push(at);
    }
    cuts
}

/// A sink that uses every frame's seq and end, so none of it is optimised away.
#[derive(Default)]
struct SeqSum(u64);

impl FrameSink for SeqSum {
    fn frame(&mut self, frame: Frame, seq: u64, end: usize) {
        if frame != Frame::Invalid {
            self.0 = self.0.wrapping_add(seq ^ end as u64);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("scanner");
    for frame_len in [16usize, 64, 1024] {
        let data = stream(frame_len);
        let cuts = cuts(data.len());
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("whole", frame_len), &data, |b, data| {
            b.iter(|| {
                let mut counts = FrameCounts::default();
                Scanner::new(Direction::ClientToServer).scan(black_box(data), &mut counts);
                counts
            })
        });
        group.bench_with_input(BenchmarkId::new("chunks", frame_len), &data, |b, data| {
            b.iter(|| {
                let mut counts = FrameCounts::default();
                let mut scanner = Scanner::new(Direction::ClientToServer);
                let mut from = 0;
                for &to in &cuts {
                    if let Some(chunk) = data.get(from..to) {
                        scanner.scan(black_box(chunk), &mut counts);
                    }
                    from = to;
                }
                counts
            })
        });
        group.bench_with_input(BenchmarkId::new("events", frame_len), &data, |b, data| {
            b.iter(|| {
                let mut sum = SeqSum::default();
                Scanner::new(Direction::ClientToServer).scan(black_box(data), &mut sum);
                sum.0
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
