//! Observability: Prometheus metrics, OpenTelemetry traces and logs.
//!
//! Logs always go to stderr: in `stdio` mode stdout carries the MCP protocol
//! and must hold nothing else.

pub mod audit;
pub mod metrics;
pub mod recent;
pub mod trace;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};
pub use metrics::Metrics;

/// Keeps the trace exporter alive; flush it with [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes spans still buffered for export.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("portcullis: flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber (logs, and traces when configured).
/// `RUST_LOG` overrides the config's level.
pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> Result<Telemetry, trace::TraceError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(log.level.as_deref().unwrap_or("info,rmcp=warn")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(trace::provider(endpoint, &telemetry.service_name)?),
        None => None,
    };
    let otel = provider.as_ref().map(trace::layer);
    // Another subscriber may already be installed (tests); keep it.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}
