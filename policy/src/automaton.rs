//! One deterministic automaton for all the path patterns of a profile.
//!
//! The BPF enforcer matches a path by walking a table: `state = next[state * classes +
//! class_of[byte]]` for each byte, stopping early in the dead state, then reading the accept
//! row of the final state. The cost is one table lookup per path byte whatever the number of
//! rules, which is what lets a profile hold thousands of rules.
//!
//! Layout (all little-endian `u32` in the BPF maps):
//! * `byte_classes[256]`: the equivalence class of every byte;
//! * `transitions[state * class_count + class]`: the next state; state 0 is the dead state
//!   (it loops to itself), state 1 is the start state;
//! * `accept[state]`: 0 when no pattern matches a path that ends in this state, otherwise
//!   `1 + index` into [`Automaton::match_sets`], the sorted ids of the patterns that match.
//!
//! The tables come from `regex-automata`'s dense DFA (anchored, all matches, byte classes).
//! Its match states lag one byte behind the input, so the accept row of a state is taken from
//! the state's end-of-input transition, and the walk needs no extra step at the end.

use std::collections::{BTreeMap, HashMap, VecDeque};

use regex_automata::{
    dfa::{dense, Automaton as _, StartKind},
    nfa::thompson,
    util::{primitives::StateID, start},
    Anchored, MatchKind,
};
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, Look, Repetition};
use serde::{Deserialize, Serialize};

use crate::glob::{Node, Pattern};

/// The dead state: once here, no pattern can match.
pub const DEAD: u32 = 0;
/// The start state.
pub const START: u32 = 1;

/// Upper bound on the memory the determinization may use, per automaton.
const DFA_SIZE_LIMIT: usize = 64 << 20;

/// The compiled tables of a set of patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Automaton {
    /// Class of every byte value (256 entries).
    #[serde(with = "crate::serde_tables::u8s")]
    pub byte_classes: Vec<u8>,
    /// Number of byte classes (the row width of `transitions`).
    pub class_count: u32,
    /// Number of states, dead and start states included.
    pub state_count: u32,
    /// `transitions[state * class_count + class]` is the next state.
    #[serde(with = "crate::serde_tables::u32s")]
    pub transitions: Vec<u32>,
    /// `accept[state]`: 0 for none, else 1 + the index of the state's match set.
    #[serde(with = "crate::serde_tables::u32s")]
    pub accept: Vec<u32>,
    /// Sorted pattern ids matched at each accepting state.
    pub match_sets: Vec<Vec<u32>>,
}

/// The automaton could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AutomatonError {
    /// The patterns are too complex to determinize within the size limit.
    #[error("the {patterns} patterns need a larger automaton than the {limit_mib} MiB limit allows; simplify patterns with several '**' or '*'")]
    TooLarge {
        /// Number of patterns.
        patterns: usize,
        /// The limit in MiB.
        limit_mib: usize,
    },
    /// Any other failure of the regex engine.
    #[error("cannot build the pattern automaton: {0}")]
    Build(String),
}

impl Automaton {
    /// Builds one automaton matching every pattern; pattern ids are indexes into `patterns`.
    pub fn build(patterns: &[Pattern]) -> Result<Automaton, AutomatonError> {
        if patterns.is_empty() {
            return Ok(Automaton::empty());
        }
        let hirs: Vec<Hir> = patterns.iter().map(pattern_hir).collect();
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().utf8(false).shrink(false))
            .build_many_from_hir(&hirs)
            .map_err(|e| AutomatonError::Build(e.to_string()))?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .start_kind(StartKind::Anchored)
                    .byte_classes(true)
                    .minimize(false)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
            )
            .build_from_nfa(&nfa)
            .map_err(|e| {
                if e.to_string().contains("exceeded") {
                    AutomatonError::TooLarge { patterns: patterns.len(), limit_mib: DFA_SIZE_LIMIT >> 20 }
                } else {
                    AutomatonError::Build(e.to_string())
                }
            })?;
        export(&dfa)
    }

    /// An automaton that matches nothing.
    pub fn empty() -> Automaton {
        Automaton {
            byte_classes: vec![0; 256],
            class_count: 1,
            state_count: 2,
            transitions: vec![DEAD, DEAD],
            accept: vec![0, 0],
            match_sets: Vec::new(),
        }
    }

    /// Walks the tables over `input` and returns the ids of the patterns that match it, exactly
    /// as the BPF program does.
    pub fn run(&self, input: &[u8]) -> &[u32] {
        let classes = self.class_count as usize;
        let mut state = START;
        for &b in input {
            let class = self.byte_classes[b as usize] as usize;
            state = self.transitions[state as usize * classes + class];
            if state == DEAD {
                return &[];
            }
        }
        match self.accept[state as usize] {
            0 => &[],
            row => &self.match_sets[row as usize - 1],
        }
    }

    /// Bytes of the tables as the BPF enforcer stores them (u32 entries).
    pub fn table_bytes(&self) -> usize {
        256 + 4 * (self.transitions.len() + self.accept.len())
    }
}

fn export(dfa: &dense::DFA<Vec<u32>>) -> Result<Automaton, AutomatonError> {
    let classes = dfa.byte_classes();
    let class_count = classes.alphabet_len() - 1; // the last class is end-of-input
    let mut byte_classes = vec![0u8; 256];
    let mut representative: Vec<Option<u8>> = vec![None; class_count];
    for b in 0..=255u8 {
        let c = classes.get(b);
        byte_classes[b as usize] = c;
        representative[c as usize].get_or_insert(b);
    }
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| AutomatonError::Build(e.to_string()))?;

    // Breadth-first renumbering: 0 is dead, 1 is start.
    let mut ids: HashMap<StateID, u32> = HashMap::new();
    let mut order: Vec<StateID> = Vec::new();
    let mut queue = VecDeque::new();
    let dead_id = StateID::must(0);
    ids.insert(dead_id, DEAD);
    order.push(dead_id);
    if dfa.is_dead_state(start) {
        return Ok(Automaton::empty());
    }
    ids.insert(start, START);
    order.push(start);
    queue.push_back(start);
    let mut transitions: Vec<u32> = vec![DEAD; 2 * class_count];
    while let Some(sid) = queue.pop_front() {
        let from = ids[&sid] as usize;
        for (class, rep) in representative.iter().enumerate() {
            let Some(rep) = rep else { continue };
            let next = dfa.next_state(sid, *rep);
            let to = if dfa.is_dead_state(next) {
                DEAD
            } else if let Some(&id) = ids.get(&next) {
                id
            } else {
                let id = order.len() as u32;
                ids.insert(next, id);
                order.push(next);
                queue.push_back(next);
                transitions.extend(std::iter::repeat_n(DEAD, class_count));
                id
            };
            transitions[from * class_count + class] = to;
        }
    }

    let mut rows: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
    let mut match_sets: Vec<Vec<u32>> = Vec::new();
    let mut accept = vec![0u32; order.len()];
    for (i, &sid) in order.iter().enumerate().skip(1) {
        let eoi = dfa.next_eoi_state(sid);
        if !dfa.is_match_state(eoi) {
            continue;
        }
        let mut set: Vec<u32> =
            (0..dfa.match_len(eoi)).map(|k| dfa.match_pattern(eoi, k).as_u32()).collect();
        set.sort_unstable();
        set.dedup();
        let row = *rows.entry(set.clone()).or_insert_with(|| {
            match_sets.push(set);
            match_sets.len() as u32
        });
        accept[i] = row;
    }
    Ok(Automaton {
        byte_classes,
        class_count: class_count as u32,
        state_count: order.len() as u32,
        transitions,
        accept,
        match_sets,
    })
}

fn byte_class(ranges: impl IntoIterator<Item = (u8, u8)>) -> Hir {
    Hir::class(Class::Bytes(ClassBytes::new(
        ranges.into_iter().map(|(a, b)| ClassBytesRange::new(a, b)),
    )))
}

fn not_slash() -> Hir {
    byte_class([(0, b'/' - 1), (b'/' + 1, 255)])
}

fn any_byte() -> Hir {
    byte_class([(0, 255)])
}

fn star(h: Hir) -> Hir {
    Hir::repetition(Repetition { min: 0, max: None, greedy: true, sub: Box::new(h) })
}

fn optional(h: Hir) -> Hir {
    Hir::repetition(Repetition { min: 0, max: Some(1), greedy: true, sub: Box::new(h) })
}

fn slash() -> Hir {
    Hir::literal(*b"/")
}

fn nodes_hir(nodes: &[Node]) -> Hir {
    Hir::concat(nodes.iter().map(node_hir).collect())
}

fn node_hir(node: &Node) -> Hir {
    match node {
        Node::Byte(b) => Hir::literal([*b]),
        Node::Star => star(not_slash()),
        Node::DoubleStar => star(any_byte()),
        Node::DeepDir => Hir::concat(vec![slash(), optional(Hir::concat(vec![star(any_byte()), slash()]))]),
        Node::Any => not_slash(),
        Node::Class { negated, ranges } => {
            let mut class = ClassBytes::new(ranges.iter().map(|&(a, b)| ClassBytesRange::new(a, b)));
            if *negated {
                class.negate();
                class.difference(&ClassBytes::new([ClassBytesRange::new(b'/', b'/')]));
            }
            Hir::class(Class::Bytes(class))
        }
        Node::Alt(alts) => Hir::alternation(alts.iter().map(|a| nodes_hir(a)).collect()),
    }
}

fn pattern_hir(p: &Pattern) -> Hir {
    let mut parts = Vec::with_capacity(3);
    if p.is_name_pattern() {
        // Any directory prefix, then the name.
        parts.push(optional(Hir::concat(vec![star(any_byte()), slash()])));
    }
    parts.push(nodes_hir(p.nodes()));
    parts.push(Hir::look(Look::End));
    Hir::concat(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(patterns: &[&str]) -> Automaton {
        let ps: Vec<Pattern> = patterns.iter().map(|p| Pattern::parse(p).expect(p)).collect();
        Automaton::build(&ps).expect("build")
    }

    #[test]
    fn exact_and_glob_patterns() {
        let a = build(&["/etc/passwd", "/tmp/**", "busybox", "/proc/**/mem"]);
        assert_eq!(a.run(b"/etc/passwd"), &[0]);
        assert_eq!(a.run(b"/etc/passwd-"), &[] as &[u32]);
        assert_eq!(a.run(b"/tmp/x/y"), &[1]);
        assert_eq!(a.run(b"/bin/busybox"), &[2]);
        assert_eq!(a.run(b"/proc/1/task/1/mem"), &[3]);
        assert_eq!(a.run(b"/var/x"), &[] as &[u32]);
    }

    #[test]
    fn overlapping_patterns_report_every_match() {
        let a = build(&["/etc/**", "/etc/shadow", "shadow"]);
        assert_eq!(a.run(b"/etc/shadow"), &[0, 1, 2]);
        assert_eq!(a.run(b"/etc/hosts"), &[0]);
        assert_eq!(a.run(b"/backup/shadow"), &[2]);
    }

    #[test]
    fn empty_set_matches_nothing() {
        let a = Automaton::build(&[]).expect("build");
        assert_eq!(a.run(b"/x"), &[] as &[u32]);
        assert_eq!(a.state_count, 2);
    }

    #[test]
    fn dead_state_is_zero_and_absorbing() {
        let a = build(&["/a"]);
        let c = a.class_count as usize;
        assert!(a.transitions[..c].iter().all(|&s| s == DEAD));
    }
}
