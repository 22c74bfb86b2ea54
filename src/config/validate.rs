//! Checks serde cannot express: names, URLs, globs, headers, limits.
//! One small function per section, each naming the field it rejects.

use std::path::Path;

use super::{
    AuthConfig, Config, ConfigError, HttpUpstreamConfig, ToolFilterConfig, UpstreamConfig,
};

/// True when `s` uses only the MCP tool-name characters.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Config {
    /// Validates the parsed config; see the module docs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let file = self.source.as_path();
        if !is_name(&self.separator) {
            return Err(ConfigError::field(
                file,
                "separator",
                "must be non-empty and use only A-Z a-z 0-9 _ - .",
            ));
        }
        if self.http.max_body_bytes == 0 || self.http.page_size == 0 {
            return Err(ConfigError::field(
                file,
                "http",
                "max_body_bytes and page_size must be greater than 0",
            ));
        }
        for (name, upstream) in &self.upstreams {
            validate_upstream(file, name, upstream)?;
        }
        validate_auth(file, &self.auth)?;
        if self.runtime.worker_threads == Some(0) {
            return Err(ConfigError::field(
                file,
                "runtime.worker_threads",
                "must be at least 1",
            ));
        }
        for (i, secret) in self.tokens.secrets.iter().enumerate() {
            if secret.len() < super::auth::MIN_TOKEN_SECRET {
                return Err(ConfigError::field(
                    file,
                    format!("tokens.secrets.{i}"),
                    format!(
                        "must be at least {} bytes (e.g. `openssl rand -base64 48`)",
                        super::auth::MIN_TOKEN_SECRET
                    ),
                ));
            }
        }
        if let Some(p) = &self.policies {
            let dir = self.resolve_path(&p.dir);
            if !dir.is_dir() {
                return Err(ConfigError::field(
                    file,
                    "policies.dir",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        for (name, vs) in &self.virtual_servers {
            let field = format!("virtual_servers.{name}");
            if !is_name(name) {
                return Err(ConfigError::field(
                    file,
                    field,
                    "name must use only A-Z a-z 0-9 _ - .",
                ));
            }
            for (i, glob) in vs.tools.iter().enumerate() {
                check_glob(file, &format!("{field}.tools.{i}"), glob)?;
            }
        }
        self.ratelimit.validate(file, &self.upstreams)?;
        super::llm::validate_llm(file, &self.providers, &self.models, self.sampling.as_ref())
    }
}

fn validate_upstream(file: &Path, name: &str, u: &UpstreamConfig) -> Result<(), ConfigError> {
    let field = format!("upstreams.{name}");
    if !is_name(name) {
        return Err(ConfigError::field(
            file,
            field,
            "name must use only A-Z a-z 0-9 _ - .",
        ));
    }
    let kinds = [u.stdio.is_some(), u.http.is_some(), u.sse.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ConfigError::field(
            file,
            field,
            "set exactly one of `stdio`, `http` or `sse`",
        ));
    }
    if let Some(stdio) = &u.stdio {
        if stdio.command.trim().is_empty() {
            return Err(ConfigError::field(
                file,
                format!("{field}.stdio.command"),
                "is empty",
            ));
        }
    }
    if let Some(http) = &u.http {
        check_http(file, &format!("{field}.http"), http)?;
    }
    if let Some(sse) = &u.sse {
        check_http(file, &format!("{field}.sse"), sse)?;
    }
    if let Some(prefix) = &u.prefix {
        if !is_name(prefix) {
            return Err(ConfigError::field(
                file,
                format!("{field}.prefix"),
                "must use only A-Z a-z 0-9 _ - .",
            ));
        }
    }
    if u.max_sessions == 0 {
        return Err(ConfigError::field(
            file,
            format!("{field}.max_sessions"),
            "must be at least 1",
        ));
    }
    if u.timeout.is_zero() || u.connect_timeout.is_zero() {
        return Err(ConfigError::field(
            file,
            field,
            "timeouts must be greater than 0",
        ));
    }
    check_tools(file, &format!("{field}.tools"), &u.tools)
}

fn check_http(file: &Path, field: &str, http: &HttpUpstreamConfig) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(&http.url)
        .map_err(|e| ConfigError::field(file, format!("{field}.url"), format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::field(
            file,
            format!("{field}.url"),
            "scheme must be http or https",
        ));
    }
    for (name, value) in &http.headers {
        let header = format!("{field}.headers.{name}");
        http::HeaderName::try_from(name.as_str())
            .map_err(|_| ConfigError::field(file, &header, "not a valid header name"))?;
        http::HeaderValue::try_from(value.as_str())
            .map_err(|_| ConfigError::field(file, &header, "not a valid header value"))?;
    }
    Ok(())
}

fn check_tools(file: &Path, field: &str, tools: &ToolFilterConfig) -> Result<(), ConfigError> {
    for (i, glob) in tools.include.iter().enumerate() {
        check_glob(file, &format!("{field}.include.{i}"), glob)?;
    }
    for (i, glob) in tools.exclude.iter().enumerate() {
        check_glob(file, &format!("{field}.exclude.{i}"), glob)?;
    }
    for (from, to) in &tools.rename {
        if !is_name(to) {
            return Err(ConfigError::field(
                file,
                format!("{field}.rename.{from}"),
                "new name must use only A-Z a-z 0-9 _ - .",
            ));
        }
    }
    Ok(())
}

fn check_glob(file: &Path, field: &str, glob: &str) -> Result<(), ConfigError> {
    globset::Glob::new(glob)
        .map(drop)
        .map_err(|e| ConfigError::field(file, field, format!("bad glob: {e}")))
}

fn validate_auth(file: &Path, auth: &AuthConfig) -> Result<(), ConfigError> {
    for (i, key) in auth.api_keys.iter().enumerate() {
        let field = format!("auth.api_keys.{i}");
        if key.id.is_empty() {
            return Err(ConfigError::field(
                file,
                format!("{field}.id"),
                "must not be empty",
            ));
        }
        if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::field(
                file,
                format!("{field}.sha256"),
                "must be the 64 hex digits of the key's SHA-256 (e.g. `printf %s KEY | sha256sum`)",
            ));
        }
    }
    if let Some(jwt) = &auth.jwt {
        match (&jwt.jwks_url, &jwt.jwks_file) {
            (Some(url), None) => {
                if reqwest::Url::parse(url).is_err() {
                    return Err(ConfigError::field(
                        file,
                        "auth.jwt.jwks_url",
                        "not a valid URL",
                    ));
                }
            }
            (None, Some(_)) => {}
            _ => {
                return Err(ConfigError::field(
                    file,
                    "auth.jwt",
                    "set exactly one of `jwks_url` and `jwks_file`",
                ))
            }
        }
    }
    Ok(())
}
