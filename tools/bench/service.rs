//! `pm-bench service`: concurrent gRPC notifiers against a running
//! `prjmanager serve` (a child process on a temporary embedded store), with
//! notify latency and event-to-ProjectLog lag.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prjmanager::proto::{self, project_manager_client::ProjectManagerClient};
use serde::Serialize;

use crate::fold::config;
use crate::{bench_cl, millis, percentiles};

/// One `pm-bench service` measurement.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    /// Concurrent gRPC callers.
    pub callers: usize,
    /// Projects the events are spread over.
    pub projects: usize,
    /// How long the callers ran.
    pub wall_ms: f64,
    /// Accepted notify calls (one event each).
    pub events: u64,
    /// Accepted events per second.
    pub events_per_s: f64,
    /// Notify call latency.
    pub notify_p50_ms: f64,
    pub notify_p99_ms: f64,
    /// From a config change's acknowledgement to its showing in the state.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    /// Lag probes measured.
    pub lag_probes: usize,
}

/// Runs the benchmark and returns its numbers.
pub async fn run(callers: usize, seconds: f64, projects: usize) -> Result<ServiceRow> {
    let dir = tempfile::tempdir()?;
    let binary = std::env::current_exe()?
        .parent()
        .context("no binary folder")?
        .join("prjmanager");
    let mut child = Command::new(&binary)
        .arg("--store")
        .arg(format!("sqlite://{}", dir.path().join("pm.db").display()))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().context("the service exited")??;
        if let Some(address) = line.strip_prefix("prjmanager listening on ") {
            break address.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let endpoint = format!("http://{address}");
    let result = measure(&endpoint, callers, seconds, projects).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    result
}

async fn measure(
    endpoint: &str,
    callers: usize,
    seconds: f64,
    projects: usize,
) -> Result<ServiceRow> {
    let duration = Duration::from_secs_f64(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..projects {
        let mut client = ProjectManagerClient::connect(endpoint.to_string()).await?;
        client
            .update_config(proto::UpdateConfigRequest {
                project: format!("bench-{p}"),
                config: Some(config("h1")),
            })
            .await?;
    }
    let started = Instant::now();
    for _ in 0..callers {
        let mut client = ProjectManagerClient::connect(endpoint.to_string()).await?;
        let stop = stop.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let project = format!("bench-{}", seq % projects as u64);
                let mut cl = bench_cl(seq % 500);
                cl.eversion = 1 + (seq / 500) as i64;
                let t0 = Instant::now();
                client
                    .notify_cls_updated(proto::NotifyClsUpdatedRequest {
                        project,
                        event: Some(proto::ClsUpdated { cls: vec![cl] }),
                    })
                    .await?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    // The lag probe: a config change must show in the project's state.
    let mut probe = ProjectManagerClient::connect(endpoint.to_string()).await?;
    let mut lags = Vec::new();
    let mut k = 0;
    while started.elapsed() < duration {
        k += 1;
        let hash = format!("probe-{k}");
        probe
            .update_config(proto::UpdateConfigRequest {
                project: "lag-probe".into(),
                config: Some(config(&hash)),
            })
            .await?;
        let acked = Instant::now();
        loop {
            let state = probe
                .get_project(proto::GetProjectRequest {
                    project: "lag-probe".into(),
                    eversion: 0,
                })
                .await;
            if state.is_ok_and(|s| s.into_inner().config_hash == hash) {
                lags.push(acked.elapsed());
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("the probe's config did not show within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = started.elapsed();
    let events = latencies.len() as u64;
    let probes = lags.len();
    let notify = percentiles(latencies);
    let lag = percentiles(lags);
    Ok(ServiceRow {
        callers,
        projects,
        wall_ms: millis(wall),
        events,
        events_per_s: events as f64 / wall.as_secs_f64(),
        notify_p50_ms: millis(notify.p50),
        notify_p99_ms: millis(notify.p99),
        lag_p50_ms: millis(lag.p50),
        lag_p99_ms: millis(lag.p99),
        lag_probes: probes,
    })
}
