//! `switchyard-perf`: a Kafka load generator on librdkafka, with the options of
//! Kafka's `kafka-producer-perf-test` / `kafka-consumer-perf-test`.
//!
//! It is a separate binary (not `switchyard perf`) so the proxy stays free of
//! a C client library; point it at any Kafka endpoint, Switchyard or not.
//!
//! ```text
//! switchyard-perf produce --bootstrap 127.0.0.1:9092 --topic t --num-records 1000000 \
//!     --record-size 1024 --throughput -1 --acks 1 --partitions 3
//! switchyard-perf consume --bootstrap 127.0.0.1:9092 --topic t --num-records 1000000
//! ```
//!
//! Produce latency is send → delivery report; consume latency is the record's
//! CreateTime → receipt (meaningful when producer and consumer share a clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "switchyard-perf",
    version,
    about = "Kafka load generator (librdkafka)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Produce records as fast as allowed and report throughput and latency.
    Produce(ProduceArgs),
    /// Consume records and report throughput and end-to-end latency.
    Consume(ConsumeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Kafka bootstrap servers (Switchyard's bootstrap address, or a broker).
    #[arg(long, short)]
    bootstrap: String,
    #[arg(long, short)]
    topic: String,
    /// Total records (over all producers / consumers).
    #[arg(long, default_value_t = 100_000)]
    num_records: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds between progress lines on stderr (0 = none).
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// Extra librdkafka properties, `key=value`, repeatable.
    #[arg(long = "property", short = 'X')]
    properties: Vec<String>,
}

#[derive(clap::Args, Clone)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Bytes of value per record.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records per second over all producers; -1 for unlimited.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    throughput: i64,
    /// acks: all, 1 or 0.
    #[arg(long, default_value = "1")]
    acks: String,
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    /// Producer batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: u64,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    /// Parallel producer instances (threads), each with its own connections.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Enable the idempotent producer.
    #[arg(long)]
    idempotence: bool,
}

#[derive(clap::Args, Clone)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Consumer group; default: a fresh group per run.
    #[arg(long)]
    group: Option<String>,
    /// Parallel consumers (threads) in the group.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Give up after this many seconds without reaching --num-records.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Consumer fetch.max.bytes-like knob: max.partition.fetch.bytes.
    #[arg(long, default_value_t = 1_048_576)]
    max_partition_fetch_bytes: u64,
}

/// What a run reports; the same fields in text and JSON.
#[derive(Serialize)]
struct Report {
    mode: &'static str,
    records: u64,
    bytes: u64,
    errors: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    avg: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn from(h: &Histogram<u64>) -> Self {
        // Recorded in microseconds, reported in milliseconds.
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            avg: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds")
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Produce(a) => produce(a),
        Cmd::Consume(a) => consume(a),
    };
    match result {
        Ok(report) => {
            let _ = report;
        }
        Err(e) => {
            eprintln!("switchyard-perf: {e:#}");
            std::process::exit(1);
        }
    }
}

fn base_config(c: &Common) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &c.bootstrap);
    for p in &c.properties {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--property `{p}` is not key=value"))?;
        cfg.set(k, v);
    }
    Ok(cfg)
}

fn print_report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        let l = &r.latency_ms;
        println!(
            "{} records {}, {:.1} records/sec ({:.2} MB/sec), {:.2} ms avg latency, {:.2} ms max latency, \
             {:.2} ms 50th, {:.2} ms 99th, {:.2} ms 99.9th, {} errors.",
            r.records,
            if r.mode == "produce" { "sent" } else { "consumed" },
            r.records_per_sec,
            r.mb_per_sec,
            l.avg,
            l.max,
            l.p50,
            l.p99,
            l.p999,
            r.errors
        );
    }
    Ok(())
}

/// Prints a progress line every `every` until `done` is reached.
fn progress(
    label: &'static str,
    counter: Arc<AtomicU64>,
    total: u64,
    every: u64,
) -> Option<thread::JoinHandle<()>> {
    if every == 0 {
        return None;
    }
    Some(thread::spawn(move || {
        let start = Instant::now();
        let mut last = (Instant::now(), 0u64);
        loop {
            // Poll often so the thread ends promptly when the run completes.
            for _ in 0..(every * 10) {
                thread::sleep(Duration::from_millis(100));
                if counter.load(Ordering::Relaxed) >= total {
                    return;
                }
            }
            let n = counter.load(Ordering::Relaxed);
            let window = last.0.elapsed().as_secs_f64();
            eprintln!(
                "progress: {label} {n}/{total} records, {:.0} records/sec in the last {:.0}s, {:.0}s elapsed",
                (n - last.1) as f64 / window.max(1e-9),
                window,
                start.elapsed().as_secs_f64()
            );
            last = (Instant::now(), n);
        }
    }))
}

struct DeliveryStats {
    start: Instant,
    latency: Mutex<Histogram<u64>>,
    delivered: Arc<AtomicU64>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryStats {}

impl ProducerContext for DeliveryStats {
    /// Send time as microseconds since `start`.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: Self::DeliveryOpaque) {
        let now = self.start.elapsed().as_micros() as u64;
        match result {
            Ok(_) => {
                if let Ok(mut h) = self.latency.lock() {
                    let _ = h.record(now.saturating_sub(*sent_us).max(1));
                }
            }
            Err((e, _)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.first_error.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

fn ensure_topic(cfg: &ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg.create()?;
    let rt = tokio_free_block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for r in rt {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Drives one future to completion on this thread (the admin API is async;
/// a runtime would be the only reason to pull one in).
fn tokio_free_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park_timeout(Duration::from_millis(50));
    }
}

fn produce(a: ProduceArgs) -> anyhow::Result<Report> {
    let c = &a.common;
    let mut cfg = base_config(c)?;
    if let Some(p) = a.partitions {
        ensure_topic(&cfg, &c.topic, p)?;
    }
    let acks = match a.acks.as_str() {
        "all" | "-1" => "all",
        "1" => "1",
        "0" => "0",
        other => bail!("--acks must be all, 1 or 0, not `{other}`"),
    };
    cfg.set("acks", acks)
        .set(
            "compression.type",
            match a.compression {
                Compression::None => "none",
                Compression::Gzip => "gzip",
                Compression::Snappy => "snappy",
                Compression::Lz4 => "lz4",
            },
        )
        .set("batch.size", a.batch_size.to_string())
        .set("linger.ms", a.linger_ms.to_string())
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", a.idempotence.to_string());
    // Override order: user properties last.
    for p in &c.properties {
        if let Some((k, v)) = p.split_once('=') {
            cfg.set(k, v);
        }
    }

    let producers = a.producers.max(1) as u64;
    let delivered = Arc::new(AtomicU64::new(0));
    let payload: Arc<Vec<u8>> =
        Arc::new((0..a.record_size).map(|i| b'a' + (i % 26) as u8).collect());
    let start = Instant::now();
    let prog = progress("produce", delivered.clone(), c.num_records, c.progress_secs);
    let mut handles = Vec::new();
    for i in 0..producers {
        let n = c.num_records / producers + u64::from(i < c.num_records % producers);
        let rate = if a.throughput < 0 {
            -1.0
        } else {
            a.throughput as f64 / producers as f64
        };
        let cfg = cfg.clone();
        let ctx = DeliveryStats {
            start,
            latency: Mutex::new(new_histogram()),
            delivered: delivered.clone(),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        };
        let (topic, payload) = (c.topic.clone(), payload.clone());
        handles.push(thread::spawn(
            move || -> anyhow::Result<(Histogram<u64>, u64, Option<String>)> {
                let producer: BaseProducer<DeliveryStats> = cfg.create_with_context(ctx)?;
                let t0 = Instant::now();
                let mut key = [0u8; 8];
                for seq in 0..n {
                    if rate > 0.0 {
                        // Throttle like kafka-producer-perf-test: never ahead of schedule.
                        let due = Duration::from_secs_f64(seq as f64 / rate);
                        let ahead = due.saturating_sub(t0.elapsed());
                        if !ahead.is_zero() {
                            producer.poll(Duration::ZERO);
                            thread::sleep(ahead);
                        }
                    }
                    key.copy_from_slice(&(seq * producers + i).to_be_bytes());
                    let sent = Box::new(producer.context().start.elapsed().as_micros() as u64);
                    let mut rec = BaseRecord::with_opaque_to(&topic, sent)
                        .key(&key[..])
                        .payload(&payload[..]);
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                r,
                            )) => {
                                rec = r;
                                producer.poll(Duration::from_millis(10));
                            }
                            Err((e, _)) => bail!("produce failed: {e}"),
                        }
                    }
                    producer.poll(Duration::ZERO);
                }
                producer.flush(Duration::from_secs(120))?;
                let ctx = producer.context();
                let h = ctx
                    .latency
                    .lock()
                    .map(|h| h.clone())
                    .unwrap_or_else(|_| new_histogram());
                let first = ctx.first_error.lock().ok().and_then(|f| f.clone());
                Ok((h, ctx.errors.load(Ordering::Relaxed), first))
            },
        ));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    for h in handles {
        let (lat, errs, first) = h
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        hist.add(&lat).context("merging histograms")?;
        errors += errs;
        if let Some(e) = first {
            eprintln!("delivery error (first of {errs} in one producer): {e}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    delivered.store(u64::MAX, Ordering::Relaxed);
    if let Some(p) = prog {
        let _ = p.join();
    }
    let ok = c.num_records - errors;
    let bytes = ok * a.record_size as u64;
    let report = Report {
        mode: "produce",
        records: c.num_records,
        bytes,
        errors,
        seconds: secs,
        records_per_sec: ok as f64 / secs,
        mb_per_sec: bytes as f64 / secs / (1024.0 * 1024.0),
        latency_ms: Latency::from(&hist),
    };
    print_report(&report, c.json)?;
    if errors > 0 {
        bail!("{errors} of {} records failed", c.num_records);
    }
    Ok(report)
}

fn consume(a: ConsumeArgs) -> anyhow::Result<Report> {
    let c = &a.common;
    let mut cfg = base_config(c)?;
    let group = a.group.clone().unwrap_or_else(|| {
        format!(
            "switchyard-perf-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
    });
    cfg.set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "max.partition.fetch.bytes",
            a.max_partition_fetch_bytes.to_string(),
        )
        .set("fetch.wait.max.ms", "100");
    for p in &c.properties {
        if let Some((k, v)) = p.split_once('=') {
            cfg.set(k, v);
        }
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let prog = progress("consume", consumed.clone(), c.num_records, c.progress_secs);
    let mut start: Option<Instant> = None;
    let first_seen = Arc::new(Mutex::new(start));
    let mut handles = Vec::new();
    for _ in 0..a.consumers.max(1) {
        let cfg = cfg.clone();
        let (topic, total) = (c.topic.clone(), c.num_records);
        let (consumed, bytes, first_seen) = (consumed.clone(), bytes.clone(), first_seen.clone());
        handles.push(thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
            let consumer: BaseConsumer = cfg.create()?;
            consumer.subscribe(&[&topic])?;
            let mut hist = new_histogram();
            while consumed.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let msg = msg?;
                if let Ok(mut f) = first_seen.lock() {
                    f.get_or_insert_with(Instant::now);
                }
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                if let Some(ts) = msg.timestamp().to_millis() {
                    let _ = hist.record(((now_ms - ts).max(0) as u64 * 1000).max(1));
                }
                bytes.fetch_add(msg.payload_len() as u64, Ordering::Relaxed);
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(hist)
        }));
    }
    let mut hist = new_histogram();
    for h in handles {
        let lat = h
            .join()
            .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
        hist.add(&lat).context("merging histograms")?;
    }
    let end = Instant::now();
    let n = consumed.load(Ordering::Relaxed);
    consumed.store(u64::MAX, Ordering::Relaxed);
    if let Some(p) = prog {
        let _ = p.join();
    }
    if let Ok(f) = first_seen.lock() {
        start = *f;
    }
    // Throughput counts from the first record, so group join time (seconds on
    // Tansu) does not dilute it.
    let secs = start
        .map(|s| (end - s).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-9);
    let b = bytes.load(Ordering::Relaxed);
    let report = Report {
        mode: "consume",
        records: n,
        bytes: b,
        errors: 0,
        seconds: secs,
        records_per_sec: n as f64 / secs,
        mb_per_sec: b as f64 / secs / (1024.0 * 1024.0),
        latency_ms: Latency::from(&hist),
    };
    print_report(&report, c.json)?;
    if n < c.num_records {
        bail!(
            "consumed only {n} of {} records within {}s",
            c.num_records,
            a.timeout_secs
        );
    }
    Ok(report)
}
