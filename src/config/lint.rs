//! `check`'s lints: regexes that are almost surely not what was meant. They
//! are warnings (`check --strict` makes them errors); the configuration is
//! valid either way. Pure: each lint looks at a pattern's text and regex.

use super::AnchoredRegex;

/// Which field of an http rule a pattern is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Method,
    Path,
    Host,
}

impl Field {
    fn noun(self) -> &'static str {
        match self {
            Field::Method => "method",
            Field::Path => "path",
            Field::Host => "host",
        }
    }
}

/// The methods of RFC 9110 and RFC 5789.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Values of each field a pattern that matches them all surely matches
/// everything.
fn probes(field: Field) -> &'static [&'static str] {
    match field {
        Field::Method => &["GET", "POST", "X", "", "get"],
        // Request paths start with "/" (the proxy normalizes the others).
        Field::Path => &["/", "/a", "/a/b.c", "/x?y=z", "/%00"],
        Field::Host => &["", "a", "example.com", "10.0.0.1", "[::1]", "-"],
    }
}

/// The index of each `.` in `source` that is a regex wildcard (not escaped,
/// not in a character class) between two word characters, as in
/// `v1.status` or `api.example`.
fn bare_dots(source: &str) -> Vec<usize> {
    let chars: Vec<char> = source.chars().collect();
    let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    let (mut escaped, mut class) = (false, false);
    let mut out = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !class => class = true,
            ']' if class => class = false,
            '.' if !class
                && word(i.checked_sub(1).and_then(|j| chars.get(j)))
                && word(chars.get(i + 1)) =>
            {
                out.push(i)
            }
            _ => {}
        }
    }
    out
}

/// The warnings for a pattern of `field`, one sentence each.
pub fn pattern(field: Field, p: &AnchoredRegex) -> Vec<String> {
    let mut out = Vec::new();
    let source = p.source.as_str();
    if field != Field::Method && !bare_dots(source).is_empty() {
        let escaped = source_with_escaped_dots(source);
        out.push(format!(
            "{source:?} has an unescaped '.' between word characters: it matches any character there, not only a dot; write {escaped:?} for a literal dot"
        ));
    }
    if field == Field::Method
        && !METHODS.iter().any(|m| p.is_match(m))
        && source.chars().any(|c| c.is_ascii_lowercase())
    {
        out.push(format!(
            "{source:?} matches none of {}: method names are case-sensitive (RFC 9110 9.1), did you mean {:?}?",
            METHODS.join(" "),
            source.to_ascii_uppercase()
        ));
    }
    if probes(field).iter().all(|v| p.is_match(v)) {
        out.push(format!(
            "{source:?} matches every {}: leave `{}` out to mean any, or narrow it",
            field.noun(),
            field.noun()
        ));
    }
    out
}

/// `source` with each of [`bare_dots`] escaped.
fn source_with_escaped_dots(source: &str) -> String {
    let dots = bare_dots(source);
    source
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if dots.contains(&i) {
                "\\.".to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(field: Field, source: &str) -> Vec<String> {
        pattern(field, &AnchoredRegex::new(source).expect("a valid regex"))
    }

    #[test]
    fn an_unescaped_dot_between_word_characters_is_named() {
        let cases: [(&str, Vec<usize>); 7] = [
            ("/api/v1.status", vec![7]),
            ("/api/v1\\.status", vec![]),
            ("/data/.*", vec![]),
            ("[a.b]", vec![]),
            ("api.example.com", vec![3, 11]),
            ("(a|b).c", vec![]),
            ("x\\\\.y", vec![]),
        ];
        for (source, want) in cases {
            assert_eq!(bare_dots(source), want, "{source}");
        }
        assert_eq!(
            lint(Field::Path, "/api/v1.status"),
            vec!["\"/api/v1.status\" has an unescaped '.' between word characters: it matches any character there, not only a dot; write \"/api/v1\\\\.status\" for a literal dot".to_string()]
        );
        assert_eq!(
            lint(Field::Host, "api.example.com")[0],
            "\"api.example.com\" has an unescaped '.' between word characters: it matches any character there, not only a dot; write \"api\\\\.example\\\\.com\" for a literal dot"
        );
        // Methods have no dots to speak of.
        assert!(lint(Field::Method, "G.T").is_empty());
    }

    #[test]
    fn a_method_pattern_no_method_can_match_is_named() {
        assert_eq!(
            lint(Field::Method, "get"),
            vec!["\"get\" matches none of GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH: method names are case-sensitive (RFC 9110 9.1), did you mean \"GET\"?".to_string()]
        );
        assert!(lint(Field::Method, "GET|HEAD").is_empty());
        // An extension method, upper case: not second-guessed.
        assert!(lint(Field::Method, "PROPFIND").is_empty());
        assert!(lint(Field::Method, "(?i)get").is_empty());
    }

    #[test]
    fn a_pattern_that_matches_everything_is_named() {
        assert_eq!(
            lint(Field::Path, ".*"),
            vec![
                "\".*\" matches every path: leave `path` out to mean any, or narrow it".to_string()
            ]
        );
        assert_eq!(lint(Field::Method, ".*").len(), 1);
        assert_eq!(lint(Field::Host, "(.*)").len(), 1);
        assert_eq!(
            lint(Field::Path, "/.*").len(),
            1,
            "every path starts with /"
        );
        assert!(lint(Field::Path, "/data/.*").is_empty());
    }
}
