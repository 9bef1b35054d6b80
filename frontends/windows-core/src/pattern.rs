//! Directory query patterns, as `FsRtlIsNameInExpression` matches them.
//!
//! `*` matches any run of characters and `?` exactly one. The Win32 layer turns the DOS
//! forms of `FindFirstFile` into three more:
//!
//! - `<` (DOS_STAR) matches any run of characters up to, not including, the name's last
//!   `.`; so `<.txt` is `*.txt` and `<` alone matches only names without a dot;
//! - `>` (DOS_QM) matches one character, or nothing at a `.` or at the end of the name
//!   (so `>>>` matches names of up to three characters);
//! - `"` (DOS_DOT) matches a `.`, or nothing at the end of the name (`<"` matches
//!   "no extension").
//!
//! With `ignore_case` both sides are compared folded (see [`crate::name::fold`]).

use crate::name::fold;

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str, ignore_case: bool) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = if ignore_case {
        (fold(pattern).chars().collect(), fold(name).chars().collect())
    } else {
        (pattern.chars().collect(), name.chars().collect())
    };
    let last_dot = n.iter().rposition(|&c| c == '.');
    let mut memo = vec![None; (p.len() + 1) * (n.len() + 1)];
    step(&p, &n, last_dot, 0, 0, &mut memo)
}

/// Whether `pattern` matches every name, so a query needs no filtering.
pub fn matches_all(pattern: &str) -> bool {
    // Not "*.*": the Win32 layer already turned that into "*", and what arrives as "*.*"
    // matches only names with a dot.
    pattern.is_empty() || pattern == "*"
}

fn step(p: &[char], n: &[char], last_dot: Option<usize>, pi: usize, ni: usize, memo: &mut [Option<bool>]) -> bool {
    let slot = pi * (n.len() + 1) + ni;
    if let Some(known) = memo[slot] {
        return known;
    }
    let more = ni < n.len();
    let result = match p.get(pi) {
        None => !more,
        Some('*') => step(p, n, last_dot, pi + 1, ni, memo) || (more && step(p, n, last_dot, pi, ni + 1, memo)),
        Some('<') => {
            step(p, n, last_dot, pi + 1, ni, memo)
                || (more && Some(ni) != last_dot && step(p, n, last_dot, pi, ni + 1, memo))
        }
        Some('>') => {
            if !more || n[ni] == '.' {
                step(p, n, last_dot, pi + 1, ni, memo)
            } else {
                step(p, n, last_dot, pi + 1, ni + 1, memo)
            }
        }
        Some('"') => {
            if !more {
                step(p, n, last_dot, pi + 1, ni, memo)
            } else {
                n[ni] == '.' && step(p, n, last_dot, pi + 1, ni + 1, memo)
            }
        }
        Some('?') => more && step(p, n, last_dot, pi + 1, ni + 1, memo),
        Some(&c) => more && n[ni] == c && step(p, n, last_dot, pi + 1, ni + 1, memo),
    };
    memo[slot] = Some(result);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        for n in yes {
            assert!(matches(pattern, n, true), "{pattern:?} should match {n:?}");
        }
        for n in no {
            assert!(!matches(pattern, n, true), "{pattern:?} should not match {n:?}");
        }
    }

    #[test]
    fn star_and_question_mark() {
        check("*", &["", "a", "a.b.c", "."], &[]);
        check("*.txt", &["a.txt", ".txt", "a.b.txt", "A.TXT"], &["a.txt.bak", "atxt"]);
        check("a?c", &["abc", "a.c"], &["ac", "abbc"]);
        check("*a*b*", &["ab", "xaxbx", "aab"], &["ba", "a"]);
        check("report", &["REPORT", "Report"], &["report1"]);
        assert!(!matches("report", "REPORT", false));
    }

    #[test]
    fn dos_star_stops_before_the_last_dot() {
        check("<.txt", &["a.txt", "a.b.txt", ".txt"], &["a.txt.x", "atxt"]);
        check("<", &["abc", ""], &["a.b", "a."]);
        check("a<", &["abc"], &["ab.c"]);
    }

    #[test]
    fn dos_question_mark_matches_one_character_or_nothing_at_a_dot_or_the_end() {
        // "foo???" as the Win32 layer passes it.
        check("foo>>>", &["foo", "foo1", "foo123"], &["foo1234", "foo.1"]);
        // "???.txt" (a dot before a literal stays a dot).
        check(">>>.txt", &["a.txt", "abc.txt"], &["abcd.txt", "a.txtx"]);
    }

    #[test]
    fn dos_dot_matches_a_dot_or_the_end() {
        // "*." as the Win32 layer passes it: names without an extension.
        check("<\"", &["abc", "README"], &["a.b", "x.txt"]);
        // "*.*" as DOS wrote it: everything.
        check("<\"*", &["a", "a.b", "a.b.c"], &[]);
        check("a\"b", &["a.b"], &["ab", "axb"]);
    }

    #[test]
    fn long_patterns_do_not_take_exponential_time() {
        let name = "a".repeat(200);
        assert!(!matches(&"*a".repeat(60), &format!("{name}b"), false));
        assert!(matches_all("*") && !matches_all("*.*") && !matches_all("*.txt"));
        check("*.*", &["a.b"], &["ab"]);
    }
}
