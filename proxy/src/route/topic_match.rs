//! Topic matchers for routes, and proof that two matchers overlap.
//!
//! A route selects topics by exact name, by prefix, or by regular expression
//! (always matched against the whole name). Routes must be disjoint: a topic
//! matched by two routes would have two homes. Overlap is decided exactly, not
//! guessed: every matcher becomes a DFA over the characters Kafka allows in
//! topic names, and a search of the product automaton either finds a topic
//! name both accept (reported to the operator as the example that proves the
//! overlap) or shows that none exists.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::Anchored;

/// Characters Kafka allows in topic names (`[a-zA-Z0-9._-]`).
const TOPIC_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
/// Client ids and group ids may hold any character; overlap between their
/// matchers is searched over printable ASCII, which is what ids are made of
/// in practice (a clash only through other characters would go unnoticed).
const ID_CHARS: &[u8] = b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
/// Longest id considered when searching for an overlap example.
const MAX_ID_LEN: usize = 255;
/// Kafka's longest topic name.
const MAX_TOPIC_LEN: usize = 249;
/// Product states explored before giving up on an overlap question.
const SEARCH_BUDGET: usize = 200_000;
/// Memory bound for one matcher's DFA: a pathological regex in a config is
/// rejected with an error instead of exhausting memory.
const DFA_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatchError {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error(
        "`{0}` contains characters Kafka does not allow in topic names (only a-z A-Z 0-9 . _ -)"
    )]
    BadTopicChars(String),
    #[error("invalid regex: {0}")]
    BadRegex(String),
    #[error("regex `{0}` matches no valid topic name")]
    MatchesNothing(String),
    #[error(
        "cannot decide whether {0} and {1} overlap within the search budget; simplify the regexes"
    )]
    TooComplex(String, String),
}

/// How a route selects topics.
#[derive(Clone)]
pub struct TopicMatch {
    kind: Kind,
    chars: &'static [u8],
    regex: regex::Regex,
    dfa: dense::DFA<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl fmt::Debug for TopicMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for TopicMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Exact(t) if self.chars == ID_CHARS => write!(f, "id `{t}`"),
            Kind::Exact(t) => write!(f, "topic `{t}`"),
            Kind::Prefix(p) => write!(f, "prefix `{p}`"),
            Kind::Regex(r) => write!(f, "regex `{r}`"),
        }
    }
}

fn valid_topic_chars(s: &str) -> bool {
    s.bytes().all(|b| TOPIC_CHARS.contains(&b))
}

impl TopicMatch {
    pub fn exact(topic: &str) -> Result<Self, MatchError> {
        if topic.is_empty() {
            return Err(MatchError::Empty("topic"));
        }
        if !valid_topic_chars(topic) {
            return Err(MatchError::BadTopicChars(topic.into()));
        }
        Self::build(
            Kind::Exact(topic.into()),
            &regex::escape(topic),
            TOPIC_CHARS,
        )
    }

    /// Matchers for client ids and group ids, which may hold any character.
    pub fn id_exact(id: &str) -> Result<Self, MatchError> {
        if id.is_empty() {
            return Err(MatchError::Empty("id"));
        }
        Self::build(Kind::Exact(id.into()), &regex::escape(id), ID_CHARS)
    }

    pub fn id_prefix(prefix: &str) -> Result<Self, MatchError> {
        if prefix.is_empty() {
            return Err(MatchError::Empty("prefix"));
        }
        Self::build(
            Kind::Prefix(prefix.into()),
            &format!("{}(?s:.)*", regex::escape(prefix)),
            ID_CHARS,
        )
    }

    pub fn id_regex(pattern: &str) -> Result<Self, MatchError> {
        if pattern.is_empty() {
            return Err(MatchError::Empty("regex"));
        }
        Self::build(Kind::Regex(pattern.into()), pattern, ID_CHARS)
    }

    pub fn prefix(prefix: &str) -> Result<Self, MatchError> {
        if prefix.is_empty() {
            return Err(MatchError::Empty("prefix"));
        }
        if !valid_topic_chars(prefix) {
            return Err(MatchError::BadTopicChars(prefix.into()));
        }
        Self::build(
            Kind::Prefix(prefix.into()),
            &format!("{}[a-zA-Z0-9._-]*", regex::escape(prefix)),
            TOPIC_CHARS,
        )
    }

    /// A regex matched against the whole topic name (implicitly anchored).
    pub fn regex(pattern: &str) -> Result<Self, MatchError> {
        if pattern.is_empty() {
            return Err(MatchError::Empty("regex"));
        }
        let m = Self::build(Kind::Regex(pattern.into()), pattern, TOPIC_CHARS)?;
        match common_topic(&[&m]) {
            Search::Found(_) => Ok(m),
            Search::Empty => Err(MatchError::MatchesNothing(pattern.into())),
            Search::Budget => Err(MatchError::TooComplex(m.to_string(), m.to_string())),
        }
    }

    fn build(kind: Kind, body: &str, chars: &'static [u8]) -> Result<Self, MatchError> {
        let anchored = format!("^(?:{body})$");
        let regex = regex::RegexBuilder::new(&anchored)
            .size_limit(DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| MatchError::BadRegex(e.to_string()))?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(regex_automata::dfa::StartKind::Anchored)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
            )
            .build(&anchored)
            .map_err(|e| MatchError::BadRegex(e.to_string()))?;
        Ok(TopicMatch {
            kind,
            chars,
            regex,
            dfa,
        })
    }

    /// The topics `prefix + t + suffix` for every topic `t` this selects:
    /// what a renaming turns the selection into, for overlap checks between
    /// physical names.
    pub fn renamed(&self, prefix: &str, suffix: &str) -> Result<Self, MatchError> {
        if prefix.is_empty() && suffix.is_empty() {
            return Ok(self.clone());
        }
        let body = match &self.kind {
            Kind::Exact(t) => regex::escape(t),
            Kind::Prefix(p) => format!("{}[a-zA-Z0-9._-]*", regex::escape(p)),
            Kind::Regex(r) => r.clone(),
        };
        let pattern = format!(
            "{}(?:{body}){}",
            regex::escape(prefix),
            regex::escape(suffix)
        );
        Self::build(Kind::Regex(pattern.clone()), &pattern, self.chars)
    }

    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.kind {
            Kind::Exact(t) => t == topic,
            Kind::Prefix(p) => topic.starts_with(p.as_str()),
            Kind::Regex(_) => self.regex.is_match(topic),
        }
    }

    /// A topic name both matchers select (`Some`), or `None` if they are
    /// disjoint; an error if that could not be decided within the budget.
    pub fn overlap(&self, other: &TopicMatch) -> Result<Option<String>, MatchError> {
        match common_topic(&[self, other]) {
            Search::Found(t) => Ok(Some(t)),
            Search::Empty => Ok(None),
            Search::Budget => Err(MatchError::TooComplex(self.to_string(), other.to_string())),
        }
    }
}

enum Search {
    Found(String),
    Empty,
    Budget,
}

fn start(dfa: &dense::DFA<Vec<u32>>) -> Option<StateID> {
    dfa.start_state(&start::Config::new().anchored(Anchored::Yes))
        .ok()
}

/// A product state, and how it was reached: (parent node index, byte).
type Node = (Vec<StateID>, Option<(usize, u8)>);

/// Breadth-first search of the product of the matchers' DFAs over topic-name
/// characters: the shortest name all of them accept, if one exists.
fn common_topic(ms: &[&TopicMatch]) -> Search {
    let Some(first) = ms
        .iter()
        .map(|m| start(&m.dfa))
        .collect::<Option<Vec<StateID>>>()
    else {
        return Search::Empty;
    };
    // state tuple -> (parent tuple index, byte) for reconstructing the name
    let mut seen: HashMap<Vec<StateID>, usize> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut queue = VecDeque::new();
    seen.insert(first.clone(), 0);
    nodes.push((first, None));
    queue.push_back((0usize, 0usize));
    while let Some((idx, depth)) = queue.pop_front() {
        let states = nodes[idx].0.clone();
        let accepts = depth > 0
            && ms
                .iter()
                .zip(&states)
                .all(|(m, s)| m.dfa.is_match_state(m.dfa.next_eoi_state(*s)));
        if accepts {
            let mut name = Vec::with_capacity(depth);
            let mut at = idx;
            while let Some((parent, byte)) = nodes[at].1 {
                name.push(byte);
                at = parent;
            }
            name.reverse();
            return match String::from_utf8(name) {
                Ok(n) => Search::Found(n),
                Err(_) => Search::Empty,
            };
        }
        let chars = ms[0].chars;
        let max_len = if chars == ID_CHARS {
            MAX_ID_LEN
        } else {
            MAX_TOPIC_LEN
        };
        if depth == max_len {
            continue;
        }
        for &b in chars {
            let next: Vec<StateID> = ms
                .iter()
                .zip(&states)
                .map(|(m, s)| m.dfa.next_state(*s, b))
                .collect();
            if ms.iter().zip(&next).any(|(m, s)| m.dfa.is_dead_state(*s)) {
                continue;
            }
            if seen.len() >= SEARCH_BUDGET {
                return Search::Budget;
            }
            if !seen.contains_key(&next) {
                seen.insert(next.clone(), nodes.len());
                nodes.push((next, Some((idx, b))));
                queue.push_back((nodes.len() - 1, depth + 1));
            }
        }
    }
    Search::Empty
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(TopicMatch::exact("orders").unwrap().matches("orders"));
        assert!(!TopicMatch::exact("orders").unwrap().matches("orders2"));
        assert!(TopicMatch::prefix("eu.").unwrap().matches("eu.orders"));
        assert!(!TopicMatch::prefix("eu.").unwrap().matches("us.orders"));
        let r = TopicMatch::regex("(eu|us)\\.orders").unwrap();
        assert!(r.matches("eu.orders") && r.matches("us.orders"));
        // Whole-name semantics: no accidental substring matches.
        assert!(!r.matches("xeu.orders") && !r.matches("eu.orders.dlq"));
    }

    #[test]
    fn overlaps_come_with_an_example() {
        let cases = [
            (
                TopicMatch::exact("orders").unwrap(),
                TopicMatch::exact("orders").unwrap(),
                Some("orders"),
            ),
            (
                TopicMatch::exact("orders").unwrap(),
                TopicMatch::exact("payments").unwrap(),
                None,
            ),
            (
                TopicMatch::exact("eu.orders").unwrap(),
                TopicMatch::prefix("eu.").unwrap(),
                Some("eu.orders"),
            ),
            (
                TopicMatch::prefix("eu.").unwrap(),
                TopicMatch::prefix("eu.orders").unwrap(),
                Some("eu.orders"),
            ),
            (
                TopicMatch::prefix("eu.").unwrap(),
                TopicMatch::prefix("us.").unwrap(),
                None,
            ),
            (
                TopicMatch::regex("[a-z]+\\.orders").unwrap(),
                TopicMatch::prefix("eu.").unwrap(),
                Some("eu.orders"),
            ),
            (
                TopicMatch::regex("[a-z]+-[0-9]+").unwrap(),
                TopicMatch::regex("[a-z]+-[a-z]+").unwrap(),
                None,
            ),
            (
                TopicMatch::regex("a.*z").unwrap(),
                TopicMatch::regex(".*b.*").unwrap(),
                Some("abz"),
            ),
        ];
        for (a, b, want) in cases {
            let got = a.overlap(&b).expect("decidable");
            assert_eq!(got.as_deref(), want, "{a} vs {b}");
            if let Some(t) = got {
                assert!(a.matches(&t) && b.matches(&t), "{t} must match {a} and {b}");
            }
            assert_eq!(
                b.overlap(&a).expect("decidable").is_some(),
                want.is_some(),
                "symmetric: {a} vs {b}"
            );
        }
    }

    #[test]
    fn bad_matchers_are_rejected_with_reasons() {
        assert_eq!(
            TopicMatch::exact("").unwrap_err(),
            MatchError::Empty("topic")
        );
        assert!(matches!(
            TopicMatch::exact("a b"),
            Err(MatchError::BadTopicChars(_))
        ));
        assert!(matches!(
            TopicMatch::prefix("x/"),
            Err(MatchError::BadTopicChars(_))
        ));
        assert!(matches!(
            TopicMatch::regex("("),
            Err(MatchError::BadRegex(_))
        ));
        // Only characters Kafka rejects: a rule that can never route anything.
        assert!(matches!(
            TopicMatch::regex("a b"),
            Err(MatchError::MatchesNothing(_))
        ));
        // A regex whose DFA would blow the memory bound.
        assert!(matches!(
            TopicMatch::regex("[a-z]*a[a-z]{20}"),
            Err(MatchError::BadRegex(_))
        ));
    }
}
