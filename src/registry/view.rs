//! Building what one endpoint shows from the upstreams' own lists: filters,
//! renames, prefixes, collision handling and the indexes that route a name
//! or URI back to its upstream. Pure functions of (config, lists), so they
//! are cheap to test.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use rmcp::model::{Prompt, Resource, ResourceTemplate, Tool};

use super::naming::{exposed_name, resolve_collisions};
use crate::config::{Config, ToolFilterConfig};

/// One upstream's resources and resource templates.
pub type UpstreamResources = (Arc<Vec<Resource>>, Arc<Vec<ResourceTemplate>>);

/// Where an exposed name or URI leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Upstream name.
    pub upstream: Arc<str>,
    /// The name or URI the upstream knows it by.
    pub original: String,
}

/// Items as one endpoint shows them, with the index back to upstreams.
#[derive(Debug, Default)]
pub struct NamedView<T> {
    /// Items in a stable order (upstream, then upstream order).
    pub items: Vec<T>,
    /// Exposed name to target.
    pub index: HashMap<String, Target>,
    /// Exposed name to position in `items`; rebuilt by [`NamedView::reindex`].
    positions: HashMap<String, usize>,
}

impl<T: Named> NamedView<T> {
    /// The item exposed as `name` (a hash lookup: a call must not scan a
    /// catalogue of thousands of tools to find its annotations).
    pub fn item(&self, name: &str) -> Option<&T> {
        self.positions.get(name).and_then(|&i| self.items.get(i))
    }

    /// Rebuilds the name-to-position map after `items` changed.
    pub fn reindex(&mut self) {
        self.positions = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.name().to_owned(), i))
            .collect();
    }
}

/// Resources and templates as one endpoint shows them.
#[derive(Debug, Default)]
pub struct ResourceView {
    /// Concrete resources.
    pub resources: Vec<Resource>,
    /// Templates.
    pub templates: Vec<ResourceTemplate>,
    /// Exposed URI to target.
    pub uris: HashMap<String, Target>,
    /// (upstream, original URI) to exposed URI, for `resources/updated`.
    pub exposed: HashMap<(Arc<str>, String), String>,
    /// Exposed template to target.
    pub template_index: HashMap<String, Target>,
    /// Literal template prefixes (before the first `{`), longest first, for
    /// routing reads of URIs that only a template produces.
    pub template_prefixes: Vec<(String, Arc<str>)>,
}

/// How names are presented on an endpoint.
#[derive(Clone, Copy)]
pub enum Naming<'a> {
    /// Aggregate endpoint: `{prefix}{separator}{name}`.
    Prefixed(&'a Config),
    /// Single-upstream endpoint: names as the upstream has them (after renames).
    Plain,
}

/// Compiled include/exclude globs of one upstream.
pub struct ToolFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl ToolFilter {
    /// Compiles the config's globs (already validated).
    pub fn new(config: &ToolFilterConfig) -> ToolFilter {
        ToolFilter {
            include: (!config.include.is_empty()).then(|| globs(&config.include)),
            exclude: globs(&config.exclude),
        }
    }

    /// Whether an upstream tool name passes.
    pub fn allows(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name)) && !self.exclude.is_match(name)
    }
}

/// Compiles globs; patterns were validated with the config, so a failure here
/// only drops that pattern.
pub fn globs(patterns: &[String]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        if let Ok(glob) = Glob::new(p) {
            builder.add(glob);
        }
    }
    builder.build().unwrap_or_else(|_| GlobSet::empty())
}

/// Anything listed under a name that the gateway may rewrite.
pub trait Named: Clone {
    /// The item's name.
    fn name(&self) -> &str;
    /// Sets the exposed name.
    fn set_name(&mut self, name: String);
}

impl Named for Tool {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name.into();
    }
}

impl Named for Prompt {
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: String) {
        self.name = name;
    }
}

/// Builds a named view (tools or prompts) from per-upstream lists.
/// `adjust` applies per-upstream presentation (filters, renames) and returns
/// the local name, or `None` to hide the item.
pub fn named_view<T: Named>(
    naming: Naming<'_>,
    lists: &[(Arc<str>, Arc<Vec<T>>)],
    adjust: &dyn Fn(&str, &mut T) -> Option<String>,
) -> NamedView<T> {
    let mut staged: Vec<(String, Arc<str>, String, T)> = Vec::new();
    for (upstream, items) in lists {
        for item in items.iter() {
            let mut item = item.clone();
            let original = item.name().to_owned();
            let Some(local) = adjust(upstream, &mut item) else {
                continue;
            };
            let prefix = match naming {
                Naming::Prefixed(config) => {
                    Some((config.prefix_of(upstream), config.separator.as_str()))
                }
                Naming::Plain => None,
            };
            let name = exposed_name(prefix, upstream, &original, &local);
            staged.push((name, upstream.clone(), original, item));
        }
    }
    let mut names: Vec<(String, &str, &str)> = staged
        .iter()
        .map(|(n, u, o, _)| (n.clone(), &**u, o.as_str()))
        .collect();
    for change in resolve_collisions(&mut names) {
        tracing::warn!(%change, "exposed name collided; renamed with a stable hash");
    }
    let names: Vec<String> = names.into_iter().map(|(n, _, _)| n).collect();
    let mut view = NamedView {
        items: Vec::with_capacity(staged.len()),
        index: HashMap::with_capacity(staged.len()),
        positions: HashMap::new(),
    };
    for ((_, upstream, original, mut item), name) in staged.into_iter().zip(names) {
        item.set_name(name.clone());
        view.index.insert(name, Target { upstream, original });
        view.items.push(item);
    }
    view.reindex();
    view
}

/// Applies an upstream's tool filter, rename and description override.
pub fn adjust_tool(
    config: &Config,
    filters: &HashMap<String, ToolFilter>,
    upstream: &str,
    tool: &mut Tool,
) -> Option<String> {
    let up = config.upstreams.get(upstream)?;
    let original = tool.name.to_string();
    if !filters.get(upstream).is_none_or(|f| f.allows(&original)) {
        return None;
    }
    if let Some(description) = up.tools.descriptions.get(&original) {
        tool.description = Some(description.clone().into());
    }
    Some(up.tools.rename.get(&original).cloned().unwrap_or(original))
}

/// A URI-scheme-safe rendering of an upstream name, for disambiguated URIs.
fn scheme_part(upstream: &str) -> String {
    upstream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Builds the resource view. A URI (or template) listed by two upstreams is
/// disambiguated for all of them as `mcp-{upstream}+{uri}`: still a valid URI,
/// and no upstream's resource shadows another's.
pub fn resource_view(lists: &[(Arc<str>, UpstreamResources)]) -> ResourceView {
    let mut owners: HashMap<&str, usize> = HashMap::new();
    let mut template_owners: HashMap<&str, usize> = HashMap::new();
    for (_, (resources, templates)) in lists {
        for r in resources.iter() {
            *owners.entry(r.uri.as_str()).or_default() += 1;
        }
        for t in templates.iter() {
            *template_owners.entry(t.uri_template.as_str()).or_default() += 1;
        }
    }
    let disambiguate = |upstream: &str, uri: &str, count: usize| {
        if count > 1 {
            format!("mcp-{}+{uri}", scheme_part(upstream))
        } else {
            uri.to_owned()
        }
    };
    let mut view = ResourceView::default();
    for (upstream, (resources, templates)) in lists {
        for r in resources.iter() {
            let exposed = disambiguate(
                upstream,
                &r.uri,
                owners.get(r.uri.as_str()).copied().unwrap_or(1),
            );
            let mut r = r.clone();
            let original = std::mem::replace(&mut r.uri, exposed.clone());
            view.exposed
                .insert((upstream.clone(), original.clone()), exposed.clone());
            view.uris.insert(
                exposed,
                Target {
                    upstream: upstream.clone(),
                    original,
                },
            );
            view.resources.push(r);
        }
        for t in templates.iter() {
            let count = template_owners
                .get(t.uri_template.as_str())
                .copied()
                .unwrap_or(1);
            let exposed = disambiguate(upstream, &t.uri_template, count);
            let mut t = t.clone();
            let original = std::mem::replace(&mut t.uri_template, exposed.clone());
            let literal = exposed.split('{').next().unwrap_or_default().to_owned();
            view.template_prefixes.push((literal, upstream.clone()));
            view.template_index.insert(
                exposed,
                Target {
                    upstream: upstream.clone(),
                    original,
                },
            );
            view.templates.push(t);
        }
    }
    view.template_prefixes
        .sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    view
}

impl ResourceView {
    /// The upstream and original URI for a URI a client asks to read.
    pub fn route(&self, uri: &str, single: Option<&Arc<str>>) -> Option<Target> {
        if let Some(t) = self.uris.get(uri) {
            return Some(t.clone());
        }
        let templated = self
            .template_prefixes
            .iter()
            .find(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()));
        if let Some((prefix, upstream)) = templated {
            // A disambiguated template's URIs carry the marker; strip it back off.
            let marker = format!("mcp-{}+", scheme_part(upstream));
            let original = if prefix.starts_with(&marker) {
                uri.strip_prefix(&marker).unwrap_or(uri)
            } else {
                uri
            };
            return Some(Target {
                upstream: upstream.clone(),
                original: original.to_owned(),
            });
        }
        single.map(|upstream| Target {
            upstream: upstream.clone(),
            original: uri.to_owned(),
        })
    }
}
