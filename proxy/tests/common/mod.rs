//! Test harness: real brokers (Apache Kafka in KRaft mode, Tansu) and the real
//! `switchyard` binary, each a child process on free loopback ports, stopped
//! when the handle drops.
//!
//! Tansu comes from `scripts/setup.sh` (`.tools/bin/tansu`) or `$TANSU_BIN`;
//! Apache Kafka from the same script (`.tools/kafka/libs`), started through
//! the suite's harness `tests/kafka_cluster.py` (one KRaft node).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/tansu");
    assert!(
        p.exists(),
        "Tansu not found at {}: run scripts/setup.sh (or set TANSU_BIN)",
        p.display()
    );
    p
}

/// A port that is free now (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A base port `p` such that `p..=p+n` are all free now.
pub fn free_port_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > 65535 - n - 1 {
            continue;
        }
        let held: Vec<_> = (0..=n)
            .map(|i| TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if held.iter().all(|r| r.is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free ports found");
}

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The process's own temp dir (config, log) goes with it, unless a
        // failing test may want to read the log.
        if let Some(dir) = self.log.parent() {
            if std::thread::panicking() {
                eprintln!("logs are kept in {}", dir.display());
            } else if dir.starts_with(std::env::temp_dir()) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

pub struct Tansu {
    pub proc: Proc,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Tansu {
        let port = free_port();
        let dir = tempdir();
        let log = dir.join("tansu.log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tansu");
        let t = Tansu {
            proc: Proc { child, log },
            port,
        };
        wait_for(
            "tansu to accept connections",
            Duration::from_secs(20),
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        t
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The broker kinds a test runs on: both, unless `SWITCHYARD_BROKERS`
/// (e.g. `kafka`) narrows them.
pub fn broker_kinds() -> Vec<BrokerKind> {
    let only = std::env::var("SWITCHYARD_BROKERS").unwrap_or_default();
    [BrokerKind::Kafka, BrokerKind::Tansu]
        .into_iter()
        .filter(|k| only.is_empty() || only.split(',').any(|o| o == k.name()))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Kafka,
    Tansu,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Kafka => "kafka",
            BrokerKind::Tansu => "tansu",
        }
    }
}

/// A started single-node cluster of either kind.
pub enum Broker {
    Kafka(Kafka),
    Tansu(Tansu),
}

impl Broker {
    pub fn start(kind: BrokerKind) -> Broker {
        match kind {
            BrokerKind::Kafka => Broker::Kafka(Kafka::start()),
            BrokerKind::Tansu => Broker::Tansu(Tansu::start()),
        }
    }
    pub fn addr(&self) -> String {
        match self {
            Broker::Kafka(k) => k.addr(),
            Broker::Tansu(t) => t.addr(),
        }
    }
    pub fn kind(&self) -> BrokerKind {
        match self {
            Broker::Kafka(_) => BrokerKind::Kafka,
            Broker::Tansu(_) => BrokerKind::Tansu,
        }
    }
}

/// One Apache Kafka KRaft node (combined broker and controller), run by
/// `tests/kafka_cluster.py`; its storage is removed when the handle drops.
pub struct Kafka {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Kafka {
    pub fn start() -> Kafka {
        use std::io::BufRead;

        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let port = free_port();
        let dir = tempdir();
        let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(root.join("tests/kafka_cluster.py"))
            .args([
                "--nodes",
                "1",
                "--kill-on-exit",
                "--port",
                &port.to_string(),
                "--dir",
            ])
            .arg(dir.join("kafka"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("harness.log")).expect("log file"))
            .spawn()
            .expect("start tests/kafka_cluster.py (python3)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("ready ") {
                    let _ = tx.send(());
                }
            }
        });
        let k = Kafka { child, port, dir };
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let log = std::fs::read_to_string(k.dir.join("harness.log")).unwrap_or_default();
            panic!("Apache Kafka did not start within 120 s:\n{log}");
        }
        k
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        // SIGTERM: the harness kills its JVM before exiting (a SIGKILL of
        // the harness would leave the JVM, which runs in its own session).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("Kafka's logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Switchyard {
    pub proc: Proc,
    pub bootstrap: SocketAddr,
    pub admin: SocketAddr,
    pub nodes: u16,
}

impl Switchyard {
    /// Starts the binary with the given upstream and extra YAML appended.
    pub fn start(upstream: &str, extra_yaml: &str) -> Switchyard {
        let nodes = 3;
        let base = free_port_run(nodes);
        let admin_port = free_port();
        let dir = tempdir();
        let cfg = dir.join("switchyard.yaml");
        let yaml = format!(
            "cluster_id: test-cluster\nlisten:\n  bind: 127.0.0.1:{base}\n  virtual_nodes: {nodes}\n\
             sites:\n  - name: local\n    bootstrap: [\"{upstream}\"]\nadmin:\n  bind: 127.0.0.1:{admin_port}\n{extra_yaml}"
        );
        std::fs::write(&cfg, yaml).expect("write config");
        let log = dir.join("switchyard.log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start switchyard");
        let s = Switchyard {
            proc: Proc { child, log },
            bootstrap: SocketAddr::from(([127, 0, 0, 1], base)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            nodes,
        };
        wait_for("switchyard /readyz", Duration::from_secs(30), || {
            (http_get(s.admin, "/readyz").0 == 200).then_some(())
        });
        s
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").1
    }
}

pub fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "switchyard-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Minimal HTTP/1.1 GET: (status, body). Status 0 when nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A raw Kafka protocol client over a blocking socket.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Raw { s }
    }

    pub fn encode<T: Encodable>(api: ApiKey, version: i16, corr: i32, body: &T) -> Bytes {
        let mut h = RequestHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = corr;
        h.client_id = Some(StrBytes::from_static_str("raw-test"));
        let mut buf = BytesMut::new();
        h.encode(&mut buf, api.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    /// Creates a topic through this connection and checks it worked.
    pub fn create_topic(&mut self, topic: &kafka_protocol::messages::TopicName, partitions: i32) {
        use kafka_protocol::messages::create_topics_request::CreatableTopic;
        use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
        let mut req = CreateTopicsRequest::default();
        let mut t = CreatableTopic::default();
        t.name = topic.clone();
        t.num_partitions = partitions;
        t.replication_factor = 1;
        req.topics.push(t);
        req.timeout_ms = 10_000;
        self.send(ApiKey::CreateTopics, 5, 1, &req);
        let (_, created): (i32, CreateTopicsResponse) = self.recv(ApiKey::CreateTopics, 5);
        assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    }

    pub fn send_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.s.write_all(&(frame.len() as i32).to_be_bytes())?;
        self.s.write_all(frame)
    }

    pub fn send<T: Encodable>(&mut self, api: ApiKey, version: i16, corr: i32, body: &T) {
        let f = Self::encode(api, version, corr, body);
        self.send_frame(&f).expect("send");
    }

    /// Reads one response frame; `None` if the peer closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let n = i32::from_be_bytes(len) as usize;
        let mut buf = vec![0u8; n];
        self.s.read_exact(&mut buf).ok()?;
        Some(Bytes::from(buf))
    }

    pub fn recv<T: Decodable>(&mut self, api: ApiKey, version: i16) -> (i32, T) {
        let mut f = self.read_frame().expect("response frame");
        let h =
            ResponseHeader::decode(&mut f, api.response_header_version(version)).expect("header");
        let body = T::decode(&mut f, version).expect("body");
        (h.correlation_id, body)
    }

    /// True when the peer closes the connection within the read timeout.
    pub fn closed_by_peer(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            Ok(_) => false,
        }
    }
}
