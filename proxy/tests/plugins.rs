//! The plugin host against real plugin components (`plugins/build.sh`
//! builds them into `plugins/dist/`; `scripts/test.sh` runs it first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard::metrics::Metrics;
use switchyard::plugin::{
    Batch, BatchMeta, Decision, FailurePolicy, Host, Limits, LoadError, Site, Stage,
};

fn component(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the example plugins first: plugins/build.sh",
            path.display()
        )
    })
}

fn sites() -> Vec<Site> {
    vec![
        Site {
            id: 0,
            name: "east".into(),
            priority: 1,
        },
        Site {
            id: 1,
            name: "west".into(),
            priority: 2,
        },
    ]
}

/// A produce batch of `n` records with 100-byte values and one header each,
/// in the descriptor layout of wit/plugin.wit.
fn batch(topic: &str, n: u32) -> Batch {
    let mut data = Vec::new();
    let mut records = Vec::new();
    let mut headers = Vec::new();
    for i in 0..n {
        let key = format!("k{i}");
        let (ko, kl) = (data.len() as u32, key.len() as u32);
        data.extend_from_slice(key.as_bytes());
        let (vo, vl) = (data.len() as u32, 100u32);
        data.extend(std::iter::repeat_n(b'v', 100));
        let (hk, hv) = (data.len() as u32, data.len() as u32 + 1);
        data.extend_from_slice(b"hx");
        let ts: i64 = 1_700_000_000_000 + i64::from(i);
        records.extend_from_slice(&[i, (ts >> 32) as u32, ts as u32, ko, kl, vo, vl, 1]);
        headers.extend_from_slice(&[hk, 1, hv, 1]);
    }
    Batch {
        meta: BatchMeta {
            stage: Stage::Produce,
            topic: topic.into(),
            partition: 0,
            origin_site: 0,
            local_site: 0,
            target_site: None,
            client_id: None,
            base_offset: -1,
        },
        records,
        headers,
        data,
    }
}

fn host() -> Arc<Host> {
    Host::new(Arc::new(Metrics::new())).expect("plugin host")
}

#[test]
fn keep_all_keeps_everything() {
    let h = host();
    let p = h
        .load(
            "keep-all",
            &component("keep-all"),
            "",
            sites(),
            FailurePolicy::FailOpen,
            Limits::default(),
        )
        .expect("keep-all loads");
    let d = p.on_batch(&batch("orders", 1000)).expect("call");
    assert!(d.is_empty() || d.iter().all(|d| matches!(d, Decision::Keep)));
}

#[test]
fn topic_rename_renames_on_produce_and_rejects_bad_config() {
    let h = host();
    let wasm = component("topic-rename");
    let p = h
        .load(
            "rename",
            &wasm,
            r#"{"policy":"mm2","site":"east"}"#,
            sites(),
            FailurePolicy::FailClosed,
            Limits::default(),
        )
        .expect("topic-rename loads");
    use switchyard::plugin::Direction;
    assert_eq!(
        p.topic_name("orders", Direction::ToSite)
            .expect("call")
            .as_deref(),
        Some("east.orders")
    );
    assert_eq!(
        p.topic_name("east.orders", Direction::ToClient)
            .expect("call")
            .as_deref(),
        Some("orders")
    );
    // Cached: a second answer needs no call (and is the same).
    assert_eq!(
        p.topic_name("orders", Direction::ToSite)
            .expect("cached")
            .as_deref(),
        Some("east.orders")
    );
    assert!(p.caps.topic_name && !p.caps.batch);
    let err = h
        .load(
            "rename",
            &wasm,
            r#"{"bogus": 1}"#,
            sites(),
            FailurePolicy::FailClosed,
            Limits::default(),
        )
        .expect_err("a bad config is refused");
    assert!(matches!(err, LoadError::InitRejected(_)), "{err}");
}

#[test]
fn garbage_and_core_modules_are_refused_with_a_reason() {
    let h = host();
    let load = |bytes: &[u8]| {
        h.load(
            "bad",
            bytes,
            "",
            sites(),
            FailurePolicy::FailOpen,
            Limits {
                call_timeout: Duration::from_millis(10),
                memory_bytes: 1 << 20,
                crash_cap: 10,
            },
        )
        .expect_err("refused")
    };
    let e = load(b"definitely not wasm");
    assert!(matches!(e, LoadError::Compile(_)), "{e}");
    // A core module (not a component): `\0asm` version 1.
    let e = load(b"\0asm\x01\0\0\0");
    assert!(matches!(e, LoadError::Compile(_)), "{e}");
}

#[tokio::test]
async fn registry_swaps_versions_and_keeps_the_old_one_on_a_bad_upload() {
    use switchyard::plugin::registry::Registry;
    let conflicts = switchyard::plugin::conflict::Conflicts::new(Vec::new(), 1000);
    let reg = Registry::new(host(), sites(), conflicts);
    let v1 = reg
        .put(
            "p",
            component("keep-all"),
            String::new(),
            FailurePolicy::FailOpen,
            Limits::default(),
        )
        .await
        .expect("v1");
    let v2 = reg
        .put(
            "p",
            component("topic-rename"),
            r#"{"template":"{topic}-x"}"#.into(),
            FailurePolicy::FailClosed,
            Limits::default(),
        )
        .await
        .expect("v2");
    assert!(v2.version > v1.version);
    assert_eq!(reg.get("p").map(|p| p.version), Some(v2.version));
    // A bad upload changes nothing.
    assert!(reg
        .put(
            "p",
            b"junk".to_vec(),
            String::new(),
            FailurePolicy::FailOpen,
            Limits::default()
        )
        .await
        .is_err());
    assert_eq!(reg.get("p").map(|p| p.version), Some(v2.version));
    // A batch that took v1 before the swap finishes on it; the next one runs v2.
    assert!(v1
        .on_batch(&batch("orders", 2))
        .expect("v1 call")
        .is_empty());
    let current = reg.get("p").expect("loaded");
    assert_eq!(
        current
            .topic_name("orders", switchyard::plugin::Direction::ToSite)
            .expect("call")
            .as_deref(),
        Some("orders-x")
    );
    assert_eq!(reg.status().len(), 1);
    assert_eq!(reg.remove("p").await.ok(), Some(true));
    assert!(reg.get("p").is_none());
}

fn misbehave(
    h: &Host,
    mode: &str,
    crash_cap: u32,
) -> Result<Arc<switchyard::plugin::Loaded>, LoadError> {
    h.load(
        "misbehave",
        &component("misbehave"),
        mode,
        sites(),
        FailurePolicy::FailOpen,
        Limits {
            call_timeout: Duration::from_millis(20),
            memory_bytes: 8 << 20,
            crash_cap,
        },
    )
}

/// A batch whose values contain `text` in record 1.
fn batch_with(text: &str) -> Batch {
    let mut b = batch("orders", 3);
    let v = b.records[8 + 5] as usize;
    b.data[v..v + text.len()].copy_from_slice(text.as_bytes());
    b
}

#[test]
fn bad_components_and_inits_are_refused_at_load() {
    let h = host();
    let e = h
        .load(
            "w",
            &component("wrong-world"),
            "",
            sites(),
            FailurePolicy::FailOpen,
            Limits::default(),
        )
        .expect_err("another world is refused");
    assert!(matches!(e, LoadError::World(_)), "{e}");
    let e = misbehave(&h, "init-trap", 10).expect_err("init trap");
    assert!(matches!(e, LoadError::InitTrapped(_)), "{e}");
    let e = misbehave(&h, "init-reject", 10).expect_err("init reject");
    assert!(
        matches!(e, LoadError::InitRejected(ref m) if m.contains("refusing")),
        "{e}"
    );
}

#[test]
fn loops_and_memory_bombs_are_stopped_and_the_instance_replaced() {
    use switchyard::plugin::CallError;
    let h = host();
    for mode in ["loop", "alloc"] {
        let p = misbehave(&h, mode, 100).expect("loads (the smoke call has no records)");
        let started = std::time::Instant::now();
        let e = p.on_batch(&batch("orders", 2)).expect_err("contained");
        assert!(matches!(e, CallError::Trapped(_)), "{mode}: {e}");
        // Deadline 20 ms; generous bound for a loaded CI machine, not a timing assertion
        // on the plugin's speed: only that the call did not run away.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode} took {:?}",
            started.elapsed()
        );
        let (state, traps, last) = p.health();
        assert_eq!((state, traps), ("restarting", 1), "{mode}");
        assert!(last.is_some());
    }
}

#[test]
fn a_panic_on_one_record_is_contained_and_later_batches_run() {
    use switchyard::plugin::CallError;
    let h = host();
    let p = misbehave(&h, "panic-on:BOOM", 100).expect("loads");
    assert!(p
        .on_batch(&batch("orders", 3))
        .expect("healthy batch")
        .is_empty());
    let e = p.on_batch(&batch_with("BOOM")).expect_err("trap");
    assert!(matches!(e, CallError::Trapped(_)), "{e}");
    // Restarted after the backoff (polled with a deadline, not slept on).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match p.on_batch(&batch("orders", 3)) {
            Ok(d) => {
                assert!(d.is_empty());
                break;
            }
            Err(CallError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("no restart: {e}"),
        }
    }
    assert_eq!(p.health().0, "running");
}

#[test]
fn wrong_answers_are_errors_and_the_crash_cap_stops_restarts() {
    use switchyard::plugin::CallError;
    let h = host();
    let p = misbehave(&h, "bad-count", 10).expect("loads");
    // The SDK catches the wrong count itself (an error answer); the host
    // checks it again for plugins written without the SDK.
    let e = p.on_batch(&batch("orders", 2)).expect_err("bad answer");
    assert!(
        matches!(e, CallError::BadAnswer(_) | CallError::Failed(_)),
        "{e}"
    );
    let p = misbehave(&h, "panic-on:v", 3).expect("loads");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while p.health().0 != "crashed" {
        assert!(
            std::time::Instant::now() < deadline,
            "never crashed: {:?}",
            p.health()
        );
        let _ = p.on_batch(&batch("orders", 1));
    }
    let e = p.on_batch(&batch("orders", 1)).expect_err("crashed");
    assert!(
        matches!(e, CallError::Unavailable(ref m) if m.contains("crashed")),
        "{e}"
    );
    assert_eq!(p.health().1, 3);
}
