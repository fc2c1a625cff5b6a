//! The recovery codec's unit tests: the snapshot's bytes, what a damaged file restores, and the restore arithmetic.

use super::*;
use crate::scanner::FrameCounts;

/// A wall-clock instant well after the epoch.
const T0: u64 = 1_795_817_411_000;

fn bucket(start_ms: u64, req: u32, resp: u32) -> WindowBucket {
    WindowBucket {
        start_ms,
        req,
        resp,
    }
}

pub(in crate::recovery) fn sample() -> Snapshot {
    Snapshot {
        written_at_ms: T0,
        totals: Totals {
            msg_req: 1000,
            msg_ack: 900,
            msg_nak: 99,
            invalid_client_to_server: 3,
            invalid_server_to_client: 4,
            connections_total: 12,
            upstream_errors: 2,
            bytes_client_to_server: u64::MAX - 1,
            bytes_server_to_client: 123_456_789_012,
            requests_unanswered: 5,
            answers_unmatched: 6,
            requests_duplicate_seq: 7,
            requests_untracked: 8,
        },
        // Started 0 ms, 10 ms, 2 s, 6.49 s, 6.5 s and 9.99 s before the write.
        window: vec![
            bucket(T0 - 9_990, 1, 0),
            bucket(T0 - 6_500, 2, 0),
            bucket(T0 - 6_490, 4, 0),
            bucket(T0 - 2_000, 8, 0),
            bucket(T0 - 10, 16, 0),
            bucket(T0, 32, 0),
        ],
        ..Snapshot::default()
    }
}

#[test]
fn encode_decode_round_trip() {
    let s = sample();
    let bytes = encode(&s);
    assert_eq!(decode(&bytes), Ok(s));
    assert_eq!(bytes.last(), Some(&b'\n'));
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["format"], FORMAT);
    assert_eq!(v["version"], VERSION);
    let empty = Snapshot::default();
    assert_eq!(decode(&encode(&empty)), Ok(empty));
}

#[test]
fn a_total_missing_from_the_file_reads_as_zero() {
    let old = br#"{"format":"foo-proxy-recovery","version":1,"written_at_ms":5,
            "totals":{"msg_req":3,"bytes_client_to_server":9},"window":[]}"#;
    let snapshot = decode(old).unwrap();
    assert_eq!(
        snapshot.totals,
        Totals {
            msg_req: 3,
            bytes_client_to_server: 9,
            ..Totals::default()
        }
    );
}

#[test]
fn decode_names_what_is_wrong() {
    let good = encode(&sample());
    assert_eq!(decode(b""), Err(DecodeError::Empty));
    assert_eq!(decode(b" \n"), Err(DecodeError::Empty));
    let half = good.get(..good.len() / 2).unwrap();
    assert_eq!(decode(half), Err(DecodeError::Truncated));
    assert!(matches!(
        decode(b"\x00\xffgarbage"),
        Err(DecodeError::NotJson(_))
    ));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"xx");
    assert!(matches!(decode(&trailing), Err(DecodeError::NotJson(_))));
    let huge = vec![b' '; MAX_FILE_BYTES as usize + 1];
    assert!(matches!(decode(&huge), Err(DecodeError::TooLarge(_))));
    // Other JSON, such as a window the reference proxy might keep.
    for other in [
        &b"[0,1,2,3]"[..],
        b"{\"RequestRate\":[1,2],\"ResponseRate\":[3,4]}",
        b"{\"version\":1,\"window\":[]}",
        b"{\"format\":\"something-else\",\"version\":1}",
        b"42",
        b"null",
    ] {
        assert_eq!(decode(other), Err(DecodeError::NotOurs), "{other:?}");
    }
    let v2 = br#"{"format":"foo-proxy-recovery","version":2}"#;
    assert_eq!(decode(v2), Err(DecodeError::Version("2".into())));
    let nover = br#"{"format":"foo-proxy-recovery"}"#;
    assert!(matches!(decode(nover), Err(DecodeError::Version(_))));
    let missing = br#"{"format":"foo-proxy-recovery","version":1,"written_at_ms":1}"#;
    assert!(matches!(decode(missing), Err(DecodeError::Invalid(_))));
    let negative = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"msg_req\":1000", "\"msg_req\":-1");
    assert!(matches!(
        decode(negative.as_bytes()),
        Err(DecodeError::Invalid(_))
    ));
    let too_many = String::from_utf8(good.clone()).unwrap().replace(
        "\"msg_req\":1000",
        &format!("\"msg_req\":{}", u128::from(u64::MAX) + 1),
    );
    assert!(matches!(
        decode(too_many.as_bytes()),
        Err(DecodeError::Invalid(_))
    ));
    let wrong_type = String::from_utf8(good)
        .unwrap()
        .replace("\"req\":1,", "\"req\":\"1\",");
    assert!(matches!(
        decode(wrong_type.as_bytes()),
        Err(DecodeError::Invalid(_))
    ));
}

fn surviving(age_ms: u64) -> (WindowFate, Vec<u32>) {
    let p = plan(&sample(), T0 + age_ms);
    assert_eq!(p.totals, sample().totals);
    (p.window, p.buckets.iter().map(|(_, b)| b.req).collect())
}

#[test]
fn buckets_survive_by_wall_clock_age() {
    // Bucket `req` values name them: 1 is the oldest (9.99 s at write
    // time), 32 the newest (0 s).
    assert_eq!(
        surviving(0),
        (WindowFate::Restored, vec![1, 2, 4, 8, 16, 32])
    );
    // 3.5 s later: 6.5 s + 3.5 s = 10 s is out, 6.49 s + 3.5 s is in.
    assert_eq!(surviving(3_500), (WindowFate::Restored, vec![4, 8, 16, 32]));
    // 9.99 s later only the bucket that started at the write survives.
    assert_eq!(surviving(9_990), (WindowFate::Restored, vec![32]));
    assert_eq!(surviving(10_000), (WindowFate::TooOld, vec![]));
    assert_eq!(surviving(11_000), (WindowFate::TooOld, vec![]));
}

#[test]
fn restored_ages_are_wall_clock_ages() {
    let p = plan(&sample(), T0 + 3_500);
    let ages: Vec<u64> = p.buckets.iter().map(|(age, _)| *age).collect();
    assert_eq!(ages, vec![9_990, 5_500, 3_510, 3_500]);
    assert_eq!(p.age_ms, 3_500);
}

#[test]
fn future_snapshots_restore_totals_only() {
    let p = plan(&sample(), T0 - 1);
    assert_eq!(p.window, WindowFate::FromTheFuture);
    assert!(p.buckets.is_empty());
    assert_eq!(p.totals, sample().totals);
    // A bucket dated after its own snapshot is not trusted either.
    let mut s = sample();
    s.window.push(bucket(T0 + 5, 64, 0));
    let p = plan(&s, T0 + 10);
    assert!(p.buckets.iter().all(|(_, b)| b.req != 64));
}

#[test]
fn restore_puts_rates_and_totals_back() {
    let mut stats = Stats::default();
    // A fresh process: its monotonic clock is near 0.
    let p = restore(&sample(), &mut stats, T0 + 3_500, 7);
    assert_eq!(p.window, WindowFate::Restored);
    assert_eq!(Totals::of(&stats), sample().totals);
    let r = stats.report(7);
    assert_eq!(r.request_rate_10s, f64::from(4 + 8 + 16 + 32) / 10.0);
    // Ages 3.5 s and 3.51 s: outside the last second.
    assert_eq!(r.request_rate_1s, 0.0);
    // 10 ms later the 9.99 s-old bucket has left the window, and 4.5 s
    // later the 5.5 s-old one too.
    let r = stats.report(7 + 10);
    assert_eq!(r.request_rate_10s, f64::from(8 + 16 + 32) / 10.0);
    let r = stats.report(7 + 4_500);
    assert_eq!(r.request_rate_10s, f64::from(16 + 32) / 10.0);
    assert_eq!(stats.report(7 + 10_000).request_rate_10s, 0.0);
}

#[test]
fn capture_then_restore_keeps_the_rates() {
    let mut stats = Stats::default();
    stats.add_client_frames(&FrameCounts {
        req: 5,
        ..FrameCounts::default()
    });
    stats.commit_window(40_003);
    stats.add_server_frames(&FrameCounts {
        ack: 4,
        nak: 1,
        ..FrameCounts::default()
    });
    stats.commit_window(47_500);
    let snap = capture(&mut stats, T0, 48_000);
    assert_eq!(snap.window.len(), 2);
    assert_eq!(snap.window.first().map(|b| b.start_ms), Some(T0 - 8_000));
    let before = stats.report(48_000);

    let mut fresh = Stats::default();
    restore(&decode(&encode(&snap)).unwrap(), &mut fresh, T0, 0);
    let after = fresh.report(0);
    assert_eq!(after.msg_total, before.msg_total);
    assert_eq!(after.request_rate_10s, before.request_rate_10s);
    assert_eq!(after.response_rate_10s, before.response_rate_10s);
    assert_eq!(after.response_rate_1s, before.response_rate_1s);
    assert_eq!(after.uptime_secs, 0.0);
}

/// Issue 12: the close reasons and the latency histograms are counts
/// since the first start, like the totals; a restart (or a `kill -9`
/// and the recovery file) must not zero them.
#[test]
fn close_reasons_and_latency_histograms_survive_a_restart() {
    let mut stats = Stats::default();
    for (i, n) in stats.matching.closed.iter_mut().enumerate() {
        *n = 3 * i as u64 + 1;
    }
    for us in [50, 20_000, 20_000, 3_000_000, 99_000_000] {
        stats.matching.latency.ack.record(us);
    }
    stats.matching.latency.nak.record(700);
    let snap = capture(&mut stats, T0, 1_000);
    assert_eq!(snap.closed.len(), Reason::NAMES.len());
    assert_eq!(snap.closed.get("client_closed"), Some(&1));

    let mut fresh = Stats::default();
    // Counts of the new process's own come on top.
    fresh.matching.closed[0] = 10;
    fresh.matching.latency.ack.record(20_000);
    let back = decode(&encode(&snap)).unwrap();
    assert_eq!(back, snap);
    let (_, skipped) = restore_counted(&back, &mut fresh, T0, 0);
    assert_eq!(skipped, Skipped::default());
    assert_eq!(fresh.matching.closed[0], 11);
    assert_eq!(&fresh.matching.closed[1..], &stats.matching.closed[1..]);
    let mut want = stats.matching.latency.ack;
    want.record(20_000);
    assert_eq!(fresh.matching.latency.ack, want);
    assert_eq!(fresh.matching.latency.nak, stats.matching.latency.nak);
}

#[test]
fn a_file_written_before_reasons_and_histograms_were_kept_still_restores() {
    // The exact shape the first builds wrote (version 1, no `closed`,
    // no `latency`).
    let old = format!(
        "{{\"format\":\"{FORMAT}\",\"version\":1,\"written_at_ms\":{T0},\
         \"totals\":{{\"msg_req\":5,\"msg_ack\":4,\"msg_nak\":1}},\"window\":[]}}\n"
    );
    let snap = decode(old.as_bytes()).unwrap();
    assert!(snap.closed.is_empty());
    assert_eq!(snap.latency, LatencyTotals::default());
    let mut stats = Stats::default();
    let (_, skipped) = restore_counted(&snap, &mut stats, T0, 0);
    assert_eq!(skipped, Skipped::default());
    assert_eq!(stats.msg_req, 5);
    assert_eq!(stats.matching.closed, [0; crate::reason::CLOSE_REASONS]);
    assert_eq!(stats.matching.latency.ack.count(), 0);
}

#[test]
fn histograms_with_other_buckets_and_unknown_reasons_are_left_out() {
    let mut snap = sample();
    snap.closed.insert("client_closed".into(), 2);
    snap.closed.insert("eaten_by_a_grue".into(), 9);
    snap.latency.ack = HistogramTotals {
        bounds_us: vec![1, 2, 3],
        counts: vec![1, 1, 1, 1],
        sum_us: 6,
    };
    let mut stats = Stats::default();
    let (_, skipped) = restore_counted(&snap, &mut stats, T0, 0);
    assert_eq!(skipped.reasons, ["eaten_by_a_grue"]);
    assert!(skipped.histograms);
    assert_eq!(stats.matching.closed[0], 2);
    assert_eq!(stats.matching.latency.ack, Histogram::default());
    assert_eq!(stats.msg_req, 1000, "the totals come back all the same");
}

#[test]
fn unknown_fields_anywhere_are_ignored() {
    let good = encode(&sample());
    let mut v: Value = serde_json::from_slice(&good).unwrap();
    v["later"] = serde_json::json!({"x": [1, null]});
    v["totals"]["msg_other"] = serde_json::json!(7);
    v["window"][0]["weight"] = serde_json::json!("heavy");
    let extra = serde_json::to_vec(&v).unwrap();
    assert_eq!(decode(&extra), Ok(sample()));
    // A different version is still refused, extra fields or not.
    v["version"] = serde_json::json!(2);
    let v2 = serde_json::to_vec(&v).unwrap();
    assert_eq!(decode(&v2), Err(DecodeError::Version("2".into())));
}

#[test]
fn a_captured_window_is_always_plausible() {
    assert_eq!(check_window(&sample()), Ok(()));
    let mut stats = Stats::default();
    for ms in (0..12_000).step_by(7) {
        stats.add_client_frames(&FrameCounts {
            req: 3,
            ..FrameCounts::default()
        });
        stats.add_server_frames(&FrameCounts {
            ack: 2,
            nak: 1,
            ..FrameCounts::default()
        });
        stats.commit_window(ms);
    }
    let snap = capture(&mut stats, T0, 12_000);
    // Every bucket but the one just begun.
    assert_eq!(snap.window.len(), BUCKETS - 1);
    assert_eq!(check_window(&snap), Ok(()));
}

#[test]
fn implausible_windows_are_named() {
    let with = |f: &dyn Fn(&mut Snapshot)| {
        let mut s = sample();
        f(&mut s);
        check_window(&s)
    };
    // 63 requests in the window.
    assert_eq!(
        with(&|s| s.totals.msg_req = 62),
        Err(Implausible::Requests {
            window: 63,
            total: 62
        })
    );
    assert_eq!(with(&|s| s.totals.msg_req = 63), Ok(()));
    assert_eq!(
        with(&|s| s.window.push(bucket(T0 - 1, 0, 1_000))),
        Err(Implausible::Responses {
            window: 1_000,
            total: 999
        })
    );
    // One bucket may not be larger than its totals either.
    assert!(matches!(
        with(&|s| s.window = vec![bucket(T0, u32::MAX, 0)]),
        Err(Implausible::Requests { .. })
    ));
    assert_eq!(
        with(&|s| s.window.push(bucket(T0 + 1, 0, 0))),
        Err(Implausible::OutsideWindow { start_ms: T0 + 1 })
    );
    assert_eq!(
        with(&|s| s.window.push(bucket(T0 - WINDOW_MS - 1, 0, 0))),
        Err(Implausible::OutsideWindow {
            start_ms: T0 - WINDOW_MS - 1
        })
    );
    assert_eq!(
        with(&|s| s.window.push(bucket(T0 - WINDOW_MS, 0, 0))),
        Ok(())
    );
    assert_eq!(
        with(&|s| s.window.push(bucket(T0 - 10, 0, 0))),
        Err(Implausible::Duplicate { start_ms: T0 - 10 })
    );
    assert_eq!(
        with(&|s| s.window = (0..=BUCKETS as u64).map(|i| bucket(T0 - i, 0, 0)).collect()),
        Err(Implausible::TooManyBuckets(BUCKETS + 1))
    );
}
