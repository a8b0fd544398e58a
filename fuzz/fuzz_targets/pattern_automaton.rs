//! Differential: for patterns and paths taken from the input, the automaton's matches equal the
//! reference glob matcher's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use varmor_policy::automaton::Automaton;
use varmor_policy::glob::Pattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Patterns first, then a line "--", then paths.
    let (pats, paths) = text.split_once("\n--\n").unwrap_or((text, "/a/b\n/etc/passwd\nname"));
    let patterns: Vec<Pattern> = pats.lines().take(16).filter_map(|l| Pattern::parse(l).ok()).collect();
    let Ok(a) = Automaton::build(&patterns) else { return };
    for path in paths.lines().take(16) {
        let expected: Vec<u32> = patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| p.matches(path.as_bytes()))
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(a.run(path.as_bytes()), expected, "path {path:?}");
    }
});
