//! Token usage in one normalized shape, read from either wire format, and
//! its cost from a price table.

use serde_json::{json, Value};

use crate::config::PriceConfig;

/// Tokens of one request. `input` counts every prompt token, cached ones
/// included (OpenAI's `prompt_tokens`); `cached` is the part served from
/// the provider's prompt cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
    /// Prompt tokens read from cache (a subset of `input`).
    pub cached: u64,
}

/// The number at `path`; not `Value::pointer`, which allocates a string
/// per path segment.
fn num(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_u64()
}

impl Usage {
    /// From an OpenAI `usage` object (chat or embeddings).
    pub fn from_openai(u: &Value) -> Option<Usage> {
        let input = num(u, &["prompt_tokens"])?;
        Some(Usage {
            input,
            output: num(u, &["completion_tokens"]).unwrap_or(0),
            cached: num(u, &["prompt_tokens_details", "cached_tokens"]).unwrap_or(0),
        })
    }

    /// Merges an Anthropic `usage` object (from a message, `message_start`
    /// or `message_delta`) into `self`: fields it carries replace ours.
    /// Anthropic's `input_tokens` excludes cache reads and writes.
    pub fn merge_anthropic(&mut self, u: &Value) {
        let plain = num(u, &["input_tokens"]);
        let read = num(u, &["cache_read_input_tokens"]);
        let write = num(u, &["cache_creation_input_tokens"]);
        if plain.is_some() || read.is_some() || write.is_some() {
            let old_plain = self.input - self.cached;
            let read = read.unwrap_or(self.cached);
            self.input = plain.unwrap_or(old_plain) + read + write.unwrap_or(0);
            self.cached = read;
        }
        if let Some(out) = num(u, &["output_tokens"]) {
            self.output = out;
        }
    }

    /// From an Anthropic `usage` object.
    pub fn from_anthropic(u: &Value) -> Usage {
        let mut usage = Usage::default();
        usage.merge_anthropic(u);
        usage
    }

    /// As an OpenAI `usage` object.
    pub fn to_openai(self) -> Value {
        json!({
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": { "cached_tokens": self.cached },
        })
    }

    /// As an Anthropic `usage` object.
    pub fn to_anthropic(self) -> Value {
        json!({
            "input_tokens": self.input.saturating_sub(self.cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached,
            "output_tokens": self.output,
        })
    }

    /// Cost in US dollars under `price` (per million tokens).
    pub fn cost(&self, price: &PriceConfig) -> f64 {
        let uncached = self.input.saturating_sub(self.cached) as f64;
        let cached_price = price.cached.unwrap_or(price.input);
        (uncached * price.input
            + self.cached as f64 * cached_price
            + self.output as f64 * price.output)
            / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_normalize_to_the_same_usage() {
        let o = Usage::from_openai(&json!({"prompt_tokens": 10, "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 3}}))
        .unwrap();
        let a = Usage::from_anthropic(&json!({"input_tokens": 7, "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 0, "output_tokens": 4}));
        assert_eq!(o, a);
        assert_eq!(Usage::from_anthropic(&a.to_anthropic()), a);
        assert_eq!(Usage::from_openai(&a.to_openai()), Some(a));
    }

    #[test]
    fn anthropic_stream_deltas_update_output_and_keep_input() {
        let mut u = Usage::from_anthropic(&json!({"input_tokens": 5, "output_tokens": 1}));
        u.merge_anthropic(&json!({"output_tokens": 9}));
        assert_eq!(
            u,
            Usage {
                input: 5,
                output: 9,
                cached: 0
            }
        );
    }

    #[test]
    fn cost_uses_cached_price_when_set() {
        let u = Usage {
            input: 1_000_000,
            output: 1_000_000,
            cached: 500_000,
        };
        let p = PriceConfig {
            input: 2.0,
            output: 10.0,
            cached: Some(1.0),
        };
        assert!((u.cost(&p) - (1.0 + 0.5 + 10.0)).abs() < 1e-9);
        let p = PriceConfig {
            input: 2.0,
            output: 10.0,
            cached: None,
        };
        assert!((u.cost(&p) - 12.0).abs() < 1e-9);
    }
}
