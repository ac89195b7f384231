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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntGauge};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::codec::{read_frame, FrameError};

/// Queue depth toward one broker; senders wait (backpressure) beyond it.
const SEND_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error, Clone)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to {0} closed")]
    Closed(String),
    #[error("request to {0} timed out")]
    Timeout(String),
    #[error("upstream {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("no upstream broker known for {0}")]
    NoBroker(String),
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
    closed: Arc<AtomicBool>,
}

/// A response that will arrive later.
pub struct PendingResponse {
    rx: oneshot::Receiver<Bytes>,
    addr: Arc<str>,
}

impl PendingResponse {
    /// Waits for the response frame (correlation id first, as read off the wire).
    pub async fn wait(self, timeout: Duration) -> Result<Bytes, UpstreamError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(UpstreamError::Closed(self.addr.to_string())),
            Err(_) => Err(UpstreamError::Timeout(self.addr.to_string())),
        }
    }
}

impl UpstreamConn {
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        max_frame_bytes: u32,
        open_gauge: IntGauge,
    ) -> Result<Self, UpstreamError> {
        Self::connect_severable(addr, connect_timeout, max_frame_bytes, open_gauge, None).await
    }

    /// `connect`, and the connection is reset (unsent requests dropped) when
    /// `sever` changes.
    pub async fn connect_severable(
        addr: &str,
        connect_timeout: Duration,
        max_frame_bytes: u32,
        open_gauge: IntGauge,
        sever: Option<tokio::sync::watch::Receiver<u64>>,
    ) -> Result<Self, UpstreamError> {
        let err = |reason: String| UpstreamError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| err(format!("timed out after {connect_timeout:?}")))?
            .map_err(|e| err(e.to_string()))?;
        // Kafka traffic is request/response; Nagle only adds latency here.
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let addr: Arc<str> = Arc::from(addr);
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let closed = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(Mutex::new(InFlight::default()));
        open_gauge.inc();
        let guard = Arc::new(CloseGuard {
            closed: closed.clone(),
            waiting: waiting.clone(),
            gauge: open_gauge,
            shut: tokio::sync::Notify::new(),
        });
        tokio::spawn(write_loop(wr, rx, waiting.clone(), guard.clone()));
        tokio::spawn(read_loop(
            rd,
            addr.clone(),
            max_frame_bytes,
            waiting,
            guard,
            sever,
        ));
        Ok(UpstreamConn { addr, tx, closed })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
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

/// Fails every waiting caller and marks the connection closed when the last of
/// the reader and writer tasks ends.
struct CloseGuard {
    closed: Arc<AtomicBool>,
    waiting: Arc<Mutex<InFlight>>,
    gauge: IntGauge,
    /// Wakes the writer so it lets go of the socket.
    shut: tokio::sync::Notify,
}

impl CloseGuard {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.gauge.dec();
        }
        self.shut.notify_one();
        // Dropping the senders wakes every caller with `Closed`.
        if let Ok(mut w) = self.waiting.lock() {
            w.waiting.clear();
        }
    }
}

async fn write_loop(
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    waiting: Arc<Mutex<InFlight>>,
    guard: Arc<CloseGuard>,
) {
    let mut w = BufWriter::with_capacity(16 * 1024, wr);
    let mut next_id: i32 = 0;
    'outer: loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = guard.shut.notified() => None,
        };
        let Some(first) = first else { break };
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
            let f = &out.frame;
            let len = (f.len() as i32).to_be_bytes();
            let ok = async {
                w.write_all(&len).await?;
                w.write_all(&f[0..4]).await?;
                w.write_all(&next_id.to_be_bytes()).await?;
                w.write_all(&f[8..]).await
            }
            .await;
            if ok.is_err() {
                break 'outer;
            }
            item = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            break;
        }
    }
    guard.close();
    let _ = w.shutdown().await;
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

async fn read_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    addr: Arc<str>,
    max_frame_bytes: u32,
    waiting: Arc<Mutex<InFlight>>,
    guard: Arc<CloseGuard>,
    mut sever: Option<tokio::sync::watch::Receiver<u64>>,
) {
    loop {
        let severed = async {
            match sever.as_mut() {
                Some(s) => {
                    let _ = s.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            f = read_frame(&mut rd, max_frame_bytes) => f,
            _ = severed => {
                // Reset, not FIN: the kernel must drop what is still unsent
                // rather than deliver it once the network heals.
                let _ = rd.as_ref().set_zero_linger();
                tracing::info!(upstream = %addr, "connection cut (site fenced by failover)");
                break;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(FrameError::Closed) => {
                tracing::debug!(upstream = %addr, "upstream closed the connection");
                break;
            }
            Err(e) => {
                tracing::warn!(upstream = %addr, error = %e, "upstream read failed");
                break;
            }
        };
        if frame.len() < 4 {
            tracing::warn!(upstream = %addr, "upstream sent a frame without correlation id");
            break;
        }
        let corr = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let Ok(mut q) = waiting.lock() else {
            break;
        };
        if q.waiting.front().is_some_and(|w| w.correlation_id == corr) {
            if let Some(w) = q.waiting.pop_front() {
                drop(q);
                w.latency.observe(w.started.elapsed().as_secs_f64());
                let _ = w.reply.send(frame);
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
        tracing::warn!(upstream = %addr, ?expected, got = corr,
            "unexpected upstream response (out of order or unsolicited); closing connection");
        break;
    }
    guard.close();
}
