//! Assembles a running gateway from a config (upstreams, registry, session
//! handlers) and takes it down again. Shared by `serve` and `stdio`, so both
//! start the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::gateway::{Gateway, Guardrails, GuardrailsError};
use crate::llm::Llm;
use crate::registry::Registry;
use crate::telemetry::Metrics;
use crate::upstream::{self, Upstream};

/// A running gateway: everything but the listener.
pub struct Runtime {
    /// The config it runs.
    pub config: Arc<Config>,
    /// Session handlers and event fan-out.
    pub gateway: Arc<Gateway>,
    /// The model router behind `/v1/*`.
    pub llm: Arc<Llm>,
    /// Establishes who is calling, for every HTTP request.
    pub auth: Arc<Authenticator>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Runtime {
    /// Starts every upstream's supervisor (each connects in the background,
    /// so a slow or dead upstream delays nothing) and the gateway.
    ///
    /// `stdout_is_mcp` is true for `portcullis stdio`, whose stdout carries
    /// MCP (audit lines then default to stderr). Fails when the policies or
    /// the pin lock file are invalid: the gateway never runs without the
    /// policy it was configured with.
    pub fn start(
        config: Config,
        metrics: Arc<Metrics>,
        stdout_is_mcp: bool,
    ) -> Result<Runtime, GuardrailsError> {
        let config = Arc::new(config);
        let guardrails = Guardrails::start(&config, metrics.clone(), stdout_is_mcp)?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let llm = Arc::new(Llm::new(&config, metrics.clone()));
        let sampler = crate::llm::sampling::Sampler::new(llm.clone(), config.sampling.as_ref());
        let upstreams: BTreeMap<Arc<str>, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                metrics.register_upstream(name);
                let up = Upstream::start(
                    name,
                    u.clone(),
                    upstream::Shared {
                        http: http.clone(),
                        events: events_tx.clone(),
                        metrics: metrics.clone(),
                        shutdown: shutdown.clone(),
                        tasks: tasks.clone(),
                        sampler: sampler.clone(),
                    },
                );
                (Arc::from(name.as_str()), up)
            })
            .collect();
        let screen = guardrails
            .clone()
            .map(|g| g as Arc<dyn crate::registry::ToolScreen>);
        let registry = Arc::new(Registry::new(
            config.clone(),
            upstreams,
            metrics.clone(),
            screen,
        ));
        let gateway = Gateway::new(config.clone(), registry, metrics, events_rx, guardrails);
        let auth = Arc::new(Authenticator::new(
            &config.auth,
            config
                .auth
                .jwt
                .as_ref()
                .and_then(|j| j.jwks_file.as_deref())
                .map(|f| config.resolve_path(f)),
        ));
        llm.set_admission(Arc::new(gateway.model_admission()));
        Ok(Runtime {
            config,
            gateway,
            llm,
            auth,
            shutdown,
            tasks,
        })
    }

    /// Cancelled when the gateway shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every upstream and waits (bounded) for child processes to be
    /// reaped, so none outlives the gateway.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some upstreams did not stop within 10s");
        }
    }
}
