//! Redis glob patterns, as KEYS, SCAN and CONFIG GET match them.

/// Redis glob patterns: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    /// Whether the byte `c` is in the class `p` begins (just after its `[`), and the bytes of
    /// the pattern the class takes (its `]` included), read as Redis reads a class: `^` first
    /// negates it; `\x` is `x`; `a-z` is a range, its ends in either order and any bytes (in
    /// `[a-]` the range runs from `a` to `]`, and the class goes on); a class without its
    /// closing `]` runs to the end of the pattern.
    fn class(p: &[u8], c: u8) -> (bool, usize) {
        let negate = p.first() == Some(&b'^');
        let mut i = usize::from(negate);
        let mut matched = false;
        loop {
            match p.get(i) {
                None => return (matched != negate, i),
                Some(b'\\') if i + 1 < p.len() => {
                    matched |= p[i + 1] == c;
                    i += 2;
                }
                Some(b']') => return (matched != negate, i + 1),
                Some(&from) if i + 2 < p.len() && p[i + 1] == b'-' => {
                    let to = p[i + 2];
                    matched |= (from.min(to)..=from.max(to)).contains(&c);
                    i += 3;
                }
                Some(&x) => {
                    matched |= x == c;
                    i += 1;
                }
            }
        }
    }
    let (mut p, mut t) = (0, 0);
    let (mut star_p, mut star_t) = (None::<usize>, 0);
    while t < s.len() {
        let advanced = match pattern.get(p) {
            Some(b'*') => {
                star_p = Some(p);
                star_t = t;
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                true
            }
            Some(b'[') => match class(&pattern[p + 1..], s[t]) {
                (true, used) => {
                    p += 1 + used;
                    true
                }
                (false, _) => false,
            },
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
        } else if let Some(sp) = star_p {
            p = sp + 1;
            star_t += 1;
            t = star_t;
        } else {
            return false;
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}
