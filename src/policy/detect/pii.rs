//! Checks for personal-data detectors whose regex alone over-matches:
//! payment cards (Luhn), IBANs (ISO 7064 mod 97), US SSNs (reserved
//! ranges) and UK National Insurance numbers (reserved prefixes).

use std::ops::Range;

/// A run of 13–19 digits (spaces or dashes between them) passing Luhn.
/// Where a longer run fails, shorter runs ending at a separator are tried,
/// so `4111 1111 1111 1111 2` still finds the card.
pub(super) fn payment_card(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    shrink_at_separators(text, r, |s| {
        let digits: Vec<u8> = s
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        (13..=19).contains(&digits.len()) && luhn(&digits)
    })
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// SSA never issues area 000, 666 or 9xx (excluded by the regex), group 00
/// or serial 0000.
pub(super) fn us_ssn(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = &text[r.clone()];
    let (area, rest) = s.split_at(3);
    let group = &rest[1..3];
    let serial = &rest[4..];
    (area != "000" && area != "666" && group != "00" && serial != "0000").then_some(r)
}

/// Prefixes HMRC never allocates.
pub(super) fn uk_nino(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let prefix = &text[r.start..r.start + 2];
    (!["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&prefix)).then_some(r)
}

/// 15–34 characters whose mod-97 check (letters as 10..35, the first four
/// characters moved to the end) gives 1.
pub(super) fn iban(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    shrink_at_separators(text, r, |s| {
        let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
        if !(15..=34).contains(&compact.len()) {
            return false;
        }
        let (head, tail) = compact.split_at(4);
        let mut rem: u32 = 0;
        for &c in tail.iter().chain(head) {
            let v = match c {
                b'0'..=b'9' => u32::from(c - b'0'),
                b'A'..=b'Z' => u32::from(c - b'A') + 10,
                _ => return false,
            };
            rem = if v >= 10 {
                (rem * 100 + v) % 97
            } else {
                (rem * 10 + v) % 97
            };
        }
        rem == 1
    })
}

/// Tries `r`, then every shorter prefix of it that ends just before a
/// space or dash, longest first.
fn shrink_at_separators(
    text: &str,
    r: Range<usize>,
    ok: impl Fn(&str) -> bool,
) -> Option<Range<usize>> {
    let s = &text[r.clone()];
    if ok(s) {
        return Some(r);
    }
    s.char_indices()
        .rev()
        .filter(|(_, c)| *c == ' ' || *c == '-')
        .map(|(i, _)| i)
        .find(|&i| ok(&s[..i]))
        .map(|i| r.start..r.start + i)
}

#[cfg(test)]
mod tests {
    use super::super::tests::fires;

    #[test]
    fn emails() {
        assert!(fires(
            "pii.email",
            "contact bob.smith+tag@mail.example.co.uk today"
        ));
        assert!(!fires(
            "pii.email",
            "not an email: bob@localhost or @handle"
        ));
    }

    #[test]
    fn phones() {
        for p in [
            "+14155552671",
            "+44 20 7946 0958",
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "+1 415 555 2671",
        ] {
            assert!(fires("pii.phone", &format!("call {p} now")), "{p}");
        }
        for n in [
            "2024-01-15",
            "version 1.2.3",
            "123-456-7890",
            "id 1700000000",
            "10.0.0.1",
        ] {
            assert!(!fires("pii.phone", n), "{n}");
        }
    }

    #[test]
    fn payment_cards_need_luhn() {
        for c in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
        ] {
            assert!(fires("pii.payment_card", &format!("card {c}.")), "{c}");
        }
        assert!(fires("pii.payment_card", "4111 1111 1111 1111 2"));
        for n in [
            "4111111111111112",
            "1234567812345678",
            "1700000000000",
            "9111111111111111",
        ] {
            assert!(!fires("pii.payment_card", n), "{n}");
        }
    }

    #[test]
    fn us_ssns() {
        assert!(fires("pii.us_ssn", "ssn 123-45-6789"));
        for n in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
        ] {
            assert!(!fires("pii.us_ssn", n), "{n}");
        }
    }

    #[test]
    fn uk_ninos() {
        assert!(fires("pii.uk_nino", "NI AB123456C"));
        assert!(fires("pii.uk_nino", "NI AB 12 34 56 C"));
        for n in ["GB123456A", "AB123456E", "DA123456A", "ab123456c"] {
            assert!(!fires("pii.uk_nino", n), "{n}");
        }
    }

    #[test]
    fn ibans_need_mod97() {
        for i in [
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
        ] {
            assert!(fires("pii.iban", &format!("pay {i} now")), "{i}");
        }
        assert!(fires("pii.iban", "GB82WEST12345698765432 ABC"));
        for n in ["GB83WEST12345698765432", "XX00ABCDEFGHIJKLMNOP"] {
            assert!(!fires("pii.iban", n), "{n}");
        }
    }
}
