//! One pipelined connection to one upstream broker.
//!
//! Requests are written in the order `send` is called and the broker answers in
//! that order, so a FIFO of waiting callers is all the bookkeeping needed. The
//! connection assigns its own correlation ids (the client's are restored by the
//! session) and checks every response against the FIFO head: a mismatch means
//! the stream is out of sync, and the connection is torn down rather than
//! handing a caller somebody else's response.
//!
//! A writer task batches queued requests into one flush; a reader task routes
//! responses. When either side fails, every waiting caller gets an error and the
//! connection is marked closed so its owner reconnects.
//!
//! A request that times out retires its connection at once, as Kafka's own
//! clients do: the broker is stuck or gone, and a late answer must never meet
//! a FIFO that has moved on. Closing stops the reader too, so nothing read
//! after the close is taken for a protocol error.
//!
//! A connection authenticated with SASL (`upstream::auth`) whose broker
//! limits the session (KIP-368) reports itself closed well before the
//! session ends, so its owner opens a new one; when the owner lets go of it,
//! the answers still due on it are awaited before it closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::frame_io::{FrameReader, FrameWriter, Growth};
use crate::codec::FrameError;

/// Queue depth toward one broker; senders wait (backpressure) beyond it.
const SEND_QUEUE: usize = 256;

/// How long a connection its owner let go of waits for answers still due
/// (callers' own deadlines are shorter; this only bounds a stuck broker).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The share of a SASL session's lifetime a connection is used for: Kafka's
/// clients re-authenticate at 85–95% of it; a new connection is opened here.
const SESSION_USE: f64 = 0.85;

#[derive(Debug, thiserror::Error, Clone)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    /// Switchyard's SASL authentication to the broker failed.
    #[error("authentication to {addr} failed: {reason}")]
    Auth { addr: String, reason: String },
    #[error("connection to {0} closed")]
    Closed(String),
    #[error("request to {0} timed out")]
    Timeout(String),
    #[error("upstream {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("no upstream broker known for {0}")]
    NoBroker(String),
    /// A connect to the broker failed lately; it is not retried before its
    /// backoff ends (requests for it get retriable errors meanwhile).
    #[error("{0} down (backing off)")]
    Down(String),
    /// The route is switching sites (failover): neither site may serve it
    /// until the switch completes, so nothing is sent anywhere meanwhile.
    #[error("route {0} is switching sites")]
    Switching(String),
}

impl UpstreamError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Auth { .. } => "auth",
            UpstreamError::Closed(_) => "closed",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::NoBroker(_) => "no_broker",
            UpstreamError::Down(_) => "down",
            UpstreamError::Switching(_) => "switching",
        }
    }
}

/// What a connection tells its owner about the broker behind it.
pub struct ConnHooks {
    /// Once, when the connection fails under traffic (`timeout`, `closed`:
    /// the broker reset or closed it with requests waiting, or answered
    /// garbage).
    pub failed: Box<dyn Fn(&'static str) + Send + Sync>,
    /// Once, on the first answer (the broker is alive, not merely accepting
    /// connections, which a frozen process still does).
    pub answered: Box<dyn Fn() + Send + Sync>,
}

/// How a connection is opened and what may cut it.
pub struct ConnOptions {
    pub connect_timeout: Duration,
    pub max_frame_bytes: u32,
    pub open_gauge: IntGauge,
    /// Cuts the connection when it changes (a site fenced by failover).
    pub site_cut: Option<watch::Receiver<u64>>,
    /// Cuts the connection when it changes (its broker left the cluster).
    pub broker_cut: Option<watch::Receiver<u64>>,
    pub hooks: Option<Arc<ConnHooks>>,
    /// The site's TLS: the handshake counts against `connect_timeout`.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// The site's SASL: authenticating counts against `connect_timeout` too.
    pub sasl: Option<Arc<crate::sasl::client::ClientSasl>>,
}

struct Outgoing {
    frame: Bytes,
    reply: Option<(oneshot::Sender<Bytes>, Histogram)>,
}

struct Waiting {
    correlation_id: i32,
    reply: oneshot::Sender<Bytes>,
    started: Instant,
    latency: Histogram,
}

/// Requests in flight, in wire order.
#[derive(Default)]
struct InFlight {
    waiting: VecDeque<Waiting>,
    /// Correlation ids of requests sent without expecting an answer (acks=0
    /// Produce). Kafka never answers them, but some brokers do (Tansu); such
    /// an answer is recognised here and dropped instead of being taken for a
    /// protocol error. Bounded: against a broker that never answers, the
    /// oldest ids are simply forgotten.
    unanswered: VecDeque<i32>,
}

/// How many unanswered correlation ids are remembered.
const UNANSWERED_MEMORY: usize = 4096;

/// Handle to a connection; cheap to clone.
#[derive(Clone)]
pub struct UpstreamConn {
    addr: Arc<str>,
    tx: mpsc::Sender<Outgoing>,
    guard: Arc<CloseGuard>,
    /// Past this the connection reports itself closed (its SASL session
    /// ends soon after).
    retire_at: Option<Instant>,
}

/// A response that will arrive later.
pub struct PendingResponse {
    rx: oneshot::Receiver<Bytes>,
    addr: Arc<str>,
    guard: Arc<CloseGuard>,
}

impl PendingResponse {
    /// [`wait`](Self::wait) up to a deadline: a request split over several
    /// brokers waits for its parts in turn, and its timeout covers them all,
    /// not each part anew. An answer already in is taken even past it.
    pub async fn wait_until(self, deadline: tokio::time::Instant) -> Result<Bytes, UpstreamError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait(left).await
    }

    /// Waits for the response frame (correlation id first, as read off the
    /// wire). On timeout the connection is retired: its other waiters fail
    /// at once and its owner reconnects.
    pub async fn wait(self, timeout: Duration) -> Result<Bytes, UpstreamError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(UpstreamError::Closed(self.addr.to_string())),
            Err(_) => {
                if !self.guard.closed.load(Ordering::Acquire) {
                    tracing::info!(upstream = %self.addr, timeout_ms = timeout.as_millis() as u64,
                        "upstream request timed out; connection retired");
                    self.guard.fail("timeout");
                }
                Err(UpstreamError::Timeout(self.addr.to_string()))
            }
        }
    }
}

impl UpstreamConn {
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        max_frame_bytes: u32,
        open_gauge: IntGauge,
        tls: Option<Arc<crate::tls::ClientTls>>,
        sasl: Option<Arc<crate::sasl::client::ClientSasl>>,
    ) -> Result<Self, UpstreamError> {
        Self::open(
            addr,
            ConnOptions {
                connect_timeout,
                max_frame_bytes,
                open_gauge,
                site_cut: None,
                broker_cut: None,
                hooks: None,
                tls,
                sasl,
            },
        )
        .await
    }

    /// Opens a connection with everything that may cut it.
    pub async fn open(addr: &str, o: ConnOptions) -> Result<Self, UpstreamError> {
        let err = |reason: String| UpstreamError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let connect_timeout = o.connect_timeout;
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| err(format!("timed out after {connect_timeout:?}")))?
            .map_err(|e| err(e.to_string()))?;
        // Kafka traffic is request/response; Nagle only adds latency here.
        let _ = stream.set_nodelay(true);
        let sasl = o.sasl.clone();
        let max_frame = o.max_frame_bytes;
        macro_rules! authenticate {
            ($stream:expr) => {
                match &sasl {
                    None => None,
                    Some(sasl) => tokio::time::timeout_at(
                        deadline,
                        super::auth::authenticate($stream, addr, sasl, max_frame),
                    )
                    .await
                    .map_err(|_| err(format!("SASL timed out after {connect_timeout:?}")))??,
                }
            };
        }
        match o.tls.clone() {
            None => {
                let mut stream = stream;
                let session = authenticate!(&mut stream);
                let (rd, wr) = stream.into_split();
                Ok(Self::start(addr, rd, wr, o, session))
            }
            Some(tls) => {
                let sock = std::os::fd::AsFd::as_fd(&stream)
                    .try_clone_to_owned()
                    .map(socket2::Socket::from)
                    .map_err(|e| err(e.to_string()))?;
                let mut s = tokio::time::timeout_at(deadline, tls.connect(addr, stream))
                    .await
                    .map_err(|_| err(format!("TLS handshake timed out after {connect_timeout:?}")))?
                    .map_err(|e| err(format!("TLS handshake failed: {e}")))?;
                let session = authenticate!(&mut s);
                let (rd, wr) = tokio::io::split(s);
                Ok(Self::start(addr, TlsRead { rd, sock }, wr, o, session))
            }
        }
    }

    /// The connection's tasks over an open stream's two halves; `session`:
    /// how long its SASL authentication lasts, if limited.
    fn start<R, W>(addr: &str, rd: R, wr: W, o: ConnOptions, session: Option<Duration>) -> Self
    where
        R: ReadSide,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let addr: Arc<str> = Arc::from(addr);
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let waiting = Arc::new(Mutex::new(InFlight::default()));
        o.open_gauge.inc();
        let guard = Arc::new(CloseGuard {
            closed: AtomicBool::new(false),
            waiting: waiting.clone(),
            gauge: o.open_gauge,
            stop: watch::Sender::new(false),
            hooks: o.hooks,
            answered: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
        });
        tokio::spawn(write_loop(wr, rx, waiting.clone(), guard.clone()));
        tokio::spawn(read_loop(
            rd,
            addr.clone(),
            o.max_frame_bytes,
            waiting,
            guard.clone(),
            [o.site_cut, o.broker_cut],
        ));
        let retire_at = session.map(|d| Instant::now() + d.mul_f64(SESSION_USE));
        UpstreamConn {
            addr,
            tx,
            guard,
            retire_at,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_closed(&self) -> bool {
        self.guard.closed.load(Ordering::Acquire)
            || self.tx.is_closed()
            || self.retire_at.is_some_and(|t| Instant::now() >= t)
    }

    /// Queues a request frame (header + body, no length prefix; the correlation
    /// id at bytes 4..8 is overwritten). With `latency = None` no response is
    /// expected (acks=0 produce) and `None` is returned.
    pub async fn send(
        &self,
        frame: Bytes,
        latency: Option<Histogram>,
    ) -> Result<Option<PendingResponse>, UpstreamError> {
        if frame.len() < crate::codec::MIN_REQUEST_BYTES {
            return Err(UpstreamError::Protocol {
                addr: self.addr.to_string(),
                reason: "request frame shorter than a header".into(),
            });
        }
        let (reply, pending) = match latency {
            Some(h) => {
                let (tx, rx) = oneshot::channel();
                (
                    Some((tx, h)),
                    Some(PendingResponse {
                        rx,
                        addr: self.addr.clone(),
                        guard: self.guard.clone(),
                    }),
                )
            }
            None => (None, None),
        };
        self.tx
            .send(Outgoing { frame, reply })
            .await
            .map_err(|_| UpstreamError::Closed(self.addr.to_string()))?;
        Ok(pending)
    }
}

/// Fails every waiting caller, marks the connection closed and stops both
/// tasks, once.
struct CloseGuard {
    closed: AtomicBool,
    waiting: Arc<Mutex<InFlight>>,
    gauge: IntGauge,
    /// Set on close: the writer lets go of the socket, the reader stops.
    stop: watch::Sender<bool>,
    hooks: Option<Arc<ConnHooks>>,
    answered: AtomicBool,
    /// Closed because the broker failed: the socket is reset, not shut
    /// down, so requests still unsent in the kernel's buffer are dropped,
    /// never delivered once the network heals (after a failover has moved
    /// the writes elsewhere).
    failed: AtomicBool,
    /// Told when the last answer due was delivered (a connection let go
    /// of waits for that before it closes).
    drained: tokio::sync::Notify,
}

impl CloseGuard {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.gauge.dec();
        }
        self.stop.send_replace(true);
        // Dropping the senders wakes every caller with `Closed`.
        if let Ok(mut w) = self.waiting.lock() {
            w.waiting.clear();
        }
    }

    /// Closes because the broker failed (not because we let go of it).
    fn fail(&self, reason: &'static str) {
        let first = !self.closed.load(Ordering::Acquire);
        self.failed.store(true, Ordering::Release);
        self.close();
        if first {
            if let Some(h) = &self.hooks {
                (h.failed)(reason);
            }
        }
    }

    fn answered(&self) {
        if !self.answered.swap(true, Ordering::AcqRel) {
            if let Some(h) = &self.hooks {
                (h.answered)();
            }
        }
    }

    /// Whether requests are waiting for answers (a peer close then is a
    /// failure, not an idle connection being reaped).
    fn busy(&self) -> bool {
        self.waiting
            .lock()
            .map(|w| !w.waiting.is_empty())
            .unwrap_or(false)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    waiting: Arc<Mutex<InFlight>>,
    guard: Arc<CloseGuard>,
) {
    let mut w = FrameWriter::new(wr);
    let mut next_id: i32 = 0;
    let mut stop = guard.stop.subscribe();
    'outer: loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(first) = first else {
            // The owner let go (retired, or its client left): the answers
            // still due are awaited, not failed.
            drain(&waiting, &guard, &mut stop).await;
            break;
        };
        let mut item = Some(first);
        while let Some(out) = item.take() {
            if guard.closed.load(Ordering::Acquire) {
                break 'outer;
            }
            next_id = next_id.wrapping_add(1) & i32::MAX;
            // Registered before the bytes go out, so the reader can never see
            // a response it does not expect.
            if !register(&waiting, next_id, out.reply) {
                break 'outer;
            }
            // The client's frame with the connection's correlation id.
            let f = &out.frame;
            w.push(&[&f[0..4], &next_id.to_be_bytes()], f.slice(8..));
            if w.batch_full() && w.flush().await.is_err() {
                guard.fail("closed");
                break 'outer;
            }
            item = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            guard.fail("closed");
            break;
        }
    }
    guard.close();
    if !guard.failed.load(Ordering::Acquire) {
        let _ = w.shutdown().await;
    }
}

/// Waits until no answer is due on the connection, it is closed, or
/// `DRAIN_LIMIT` passed.
async fn drain(waiting: &Mutex<InFlight>, guard: &CloseGuard, stop: &mut watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    loop {
        if waiting.lock().map(|q| q.waiting.is_empty()).unwrap_or(true) {
            return;
        }
        tokio::select! {
            _ = guard.drained.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Records a request about to be written: a waiter when an answer is
/// expected, else its id among the unanswered. False if the lock is poisoned.
fn register(
    waiting: &Mutex<InFlight>,
    id: i32,
    reply: Option<(oneshot::Sender<Bytes>, Histogram)>,
) -> bool {
    let Ok(mut q) = waiting.lock() else {
        return false;
    };
    match reply {
        Some((reply, latency)) => q.waiting.push_back(Waiting {
            correlation_id: id,
            reply,
            started: Instant::now(),
            latency,
        }),
        None => {
            if q.unanswered.len() >= UNANSWERED_MEMORY {
                q.unanswered.pop_front();
            }
            q.unanswered.push_back(id);
        }
    }
    true
}

/// A connection's read side, which can also make the socket reset (RST)
/// rather than close (FIN) when it is cut.
trait ReadSide: AsyncRead + Unpin + Send + 'static {
    fn reset_on_close(&self);
}

impl ReadSide for tokio::net::tcp::OwnedReadHalf {
    fn reset_on_close(&self) {
        let _ = self.as_ref().set_zero_linger();
    }
}

/// A TLS connection's read half, with its socket (a second descriptor, as
/// the half hides the stream).
struct TlsRead {
    rd: tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    sock: socket2::Socket,
}

impl AsyncRead for TlsRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl ReadSide for TlsRead {
    fn reset_on_close(&self) {
        let _ = self.sock.set_linger(Some(Duration::ZERO));
    }
}

async fn read_loop<R: ReadSide>(
    rd: R,
    addr: Arc<str>,
    max_frame_bytes: u32,
    waiting: Arc<Mutex<InFlight>>,
    guard: Arc<CloseGuard>,
    cuts: [Option<watch::Receiver<u64>>; 2],
) {
    let mut stop = guard.stop.subscribe();
    let [mut site_cut, mut broker_cut] = cuts;
    let mut rd = FrameReader::new(rd, max_frame_bytes, Growth::Whole);
    loop {
        let frame = tokio::select! {
            f = rd.next() => f,
            // Closed by us (dropped, timed out, writer failed): whatever the
            // broker still sends belongs to requests nobody waits for.
            _ = stop.wait_for(|s| *s) => {
                if guard.failed.load(Ordering::Acquire) {
                    rd.get_mut().reset_on_close();
                }
                break;
            }
            _ = changed(&mut site_cut) => {
                // Reset, not FIN: the kernel must drop what is still unsent
                // rather than deliver it once the network heals.
                rd.get_mut().reset_on_close();
                tracing::info!(upstream = %addr, "connection cut (site fenced by failover)");
                break;
            }
            _ = changed(&mut broker_cut) => {
                rd.get_mut().reset_on_close();
                tracing::debug!(upstream = %addr, "connection cut (broker left the cluster)");
                guard.fail("closed");
                break;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(FrameError::Closed) => {
                tracing::debug!(upstream = %addr, "upstream closed the connection");
                if guard.busy() {
                    guard.fail("closed");
                }
                break;
            }
            Err(e) => {
                tracing::warn!(upstream = %addr, error = %e, "upstream read failed");
                guard.fail("closed");
                break;
            }
        };
        if frame.len() < 4 {
            tracing::warn!(upstream = %addr, "upstream sent a frame without correlation id; connection dropped");
            guard.fail("closed");
            break;
        }
        let corr = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let Ok(mut q) = waiting.lock() else {
            break;
        };
        if q.waiting.front().is_some_and(|w| w.correlation_id == corr) {
            if let Some(w) = q.waiting.pop_front() {
                let empty = q.waiting.is_empty();
                drop(q);
                w.latency.observe(w.started.elapsed().as_secs_f64());
                let _ = w.reply.send(frame);
                guard.answered();
                if empty {
                    // A stored permit: a drain that checks later still sees it.
                    guard.drained.notify_one();
                }
            }
            continue;
        }
        if let Some(i) = q.unanswered.iter().position(|&id| id == corr) {
            // An answer Kafka would not have sent (acks=0); the client expects none.
            q.unanswered.remove(i);
            tracing::trace!(upstream = %addr, correlation_id = corr, "dropped answer to an acks=0 request");
            continue;
        }
        let expected = q.waiting.front().map(|w| w.correlation_id);
        drop(q);
        if guard.closed.load(Ordering::Acquire) {
            break;
        }
        tracing::warn!(upstream = %addr, ?expected, got = corr,
            "unexpected upstream response (out of order or unsolicited); connection dropped");
        guard.fail("closed");
        break;
    }
    guard.close();
}

/// Resolves when `cut` changes; never without one (or once its sender is gone).
async fn changed(cut: &mut Option<watch::Receiver<u64>>) {
    match cut.as_mut() {
        Some(c) => {
            if c.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A broker that reads one request and answers only when told: a frozen
    /// (SIGSTOPped) broker that wakes up later.
    async fn frozen_broker() -> (
        String,
        tokio::task::JoinHandle<Vec<&'static str>>,
        oneshot::Sender<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (wake, woken) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.expect("length");
            let mut req = vec![0u8; i32::from_be_bytes(len) as usize];
            s.read_exact(&mut req).await.expect("request");
            let _ = woken.await;
            // The late answer, correlation id as sent.
            let answer = [&4i32.to_be_bytes()[..], &req[4..8]].concat();
            let _ = s.write_all(&answer).await;
            // What the proxy does with the connection now: closed means EOF.
            let mut rest = [0u8; 64];
            let eof = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await;
            seen.push(match eof {
                Ok(Ok(0)) | Ok(Err(_)) => "closed",
                Ok(Ok(_)) => "more data",
                Err(_) => "left open",
            });
            seen
        });
        (addr, task, wake)
    }

    fn request() -> Bytes {
        // ApiVersions v0 header: key, version, correlation id, client id (null).
        Bytes::from_static(&[0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
    }

    /// Sends `request()` expecting an answer.
    async fn send_one(conn: &UpstreamConn) -> PendingResponse {
        let latency = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t"))
            .expect("histogram");
        conn.send(request(), Some(latency))
            .await
            .expect("send")
            .expect("a response is expected")
    }

    /// Regression: a request that timed out left its connection open; the
    /// broker's late answer then met a FIFO that had moved on (or been
    /// cleared) and was logged as "unexpected upstream response", closing a
    /// connection other requests were using. The timeout must retire the
    /// connection at once, and the late answer must be dropped quietly.
    #[tokio::test]
    async fn timed_out_request_retires_its_connection() {
        let (addr, broker, wake) = frozen_broker().await;
        let failures = Arc::new(Mutex::new(Vec::new()));
        let f = failures.clone();
        let conn = UpstreamConn::open(
            &addr,
            ConnOptions {
                connect_timeout: Duration::from_secs(5),
                max_frame_bytes: 1 << 20,
                open_gauge: IntGauge::new("test_open", "test").expect("gauge"),
                site_cut: None,
                broker_cut: None,
                hooks: Some(Arc::new(ConnHooks {
                    failed: Box::new(move |r| f.lock().expect("lock").push(r)),
                    answered: Box::new(|| {}),
                })),
                tls: None,
                sasl: None,
            },
        )
        .await
        .expect("connect");
        let pending = send_one(&conn).await;
        let waited = pending.wait(Duration::from_millis(200)).await;
        assert!(
            matches!(waited, Err(UpstreamError::Timeout(_))),
            "{:?}",
            waited.err()
        );
        assert!(
            conn.is_closed(),
            "a timed-out request must retire its connection"
        );
        let _ = wake.send(());
        let seen = broker.await.expect("broker task");
        assert_eq!(
            seen,
            vec!["closed"],
            "the broker must see the connection closed"
        );
        assert_eq!(
            *failures.lock().expect("lock"),
            vec!["timeout"],
            "one failure, the timeout"
        );
    }

    /// A connection its owner let go of (retired before its SASL session
    /// ends) still delivers the answer due on it, then closes.
    #[tokio::test]
    async fn a_connection_let_go_of_delivers_what_is_due_then_closes() {
        let (addr, broker, wake) = frozen_broker().await;
        let conn = UpstreamConn::connect(
            &addr,
            Duration::from_secs(5),
            1 << 20,
            IntGauge::new("test_open", "test").expect("gauge"),
            None,
            None,
        )
        .await
        .expect("connect");
        let pending = send_one(&conn).await;
        drop(conn);
        let _ = wake.send(());
        let answer = pending.wait(Duration::from_secs(5)).await;
        assert!(
            answer.is_ok(),
            "the answer due was lost: {:?}",
            answer.err()
        );
        assert_eq!(broker.await.expect("broker task"), vec!["closed"]);
    }
}
