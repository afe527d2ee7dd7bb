//! A bound on how deeply a decoded value may nest, whatever its type.
//!
//! serde decodes a nested value by recursion, one or more stack frames per level, and postcard
//! sets no limit. A command, query or peer message of a type that can hold itself (a JSON-like
//! value, a syntax tree, a list of lists) could be sent a few kilobytes long and thousands of
//! levels deep: decoding it would overflow the thread's stack, which aborts the process (it is
//! not a panic). For a command already in the log that is every replica, at every restart.
//!
//! [`crate::codec::decode_input`], which decodes what clients send (commands, queries), goes
//! through [`Limited`], which counts the levels a value opens (a struct, tuple, sequence, map,
//! enum, `Some` or newtype each open one) and fails past [`MAX_DEPTH`] with an ordinary decode
//! error. The count depends only on the bytes, so every replica refuses the same commands. The
//! wrappers forward everything else untouched; once inlined they cost a counter per level.

use std::cell::Cell;
use std::fmt;

use serde::de;
use serde::de::DeserializeSeed;
use serde::de::Deserializer;
use serde::de::EnumAccess;
use serde::de::MapAccess;
use serde::de::SeqAccess;
use serde::de::VariantAccess;
use serde::de::Visitor;

/// The most levels one decoded value may open. serde_json's default recursion limit is the
/// same; ordinary commands use a handful.
pub const MAX_DEPTH: usize = 128;

/// How many more levels a value may open, and where a refusal is recorded (postcard keeps
/// only that a custom error happened, not its message).
#[derive(Clone, Copy)]
pub(crate) struct Depth<'t> {
    left: usize,
    tripped: &'t Cell<bool>,
}

impl<'t> Depth<'t> {
    /// [`MAX_DEPTH`] levels, a refusal recorded in `tripped`.
    pub(crate) fn new(tripped: &'t Cell<bool>) -> Depth<'t> {
        Depth {
            left: MAX_DEPTH,
            tripped,
        }
    }

    /// `visitor`, for a value at this depth.
    #[inline]
    fn counting<V>(self, visitor: V) -> Counted<'t, V> {
        Counted {
            inner: visitor,
            depth: self,
        }
    }

    /// `access` (a seed, or a sequence, map, enum or variant access), for values at this depth.
    #[inline]
    fn within<A>(self, access: A) -> Within<'t, A> {
        Within {
            inner: access,
            depth: self,
        }
    }

    /// One level deeper, or the error that refuses it.
    #[inline]
    fn deeper<E: de::Error>(self) -> Result<Depth<'t>, E> {
        match self.left.checked_sub(1) {
            Some(left) => Ok(Depth { left, ..self }),
            None => {
                self.tripped.set(true);
                Err(E::custom(format_args!(
                    "the value nests more than {MAX_DEPTH} levels deep"
                )))
            }
        }
    }
}

/// A deserializer whose values may open at most `depth` more levels.
pub(crate) struct Limited<'t, D> {
    inner: D,
    depth: Depth<'t>,
}

impl<'t, D> Limited<'t, D> {
    /// `inner`, allowed `depth`.
    pub(crate) fn new(inner: D, depth: Depth<'t>) -> Limited<'t, D> {
        Limited { inner, depth }
    }
}

/// The visitor of a value at a level that allows `depth` more inside it.
struct Counted<'t, V> {
    inner: V,
    depth: Depth<'t>,
}

/// A seed, sequence, map, enum or variant access whose values may open `depth` more levels.
struct Within<'t, A> {
    inner: A,
    depth: Depth<'t>,
}

/// Forwards each `deserialize_*` method (with the arguments it takes before the visitor) to the
/// inner deserializer, the visitor counted at this depth.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(
                self,
                $($arg: $ty,)*
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                self.inner.$method($($arg,)* self.depth.counting(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_seq(),
        deserialize_map(),
        deserialize_identifier(),
        deserialize_ignored_any(),
    );

    forward_deserialize!(
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
    );

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            #[inline]
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Counted<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.deeper()?;
        self.inner.visit_some(Limited { inner: d, depth })
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.deeper()?;
        self.inner.visit_newtype_struct(Limited { inner: d, depth })
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.deeper()?;
        self.inner.visit_seq(depth.within(seq))
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.deeper()?;
        self.inner.visit_map(depth.within(map))
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.deeper()?;
        self.inner.visit_enum(depth.within(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Within<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Limited::new(d, self.depth))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Within<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let seed = self.depth.within(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Within<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let seed = self.depth.within(seed);
        self.inner.next_key_seed(seed)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let seed = self.depth.within(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 't, A: EnumAccess<'de>> EnumAccess<'de> for Within<'t, A> {
    type Error = A::Error;
    type Variant = Within<'t, A::Variant>;

    #[inline]
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let depth = self.depth;
        let (value, variant) = self.inner.variant_seed(depth.within(seed))?;
        Ok((value, depth.within(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Within<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let seed = self.depth.within(seed);
        self.inner.newtype_variant_seed(seed)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.depth.counting(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let visitor = self.depth.counting(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::MAX_DEPTH;
    use crate::codec::decode;
    use crate::codec::decode_input;

    /// A type that holds itself through an enum and a box.
    #[derive(Debug, Deserialize, PartialEq)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
    }

    /// A type that holds itself through a struct and a sequence.
    #[derive(Debug, Deserialize, PartialEq)]
    struct Lists(Vec<Lists>);

    /// A type that holds itself through an option, in a struct.
    #[derive(Debug, Deserialize, PartialEq)]
    struct Chain {
        next: Option<Box<Chain>>,
    }

    /// The postcard encoding of a value `levels` deep whose every level is the byte 1 (an enum's
    /// second variant, a sequence of one, `Some`) and whose end is the byte 0.
    fn nested(levels: usize) -> Vec<u8> {
        let mut bytes = vec![1u8; levels];
        bytes.push(0);
        bytes
    }

    fn depth_error(e: impl std::fmt::Display) -> bool {
        e.to_string().contains("levels deep")
    }

    #[test]
    fn values_nested_within_the_bound_decode() {
        let t: Tree = decode_input(&nested(10)).unwrap();
        let mut levels = 0;
        let mut at = &t;
        while let Tree::Node(inner) = at {
            levels += 1;
            at = inner;
        }
        assert_eq!(levels, 10);
        // An enum level and a newtype level each count: a Tree level opens two.
        assert!(decode_input::<Tree>(&nested(MAX_DEPTH / 2 - 1)).is_ok());
        assert!(decode_input::<Lists>(&nested(MAX_DEPTH / 2 - 1)).is_ok());
        assert!(decode_input::<Chain>(&nested(MAX_DEPTH / 2 - 1)).is_ok());
    }

    /// Without the bound, the deepest of these overflows the test thread's stack and aborts the
    /// whole test process.
    #[test]
    fn values_nested_past_the_bound_are_an_error_not_a_crash() {
        for levels in [MAX_DEPTH, 10 * MAX_DEPTH, 1_000_000] {
            let bytes = nested(levels);
            let e = decode_input::<Tree>(&bytes).unwrap_err();
            assert!(depth_error(&e), "{e}");
            assert!(depth_error(decode_input::<Lists>(&bytes).unwrap_err()));
            assert!(depth_error(decode_input::<Chain>(&bytes).unwrap_err()));
        }
        // Trailing bytes are refused as by `decode`.
        let mut trailing = nested(3);
        trailing.push(0);
        assert!(decode_input::<Tree>(&trailing).is_err());
    }

    /// What raftkit or the state machine built (a snapshot of a deep state, an output) decodes
    /// past the bound: it is as deep as a state the process held.
    #[test]
    fn values_built_here_decode_past_the_bound() {
        let levels = MAX_DEPTH * 2;
        assert!(decode_input::<Lists>(&nested(levels)).is_err());
        assert!(decode::<Lists>(&nested(levels)).is_ok());
    }
}

#[cfg(test)]
mod cost {
    use serde::Deserialize;
    use serde::Serialize;

    #[derive(Serialize, Deserialize)]
    enum Op {
        Set {
            key: Vec<u8>,
            value: Vec<u8>,
            ttl: Option<u64>,
        },
        Del(Vec<Vec<u8>>),
    }

    #[derive(Serialize, Deserialize)]
    struct Command {
        now: u64,
        op: Op,
    }

    #[test]
    #[ignore = "a measurement: cargo test --release -p raft-core --lib depth::cost -- --ignored --nocapture"]
    fn decode_cost_with_and_without_the_bound() {
        let c = Command {
            now: 1_700_000_000_000,
            op: Op::Set {
                key: b"key:000012345".to_vec(),
                value: vec![7u8; 256],
                ttl: Some(60_000),
            },
        };
        let bytes = crate::codec::encode(&c).unwrap();
        let n = 2_000_000;
        for round in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..n {
                let c: Command = postcard::from_bytes(std::hint::black_box(&bytes)).unwrap();
                std::hint::black_box(c);
            }
            let plain = t.elapsed();
            let t = std::time::Instant::now();
            for _ in 0..n {
                let c: Command = crate::codec::decode_input(std::hint::black_box(&bytes)).unwrap();
                std::hint::black_box(c);
            }
            let bounded = t.elapsed();
            let t = std::time::Instant::now();
            for _ in 0..n {
                let mut de = postcard::Deserializer::from_bytes(std::hint::black_box(&bytes));
                let c = Command::deserialize(&mut de).unwrap();
                assert!(de.finalize().unwrap().is_empty());
                std::hint::black_box(c);
            }
            let unlimited = t.elapsed();
            eprintln!(
                "round {round}: plain {:.1} ns, same steps unbounded {:.1} ns, bounded {:.1} ns per decode",
                plain.as_nanos() as f64 / n as f64,
                unlimited.as_nanos() as f64 / n as f64,
                bounded.as_nanos() as f64 / n as f64
            );
        }
    }
}
