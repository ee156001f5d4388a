//! The names on the rapids: event types and topics, river names, subscription
//! patterns. Pure; every check the bus makes on a name is here.
//!
//! A name is one to three dot-separated segments of `[A-Za-z][A-Za-z0-9_-]*`: one is a
//! plain topic (`ViewPage`), two an event (`<entity>.<past-tense verb>`), three a task
//! addressed to a service by its first segment (`<service>.<entity>.<request>`).

/// What a name is, by its number of segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Topic,
    Event,
    Task,
}

/// The longest name accepted.
pub const MAX_NAME: usize = 128;

fn segment(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The kind of `name`, or `None` when it is not a valid name.
pub fn kind(name: &str) -> Option<NameKind> {
    if name.len() > MAX_NAME || !name.split('.').all(segment) {
        return None;
    }
    match name.split('.').count() {
        1 => Some(NameKind::Topic),
        2 => Some(NameKind::Event),
        3 => Some(NameKind::Task),
        _ => None,
    }
}

/// A subscription pattern: a name, a prefix of one or two segments followed by `.*`
/// (`account.*`, `transfers.transfer.*`), or `*` (everything).
pub fn valid_pattern(pattern: &str) -> bool {
    if pattern.len() > MAX_NAME {
        return false;
    }
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(prefix) => prefix.split('.').count() <= 2 && kind(prefix).is_some(),
        None => kind(pattern).is_some(),
    }
}

/// A river's name: 1 to 64 characters of `[A-Za-z0-9_-]`, starting with a letter.
pub fn valid_river(name: &str) -> bool {
    name.len() <= 64 && segment(name)
}

/// An event's `source` (its emitting domain): 1 to 64 characters of
/// `[A-Za-z0-9_.-]`, starting with a letter.
pub fn valid_source(source: &str) -> bool {
    source.len() <= 64
        && source.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && source.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The emitting domains of the bank's own events: no caller posts as one of them.
pub const RESERVED_SOURCES: &[&str] = &["account", "transfer", "ledger", "bank"];

/// Whether `source` names one of the bank's own domains (any case, any suffix after a
/// dot or a dash: `Account`, `account.v2`, `transfer-service`).
pub fn reserved_source(source: &str) -> bool {
    let head = source.split(['.', '-', '_']).next().unwrap_or_default().to_ascii_lowercase();
    RESERVED_SOURCES.contains(&head.as_str())
}

/// Whether `pattern` selects `event_type` (the rivers' rule).
pub use rapids::river::pattern_matches as matches;

/// The most tag selectors one subscription takes.
pub const MAX_SELECTORS: usize = 8;

/// A subscription's tag selectors from their comma-separated form (`vip`,
/// `vip,segment=road-warrior`): each `key` or `key=value`, the key 1 to 64 characters
/// of `[A-Za-z0-9_.-]` starting with a letter, the value 1 to 64 of `[A-Za-z0-9_.:@-]`;
/// at most [`MAX_SELECTORS`]. Sorted, without repeats (the registry's key); `None` when
/// one is not valid.
pub fn tag_selectors(raw: &str) -> Option<Vec<String>> {
    let key = |k: &str| {
        (1..=64).contains(&k.len())
            && k.starts_with(|c: char| c.is_ascii_alphabetic())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let value = |v: &str| {
        (1..=64).contains(&v.len())
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@'))
    };
    let mut selectors = Vec::new();
    for selector in raw.split(',') {
        let valid = match selector.split_once('=') {
            Some((k, v)) => key(k) && value(v),
            None => key(selector),
        };
        if !valid {
            return None;
        }
        selectors.push(selector.to_owned());
    }
    selectors.sort();
    selectors.dedup();
    (selectors.len() <= MAX_SELECTORS).then_some(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_one_to_three_segments_of_letters_digits_underscores_and_dashes() {
        assert_eq!(kind("ViewPage"), Some(NameKind::Topic));
        assert_eq!(kind("page.viewed"), Some(NameKind::Event));
        assert_eq!(kind("transfers.transfer.create"), Some(NameKind::Task));
        assert_eq!(kind("a-b_c.D9"), Some(NameKind::Event));
        for bad in ["", ".", "a.", ".a", "a..b", "1a", "a.1b", "a.b.c.d", "a b", "a.b*", "é", "a/b", &"a".repeat(129)]
        {
            assert_eq!(kind(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn patterns_are_names_prefixes_or_everything() {
        for good in ["*", "ViewPage", "account.*", "transfers.transfer.*", "transfers.*", "a.b.c"] {
            assert!(valid_pattern(good), "{good:?} refused");
        }
        for bad in ["", "account.", "*.x", "a.b.c.*", "a*", "a.*.b", "**"] {
            assert!(!valid_pattern(bad), "{bad:?} accepted");
        }
        assert!(matches("account.*", "account.deposited"));
        assert!(!matches("account.*", "accounts.x"));
        assert!(matches("ViewPage", "ViewPage"));
        assert!(!matches("ViewPage", "ViewPages"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn tag_selectors_are_keys_or_pairs_sorted_without_repeats() {
        assert_eq!(tag_selectors("vip"), Some(vec!["vip".into()]));
        assert_eq!(
            tag_selectors("vip,segment=road-warrior,vip"),
            Some(vec!["segment=road-warrior".into(), "vip".into()])
        );
        assert_eq!(tag_selectors("tier=gold.2026:eu@x"), Some(vec!["tier=gold.2026:eu@x".into()]));
        for bad in ["", ",", "vip,", "=x", "k=", "1k", "k=a=b", "k=a b", "k=é", "a b", &"k".repeat(65), "k=v,l=w,"] {
            assert_eq!(tag_selectors(bad), None, "{bad:?} accepted");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        assert_eq!(tag_selectors(&nine.join(",")), None);
        assert_eq!(tag_selectors(&nine[..8].join(",")).map(|s| s.len()), Some(8));
    }

    #[test]
    fn rivers_and_sources() {
        assert!(valid_river("r1") && valid_river("audit-log_2"));
        assert!(!valid_river("") && !valid_river("1r") && !valid_river("a.b") && !valid_river(&"r".repeat(65)));
        assert!(valid_source("TheSource") && valid_source("billing.eu-1"));
        assert!(!valid_source("") && !valid_source("-x") && !valid_source("a b") && !valid_source(&"s".repeat(65)));
    }
}
