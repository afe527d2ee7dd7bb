use std::collections::BTreeMap;

use super::*;
use crate::commands::SCAN_STEP;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn set(key: &str, value: &str, expiry: Expiry) -> WriteOp {
    WriteOp::Set {
        key: b(key),
        value: b(value),
        expiry,
        condition: Condition::Always,
        get: false,
    }
}

fn at(now: u64, op: WriteOp) -> Command {
    Command { now, op }
}

fn get(s: &Store, now: u64, key: &str) -> Reply {
    s.read(Query {
        now,
        op: ReadOp::Get(b(key)),
    })
}

#[test]
fn writes_and_reads_use_the_leaders_time_when_there_is_one() {
    let mut s = Store::default();
    // Accepted by a node whose clock was a minute ahead; the leader stamped 10 000.
    let leader = ApplyContext::new(5, Some(10_000));
    s.apply_at(at(70_000, set("a", "1", Expiry::At(10_500))), &leader);
    let query = |s: &Store, time: u64| {
        s.query_at(
            Query {
                now: 0,
                op: ReadOp::Get(b("a")),
            },
            &ReadContext::new(time),
        )
    };
    assert_eq!(query(&s, 10_499), Reply::Bulk(b("1")));
    assert_eq!(query(&s, 10_500), Reply::Nil);
    // At the leader's time the key was alive when written; at the accepting node's it would
    // have been expired already, and the write would have deleted it.
    assert_eq!(get(&s, 10_000, "a"), Reply::Bulk(b("1")));
    // An entry from before leader-stamped time applies at the time it carries.
    let old = ApplyContext::new(6, None);
    s.apply_at(at(20_000, set("c", "3", Expiry::At(20_100))), &old);
    assert_eq!(get(&s, 20_099, "c"), Reply::Bulk(b("3")));
    s.apply_at(at(20_100, WriteOp::IncrBy(b("c"), 1)), &old);
    assert_eq!(get(&s, 20_100, "c"), Reply::Bulk(b("1")));
}

#[test]
fn relative_expiries_start_at_the_leaders_time() {
    let mut s = Store::default();
    // SET … PX 500, EXPIRE … 1 and GETEX … PX 300, accepted by a node a minute ahead of the
    // leader, whose stamps are 10 000 and 10 100.
    let ahead = 70_000;
    s.apply_at(
        at(ahead, set("a", "1", Expiry::In(500))),
        &ApplyContext::new(1, Some(10_000)),
    );
    s.apply_at(
        at(ahead, set("b", "2", Expiry::Clear)),
        &ApplyContext::new(2, Some(10_000)),
    );
    s.apply_at(
        at(
            ahead,
            WriteOp::ExpireIn {
                key: b("b"),
                ms: 1_000,
                when: ExpireIf::Always,
            },
        ),
        &ApplyContext::new(3, Some(10_100)),
    );
    s.apply_at(
        at(ahead, set("c", "3", Expiry::Clear)),
        &ApplyContext::new(4, Some(10_100)),
    );
    s.apply_at(
        at(
            ahead,
            WriteOp::GetEx {
                key: b("c"),
                expiry: Expiry::In(300),
            },
        ),
        &ApplyContext::new(5, Some(10_100)),
    );
    for (key, deadline) in [("a", 10_500), ("b", 11_100), ("c", 10_400)] {
        assert_ne!(get(&s, deadline - 1, key), Reply::Nil, "{key}");
        assert_eq!(get(&s, deadline, key), Reply::Nil, "{key}");
    }
    // A negative relative time deletes the key at once, as in Redis.
    s.apply_at(
        at(
            ahead,
            WriteOp::ExpireIn {
                key: b("c"),
                ms: -5,
                when: ExpireIf::Always,
            },
        ),
        &ApplyContext::new(6, Some(10_200)),
    );
    assert_eq!(get(&s, 10_200, "c"), Reply::Nil);
}

#[test]
fn expiry_follows_the_stamped_time() {
    let mut s = Store::default();
    s.write(at(1000, set("a", "1", Expiry::At(1500))));
    assert_eq!(get(&s, 1499, "a"), Reply::Bulk(b("1")));
    assert_eq!(get(&s, 1500, "a"), Reply::Nil);
    // A write at t=1600 sees it as gone.
    assert_eq!(s.write(at(1600, WriteOp::IncrBy(b("a"), 1))), Reply::Int(1));
    let ttl = s.read(Query {
        now: 1600,
        op: ReadOp::Ttl {
            key: b("a"),
            millis: false,
        },
    });
    assert_eq!(ttl, Reply::Int(-1));
}

#[test]
fn set_conditions_and_get() {
    let mut s = Store::default();
    let nx = WriteOp::Set {
        key: b("k"),
        value: b("v1"),
        expiry: Expiry::Clear,
        condition: Condition::IfAbsent,
        get: false,
    };
    assert_eq!(s.write(at(0, nx.clone())), Reply::Ok);
    assert_eq!(s.write(at(0, nx)), Reply::Nil);
    let getset = WriteOp::Set {
        key: b("k"),
        value: b("v2"),
        expiry: Expiry::Clear,
        condition: Condition::IfPresent,
        get: true,
    };
    assert_eq!(s.write(at(0, getset)), Reply::Bulk(b("v1")));
    assert_eq!(get(&s, 0, "k"), Reply::Bulk(b("v2")));
}

#[test]
fn set_sees_expired_values_as_absent() {
    let mut s = Store::default();
    let op = |value: &str, expiry, condition| WriteOp::Set {
        key: b("k"),
        value: b(value),
        expiry,
        condition,
        get: true,
    };
    s.write(at(0, op("v1", Expiry::At(100), Condition::Always)));
    // KEEPTTL on a live value keeps its expiry.
    assert_eq!(
        s.write(at(50, op("v2", Expiry::Keep, Condition::IfPresent))),
        Reply::Bulk(b("v1"))
    );
    assert_eq!(get(&s, 99, "k"), Reply::Bulk(b("v2")));
    // Once expired: XX fails and the key is gone, NX succeeds.
    assert_eq!(
        s.write(at(100, op("v3", Expiry::Clear, Condition::IfPresent))),
        Reply::Nil
    );
    assert_eq!(s.expired_count(100, 10), 0);
    assert_eq!(
        s.write(at(100, op("v4", Expiry::Keep, Condition::IfAbsent))),
        Reply::Nil
    );
    assert_eq!(get(&s, 10_000, "k"), Reply::Bulk(b("v4")));
    // An expiry already past deletes.
    assert_eq!(
        s.write(at(200, op("v5", Expiry::At(150), Condition::Always))),
        Reply::Bulk(b("v4"))
    );
    assert_eq!(get(&s, 200, "k"), Reply::Nil);
    assert_eq!(s.expired_count(200, 10), 0);
}

#[test]
fn other_writes_see_expired_values_as_absent_and_keep_live_expiries() {
    let mut s = Store::default();
    let pttl = |s: &Store, now: u64, key: &str| {
        s.read(Query {
            now,
            op: ReadOp::Ttl {
                key: b(key),
                millis: true,
            },
        })
    };
    for k in ["n", "a", "d", "e"] {
        s.write(at(0, set(k, "5", Expiry::At(100))));
    }
    // Live: INCR and APPEND change the value and keep the expiry.
    assert_eq!(s.write(at(10, WriteOp::IncrBy(b("n"), 2))), Reply::Int(7));
    assert_eq!(
        s.write(at(10, WriteOp::Append(b("a"), b("x")))),
        Reply::Int(2)
    );
    assert_eq!(pttl(&s, 10, "n"), Reply::Int(90));
    assert_eq!(pttl(&s, 10, "a"), Reply::Int(90));
    assert_eq!(get(&s, 10, "a"), Reply::Bulk(b("5x")));
    // Expired: each write acts as if the key were absent.
    assert_eq!(s.write(at(100, WriteOp::IncrBy(b("n"), 2))), Reply::Int(2));
    assert_eq!(
        s.write(at(100, WriteOp::Append(b("a"), b("y")))),
        Reply::Int(1)
    );
    assert_eq!(s.write(at(100, WriteOp::Del(vec![b("d")]))), Reply::Int(0));
    let expire = WriteOp::Expire {
        key: b("e"),
        at: Some(500),
    };
    assert_eq!(s.write(at(100, expire)), Reply::Int(0));
    assert_eq!(
        pttl(&s, 100, "n"),
        Reply::Int(-1),
        "a fresh key has no expiry"
    );
    assert_eq!(pttl(&s, 100, "e"), Reply::Int(-2));
    assert_eq!(get(&s, 100, "a"), Reply::Bulk(b("y")));
    assert_eq!(s.map.len(), 2, "the expired keys were dropped");
    assert_index_consistent(&s);
}

#[test]
fn a_snapshot_is_a_point_in_time_view() {
    let mut s = Store::default();
    for i in 0..1_000 {
        s.write(at(0, set(&format!("k{i}"), "old", Expiry::Clear)));
    }
    let then = s.clone();
    let snapshot = s.snapshot();
    // Writes after the handle was taken do not show in it.
    for i in 0..1_000 {
        s.write(at(1, set(&format!("k{i}"), "new", Expiry::Clear)));
    }
    s.write(at(1, WriteOp::Del(vec![b("k1")])));
    s.write(at(1, set("added", "v", Expiry::Clear)));
    let mut bytes = Vec::new();
    Store::write_snapshot(snapshot, &mut bytes).unwrap();
    let mut restored = Store::default();
    restored.restore(&mut bytes.as_slice()).unwrap();
    assert_eq!(restored, then);
    assert_eq!(get(&s, 1, "k2"), Reply::Bulk(b("new")));
}

#[test]
fn incr_refuses_non_numbers_and_overflow() {
    let mut s = Store::default();
    s.write(at(0, set("n", "x", Expiry::Clear)));
    assert!(matches!(
        s.write(at(0, WriteOp::IncrBy(b("n"), 1))),
        Reply::Fault(_)
    ));
    s.write(at(0, set("m", &i64::MAX.to_string(), Expiry::Clear)));
    assert!(matches!(
        s.write(at(0, WriteOp::IncrBy(b("m"), 1))),
        Reply::Fault(_)
    ));
}

#[test]
fn scan_returns_every_stable_key_once() {
    let mut s = Store::default();
    for i in 0..100 {
        s.write(at(0, set(&format!("key:{i}"), "v", Expiry::Clear)));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = 0;
    loop {
        let r = s.read(Query {
            now: 0,
            op: ReadOp::Scan {
                cursor,
                pattern: None,
                count: 7,
            },
        });
        let Reply::Array(parts) = r else { panic!() };
        let (Reply::Bulk(c), Reply::Array(keys)) = (&parts[0], &parts[1]) else {
            panic!()
        };
        for k in keys {
            let Reply::Bulk(k) = k else { panic!() };
            seen.insert(k.clone());
        }
        // Keys added during the scan must not break it.
        s.write(at(0, set(&format!("new:{cursor}"), "v", Expiry::Clear)));
        cursor = std::str::from_utf8(c).unwrap().parse().unwrap();
        if cursor == 0 {
            break;
        }
    }
    for i in 0..100 {
        assert!(seen.contains(&b(&format!("key:{i}"))), "key:{i} missing");
    }
}

/// The expiry index holds exactly the values that have an expiry time.
fn assert_index_consistent(s: &Store) {
    let expected: BTreeSet<(u64, Slot)> = s
        .map
        .iter()
        .filter_map(|(slot, v)| Some((v.expires_at?, slot.clone())))
        .collect();
    assert_eq!(s.expiring, expected);
}

#[test]
fn expiry_index_follows_every_write() {
    let mut s = Store::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let mut now = 1_000;
    for _ in 0..5_000 {
        now += next(5);
        let key = b(&format!("k{}", next(20)));
        let expiry = match next(3) {
            0 => Expiry::Clear,
            1 => Expiry::Keep,
            _ => Expiry::At(now + next(40) - 10),
        };
        let op = match next(9) {
            0..=2 => WriteOp::Set {
                key,
                value: b("7"),
                expiry,
                condition: [Condition::Always, Condition::IfAbsent, Condition::IfPresent]
                    [next(3) as usize],
                get: next(2) == 0,
            },
            3 => WriteOp::Del(vec![key]),
            4 => WriteOp::IncrBy(key, 1),
            5 => WriteOp::Append(key, b("1")),
            6 => WriteOp::MSet(vec![(key, b("1"))]),
            7 => WriteOp::Expire {
                key,
                at: (next(2) == 0).then(|| now + next(40) - 10),
            },
            _ => WriteOp::PurgeExpired { limit: 3 },
        };
        s.write(at(now, op));
        assert_index_consistent(&s);
        let due = s
            .map
            .iter()
            .map(|(_, v)| v)
            .filter(|v| !v.live(now))
            .count();
        assert_eq!(s.expired_count(now, usize::MAX), due);
        let size = s.read(Query {
            now,
            op: ReadOp::DbSize,
        });
        assert_eq!(
            size,
            Reply::Int(s.map.len() as i64),
            "expired keys count until swept"
        );
    }
    s.write(at(now + 100, WriteOp::PurgeExpired { limit: usize::MAX }));
    assert_eq!(s.expired_count(now + 100, usize::MAX), 0);
    assert!(s.map.iter().map(|(_, v)| v).all(|v| v.live(now + 100)));
    assert_index_consistent(&s);

    // A restored snapshot rebuilds the index.
    s.write(at(now, set("later", "v", Expiry::At(now + 1_000))));
    let mut bytes = Vec::new();
    Store::write_snapshot(s.snapshot(), &mut bytes).unwrap();
    let mut restored = Store::default();
    restored.restore(&mut bytes.as_slice()).unwrap();
    assert_index_consistent(&restored);
    assert_eq!(restored, s);
}

#[test]
fn append_grows_in_place_and_stops_at_the_limit() {
    let mut s = Store::default();
    let mut moves = 0;
    let mut last = std::ptr::null();
    let n = 100_000;
    for i in 0..n {
        let op = WriteOp::AppendAtMost {
            key: b("k"),
            suffix: b("0123456789"),
            max: 10 * n,
        };
        assert_eq!(s.write(at(0, op)), Reply::Int(10 * (i as i64 + 1)));
        let Data::Str(data) = &s.map.get(&Slot::of(&b("k"))).unwrap().data else {
            panic!("not a string")
        };
        if data.as_ptr() != last {
            moves += 1;
            last = data.as_ptr();
        }
    }
    // Copying on every append would move the value 100,000 times (5 × 10^10 bytes copied);
    // doubling moves it about log2(10^6) times.
    assert!(moves <= 40, "the value moved {moves} times");
    // A snapshot sharing the value costs one copy, and the snapshot keeps its contents.
    let snapshot = s.snapshot();
    let op = |suffix: &str, max| WriteOp::AppendAtMost {
        key: b("k"),
        suffix: b(suffix),
        max,
    };
    assert_eq!(
        s.write(at(0, op("x", 10 * n + 1))),
        Reply::Int(10 * n as i64 + 1)
    );
    let mut bytes = Vec::new();
    Store::write_snapshot(snapshot, &mut bytes).unwrap();
    let mut restored = Store::default();
    restored.restore(&mut bytes.as_slice()).unwrap();
    assert_eq!(
        restored.read(Query {
            now: 0,
            op: ReadOp::Strlen(b("k"))
        }),
        Reply::Int(10 * n as i64)
    );
    // Past the limit: refused, unchanged.
    assert_eq!(
        s.write(at(0, op("y", 10 * n + 1))),
        Reply::Fault(Error::TooLong)
    );
    assert_eq!(
        s.write(at(
            0,
            WriteOp::AppendAtMost {
                key: b("new"),
                suffix: b("abc"),
                max: 2
            }
        )),
        Reply::Fault(Error::TooLong)
    );
    assert_eq!(get(&s, 0, "new"), Reply::Nil);
    assert_eq!(
        s.read(Query {
            now: 0,
            op: ReadOp::Strlen(b("k"))
        }),
        Reply::Int(10 * n as i64 + 1)
    );
}

#[test]
fn setrange_pads_overwrites_and_stops_at_the_limit() {
    let mut s = Store::default();
    let op = |offset, value: &str, max| WriteOp::SetRange {
        key: b("k"),
        offset,
        value: b(value),
        max,
    };
    assert_eq!(s.write(at(0, op(3, "ab", 100))), Reply::Int(5));
    assert_eq!(
        get(&s, 0, "k"),
        Reply::Bulk(Bytes::from_static(b"\0\0\0ab"))
    );
    assert_eq!(s.write(at(0, op(0, "xyz", 100))), Reply::Int(5));
    assert_eq!(get(&s, 0, "k"), Reply::Bulk(b("xyzab")));
    assert_eq!(
        s.write(at(0, op(99, "12", 100))),
        Reply::Fault(Error::TooLong)
    );
    assert_eq!(
        s.write(at(0, op(u64::MAX, "1", u64::MAX))),
        Reply::Fault(Error::TooLong),
        "no overflow"
    );
    assert_eq!(get(&s, 0, "k"), Reply::Bulk(b("xyzab")), "unchanged");
    let empty = WriteOp::SetRange {
        key: b("none"),
        offset: 5,
        value: Bytes::new(),
        max: 100,
    };
    assert_eq!(s.write(at(0, empty)), Reply::Int(0));
    assert_eq!(get(&s, 0, "none"), Reply::Nil);
}

#[test]
fn globs() {
    assert!(glob_match(b"*", b"anything"));
    assert!(glob_match(b"h?llo", b"hello"));
    assert!(glob_match(b"h*llo", b"heeeello"));
    assert!(glob_match(b"h[ae]llo", b"hallo"));
    assert!(!glob_match(b"h[^e]llo", b"hello"));
    assert!(glob_match(b"h[a-b]llo", b"hbllo"));
    assert!(glob_match(b"a\\*b", b"a*b"));
    assert!(!glob_match(b"a\\*b", b"axb"));
    assert!(!glob_match(b"abc", b"abcd"));
    assert!(glob_match(b"user:*:name", b"user:42:name"));
}

#[test]
fn a_string_only_snapshot_of_the_previous_format_still_loads() {
    // Version 1: a sequence of (key, (value, expires_at)), no header.
    let v1: Vec<(Bytes, (Bytes, Option<u64>))> = vec![
        (b("plain"), (b("1"), None)),
        (b("timed"), (b("2"), Some(5_000))),
    ];
    let mut bytes = Vec::new();
    raft_core::write_serde(&v1, &mut bytes).unwrap();
    let mut s = Store::default();
    s.restore(&mut bytes.as_slice()).unwrap();
    assert_eq!(get(&s, 0, "plain"), Reply::Bulk(b("1")));
    assert_eq!(get(&s, 4_999, "timed"), Reply::Bulk(b("2")));
    assert_eq!(s.expired_count(5_000, 10), 1, "the expiry index is rebuilt");
    // An empty version 1 snapshot is a single byte.
    let mut empty = Vec::new();
    raft_core::write_serde(&Vec::<(Bytes, (Bytes, Option<u64>))>::new(), &mut empty).unwrap();
    assert_eq!(empty.len(), 1);
    let mut s = Store::default();
    s.restore(&mut empty.as_slice()).unwrap();
    assert_eq!(s, Store::default());
}

#[test]
fn a_snapshot_of_an_unknown_version_is_refused_by_name() {
    let mut s = Store::default();
    s.write(at(0, set("k", "v", Expiry::Clear)));
    let mut bytes = Vec::new();
    Store::write_snapshot(s.snapshot(), &mut bytes).unwrap();
    let version_at = bytes.iter().position(|b| *b == snapshot::FORMAT).unwrap();
    bytes[version_at] = 7;
    let err = Store::default().restore(&mut bytes.as_slice()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("format version 7"), "{err}");
}

#[test]
fn every_type_and_the_watch_versions_survive_a_snapshot() {
    let mut s = Store::default();
    s.write(at(0, set("str", "v", Expiry::At(9_000))));
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs: vec![(b("f"), b("1"))],
            nx: false,
        },
    ));
    s.write(at(
        0,
        WriteOp::Push {
            key: b("l"),
            values: vec![b("a"), b("b")],
            left: false,
            existing: false,
        },
    ));
    s.write(at(
        0,
        WriteOp::SAdd {
            key: b("s"),
            members: vec![b("x")],
        },
    ));
    s.write(at(0, WriteOp::Del(vec![b("str")])));
    let mut bytes = Vec::new();
    Store::write_snapshot(s.snapshot(), &mut bytes).unwrap();
    let mut restored = Store::default();
    restored.restore(&mut bytes.as_slice()).unwrap();
    assert_eq!(restored, s, "values, versions and write counters");
    assert_index_consistent(&restored);
}

fn versions(s: &Store, keys: &[&str]) -> Vec<Watched> {
    versions_at(s, 0, keys)
}

/// What a WATCH of `keys` at `now` records.
fn versions_at(s: &Store, now: u64, keys: &[&str]) -> Vec<Watched> {
    let Reply::Array(v) = s.read(Query {
        now,
        op: ReadOp::Versions(keys.iter().map(|k| b(k)).collect()),
    }) else {
        panic!()
    };
    let n = |r: &Reply| match r {
        Reply::Int(n) => *n as u64,
        _ => panic!(),
    };
    keys.iter()
        .zip(&v[1..])
        .map(|(k, r)| Watched {
            key: b(k),
            version: n(r),
            seen: n(&v[0]),
        })
        .collect()
}

fn exec(s: &mut Store, watched: Vec<Watched>, ops: Vec<WriteOp>) -> Reply {
    s.write(at(
        0,
        WriteOp::Exec {
            watched,
            ops: ops.into_iter().map(Queued::Write).collect(),
        },
    ))
}

#[test]
fn random_reads_in_a_transaction_answer_alike_on_every_replica() {
    // Two replicas of one state apply the same transaction.
    let fields: Vec<(Bytes, Bytes)> = (0..200)
        .map(|i| (Bytes::from(format!("f{i}")), b("v")))
        .collect();
    let replica = || {
        let mut s = Store::default();
        s.write(at(
            0,
            WriteOp::HSet {
                key: b("h"),
                pairs: fields.clone(),
                nx: false,
            },
        ));
        for i in 0..50 {
            s.write(at(0, set(&format!("k{i}"), "v", Expiry::Clear)));
        }
        s
    };
    let hrandfield = |count| {
        Queued::Read(ReadOp::HRandField {
            key: b("h"),
            count,
            with_values: true,
        })
    };
    let tx = || {
        at(
            7,
            WriteOp::Exec {
                watched: Vec::new(),
                ops: vec![
                    hrandfield(None),
                    hrandfield(Some(5)),
                    hrandfield(Some(-30)),
                    Queued::Read(ReadOp::RandomKey),
                ],
            },
        )
    };
    let (mut a, mut b_) = (replica(), replica());
    let first = a.write(tx());
    assert_eq!(first, b_.write(tx()), "the same reply on both replicas");
    // Yet they are random: the next transaction draws other fields.
    assert_ne!(first, a.write(tx()));
    // A distinct count gives distinct fields.
    let Reply::Array(replies) = first else {
        panic!("{first:?}")
    };
    let Reply::Pairs(five) = &replies[1] else {
        panic!("{:?}", replies[1])
    };
    let names: BTreeSet<&Bytes> = five
        .iter()
        .filter_map(|(f, _)| match f {
            Reply::Bulk(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(names.len(), 5);
}

#[test]
fn exec_applies_every_command_unless_a_watched_key_changed() {
    let mut s = Store::default();
    s.write(at(0, set("a", "1", Expiry::Clear)));
    s.write(at(0, set("other", "1", Expiry::Clear)));
    // A runtime error answers only its own command.
    let w = versions(&s, &["a", "absent"]);
    let r = exec(
        &mut s,
        w,
        vec![
            WriteOp::IncrBy(b("a"), 1),
            WriteOp::HDel {
                key: b("a"),
                fields: vec![b("f")],
            },
            WriteOp::IncrBy(b("a"), 1),
        ],
    );
    assert_eq!(
        r,
        Reply::Array(vec![
            Reply::Int(2),
            Reply::Fault(Error::WrongType),
            Reply::Int(3)
        ])
    );
    // Unrelated writes do not abort; a write to a watched key does.
    let w = versions(&s, &["a", "absent"]);
    s.write(at(0, WriteOp::Del(vec![b("other")])));
    assert!(
        matches!(exec(&mut s, w.clone(), vec![]), Reply::Array(_)),
        "keys changed before the watch do not count"
    );
    s.write(at(0, WriteOp::IncrBy(b("a"), 1)));
    assert_eq!(
        exec(&mut s, w, vec![WriteOp::Del(vec![b("a")])]),
        Reply::NilArray
    );
    assert_eq!(get(&s, 0, "a"), Reply::Bulk(b("4")), "nothing applied");
    // An absent key created and removed again since the watch aborts too.
    let w = versions(&s, &["absent"]);
    s.write(at(0, set("absent", "x", Expiry::Clear)));
    s.write(at(0, WriteOp::Del(vec![b("absent")])));
    assert_eq!(exec(&mut s, w, vec![]), Reply::NilArray);
    // FLUSHALL aborts a watch of an existing key, not of an absent one.
    let present = versions(&s, &["a"]);
    let absent = versions(&s, &["nothing"]);
    s.write(at(0, WriteOp::FlushDb));
    assert_eq!(exec(&mut s, present, vec![]), Reply::NilArray);
    assert_eq!(exec(&mut s, absent, vec![]), Reply::Array(vec![]));
}

#[test]
fn a_watched_absent_key_created_and_expired_since_aborts_the_transaction() {
    // The compare-and-set of a lease: a key absent at WATCH, set with a TTL by another client,
    // expired (not yet swept) by EXEC. Redis aborts: the key was touched.
    let mut s = Store::default();
    let w = versions_at(&s, 5, &["lease"]);
    s.write(at(10, set("lease", "theirs", Expiry::At(50))));
    let exec_at = |s: &mut Store, now, watched| {
        s.write(at(
            now,
            WriteOp::ExecStrict {
                watched,
                ops: vec![Queued::Write(set("lease", "mine", Expiry::Clear))],
            },
        ))
    };
    // Entries of the older form apply as they always did, on every replica.
    let mut older = s.clone();
    let older_exec = older.write(at(
        100,
        WriteOp::ExecBounded {
            watched: w.clone(),
            ops: vec![Queued::Write(set("lease", "mine", Expiry::Clear))],
        },
    ));
    assert!(matches!(older_exec, Reply::Array(_)), "{older_exec:?}");
    assert_eq!(exec_at(&mut s, 100, w), Reply::NilArray);
    assert_eq!(get(&s, 100, "lease"), Reply::Nil, "nothing applied");
    // A key that expired before the WATCH is not a change.
    let w = versions_at(&s, 100, &["lease"]);
    assert!(matches!(exec_at(&mut s, 100, w), Reply::Array(_)));
    assert_eq!(get(&s, 100, "lease"), Reply::Bulk(b("mine")));
}

#[test]
fn type_mismatches_answer_wrongtype_and_change_nothing() {
    let mut s = Store::default();
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs: vec![(b("f"), b("1"))],
            nx: false,
        },
    ));
    s.write(at(0, set("str", "v", Expiry::Clear)));
    let wrong = Reply::Fault(Error::WrongType);
    for op in [
        WriteOp::IncrBy(b("h"), 1),
        WriteOp::Append(b("h"), b("x")),
        WriteOp::SetBit {
            key: b("h"),
            offset: 1,
            bit: true,
            max: 100,
        },
        WriteOp::HIncrBy {
            key: b("str"),
            field: b("f"),
            by: 1,
        },
        WriteOp::Push {
            key: b("str"),
            values: vec![b("x")],
            left: true,
            existing: false,
        },
        WriteOp::SAdd {
            key: b("h"),
            members: vec![b("x")],
        },
        WriteOp::GetDel(b("h")),
    ] {
        assert_eq!(s.write(at(0, op.clone())), wrong, "{op:?}");
    }
    assert_eq!(get(&s, 0, "h"), wrong);
    assert_eq!(
        s.read(Query {
            now: 0,
            op: ReadOp::HGet {
                key: b("h"),
                field: b("f")
            }
        }),
        Reply::Bulk(b("1"))
    );
    // SET overwrites whatever the key held.
    s.write(at(0, set("h", "now a string", Expiry::Clear)));
    assert_eq!(get(&s, 0, "h"), Reply::Bulk(b("now a string")));
}

#[test]
fn a_batch_runs_under_the_space_alarm_only_if_it_frees_space() {
    let batch = |ops: Vec<Queued>| {
        at(
            1,
            WriteOp::Exec {
                watched: Vec::new(),
                ops,
            },
        )
    };
    let freeing = batch(vec![
        Queued::Write(WriteOp::Del(vec![b("a")])),
        Queued::Read(ReadOp::Get(b("a"))),
        Queued::Write(WriteOp::GetDel(b("b"))),
    ]);
    assert!(Store::allowed_in_space_alarm(&freeing));
    let growing = batch(vec![
        Queued::Write(WriteOp::Del(vec![b("a")])),
        Queued::Write(set("a", "1", Expiry::Keep)),
    ]);
    assert!(!Store::allowed_in_space_alarm(&growing));
    assert!(!Store::allowed_in_space_alarm(&at(
        1,
        set("a", "1", Expiry::Keep)
    )));
}

#[test]
fn a_pipelined_batch_applies_in_order_and_an_error_answers_only_its_command() {
    let mut s = Store::default();
    let r = s.apply(at(
        1,
        WriteOp::Exec {
            watched: Vec::new(),
            ops: vec![
                Queued::Write(set("k", "v", Expiry::Keep)),
                Queued::Write(WriteOp::IncrBy(b("k"), 1)),
                Queued::Write(WriteOp::Append(b("k"), b("w"))),
                Queued::Read(ReadOp::Get(b("k"))),
            ],
        },
    ));
    let Reply::Array(replies) = r else {
        panic!("{r:?}")
    };
    assert_eq!(replies[0], Reply::Ok);
    assert!(replies[1].is_error(), "{:?}", replies[1]);
    assert_eq!(replies[2], Reply::Int(2));
    assert_eq!(replies[3], Reply::Bulk(b("vw")));
}

fn read(s: &Store, op: ReadOp) -> Reply {
    s.read(Query { now: 0, op })
}

fn bulks(items: &[&str]) -> Reply {
    Reply::Array(items.iter().map(|i| Reply::Bulk(b(i))).collect())
}

#[test]
fn lrange_is_empty_when_the_end_falls_before_the_list() {
    let mut s = Store::default();
    s.write(at(
        0,
        WriteOp::Push {
            key: b("l"),
            values: vec![b("a"), b("b"), b("c")],
            left: false,
            existing: false,
        },
    ));
    let lrange = |start, end| {
        read(
            &s,
            ReadOp::LRange {
                key: b("l"),
                start,
                end,
            },
        )
    };
    // As in Redis: only the start is clamped to the list; an end before it is an empty range.
    assert_eq!(lrange(0, -4), bulks(&[]));
    assert_eq!(lrange(-100, -4), bulks(&[]));
    assert_eq!(lrange(-100, -100), bulks(&[]));
    assert_eq!(lrange(-100, -3), bulks(&["a"]));
    assert_eq!(lrange(-3, -3), bulks(&["a"]));
    assert_eq!(lrange(-100, 100), bulks(&["a", "b", "c"]));
    assert_eq!(lrange(1, -1), bulks(&["b", "c"]));
    assert_eq!(lrange(2, 1), bulks(&[]));
    assert_eq!(lrange(3, 10), bulks(&[]));
    assert_eq!(lrange(i64::MIN, i64::MIN), bulks(&[]));
    assert_eq!(lrange(i64::MIN, i64::MAX), bulks(&["a", "b", "c"]));
}

#[test]
fn getrange_and_bitcount_follow_redis_7s_string_ranges() {
    let mut s = Store::default();
    s.write(at(0, set("s", "hello", Expiry::Clear)));
    let getrange = |start, end| {
        read(
            &s,
            ReadOp::GetRange {
                key: b("s"),
                start,
                end,
            },
        )
    };
    let text = |t: &str| Reply::Bulk(b(t));
    // Redis 7 clamps an end before the string to its first byte (Redis 8 answers "" there)...
    assert_eq!(getrange(0, -100), text("h"));
    assert_eq!(getrange(-10, -8), text("h"));
    assert_eq!(getrange(-100, -100), text("h"));
    assert_eq!(getrange(-5, -5), text("h"));
    // ...but two negative ends with the start after the end are empty, wherever they fall.
    assert_eq!(getrange(-5, -6), text(""));
    assert_eq!(getrange(-100, -101), text(""));
    assert_eq!(getrange(-1, -100), text(""));
    assert_eq!(getrange(1, -100), text(""));
    assert_eq!(getrange(-3, -1), text("llo"));
    assert_eq!(getrange(-100, 100), text("hello"));
    assert_eq!(getrange(5, 10), text(""));
    assert_eq!(getrange(i64::MIN, i64::MAX), text("hello"));

    let bitcount = |start, end, bits| {
        read(
            &s,
            ReadOp::BitCount {
                key: b("s"),
                range: Some((start, end)),
                bits,
            },
        )
    };
    // "h" is 0x68, three bits set; "hello" has 21.
    assert_eq!(bitcount(-10, -20, false), Reply::Int(0));
    assert_eq!(bitcount(-6, i64::MIN, false), Reply::Int(0));
    assert_eq!(bitcount(-5, -6, false), Reply::Int(0));
    assert_eq!(bitcount(-10, -8, false), Reply::Int(3));
    assert_eq!(bitcount(0, -100, false), Reply::Int(3));
    assert_eq!(bitcount(-100, 100, false), Reply::Int(21));
    assert_eq!(bitcount(-40, -41, true), Reply::Int(0));
    assert_eq!(bitcount(-100, -99, true), Reply::Int(0));
    assert_eq!(bitcount(-100, -39, true), Reply::Int(1));
    assert_eq!(bitcount(0, -1, true), Reply::Int(21));
}

/// The write a client's command becomes.
fn command(line: &str) -> WriteOp {
    let argv: Vec<Bytes> = line.split_whitespace().map(b).collect();
    match crate::commands::parse(&argv, 0) {
        crate::commands::Action::Write { op, .. } => op,
        other => panic!("{line}: {other:?}"),
    }
}

#[test]
fn counters_read_a_stored_integer_as_redis_does() {
    let mut s = Store::default();
    let not_int = Reply::Fault(Error::NotInteger);
    let hash_not_int = Reply::Fault(Error::HashNotInteger);
    for stored in ["007", "+5", "-0", "00", " 1", "1 ", ""] {
        s.write(at(0, set("n", stored, Expiry::Clear)));
        s.write(at(
            0,
            WriteOp::HSet {
                key: b("h"),
                pairs: vec![(b("f"), b(stored))],
                nx: false,
            },
        ));
        for line in ["INCR n", "DECR n", "INCRBY n 1", "DECRBY n 1"] {
            assert_eq!(
                s.write(at(0, command(line))),
                not_int,
                "{line} on {stored:?}"
            );
        }
        assert_eq!(get(&s, 0, "n"), Reply::Bulk(b(stored)));
        assert_eq!(
            s.write(at(0, command("HINCRBY h f 1"))),
            hash_not_int,
            "{stored:?}"
        );
    }
    s.write(at(0, set("n", "-9223372036854775808", Expiry::Clear)));
    assert_eq!(s.write(at(0, command("INCR n"))), Reply::Int(i64::MIN + 1));
    s.write(at(0, set("n", "0", Expiry::Clear)));
    assert_eq!(s.write(at(0, command("DECR n"))), Reply::Int(-1));
    // Entries logged by earlier versions keep their meaning: they read such values leniently.
    s.write(at(0, set("n", "007", Expiry::Clear)));
    assert_eq!(s.write(at(0, WriteOp::IncrBy(b("n"), 1))), Reply::Int(8));
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs: vec![(b("f"), b("+5"))],
            nx: false,
        },
    ));
    let old_hincr = WriteOp::HIncrBy {
        key: b("h"),
        field: b("f"),
        by: 1,
    };
    assert_eq!(s.write(at(0, old_hincr)), Reply::Int(6));
}

#[test]
fn ttl_and_expiretime_round_to_the_nearest_second_as_redis_does() {
    let mut s = Store::default();
    let now = 1_000_000;
    for (key, when) in [
        ("a", now + 1_400),
        ("b", now + 400),
        ("c", now + 1_500),
        ("d", now + 1),
    ] {
        s.write(at(now, set(key, "v", Expiry::At(when))));
    }
    s.write(at(now, set("e", "v", Expiry::At(99_999_999_999_999))));
    let ask = |key: &str, op: fn(Bytes) -> ReadOp| {
        s.read(Query {
            now,
            op: op(b(key)),
        })
    };
    let ttl = |key: Bytes| ReadOp::Ttl { key, millis: false };
    let pttl = |key: Bytes| ReadOp::Ttl { key, millis: true };
    let expiretime = |key: Bytes| ReadOp::ExpireTime { key, millis: false };
    let pexpiretime = |key: Bytes| ReadOp::ExpireTime { key, millis: true };
    assert_eq!(ask("a", ttl), Reply::Int(1));
    assert_eq!(ask("b", ttl), Reply::Int(0));
    assert_eq!(ask("c", ttl), Reply::Int(2));
    assert_eq!(ask("d", ttl), Reply::Int(0));
    assert_eq!(ask("a", pttl), Reply::Int(1_400));
    assert_eq!(ask("e", expiretime), Reply::Int(100_000_000_000));
    assert_eq!(ask("a", expiretime), Reply::Int(1_001));
    assert_eq!(ask("b", expiretime), Reply::Int(1_000));
    assert_eq!(ask("e", pexpiretime), Reply::Int(99_999_999_999_999));
    assert_eq!(ask("none", ttl), Reply::Int(-2));
}

/// One `HSCAN` step: the next cursor and the fields returned.
fn hscan(s: &Store, key: &str, cursor: u64, count: usize) -> (u64, Vec<Bytes>) {
    let Reply::Array(parts) = read(
        s,
        ReadOp::HScan {
            key: b(key),
            cursor,
            pattern: None,
            count,
            novalues: true,
        },
    ) else {
        panic!("not an array")
    };
    let (Reply::Bulk(next), Reply::Array(fields)) = (&parts[0], &parts[1]) else {
        panic!("not a cursor and fields")
    };
    let fields = fields
        .iter()
        .map(|f| match f {
            Reply::Bulk(f) => f.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    (std::str::from_utf8(next).unwrap().parse().unwrap(), fields)
}

fn hset(key: &str, fields: impl IntoIterator<Item = String>) -> WriteOp {
    WriteOp::HSet {
        key: b(key),
        pairs: fields.into_iter().map(|f| (b(&f), b("v"))).collect(),
        nx: false,
    }
}

#[test]
fn hscan_returns_every_field_present_for_the_whole_scan() {
    let mut s = Store::default();
    s.write(at(0, hset("h", (0..300).map(|i| format!("f{i:03}")))));
    let mut seen = BTreeSet::new();
    let mut deleted = Vec::new();
    let (mut cursor, mut steps) = (0, 0);
    loop {
        let (next, fields) = hscan(&s, "h", cursor, 20);
        steps += 1;
        assert!(steps <= 300, "the scan does not end");
        // Fields come and go between steps: the first step's fields are deleted, and each
        // step adds one.
        if steps == 1 {
            deleted = fields[..10].to_vec();
            s.write(at(
                0,
                WriteOp::HDel {
                    key: b("h"),
                    fields: deleted.clone(),
                },
            ));
        }
        s.write(at(0, hset("h", [format!("new{steps}")])));
        seen.extend(fields);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let missing: Vec<String> = (0..300)
        .map(|i| b(&format!("f{i:03}")))
        .filter(|f| !deleted.contains(f) && !seen.contains(f))
        .map(|f| String::from_utf8_lossy(&f).into_owned())
        .collect();
    assert!(missing.is_empty(), "never returned: {missing:?}");
}

#[test]
fn hscan_ends_and_answers_an_empty_step_past_the_last_cursor() {
    let mut s = Store::default();
    s.write(at(0, hset("h", (0..50).map(|i| format!("field:{i}")))));
    let mut all = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, fields) = hscan(&s, "h", cursor, 7);
        assert!(fields.len() <= 7);
        all.extend(fields);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 50);
    assert_eq!(hscan(&s, "h", u64::MAX, 10), (0, Vec::new()));
    assert_eq!(hscan(&s, "nope", 0, 10), (0, Vec::new()));
}

#[test]
fn a_hash_is_stored_as_the_plain_map_earlier_versions_wrote() {
    let earlier: BTreeMap<Bytes, Bytes> = (0..100)
        .map(|i| (b(&format!("f{i}")), b(&i.to_string())))
        .collect();
    let mut bytes = Vec::new();
    raft_core::write_serde(&earlier, &mut bytes).unwrap();
    let read: HashMap = raft_core::read_serde(&mut bytes.as_slice()).unwrap();
    assert_eq!(read.len(), earlier.len());
    for (f, v) in &earlier {
        assert_eq!(read.get(f), Some(v));
    }
    let mut written = Vec::new();
    raft_core::write_serde(&read, &mut written).unwrap();
    assert_eq!(written.len(), bytes.len());
    let back: BTreeMap<Bytes, Bytes> = raft_core::read_serde(&mut written.as_slice()).unwrap();
    assert_eq!(back, earlier);
}

#[test]
fn malformed_glob_classes_match_as_in_redis() {
    let keys = [
        "a", "b", "^", "-", "]", "[", "\\", "[a", "ab", "a]", "]a", "a[", "A", "_", "z",
    ];
    let everyone = ["-", "A", "[", "\\", "]", "^", "_", "a", "b", "z"];
    // Each pattern with the keys Redis 7.0 answers KEYS with, in the order of `keys`.
    let cases: &[(&str, &[&str])] = &[
        // An unterminated class runs to the end of the pattern.
        ("[a", &["a"]),
        ("[", &[]),
        ("a[", &[]),
        ("*[", &[]),
        ("?[", &[]),
        ("[^", &everyone),
        ("[^a", &["b", "^", "-", "]", "[", "\\", "A", "_", "z"]),
        ("*[a", &["a", "[a", "]a"]),
        ("[a-", &["a", "-"]),
        ("a[b-", &["ab"]),
        ("[\\", &["\\"]),
        ("[a\\", &["a", "\\"]),
        // A range may end at ']', which then does not close the class.
        ("[a-]", &["a", "^", "]", "_"]),
        // An escaped ']' does not close the class either.
        ("[\\]", &["]"]),
        // Well-formed classes, unchanged.
        ("[]", &[]),
        ("[]a]", &[]),
        ("[^]", &everyone),
        ("[z-a]", &["a", "b", "z"]),
        ("[-a]", &["a", "-"]),
        ("[a-c-e]", &["a", "b", "-"]),
        ("[[]", &["["]),
    ];
    for (pattern, expected) in cases {
        let matched: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| glob_match(pattern.as_bytes(), k.as_bytes()))
            .collect();
        let want: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| expected.contains(k))
            .collect();
        assert_eq!(matched, want, "KEYS {pattern}");
    }
}

/// `SPOP` as every earlier version applied it: each draw an index among the members left,
/// found by walking the set. The reference the faster draw must agree with exactly.
fn spop_as_before(set: &mut BTreeSet<Bytes>, count: u64, mut seed: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    while (out.len() as u64) < count && !set.is_empty() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let i = ((seed >> 33) % set.len() as u64) as usize;
        if let Some(m) = set.iter().nth(i).cloned() {
            set.remove(&m);
            out.push(m);
        }
    }
    out
}

fn members(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("m{i:07}"))).collect()
}

fn smembers(s: &Store, key: &str) -> BTreeSet<Bytes> {
    match s.read(Query {
        now: 0,
        op: ReadOp::SMembers(b(key)),
    }) {
        Reply::Array(items) => items
            .into_iter()
            .map(|r| match r {
                Reply::Bulk(m) => m,
                other => panic!("not a member: {other:?}"),
            })
            .collect(),
        other => panic!("not an array: {other:?}"),
    }
}

#[test]
fn spop_removes_and_replies_with_exactly_the_members_earlier_versions_did() {
    // Replicas of different versions apply the same entries during a rolling upgrade, and a
    // restarted node replays its log: the draw must not change.
    for len in [1usize, 2, 3, 5, 8, 64, 333, 1000] {
        let counts = [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(len as u64 / 2),
            Some(len as u64 - 1),
            Some(len as u64),
            Some(len as u64 + 7),
            Some(u64::MAX),
        ];
        for (round, count) in counts.into_iter().enumerate() {
            let mut s = Store::default();
            // Vary the write's number and time, which seed the draw.
            for i in 0..round {
                s.write(at(0, set(&format!("pad{i}"), "v", Expiry::Clear)));
            }
            let all = members(len);
            s.write(at(
                0,
                WriteOp::SAdd {
                    key: b("s"),
                    members: all.clone(),
                },
            ));
            let now = 1_700_000_000_000 + (len * 31 + round) as u64;
            let reply = s.write(at(now, WriteOp::SPop { key: b("s"), count }));
            let seed = s.writes.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now;
            let mut left: BTreeSet<Bytes> = all.into_iter().collect();
            let popped = spop_as_before(&mut left, count.unwrap_or(1), seed);
            let want = match count {
                None => popped.into_iter().next().map_or(Reply::Nil, Reply::Bulk),
                Some(_) => Reply::Array(popped.into_iter().map(Reply::Bulk).collect()),
            };
            assert_eq!(reply, want, "SPOP of {len} members, count {count:?}");
            assert_eq!(smembers(&s, "s"), left, "left of {len}, count {count:?}");
        }
    }
}

#[test]
fn spop_draws_the_positions_earlier_versions_did() {
    for len in [0usize, 1, 2, 7, 16, 17, 100, 257, 1024, 3000] {
        for (count, seed) in [(1, 0), (3, 1), (len as u64 / 3, 42), (len as u64, u64::MAX)] {
            let mut set: BTreeSet<Bytes> = members(len).into_iter().collect();
            let all: Vec<Bytes> = set.iter().cloned().collect();
            let want = spop_as_before(&mut set, count, seed);
            let got: Vec<Bytes> = super::set::draw_positions(len, count, seed)
                .into_iter()
                .map(|p| all[p].clone())
                .collect();
            assert_eq!(got, want, "{len} members, count {count}, seed {seed}");
        }
    }
}

#[test]
fn spop_of_most_of_a_large_set_walks_it_once() {
    // Earlier versions walked the set for every member popped: popping 200,000 members in two
    // halves took ~10^10 steps; now one walk of the set and O(log n) a draw.
    const N: usize = 200_000;
    let mut s = Store::default();
    let all = members(N);
    s.write(at(
        0,
        WriteOp::SAdd {
            key: b("s"),
            members: all.clone(),
        },
    ));
    let mut spop = |now: u64, count: u64| -> Vec<Bytes> {
        let reply = s.write(at(
            now,
            WriteOp::SPop {
                key: b("s"),
                count: Some(count),
            },
        ));
        let Reply::Array(items) = reply else {
            panic!("not an array: {reply:?}");
        };
        items
            .into_iter()
            .map(|r| match r {
                Reply::Bulk(m) => m,
                other => panic!("not a member: {other:?}"),
            })
            .collect()
    };
    let half = spop(1, N as u64 / 2);
    assert_eq!(half.len(), N / 2);
    let rest = spop(2, u64::MAX);
    assert_eq!(
        rest.len(),
        N - N / 2,
        "the rest, however many were asked for"
    );
    // Every member exactly once (`all` is sorted, and so distinct).
    let mut popped = half;
    popped.extend(rest);
    popped.sort_unstable();
    assert!(popped == all, "each member popped once");
    let card = s.read(Query {
        now: 2,
        op: ReadOp::SCard(b("s")),
    });
    assert_eq!(card, Reply::Int(0));
}

#[test]
fn hrandfield_with_a_large_negative_count_walks_the_hash_once() {
    // Earlier versions walked the hash for every field drawn: the most draws a client may ask
    // for (2^20) from 20,000 fields took ~10^10 steps; now one walk, then O(1) a draw.
    const N: usize = 20_000;
    const DRAWS: i64 = 1 << 20;
    let mut s = Store::default();
    let pairs: Vec<(Bytes, Bytes)> = (0..N)
        .map(|i| (Bytes::from(format!("f{i}")), Bytes::from(format!("v{i}"))))
        .collect();
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs,
            nx: false,
        },
    ));
    let ask = |count: i64, with_values: bool| {
        s.read(Query {
            now: 0,
            op: ReadOp::HRandField {
                key: b("h"),
                count: Some(count),
                with_values,
            },
        })
    };
    let number = |b: &Bytes, prefix: u8| -> usize {
        assert_eq!(b.first(), Some(&prefix), "{b:?}");
        std::str::from_utf8(&b[1..])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX)
    };
    match ask(-DRAWS, true) {
        Reply::Pairs(pairs) => {
            assert_eq!(pairs.len(), DRAWS as usize);
            let mut seen = vec![false; N];
            for (f, v) in pairs {
                let (Reply::Bulk(f), Reply::Bulk(v)) = (f, v) else {
                    panic!("not a field and value");
                };
                let i = number(&f, b'f');
                assert!(i < N, "a field of the hash: {f:?}");
                assert_eq!(number(&v, b'v'), i, "with its value");
                seen[i] = true;
            }
            // 2^20 uniform draws from 20,000 leave a field out with probability e^-52.
            assert!(seen.iter().all(|s| *s), "drawn from all of it");
        }
        other => panic!("not pairs: {other:?}"),
    }
    assert!(matches!(ask(-3, false), Reply::Array(fields) if fields.len() == 3));
    // A positive count: distinct fields, at most all of them.
    match ask(N as i64 * 2, false) {
        Reply::Array(fields) => {
            let distinct: BTreeSet<Bytes> = fields
                .into_iter()
                .map(|f| match f {
                    Reply::Bulk(f) => f,
                    other => panic!("not a field: {other:?}"),
                })
                .collect();
            assert_eq!(distinct.len(), N);
        }
        other => panic!("not an array: {other:?}"),
    }
}

/// Whether `pattern` matches `s`, compiled for this one string.
fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let glob = Glob::new(pattern);
    let matched = glob.matches(s);
    assert_eq!(
        glob.matches_bounded(s),
        Ok(matched),
        "bounded and not agree"
    );
    matched
}

/// Glob matching as earlier versions did it: the reference for what patterns mean.
fn glob_as_before(pattern: &[u8], s: &[u8]) -> bool {
    fn class(p: &[u8], c: u8) -> (bool, usize) {
        let negate = p.first() == Some(&b'^');
        let mut i = usize::from(negate);
        let mut matched = false;
        loop {
            match p.get(i) {
                None => return (matched != negate, i),
                Some(b'\\') if i + 1 < p.len() => {
                    matched |= p[i + 1] == c;
                    i += 2;
                }
                Some(b']') => return (matched != negate, i + 1),
                Some(&from) if i + 2 < p.len() && p[i + 1] == b'-' => {
                    let to = p[i + 2];
                    matched |= (from.min(to)..=from.max(to)).contains(&c);
                    i += 3;
                }
                Some(&x) => {
                    matched |= x == c;
                    i += 1;
                }
            }
        }
    }
    let (mut p, mut t) = (0, 0);
    let (mut star_p, mut star_t) = (None::<usize>, 0);
    while t < s.len() {
        let advanced = match pattern.get(p) {
            Some(b'*') => {
                star_p = Some(p);
                star_t = t;
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                true
            }
            Some(b'[') => match class(&pattern[p + 1..], s[t]) {
                (true, used) => {
                    p += 1 + used;
                    true
                }
                (false, _) => false,
            },
            Some(b'\\') if p + 1 < pattern.len() => {
                let ok = pattern[p + 1] == s[t];
                p += 2;
                ok
            }
            Some(c) => {
                let ok = *c == s[t];
                p += 1;
                ok
            }
            None => false,
        };
        if advanced {
            t += 1;
        } else if let Some(sp) = star_p {
            p = sp + 1;
            star_t += 1;
            t = star_t;
        } else {
            return false;
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

/// Every string of up to `max` bytes from `alphabet`.
fn strings_over(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut all = vec![Vec::new()];
    let mut last = vec![Vec::new()];
    for _ in 0..max {
        last = last
            .iter()
            .flat_map(|s: &Vec<u8>| {
                alphabet.iter().map(move |c| {
                    let mut s = s.clone();
                    s.push(*c);
                    s
                })
            })
            .collect();
        all.extend(last.iter().cloned());
    }
    all
}

/// Checks that `pattern` matches `key` exactly as the earlier matcher decides.
fn assert_matches_as_before(pattern: &[u8], key: &[u8]) {
    assert_eq!(
        glob_match(pattern, key),
        glob_as_before(pattern, key),
        "pattern {:?}, key {:?}",
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(key)
    );
}

#[test]
fn globs_match_exactly_as_before() {
    // Every pattern of up to 5 bytes from the bytes that mean something in one, against every
    // key of up to 3 bytes from those a class or escape can name.
    let patterns = strings_over(b"a*?[]^-\\", 5);
    let keys = strings_over(b"ab]-\\", 3);
    for p in &patterns {
        for k in &keys {
            assert_matches_as_before(p, k);
        }
    }
    // Longer ones, drawn from a fixed sequence.
    let mut next = draws(0x2545_f491_4f6c_dd1d);
    let pattern_bytes = b"ab*?[]^-\\z";
    for _ in 0..50_000 {
        let p: Vec<u8> = (0..next(14))
            .map(|_| pattern_bytes[next(pattern_bytes.len() as u64) as usize])
            .collect();
        let k: Vec<u8> = (0..next(10)).map(|_| b"abz]-"[next(5) as usize]).collect();
        assert_matches_as_before(&p, &k);
    }
}

/// The work this thread's globs have done so far (see `glob::GLOB_WORK`).
fn glob_work_so_far() -> u64 {
    super::glob::GLOB_WORK.with(|c| c.get())
}

/// Compiles `pattern`, asserting that took at most a step for each of its bytes and that what
/// it keeps takes at most three bytes for each.
fn compiled(pattern: &[u8]) -> Glob {
    let before = glob_work_so_far();
    let glob = Glob::new(pattern);
    let work = glob_work_so_far() - before;
    assert!(
        work <= pattern.len() as u64 + 1,
        "compiling a pattern of {} bytes took {work}",
        pattern.len()
    );
    assert!(
        glob.heap_bytes() <= 3 * pattern.len(),
        "a pattern of {} bytes compiled into {}",
        pattern.len(),
        glob.heap_bytes()
    );
    glob
}

/// Whether the compiled `glob` matches `s`, and the work that took.
fn glob_work(glob: &Glob, s: &[u8]) -> (bool, u64) {
    let before = glob_work_so_far();
    let matched = glob.matches(s);
    (matched, glob_work_so_far() - before)
}

#[test]
fn a_long_pattern_is_read_once_however_far_a_key_makes_it_backtrack() {
    // Earlier versions read a class anew each time backtracking came back to it: with a `*`
    // before a class of a megabyte, O(pattern × key) — ~5 * 10^10 steps here.
    const P: usize = 1 << 20;
    const K: usize = 50_000;
    let key: Vec<u8> = vec![b'b'; K];
    let mut key_a = key.clone();
    key_a.push(b'a');
    // Each byte of the pattern read once, when it is compiled, and a few steps for each byte
    // of the key.
    let bounded = |pattern: &[u8], key: &[u8]| {
        let (matched, work) = glob_work(&compiled(pattern), key);
        let most = (4 * key.len() + 4) as u64;
        assert!(
            work <= most,
            "work {work} for a pattern of {} bytes and a key of {}",
            pattern.len(),
            key.len()
        );
        matched
    };
    // A class without its `]`: it runs to the end of the pattern, so it matches only a key's
    // last byte.
    let mut unclosed = b"*[".to_vec();
    unclosed.extend(std::iter::repeat_n(b'a', P));
    assert!(!bounded(&unclosed, &key));
    assert!(bounded(&unclosed, &key_a));
    // A closed class of a megabyte, then more pattern.
    let mut closed = b"*[".to_vec();
    closed.extend(std::iter::repeat_n(b'a', P));
    closed.extend_from_slice(b"]z");
    assert!(!bounded(&closed, &key));
    let mut key_az = key_a.clone();
    key_az.push(b'z');
    assert!(bounded(&closed, &key_az));
    // A negated one.
    let mut negated = b"*[^".to_vec();
    negated.extend(std::iter::repeat_n(b'b', P));
    negated.push(b']');
    assert!(!bounded(&negated, &key));
    assert!(bounded(&negated, &key_a));
    // A megabyte of `*`, read once as one.
    let mut stars = vec![b'*'; P];
    stars.push(b'a');
    stars.extend(std::iter::repeat_n(b'*', P));
    assert!(!bounded(&stars, &key));
    assert!(bounded(&stars, &key_a));
    // The nesting Redis cuts short (`*?` 50,000 times) matches in linear work.
    let nested = b"*?".repeat(50_000);
    assert!(bounded(&nested, &vec![b'x'; K + 1]));
    assert!(!bounded(&nested, &vec![b'x'; K - 1]));
    // A long pattern against a key that differs early: matching stops there.
    let mut literal = vec![b'c'; P];
    literal.push(b'*');
    let (matched, work) = glob_work(&compiled(&literal), &key);
    assert!(!matched);
    assert!(work <= 2, "work {work}");
}

/// The work of matching each of `keys` against `pattern` compiled once (see
/// `glob::GLOB_WORK`; compiling not counted), as SCAN, KEYS and HSCAN do it, and how many
/// matched.
fn per_key_work(pattern: &[u8], keys: &[Vec<u8>]) -> (u64, usize) {
    let glob = compiled(pattern);
    let before = glob_work_so_far();
    let matched = keys.iter().filter(|k| glob.matches(k)).count();
    (glob_work_so_far() - before, matched)
}

#[test]
fn a_long_pattern_costs_each_key_nothing_more_than_a_short_one() {
    // SCAN 0 MATCH <pattern> COUNT 10000 matches up to 10,000 keys against one pattern under
    // the read lock: a megabyte of pattern must not be read again for each of them.
    const P: usize = 1 << 20;
    let keys: Vec<Vec<u8>> = (0..1_000)
        .map(|i| {
            let mut k = format!("user:{i:05}:name").into_bytes();
            if i % 3 == 0 {
                k.push(b'a');
            }
            k
        })
        .collect();
    let key_bytes: usize = keys.iter().map(Vec::len).sum();
    let most = (4 * key_bytes + 4 * keys.len()) as u64;
    // (a) A megabyte of `*`: matches everything.
    let stars = vec![b'*'; P];
    let (work, matched) = per_key_work(&stars, &keys);
    assert_eq!(matched, keys.len());
    assert!(work <= most, "stars: work {work} for {key_bytes} key bytes");
    // (b) `*[` and a megabyte with no `]`: the class runs to the end of the pattern, so it
    // matches the keys whose last byte is `a`.
    let mut unclosed = b"*[".to_vec();
    unclosed.extend(std::iter::repeat_n(b'a', P));
    let (work, matched) = per_key_work(&unclosed, &keys);
    assert_eq!(matched, keys.len().div_ceil(3));
    assert!(
        work <= most,
        "unclosed class: work {work} for {key_bytes} key bytes"
    );
    // A megabyte of `*` around a class of a megabyte, closed, then more pattern.
    let mut both = vec![b'*'; P];
    both.extend_from_slice(b"[^");
    both.extend(std::iter::repeat_n(b'b', P));
    both.extend_from_slice(b"]*");
    both.extend(std::iter::repeat_n(b'*', P));
    both.push(b'a');
    let (work, matched) = per_key_work(&both, &keys);
    assert_eq!(matched, keys.len().div_ceil(3));
    assert!(
        work <= 2 * most,
        "stars and class: work {work} for {key_bytes} key bytes"
    );
}

#[test]
fn a_compiled_pattern_takes_at_most_three_bytes_for_each_of_its_own() {
    // The shapes that give the most tokens or class bytes for their length; `compiled` checks
    // the bound. A table for each `[a]` would take 32 bytes for each 3.
    use super::glob::SHORT_CLASS;
    const P: usize = 1 << 16;
    let long_class = {
        let mut c = b"[".to_vec();
        c.extend(std::iter::repeat_n(b'x', SHORT_CLASS + 1));
        c.push(b']');
        c
    };
    let short_class = {
        let mut c = b"[^".to_vec();
        c.extend(std::iter::repeat_n(b'x', SHORT_CLASS - 1));
        c.push(b']');
        c
    };
    for unit in [
        &b"[a]"[..],
        b"[]",
        b"a",
        b"?",
        b"*a",
        b"\\*",
        b"[a-z\\]]",
        &long_class,
        &short_class,
    ] {
        let pattern = unit.repeat(P / unit.len());
        let glob = compiled(&pattern);
        // And it still means what it meant.
        let key = b"axbxa]".repeat(4);
        assert_eq!(glob.matches(&key), glob_as_before(&pattern, &key));
    }
    // An unclosed class, short or long, runs to the end of the pattern.
    for len in [0, 1, SHORT_CLASS, SHORT_CLASS + 1, P] {
        let mut pattern = b"*[".to_vec();
        pattern.extend(std::iter::repeat_n(b'q', len));
        let glob = compiled(&pattern);
        assert_eq!(glob.matches(b"abq"), len > 0);
        assert!(!glob.matches(b"qqa"));
    }
}

/// A fixed sequence of numbers below `n` (a 64-bit LCG from `seed`), for random-looking test
/// cases that are the same on every run.
fn draws(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    }
}

#[test]
fn classes_kept_as_tables_match_exactly_as_before() {
    // The exhaustive comparison above only sees classes short enough to be kept as written:
    // these are as long as the longest kept so, or longer, closed or not.
    use super::glob::SHORT_CLASS;
    let mut next = draws(0x9e37_79b9_7f4a_7c15);
    let pattern_bytes = b"ab*?\\z";
    let class_bytes = b"abz^-]\\";
    let key_bytes = b"abz^-]\\";
    let mut long = 0;
    for _ in 0..20_000 {
        let mut p = Vec::new();
        for _ in 0..next(4) {
            p.push(pattern_bytes[next(pattern_bytes.len() as u64) as usize]);
        }
        for _ in 0..1 + next(2) {
            p.push(b'[');
            let len = SHORT_CLASS - 2 + next(6) as usize;
            // Mostly a `]` only at the end, so that the class is as long as drawn.
            for i in 0..len {
                let c = class_bytes[next(class_bytes.len() as u64) as usize];
                p.push(if c == b']' && (i == 0 || next(8) != 0) {
                    b'a'
                } else {
                    c
                });
            }
            if next(4) != 0 {
                p.push(b']');
            }
            for _ in 0..next(3) {
                p.push(pattern_bytes[next(pattern_bytes.len() as u64) as usize]);
            }
        }
        long += usize::from(p.len() > SHORT_CLASS + 2);
        for _ in 0..8 {
            let k: Vec<u8> = (0..next(8))
                .map(|_| key_bytes[next(key_bytes.len() as u64) as usize])
                .collect();
            assert_matches_as_before(&p, &k);
        }
    }
    assert!(long > 10_000);
}

#[test]
fn ranges_kept_in_tables_hold_exactly_their_bytes() {
    use super::glob::SHORT_CLASS;
    let ends: Vec<u8> = (0..=255u8)
        .filter(|c| c % 5 == 0 || [1, 62, 63, 64, 65, 127, 128, 191, 192, 254, 255].contains(c))
        .filter(|c| ![b']', b'\\', b'^', b'-'].contains(c))
        .collect();
    for &from in &ends {
        for &to in &ends {
            // `[from-to` and `from` again to make it long enough to be kept as a table.
            let mut pattern = vec![b'[', from, b'-', to];
            pattern.extend(std::iter::repeat_n(from, SHORT_CLASS));
            pattern.push(b']');
            let glob = Glob::new(&pattern);
            for c in 0..=255u8 {
                assert_eq!(
                    glob.matches(&[c]),
                    (from.min(to)..=from.max(to)).contains(&c),
                    "{from}-{to} against {c}"
                );
            }
        }
    }
}

/// A transaction of `ops` as `EXEC` logs it now.
fn exec_strict(s: &mut Store, ops: Vec<Queued>) -> Reply {
    s.write(at(
        0,
        WriteOp::ExecStrict {
            watched: Vec::new(),
            ops,
        },
    ))
}

/// A transaction of `ops` through the bounded `EXEC` of earlier versions.
fn exec_bounded(s: &mut Store, ops: Vec<Queued>) -> Reply {
    s.write(at(
        0,
        WriteOp::ExecBounded {
            watched: Vec::new(),
            ops,
        },
    ))
}

#[test]
fn a_transaction_past_its_reply_bound_applies_everything_and_builds_no_more_replies() {
    let mut s = Store::default();
    s.write(at(0, set("big", &"x".repeat(1000), Expiry::Clear)));
    let get = || Queued::Read(ReadOp::Get(b("big")));
    // Within the bound: every reply, in order.
    let small = exec(&mut s, vec![], vec![set("a", "1", Expiry::Clear)]);
    assert_eq!(small, Reply::Array(vec![Reply::Ok]));
    // Past it (about 1 KiB per read, a bound of 4 KiB): an error, and every write applied,
    // those after the reads too.
    let mut ops = vec![Queued::Write(set("before", "1", Expiry::Clear))];
    ops.extend((0..10).map(|_| get()));
    ops.push(Queued::Write(set("after", "2", Expiry::Clear)));
    let reply = s.exec(Vec::new(), ops.clone(), 0, Some(4096), true);
    assert!(reply.is_error(), "{reply:?}");
    for (key, value) in [("before", "1"), ("after", "2")] {
        assert_eq!(s.string(&b(key), 0), Ok(Some(&b(value))), "{key}");
    }
    // The same transaction under the real bound answers every command.
    match exec_bounded(&mut s, ops) {
        Reply::Array(replies) => assert_eq!(replies.len(), 12),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_transactions_reads_examine_a_bounded_number_of_keys() {
    // Scans whose pattern matches nothing have tiny replies, so the reply bound never trips:
    // without a bound on their work, one EXEC of many would hold every replica's state for
    // minutes.
    let mut s = Store::default();
    for i in 0..SCAN_STEP {
        s.write(at(0, set(&format!("k{i}"), "v", Expiry::Clear)));
    }
    let scan = || {
        Queued::Read(ReadOp::Scan {
            cursor: 0,
            pattern: Some(b("zz*")),
            count: SCAN_STEP,
        })
    };
    let scans = 3 * MAX_EXEC_READ_WORK as usize / SCAN_STEP;
    let mut ops: Vec<Queued> = (0..scans).map(|_| scan()).collect();
    ops.push(Queued::Write(set("after", "1", Expiry::Clear)));
    // Entries of the older form keep their rules: every read answered.
    let mut older = s.clone();
    match exec_bounded(&mut older, ops.clone()) {
        Reply::Array(replies) => assert_eq!(replies.len(), scans + 1),
        other => panic!("{other:?}"),
    }
    let before = glob_work_so_far();
    let reply = exec_strict(&mut s, ops);
    let work = glob_work_so_far() - before;
    assert!(reply.is_error(), "{reply:?}");
    assert!(
        work <= 2 * MAX_EXEC_READ_WORK,
        "{work} glob steps for {scans} scans of {SCAN_STEP} keys"
    );
    assert_eq!(
        s.string(&b("after"), 0),
        Ok(Some(&b("1"))),
        "the write applied"
    );
    // Within the bound (the keys, and the pattern's step or so for each) every scan is
    // answered.
    let ops = (0..scans / 4).map(|_| scan()).collect();
    match exec_strict(&mut s, ops) {
        Reply::Array(replies) => assert_eq!(replies.len(), scans / 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_backtracking_match_pattern_counts_its_steps_in_a_transaction() {
    // Keys of 60 `a`s against `*` + 30 `a`s + `b`: about 1,800 steps each, within the per-key
    // bound (4,096 + 64 per byte), but 18 million for a scan of 10,000 keys.
    let mut s = Store::default();
    for i in 0..SCAN_STEP {
        s.write(at(
            0,
            set(&format!("{i:08}{}", "a".repeat(52)), "v", Expiry::Clear),
        ));
    }
    let mut pattern = "*".to_string();
    pattern.push_str(&"a".repeat(30));
    pattern.push('b');
    let scan = || {
        Queued::Read(ReadOp::Scan {
            cursor: 0,
            pattern: Some(b(&pattern)),
            count: SCAN_STEP,
        })
    };
    let before = glob_work_so_far();
    let reply = exec_strict(&mut s, (0..20).map(|_| scan()).collect());
    let work = glob_work_so_far() - before;
    assert!(reply.is_error(), "{reply:?}");
    let per_scan = {
        let before = glob_work_so_far();
        exec_strict(&mut s, vec![scan()]);
        glob_work_so_far() - before
    };
    // The bound, plus the scan that found it out.
    assert!(
        work <= 4 * per_scan,
        "{work} glob steps for 20 scans of {per_scan} each"
    );
}

#[test]
fn reads_that_walk_a_collection_count_its_elements_in_a_transaction() {
    // MEMORY USAGE, HRANDFIELD and the like walk a whole hash with a tiny reply.
    let mut s = Store::default();
    let fields: Vec<(Bytes, Bytes)> = (0..100_000)
        .map(|i| (b(&format!("f{i}")), b("v")))
        .collect();
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs: fields,
            nx: false,
        },
    ));
    let usage = || Queued::Read(ReadOp::MemoryUsage(b("h")));
    // Nine walks fit in the bound; a hundred do not.
    assert!(matches!(
        exec_strict(&mut s, (0..9).map(|_| usage()).collect()),
        Reply::Array(_)
    ));
    assert!(exec_strict(&mut s, (0..100).map(|_| usage()).collect()).is_error());
}

/// The peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_transaction_of_large_reads_holds_about_its_reply_bound() {
    // Each read answers 2^21 replies (2^20 repeated fields with their values), about 80 MiB
    // as built: 32 of them would hold more than 2.5 GiB on every replica.
    let mut s = Store::default();
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs: vec![(b("f"), b("v"))],
            nx: false,
        },
    ));
    let read = || {
        Queued::Read(ReadOp::HRandField {
            key: b("h"),
            count: Some(-(1 << 20)),
            with_values: true,
        })
    };
    let before = peak_rss();
    let reply = exec_bounded(&mut s, (0..32).map(|_| read()).collect());
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 1 << 30,
        "the transaction raised the peak memory by {} MiB",
        grew >> 20
    );
    assert!(reply.is_error(), "{reply:?}");
}

#[test]
fn scan_steps_past_keys_whose_hashes_collide() {
    // Three keys share one hash (forged here; FNV-1a collisions can be searched for), and
    // COUNT 1 is smaller than their run: a step returns the run whole, and the scan ends.
    let mut s = Store::default();
    for (hash, key) in [(5, "a"), (5, "b"), (5, "c"), (9, "d"), (0, "z")] {
        let value = Value {
            data: Data::Str(b("v")),
            expires_at: None,
            version: 0,
        };
        s.put(Slot(hash, b(key)), value);
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    for _ in 0..10 {
        let Reply::Array(parts) = s.read(Query {
            now: 0,
            op: ReadOp::Scan {
                cursor,
                pattern: None,
                count: 1,
            },
        }) else {
            panic!("not an array")
        };
        let (Reply::Bulk(c), Reply::Array(keys)) = (&parts[0], &parts[1]) else {
            panic!("not a cursor and keys")
        };
        seen.extend(keys.iter().cloned());
        cursor = std::str::from_utf8(c).unwrap().parse().unwrap();
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(cursor, 0, "the scan ended");
    let keys = ["z", "a", "b", "c", "d"].map(|k| Reply::Bulk(b(k)));
    assert_eq!(seen, keys, "every key once, in hash order");
}

#[test]
fn an_expiry_past_the_integer_range_reads_as_the_largest_integer() {
    // SET k v PX <near i64::MAX> accepted at one clock and stamped by a leader a little later
    // stores a deadline past i64::MAX.
    let mut s = Store::default();
    let value = Value {
        data: Data::Str(b("v")),
        expires_at: Some(u64::MAX - 1),
        version: 0,
    };
    s.put(Slot::new(b("k")), value);
    let ask = |op| s.read(Query { now: 1_000, op });
    let key = || b("k");
    assert_eq!(
        ask(ReadOp::ExpireTime {
            key: key(),
            millis: true
        }),
        Reply::Int(i64::MAX)
    );
    assert_eq!(
        ask(ReadOp::Ttl {
            key: key(),
            millis: true
        }),
        Reply::Int(i64::MAX)
    );
    for millis in [false, true] {
        let Reply::Int(n) = ask(ReadOp::Ttl { key: key(), millis }) else {
            panic!("not an integer")
        };
        assert!(n > 0, "{n}");
    }
}

/// `*`, `a` × `run`, then `b`: against a string of `a`s, each start position matches `run`
/// bytes before failing, so matching costs about `run` steps per byte.
fn backtracking_pattern(run: usize) -> Vec<u8> {
    let mut pattern = vec![b'*'];
    pattern.extend(std::iter::repeat_n(b'a', run));
    pattern.push(b'b');
    pattern
}

/// The most work `matches_bounded` may do on a string of `n` bytes.
fn glob_bound(n: usize) -> u64 {
    super::glob::FREE_STEPS + super::glob::STEPS_PER_BYTE * n as u64
}

#[test]
fn a_pattern_built_to_backtrack_gives_up_within_its_bound() {
    let key = vec![b'a'; 20_000];
    let glob = compiled(&backtracking_pattern(1_000));
    // Unbounded, it costs about 1,000 steps per byte of the key.
    let (matched, unbounded) = glob_work(&glob, &key);
    assert!(!matched);
    assert!(
        unbounded > 10 * glob_bound(key.len()),
        "unbounded: {unbounded}"
    );
    // Bounded, it gives up within its allowance.
    let before = glob_work_so_far();
    assert_eq!(glob.matches_bounded(&key), Err(super::glob::TooCostly));
    let work = glob_work_so_far() - before;
    assert!(work <= glob_bound(key.len()), "bounded: {work}");
    // Patterns as people write them match the same long key well within it.
    let mut long = key.clone();
    long.extend_from_slice(b":name");
    for (pattern, expected) in [
        (&b"*:name"[..], true),
        (b"a*", true),
        (b"*a?name", true),
        (b"*b?name", false),
        (b"a*[:]n*e", true),
        (b"*:id", false),
    ] {
        let glob = compiled(pattern);
        let before = glob_work_so_far();
        assert_eq!(glob.matches_bounded(&long), Ok(expected));
        assert!(glob_work_so_far() - before <= 4 * long.len() as u64);
    }
}

#[test]
fn scans_answer_an_error_rather_than_backtrack_through_a_long_key() {
    // SCAN, HSCAN and KEYS in a transaction match under the store's lock, on every replica
    // for the transaction: a long key and a pattern built to backtrack must not hold it for
    // O(n²) steps.
    let long = Bytes::from(vec![b'a'; 20_000]);
    let pattern = Bytes::from(backtracking_pattern(1_000));
    let mut s = Store::default();
    for key in [long.clone(), b("short")] {
        s.write(at(
            0,
            WriteOp::Set {
                key,
                value: b("v"),
                expiry: Expiry::Keep,
                condition: Condition::Always,
                get: false,
            },
        ));
    }
    s.write(at(
        0,
        WriteOp::HSet {
            key: b("h"),
            pairs: vec![(long.clone(), b("v")), (b("f"), b("v"))],
            nx: false,
        },
    ));
    let reads = [
        ReadOp::Scan {
            cursor: 0,
            pattern: Some(pattern.clone()),
            count: 10,
        },
        ReadOp::HScan {
            key: b("h"),
            cursor: 0,
            pattern: Some(pattern.clone()),
            count: 10,
            novalues: false,
        },
        ReadOp::Keys(pattern.clone()),
    ];
    for op in reads {
        let what = format!("{op:?}").chars().take(12).collect::<String>();
        let before = glob_work_so_far();
        let reply = read(&s, op);
        let work = glob_work_so_far() - before;
        assert!(reply.is_error(), "{what}: {reply:?}");
        // Compiling the pattern, then at most the bound for each of the two strings.
        let most = pattern.len() as u64 + 1 + glob_bound(long.len()) + glob_bound(5);
        assert!(work <= most, "{what}: {work} steps, at most {most}");
    }
}

#[test]
fn keys_in_a_transaction_walks_at_most_one_scan_steps_worth_of_keys() {
    // Outside transactions KEYS runs as SCAN steps; queued in one it is a single read under
    // the lock on every replica, so a store past the bound answers an error and walks nothing.
    let mut s = Store::default();
    let keys = |s: &mut Store| {
        let before = glob_work_so_far();
        let reply = exec_bounded(s, vec![Queued::Read(ReadOp::Keys(b("k*")))]);
        (reply, glob_work_so_far() - before)
    };
    for i in 0..MAX_KEYS_IN_TRANSACTION {
        s.write(at(0, set(&format!("k{i}"), "v", Expiry::Clear)));
    }
    let (reply, work) = keys(&mut s);
    match reply {
        Reply::Array(replies) => match &replies[..] {
            [Reply::Array(found)] => assert_eq!(found.len(), MAX_KEYS_IN_TRANSACTION),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(work >= MAX_KEYS_IN_TRANSACTION as u64, "{work}");
    s.write(at(0, set("one-more", "v", Expiry::Clear)));
    let (reply, work) = keys(&mut s);
    let Reply::Array(replies) = reply else {
        panic!("{reply:?}")
    };
    assert!(
        replies[0].is_error(),
        "KEYS walked the store instead of refusing"
    );
    assert!(work <= 3, "{work}");
}

/// `prefix` repeated `depth` times around `core`, after `head`: a value nested `depth` deep,
/// built as bytes (a value that deep could not even be dropped).
fn nested_bytes(head: &[u8], prefix: &[u8], depth: usize, core: &[u8]) -> Vec<u8> {
    let mut bytes = head.to_vec();
    for _ in 0..depth {
        bytes.extend_from_slice(prefix);
    }
    bytes.extend_from_slice(core);
    bytes
}

/// A command or query nested deeper than any the server builds is refused by the decoder. A
/// few kilobytes nested a thousand deep overflowed the decoding thread's stack and aborted the
/// process: on the leader for a query, on every replica (and again at each restart) for a
/// command in the log.
#[test]
fn deeply_nested_commands_and_queries_do_not_decode() {
    use raft_core::codec::decode;
    use raft_core::codec::encode;
    // A command: EXEC whose one queued write is an EXEC …, around a FLUSHDB.
    let flush = encode(&Command {
        now: 0,
        op: WriteOp::FlushDb,
    })
    .unwrap();
    let one = encode(&Command {
        now: 0,
        op: WriteOp::Exec {
            watched: vec![],
            ops: vec![Queued::Write(WriteOp::FlushDb)],
        },
    })
    .unwrap();
    let exec = &one[1..one.len() - (flush.len() - 1)];
    let command = |depth| nested_bytes(&flush[..1], exec, depth, &flush[1..]);
    assert!(
        decode::<Command>(&command(8)).is_ok(),
        "a few levels decode"
    );
    let deep = command(100_000);
    assert!(deep.len() < 1 << 20);
    assert!(decode::<Command>(&deep).is_err());

    // A query whose reply argument is an array of an array …
    let query = |reply: Reply| {
        encode(&Query {
            now: 0,
            op: ReadOp::ArgumentError {
                key: b("k"),
                kind: Kind::String,
                missing: reply,
                error: Reply::Nil,
            },
        })
        .unwrap()
    };
    let nil = query(Reply::Nil);
    let array = query(Reply::Array(vec![Reply::Nil]));
    let split = nil.iter().zip(&array).take_while(|(a, b)| a == b).count();
    let prefix = &array[split..array.len() - (nil.len() - split)];
    let query = |depth| nested_bytes(&nil[..split], prefix, depth, &nil[split..]);
    assert!(decode::<Query>(&query(8)).is_ok(), "a few levels decode");
    assert!(decode::<Query>(&query(100_000)).is_err());
    // Decoding after a refusal starts again from the top.
    assert!(decode::<Query>(&query(31)).is_ok());
}
