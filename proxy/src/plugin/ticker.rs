//! The clock of every plugin call's CPU deadline: a thread that advances
//! the engine's epoch every millisecond while plugin code may be running.
//!
//! It sleeps (parked, no wake-ups) once no call has run for a second:
//! a gateway without plugins, or whose plugins are idle, would otherwise
//! wake a thread 1,000 times a second for nothing (6% of the proxy's CPU
//! under an idempotent produce load, measured; on a fleet of edge gateways,
//! most of their idle CPU). A call starting while it is parked wakes it
//! before entering wasm, and a call in flight keeps it ticking however
//! long it runs, so a runaway call is still interrupted at its deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// The epoch's period.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call before the thread parks.
const IDLE_TICKS: u32 = 1000;

struct State {
    stop: AtomicBool,
    parked: AtomicBool,
    /// Calls running now.
    in_flight: AtomicUsize,
    /// Calls started so far (the thread compares it between ticks).
    started: AtomicU64,
    /// Ticks so far (for tests and the curious).
    ticks: AtomicU64,
}

/// Owned by the plugin host; stops the thread when dropped.
pub struct Ticker {
    state: Arc<State>,
    thread: Thread,
}

/// Held for the duration of one call into wasm.
pub struct Running<'a>(&'a State);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    pub fn start(engine: &Engine) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        });
        let (engine, s) = (engine.clone(), state.clone());
        let handle = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || run(&engine, &s))?;
        Ok(Ticker {
            thread: handle.thread().clone(),
            state,
        })
    }

    /// Called before entering wasm; the clock runs until the guard drops.
    pub fn running(&self) -> Running<'_> {
        let s = &*self.state;
        s.started.fetch_add(1, Ordering::Relaxed);
        // SeqCst on both sides (here: in_flight then parked; the thread:
        // parked then in_flight) means at least one sees the other, so the
        // thread never parks under a call that found it awake.
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Running(s)
    }

    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.state.ticks.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.state.parked.load(Ordering::SeqCst)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn run(engine: &Engine, s: &State) {
    let mut idle = 0u32;
    let mut seen = s.started.load(Ordering::Relaxed);
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        engine.increment_epoch();
        s.ticks.fetch_add(1, Ordering::Relaxed);
        let started = s.started.load(Ordering::Relaxed);
        if started != seen || s.in_flight.load(Ordering::SeqCst) > 0 {
            (seen, idle) = (started, 0);
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS {
            continue;
        }
        s.parked.store(true, Ordering::SeqCst);
        // park() may return spuriously: wait until a call or the stop.
        while s.in_flight.load(Ordering::SeqCst) == 0 && !s.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        s.parked.store(false, Ordering::SeqCst);
        idle = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ok() {
            assert!(Instant::now() < deadline, "{what} within {limit:?}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn parks_when_idle_and_ticks_again_for_a_call() {
        let engine =
            Engine::new(wasmtime::Config::new().epoch_interruption(true)).expect("an engine");
        let ticker = Ticker::start(&engine).expect("a ticker");
        wait_for(
            "parked after a second without calls",
            Duration::from_secs(30),
            || ticker.is_parked(),
        );
        let parked_at = ticker.ticks();
        {
            let _call = ticker.running();
            // A call that runs longer than the idle period keeps the clock
            // going: its deadline must still come.
            wait_for(
                "ticking through a long call",
                Duration::from_secs(60),
                || ticker.ticks() > parked_at + 2 * IDLE_TICKS as u64,
            );
            assert!(!ticker.is_parked(), "parked under a running call");
        }
        wait_for(
            "parked again after the call",
            Duration::from_secs(30),
            || ticker.is_parked(),
        );
        let idle_at = ticker.ticks();
        // Parked means asleep: no ticks (one in progress may land).
        std::thread::park_timeout(Duration::from_millis(200));
        assert!(ticker.ticks() <= idle_at + 1, "ticks while parked");
    }
}
