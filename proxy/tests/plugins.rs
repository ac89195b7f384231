//! The plugin host against real plugin components (`plugins/build.sh`
//! builds them into `plugins/dist/`; `scripts/test.sh` runs it first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard::plugin::{
    Batch, BatchMeta, Decision, FailurePolicy, Host, Limits, LoadError, Runner, Site, Stage,
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
    Host::new().expect("plugin host")
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
            FailurePolicy::Open,
            Limits::default(),
        )
        .expect("keep-all loads");
    let mut r = Runner::default();
    let d = r.on_batch(&h, &p, &batch("orders", 1000)).expect("call");
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
            FailurePolicy::Closed,
            Limits::default(),
        )
        .expect("topic-rename loads");
    let mut r = Runner::default();
    let d = r.on_batch(&h, &p, &batch("orders", 3)).expect("call");
    assert_eq!(d.len(), 3);
    for x in d {
        match x {
            Decision::Rename(t) => assert_eq!(t, "east.orders"),
            other => panic!("expected a rename, got {other:?}"),
        }
    }
    let err = h
        .load(
            "rename",
            &wasm,
            r#"{"bogus": 1}"#,
            sites(),
            FailurePolicy::Closed,
            Limits::default(),
        )
        .err()
        .expect("a bad config is refused");
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
            FailurePolicy::Open,
            Limits {
                call_timeout: Duration::from_millis(10),
                memory_bytes: 1 << 20,
            },
        )
        .err()
        .expect("refused")
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
    let reg = Registry::new(host(), sites());
    let v1 = reg
        .put(
            "p",
            component("keep-all"),
            String::new(),
            FailurePolicy::Open,
            Limits::default(),
        )
        .await
        .expect("v1");
    let v2 = reg
        .put(
            "p",
            component("topic-rename"),
            r#"{"template":"{topic}-x"}"#.into(),
            FailurePolicy::Closed,
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
            FailurePolicy::Open,
            Limits::default()
        )
        .await
        .is_err());
    assert_eq!(reg.get("p").map(|p| p.version), Some(v2.version));
    // A runner holding v1 switches to the current version at its next batch.
    let mut r = Runner::default();
    let current = reg.get("p").expect("loaded");
    let d = r
        .on_batch(reg.host(), &current, &batch("orders", 2))
        .expect("call");
    assert_eq!(d.len(), 2);
    assert!(
        d.iter()
            .all(|x| matches!(x, Decision::Rename(t) if t == "orders-x")),
        "{d:?}"
    );
    assert_eq!(reg.status().len(), 1);
    assert!(reg.remove("p").await);
    assert!(reg.get("p").is_none());
}
