//! Redis glob patterns, as KEYS, SCAN, HSCAN and CONFIG GET match them.
//!
//! A pattern is compiled once per command into a [`Glob`], then matched against each key: what
//! a key costs does not depend on how long the pattern is.

/// A Redis glob pattern (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), compiled once to be matched
/// against many strings.
///
/// A class is read as Redis reads one: `^` first negates it; `\x` is `x`; `a-z` is a range,
/// its ends in either order and any bytes (in `[a-]` the range runs from `a` to `]`, and the
/// class goes on); a class without its closing `]` runs to the end of the pattern. `\x` is the
/// byte `x`; a `\` that ends the pattern is itself.
///
/// Cost, for a pattern of `p` bytes and a string of `n`:
///
/// - [`Glob::new`] reads each byte of the pattern once: O(p) time. What it keeps takes at most
///   3p bytes (and a few words): one 2-byte token for each `*` run, `?`, class, escape or
///   other byte (so at most one per byte of the pattern), and for each class either a copy of
///   what lies between its brackets, if that is at most [`SHORT_CLASS`] bytes, or else a
///   32-byte table of the bytes it matches, with one byte to say which.
/// - [`Glob::matches`] takes at most O(n × min(n, tokens)) steps, each O(1) (at most
///   [`SHORT_CLASS`] bytes of a class read), however long the pattern: O(n²) at worst, never
///   exponential. It stops where the string fails to match.
/// - [`Glob::matches_bounded`] gives up past [`FREE_STEPS`] + [`STEPS_PER_BYTE`] × n steps, so
///   a pattern built to backtrack cannot make a long key cost O(n²): what the store's scans
///   use, under its lock.
#[derive(Debug, Clone)]
pub struct Glob {
    /// The pattern's tokens, in order; no two `*` runs are next to each other.
    tokens: Vec<Token>,
    /// The classes, in the order of their tokens, each as [`Glob::class`] reads it: a length
    /// byte `k` at most [`SHORT_CLASS`] then `k` bytes (what lay between the brackets, `^`
    /// included), or [`LONG`] then a 32-byte table.
    classes: Vec<u8>,
}

/// The longest class (between its brackets) kept as written and read again on each match
/// step; a longer one is kept as a table of 32 bytes, which is then no larger.
pub(super) const SHORT_CLASS: usize = 32;

/// The marker of a class kept as a table.
const LONG: u8 = u8::MAX;

/// Steps [`Glob::matches_bounded`] may take for each byte of the string, past
/// [`FREE_STEPS`]. Patterns as people write them (`user:*`, `*:name`, `a?c*[0-9]`) take a few
/// per byte; only one that backtracks at nearly every byte of a long string (`*a*a*…ab`
/// against `aaaa…`) takes more.
pub const STEPS_PER_BYTE: u64 = 64;

/// Steps [`Glob::matches_bounded`] may take whatever the string's length: a string of up to
/// 64 bytes can never need more.
pub const FREE_STEPS: u64 = 4096;

/// Why [`Glob::matches_bounded`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "ERR the MATCH pattern takes more than {STEPS_PER_BYTE} steps per byte to match a key; \
     use a simpler pattern"
)]
pub struct TooCostly;

/// One token of a compiled pattern: `0..=255` a byte to match as it is (escapes already
/// resolved), or one of [`Token::ANY`], [`Token::STARS`] and [`Token::CLASS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token(u16);

impl Token {
    /// `?`: any one byte.
    const ANY: Token = Token(256);
    /// A run of `*`, however long: any bytes, none or more.
    const STARS: Token = Token(257);
    /// A class: the next in [`Glob::classes`].
    const CLASS: Token = Token(258);
}

/// Where matching goes on from: the next token, and the position of the next class in
/// [`Glob::classes`], the one that token or a later one reads.
#[derive(Clone, Copy)]
struct At {
    token: usize,
    class: usize,
}

impl Glob {
    /// Compiles `pattern`, reading each of its bytes once; see [`Glob`] for what it keeps.
    pub fn new(pattern: &[u8]) -> Glob {
        // At most one token per byte: reserved once, so a long pattern is not copied as the
        // list grows.
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut classes = Vec::new();
        let mut p = 0;
        while let Some(&c) = pattern.get(p) {
            match c {
                b'*' => {
                    let run = pattern[p..].iter().take_while(|c| **c == b'*').count();
                    count(run);
                    p += run;
                    tokens.push(Token::STARS);
                }
                b'?' => {
                    count(1);
                    p += 1;
                    tokens.push(Token::ANY);
                }
                b'[' => {
                    let rest = pattern.get(p + 1..).unwrap_or_default();
                    let mut table = [0u64; 4];
                    let read = read_class(rest, |from, to| add_range(&mut table, from, to));
                    count(read.used + 1);
                    let between = rest.get(..read.between).unwrap_or_default();
                    match u8::try_from(between.len()) {
                        Ok(len) if between.len() <= SHORT_CLASS => {
                            classes.push(len);
                            classes.extend_from_slice(between);
                        }
                        _ => {
                            if read.negate {
                                for word in &mut table {
                                    *word = !*word;
                                }
                            }
                            classes.push(LONG);
                            for word in table {
                                classes.extend_from_slice(&word.to_le_bytes());
                            }
                        }
                    }
                    p += 1 + read.used;
                    tokens.push(Token::CLASS);
                }
                b'\\' if p + 1 < pattern.len() => {
                    count(2);
                    tokens.push(Token(u16::from(pattern[p + 1])));
                    p += 2;
                }
                c => {
                    count(1);
                    tokens.push(Token(u16::from(c)));
                    p += 1;
                }
            }
        }
        tokens.shrink_to_fit();
        classes.shrink_to_fit();
        Glob { tokens, classes }
    }

    /// Whether the pattern matches all of `s`, by the rules in [`Glob`], in
    /// O(n × min(n, tokens)) steps of O(1) each for `s` of `n` bytes, whatever the pattern's
    /// length.
    pub fn matches(&self, s: &[u8]) -> bool {
        self.matches_within(s, u64::MAX, &mut 0).unwrap_or(false)
    }

    /// Like [`Glob::matches`], but [`TooCostly`] past [`FREE_STEPS`] + [`STEPS_PER_BYTE`] × n
    /// steps for `s` of `n` bytes: O(n) at worst. Deterministic (steps, not time), so every
    /// replica of a transaction gives up at the same key.
    /// Its steps are added to this thread's [`match_steps`].
    pub fn matches_bounded(&self, s: &[u8]) -> Result<bool, TooCostly> {
        let limit = (s.len() as u64)
            .saturating_mul(STEPS_PER_BYTE)
            .saturating_add(FREE_STEPS);
        let mut steps = 0;
        let matched = self.matches_within(s, limit, &mut steps);
        MATCH_STEPS.with(|m| m.set(m.get().saturating_add(steps)));
        matched.ok_or(TooCostly)
    }

    /// Whether the pattern matches all of `s`, or `None` past `limit` steps; `steps` is set
    /// to the steps taken.
    fn matches_within(&self, s: &[u8], limit: u64, steps: &mut u64) -> Option<bool> {
        *steps = 0;
        let mut at = At { token: 0, class: 0 };
        let mut t = 0;
        // Where to resume after the last `*` run: the token just past it, and the string from
        // the first byte that run has not yet taken. Going back further never helps: a later
        // run can take whatever an earlier one would have.
        let mut star: Option<(At, usize)> = None;
        while let Some(&c) = s.get(t) {
            *steps += 1;
            if *steps > limit {
                return None;
            }
            count(1);
            let advanced = match self.tokens.get(at.token) {
                None => false,
                Some(&Token::STARS) => {
                    at.token += 1;
                    star = Some((at, t));
                    continue;
                }
                Some(&Token::ANY) => true,
                Some(&Token::CLASS) => {
                    let (matched, next) = self.class(at.class, c);
                    at.class = next;
                    matched
                }
                Some(&Token(byte)) => byte == u16::from(c),
            };
            if advanced {
                at.token += 1;
                t += 1;
            } else if let Some((resume, from)) = star {
                star = Some((resume, from + 1));
                at = resume;
                t = from + 1;
            } else {
                return Some(false);
            }
        }
        // No two `*` runs are next to each other, so this looks at two tokens at most.
        Some(
            self.tokens
                .get(at.token..)
                .is_none_or(|rest| rest.iter().all(|token| *token == Token::STARS)),
        )
    }

    /// Whether the class at `at` in [`Glob::classes`] matches `c`, and where the next class
    /// starts; O(1), reading at most [`SHORT_CLASS`] bytes.
    fn class(&self, at: usize, c: u8) -> (bool, usize) {
        let Some(&kind) = self.classes.get(at) else {
            // Not reached: each class token has its class. Matching nothing is safe.
            return (false, at);
        };
        if kind == LONG {
            let word = usize::from(c >> 6);
            let start = at + 1 + 8 * word;
            let matched = self
                .classes
                .get(start..start + 8)
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .is_some_and(|bytes| u64::from_le_bytes(bytes) & (1 << (c & 63)) != 0);
            count(1);
            (matched, at + 1 + 32)
        } else {
            let end = at + 1 + usize::from(kind);
            let between = self.classes.get(at + 1..end).unwrap_or_default();
            let mut matched = false;
            let read = read_class(between, |from, to| matched |= (from..=to).contains(&c));
            count(between.len());
            (matched != read.negate, end)
        }
    }
}

/// Whether `s` passes a scan's optional pattern (no pattern: it does), by
/// [`Glob::matches_bounded`]. A pattern that gives up is recorded in `costly` and counts as no
/// match; a scan that finds `costly` set answers its error instead of keys.
pub(super) fn matches_bounded(
    glob: Option<&Glob>,
    s: &[u8],
    costly: &mut Option<TooCostly>,
) -> bool {
    match glob.map(|g| g.matches_bounded(s)) {
        None | Some(Ok(true)) => true,
        Some(Ok(false)) => false,
        Some(Err(e)) => {
            *costly = Some(e);
            false
        }
    }
}

/// What [`read_class`] read.
struct ClassRead {
    /// Whether the class starts with `^`.
    negate: bool,
    /// The bytes of the pattern it took after the `[`: through its `]`, or all of them.
    used: usize,
    /// How many of those lie between the brackets (`^` included; `]` not).
    between: usize,
}

/// Reads the class whose `[` is just before `p`, calling `add(from, to)` for each range of
/// bytes it names (`from <= to`; a single byte is a range of one), negation not applied, in
/// O(its length). Reading again only the bytes between its brackets names the same ranges.
fn read_class(p: &[u8], mut add: impl FnMut(u8, u8)) -> ClassRead {
    let negate = p.first() == Some(&b'^');
    let mut i = usize::from(negate);
    loop {
        match p.get(i) {
            None => {
                return ClassRead {
                    negate,
                    used: i,
                    between: i,
                };
            }
            Some(b'\\') if i + 1 < p.len() => {
                add(p[i + 1], p[i + 1]);
                i += 2;
            }
            Some(b']') => {
                return ClassRead {
                    negate,
                    used: i + 1,
                    between: i,
                };
            }
            Some(&from) if i + 2 < p.len() && p[i + 1] == b'-' => {
                let to = p[i + 2];
                add(from.min(to), from.max(to));
                i += 3;
            }
            Some(&x) => {
                add(x, x);
                i += 1;
            }
        }
    }
}

/// Sets the bits `from..=to` of a 256-bit table, a word at a time.
fn add_range(table: &mut [u64; 4], from: u8, to: u8) {
    for (w, word) in table.iter_mut().enumerate() {
        let (lo, hi) = (w * 64, w * 64 + 63);
        let (from, to) = (usize::from(from).max(lo), usize::from(to).min(hi));
        if from <= to {
            let bits = to - from + 1;
            let mask = if bits == 64 {
                u64::MAX
            } else {
                ((1u64 << bits) - 1) << (from - lo)
            };
            *word |= mask;
        }
    }
}

#[cfg(test)]
impl Glob {
    /// The heap bytes this compiled pattern holds (tests only).
    pub(super) fn heap_bytes(&self) -> usize {
        self.tokens.capacity() * std::mem::size_of::<Token>() + self.classes.capacity()
    }
}

thread_local! {
    /// The steps of every bounded match on this thread so far ([`Glob::matches_bounded`]):
    /// what a transaction's scans spend matching, counted against its read bound
    /// (`Store::exec`). Counted once per match, not per step.
    static MATCH_STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The steps of every bounded match on this thread so far; deterministic, so every replica
/// applying a transaction counts the same.
pub(super) fn match_steps() -> u64 {
    MATCH_STEPS.with(std::cell::Cell::get)
}

#[cfg(test)]
thread_local! {
    /// The work this thread's globs have done (tests only): one for each byte of a pattern
    /// compiled, each step of a match, and each byte of a class read again or table looked up.
    pub(super) static GLOB_WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `n` units of work (tests only; nothing otherwise).
#[inline(always)]
fn count(n: usize) {
    #[cfg(test)]
    GLOB_WORK.with(|c| c.set(c.get() + n as u64));
    #[cfg(not(test))]
    let _ = n;
}
