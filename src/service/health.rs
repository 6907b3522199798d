//! systemd integration: READY=1, STATUS=, STOPPING=1 and the watchdog, fed only while the pipeline really
//! makes progress. Every call is a no-op when not started by systemd (no NOTIFY_SOCKET).

use super::worker::WorkerStats;
use sd_notify::NotifyState;
use std::time::{Duration, Instant};

/// The worker must have run its loop this recently (it wakes at least every 100 ms, longer only while
/// a frame is processed).
const WORKER_SILENCE: Duration = Duration::from_secs(5);
const STATUS_EVERY: Duration = Duration::from_secs(5);

pub fn notify_ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// How long systemd is asked to wait for the next sign of progress while the gallery is embedded
/// before READY=1: one photo takes well under a second on a Raspberry Pi 4, so a start that stops
/// progressing still times out, while a large gallery on a slow board does not.
const START_PROGRESS_GRACE: Duration = Duration::from_secs(60);

/// The same before the models load: one long step, with no progress to report until it ends.
const MODEL_LOAD_GRACE: Duration = Duration::from_secs(120);

/// Start-up progress (`done` of `total` gallery photos): STATUS= for `systemctl status`, and
/// EXTEND_TIMEOUT_USEC so that systemd's start timeout counts from the latest progress. Called after
/// every photo; writes at most once a second.
pub struct StartProgress {
    last: Option<Instant>,
    logged: Instant,
}

impl Default for StartProgress {
    fn default() -> StartProgress {
        StartProgress {
            last: None,
            logged: Instant::now(),
        }
    }
}

impl StartProgress {
    /// Before the models load (tract optimises each network, seconds on a Raspberry Pi): STATUS= and
    /// two minutes of start timeout from now.
    pub fn loading_models(&self) {
        let grace = MODEL_LOAD_GRACE.as_micros() as u32;
        let _ = sd_notify::notify(&[
            NotifyState::ExtendTimeoutUsec(grace),
            NotifyState::Status("loading models"),
        ]);
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(Instant::now());
        let status = format!("embedding gallery photos: {done}/{total}");
        let grace = START_PROGRESS_GRACE.as_micros() as u32;
        let _ = sd_notify::notify(&[
            NotifyState::ExtendTimeoutUsec(grace),
            NotifyState::Status(&status),
        ]);
        if self.logged.elapsed() >= Duration::from_secs(10) {
            log::info!("{status}");
            self.logged = Instant::now();
        }
    }
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

pub struct Health {
    watchdog: Option<Duration>,
    stall: Duration,
    last_ping: Instant,
    last_status: Instant,
    was_healthy: bool,
    started: Instant,
}

/// How long an exec camera's helper may send no complete frame before face-edge restarts it: without
/// systemd's watchdog, the stall time; under it, never (None): the stall stops the watchdog and systemd
/// restarts the whole service, helper included, as for any other stalled camera.
pub fn helper_stall(stall: Duration) -> Option<Duration> {
    sd_notify::watchdog_enabled().is_none().then_some(stall)
}

impl Health {
    pub fn new(stall: Duration) -> Health {
        let watchdog = sd_notify::watchdog_enabled();
        if let Some(w) = watchdog {
            log::info!("systemd watchdog every {} ms", w.as_millis());
        }
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(Instant::now);
        Health {
            watchdog,
            stall,
            last_ping: long_ago,
            last_status: long_ago,
            was_healthy: true,
            started: Instant::now(),
        }
    }

    /// How long a streaming camera may go without a frame before it counts as stalled.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// Pings the watchdog at half its period, once READY=1 was sent (`ready`), while the worker is alive
    /// and no streaming camera has stalled (`cameras_healthy`); updates STATUS= every few seconds.
    pub fn tick(&mut self, stats: &WorkerStats, cameras_healthy: bool, ready: bool, status: &str) {
        // Before the worker's first heartbeat it is starting, not stalled.
        let worker_alive = stats.heartbeat.unwrap_or(self.started).elapsed() < WORKER_SILENCE;
        let healthy = worker_alive && cameras_healthy;
        if healthy != self.was_healthy {
            if healthy {
                log::info!("pipeline healthy again");
            } else {
                log::error!(
                    "pipeline stalled (worker alive: {worker_alive}); watchdog no longer fed"
                );
            }
            self.was_healthy = healthy;
        }
        if let Some(period) = self.watchdog
            && healthy
            && ready
            && self.last_ping.elapsed() >= period / 2
        {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            self.last_ping = Instant::now();
        }
        if self.last_status.elapsed() >= STATUS_EVERY {
            let _ = sd_notify::notify(&[NotifyState::Status(status)]);
            self.last_status = Instant::now();
        }
    }
}

/// The SoC temperature in °C, where the kernel exposes it (Raspberry Pi, Jetson).
pub fn cpu_temperature() -> Option<f64> {
    let text = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    let milli: f64 = text.trim().parse().ok()?;
    Some((milli / 100.0).round() / 10.0)
}
