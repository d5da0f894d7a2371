//! Topic names and topic patterns.
//!
//! A topic name is 1..=16 dot-separated tokens, each 1 or more of
//! `[A-Za-z0-9_-]`, at most 255 bytes in all. A pattern is the same, where a
//! token may also be `*` (exactly one token) or, as the last token only,
//! `>` (one or more further tokens). So `a.>` matches `a.b` and `a.b.c`
//! but not `a`, and `*` never matches an empty token.

use crate::limits::{TOPIC_BYTES_MAX, TOPIC_TOKENS_MAX};

/// Why a topic name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {TOPIC_BYTES_MAX} bytes")]
    TooLong,
    #[error("topic has more than {TOPIC_TOKENS_MAX} tokens")]
    TooManyTokens,
    #[error("topic has an empty token")]
    EmptyToken,
    #[error("topic token has a character outside [A-Za-z0-9_-]")]
    BadCharacter,
    #[error("wildcards are not allowed in a topic name")]
    Wildcard,
    #[error("`>` may only be the last token of a pattern")]
    TailNotLast,
}

fn token_ok(token: &str) -> Result<(), TopicError> {
    if token.is_empty() {
        return Err(TopicError::EmptyToken);
    }
    if token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(TopicError::BadCharacter)
    }
}

fn shape_ok(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong);
    }
    if s.split('.').count() > TOPIC_TOKENS_MAX {
        return Err(TopicError::TooManyTokens);
    }
    Ok(())
}

/// Checks a concrete topic name (no wildcards).
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    shape_ok(name)?;
    for token in name.split('.') {
        if token == "*" || token == ">" {
            return Err(TopicError::Wildcard);
        }
        token_ok(token)?;
    }
    Ok(())
}

/// Checks a topic pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    shape_ok(pattern)?;
    let count = pattern.split('.').count();
    for (i, token) in pattern.split('.').enumerate() {
        match token {
            "*" => {}
            ">" if i + 1 == count => {}
            ">" => return Err(TopicError::TailNotLast),
            _ => token_ok(token)?,
        }
    }
    Ok(())
}

/// Whether a valid `pattern` matches a valid topic `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut names = name.split('.');
    for token in pattern.split('.') {
        match token {
            ">" => return names.next().is_some(),
            "*" => {
                if names.next().is_none() {
                    return false;
                }
            }
            literal => {
                if names.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_wildcard_needs_at_least_one_token() {
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("*.b", "a.b"));
        assert!(matches("a.*.c", "a.x.c"));
    }

    #[test]
    fn literal_matches_only_itself() {
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.created.x"));
        assert!(!matches("orders.created", "orders"));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a..b"), Err(TopicError::EmptyToken));
        assert_eq!(validate_name("a."), Err(TopicError::EmptyToken));
        assert_eq!(validate_name("a b"), Err(TopicError::BadCharacter));
        assert_eq!(validate_name("a.*"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a.>"), Err(TopicError::Wildcard));
        assert_eq!(validate_name(&"a".repeat(256)), Err(TopicError::TooLong));
        assert_eq!(
            validate_name(&["a"; 17].join(".")),
            Err(TopicError::TooManyTokens)
        );
        assert_eq!(validate_name("été"), Err(TopicError::BadCharacter));
        assert!(validate_name("orders.created-v2_x").is_ok());
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(validate_pattern("a.>.b"), Err(TopicError::TailNotLast));
        assert_eq!(validate_pattern("a.**"), Err(TopicError::BadCharacter));
        assert!(validate_pattern("a.*.>").is_ok());
    }
}
