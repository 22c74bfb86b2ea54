//! The aggregated catalogue: what each endpoint lists, and where each
//! exposed name or URI leads.
//!
//! Per-upstream lists are fetched on demand (following the upstream's
//! pagination with a page cap and a loop guard) and cached in moka; views
//! per endpoint are built from them and cached too. An upstream's
//! `list_changed`, or its coming up or going down, invalidates both.
//! **Invariant:** routing never parses an exposed name; it looks it up in
//! the view the client could have listed.

pub mod naming;
pub mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rmcp::model::{ClientRequest, Prompt, Resource, ResourceTemplate, ServerResult, Tool};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::Config;
use crate::upstream::{ListKind, Upstream, UpstreamError};
pub use view::{NamedView, ResourceView, Target};
use view::{Naming, ToolFilter};

/// Most pages followed when listing one upstream.
const MAX_PAGES: usize = 100;

/// Which view of the catalogue a downstream session sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/mcp`: every upstream, names prefixed.
    Aggregate,
    /// `/mcp/{upstream}`: one upstream, names as the upstream has them.
    Single(Arc<str>),
    /// `/mcp/v/{name}`: a curated tool set.
    Virtual(Arc<str>),
}

/// A list could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The client sent a cursor the gateway did not issue.
    #[error("invalid cursor")]
    BadCursor,
    /// The upstream's answer did not have the expected shape.
    #[error("upstream `{upstream}` sent a malformed {what} list: {message}")]
    Malformed {
        /// Upstream name.
        upstream: String,
        /// Which list.
        what: &'static str,
        /// Parse error.
        message: String,
    },
    /// Forwarding failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

type ToolsView = Arc<NamedView<Tool>>;
type PromptsView = Arc<NamedView<Prompt>>;

/// Decides which of an upstream's tool definitions may be served at all
/// (implemented by the gateway's guardrails: pins and poisoning scans).
/// Runs when a view is built, not per call.
pub trait ToolScreen: Send + Sync {
    /// The tools of `upstream` that may be listed and called.
    fn screen(&self, upstream: &str, tools: &[Tool]) -> Vec<Tool>;
}

/// The catalogue over every configured upstream.
pub struct Registry {
    config: Arc<Config>,
    metrics: Arc<crate::telemetry::Metrics>,
    upstreams: BTreeMap<Arc<str>, Arc<Upstream>>,
    filters: HashMap<String, ToolFilter>,
    virtual_globs: HashMap<String, globset::GlobSet>,
    tools: moka::future::Cache<Arc<str>, Arc<Vec<Tool>>>,
    /// Drops tool definitions that must not be served (pins, poisoning).
    screen: Option<Arc<dyn ToolScreen>>,
    prompts: moka::future::Cache<Arc<str>, Arc<Vec<Prompt>>>,
    resources: moka::future::Cache<Arc<str>, view::UpstreamResources>,
    tool_views: moka::future::Cache<Endpoint, ToolsView>,
    prompt_views: moka::future::Cache<Endpoint, PromptsView>,
    resource_views: moka::future::Cache<Endpoint, Arc<ResourceView>>,
    /// The tool view last built or served per endpoint, for synchronous
    /// lookups (HTTP header validation runs before any handler).
    last_tools: std::sync::RwLock<HashMap<Endpoint, ToolsView>>,
}

impl Registry {
    /// A registry over the given upstreams.
    pub fn new(
        config: Arc<Config>,
        upstreams: BTreeMap<Arc<str>, Arc<Upstream>>,
        metrics: Arc<crate::telemetry::Metrics>,
        screen: Option<Arc<dyn ToolScreen>>,
    ) -> Registry {
        let filters = config
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), ToolFilter::new(&u.tools)))
            .collect();
        let virtual_globs = config
            .virtual_servers
            .iter()
            .map(|(name, vs)| (name.clone(), view::globs(&vs.tools)))
            .collect();
        Registry {
            metrics,
            screen,
            filters,
            virtual_globs,
            upstreams,
            config,
            tools: moka::future::Cache::new(4096),
            prompts: moka::future::Cache::new(4096),
            resources: moka::future::Cache::new(4096),
            tool_views: moka::future::Cache::new(1024),
            prompt_views: moka::future::Cache::new(1024),
            resource_views: moka::future::Cache::new(1024),
            last_tools: Default::default(),
        }
    }

    /// The upstreams, by name.
    pub fn upstreams(&self) -> &BTreeMap<Arc<str>, Arc<Upstream>> {
        &self.upstreams
    }

    /// An upstream by name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// The endpoint a path names, if it exists.
    pub fn endpoint(&self, single: Option<&str>, virtual_server: Option<&str>) -> Option<Endpoint> {
        match (single, virtual_server) {
            (None, None) => Some(Endpoint::Aggregate),
            (Some(u), None) => self
                .upstreams
                .get_key_value(u)
                .map(|(k, _)| Endpoint::Single(k.clone())),
            (None, Some(v)) => self
                .config
                .virtual_servers
                .get_key_value(v)
                .map(|(k, _)| Endpoint::Virtual(k.as_str().into())),
            _ => None,
        }
    }

    /// Upstreams whose items an endpoint can show.
    pub fn upstreams_of(&self, endpoint: &Endpoint) -> Vec<Arc<str>> {
        match endpoint {
            Endpoint::Single(u) => vec![u.clone()],
            _ => self.upstreams.keys().cloned().collect(),
        }
    }

    /// Whether an endpoint shows anything of `upstream`.
    pub fn endpoint_includes(&self, endpoint: &Endpoint, upstream: &str) -> bool {
        match endpoint {
            Endpoint::Single(u) => &**u == upstream,
            _ => true,
        }
    }

    /// Forgets cached lists of `upstream` (all kinds if `kind` is `None`).
    pub async fn invalidate(&self, upstream: &str, kind: Option<ListKind>) {
        let all = kind.is_none();
        if all || kind == Some(ListKind::Tools) {
            self.tools.invalidate(upstream).await;
            self.tool_views.invalidate_all();
        }
        if all || kind == Some(ListKind::Prompts) {
            self.prompts.invalidate(upstream).await;
            self.prompt_views.invalidate_all();
        }
        if all || kind == Some(ListKind::Resources) {
            self.resources.invalidate(upstream).await;
            self.resource_views.invalidate_all();
        }
    }

    /// The tool an endpoint showed under `name` when its tools were last
    /// listed or called (without waiting for a list to be fetched).
    pub fn tool_now(&self, endpoint: &Endpoint, name: &str) -> Option<Tool> {
        let views = self.last_tools.read().ok()?;
        views.get(endpoint)?.item(name).cloned()
    }

    /// Rebuilds the tool views [`Registry::tool_now`] answers from that
    /// show `upstream` (after its tools changed, or it came or went), and
    /// those of `/mcp` and `/mcp/{upstream}`, so header checks see current
    /// definitions without waiting for a client to list.
    pub async fn refresh_tools(&self, upstream: &Arc<str>) {
        let mut endpoints: Vec<Endpoint> = self
            .last_tools
            .read()
            .map(|views| views.keys().cloned().collect())
            .unwrap_or_default();
        for endpoint in [Endpoint::Aggregate, Endpoint::Single(upstream.clone())] {
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        for endpoint in endpoints {
            if self.endpoint_includes(&endpoint, upstream) {
                self.tools(&endpoint).await;
            }
        }
    }

    /// The tools an endpoint shows.
    pub async fn tools(&self, endpoint: &Endpoint) -> ToolsView {
        let view = self.tools_view(endpoint).await;
        // On the call path: a read lock, and a write only when rebuilt.
        let stale = self.last_tools.read().is_ok_and(|views| {
            views
                .get(endpoint)
                .is_none_or(|last| !Arc::ptr_eq(last, &view))
        });
        if stale {
            if let Ok(mut views) = self.last_tools.write() {
                views.insert(endpoint.clone(), view.clone());
            }
        }
        view
    }

    async fn tools_view(&self, endpoint: &Endpoint) -> ToolsView {
        self.cached(&self.tool_views, "tools", endpoint, || async {
            let naming = self.naming(endpoint);
            let mut lists = Vec::new();
            for upstream in self.upstreams_of(endpoint) {
                let tools = self.upstream_tools(&upstream).await;
                let tools = match &self.screen {
                    Some(screen) => Arc::new(screen.screen(&upstream, &tools)),
                    None => tools,
                };
                lists.push((upstream.clone(), tools));
            }
            let mut built = view::named_view(naming, &lists, &|up, t| {
                view::adjust_tool(&self.config, &self.filters, up, t)
            });
            if let Endpoint::Virtual(name) = endpoint {
                let globs = self.virtual_globs.get(&**name);
                let keep = |n: &str| globs.is_some_and(|g| g.is_match(n));
                built.items.retain(|t| keep(&t.name));
                built.index.retain(|n, _| keep(n));
                built.reindex();
            }
            Arc::new(built)
        })
        .await
    }

    /// The prompts an endpoint shows (virtual servers show none).
    pub async fn prompts(&self, endpoint: &Endpoint) -> PromptsView {
        self.cached(&self.prompt_views, "prompts", endpoint, || async {
            if matches!(endpoint, Endpoint::Virtual(_)) {
                return Arc::new(NamedView::default());
            }
            let mut lists = Vec::new();
            for upstream in self.upstreams_of(endpoint) {
                lists.push((upstream.clone(), self.upstream_prompts(&upstream).await));
            }
            Arc::new(view::named_view(self.naming(endpoint), &lists, &|_, p| {
                Some(p.name.clone())
            }))
        })
        .await
    }

    /// The resources and templates an endpoint shows (virtual servers show none).
    pub async fn resources(&self, endpoint: &Endpoint) -> Arc<ResourceView> {
        self.cached(&self.resource_views, "resources", endpoint, || async {
            if matches!(endpoint, Endpoint::Virtual(_)) {
                return Arc::new(ResourceView::default());
            }
            let mut lists = Vec::new();
            for upstream in self.upstreams_of(endpoint) {
                lists.push((upstream.clone(), self.upstream_resources(&upstream).await));
            }
            Arc::new(view::resource_view(&lists))
        })
        .await
    }

    /// A view from `cache`, built by `build` on a miss; counts hits and misses.
    ///
    /// `build` is a closure and the miss path is boxed on purpose: the view
    /// builder and moka's insertion future are tens of KB, and inline they
    /// would make every request handler's future that large, which tokio
    /// copies on each spawn and every session's task keeps (measured in
    /// docs/benchmarks.md).
    async fn cached<V: Send + Sync + 'static, F: std::future::Future<Output = Arc<V>>>(
        &self,
        cache: &moka::future::Cache<Endpoint, Arc<V>>,
        list: &str,
        endpoint: &Endpoint,
        build: impl FnOnce() -> F,
    ) -> Arc<V> {
        if let Some(view) = cache.get(endpoint).await {
            self.metrics
                .list_cache
                .with_label_values(&[list, "hit"])
                .inc();
            return view;
        }
        self.metrics
            .list_cache
            .with_label_values(&[list, "miss"])
            .inc();
        Box::pin(cache.get_with_by_ref(endpoint, build())).await
    }

    fn naming(&self, endpoint: &Endpoint) -> Naming<'_> {
        match endpoint {
            Endpoint::Single(_) => Naming::Plain,
            _ => Naming::Prefixed(&self.config),
        }
    }

    /// One upstream's tools exactly as it lists them (unscreened,
    /// unrenamed); empty when it is down. For `portcullis pin`.
    pub async fn upstream_tools(&self, upstream: &Arc<str>) -> Arc<Vec<Tool>> {
        self.upstream_list(
            &self.tools,
            upstream,
            |c| c.tools.is_some(),
            "tools/list",
            "tools",
        )
        .await
    }

    async fn upstream_prompts(&self, upstream: &Arc<str>) -> Arc<Vec<Prompt>> {
        self.upstream_list(
            &self.prompts,
            upstream,
            |c| c.prompts.is_some(),
            "prompts/list",
            "prompts",
        )
        .await
    }

    /// One upstream's full list, cached; empty when the upstream is down or
    /// does not declare the capability.
    async fn upstream_list<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        cache: &moka::future::Cache<Arc<str>, Arc<Vec<T>>>,
        upstream: &Arc<str>,
        has: impl Fn(&rmcp::model::ServerCapabilities) -> bool,
        method: &str,
        field: &'static str,
    ) -> Arc<Vec<T>> {
        let Some(up) = self.live(upstream, has) else {
            return Arc::default();
        };
        let fetch = async { self.fetch_all::<T>(up, method, field).await.map(Arc::new) };
        cache
            .try_get_with_by_ref(upstream, fetch)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(upstream = %upstream, error = %e, "{method} failed");
                Arc::default()
            })
    }

    async fn upstream_resources(&self, upstream: &Arc<str>) -> view::UpstreamResources {
        let Some(up) = self.live(upstream, |c| c.resources.is_some()) else {
            return Default::default();
        };
        let fetch = async {
            let resources = self
                .fetch_all::<Resource>(up, "resources/list", "resources")
                .await?;
            let templates = self
                .fetch_all::<ResourceTemplate>(up, "resources/templates/list", "resourceTemplates")
                .await
                .unwrap_or_default();
            Ok::<_, RegistryError>((Arc::new(resources), Arc::new(templates)))
        };
        self.resources
            .try_get_with_by_ref(upstream, fetch)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(upstream = %upstream, error = %e, "resources/list failed");
                Default::default()
            })
    }

    /// The upstream if it is up and declares the capability.
    fn live(
        &self,
        name: &str,
        has: impl Fn(&rmcp::model::ServerCapabilities) -> bool,
    ) -> Option<&Arc<Upstream>> {
        let up = self.upstreams.get(name)?;
        up.server_capabilities().filter(|c| has(c)).map(|_| up)
    }

    /// Lists every page of one upstream list.
    async fn fetch_all<T: DeserializeOwned>(
        &self,
        up: &Upstream,
        method: &str,
        field: &'static str,
    ) -> Result<Vec<T>, RegistryError> {
        let malformed = |message: String| RegistryError::Malformed {
            upstream: up.name().to_owned(),
            what: field,
            message,
        };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = HashSet::new();
        for _ in 0..MAX_PAGES {
            let request: ClientRequest = serde_json::from_value(json!({
                "method": method,
                "params": cursor.as_ref().map(|c| json!({ "cursor": c })).unwrap_or(json!({})),
            }))
            .map_err(|e| malformed(e.to_string()))?;
            let result = up.request_internal(request).await?;
            let mut value = result_value(result).map_err(malformed)?;
            let page = value
                .get_mut(field)
                .map(serde_json::Value::take)
                .unwrap_or(serde_json::Value::Array(Vec::new()));
            items.extend(
                serde_json::from_value::<Vec<T>>(page).map_err(|e| malformed(e.to_string()))?,
            );
            cursor = value
                .get("nextCursor")
                .and_then(|c| c.as_str())
                .map(str::to_owned);
            match &cursor {
                // A cursor seen before would loop forever.
                Some(c) if !seen.insert(c.clone()) => {
                    tracing::warn!(
                        upstream = up.name(),
                        method,
                        "upstream repeated a cursor; stopping"
                    );
                    break;
                }
                Some(_) => {}
                None => return Ok(items),
            }
        }
        tracing::warn!(
            upstream = up.name(),
            method,
            "stopped after {MAX_PAGES} pages"
        );
        Ok(items)
    }
}

fn result_value(result: ServerResult) -> Result<serde_json::Value, String> {
    serde_json::to_value(result).map_err(|e| e.to_string())
}

/// One page of `items` from an opaque gateway cursor.
pub fn page<T: Clone>(
    items: &[T],
    cursor: Option<&str>,
    size: usize,
) -> Result<(Vec<T>, Option<String>), RegistryError> {
    let start = match cursor {
        None => 0,
        Some(c) => c
            .strip_prefix("pg-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or(RegistryError::BadCursor)?,
    };
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| format!("pg-{end}"));
    Ok((items[start..end].to_vec(), next))
}

#[cfg(test)]
mod tests;
