//! One client connection, from first byte to close.
//!
//! The reader (this task) takes frames off the socket one at a time, checks
//! them, and runs each request's route phase in order (see `api`). What the
//! route phase returns goes to the writer task, which awaits every pending
//! answer at once and writes them in request order. So:
//!
//! * responses leave in request order, whatever order upstreams answer in;
//! * one slow answer (a frozen broker's, waiting out its timeout) delays the
//!   answers behind it only until it is in: their own timeouts run meanwhile,
//!   not one after the other;
//! * at most `max_inflight_per_connection` requests are in flight (read and
//!   not yet answered); past that the reader stops reading and TCP pushes
//!   back on the client;
//! * a bad frame or an unsupported API closes *this* connection only, after
//!   responses already queued have been written;
//! * a failed upstream (refused, reset, frozen) never does: the request is
//!   answered with the retriable error its client handles (`pipeline::unavailable`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::api;
use crate::codec::frame_io::{Charge, FrameReader, FrameWriter, Growth};
use crate::codec::{self, FrameError, RequestError, RequestFrame};
use crate::metrics::kind;
use crate::pipeline::{self, Ctx, Outcome, Reply, Respond};
use crate::shared::{Listener, Proxy};
use crate::upstream::Pools;

/// What a request holds until its answer is queued for writing: its place
/// among the connection's requests in flight, and its frame's share of the
/// memory budget (`limits.max_request_bytes_in_flight`).
struct Held {
    _inflight: OwnedSemaphorePermit,
    _memory: Charge,
}

enum Slot {
    Ready(Reply),
    /// An answer to come; with the request, to answer it on the upstream's
    /// behalf if the upstream fails (see `pipeline::unavailable`).
    Later(Respond, Option<RequestFrame>),
}

/// Serves one client connection (plaintext halves, or a TLS session's)
/// until it closes, fails, idles out or the proxy shuts down.
pub async fn serve<R, W>(
    proxy: Arc<Proxy>,
    (rd, wr): (R, W),
    peer: SocketAddr,
    listener: Arc<Listener>,
    tls_principal: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = &proxy.cfg.config.limits;
    let max_frame = limits.max_frame_bytes;
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let max_inflight = limits.max_inflight_per_connection as usize;
    let mut rd = FrameReader::new(rd, max_frame, Growth::AsItArrives)
        .with_budget(proxy.frame_budget.clone());
    // A permit per request read and not yet answered; the channel never
    // fills (it holds no more than the permits).
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let (tx, rx) = mpsc::channel::<(Slot, Held)>(max_inflight);
    let mut writer = tokio::spawn(write_loop(
        proxy.clone(),
        wr,
        rx,
        peer,
        listener.identity.clone(),
    ));
    let mut pools = Pools::new(&proxy.plane.sites);
    let mut sasl = listener
        .sasl
        .clone()
        .map(|s| api::sasl::Sasl::new(s, &listener.name));
    // The client's principal: SASL's once authenticated, else its
    // certificate's (mTLS), else none (anonymous).
    if sasl.is_none() {
        pools.set_principal(tls_principal);
    }

    loop {
        let (permit, frame) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = &mut writer => return, // the writer failed and already logged why
            r = async {
                // Waiting for a permit is backpressure, not idleness.
                let permit = inflight.clone().acquire_owned().await;
                (permit, tokio::time::timeout(idle, rd.next_charged()).await)
            } => r,
        };
        let Ok(permit) = permit else {
            break;
        };
        let frame = match frame {
            Err(_) => {
                proxy.plane.metrics.error(kind::IDLE_TIMEOUT);
                proxy.plane.metrics.client_closed(kind::IDLE_TIMEOUT);
                tracing::info!(client = %peer, idle_ms = idle.as_millis() as u64,
                    "closing idle client connection");
                break;
            }
            Ok(Err(FrameError::Closed)) => break,
            Ok(Err(FrameError::Io(e))) => {
                // A client that resets or vanishes mid-frame: counted, but it
                // is the client's business, not a warning about Switchyard.
                proxy.plane.metrics.error(kind::CLIENT_IO);
                tracing::debug!(client = %peer, error = %e, "client connection failed");
                break;
            }
            Ok(Err(e @ FrameError::NoMemory { .. })) => {
                proxy.plane.metrics.error(kind::REQUEST_MEMORY);
                proxy.plane.metrics.client_closed(kind::REQUEST_MEMORY);
                tracing::warn!(client = %peer, reason = %e, "closing client connection: no memory for its request");
                break;
            }
            Ok(Err(e)) => {
                let k = match e {
                    FrameError::TooLarge { .. } => kind::FRAME_TOO_LARGE,
                    _ => kind::BAD_FRAME,
                };
                proxy.plane.metrics.error(k);
                proxy.plane.metrics.client_closed(k);
                tracing::warn!(client = %peer, reason = %e, "closing client connection: bad frame");
                break;
            }
            Ok(Ok(f)) => f,
        };
        let (frame, charge) = frame;
        proxy
            .plane
            .metrics
            .client_bytes_received
            .inc_by(frame.len() as u64 + 4);
        let Some(slot) = handle(&proxy, &mut pools, &listener, &mut sasl, frame, peer).await else {
            break;
        };
        if let Some(slot) = slot {
            let held = Held {
                _inflight: permit,
                _memory: charge,
            };
            if tx.send((slot, held)).await.is_err() {
                break;
            }
        }
    }
    // No more requests: let the writer finish what is queued, within the
    // shutdown grace (each response is also bounded by the request timeout).
    drop(tx);
    let grace = Duration::from_millis(proxy.cfg.config.timeouts.shutdown_grace_ms);
    if tokio::time::timeout(grace, &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Checks and routes one request. `None` closes the connection; `Some(None)`
/// means the request needs no response.
async fn handle(
    proxy: &Arc<Proxy>,
    pools: &mut Pools,
    listener: &Listener,
    sasl: &mut Option<api::sasl::Sasl>,
    frame: Bytes,
    peer: SocketAddr,
) -> Option<Option<Slot>> {
    let req = match RequestFrame::parse(frame) {
        Ok(r) => r,
        Err(e) => {
            let k = match e {
                RequestError::UnknownKey { .. } => kind::UNKNOWN_API,
                RequestError::Short(_) => kind::BAD_FRAME,
                RequestError::BadHeader { .. } => kind::MALFORMED_REQUEST,
            };
            proxy.plane.metrics.error(k);
            proxy.plane.metrics.client_closed(k);
            tracing::warn!(client = %peer, reason = %e, "closing client connection: bad request");
            return None;
        }
    };
    let client_id = req
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    // ApiVersions of any version is answered (KIP-511 fallback); everything
    // else must be a version we advertised, as Kafka brokers require.
    let table = proxy.plane.version_table().await;
    if req.api_key != kafka_protocol::messages::ApiKey::ApiVersions
        && !table.supports(req.api_key, req.api_version)
    {
        proxy.plane.metrics.error(kind::UNSUPPORTED_VERSION);
        proxy.plane.metrics.client_closed(kind::UNSUPPORTED_VERSION);
        tracing::warn!(client = %peer, client_id, api = codec::api_name(req.api_key), version = req.api_version,
            "closing client connection: API version not supported (not advertised in ApiVersions)");
        return None;
    }
    if let Some(c) = proxy
        .plane
        .metrics
        .request_counter(req.api_key as i16, req.api_version)
    {
        c.inc();
    }
    // Authentication first: before it, nothing reaches an upstream.
    let gate = match sasl.as_mut() {
        Some(s) => s.gate(&req, &proxy.plane.metrics).await,
        None if matches!(
            req.api_key,
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) =>
        {
            api::sasl::not_enabled(&req)
        }
        None => Ok(api::sasl::Gate::Pass),
    };
    match gate {
        Ok(api::sasl::Gate::Pass) => {
            if let Some(s) = sasl.as_ref() {
                pools.set_principal(s.principal());
            }
        }
        Ok(api::sasl::Gate::Answer(frame)) => return Some(Some(Slot::Ready(Reply::Frame(frame)))),
        Ok(api::sasl::Gate::Close(why)) => {
            proxy.plane.metrics.error(kind::SASL_STATE);
            proxy.plane.metrics.client_closed(kind::SASL_STATE);
            tracing::info!(client = %peer, client_id, api = codec::api_name(req.api_key), reason = why,
                "closing client connection: SASL");
            return None;
        }
        Err(e) => {
            proxy.plane.metrics.error(kind::MALFORMED_REQUEST);
            proxy.plane.metrics.client_closed(kind::MALFORMED_REQUEST);
            tracing::warn!(client = %peer, client_id, api = codec::api_name(req.api_key), reason = %e,
                "closing client connection: malformed SASL request");
            return None;
        }
    }
    let (api_key, version) = (req.api_key, req.api_version);
    // Kept (a reference count, not a copy) to answer for a failed upstream.
    // Produce answers its own partitions' failures (and holding its records
    // until the answer would keep them in memory a round trip longer).
    let kept = req.clone();
    let mut ctx = Ctx {
        plane: &proxy.plane,
        pools,
        listener,
        peer,
    };
    match api::route(&mut ctx, req).await {
        Ok(Outcome::NoResponse) => Some(None),
        Ok(Outcome::Ready(r)) => Some(Some(Slot::Ready(r))),
        Ok(Outcome::Later(f)) => {
            let keep = (api_key != kafka_protocol::messages::ApiKey::Produce).then_some(kept);
            Some(Some(Slot::Later(f, keep)))
        }
        Err(e) => {
            let settled = pipeline::unavailable::settle(
                &e,
                Some(&kept),
                &listener.identity,
                &proxy.plane.metrics,
            );
            match settled.answer {
                Some(frame) => {
                    tracing::debug!(client = %peer, client_id, api = codec::api_name(api_key), version,
                        reason = %format!("{e:#}"), "answered with a retriable error: upstream failed");
                    Some(Some(Slot::Ready(Reply::Frame(frame))))
                }
                None => {
                    tracing::warn!(client = %peer, client_id, api = codec::api_name(api_key), version,
                        kind = settled.kind, reason = %format!("{e:#}"), "closing client connection: request failed");
                    None
                }
            }
        }
    }
}

/// Polls a future once: its output if it is ready now, else `None` (the
/// future stays usable).
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// An answer being awaited: ready at once, or still to come.
type Answer = Either<std::future::Ready<crate::pipeline::Result<Reply>>, Respond>;

/// The answers of one connection not yet written. All of them are polled
/// (their upstream waits and timeouts run) while the first is awaited; they
/// come out in request order. With each, what the writer keeps until it is
/// written: the request (to answer on a failed upstream's behalf) and its
/// in-flight permit.
#[derive(Default)]
struct InOrder {
    answers: FuturesOrdered<Answer>,
    kept: VecDeque<(Option<RequestFrame>, Held)>,
}

impl InOrder {
    fn push(&mut self, (slot, permit): (Slot, Held)) {
        let (answer, kept) = match slot {
            Slot::Ready(r) => (Either::Left(std::future::ready(Ok(r))), None),
            Slot::Later(f, kept) => (Either::Right(f), kept),
        };
        self.answers.push_back(answer);
        self.kept.push_back((kept, permit));
    }

    fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    proxy: Arc<Proxy>,
    wr: W,
    mut rx: mpsc::Receiver<(Slot, Held)>,
    peer: SocketAddr,
    identity: Arc<crate::identity::Identity>,
) {
    // Answers are queued as they come (their bytes, not copies) and sent
    // together, with one vectored write, once the next is not ready or the
    // writer's batch is full.
    let Some(first) = rx.recv().await else {
        return;
    };
    let mut w = FrameWriter::new(wr);
    let mut pending = InOrder::default();
    pending.push(first);
    let mut reading = true;
    loop {
        while reading {
            match rx.try_recv() {
                Ok(q) => pending.push(q),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => reading = false,
            }
        }
        let result = match poll_once(&mut pending.answers.next()).await.flatten() {
            Some(r) => r,
            None => {
                // The next answer is not in yet: send what is buffered first.
                // Holding a finished Produce ack until the next pipelined
                // request's upstream round trip completed added tens of
                // milliseconds to p99 latency.
                if w.queued() > 0 && w.flush().await.is_err() {
                    return;
                }
                let busy = !pending.is_empty();
                tokio::select! {
                    r = pending.answers.next(), if busy => match r {
                        Some(r) => r,
                        None => continue,
                    },
                    q = rx.recv(), if reading => {
                        match q {
                            Some(q) => pending.push(q),
                            None => reading = false,
                        }
                        continue;
                    }
                    else => break,
                }
            }
        };
        // Released (the permit) once the answer is queued for writing: at
        // most a batch (`FrameWriter::batch_full`) waits there.
        let Some((kept, _permit)) = pending.kept.pop_front() else {
            break;
        };
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                let settled = pipeline::unavailable::settle(
                    &e,
                    kept.as_ref(),
                    &identity,
                    &proxy.plane.metrics,
                );
                let Some(frame) = settled.answer else {
                    tracing::warn!(client = %peer, kind = settled.kind, reason = %format!("{e:#}"),
                        "closing client connection: no answer to give");
                    break;
                };
                tracing::debug!(client = %peer, reason = %format!("{e:#}"),
                    "answered with a retriable error: upstream failed");
                Reply::Frame(frame)
            }
        };
        let n = match reply {
            Reply::Frame(f) => {
                let n = f.len();
                w.push(&[], f);
                n
            }
            // The upstream's answer under the client's correlation id.
            Reply::Upstream {
                correlation_id,
                frame,
            } => {
                let n = frame.len();
                w.push(&[&correlation_id.to_be_bytes()], frame.slice(4..));
                n
            }
        };
        proxy.plane.metrics.client_bytes_sent.inc_by(n as u64 + 4);
        if w.batch_full() {
            if let Err(e) = w.flush().await {
                tracing::debug!(client = %peer, error = %e, "client write failed");
                return;
            }
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: &'static str) -> Reply {
        Reply::Frame(Bytes::from_static(tag.as_bytes()))
    }

    /// An answer that comes in after `ms` (an upstream wait, its timeout).
    fn later(ms: u64, tag: &'static str) -> Slot {
        Slot::Later(
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(frame(tag))
            }),
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn answers_wait_together_and_leave_in_request_order() {
        let permits = Arc::new(Semaphore::new(4));
        let mut pending = InOrder::default();
        let slots = [
            later(5_000, "a"),
            Slot::Ready(frame("b")),
            later(5_000, "c"),
            later(10, "d"),
        ];
        for slot in slots {
            let permit = permits
                .clone()
                .try_acquire_owned()
                .expect("a permit per request");
            pending.push((
                slot,
                Held {
                    _inflight: permit,
                    _memory: Charge::default(),
                },
            ));
        }
        assert_eq!(permits.available_permits(), 0, "a fifth request would wait");

        let start = tokio::time::Instant::now();
        let mut out = Vec::new();
        while let Some(answer) = pending.answers.next().await {
            let Ok(Reply::Frame(f)) = answer else {
                panic!("unexpected answer");
            };
            out.push(f);
            // Written: its permit goes back.
            pending.kept.pop_front();
        }
        assert_eq!(
            out,
            ["a", "b", "c", "d"].map(|t| Bytes::from_static(t.as_bytes()))
        );
        // The waits behind the first ran while it was awaited (virtual time:
        // one 5 s wait, not two after each other).
        assert!(
            start.elapsed() < Duration::from_millis(10_000),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(permits.available_permits(), 4);
    }
}
