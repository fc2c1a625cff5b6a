//! Any bytes give a snapshot or a reason, never a panic; encoding then
//! decoding gives back the same snapshot; fields this build does not know
//! never change what decodes; any `u64` total is taken as written; and
//! `check_window` agrees with a plain restatement of its rules, so an
//! accepted window never restores more than the totals it claims to be
//! part of; and restoring puts every close reason this build knows and
//! every histogram counted with its buckets into the report as written,
//! leaving out (and saying so) exactly the rest.
#![no_main]

use foo_proxy::rates::BUCKETS;
use foo_proxy::latency::{BOUNDS_US, BUCKETS as LATENCY_BUCKETS, Histogram};
use foo_proxy::recovery::{
    HistogramTotals, LatencyTotals, Snapshot, Totals, WINDOW_MS, WindowBucket, check_window,
    decode, encode, restore, restore_counted,
};
use foo_proxy::stats::Stats;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = decode(data) {
        let bytes = encode(&snapshot);
        assert_eq!(decode(&bytes).as_ref(), Ok(&snapshot));
        // One encoding per snapshot: the file is canonical.
        assert_eq!(encode(&snapshot), bytes);
        check_window_rules(&snapshot, data);
        check_unknown_fields(&snapshot, data);
        check_reasons_and_histograms(&snapshot);
    }
    let x = snapshot_from(data);
    assert_eq!(decode(&encode(&x)), Ok(x.clone()));
    check_window_rules(&x, data);
    check_reasons_and_histograms(&x);
    // Any total, up to u64::MAX, is restored as written and the sums the
    // report derives from it saturate instead of wrapping or panicking.
    let mut top = x.clone();
    set_total(&mut top.totals, data.len() % 9, u64::MAX - x.written_at_ms % 3);
    assert_eq!(decode(&encode(&top)), Ok(top.clone()));
    let mut stats = Stats::default();
    restore(&top, &mut stats, top.written_at_ms, 0);
    let r = stats.report(0);
    let t = &top.totals;
    let sum = u128::from(t.msg_req) + u128::from(t.msg_ack) + u128::from(t.msg_nak);
    assert_eq!(u128::from(r.msg_total), sum.min(u128::from(u64::MAX)));
    // The same, with every bucket moved inside the window, so the count
    // rules are the ones that decide.
    let inside = Snapshot {
        window: x
            .window
            .iter()
            .map(|b| WindowBucket {
                start_ms: x.written_at_ms.saturating_sub(b.start_ms % (WINDOW_MS + 1)),
                ..*b
            })
            .collect(),
        ..x
    };
    check_window_rules(&inside, data);
});

fn check_window_rules(snapshot: &Snapshot, data: &[u8]) {
    let plausible = check_window(snapshot).is_ok();
    assert_eq!(plausible, plainly_plausible(snapshot), "{snapshot:?}");
    if plausible {
        // Restored at any later wall-clock time, the 10 s window holds no
        // more requests or responses than the totals.
        let later = u64::from(data.first().copied().unwrap_or(0)) * 50;
        let mut stats = Stats::default();
        restore(snapshot, &mut stats, snapshot.written_at_ms.saturating_add(later), 0);
        let r = stats.report(0);
        let t = &snapshot.totals;
        assert!(r.request_rate_10s * 10.0 <= t.msg_req as f64 * (1.0 + 1e-9));
        let answered = t.msg_ack as f64 + t.msg_nak as f64;
        assert!(r.response_rate_10s * 10.0 <= answered * (1.0 + 1e-9));
    }
}

/// The report's close reason names, in order.
fn reason_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let report = serde_json::to_value(Stats::default().report(0)).unwrap();
        report["connections_closed"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    })
}

fn check_reasons_and_histograms(s: &Snapshot) {
    let mut stats = Stats::default();
    let (_, skipped) = restore_counted(s, &mut stats, s.written_at_ms, 0);
    let report = serde_json::to_value(stats.report(0)).unwrap();
    let closed = report["connections_closed"].as_object().unwrap();
    for (name, n) in &s.closed {
        match closed.get(name) {
            Some(v) => assert_eq!(v.as_u64(), Some(*n), "{name}"),
            None => assert!(skipped.reasons.contains(name), "{name}"),
        }
    }
    for (name, v) in closed {
        if !s.closed.contains_key(name) {
            assert_eq!(v.as_u64(), Some(0), "{name}");
        }
    }
    assert!(skipped.reasons.iter().all(|r| !closed.contains_key(r)));
    let mut all_taken = true;
    for (from, to) in [
        (&s.latency.ack, &stats.matching.latency.ack),
        (&s.latency.nak, &stats.matching.latency.nak),
    ] {
        if from.bounds_us == BOUNDS_US && from.counts.len() == LATENCY_BUCKETS {
            assert_eq!(to.counts.to_vec(), from.counts);
            assert_eq!(to.sum_us, from.sum_us);
        } else {
            assert_eq!(*to, Histogram::default());
            all_taken &= from.counts.iter().all(|&c| c == 0) && from.sum_us == 0;
        }
    }
    assert_eq!(skipped.histograms, !all_taken);
}

fn check_unknown_fields(snapshot: &Snapshot, data: &[u8]) {
    // Unknown fields anywhere never change what decodes...
    let mut value: Value = serde_json::from_slice(&encode(snapshot)).unwrap();
    let extra = extra_value(data);
    let name = format!("x_{}", data.len());
    value[name.as_str()] = extra.clone();
    value["totals"][name.as_str()] = extra.clone();
    if let Some(buckets) = value["window"].as_array_mut() {
        for b in buckets {
            b[name.as_str()] = extra.clone();
        }
    }
    let with_extra = serde_json::to_vec(&value).unwrap();
    assert_eq!(decode(&with_extra).as_ref(), Ok(snapshot));
    // ...but another version is still refused.
    value["version"] = json!(2 + data.len());
    assert!(decode(&serde_json::to_vec(&value).unwrap()).is_err());
}

/// The window rules, written out the slow, obvious way.
fn plainly_plausible(s: &Snapshot) -> bool {
    if s.window.len() > BUCKETS {
        return false;
    }
    let oldest = s.written_at_ms.saturating_sub(WINDOW_MS);
    for (i, b) in s.window.iter().enumerate() {
        if b.start_ms < oldest || b.start_ms > s.written_at_ms {
            return false;
        }
        if s.window[..i].iter().any(|o| o.start_ms == b.start_ms) {
            return false;
        }
    }
    let req: u128 = s.window.iter().map(|b| u128::from(b.req)).sum();
    let resp: u128 = s.window.iter().map(|b| u128::from(b.resp)).sum();
    let answered = u128::from(s.totals.msg_ack) + u128::from(s.totals.msg_nak);
    req <= u128::from(s.totals.msg_req) && resp <= answered
}

/// Some JSON built from the input: a string, a number and a nested array.
fn extra_value(data: &[u8]) -> Value {
    json!({
        "s": String::from_utf8_lossy(data.get(..16).unwrap_or(data)),
        "n": data.len(),
        "a": [null, true, data.first()],
    })
}

fn set_total(t: &mut Totals, field: usize, value: u64) {
    let slot = match field {
        0 => &mut t.msg_req,
        1 => &mut t.msg_ack,
        2 => &mut t.msg_nak,
        3 => &mut t.invalid_client_to_server,
        4 => &mut t.invalid_server_to_client,
        5 => &mut t.connections_total,
        6 => &mut t.upstream_errors,
        7 => &mut t.bytes_client_to_server,
        _ => &mut t.bytes_server_to_client,
    };
    *slot = value;
}

/// Every field from the input, 8 bytes per u64 (zero-padded at the end;
/// any u64 total); what is left after the totals
/// becomes window buckets.
fn snapshot_from(data: &[u8]) -> Snapshot {
    let mut words = data.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    });
    let mut next = || words.next().unwrap_or(0);
    let written_at_ms = next();
    let mut totals = Totals::default();
    for field in 0..9 {
        set_total(&mut totals, field, next());
    }
    let mut window = Vec::new();
    loop {
        let (start_ms, counts) = (next(), next());
        if start_ms == 0 && counts == 0 {
            break;
        }
        window.push(WindowBucket {
            start_ms,
            req: counts as u32,
            resp: (counts >> 32) as u32,
        });
    }
    // What is left: close reasons by name (known or not) and the ack
    // histogram, with this build's bounds or others.
    let mut closed = std::collections::BTreeMap::new();
    let names = reason_names();
    for _ in 0..next() % 16 {
        let word = next();
        let name = match names.get((word / 2) as usize % names.len()) {
            Some(known) if word % 2 == 0 => known.clone(),
            _ => format!("r{}", word % 20),
        };
        closed.insert(name, word);
    }
    let mut histogram = || {
        let bounds_us = if next() % 2 == 0 {
            BOUNDS_US.to_vec()
        } else {
            (0..next() % 20).map(|_| next()).collect()
        };
        // This build's count of buckets half the time, any other else.
        let len = match next() {
            w if w % 2 == 0 => LATENCY_BUCKETS as u64,
            w => w % 20,
        };
        HistogramTotals {
            bounds_us,
            counts: (0..len).map(|_| next()).collect(),
            sum_us: next(),
        }
    };
    let latency = LatencyTotals {
        ack: histogram(),
        nak: histogram(),
    };
    Snapshot {
        written_at_ms,
        totals,
        window,
        closed,
        latency,
    }
}
