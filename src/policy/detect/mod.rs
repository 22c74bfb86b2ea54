//! Content detectors: secrets, personal data and prompt-injection text.
//!
//! Every detector is a regular expression, optionally followed by a check
//! the regex cannot express (a Luhn or mod-97 checksum, an entropy
//! threshold). All patterns are compiled once into a `RegexSet`, so a string
//! that contains nothing suspicious costs one pass however many detectors
//! are enabled; only the detectors the set reports run again to find spans.
//!
//! Detections carry byte ranges into the scanned text, never the text: a
//! matched secret must not be copied anywhere it could be logged.

mod injection;
mod pii;
mod secrets;

use std::ops::Range;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};

/// A set of enabled detectors, one bit per entry of [`DETECTORS`].
pub(crate) type Mask = u64;

/// What a regex match has to pass to count, and which part of it is the
/// sensitive span.
#[derive(Clone, Copy)]
enum Check {
    /// The whole match.
    Match,
    /// Capture group 1 only (the key name around it is not secret).
    Group1,
    /// A function of the whole text and the match's range, returning the
    /// span to report (possibly shorter) or `None` to drop it.
    With(fn(&str, Range<usize>) -> Option<Range<usize>>),
}

/// One detector's definition.
pub(crate) struct Def {
    /// `category.name`, e.g. `secret.github_token`.
    pub(crate) name: &'static str,
    /// `secrets`, `pii` or `injection`.
    pub(crate) category: &'static str,
    pattern: &'static str,
    check: Check,
}

/// Every detector. Order matters in one way: where spans of two detectors
/// overlap, redaction labels the merged span with the earlier one, so the
/// specific secrets come before the generic high-entropy detector.
pub(crate) static DETECTORS: &[Def] = &[
    Def {
        name: "secret.aws_access_key",
        category: "secrets",
        pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
        check: Check::Match,
    },
    Def {
        name: "secret.aws_secret_key",
        category: "secrets",
        pattern: r#"(?i)aws[^\n]{0,20}?secret[^\n]{0,20}?[:=]\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        check: Check::Group1,
    },
    Def {
        name: "secret.gcp_api_key",
        category: "secrets",
        pattern: r"(?-u:\b)AIza[0-9A-Za-z_\-]{35}",
        check: Check::Match,
    },
    Def {
        name: "secret.github_token",
        category: "secrets",
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
        check: Check::Match,
    },
    Def {
        name: "secret.slack_token",
        category: "secrets",
        pattern: r"(?-u:\b)xox[abprs]-[A-Za-z0-9\-]{10,}",
        check: Check::Match,
    },
    Def {
        name: "secret.slack_webhook",
        category: "secrets",
        pattern: r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+\-]{8,}",
        check: Check::Match,
    },
    Def {
        name: "secret.private_key",
        category: "secrets",
        // A key cut off before its END line is still a key: redact to the end.
        pattern: r"-----BEGIN[A-Z0-9 ]{0,20} PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z0-9 ]{0,20} PRIVATE KEY(?: BLOCK)?-----|\z)",
        check: Check::Match,
    },
    Def {
        name: "secret.jwt",
        category: "secrets",
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
        check: Check::Match,
    },
    Def {
        name: "secret.stripe_key",
        category: "secrets",
        pattern: r"(?-u:\b)[sr]k_live_[A-Za-z0-9]{20,}",
        check: Check::Match,
    },
    Def {
        name: "secret.high_entropy",
        category: "secrets",
        pattern: r"[A-Za-z0-9+/_\-]{20,}={0,2}",
        check: Check::With(secrets::high_entropy),
    },
    Def {
        name: "pii.email",
        category: "pii",
        pattern: r"(?-u:\b)[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?-u:\b)",
        check: Check::Match,
    },
    Def {
        name: "pii.phone",
        category: "pii",
        pattern: r"(?:\+1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|(?-u:\b)[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}(?-u:\b)|\+[1-9](?:[ .\-]?[0-9]){7,14}(?-u:\b)",
        check: Check::Match,
    },
    Def {
        name: "pii.payment_card",
        category: "pii",
        pattern: r"(?-u:\b)[2-6][0-9](?:[ \-]?[0-9]){11,17}(?-u:\b)",
        check: Check::With(pii::payment_card),
    },
    Def {
        name: "pii.us_ssn",
        category: "pii",
        pattern: r"(?-u:\b)[0-8][0-9]{2}-[0-9]{2}-[0-9]{4}(?-u:\b)",
        check: Check::With(pii::us_ssn),
    },
    Def {
        name: "pii.uk_nino",
        category: "pii",
        pattern: r"(?-u:\b)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?-u:\b)",
        check: Check::With(pii::uk_nino),
    },
    Def {
        name: "pii.iban",
        category: "pii",
        pattern: r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
        check: Check::With(pii::iban),
    },
    Def {
        name: "injection.instruction_override",
        category: "injection",
        pattern: injection::OVERRIDE,
        check: Check::Match,
    },
    Def {
        name: "injection.prompt_tag",
        category: "injection",
        pattern: r"(?i)<\s*/?\s*(?:important|system|instructions?|admin|secret|hidden|critical)\s*>",
        check: Check::Match,
    },
    Def {
        name: "injection.unicode_tag",
        category: "injection",
        pattern: r"[\x{E0000}-\x{E007F}]+",
        check: Check::Match,
    },
    Def {
        name: "injection.zero_width",
        category: "injection",
        pattern: r"[\x{200B}-\x{200D}\x{2060}\x{FEFF}]+",
        check: Check::With(injection::zero_width),
    },
    Def {
        name: "injection.bidi",
        category: "injection",
        pattern: r"[\x{202A}-\x{202E}\x{2066}-\x{2069}]+",
        check: Check::Match,
    },
];

/// The three categories a guard may name instead of single detectors.
pub(crate) const CATEGORIES: &[&str] = &["secrets", "pii", "injection"];

struct Compiled {
    set: RegexSet,
    each: Vec<Regex>,
    high_entropy: usize,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let patterns: Vec<&str> = DETECTORS.iter().map(|d| d.pattern).collect();
    // The patterns are constants covered by unit tests; failing here is a
    // programming error caught by the first test run.
    #[allow(clippy::expect_used)]
    let set = RegexSet::new(&patterns).expect("detector patterns compile");
    #[allow(clippy::expect_used)]
    let each = patterns
        .iter()
        .map(|p| Regex::new(p).expect("detector pattern compiles"))
        .collect();
    Compiled {
        set,
        each,
        high_entropy: index("secret.high_entropy").unwrap_or(usize::MAX),
    }
});

/// One finding: which detector, and where in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detection {
    /// Index into [`DETECTORS`].
    pub(crate) detector: usize,
    /// Byte range of the sensitive span.
    pub(crate) range: Range<usize>,
}

/// The index of a detector by name.
pub(crate) fn index(name: &str) -> Option<usize> {
    DETECTORS.iter().position(|d| d.name == name)
}

/// The mask for a guard's `detect:` entry: a category, a detector name, or
/// `all`.
pub(crate) fn mask_for(entry: &str) -> Option<Mask> {
    if entry == "all" {
        return Some(all());
    }
    if CATEGORIES.contains(&entry) {
        return Some(
            DETECTORS
                .iter()
                .enumerate()
                .filter(|(_, d)| d.category == entry)
                .fold(0, |m, (i, _)| m | (1 << i)),
        );
    }
    index(entry).map(|i| 1 << i)
}

/// Every detector.
pub(crate) fn all() -> Mask {
    (1u64 << DETECTORS.len()) - 1
}

/// The `injection` category.
pub(crate) fn injection() -> Mask {
    mask_for("injection").unwrap_or(0)
}

/// Finds every span in `text` that an enabled detector reports, sorted by
/// position. A high-entropy span that overlaps a specific secret is
/// dropped: the specific name says more.
pub(crate) fn scan(text: &str, mask: Mask) -> Vec<Detection> {
    let mut out = Vec::new();
    if mask == 0 || text.len() < 2 {
        return out;
    }
    let c = &*COMPILED;
    for i in c.set.matches(text).iter() {
        if mask & (1 << i) == 0 {
            continue;
        }
        let re = &c.each[i];
        match DETECTORS[i].check {
            Check::Match => out.extend(re.find_iter(text).map(|m| Detection {
                detector: i,
                range: m.range(),
            })),
            Check::Group1 => out.extend(re.captures_iter(text).filter_map(|cap| {
                cap.get(1).map(|m| Detection {
                    detector: i,
                    range: m.range(),
                })
            })),
            Check::With(f) => out.extend(
                re.find_iter(text)
                    .filter_map(|m| f(text, m.range()))
                    .map(|range| Detection { detector: i, range }),
            ),
        }
    }
    if out.iter().any(|d| d.detector == c.high_entropy) {
        let specific: Vec<Range<usize>> = out
            .iter()
            .filter(|d| d.detector != c.high_entropy && DETECTORS[d.detector].category == "secrets")
            .map(|d| d.range.clone())
            .collect();
        out.retain(|d| {
            d.detector != c.high_entropy
                || !specific
                    .iter()
                    .any(|r| r.start < d.range.end && d.range.start < r.end)
        });
    }
    out.sort_by_key(|d| (d.range.start, d.detector));
    out
}

/// `text` with every given span replaced by `[REDACTED:detector]`.
/// Overlapping spans merge and take the label of the earliest detector in
/// [`DETECTORS`] among them.
pub(crate) fn redact(text: &str, spans: &[Detection]) -> String {
    let mut spans: Vec<&Detection> = spans.iter().collect();
    spans.sort_by_key(|d| d.range.start);
    let mut merged: Vec<(Range<usize>, usize)> = Vec::new();
    for d in spans {
        match merged.last_mut() {
            Some((r, det)) if d.range.start < r.end => {
                r.end = r.end.max(d.range.end);
                *det = (*det).min(d.detector);
            }
            _ => merged.push((d.range.clone(), d.detector)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (r, det) in merged {
        out.push_str(&text[at..r.start]);
        out.push_str("[REDACTED:");
        out.push_str(DETECTORS[det].name);
        out.push(']');
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The names of detectors that fire on `text`, all enabled.
    pub(crate) fn names(text: &str) -> Vec<&'static str> {
        let mut v: Vec<&str> = scan(text, all())
            .into_iter()
            .map(|d| DETECTORS[d.detector].name)
            .collect();
        v.dedup();
        v
    }

    pub(crate) fn fires(name: &str, text: &str) -> bool {
        names(text).contains(&name)
    }

    #[test]
    fn every_pattern_compiles_and_names_are_unique() {
        assert_eq!(COMPILED.each.len(), DETECTORS.len());
        assert!(DETECTORS.len() <= 64, "a Mask has 64 bits");
        for (i, d) in DETECTORS.iter().enumerate() {
            assert_eq!(index(d.name), Some(i), "{}", d.name);
            assert!(CATEGORIES.contains(&d.category));
            assert!(d.name.starts_with(match d.category {
                "secrets" => "secret.",
                other => other,
            }));
        }
    }

    #[test]
    fn masks_select_categories_and_single_detectors() {
        let pii = mask_for("pii").unwrap();
        let email = mask_for("pii.email").unwrap();
        assert_eq!(pii & email, email);
        assert_eq!(mask_for("secrets").unwrap() & pii, 0);
        assert!(mask_for("pii.nope").is_none());
        let text = "mail bob@example.com key ghp_0123456789abcdefghijABCDEFGHIJ012345";
        let only_email: Vec<_> = scan(text, email).iter().map(|d| d.detector).collect();
        assert_eq!(only_email, vec![index("pii.email").unwrap()]);
        assert!(scan(text, 0).is_empty());
    }

    #[test]
    fn redaction_keeps_the_rest_and_names_the_detector() {
        let text = "token ghp_0123456789abcdefghijABCDEFGHIJ012345 and bob@example.com.";
        let out = redact(text, &scan(text, all()));
        assert_eq!(
            out,
            "token [REDACTED:secret.github_token] and [REDACTED:pii.email]."
        );
    }

    #[test]
    fn arbitrary_text_never_panics_and_redaction_removes_every_span() {
        // Fragments that make detectors start and stop at awkward places,
        // mixed with multi-byte characters next to them.
        let parts = [
            "AKIA",
            "ghp_",
            "eyJ",
            "4111",
            " ",
            "-",
            "@",
            ".com",
            "+1",
            "(415)",
            "é",
            "\u{200D}",
            "\u{1F469}",
            "\u{202E}",
            "\u{E0041}",
            "GB82",
            "-----BEGIN PRIVATE KEY-----",
            "Zk3J",
            "ignore previous instructions",
            "=",
            "/",
            "0",
            "aws_secret=",
            "xoxb-",
            "AB12",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(seed % 40) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(parts[(seed >> 33) as usize % parts.len()]);
            }
            let found = scan(&text, all());
            for d in &found {
                assert!(text.is_char_boundary(d.range.start) && text.is_char_boundary(d.range.end));
            }
            let out = redact(&text, &found);
            assert_eq!(found.is_empty(), out == text);
        }
    }

    #[test]
    fn clean_text_has_no_detections() {
        let text = "The quick brown fox jumps over the lazy dog. Version 1.2.3, \
                    built 2024-01-15 at 10:30, id 550e8400-e29b-41d4-a716-446655440000, \
                    sha256 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881, \
                    path /usr/local/lib/python3/site-packages, count 1234567.";
        assert_eq!(names(text), Vec::<&str>::new());
    }
}
