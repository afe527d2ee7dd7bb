//! Redis glob patterns, as KEYS, SCAN and CONFIG GET match them.

/// Redis glob patterns: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
///
/// A class is read as Redis reads one: `^` first negates it; `\x` is `x`; `a-z` is a range,
/// its ends in either order and any bytes (in `[a-]` the range runs from `a` to `]`, and the
/// class goes on); a class without its closing `]` runs to the end of the pattern.
///
/// Cost, for a pattern of `p` bytes and a string of `n`: each byte of the pattern is read at
/// most once (a run of `*` is skipped as one, a class is read once into a table of the bytes it
/// matches, however often backtracking comes back to it), and matching takes at most
/// O(n × min(n, tokens)) steps of O(log n) each, where a token is a `*` run, `?`, a class or
/// one byte: O(p + n² log n) at worst, never exponential. Nothing is read past the point where
/// the string has failed to match, so a long pattern costs little against a string that
/// differs early. (The pattern is read anew on each call: a caller matching many strings
/// against one long pattern pays up to O(p) for each.)
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    // The classes read since the last `*`, by the position of their `[`, in pattern order: the
    // only ones backtracking can come back to. At most one per byte of `s` is read past the
    // last `*` before the match fails or moves on, so this holds at most n + 1.
    let mut classes: Vec<(usize, Class)> = Vec::new();
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*` run: the pattern just past it, and the string from
    // the first byte that run has not yet taken.
    let mut star: Option<(usize, usize)> = None;
    while t < s.len() {
        count(1);
        let advanced = match pattern.get(p) {
            Some(b'*') => {
                p = past_stars(pattern, p);
                star = Some((p, t));
                classes.clear();
                continue;
            }
            Some(b'?') => {
                p += 1;
                true
            }
            Some(b'[') => {
                let class = match classes.binary_search_by_key(&p, |(at, _)| *at) {
                    Ok(i) => &classes[i].1,
                    Err(i) => {
                        classes.insert(i, (p, Class::read(pattern, p + 1)));
                        &classes[i].1
                    }
                };
                if class.contains(s[t]) {
                    p = class.end;
                    true
                } else {
                    false
                }
            }
            Some(b'\\') if p + 1 < pattern.len() => {
                let ok = pattern[p + 1] == s[t];
                p += 2;
                ok
            }
            Some(c) => {
                let ok = *c == s[t];
                p += 1;
                ok
            }
            None => false,
        };
        if advanced {
            t += 1;
        } else if let Some((resume, from)) = star {
            star = Some((resume, from + 1));
            p = resume;
            t = from + 1;
        } else {
            return false;
        }
    }
    pattern
        .get(p..)
        .is_none_or(|rest| past_stars(rest, 0) == rest.len())
}

/// The position just past the run of `*` that starts at `p`.
fn past_stars(pattern: &[u8], p: usize) -> usize {
    let run = pattern
        .get(p..)
        .map_or(0, |rest| rest.iter().take_while(|c| **c == b'*').count());
    count(run);
    p + run
}

/// A class, read once: the bytes it matches and where the pattern goes on after it.
struct Class {
    /// Bit `c` is set for each byte `c` the class matches (its negation already applied).
    bytes: [u64; 4],
    /// The position in the pattern just past the class (past its `]`, or the pattern's end).
    end: usize,
}

impl Class {
    /// Reads the class whose `[` is just before `start`, in O(its length).
    fn read(pattern: &[u8], start: usize) -> Class {
        let p = pattern.get(start..).unwrap_or_default();
        let negate = p.first() == Some(&b'^');
        let mut i = usize::from(negate);
        let mut bytes = [0u64; 4];
        let mut add = |from: u8, to: u8| {
            for c in from..=to {
                bytes[usize::from(c >> 6)] |= 1 << (c & 63);
            }
        };
        let used = loop {
            match p.get(i) {
                None => break i,
                Some(b'\\') if i + 1 < p.len() => {
                    add(p[i + 1], p[i + 1]);
                    i += 2;
                }
                Some(b']') => break i + 1,
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
        };
        count(used + 1);
        if negate {
            for word in &mut bytes {
                *word = !*word;
            }
        }
        Class {
            bytes,
            end: start + used,
        }
    }

    /// Whether the class matches `c`.
    fn contains(&self, c: u8) -> bool {
        self.bytes[usize::from(c >> 6)] & (1 << (c & 63)) != 0
    }
}

#[cfg(test)]
thread_local! {
    /// The work this thread's matching has done (tests only): one for each step of the match
    /// and each byte of a `*` run or a class read.
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
