//! A fast path for reading `event_json`, which every sink reads once per event
//! (`violations.log` validates it, OTLP turns it into the record's body).
//!
//! [`parse`] accepts a strict subset of JSON: strings without escapes or control characters,
//! integers that fit in 18 digits, `true`, `false`, `null`, objects and arrays nested at most
//! [`MAX_DEPTH`] deep. The BPF, AppArmor and Seccomp events are written that way. Anything
//! else (an escape, a fraction or exponent, a leading zero, invalid JSON) makes it give up
//! with [`Bail`], and the caller goes the general way (`serde_json`). What it accepts is valid
//! JSON and it reports the same values as `serde_json` would, in the same order (unit tests
//! hold both callers' output equal to the `serde_json` path), at about a third of the cost.

/// Deeper nesting is left to `serde_json` (whose limit is 128).
pub(crate) const MAX_DEPTH: u32 = 64;

/// The text is outside the fast subset (it may still be valid JSON).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Bail;

/// What the parser reports, in document order. Each `open_*` returns a mark that is passed
/// to the matching `close_*`. The defaults do nothing (validation only).
pub(crate) trait Visit {
    fn null(&mut self) {}
    fn bool(&mut self, _v: bool) {}
    fn int(&mut self, _v: i64) {}
    fn str(&mut self, _v: &str) {}
    fn open_array(&mut self) -> usize {
        0
    }
    fn close_array(&mut self, _mark: usize) {}
    fn open_element(&mut self) -> usize {
        0
    }
    fn close_element(&mut self, _mark: usize) {}
    fn open_object(&mut self) -> usize {
        0
    }
    fn close_object(&mut self, _mark: usize) {}
    /// An object member named `key`; its value follows.
    fn open_member(&mut self, _key: &str) -> (usize, usize) {
        (0, 0)
    }
    fn close_member(&mut self, _mark: (usize, usize)) {}
}

/// Only checks.
pub(crate) struct Validate;

impl Visit for Validate {}

/// Parses `text` (one value, JSON whitespace around it), reporting to `v`. On [`Bail`], `v`
/// may have seen part of the document.
pub(crate) fn parse<V: Visit>(text: &str, v: &mut V) -> Result<(), Bail> {
    let mut p = Parser {
        s: text,
        b: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.value(v, 0)?;
    p.ws();
    if p.i == p.b.len() {
        Ok(())
    } else {
        Err(Bail)
    }
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn value<V: Visit>(&mut self, v: &mut V, depth: u32) -> Result<(), Bail> {
        match self.peek().ok_or(Bail)? {
            b'"' => {
                let s = self.string()?;
                v.str(s);
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(Bail);
                }
                self.i += 1;
                let object = v.open_object();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        if self.peek() != Some(b'"') {
                            return Err(Bail);
                        }
                        let key = self.string()?;
                        self.ws();
                        if self.peek() != Some(b':') {
                            return Err(Bail);
                        }
                        self.i += 1;
                        self.ws();
                        let member = v.open_member(key);
                        self.value(v, depth + 1)?;
                        v.close_member(member);
                        if self.next_or_end(b'}')? {
                            break;
                        }
                    }
                }
                v.close_object(object);
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Bail);
                }
                self.i += 1;
                let array = v.open_array();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        let element = v.open_element();
                        self.value(v, depth + 1)?;
                        v.close_element(element);
                        if self.next_or_end(b']')? {
                            break;
                        }
                    }
                }
                v.close_array(array);
            }
            b't' => {
                self.literal(b"true")?;
                v.bool(true);
            }
            b'f' => {
                self.literal(b"false")?;
                v.bool(false);
            }
            b'n' => {
                self.literal(b"null")?;
                v.null();
            }
            b'-' | b'0'..=b'9' => {
                let n = self.int()?;
                v.int(n);
            }
            _ => return Err(Bail),
        }
        Ok(())
    }

    /// After a member or element: `,` (then whitespace; false) or `close` (true).
    fn next_or_end(&mut self, close: u8) -> Result<bool, Bail> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Bail),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Bail> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// A string without escapes or control characters, at its opening quote.
    fn string(&mut self) -> Result<&'a str, Bail> {
        let start = self.i + 1;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .ok_or(Bail)?;
        let end = start + len;
        if self.b[end] != b'"' {
            return Err(Bail);
        }
        self.i = end + 1;
        // Both ends are ASCII quotes, hence character boundaries.
        Ok(&self.s[start..end])
    }

    /// An integer of at most 18 digits, without fraction or exponent, not `-0`.
    fn int(&mut self) -> Result<i64, Bail> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let start = self.i;
        let mut n: i64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.i - start == 18 {
                return Err(Bail);
            }
            n = n * 10 + i64::from(c - b'0');
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (self.b[start] == b'0' && (digits > 1 || negative)) {
            return Err(Bail);
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return Err(Bail);
        }
        Ok(if negative { -n } else { n })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// JSON texts and near-misses for the callers' equivalence tests: every shape the
    /// enforcers write, the values the fast path leaves to `serde_json`, and every prefix of
    /// each (mostly invalid).
    pub(crate) fn corpus() -> Vec<String> {
        let deep_ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        let too_deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let base: Vec<String> = [
            r#"{"operation":"File","permissions":["write","read"],"path":"/etc/shadow"}"#,
            r#"{"operation":"Network","type":"connect","socket":{"domain":"","type":"","protocol":""},"address":{"ip":"169.254.169.254","port":80}}"#,
            r#"{"operation":"Ptrace","permission":"read","external":true}"#,
            r#"{"operation":"Mount","path":"/mnt","type":"tmpfs","flags":[]}"#,
            r#"{"a":null,"b":false,"c":[null,[],{}],"d":{"e":{"f":[1,-2,0]}}}"#,
            r#"{"path":"/tmp/ünï 𝄞\u00e9"}"#,
            r#"{"tab":"a	b"}"#,
            "{\"nl\":\"a\nb\"}",
            r#"{"esc":"q\"b\\s\/\b\f\n\r\t"}"#,
            r#"{"dup":1,"dup":2}"#,
            " { \"a\" : [ 1 , 2 ] , \"b\" : { } } ",
            "{\n \"a\": [1,\r\n 2]\n}\t",
            "\u{a0}{}",
            r#"{"n":0}"#,
            r#"{"n":-0}"#,
            r#"{"n":01}"#,
            r#"{"n":-01}"#,
            r#"{"n":1.5}"#,
            r#"{"n":1e3}"#,
            r#"{"n":1E3}"#,
            r#"{"n":-}"#,
            r#"{"n":+1}"#,
            r#"{"n":123456789012345678}"#,
            r#"{"n":-123456789012345678}"#,
            r#"{"n":1234567890123456789}"#,
            r#"{"n":9223372036854775807}"#,
            r#"{"n":-9223372036854775808}"#,
            r#"{"n":18446744073709551615}"#,
            r#"{"n":18446744073709551616}"#,
            r#"[1,2,]"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} trailing"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a":nul}"#,
            r#"['x']"#,
            "null",
            "true",
            "false",
            "7",
            "-7",
            "\"s\"",
            "[]",
            "{}",
            "",
            " ",
            "not json",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([deep_ok, deep, too_deep])
        .collect();
        let mut all = base.clone();
        for s in &base {
            for (i, _) in s.char_indices().skip(1) {
                all.push(s[..i].to_string());
            }
        }
        all
    }

    #[test]
    fn what_the_fast_path_accepts_is_valid_json() {
        let mut accepted = 0;
        for text in corpus() {
            let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            if parse(&text, &mut Validate).is_ok() {
                accepted += 1;
                assert!(serde_ok, "{text:?} accepted but not JSON");
            }
        }
        // The corpus exercises the fast path, not only the fallback.
        assert!(accepted > 20, "{accepted}");
        assert_eq!(
            parse(
                r#"{"operation":"File","permissions":["write","read"]}"#,
                &mut Validate
            ),
            Ok(())
        );
        for bail in [r#"{"n":1.5}"#, r#"{"s":"\n"}"#, r#"{"n":-0}"#, "[1,]", "01"] {
            assert_eq!(parse(bail, &mut Validate), Err(Bail), "{bail:?}");
        }
    }
}
