//! Exchanges and their bindings, held in memory: routing is on every publish's hot path,
//! so it never touches SQLite (the tables only make declarations survive a restart).

use crate::broker::ExchangeKind;

/// A declared exchange and the queues bound to it.
pub(super) struct Exchange {
    pub kind: ExchangeKind,
    /// Takes the messages no binding matches.
    pub alternate: Option<String>,
    bindings: Vec<Binding>,
}

struct Binding {
    queue: String,
    pattern: String,
}

impl Exchange {
    pub fn new(kind: ExchangeKind, alternate: Option<String>) -> Self {
        Self {
            kind,
            alternate,
            bindings: Vec::new(),
        }
    }

    /// Adds a binding; binding the same queue with the same pattern twice is a no-op.
    pub fn bind(&mut self, queue: &str, pattern: &str) {
        let exists = self
            .bindings
            .iter()
            .any(|binding| binding.queue == queue && binding.pattern == pattern);
        if !exists {
            self.bindings.push(Binding {
                queue: queue.to_owned(),
                pattern: pattern.to_owned(),
            });
        }
    }

    pub fn unbind_queue(&mut self, queue: &str) {
        self.bindings.retain(|binding| binding.queue != queue);
    }

    /// The queues a message with `routing_key` goes to, each once even when several of
    /// its bindings match (AMQP delivers one copy per queue).
    pub fn route(&self, routing_key: &str) -> Vec<&str> {
        let mut queues: Vec<&str> = Vec::new();
        for binding in &self.bindings {
            let matches = match self.kind {
                ExchangeKind::Fanout => true,
                ExchangeKind::Direct => binding.pattern == routing_key,
                ExchangeKind::Topic => topic_matches(&binding.pattern, routing_key),
            };
            if matches && !queues.contains(&binding.queue.as_str()) {
                queues.push(&binding.queue);
            }
        }
        queues
    }
}

/// The stored name of an exchange kind.
pub(super) fn kind_name(kind: ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Topic => "topic",
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
    }
}

pub(super) fn parse_kind(name: &str) -> Option<ExchangeKind> {
    match name {
        "topic" => Some(ExchangeKind::Topic),
        "direct" => Some(ExchangeKind::Direct),
        "fanout" => Some(ExchangeKind::Fanout),
        _ => None,
    }
}

/// AMQP topic matching: both sides are dot-separated words; in the pattern `*` matches
/// exactly one word and `#` zero or more.
pub(super) fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    words_match(&pattern, &key)
}

fn words_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        // Backtracking over `#` is exponential only in the number of `#`s of one
        // pattern; our patterns have at most one or two.
        Some((&"#", rest)) => (0..=key.len()).any(|skip| words_match(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && words_match(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && words_match(rest, &key[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_as_in_amqp() {
        let cases = [
            ("game.created", "game.created", true),
            ("game.created", "game.updated", false),
            ("game.*", "game.created", true),
            ("game.*", "game", false),
            ("game.*", "game.created.late", false),
            ("*.created", "game.created", true),
            ("*", "game", true),
            ("*", "game.created", false),
            ("game.#", "game", true),
            ("game.#", "game.created", true),
            ("game.#", "game.created.late", true),
            ("game.#", "platform.created", false),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("#.created", "game.created", true),
            ("#.created", "created", true),
            ("#.created", "game.created.late", false),
            ("game.#.late", "game.late", true),
            ("game.#.late", "game.created.very.late", true),
            ("game.#.late", "game.created.early", false),
            ("*.#", "game", true),
            ("*.#", "", true),
            ("#.*", "game.created", true),
            ("game.*.#", "game", false),
            ("a.#.#.b", "a.b", true),
            ("a.#.#.b", "a.x.y.b", true),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "pattern {pattern:?} against key {key:?}"
            );
        }
    }

    #[test]
    fn a_queue_bound_twice_gets_one_copy() {
        let mut exchange = Exchange::new(ExchangeKind::Topic, None);
        exchange.bind("audit", "game.*");
        exchange.bind("audit", "#");
        exchange.bind("audit", "#");
        exchange.bind("work", "game.created");
        assert_eq!(exchange.route("game.created"), ["audit", "work"]);
        assert_eq!(exchange.route("genre.created"), ["audit"]);
    }

    #[test]
    fn direct_and_fanout_route_by_kind() {
        let mut direct = Exchange::new(ExchangeKind::Direct, None);
        direct.bind("a", "key");
        assert_eq!(direct.route("key"), ["a"]);
        assert!(direct.route("other").is_empty());

        let mut fanout = Exchange::new(ExchangeKind::Fanout, None);
        fanout.bind("a", "ignored");
        fanout.bind("b", "");
        assert_eq!(fanout.route("anything"), ["a", "b"]);
        fanout.unbind_queue("a");
        assert_eq!(fanout.route("anything"), ["b"]);
    }

    #[test]
    fn exchange_kind_names_round_trip() {
        for kind in [
            ExchangeKind::Topic,
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
        ] {
            assert_eq!(parse_kind(kind_name(kind)), Some(kind));
        }
        assert_eq!(parse_kind("headers"), None);
    }
}
