//! Deterministic automata for the path patterns of a profile.
//!
//! The BPF enforcer matches a path by walking a table: `state = next[state * classes +
//! class_of[byte]]` for each byte, stopping early in the dead state, then reading the accept
//! row of the state it ends in. The cost is one table lookup per path byte, whatever the number
//! of rules.
//!
//! # Layout
//!
//! All entries are little-endian `u32` in the BPF maps:
//! * `byte_classes[256]`: the equivalence class of every byte (bytes that no pattern tells
//!   apart share a class);
//! * `transitions[state * class_count + class]`: the next state. State 0 is the dead state (it
//!   loops to itself and accepts nothing);
//! * `accept[state]`: 0 when no pattern matches a path that ends in this state, otherwise
//!   `1 + index` into [`Automaton::match_sets`], the sorted ids of the patterns that match;
//! * `starts`: the start state of each walk (at most [`MAX_WALKS`]).
//!
//! # Why several walks
//!
//! A single DFA for a set of globs can need as many states as the *product* of what each
//! pattern has to remember: patterns anchored at a directory (`/data/app7/**/*.key`) combined
//! with patterns that may match anywhere (`/**/.ssh/**`, `busybox`) multiply. So the patterns
//! are split into groups — anchored patterns and floating ones, and further halves when a
//! group would still be too large — and each group is determinized on its own, into one
//! shared table. A path is walked once per group and the match sets are united. The number of
//! walks is bounded by [`MAX_WALKS`] and does not grow with the number of rules.
//!
//! # Construction
//!
//! Patterns are expanded into linear sequences (alternations and `/**/` become variants) of
//! two element kinds: one byte from a set, or a loop over a set. The subset construction
//! treats positions that loop on *every* byte ("sticky": once reached, always present)
//! separately from the rest, and caches the transitions of the sticky part, so a state's cost
//! is proportional to the positions that actually move.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::glob::{Node, Pattern};

/// The dead state: once here, no pattern can match.
pub const DEAD: u32 = 0;
/// The most walks (pattern groups) an automaton may need.
pub const MAX_WALKS: usize = 8;
/// The largest table (`transitions` entries) an automaton may have: 16 MiB of `u32`.
pub const MAX_TABLE_ENTRIES: usize = 4 << 20;
/// The most linear variants one pattern may expand into (alternations multiply).
pub const MAX_VARIANTS_PER_PATTERN: usize = 1024;

/// The compiled tables of a set of patterns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Automaton {
    /// Class of every byte value (256 entries).
    #[serde(with = "crate::serde_tables::u8s")]
    pub byte_classes: Vec<u8>,
    /// Number of byte classes (the row width of `transitions`).
    pub class_count: u32,
    /// Number of states, the dead state included.
    pub state_count: u32,
    /// The start state of each walk.
    pub starts: Vec<u32>,
    /// `transitions[state * class_count + class]` is the next state.
    #[serde(with = "crate::serde_tables::u32s")]
    pub transitions: Vec<u32>,
    /// `accept[state]`: 0 for none, else 1 + the index of the state's match set.
    #[serde(with = "crate::serde_tables::u32s")]
    pub accept: Vec<u32>,
    /// Sorted pattern ids matched at each accepting state.
    pub match_sets: Vec<Vec<u32>>,
}

impl Default for Automaton {
    fn default() -> Self {
        Automaton::empty()
    }
}

/// The automaton could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutomatonError {
    /// The patterns need larger tables than allowed even when split.
    #[error("the patterns need an automaton larger than {max_entries} table entries even split into {max_walks} groups; simplify patterns that combine several '**' or '*' (for example {example:?})")]
    TooLarge {
        /// The table limit.
        max_entries: usize,
        /// The group limit.
        max_walks: usize,
        /// One pattern of the group that did not fit.
        example: String,
    },
    /// A pattern expands into too many alternatives.
    #[error("pattern {pattern:?} expands into more than {MAX_VARIANTS_PER_PATTERN} alternatives")]
    TooManyAlternatives {
        /// The pattern.
        pattern: String,
    },
}

impl Automaton {
    /// An automaton that matches nothing.
    pub fn empty() -> Automaton {
        Automaton {
            byte_classes: vec![0; 256],
            class_count: 1,
            state_count: 1,
            starts: Vec::new(),
            transitions: vec![DEAD],
            accept: vec![0],
            match_sets: Vec::new(),
        }
    }

    /// Builds the automaton of `patterns`; pattern ids are indexes into `patterns`.
    pub fn build(patterns: &[Pattern]) -> Result<Automaton, AutomatonError> {
        if patterns.is_empty() {
            return Ok(Automaton::empty());
        }
        let mut variants: Vec<(u32, Vec<Elem>)> = Vec::with_capacity(patterns.len());
        for (id, p) in patterns.iter().enumerate() {
            for v in expand(p)? {
                variants.push((id as u32, v));
            }
        }
        let classes = ByteClasses::new(&variants);
        let nfa = Nfa::new(&variants, &classes);

        // Anchored patterns first, floating ones second; a group that does not fit is halved.
        let (anchored, floating): (Vec<u32>, Vec<u32>) =
            (0..patterns.len() as u32).partition(|&id| !is_floating(&patterns[id as usize]));
        let mut pending: VecDeque<Vec<u32>> = [anchored, floating]
            .into_iter()
            .filter(|g| !g.is_empty())
            .collect();
        let mut out = Output::new(classes.count, nfa.kind.len());
        let mut walks = 0;
        while let Some(group) = pending.pop_front() {
            let remaining_walks = MAX_WALKS - walks - pending.len();
            let budget = MAX_TABLE_ENTRIES / classes.count;
            if nfa.determinize(&group, budget, &mut out) {
                walks += 1;
            } else if group.len() > 1 && remaining_walks > 1 {
                let half = group.len() / 2;
                pending.push_front(group[half..].to_vec());
                pending.push_front(group[..half].to_vec());
            } else {
                return Err(AutomatonError::TooLarge {
                    max_entries: MAX_TABLE_ENTRIES,
                    max_walks: MAX_WALKS,
                    example: patterns[group[0] as usize].as_str().to_string(),
                });
            }
        }
        Ok(Automaton {
            byte_classes: classes.of.to_vec(),
            class_count: classes.count as u32,
            state_count: out.accept.len() as u32,
            starts: out.starts,
            transitions: out.transitions,
            accept: out.accept,
            match_sets: out.match_sets,
        })
    }

    /// Walks the tables over `input` once per start state, exactly as the BPF program does,
    /// and returns the index into [`Self::match_sets`] of each walk that ends accepting.
    pub fn accept_rows(&self, input: &[u8]) -> Vec<usize> {
        let width = self.class_count as usize;
        let mut rows = Vec::new();
        for &start in &self.starts {
            let mut state = start;
            for &b in input {
                state = self.transitions
                    [state as usize * width + self.byte_classes[b as usize] as usize];
                if state == DEAD {
                    break;
                }
            }
            if let Some(row) = self.accept[state as usize].checked_sub(1) {
                rows.push(row as usize);
            }
        }
        rows
    }

    /// The sorted ids of the patterns that match `input`, from the table walks.
    pub fn run(&self, input: &[u8]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for row in self.accept_rows(input) {
            out.extend_from_slice(&self.match_sets[row]);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Bytes of the tables as the BPF enforcer stores them (`u32` entries).
    pub fn table_bytes(&self) -> usize {
        256 + 4 * (self.transitions.len() + self.accept.len() + self.starts.len())
    }
}

/// A set of bytes.
type ByteSet = [u64; 4];

const ALL_BYTES: ByteSet = [u64::MAX; 4];

fn byte_set(ranges: impl IntoIterator<Item = (u8, u8)>) -> ByteSet {
    let mut s = [0u64; 4];
    for (lo, hi) in ranges {
        for b in lo..=hi {
            s[(b >> 6) as usize] |= 1 << (b & 63);
        }
    }
    s
}

fn contains(s: &ByteSet, b: u8) -> bool {
    s[(b >> 6) as usize] & (1 << (b & 63)) != 0
}

fn not_slash() -> ByteSet {
    byte_set([(0, b'/' - 1), (b'/' + 1, 255)])
}

fn subset(a: &ByteSet, b: &ByteSet) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// An element of a linear pattern variant.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Elem {
    /// Exactly this byte.
    Byte(u8),
    /// Exactly one byte of the set.
    One(ByteSet),
    /// Zero or more bytes of the set.
    Loop(ByteSet),
}

/// Whether a pattern can match starting anywhere in the path (a name pattern, or one whose
/// first component holds a glob): such patterns are tracked in every state of their group.
fn is_floating(p: &Pattern) -> bool {
    if p.is_name_pattern() {
        return true;
    }
    let nodes = p.nodes();
    !matches!((nodes.first(), nodes.get(1)), (Some(Node::Byte(b'/')), Some(Node::Byte(c))) if *c != b'/')
}

fn expand(p: &Pattern) -> Result<Vec<Vec<Elem>>, AutomatonError> {
    let mut prefixes = vec![Vec::with_capacity(p.nodes().len() + 3)];
    if p.is_name_pattern() {
        // The last component of any path: nothing before it, or anything ending in '/'.
        prefixes.push(vec![Elem::Loop(ALL_BYTES), Elem::Byte(b'/')]);
    }
    let mut out = Vec::new();
    for v in expand_nodes(p.nodes(), prefixes, p)? {
        out.push(merge_loops(v));
    }
    Ok(out)
}

fn expand_nodes(
    nodes: &[Node],
    mut acc: Vec<Vec<Elem>>,
    p: &Pattern,
) -> Result<Vec<Vec<Elem>>, AutomatonError> {
    for node in nodes {
        let simple = match node {
            Node::Byte(b) => Some(Elem::Byte(*b)),
            Node::Any => Some(Elem::One(not_slash())),
            Node::Star => Some(Elem::Loop(not_slash())),
            Node::DoubleStar => Some(Elem::Loop(ALL_BYTES)),
            Node::Class { negated, ranges } => {
                let mut set = byte_set(ranges.iter().copied());
                if *negated {
                    let ns = not_slash();
                    for (w, m) in set.iter_mut().zip(ns) {
                        *w = !*w & m;
                    }
                }
                Some(Elem::One(set))
            }
            Node::DeepDir | Node::Alt(_) => None,
        };
        match (simple, node) {
            (Some(e), _) => {
                if let [v] = acc.as_mut_slice() {
                    v.push(e);
                } else {
                    acc.iter_mut().for_each(|v| v.push(e.clone()));
                }
            }
            (None, Node::DeepDir) => {
                // '/' alone, or '/' anything '/'.
                let mut next = Vec::with_capacity(acc.len() * 2);
                for v in acc {
                    let mut long = v.clone();
                    long.extend([Elem::Byte(b'/'), Elem::Loop(ALL_BYTES), Elem::Byte(b'/')]);
                    let mut short = v;
                    short.push(Elem::Byte(b'/'));
                    next.push(short);
                    next.push(long);
                }
                acc = next;
            }
            (None, Node::Alt(alts)) => {
                let mut next = Vec::new();
                for alt in alts {
                    next.extend(expand_nodes(alt, acc.clone(), p)?);
                }
                acc = next;
            }
            (None, _) => unreachable!("every other node is simple"),
        }
        if acc.len() > MAX_VARIANTS_PER_PATTERN {
            return Err(AutomatonError::TooManyAlternatives {
                pattern: p.as_str().to_string(),
            });
        }
    }
    Ok(acc)
}

/// `A*B*` with one set inside the other is the larger loop alone.
fn merge_loops(mut v: Vec<Elem>) -> Vec<Elem> {
    let mut i = 1;
    while i < v.len() {
        if let (Elem::Loop(prev), Elem::Loop(cur)) = (&v[i - 1], &v[i]) {
            if subset(prev, cur) {
                v.remove(i - 1);
                continue;
            }
            if subset(cur, prev) {
                v.remove(i);
                continue;
            }
        }
        i += 1;
    }
    v
}

/// The partition of bytes into classes no pattern distinguishes.
struct ByteClasses {
    of: [u8; 256],
    count: usize,
}

impl ByteClasses {
    fn new(variants: &[(u32, Vec<Elem>)]) -> ByteClasses {
        let mut sets: Vec<ByteSet> = Vec::new();
        let mut seen: rustc_hash::FxHashSet<ByteSet> = Default::default();
        let mut single = [false; 256];
        for (_, v) in variants {
            for e in v {
                match e {
                    Elem::Byte(b) => single[*b as usize] = true,
                    Elem::One(s) | Elem::Loop(s) => {
                        if *s != ALL_BYTES && seen.insert(*s) {
                            sets.push(*s);
                        }
                    }
                }
            }
        }
        // Refine: split every class by membership in each set in turn, then give every byte
        // that a pattern names on its own a class of its own.
        let mut of = [0u16; 256];
        let mut count = 1usize;
        for set in &sets {
            let mut split: Vec<[u16; 2]> = vec![[u16::MAX; 2]; count];
            let mut next = 0usize;
            for (b, slot) in of.iter_mut().enumerate() {
                let id = &mut split[*slot as usize][usize::from(contains(set, b as u8))];
                if *id == u16::MAX {
                    *id = next as u16;
                    next += 1;
                }
                *slot = *id;
            }
            count = next;
        }
        let mut members = vec![0u16; count];
        for &c in &of {
            members[c as usize] += 1;
        }
        for b in 0..256 {
            let c = of[b] as usize;
            if single[b] && members[c] > 1 {
                members[c] -= 1;
                of[b] = count as u16;
                members.push(1);
                count += 1;
            }
        }
        // Number the classes by their smallest byte, so the numbering reads naturally.
        let mut renumber = vec![u16::MAX; count];
        let mut out = [0u8; 256];
        let mut next = 0usize;
        for (b, &c) in of.iter().enumerate() {
            if renumber[c as usize] == u16::MAX {
                renumber[c as usize] = next as u16;
                next += 1;
            }
            out[b] = renumber[c as usize] as u8;
        }
        ByteClasses { of: out, count }
    }

    /// The classes a byte set covers, as a bit set over classes.
    fn classes_of(&self, s: &ByteSet) -> ByteSet {
        let mut out = [0u64; 4];
        for b in 0..=255u8 {
            if contains(s, b) {
                let c = self.of[b as usize];
                out[(c >> 6) as usize] |= 1 << (c & 63);
            }
        }
        out
    }
}

const ONE: u8 = 0;
const LOOP: u8 = 1;
const END: u8 = 2;

/// The positions of every variant: a position waits for one element and `next` is the position
/// after it; the position after the last element accepts the variant's pattern. Variants of a
/// pattern share positions whose remaining elements are equal.
struct Nfa {
    kind: Vec<u8>,
    /// The classes each position moves on.
    classes: Vec<ByteSet>,
    /// The class of a position that moves on exactly one class (a literal byte), else
    /// `NO_CLASS`: lets the hot loops skip scanning the bit set.
    single: Vec<u16>,
    pattern: Vec<u32>,
    /// Loops over every byte: once reached, never left.
    sticky: Vec<bool>,
    /// The position after each one (`u32::MAX` after an end).
    next: Vec<u32>,
    /// Positions in the closure of some sticky position: the only ones a sticky set can
    /// imply, so the only ones worth looking up in it.
    near_sticky: Vec<bool>,
    /// First position of each variant, by pattern.
    starts_of_pattern: Vec<Vec<u32>>,
    class_count: usize,
}

impl Nfa {
    fn new(variants: &[(u32, Vec<Elem>)], bc: &ByteClasses) -> Nfa {
        let positions: usize = variants.iter().map(|(_, v)| v.len() + 1).sum();
        let patterns = variants
            .iter()
            .map(|(id, _)| *id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut nfa = Nfa {
            kind: Vec::with_capacity(positions),
            classes: Vec::with_capacity(positions),
            single: Vec::with_capacity(positions),
            pattern: Vec::with_capacity(positions),
            sticky: Vec::with_capacity(positions),
            next: Vec::with_capacity(positions),
            near_sticky: Vec::new(),
            starts_of_pattern: vec![Vec::new(); patterns],
            class_count: bc.count,
        };
        let all_classes = bc.classes_of(&ALL_BYTES);
        // Few distinct sets occur (`*`, `**`, `?`, a few classes): a short list beats a map.
        let mut cache: Vec<(ByteSet, ByteSet)> = Vec::new();
        let mut classes_of = |s: &ByteSet| match cache.iter().find(|(k, _)| k == s) {
            Some((_, v)) => *v,
            None => {
                let v = bc.classes_of(s);
                cache.push((*s, v));
                v
            }
        };
        // Positions with the same pattern and the same remaining elements are the same
        // position (suffix sharing): variants of one pattern (alternations, `/**/`, name
        // patterns) then share their tails, so the subset construction does not track copies
        // that can only ever accept the same pattern.
        let mut shared: FxHashMap<(u32, u8, ByteSet, u32), u32> = FxHashMap::default();
        for (id, v) in variants {
            let mut next = {
                let key = (*id, END, [0; 4], u32::MAX);
                *shared
                    .entry(key)
                    .or_insert_with(|| nfa.push(END, [0; 4], NO_CLASS, false, *id, u32::MAX))
            };
            for e in v.iter().rev() {
                let (kind, cls) = match e {
                    Elem::Byte(b) => {
                        let c = bc.of[*b as usize];
                        let mut cls = [0u64; 4];
                        cls[(c >> 6) as usize] |= 1 << (c & 63);
                        (ONE, cls)
                    }
                    Elem::One(s) => (ONE, classes_of(s)),
                    Elem::Loop(s) => (LOOP, classes_of(s)),
                };
                let single = if kind == ONE && cls.iter().map(|w| w.count_ones()).sum::<u32>() == 1
                {
                    iter_bits(&cls).next().map_or(NO_CLASS, |c| c as u16)
                } else {
                    NO_CLASS
                };
                let sticky = kind == LOOP && cls == all_classes;
                next = *shared
                    .entry((*id, kind, cls, next))
                    .or_insert_with(|| nfa.push(kind, cls, single, sticky, *id, next));
            }
            let starts = &mut nfa.starts_of_pattern[*id as usize];
            if !starts.contains(&next) {
                starts.push(next);
            }
        }
        nfa.near_sticky = vec![false; nfa.kind.len()];
        let mut closure = Vec::new();
        for p in 0..nfa.kind.len() {
            if nfa.sticky[p] {
                closure.clear();
                nfa.close(p as u32, &mut closure);
                for &q in &closure {
                    nfa.near_sticky[q as usize] = true;
                }
            }
        }
        nfa
    }

    /// Adds a position and returns its number.
    fn push(
        &mut self,
        kind: u8,
        classes: ByteSet,
        single: u16,
        sticky: bool,
        pattern: u32,
        next: u32,
    ) -> u32 {
        self.kind.push(kind);
        self.classes.push(classes);
        self.single.push(single);
        self.sticky.push(sticky);
        self.pattern.push(pattern);
        self.next.push(next);
        (self.kind.len() - 1) as u32
    }

    /// Adds `pos` and every position reachable from it by skipping loops.
    fn close(&self, mut pos: u32, out: &mut Vec<u32>) {
        loop {
            out.push(pos);
            if self.kind[pos as usize] != LOOP {
                return;
            }
            pos = self.next[pos as usize];
        }
    }

    /// Where a position goes on a byte it accepts: the next one, or itself for a loop.
    fn advance(&self, p: u32) -> u32 {
        if self.kind[p as usize] == ONE {
            self.next[p as usize]
        } else {
            p
        }
    }

    /// Determinizes one group of patterns into `out`; returns false (leaving `out` as it
    /// was) when the group needs more than `max_states` states.
    fn determinize(&self, group: &[u32], max_states: usize, out: &mut Output) -> bool {
        let saved = out.save();
        let width = self.class_count;
        let mut d = Determinizer::new(self, out.accept.len() as u32);
        let mut start = Vec::new();
        for id in group {
            for &p in &self.starts_of_pattern[*id as usize] {
                self.close(p, &mut start);
            }
        }
        let start = d.intern(0, &mut start);
        let mut explicit: Vec<u32> = Vec::new();
        let mut steps_of_class: Vec<u32> = Vec::with_capacity(width);
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); width];
        // Per class: which explicit positions (by index, up to 64) accept it. Classes with the
        // same mask and the same move of the sticky part have the same successor, so each
        // distinct pair is interned once per state (the classes a `*` loop covers move
        // together).
        let mut masks: Vec<u64> = vec![0; width];
        let mut combos: Vec<(u64, u32, u32)> = Vec::new();
        let mut set: Vec<u32> = Vec::new();
        let mut local = 1usize;
        while local < d.state_count() {
            if d.state_count() > max_states {
                out.restore(saved);
                return false;
            }
            let key = d.state_key(local);
            let sid = key[0];
            explicit.clear();
            explicit.extend_from_slice(&key[1..]);
            d.ensure_row(sid);
            let row = &d.sticky[sid as usize];
            // Start from the row the sticky part alone gives, then patch the classes on which
            // explicit positions move.
            let row_start = out.transitions.len();
            out.transitions.extend_from_slice(&row.class_targets);
            if explicit.len() > 1 {
                steps_of_class.clear();
                steps_of_class.extend_from_slice(&row.step_of_class);
            }
            if let [p] = explicit[..] {
                // One position (inside a literal run, the commonest state): its classes all
                // lead to the same positions, merged with each class's sticky move.
                let single = self.single[p as usize];
                if single != NO_CLASS {
                    let c = single as usize;
                    set.clear();
                    self.close(self.next[p as usize], &mut set);
                    let row = &d.sticky[sid as usize];
                    set.extend_from_slice(&row.steps[row.step_of_class[c] as usize]);
                    out.transitions[row_start + c] = d.intern(sid, &mut set);
                } else if self.kind[p as usize] != END {
                    combos.clear();
                    for c in iter_bits(&self.classes[p as usize]) {
                        let step = d.sticky[sid as usize].step_of_class[c];
                        out.transitions[row_start + c] = match combos
                            .iter()
                            .find(|(_, s, _)| *s == step)
                        {
                            Some(&(_, _, to)) => to,
                            None => {
                                set.clear();
                                self.close(self.advance(p), &mut set);
                                set.extend_from_slice(&d.sticky[sid as usize].steps[step as usize]);
                                let to = d.intern(sid, &mut set);
                                combos.push((1, step, to));
                                to
                            }
                        };
                    }
                }
            } else if explicit.len() <= 64 {
                masks.iter_mut().for_each(|m| *m = 0);
                for (i, &p) in explicit.iter().enumerate() {
                    let single = self.single[p as usize];
                    if single != NO_CLASS {
                        masks[single as usize] |= 1 << i;
                    } else if self.kind[p as usize] != END {
                        for c in iter_bits(&self.classes[p as usize]) {
                            masks[c] |= 1 << i;
                        }
                    }
                }
                combos.clear();
                for (c, &mask) in masks.iter().enumerate() {
                    if mask == 0 {
                        continue;
                    }
                    let step = steps_of_class[c];
                    out.transitions[row_start + c] = if let Some(&(_, _, to)) =
                        combos.iter().find(|(m, s, _)| *m == mask && *s == step)
                    {
                        to
                    } else {
                        set.clear();
                        let mut bits = mask;
                        while bits != 0 {
                            let p = explicit[bits.trailing_zeros() as usize];
                            bits &= bits - 1;
                            self.close(self.advance(p), &mut set);
                        }
                        set.extend_from_slice(&d.sticky[sid as usize].steps[step as usize]);
                        let to = d.intern(sid, &mut set);
                        combos.push((mask, step, to));
                        to
                    };
                }
            } else {
                // Many positions (e.g. a thousand patterns sharing a prefix): one bucket per
                // class.
                for &p in &explicit {
                    let single = self.single[p as usize];
                    if single != NO_CLASS {
                        self.close(self.next[p as usize], &mut buckets[single as usize]);
                    } else if self.kind[p as usize] != END {
                        for c in iter_bits(&self.classes[p as usize]) {
                            self.close(self.advance(p), &mut buckets[c]);
                        }
                    }
                }
                for c in 0..width {
                    if buckets[c].is_empty() {
                        continue;
                    }
                    let mut set = std::mem::take(&mut buckets[c]);
                    set.extend_from_slice(
                        &d.sticky[sid as usize].steps[steps_of_class[c] as usize],
                    );
                    out.transitions[row_start + c] = d.intern(sid, &mut set);
                    set.clear();
                    buckets[c] = set;
                }
            }
            // Classes left to the sticky part whose target nothing needed before.
            if !d.sticky[sid as usize].complete {
                let mut complete = true;
                for c in 0..width {
                    if out.transitions[row_start + c] == UNKNOWN {
                        out.transitions[row_start + c] = d.class_target(sid, c);
                    }
                    complete &= d.sticky[sid as usize].class_targets[c] != UNKNOWN;
                }
                d.sticky[sid as usize].complete = complete;
            }
            match d.accepts(local) {
                Some(set) => out.push_accept(set),
                None => out.accept.push(0),
            }
            local += 1;
        }
        if d.state_count() > max_states {
            out.restore(saved);
            return false;
        }
        out.starts.push(start);
        true
    }
}

/// "Not computed yet" in the per-class target rows.
const UNKNOWN: u32 = u32::MAX;

/// "More than one class" in [`Nfa::single`].
const NO_CLASS: u16 = u16::MAX;

fn iter_bits(s: &ByteSet) -> impl Iterator<Item = usize> + '_ {
    s.iter().enumerate().flat_map(|(w, &word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(w * 64 + b)
        })
    })
}

/// The shared tables every group is written into. Row 0 is the dead state.
struct Output {
    transitions: Vec<u32>,
    accept: Vec<u32>,
    starts: Vec<u32>,
    match_sets: Vec<Vec<u32>>,
    rows: FxHashMap<Vec<u32>, u32>,
}

impl Output {
    /// `capacity`: the expected number of states (the number of NFA positions is a good
    /// guess: literal-heavy sets have about one state per position).
    fn new(width: usize, capacity: usize) -> Output {
        let mut transitions = Vec::with_capacity((capacity + 1) * width);
        transitions.resize(width, DEAD);
        let mut accept = Vec::with_capacity(capacity + 1);
        accept.push(0);
        Output {
            transitions,
            accept,
            starts: Vec::new(),
            match_sets: Vec::new(),
            rows: FxHashMap::default(),
        }
    }

    fn push_accept(&mut self, set: Vec<u32>) {
        let row = if set.is_empty() {
            0
        } else if let Some(&row) = self.rows.get(&set) {
            row
        } else {
            self.match_sets.push(set.clone());
            let row = self.match_sets.len() as u32;
            self.rows.insert(set, row);
            row
        };
        self.accept.push(row);
    }

    fn save(&self) -> (usize, usize, usize) {
        (
            self.transitions.len(),
            self.accept.len(),
            self.match_sets.len(),
        )
    }

    fn restore(&mut self, (t, a, m): (usize, usize, usize)) {
        self.transitions.truncate(t);
        self.accept.truncate(a);
        for set in self.match_sets.drain(m..) {
            self.rows.remove(&set);
        }
    }
}

/// Subset construction state: DFA states are (sticky set, other positions).
///
/// A sticky position loops on every byte, so once a state holds it every later state does
/// too, along with the positions its closure reaches. States therefore store only the sticky
/// set's id and the positions outside the sticky set's closure; the moves of the sticky part
/// are computed once per sticky set and cached.
///
/// State numbers are local (0 is dead, then 1, 2, ... in discovery order); what the tables
/// hold is the global number `offset + local - 1` (0 stays 0).
struct Determinizer<'a> {
    nfa: &'a Nfa,
    offset: u32,
    /// Every state's key (its sticky set id followed by its other positions), end to end.
    keys: Vec<u32>,
    /// Where each state's key starts in `keys` (one extra entry marks the end).
    key_starts: Vec<u32>,
    /// Local state ids by key hash.
    ids: hashbrown::HashTable<u32>,
    /// The sticky sets met so far; 0 is the empty set.
    sticky: Vec<StickySet>,
    sticky_ids: FxHashMap<Box<[u32]>, u32>,
    /// Per (sticky set, added sticky positions): the grown sticky set.
    grown: FxHashMap<(u32, Box<[u32]>), u32>,
    /// Scratch buffers.
    key: Vec<u32>,
    added: Vec<u32>,
}

/// A set of sticky positions and what it implies.
struct StickySet {
    /// The sticky positions, sorted.
    positions: Box<[u32]>,
    /// The positions and their closure, sorted: every state with this set holds them.
    implied: Box<[u32]>,
    /// Pattern ids the implied positions accept, sorted.
    accepts: Box<[u32]>,
    /// The distinct sets of positions the implied ones reach on a class, minus those they
    /// already include (computed with `step_of_class`).
    steps: Vec<Box<[u32]>>,
    /// Per class: the index of its set in `steps` (empty until computed).
    step_of_class: Vec<u32>,
    /// Per step: the global state reached when only the implied positions move
    /// (`UNKNOWN` until needed: states nothing reaches must not be created).
    step_targets: Vec<u32>,
    /// Per class: the same, by class (`UNKNOWN` until needed).
    class_targets: Vec<u32>,
    /// Whether every entry of `class_targets` is known.
    complete: bool,
}

fn hash_key(key: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

impl<'a> Determinizer<'a> {
    fn new(nfa: &'a Nfa, offset: u32) -> Self {
        let mut key_starts = Vec::with_capacity(nfa.kind.len() + 1);
        key_starts.push(0);
        let mut d = Determinizer {
            nfa,
            offset,
            keys: Vec::with_capacity(nfa.kind.len() * 2),
            key_starts,
            ids: hashbrown::HashTable::with_capacity(nfa.kind.len()),
            sticky: Vec::new(),
            sticky_ids: FxHashMap::default(),
            grown: FxHashMap::default(),
            key: Vec::new(),
            added: Vec::new(),
        };
        d.new_sticky_set(Box::new([]));
        d.key.push(0);
        d.insert_key();
        d
    }

    fn global(&self, local: u32) -> u32 {
        if local == 0 {
            DEAD
        } else {
            self.offset + local - 1
        }
    }

    fn new_sticky_set(&mut self, positions: Box<[u32]>) -> u32 {
        let id = self.sticky.len() as u32;
        let mut implied = Vec::new();
        for &p in positions.iter() {
            self.nfa.close(p, &mut implied);
        }
        implied.sort_unstable();
        implied.dedup();
        let mut accepts: Vec<u32> = implied
            .iter()
            .filter(|&&p| self.nfa.kind[p as usize] == END)
            .map(|&p| self.nfa.pattern[p as usize])
            .collect();
        accepts.sort_unstable();
        accepts.dedup();
        self.sticky_ids.insert(positions.clone(), id);
        self.sticky.push(StickySet {
            positions,
            implied: implied.into(),
            accepts: accepts.into(),
            steps: Vec::new(),
            step_of_class: Vec::new(),
            step_targets: Vec::new(),
            class_targets: Vec::new(),
            complete: false,
        });
        id
    }

    /// The id of the sticky set `sid` grown by the sticky positions in `self.added`.
    fn grow(&mut self, sid: u32) -> u32 {
        let added: Box<[u32]> = self.added.as_slice().into();
        if let Some(&id) = self.grown.get(&(sid, added.clone())) {
            return id;
        }
        let mut set: Vec<u32> = self.sticky[sid as usize]
            .positions
            .iter()
            .chain(added.iter())
            .copied()
            .collect();
        set.sort_unstable();
        set.dedup();
        let set: Box<[u32]> = set.into();
        let id = match self.sticky_ids.get(&set) {
            Some(&id) => id,
            None => self.new_sticky_set(set),
        };
        self.grown.insert((sid, added), id);
        id
    }

    /// The global state id of sticky set `sid` plus the (closed) positions in `extra`, which
    /// this reorders and filters.
    fn intern(&mut self, sid: u32, extra: &mut Vec<u32>) -> u32 {
        if extra.len() > 1 {
            extra.sort_unstable();
            extra.dedup();
        }
        let implied = &self.sticky[sid as usize].implied;
        if !implied.is_empty() {
            extra.retain(|p| implied.binary_search(p).is_err());
        }
        self.added.clear();
        self.added.extend(
            extra
                .iter()
                .copied()
                .filter(|&p| self.nfa.sticky[p as usize]),
        );
        let sid = if self.added.is_empty() {
            sid
        } else {
            let grown = self.grow(sid);
            let implied = &self.sticky[grown as usize].implied;
            extra.retain(|p| implied.binary_search(p).is_err());
            grown
        };
        self.key.clear();
        self.key.push(sid);
        self.key.extend_from_slice(extra);
        let local = self.insert_key();
        self.global(local)
    }

    /// The local id of the state whose key is in `self.key`, added if new.
    fn insert_key(&mut self) -> u32 {
        let hash = hash_key(&self.key);
        let (keys, starts) = (&self.keys, &self.key_starts);
        let key_of =
            |id: u32| &keys[starts[id as usize] as usize..starts[id as usize + 1] as usize];
        if let Some(&id) = self.ids.find(hash, |&id| key_of(id) == self.key.as_slice()) {
            return id;
        }
        let id = self.state_count() as u32;
        self.keys.extend_from_slice(&self.key);
        self.key_starts.push(self.keys.len() as u32);
        let (keys, starts) = (&self.keys, &self.key_starts);
        self.ids.insert_unique(hash, id, |&id| {
            hash_key(&keys[starts[id as usize] as usize..starts[id as usize + 1] as usize])
        });
        id
    }

    /// Number of states so far, the dead state included.
    fn state_count(&self) -> usize {
        self.key_starts.len() - 1
    }

    /// The key of a local state: its sticky set id, then its other positions.
    fn state_key(&self, local: usize) -> &[u32] {
        &self.keys[self.key_starts[local] as usize..self.key_starts[local + 1] as usize]
    }

    /// Computes, once per sticky set, where its implied positions go on every class.
    fn ensure_row(&mut self, sid: u32) {
        if !self.sticky[sid as usize].step_of_class.is_empty() {
            return;
        }
        let nfa = self.nfa;
        let width = nfa.class_count;
        let set = &self.sticky[sid as usize];
        let mut steps: Vec<Box<[u32]>> = Vec::new();
        let mut step_of_class = Vec::with_capacity(width);
        if set.implied.is_empty() {
            // Nothing sticky: every class goes nowhere unless explicit positions move.
            steps.push(Box::new([]));
            step_of_class.resize(width, 0);
        } else {
            // The implied positions that move at all. A class's step depends only on which of
            // them accept it, so each distinct subset is worked out once.
            let movers: Vec<u32> = set
                .implied
                .iter()
                .copied()
                .filter(|&p| nfa.kind[p as usize] != END)
                .collect();
            let mut by_movers: Vec<(Vec<u64>, u32)> = Vec::new();
            let mut seen: FxHashMap<Box<[u32]>, u32> = FxHashMap::default();
            let mut bucket: Vec<u32> = Vec::new();
            let mut which: Vec<u64> = vec![0; movers.len().div_ceil(64)];
            for c in 0..width {
                which.iter_mut().for_each(|w| *w = 0);
                for (i, &p) in movers.iter().enumerate() {
                    if nfa.classes[p as usize][c >> 6] & (1 << (c & 63)) != 0 {
                        which[i >> 6] |= 1 << (i & 63);
                    }
                }
                if let Some((_, id)) = by_movers.iter().find(|(w, _)| *w == which) {
                    step_of_class.push(*id);
                    continue;
                }
                bucket.clear();
                for (i, &p) in movers.iter().enumerate() {
                    if which[i >> 6] & (1 << (i & 63)) != 0 {
                        nfa.close(nfa.advance(p), &mut bucket);
                    }
                }
                bucket.sort_unstable();
                bucket.dedup();
                bucket.retain(|p| set.implied.binary_search(p).is_err());
                let id = match seen.get(bucket.as_slice()) {
                    Some(&id) => id,
                    None => {
                        let id = steps.len() as u32;
                        let b: Box<[u32]> = bucket.as_slice().into();
                        steps.push(b.clone());
                        seen.insert(b, id);
                        id
                    }
                };
                by_movers.push((which.clone(), id));
                step_of_class.push(id);
            }
        }
        let set = &mut self.sticky[sid as usize];
        if set.implied.is_empty() {
            // Nothing sticky: without explicit moves every class leads to the dead state.
            set.step_targets = vec![DEAD];
            set.class_targets = vec![DEAD; width];
            set.complete = true;
        } else {
            set.step_targets = vec![UNKNOWN; steps.len()];
            set.class_targets = vec![UNKNOWN; width];
        }
        set.steps = steps;
        set.step_of_class = step_of_class;
    }

    /// The global state reached from sticky set `sid` on class `c` when nothing else moves.
    fn class_target(&mut self, sid: u32, c: usize) -> u32 {
        let t = self.sticky[sid as usize].class_targets[c];
        if t != UNKNOWN {
            return t;
        }
        let step = self.sticky[sid as usize].step_of_class[c] as usize;
        let mut t = self.sticky[sid as usize].step_targets[step];
        if t == UNKNOWN {
            let mut set = self.sticky[sid as usize].steps[step].to_vec();
            t = self.intern(sid, &mut set);
            self.sticky[sid as usize].step_targets[step] = t;
        }
        self.sticky[sid as usize].class_targets[c] = t;
        t
    }

    /// The sorted pattern ids a local state accepts, or `None` when it accepts nothing.
    fn accepts(&self, local: usize) -> Option<Vec<u32>> {
        let key = self.state_key(local);
        let base = &self.sticky[key[0] as usize].accepts;
        let ends = key[1..]
            .iter()
            .filter(|&&p| self.nfa.kind[p as usize] == END);
        if base.is_empty() && ends.clone().next().is_none() {
            return None;
        }
        let mut out: Vec<u32> = ends.map(|&p| self.nfa.pattern[p as usize]).collect();
        out.extend_from_slice(base);
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(patterns: &[&str]) -> Automaton {
        let ps: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(p).expect(p))
            .collect();
        Automaton::build(&ps).expect("build")
    }

    #[test]
    fn exact_and_glob_patterns() {
        let a = build(&["/etc/passwd", "/tmp/**", "busybox", "/proc/**/mem"]);
        assert_eq!(a.run(b"/etc/passwd"), [0]);
        assert!(a.run(b"/etc/passwd-").is_empty());
        assert_eq!(a.run(b"/tmp/x/y"), [1]);
        assert_eq!(a.run(b"/bin/busybox"), [2]);
        assert_eq!(a.run(b"busybox"), [2]);
        assert_eq!(a.run(b"/proc/1/task/1/mem"), [3]);
        assert!(a.run(b"/var/x").is_empty());
    }

    #[test]
    fn overlapping_patterns_report_every_match() {
        let a = build(&["/etc/**", "/etc/shadow", "shadow", "/**/shadow"]);
        assert_eq!(a.run(b"/etc/shadow"), [0, 1, 2, 3]);
        assert_eq!(a.run(b"/etc/hosts"), [0]);
        assert_eq!(a.run(b"/backup/shadow"), [2, 3]);
    }

    #[test]
    fn anchored_and_floating_patterns_get_separate_walks() {
        let a = build(&["/etc/passwd", "/**/.ssh/**"]);
        assert_eq!(a.starts.len(), 2);
        assert_eq!(a.run(b"/root/.ssh/id"), [1]);
        let a = build(&["/etc/passwd", "/var/**"]);
        assert_eq!(a.starts.len(), 1);
    }

    #[test]
    fn empty_set_matches_nothing() {
        let a = Automaton::build(&[]).expect("build");
        assert!(a.run(b"/x").is_empty());
        assert!(a.starts.is_empty());
    }

    #[test]
    fn dead_state_is_zero_and_absorbing() {
        let a = build(&["/a"]);
        let c = a.class_count as usize;
        assert!(a.transitions[..c].iter().all(|&s| s == DEAD));
        assert_eq!(a.accept[0], 0);
    }

    #[test]
    fn tables_round_trip_through_serde() {
        let a = build(&["/etc/**", "*.log"]);
        let json = serde_json::to_string(&a).expect("serialize");
        let back: Automaton = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(a, back);
    }
}
