//! Server-name patterns of `tls.server_names`: one glob grammar, matched
//! against the ClientHello's SNI.
//!
//! - A pattern is dot-separated labels, compared case-insensitively.
//! - A label `*` matches exactly one label (`*.s3.amazonaws.com` matches
//!   `bucket.s3.amazonaws.com`, not `a.b.s3.amazonaws.com` nor
//!   `s3.amazonaws.com`).
//! - A leading `**.` matches one or more labels (`**.example.com` matches
//!   `a.example.com` and `a.b.example.com`, not `example.com`: list that
//!   name too if it is meant).
//! - Nothing else is special: `*` inside a label (`a*.test`) is refused, as
//!   are empty labels, a trailing dot, and characters outside letters,
//!   digits, `-` and `_`.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize};

/// The longest DNS name (RFC 1035 2.3.4), and so the longest pattern.
const MAX_NAME: usize = 253;
/// The longest label (RFC 1035 2.3.4).
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Exact(String),
    /// `*`: exactly one label.
    One,
}

/// A parsed `server_names` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct NamePattern {
    source: String,
    /// Starts with `**.`: one or more labels before `labels`.
    any_prefix: bool,
    labels: Vec<Label>,
}

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty server name")]
    Empty,
    #[error("longer than {MAX_NAME} characters")]
    TooLong,
    #[error("empty label (two dots in a row, or a leading or trailing dot)")]
    EmptyLabel,
    #[error("label {0:?} is longer than {MAX_LABEL} characters")]
    LabelTooLong(String),
    #[error("`*` must be a whole label (`*.example.com`), not part of {0:?}")]
    PartialWildcard(String),
    #[error("`**` is allowed only as the first label, followed by a dot (`**.example.com`)")]
    MisplacedDoubleStar,
    #[error(
        "a pattern of wildcards alone would match every name; name the domain (`*.example.com`)"
    )]
    OnlyWildcards,
    #[error("character {0:?} is not allowed in a server name (letters, digits, `-`, `_`)")]
    BadChar(char),
}

impl NamePattern {
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > MAX_NAME {
            return Err(PatternError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        let (any_prefix, rest) = match lower.strip_prefix("**.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let labels = rest
            .split('.')
            .map(parse_label)
            .collect::<Result<Vec<_>, _>>()?;
        if labels.iter().all(|l| *l == Label::One) {
            return Err(PatternError::OnlyWildcards);
        }
        Ok(NamePattern {
            source: s.to_string(),
            any_prefix,
            labels,
        })
    }

    /// Whether `name` (an SNI: ASCII, no trailing dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let got: Vec<&str> = name.split('.').collect();
        let fixed = self.labels.len();
        let fits = if self.any_prefix {
            got.len() > fixed
        } else {
            got.len() == fixed
        };
        fits && got[got.len() - fixed..]
            .iter()
            .zip(&self.labels)
            .all(|(g, want)| match want {
                Label::One => !g.is_empty(),
                Label::Exact(l) => g == l,
            })
            && got[..got.len() - fixed].iter().all(|g| !g.is_empty())
    }
}

fn parse_label(l: &str) -> Result<Label, PatternError> {
    match l {
        "" => Err(PatternError::EmptyLabel),
        "*" => Ok(Label::One),
        "**" => Err(PatternError::MisplacedDoubleStar),
        _ if l.contains('*') => Err(PatternError::PartialWildcard(l.to_string())),
        _ if l.len() > MAX_LABEL => Err(PatternError::LabelTooLong(l.to_string())),
        _ => match l
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            Some(c) => Err(PatternError::BadChar(c)),
            None => Ok(Label::Exact(l.to_string())),
        },
    }
}

impl fmt::Debug for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NamePattern::parse(&s)
            .map_err(|e| de::Error::custom(format!("invalid server name pattern {s:?}: {e}")))
    }
}

impl Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("origin.test", "origin.test", true),
            ("origin.test", "ORIGIN.Test", true),
            ("Origin.TEST", "origin.test", true),
            ("origin.test", "a.origin.test", false),
            ("origin.test", "origin.tes", false),
            ("origin.test", "xorigin.test", false),
            ("*.s3.amazonaws.com", "bucket.s3.amazonaws.com", true),
            ("*.s3.amazonaws.com", "a.b.s3.amazonaws.com", false),
            ("*.s3.amazonaws.com", "s3.amazonaws.com", false),
            ("*.s3.amazonaws.com", ".s3.amazonaws.com", false),
            ("bucket.*.amazonaws.com", "bucket.s3.amazonaws.com", true),
            ("bucket.*.amazonaws.com", "bucket.amazonaws.com", false),
            ("**.example.com", "a.example.com", true),
            ("**.example.com", "a.b.c.example.com", true),
            ("**.example.com", "example.com", false),
            ("**.example.com", "a..example.com", false),
            ("**.example.com", "aexample.com", false),
            ("**.*.example.com", "a.b.example.com", true),
            ("**.*.example.com", "b.example.com", false),
            ("a-b_c.test", "a-b_c.test", true),
        ];
        for (pattern, name, want) in cases {
            let p = NamePattern::parse(pattern).unwrap();
            assert_eq!(p.matches(name), *want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn refused_patterns() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.test", "a.".repeat(130));
        let cases: &[(&str, PatternError)] = &[
            ("", PatternError::Empty),
            ("origin..test", PatternError::EmptyLabel),
            ("origin.test.", PatternError::EmptyLabel),
            (".origin.test", PatternError::EmptyLabel),
            ("a*.test", PatternError::PartialWildcard("a*".into())),
            ("a.**.test", PatternError::MisplacedDoubleStar),
            ("**", PatternError::MisplacedDoubleStar),
            ("*", PatternError::OnlyWildcards),
            ("**.*", PatternError::OnlyWildcards),
            ("*.*", PatternError::OnlyWildcards),
            ("or gin.test", PatternError::BadChar(' ')),
            ("10.0.0.1:443", PatternError::BadChar(':')),
            ("é.test", PatternError::BadChar('é')),
            (&long_name, PatternError::TooLong),
        ];
        for (pattern, want) in cases {
            assert_eq!(NamePattern::parse(pattern).as_ref(), Err(want), "{pattern}");
        }
        let p = format!("{long_label}.test");
        assert_eq!(
            NamePattern::parse(&p),
            Err(PatternError::LabelTooLong(long_label))
        );
    }
}
