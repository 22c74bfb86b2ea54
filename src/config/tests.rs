use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("gw.yaml"), &|name| {
        (name == "REMOTE_TOKEN").then(|| "t0ken".to_owned())
    })
}

#[test]
fn issue_example_parses() {
    let config = parse(
        r#"
listen: 127.0.0.1:8080
upstreams:
  everything:
    stdio: { command: npx, args: ["-y", "@modelcontextprotocol/server-everything"], env: { FOO: bar } }
  time:
    stdio: { command: python3, args: ["-m", "mcp_server_time"] }
  remote:
    http: { url: "http://127.0.0.1:9000/mcp", headers: { Authorization: "Bearer ${REMOTE_TOKEN}" } }
  legacy:
    sse: { url: "http://127.0.0.1:9001/sse" }
"#,
    )
    .unwrap();
    assert_eq!(config.upstreams.len(), 4);
    let Some(Transport::Http(remote)) = config.upstreams["remote"].transport() else {
        panic!("remote is not http");
    };
    assert_eq!(remote.headers["Authorization"], "Bearer t0ken");
    assert!(matches!(
        config.upstreams["legacy"].transport(),
        Some(Transport::Sse(_))
    ));
    assert_eq!(config.upstreams["time"].session, SessionMode::Shared);
}

fn field_error(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Field {
            file,
            field,
            message,
        }) => {
            assert_eq!(file, Path::new("gw.yaml"));
            (field, message)
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn errors_name_the_field() {
    let (field, message) = field_error("upstreams:\n  a:\n    stdio: { args: [] }\n");
    assert_eq!(field, "upstreams.a.stdio");
    assert!(message.contains("command"), "{message}");

    let (field, _) =
        field_error("upstreams:\n  a:\n    stdio: { command: x }\n    timeout: soon\n");
    assert_eq!(field, "upstreams.a.timeout");

    let (field, message) = field_error("upstreams:\n  a: { http: { url: 'ftp://x' } }\n");
    assert_eq!(field, "upstreams.a.http.url");
    assert!(message.contains("scheme"));

    let (field, _) =
        field_error("upstreams:\n  a: { stdio: { command: x }, http: { url: 'http://x' } }\n");
    assert_eq!(field, "upstreams.a");

    let (field, message) = field_error("upstreams:\n  a: { http: { url: '${MISSING}' } }\n");
    assert_eq!(field, "upstreams.a.http.url");
    assert!(message.contains("MISSING"));

    let (field, _) =
        field_error("upstreams:\n  a: { stdio: { command: x }, tools: { include: ['[a'] } }\n");
    assert_eq!(field, "upstreams.a.tools.include.0");

    let (field, message) = field_error("lissten: 1.2.3.4:5\n");
    assert_eq!(field, "lissten");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn syntax_errors_carry_position() {
    match parse("upstreams: [\n") {
        Err(ConfigError::Syntax { message, .. }) => assert!(message.contains("line"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_file_is_a_config_with_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.separator, "__");
    assert!(config.upstreams.is_empty());
}

#[test]
fn auth_example_parses_and_bad_auth_is_named() {
    let config = parse(
        r#"
auth:
  api_keys:
    - { id: ci-bot, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", groups: [automation] }
  jwt: { jwks_url: "https://idp.example/jwks.json", issuer: "https://idp.example", audience: portcullis }
"#,
    )
    .unwrap();
    assert_eq!(config.auth.api_keys[0].groups, ["automation"]);
    assert!(config.auth.enabled());
    let (field, message) = field_error("auth: { api_keys: [ { id: x, sha256: abc } ] }\n");
    assert_eq!(field, "auth.api_keys.0.sha256");
    assert!(message.contains("SHA-256"), "{message}");
    let (field, _) = field_error("auth: { jwt: { issuer: i, audience: a } }\n");
    assert_eq!(field, "auth.jwt");
    let (field, message) = field_error("policies: { dir: /nonexistent/policies }\n");
    assert_eq!(field, "policies.dir");
    assert!(message.contains("not a directory"), "{message}");
}

#[test]
fn token_secrets_must_be_long_and_never_print() {
    let (field, message) = field_error("tokens:\n  secrets: ['short']\n");
    assert_eq!(field, "tokens.secrets.0");
    assert!(message.contains("32 bytes"), "{message}");
    let secret = "s".repeat(40);
    let config = parse(&format!("tokens:\n  secrets: ['{secret}']\n")).unwrap();
    assert_eq!(config.tokens.secrets, vec![secret.clone()]);
    assert!(!format!("{config:?}").contains(&secret));
}

#[test]
fn worker_threads_must_be_positive() {
    let (field, _) = field_error("runtime: { worker_threads: 0 }\n");
    assert_eq!(field, "runtime.worker_threads");
    let config = parse("runtime: { worker_threads: 2 }\n").unwrap();
    assert_eq!(config.runtime.worker_threads, Some(2));
    assert_eq!(parse("").unwrap().runtime.worker_threads, None);
}
