//! The generic high-entropy check, and tests for every secret detector.
//!
//! A random token differs from an identifier or a path in two ways an
//! entropy number alone cannot separate: its characters are spread evenly
//! (Shannon entropy close to the maximum for its length) *and* its
//! character classes alternate often (`aZ3k` rather than `getUser`). Tokens
//! that lack upper case, lower case or digits are never flagged, which by
//! design leaves hex digests, UUIDs, lower-case slugs and numbers alone.
//! Tokens longer than 256 characters are left alone too: those are
//! embedded data (base64 images), not credentials. Identifiers made of
//! words (`TF2_IsPlayerInCondition`, `BSD-3-Clause-No-Military-License`)
//! pass both tests, so a token in which over a third of the characters sit
//! in runs of three or more lower-case letters is treated as words.

use std::ops::Range;

/// Below this a token is too short to be a credential worth flagging.
const MIN_LEN: usize = 20;
/// Above this a token is data, not a credential.
const MAX_LEN: usize = 256;
/// Entropy as a fraction of the maximum for the token's length (capped at
/// 64 distinct symbols). Random base62/base64 tokens score 0.85–0.95;
/// English-like identifiers 0.75–0.85.
const ENTROPY_RATIO: f64 = 0.8;
/// Fraction of adjacent characters whose class (upper, lower, digit,
/// symbol) differs. Random tokens: ~0.6; camelCase and paths: 0.25–0.4.
const CLASS_CHANGES: f64 = 0.45;
/// Fraction of characters in lower-case runs of 3+ above which a token
/// reads as words. Random base62 tokens: ~0.1–0.2; identifiers: 0.4–0.8.
const WORDY: f64 = 0.35;

pub(super) fn high_entropy(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let token = text[r.clone()].trim_end_matches('=');
    let n = token.len();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return None;
    }
    let b = token.as_bytes();
    let has = |f: fn(&u8) -> bool| b.iter().any(f);
    if !(has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit)) {
        return None;
    }
    let mut counts = [0u32; 128];
    for &c in b {
        counts[usize::from(c & 0x7f)] += 1;
    }
    let len = n as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    let max = (n.min(64) as f64).log2();
    let class = |c: u8| match c {
        b'A'..=b'Z' => 0,
        b'a'..=b'z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let changes = b.windows(2).filter(|w| class(w[0]) != class(w[1])).count() as f64 / (len - 1.0);
    let mut in_words = 0;
    let mut run = 0;
    for &c in b.iter().chain(std::iter::once(&b' ')) {
        if c.is_ascii_lowercase() {
            run += 1;
        } else {
            if run >= 3 {
                in_words += run;
            }
            run = 0;
        }
    }
    let wordy = f64::from(in_words) / len;
    (entropy / max >= ENTROPY_RATIO && changes >= CLASS_CHANGES && wordy <= WORDY)
        .then_some(r.start..r.start + n)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fires, names};

    #[test]
    fn aws_access_key_id() {
        assert!(fires("secret.aws_access_key", "id=AKIAIOSFODNN7EXAMPLE;"));
        assert!(fires("secret.aws_access_key", "ASIAY34FZKBOKMUTVV7A"));
        assert!(!fires("secret.aws_access_key", "AKIAIOSFODNN7EXAMPL"));
        assert!(!fires("secret.aws_access_key", "XAKIAIOSFODNN7EXAMPLE"));
    }

    #[test]
    fn aws_secret_key_near_its_name() {
        let cfg = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n";
        assert!(fires("secret.aws_secret_key", cfg));
        let json = r#"{"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#;
        assert!(fires("secret.aws_secret_key", json));
        // Forty characters with no aws_secret nearby are not this detector.
        assert!(!fires(
            "secret.aws_secret_key",
            "value = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ));
    }

    #[test]
    fn aws_secret_key_span_is_only_the_value() {
        let cfg = "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let d = super::super::scan(
            cfg,
            super::super::mask_for("secret.aws_secret_key").unwrap(),
        );
        assert_eq!(
            &cfg[d[0].range.clone()],
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
    }

    #[test]
    fn gcp_api_key() {
        assert!(fires(
            "secret.gcp_api_key",
            "key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"
        ));
        assert!(!fires("secret.gcp_api_key", "AIzaShort"));
    }

    #[test]
    fn github_tokens() {
        for t in [
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "gho_0123456789abcdefghijABCDEFGHIJ012345",
            "ghu_0123456789abcdefghijABCDEFGHIJ012345",
            "ghs_0123456789abcdefghijABCDEFGHIJ012345",
            "ghr_0123456789abcdefghijABCDEFGHIJ012345",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXY",
        ] {
            assert!(fires("secret.github_token", &format!("token {t}")), "{t}");
        }
        assert!(!fires("secret.github_token", "ghp_short"));
        assert!(!fires(
            "secret.github_token",
            "ghx_0123456789abcdefghijABCDEFGHIJ012345"
        ));
    }

    #[test]
    fn slack_tokens_and_webhooks() {
        assert!(fires(
            "secret.slack_token",
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
        ));
        assert!(fires("secret.slack_token", "xoxp-1234567890-abc"));
        assert!(!fires("secret.slack_token", "xoxz-1234567890-abc"));
        assert!(fires(
            "secret.slack_webhook",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
        ));
        assert!(!fires("secret.slack_webhook", "https://hooks.slack.com/"));
    }

    #[test]
    fn private_key_blocks() {
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----";
        assert!(fires("secret.private_key", pem));
        assert!(fires(
            "secret.private_key",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1"
        ));
        assert!(fires(
            "secret.private_key",
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"
        ));
        assert!(!fires(
            "secret.private_key",
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"
        ));
        assert!(!fires("secret.private_key", "-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn private_key_is_redacted_whole() {
        let pem =
            "key:\n-----BEGIN EC PRIVATE KEY-----\nAAAA\nBBBB\n-----END EC PRIVATE KEY-----\nafter";
        let out = super::super::redact(pem, &super::super::scan(pem, super::super::all()));
        assert_eq!(out, "key:\n[REDACTED:secret.private_key]\nafter");
    }

    #[test]
    fn jwts() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert!(fires("secret.jwt", &format!("Bearer {jwt}")));
        assert!(!fires(
            "secret.jwt",
            "eyJhbGciOiJIUzI1NiJ9 is only a header"
        ));
        assert!(!fires("secret.jwt", "a.b.c"));
    }

    #[test]
    fn stripe_live_keys() {
        assert!(fires(
            "secret.stripe_key",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
        ));
        assert!(fires(
            "secret.stripe_key",
            "rk_live_4eC39HqLyjWDarjtT1zdp7dc"
        ));
        assert!(!fires(
            "secret.stripe_key",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
        ));
    }

    #[test]
    fn high_entropy_tokens() {
        assert!(fires(
            "secret.high_entropy",
            "api_key: Zk3Jq9XbP2mRt7LwV5nYc8Hd"
        ));
        assert!(fires(
            "secret.high_entropy",
            "x 9fK2pQ7zR4vB8nM1xC6wL3tY5hJ0dG2s y"
        ));
        assert!(fires(
            "secret.high_entropy",
            "b64 kQ8vZ3/pL+2mX9rT4wY7nB1cF6hJ0dS5aE="
        ));
    }

    #[test]
    fn high_entropy_leaves_identifiers_digests_and_data_alone() {
        for s in [
            "getUserAccountSettings2",
            "MyVeryLongClassNameForThings",
            "usr/local/lib/python3/site-packages",
            "some_long_variable_name_here_v2",
            "MAX_CONNECTIONS_PER_HOST_2",
            "HttpRequestHandlerV2Factory",
            "README-2024-01-15-Final",
            "550e8400-e29b-41d4-a716-446655440000",
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "BSD-3-Clause-No-Military-License",
            "TF2_IsPlayerInCondition",
            "SetVariantPosVector3D",
            "SQL2DBinaryWaveToTextWave",
            "MCC_SetSlowCompTauX20Enable",
            "PolyForm-Small-Business-1.0.0",
        ] {
            assert!(!fires("secret.high_entropy", s), "{s}");
        }
        let image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg".repeat(4);
        assert!(!fires("secret.high_entropy", &image));
    }

    #[test]
    fn specific_secret_suppresses_the_generic_one() {
        let n = names("token ghp_0123456789abcdefghijABCDEFGHIJ012345");
        assert_eq!(n, vec!["secret.github_token"]);
    }
}
