//! What request/answer matching adds to the frame scan, per message: the
//! same reads (16 pipelined 64-byte REQs, then their 16 ACKs, as in
//! `cargo bench --bench relay`'s default depth) scanned with frame counts
//! only, and with the seq tracker (clock read, match, latency histograms).
//!
//! Run: `cargo bench --bench matching`. On a shared machine, where timings
//! drift by tens of percent, count instructions instead: with
//! `MATCHING_RUN=counts|seqs|match` the binary runs that variant 20 times
//! over the reads and exits, e.g. `MATCHING_RUN=match valgrind
//! --tool=cachegrind --cache-sim=no target/release/deps/matching-HASH`; the
//! difference between `match` and `seqs`, divided by 163,840 messages, is
//! what matching costs per message. `MATCHING_RUN=buckets|buckets-linear`
//! finds the fixed bucket of 8,192 latencies spread from 50 µs to 6.5 s
//! (20 times), with `latency::bucket_of` or with the linear search over
//! the bounds it replaced: the matching reads above answer within
//! microseconds, always the first bucket, where a linear search costs one
//! comparison.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use foo_proxy::latency::{BOUNDS_US, BUCKETS, bucket_of, now_us};
use foo_proxy::scanner::{Direction, Frame, FrameCounts, FrameSink, Scanner};
use foo_proxy::seqs::{Seqs, Tracking};
use foo_proxy::stats::Stats;
use std::hint::black_box;

const DEPTH: u64 = 16;

#[derive(Default)]
struct SeqSum(u64);

impl FrameSink for SeqSum {
    fn frame(&mut self, frame: Frame, seq: u64, _end: usize) {
        if frame != Frame::Invalid {
            self.0 = self.0.wrapping_add(seq);
        }
    }
}
const ROUNDS: u64 = 256;

/// `ROUNDS` reads of `DEPTH` requests and `ROUNDS` reads of their answers,
/// each frame 64 bytes.
fn reads() -> Vec<(Vec<u8>, Vec<u8>)> {
    let frame = |kind: &str, seq: u64| {
        let head = format!("{kind} {seq} ");
        let mut f = head.into_bytes();
        f.resize(63, b'x');
        f.push(b'\n');
        f
    };
    (0..ROUNDS)
        .map(|r| {
            let seqs = r * DEPTH..(r + 1) * DEPTH;
            let reqs = seqs.clone().flat_map(|s| frame("REQ", s)).collect();
            let acks = seqs.flat_map(|s| frame("ACK", s)).collect();
            (reqs, acks)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = reads();
    let mut group = c.benchmark_group("matching");
    group.throughput(Throughput::Elements(2 * DEPTH * ROUNDS));
    group.bench_with_input(BenchmarkId::new("counts only", 64), &data, |b, data| {
        b.iter(|| {
            let mut c2s = Scanner::new(Direction::ClientToServer);
            let mut s2c = Scanner::new(Direction::ServerToClient);
            let mut total = FrameCounts::default();
            for (reqs, acks) in data {
                let mut counts = FrameCounts::default();
                c2s.scan(black_box(reqs), &mut counts);
                s2c.scan(black_box(acks), &mut counts);
                total.req += counts.req;
                total.ack += counts.ack;
            }
            total
        })
    });
    // The seqs parsed, nothing else: what the scanner costs a sink that
    // reads them, apart from matching.
    group.bench_with_input(BenchmarkId::new("seqs parsed", 64), &data, |b, data| {
        b.iter(|| {
            let mut c2s = Scanner::new(Direction::ClientToServer);
            let mut s2c = Scanner::new(Direction::ServerToClient);
            let mut sum = SeqSum::default();
            for (reqs, acks) in data {
                c2s.scan(black_box(reqs), &mut sum);
                s2c.scan(black_box(acks), &mut sum);
            }
            sum.0
        })
    });
    let mut matching = Stats::default();
    group.bench_with_input(BenchmarkId::new("with matching", 64), &data, |b, data| {
        b.iter(|| {
            let mut c2s = Scanner::new(Direction::ClientToServer);
            let mut s2c = Scanner::new(Direction::ServerToClient);
            let mut seqs = Seqs::default();
            let mut total = FrameCounts::default();
            for (reqs, acks) in data {
                // The loop reads the clock once per iteration; here once
                // per pair of reads, an upper bound on its share.
                let now = now_us();
                let mut sink = Tracking::new(&mut seqs, &mut matching, now);
                c2s.scan(black_box(reqs), &mut sink);
                total.req += sink.counts.req;
                let mut sink = Tracking::new(&mut seqs, &mut matching, now);
                s2c.scan(black_box(acks), &mut sink);
                total.ack += sink.counts.ack;
            }
            total
        })
    });
    group.finish();
    assert_eq!(matching.answers_unmatched, 0);
}

criterion_group!(benches, bench);

/// `MATCHING_RUN` set: one variant, 20 times, for an instruction count.
fn main() {
    if let Ok(mode) = std::env::var("MATCHING_RUN") {
        if mode.starts_with("buckets") {
            let linear = mode == "buckets-linear";
            let mut counts = [0u64; BUCKETS];
            for _ in 0..20 {
                for i in 0..2 * DEPTH * ROUNDS {
                    let us = black_box(50u64 << (i % 18));
                    let b = if linear {
                        BOUNDS_US
                            .iter()
                            .position(|&bound| us <= bound)
                            .unwrap_or(BOUNDS_US.len())
                    } else {
                        bucket_of(us)
                    };
                    counts[b] += 1;
                }
            }
            println!("{counts:?}");
            return;
        }
        let data = reads();
        let mut matching = Stats::default();
        let mut n = 0u64;
        for _ in 0..20 {
            let mut c2s = Scanner::new(Direction::ClientToServer);
            let mut s2c = Scanner::new(Direction::ServerToClient);
            let mut seqs = Seqs::default();
            let mut sum = SeqSum::default();
            for (reqs, acks) in &data {
                match mode.as_str() {
                    "counts" => {
                        let mut counts = FrameCounts::default();
                        c2s.scan(black_box(reqs), &mut counts);
                        s2c.scan(black_box(acks), &mut counts);
                        n += counts.req + counts.ack;
                    }
                    "seqs" => {
                        c2s.scan(black_box(reqs), &mut sum);
                        s2c.scan(black_box(acks), &mut sum);
                    }
                    _ => {
                        let now = now_us();
                        let mut sink = Tracking::new(&mut seqs, &mut matching, now);
                        c2s.scan(black_box(reqs), &mut sink);
                        let mut sink = Tracking::new(&mut seqs, &mut matching, now);
                        s2c.scan(black_box(acks), &mut sink);
                    }
                }
            }
            n += sum.0;
        }
        println!("{n} {}", matching.answers_unmatched);
        return;
    }
    benches();
}
