//! Prometheus metrics (`GET /metrics`): serving under vLLM's names (`vllm:…`, so dashboards and
//! alerts written for vLLM work unchanged), ours under `ferrotune:…`, and the process's own
//! (`process_…`). Counters and histograms live in one process-wide registry; the training figures
//! are read from the database at scrape time, so they cover workers in other processes too.

pub mod http;

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::store::Store;

/// Latency buckets (seconds) shared by the request histograms: 1 ms to 5 minutes.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0, 120.0, 300.0,
];

/// Every metric family this process reports.
pub struct Metrics {
    registry: Registry,
    /// Generations producing tokens, per model.
    pub running: IntGaugeVec,
    /// Generations submitted that have produced nothing yet (queued or in prefill), per model.
    pub waiting: IntGaugeVec,
    /// Submission to first token.
    pub time_to_first_token: HistogramVec,
    /// Gap between consecutive tokens of a stream.
    pub inter_token_latency: HistogramVec,
    /// Submission to the last token.
    pub e2e_latency: HistogramVec,
    /// Prompt tokens processed.
    pub prompt_tokens: IntCounterVec,
    /// Tokens generated.
    pub generation_tokens: IntCounterVec,
    /// Finished sequences by reason (`stop`, `length`, `tool_calls`, …).
    pub request_success: IntCounterVec,
    /// Non-base models resident in the engine.
    pub models_resident: IntGauge,
    /// Model loads in progress.
    pub models_loading: IntGauge,
    /// Time to load a fine-tuned model or adapter into the engine.
    pub adapter_load: HistogramVec,
    /// HTTP requests by method, route template and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by method, route template and status.
    pub http_latency: HistogramVec,
    jobs: IntGaugeVec,
    queue_depth: IntGauge,
    leases: IntGaugeVec,
    job_loss: prometheus::GaugeVec,
    job_tokens_per_second: prometheus::GaugeVec,
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

fn float_gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

impl Metrics {
    fn new() -> Self {
        let model = &["model_name"];
        let m = Self {
            registry: Registry::new(),
            running: gauge(
                "vllm:num_requests_running",
                "Generations producing tokens.",
                model,
            ),
            waiting: gauge(
                "vllm:num_requests_waiting",
                "Generations submitted that have not produced a token yet (queued or in prefill).",
                model,
            ),
            time_to_first_token: histogram(
                "vllm:time_to_first_token_seconds",
                "Seconds from submission to the first token.",
                model,
            ),
            inter_token_latency: histogram(
                "vllm:inter_token_latency_seconds",
                "Seconds between consecutive tokens.",
                model,
            ),
            e2e_latency: histogram(
                "vllm:e2e_request_latency_seconds",
                "Seconds from submission to the end of the generation.",
                model,
            ),
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Prompt tokens processed.",
                model,
            ),
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Tokens generated.",
                model,
            ),
            request_success: counter(
                "vllm:request_success_total",
                "Finished sequences by finish reason.",
                &["model_name", "finished_reason"],
            ),
            models_resident: IntGauge::new(
                "ferrotune:models_resident",
                "Fine-tuned models and adapters resident in the engine (the base model is not counted).",
            )
            .expect("valid gauge"),
            models_loading: IntGauge::new(
                "ferrotune:models_loading",
                "Model loads in progress.",
            )
            .expect("valid gauge"),
            adapter_load: histogram(
                "ferrotune:adapter_load_seconds",
                "Seconds to load a fine-tuned model or adapter into the engine.",
                &["outcome"],
            ),
            http_requests: counter(
                "ferrotune:http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_latency: histogram(
                "ferrotune:http_request_duration_seconds",
                "HTTP request latency by method, route template and status (to the response head).",
                &["method", "route", "status"],
            ),
            jobs: gauge(
                "ferrotune:fine_tuning_jobs",
                "Fine-tuning jobs by status (every organization).",
                &["status"],
            ),
            queue_depth: IntGauge::new(
                "ferrotune:fine_tuning_queue_depth",
                "Jobs waiting for a worker (validating_files or queued).",
            )
            .expect("valid gauge"),
            leases: gauge(
                "ferrotune:worker_leases",
                "Live job leases per worker.",
                &["worker"],
            ),
            job_loss: float_gauge(
                "ferrotune:training_loss",
                "Training loss at the latest logged step of each running job.",
                &["job_id"],
            ),
            job_tokens_per_second: float_gauge(
                "ferrotune:training_tokens_per_second",
                "Training tokens per second at the latest logged step of each running job.",
                &["job_id"],
            ),
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.running.clone()),
            Box::new(self.waiting.clone()),
            Box::new(self.time_to_first_token.clone()),
            Box::new(self.inter_token_latency.clone()),
            Box::new(self.e2e_latency.clone()),
            Box::new(self.prompt_tokens.clone()),
            Box::new(self.generation_tokens.clone()),
            Box::new(self.request_success.clone()),
            Box::new(self.models_resident.clone()),
            Box::new(self.models_loading.clone()),
            Box::new(self.adapter_load.clone()),
            Box::new(self.http_requests.clone()),
            Box::new(self.http_latency.clone()),
            Box::new(self.jobs.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.leases.clone()),
            Box::new(self.job_loss.clone()),
            Box::new(self.job_tokens_per_second.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            if let Err(e) = self.registry.register(c) {
                tracing::warn!(error = %e, "registering a metric failed");
            }
        }
    }

    /// Read the training figures from the database into their gauges.
    async fn refresh_training(&self, store: &Store) {
        let stats = match store.training_stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading training figures for /metrics failed");
                return;
            }
        };
        self.jobs.reset();
        self.leases.reset();
        self.job_loss.reset();
        self.job_tokens_per_second.reset();
        let mut waiting = 0;
        for (status, n) in &stats.jobs_by_status {
            self.jobs.with_label_values(&[status]).set(*n);
            if matches!(status.as_str(), "validating_files" | "queued") {
                waiting += n;
            }
        }
        self.queue_depth.set(waiting);
        for (worker, n) in &stats.leases {
            self.leases.with_label_values(&[worker]).set(*n);
        }
        for job in &stats.running {
            if let Some(loss) = job.train_loss {
                self.job_loss.with_label_values(&[&job.job_id]).set(loss);
            }
            if let Some(rate) = job.tokens_per_second {
                self.job_tokens_per_second
                    .with_label_values(&[&job.job_id])
                    .set(rate);
            }
        }
    }

    /// Everything in Prometheus's text exposition format, training figures read fresh.
    pub async fn render(&self, store: &Store) -> String {
        self.refresh_training(store).await;
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts one model load in `ferrotune:models_loading` for as long as it is held (a load whose
/// request goes away is still uncounted when its future is dropped).
pub struct LoadingGuard(());

impl LoadingGuard {
    /// Start counting a load.
    pub fn start() -> Self {
        global().models_loading.inc();
        Self(())
    }
}

impl Drop for LoadingGuard {
    fn drop(&mut self) {
        global().models_loading.dec();
    }
}
