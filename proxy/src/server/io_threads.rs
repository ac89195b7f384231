//! The threads client connections run on: one single-threaded runtime per
//! thread, each connection (its session, and the upstream connections it
//! opens) on one of them for its whole life.
//!
//! Why not the multi-threaded runtime everything else runs on: a request
//! crosses four tasks (session reader → upstream writer → upstream reader
//! → session writer), and on a work-stealing runtime every hand-over may
//! wake another worker thread (a futex wake, an eventfd write, a context
//! switch). Measured under the Java producer's defaults, about 46 KiB per
//! Produce: 2.7 voluntary context switches per request on two workers
//! against 1.4 on one thread, and 10% less proxy CPU per request. Keeping a
//! connection's tasks on one thread gets the second figure while several
//! threads still share many connections. The cost: a connection's CPU-heavy
//! step (a plugin call, bounded by its deadline) delays the other
//! connections of its thread, not of the process.
//!
//! Background work (metadata, health checks, the tee, failover, the admin
//! API) stays on the multi-threaded runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Thread {
    handle: Handle,
    /// Connections running on it now.
    load: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

pub struct IoThreads {
    threads: Vec<Thread>,
}

/// Counts a connection on its thread until dropped.
struct OnThread(Arc<AtomicUsize>);

impl Drop for OnThread {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl IoThreads {
    /// Starts `n` threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("switchyard-io-{i}"))
                .spawn(move || {
                    // Runs the thread's tasks until told to stop; what is
                    // left then (connections past the shutdown grace) is
                    // dropped with the runtime.
                    let _ = rt.block_on(stopped);
                })?;
            threads.push(Thread {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
            });
        }
        Ok(IoThreads { threads })
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Runs a connection on the thread with the fewest. `make` runs on that
    /// thread, so sockets it registers (`TcpStream::from_std`) are polled
    /// by that thread's reactor.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(t) = self
            .threads
            .iter()
            .min_by_key(|t| t.load.load(Ordering::Relaxed))
        else {
            return;
        };
        t.load.fetch_add(1, Ordering::Relaxed);
        let on = OnThread(t.load.clone());
        t.handle.spawn(async move {
            let _on = on;
            make().await;
        });
    }

    #[cfg(test)]
    fn loads(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.load.load(Ordering::Relaxed))
            .collect()
    }
}

/// Stops the threads (not waiting for them: this runs on an async worker).
impl Drop for IoThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            if let Some(stop) = t.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn connections_go_to_the_least_loaded_thread_and_stay_there() {
        let io = IoThreads::start(2).expect("threads");
        let (release, released) = tokio::sync::watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let name = || std::thread::current().name().unwrap_or("?").to_string();
        for _ in 0..4 {
            let (tx, mut released) = (tx.clone(), released.clone());
            io.spawn(move || async move {
                let started = name();
                let _ = released.wait_for(|r| *r).await;
                let _ = tx.send((started, name()));
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while io.loads().iter().sum::<usize>() < 4 {
            assert!(Instant::now() < deadline, "loads {:?}", io.loads());
            std::thread::yield_now();
        }
        assert_eq!(io.loads(), [2, 2]);
        release.send(true).expect("sent");
        let threads: Vec<(String, String)> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("finished"))
            .collect();
        for (started, ended) in &threads {
            assert_eq!(started, ended, "a connection moved threads");
        }
        let on_first = threads
            .iter()
            .filter(|(t, _)| t == "switchyard-io-0")
            .count();
        assert_eq!(on_first, 2, "{threads:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while io.loads() != [0, 0] {
            assert!(Instant::now() < deadline, "loads {:?}", io.loads());
            std::thread::yield_now();
        }
    }
}
