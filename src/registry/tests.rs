use std::path::Path;
use std::sync::Arc;

use rmcp::model::{Resource, Tool};
use serde_json::json;

use super::view::*;
use super::*;
use crate::config::Config;

fn tool(name: &str) -> Tool {
    serde_json::from_value(json!({"name": name, "inputSchema": {"type": "object"}})).unwrap()
}

fn resource(uri: &str) -> Resource {
    serde_json::from_value(json!({"uri": uri, "name": uri})).unwrap()
}

fn config() -> Config {
    Config::parse(
        r#"
upstreams:
  a: { stdio: { command: x }, tools: { exclude: ["secret*"], rename: { long_name: short }, descriptions: { echo: "Says it back" } } }
  a__b: { stdio: { command: x } }
  t: { stdio: { command: x }, prefix: clock, tools: { include: ["get_*"] } }
"#,
        Path::new("t.yaml"),
        &|_| None,
    )
    .unwrap()
}

fn tools_view(config: &Config, naming: Naming<'_>) -> NamedView<Tool> {
    let filters = config
        .upstreams
        .iter()
        .map(|(n, u)| (n.clone(), ToolFilter::new(&u.tools)))
        .collect();
    let lists: Vec<(Arc<str>, Arc<Vec<Tool>>)> = vec![
        (
            "a".into(),
            Arc::new(vec![
                tool("echo"),
                tool("secret_key"),
                tool("long_name"),
                tool("b__c"),
            ]),
        ),
        ("a__b".into(), Arc::new(vec![tool("c")])),
        (
            "t".into(),
            Arc::new(vec![tool("get_time"), tool("set_time")]),
        ),
    ];
    named_view(naming, &lists, &|up, t| {
        adjust_tool(config, &filters, up, t)
    })
}

#[test]
fn aggregate_names_filters_renames_and_routes() {
    let config = config();
    let view = tools_view(&config, Naming::Prefixed(&config));
    let names: Vec<&str> = view.items.iter().map(|t| &*t.name).collect();
    assert!(names.contains(&"a__echo"));
    assert!(names.contains(&"a__short"), "{names:?}");
    assert!(
        names.contains(&"clock__get_time"),
        "prefix override: {names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("secret")), "exclude glob");
    assert!(!names.contains(&"clock__set_time"), "include glob");
    let echo = view.items.iter().find(|t| t.name == "a__echo").unwrap();
    assert_eq!(echo.description.as_deref(), Some("Says it back"));
    assert_eq!(view.index["a__short"].original, "long_name");
    // `a` + `b__c` and `a__b` + `c` both render as `a__b__c`: both routable.
    let colliding: Vec<&Target> = view
        .index
        .iter()
        .filter(|(n, _)| n.starts_with("a__b__c"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(colliding.len(), 2);
    assert!(colliding
        .iter()
        .any(|t| &*t.upstream == "a" && t.original == "b__c"));
    assert!(colliding
        .iter()
        .any(|t| &*t.upstream == "a__b" && t.original == "c"));
}

#[test]
fn items_are_found_by_exposed_name_after_filtering() {
    let config = config();
    let mut view = tools_view(&config, Naming::Prefixed(&config));
    for (i, t) in view.items.iter().enumerate() {
        assert!(std::ptr::eq(view.item(&t.name).unwrap(), &view.items[i]));
    }
    assert!(view.item("a__long_name").is_none(), "renamed away");
    assert!(view.item("nope").is_none());
    // A virtual server drops items; positions must follow.
    view.items.retain(|t| t.name != "a__echo");
    view.reindex();
    assert!(view.item("a__echo").is_none());
    assert_eq!(&*view.item("a__short").unwrap().name, "a__short");
}

#[test]
fn plain_naming_has_no_prefix() {
    let config = config();
    let view = tools_view(&config, Naming::Plain);
    assert!(view.index.contains_key("echo"));
    assert!(view.index.contains_key("get_time"));
}

#[test]
fn shared_uris_are_disambiguated_not_shadowed() {
    let lists = vec![
        (
            "a".into(),
            (
                Arc::new(vec![resource("file:///x"), resource("test://only-a")]),
                Arc::new(vec![]),
            ),
        ),
        (
            "b_2".into(),
            (Arc::new(vec![resource("file:///x")]), Arc::new(vec![])),
        ),
    ];
    let view = resource_view(&lists);
    assert_eq!(view.resources.len(), 3);
    assert_eq!(view.uris["mcp-a+file:///x"].upstream.as_ref(), "a");
    assert_eq!(view.uris["mcp-b-2+file:///x"].original, "file:///x");
    assert_eq!(view.uris["test://only-a"].upstream.as_ref(), "a");
    assert!(!view.uris.contains_key("file:///x"));
}

#[test]
fn pages_follow_cursors_and_reject_bad_ones() {
    let items: Vec<u32> = (0..5).collect();
    let (page, next) = page(&items, None, 2).unwrap();
    assert_eq!(page, vec![0, 1]);
    let (page, next) = super::page(&items, next.as_deref(), 2).unwrap();
    assert_eq!(page, vec![2, 3]);
    let (page, next) = super::page(&items, next.as_deref(), 2).unwrap();
    assert_eq!((page, next), (vec![4], None));
    assert!(super::page(&items, Some("garbage"), 2).is_err());
}
