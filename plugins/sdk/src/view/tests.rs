use super::*;

type Hdr<'a> = (&'a [u8], Option<&'a [u8]>);

/// Encode records the way the host does (layout of wit/plugin.wit).
#[derive(Default)]
struct Enc {
    records: Vec<u32>,
    headers: Vec<u32>,
    data: Vec<u8>,
}

impl Enc {
    fn put(&mut self, b: Option<&[u8]>) -> (u32, u32) {
        match b {
            None => (NULL, 0),
            Some(b) => {
                let off = self.data.len() as u32;
                self.data.extend_from_slice(b);
                (off, b.len() as u32)
            }
        }
    }

    fn rec(
        &mut self,
        delta: u32,
        ts: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        hdrs: &[Hdr],
    ) -> &mut Self {
        let (ko, kl) = self.put(key);
        let (vo, vl) = self.put(value);
        let ts = ts as u64;
        self.records.extend_from_slice(&[
            delta,
            (ts >> 32) as u32,
            ts as u32,
            ko,
            kl,
            vo,
            vl,
            hdrs.len() as u32,
        ]);
        for (k, v) in hdrs {
            let (ko, kl) = self.put(Some(k));
            let (vo, vl) = self.put(*v);
            self.headers.extend_from_slice(&[ko, kl, vo, vl]);
        }
        self
    }
}

fn meta() -> BatchMeta {
    BatchMeta {
        stage: Stage::Produce,
        topic: "orders".into(),
        partition: 3,
        origin_site: 1,
        local_site: 2,
        target_site: None,
        client_id: Some("cli".into()),
        base_offset: -1,
    }
}

fn sample() -> Enc {
    let mut e = Enc::default();
    e.rec(0, 1_700_000_000_123, Some(b"k0"), Some(b"v0"), &[])
        .rec(
            1,
            -5,
            None,
            Some(b"value-1"),
            &[(b"h1", Some(b"x")), (b"h2", None)],
        )
        .rec(2, i64::MAX, Some(b""), None, &[(b"only", Some(b""))])
        .rec(7, 0, None, None, &[]);
    e
}

#[test]
fn meta_accessors() {
    let m = meta();
    let b = Batch::from_parts(&m, &[], &[], &[]);
    assert_eq!(b.stage(), Stage::Produce);
    assert_eq!(b.topic(), "orders");
    assert_eq!(b.partition(), 3);
    assert_eq!(
        (b.origin_site(), b.local_site(), b.target_site()),
        (1, 2, None)
    );
    assert_eq!(b.client_id(), Some("cli"));
    assert_eq!(b.base_offset(), -1);
    assert_eq!(b.len(), Ok(0));
    assert!(b.is_empty());
    assert_eq!(b.records().unwrap().count(), 0);
}

#[test]
fn decodes_records_and_headers() {
    let e = sample();
    let m = meta();
    let b = Batch::from_parts(&m, &e.records, &e.headers, &e.data);
    assert_eq!(b.len(), Ok(4));
    let recs: Vec<Record> = b.records().unwrap().collect();
    assert_eq!(recs.len(), 4);

    assert_eq!(recs[0].index, 0);
    assert_eq!(recs[0].offset_delta, 0);
    assert_eq!(recs[0].timestamp_ms, 1_700_000_000_123);
    assert_eq!(recs[0].key, Some(&b"k0"[..]));
    assert_eq!(recs[0].value, Some(&b"v0"[..]));
    assert_eq!(recs[0].headers.len(), 0);

    assert_eq!(recs[1].timestamp_ms, -5);
    assert_eq!(recs[1].key, None);
    assert_eq!(recs[1].value, Some(&b"value-1"[..]));
    let h: Vec<_> = recs[1].headers.clone().collect();
    assert_eq!(h, vec![(&b"h1"[..], Some(&b"x"[..])), (&b"h2"[..], None)]);
    assert_eq!(recs[1].header(b"h1"), Some(Some(&b"x"[..])));
    assert_eq!(recs[1].header(b"h2"), Some(None));
    assert_eq!(recs[1].header(b"nope"), None);

    assert_eq!(recs[2].timestamp_ms, i64::MAX);
    assert_eq!(recs[2].key, Some(&b""[..]), "empty key is not null");
    assert_eq!(recs[2].value, None);
    assert_eq!(
        recs[2].headers.clone().collect::<Vec<_>>(),
        vec![(&b"only"[..], Some(&b""[..]))]
    );

    assert_eq!(
        (recs[3].offset_delta, recs[3].key, recs[3].value),
        (7, None, None)
    );
    assert_eq!(recs[3].headers.len(), 0);

    // random access walks the header table correctly
    assert_eq!(b.record(2).unwrap(), recs[2]);
    assert_eq!(
        b.record(4),
        Err(DecodeError::RecordIndex { index: 4, len: 4 })
    );
    // iterator is exact-size
    assert_eq!(b.records().unwrap().len(), 4);
}

fn check(records: &[u32], headers: &[u32], data: &[u8]) -> Result<usize, DecodeError> {
    let m = meta();
    let b = Batch::from_parts(&m, records, headers, data);
    b.records().map(|r| r.count())
}

#[test]
fn bad_table_lengths() {
    assert_eq!(
        check(&[0; 7], &[], b""),
        Err(DecodeError::RecordTableLength { words: 7 })
    );
    assert_eq!(
        check(&[0, 0, 0, NULL, 0, NULL, 0, 0], &[0; 3], b""),
        Err(DecodeError::HeaderTableLength { words: 3 })
    );
}

#[test]
fn spans_out_of_bounds() {
    let data = b"abcd";
    // key ends one past data
    assert_eq!(
        check(&[0, 0, 0, 1, 4, NULL, 0, 0], &[], data),
        Err(DecodeError::KeyOutOfBounds { record: 0 })
    );
    // exactly fits
    assert_eq!(check(&[0, 0, 0, 1, 3, 0, 4, 0], &[], data), Ok(1));
    // value offset past end with length 0
    assert_eq!(
        check(&[0, 0, 0, NULL, 0, 5, 0, 0], &[], data),
        Err(DecodeError::ValueOutOfBounds { record: 0 })
    );
    // offset == len with length 0 is a valid empty slice
    assert_eq!(check(&[0, 0, 0, NULL, 0, 4, 0, 0], &[], data), Ok(1));
    // offset + length overflows u32 / usize arithmetic
    assert_eq!(
        check(&[0, 0, 0, 2, u32::MAX, NULL, 0, 0], &[], data),
        Err(DecodeError::KeyOutOfBounds { record: 0 })
    );
    assert_eq!(
        check(&[0, 0, 0, NULL - 1, u32::MAX, NULL, 0, 0], &[], data),
        Err(DecodeError::KeyOutOfBounds { record: 0 })
    );
    // second record bad
    let r = [0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, NULL, 0, 3, 9, 0];
    assert_eq!(
        check(&r, &[], data),
        Err(DecodeError::ValueOutOfBounds { record: 1 })
    );
}

#[test]
fn header_errors() {
    let data = b"hkv";
    let rec1 = |n: u32| [0, 0, 0, NULL, 0, NULL, 0, n];
    // declares 2 headers, table has 1
    assert_eq!(
        check(&rec1(2), &[0, 2, NULL, 0], data),
        Err(DecodeError::HeadersOutOfBounds {
            record: 0,
            count: 2
        })
    );
    // absurd count must not overflow
    assert_eq!(
        check(&rec1(u32::MAX), &[0, 2, NULL, 0], data),
        Err(DecodeError::HeadersOutOfBounds {
            record: 0,
            count: u32::MAX
        })
    );
    // declares 0, table has 1
    assert_eq!(
        check(&rec1(0), &[0, 2, NULL, 0], data),
        Err(DecodeError::HeaderCountMismatch {
            declared: 0,
            present: 1
        })
    );
    // null key
    assert_eq!(
        check(&rec1(1), &[NULL, 0, 0, 1], data),
        Err(DecodeError::HeaderKeyNull {
            record: 0,
            header: 0
        })
    );
    // key out of bounds
    assert_eq!(
        check(&rec1(1), &[2, 2, NULL, 0], data),
        Err(DecodeError::HeaderKeyOutOfBounds {
            record: 0,
            header: 0
        })
    );
    // value out of bounds (second header)
    assert_eq!(
        check(&rec1(2), &[0, 1, 1, 2, 0, 1, 3, 1], data),
        Err(DecodeError::HeaderValueOutOfBounds {
            record: 0,
            header: 1
        })
    );
    // fine
    assert_eq!(check(&rec1(2), &[0, 1, 1, 2, 0, 1, NULL, 7], data), Ok(1));
}

#[test]
fn error_converts_to_string() {
    let e: String = DecodeError::KeyOutOfBounds { record: 3 }.into();
    assert_eq!(e, "malformed batch: record 3: key span outside data");
    fn plugin_like(b: &Batch) -> Result<usize, String> {
        Ok(b.records()?.count())
    }
    let m = meta();
    assert!(plugin_like(&Batch::from_parts(&m, &[1, 2, 3], &[], b""))
        .unwrap_err()
        .contains("not a multiple of 8"));
}

#[test]
fn fuzz_never_panics() {
    // Small xorshift: random tables over a small data buffer must decode or
    // error, never panic, and decoded slices must lie inside data.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let data = [7u8; 64];
    let m = meta();
    let mut ok = 0;
    for _ in 0..20_000 {
        let word = |r: u64| match r % 6 {
            0 => NULL,
            1 => u32::MAX - 1,
            _ => (r >> 8) as u32 % 70,
        };
        let nr = (rnd() % 4) as usize * 8 + usize::from(rnd() % 16 == 0);
        let mut records: Vec<u32> = (0..nr).map(|_| word(rnd())).collect();
        for c in records.chunks_exact_mut(8) {
            c[7] = (rnd() % 3) as u32;
        }
        let nh = (rnd() % 5) as usize * 4;
        let headers: Vec<u32> = (0..nh).map(|_| word(rnd())).collect();
        let b = Batch::from_parts(&m, &records, &headers, &data);
        if let Ok(recs) = b.records() {
            ok += 1;
            let n = recs.len();
            let mut seen = 0;
            for r in recs {
                seen += 1;
                for h in r.headers {
                    assert!(h.0.len() <= data.len());
                }
            }
            assert_eq!(seen, n);
        }
    }
    assert!(ok > 100, "fuzz produced too few valid batches: {ok}");
}

#[test]
fn glue_checks_decision_count() {
    use crate::__glue::check_count;
    assert!(check_count("on_batch", "decisions", 0, 5).is_ok());
    assert!(check_count("on_batch", "decisions", 5, 5).is_ok());
    assert!(check_count("on_batch", "decisions", 3, 5).is_err());
}
