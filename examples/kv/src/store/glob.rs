//! Redis glob patterns, as KEYS, SCAN and CONFIG GET match them.

/// Redis glob patterns: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, bytes consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&b'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        while i < p.len() && p[i] != b']' {
            if p[i] == b'\\' && i + 1 < p.len() {
                matched |= p[i + 1] == c;
                i += 2;
            } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
                matched |= (lo..=hi).contains(&c);
                i += 3;
            } else {
                matched |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((matched != negate, i + 1))
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
                Some((true, used)) => {
                    p += 1 + used;
                    true
                }
                Some((false, _)) => false,
                None => {
                    // An unterminated class matches a literal '['.
                    let ok = s[t] == b'[';
                    p += 1;
                    ok
                }
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
