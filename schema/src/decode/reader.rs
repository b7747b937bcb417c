//! The one reading of a body: serde_json straight into the derived event types of
//! [`crate::event`], through a thin [`Deserializer`] adapter ([`Reader`]) that keeps what a
//! dead letter needs and derived serde alone would lose.
//!
//! The adapter forwards every call to serde_json and changes four things:
//!
//! - a struct is read from a JSON object only (`deserialize_struct` becomes
//!   `deserialize_map`): derived structs would also take an array of the values in field
//!   order;
//! - an unknown field is parsed as strictly as a known one ([`Skip`], through
//!   `deserialize_any`): UTF-8, escapes and lone surrogates, number range, the nesting
//!   limit (serde_json's `IgnoredAny` only scans, so a broken unknown field would pass);
//! - an enum is read from a string only; a name the enum does not have reads as its
//!   `unknown` variant, and [`Read::unrecognised`] says where (a minor schema version may
//!   add values; [`decode`](super::decode) decides whether that is allowed);
//! - errors are typed ([`ReadError`]) and carry the dotted path of the field being read
//!   ([`Failure::path`]), kept in a [`Track`] the wrappers share.
//!
//! The path costs one store per key (the key is borrowed from the body); field names are
//! matched to the struct's `&'static` field list only when an error needs them.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde::Deserialize;

/// Deepest struct nesting whose keys are tracked (the event has two levels).
const MAX_LEVELS: usize = 4;

/// Name of the variant an unrecognised enum value reads as.
const UNKNOWN_VARIANT: &str = "unknown";

/// Why the typed reading stopped.
#[derive(Debug)]
pub(super) enum ReadError {
    /// serde_json refused the body here: bad syntax, or (when the body is valid JSON) a
    /// value of the wrong JSON type.
    Json(String),
    /// A value of the wrong JSON type (a string for a number, `1.5` for an integer, …).
    WrongType,
    /// A negative number where the type is unsigned.
    Negative,
    /// A number beyond the type's range (`4294967296` for a `u32`).
    TooLarge,
    /// A value rule of the type failed; the message is the rule (see
    /// [`crate::event::VALUE_RULES`]).
    Rule(String),
    /// A required field is absent (its key, without the parent path).
    MissingField(&'static str),
    /// A known field appears twice in one object.
    DuplicateField,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Json(m) | ReadError::Rule(m) => f.write_str(m),
            ReadError::WrongType => f.write_str("wrong type"),
            ReadError::Negative => f.write_str("negative"),
            ReadError::TooLarge => f.write_str("too large"),
            ReadError::MissingField(k) => write!(f, "missing field `{k}`"),
            ReadError::DuplicateField => f.write_str("duplicate field"),
        }
    }
}

impl std::error::Error for ReadError {}

impl de::Error for ReadError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ReadError::Rule(msg.to_string())
    }
    fn invalid_type(_: Unexpected<'_>, _: &dyn de::Expected) -> Self {
        ReadError::WrongType
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        match unexp {
            Unexpected::Signed(i) if i < 0 => ReadError::Negative,
            Unexpected::Signed(_) | Unexpected::Unsigned(_) => ReadError::TooLarge,
            _ => ReadError::Rule(exp.to_string()),
        }
    }
    fn invalid_length(_: usize, _: &dyn de::Expected) -> Self {
        ReadError::WrongType
    }
    fn missing_field(field: &'static str) -> Self {
        ReadError::MissingField(field)
    }
    fn duplicate_field(_: &'static str) -> Self {
        ReadError::DuplicateField
    }
}

/// A body read into `T`, with the path of an enum value that was not recognised.
pub(super) struct Read<T> {
    pub(super) value: T,
    /// Dotted path of the first enum value read as `unknown` because the enum has no
    /// variant of that name.
    pub(super) unrecognised: Option<&'static str>,
}

/// Where and why the reading stopped.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: ReadError,
    /// Dotted path of the value being read (`calls.call_count`); empty at the root.
    pub(super) path: &'static str,
}

/// Reads `bytes` (one JSON value, whitespace around it) into `T`.
pub(super) fn read<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<Read<T>, Failure> {
    // One UTF-8 check of the whole body (word at a time over ASCII) costs a fraction of
    // serde_json's check of each string in turn; a body that is not UTF-8 is read from
    // the bytes, so its error names where it breaks.
    match std::str::from_utf8(bytes) {
        Ok(text) => read_from(serde_json::Deserializer::from_str(text)),
        Err(_) => read_from(serde_json::Deserializer::from_slice(bytes)),
    }
}

fn read_from<'de, R, T>(mut json: serde_json::Deserializer<R>) -> Result<Read<T>, Failure>
where
    R: serde_json::de::Read<'de>,
    T: Deserialize<'de>,
{
    let track = Track::default();
    let read = T::deserialize(Reader {
        de: &mut json,
        t: &track,
    })
    .and_then(|value| match json.end() {
        Ok(()) => Ok(value),
        Err(e) => Err(ReadError::Json(e.to_string())),
    });
    match read {
        Ok(value) => Ok(Read {
            value,
            unrecognised: track.unrecognised.get(),
        }),
        Err(error) => {
            let path = match error {
                // Raised at the end of the object that lacks the key.
                ReadError::MissingField(key) => {
                    track.path(track.depth.get().saturating_sub(1), Some(key))
                }
                _ => track.path(track.depth.get(), None),
            };
            Err(Failure { error, path })
        }
    }
}

/// A key as read: borrowed from the body, or (when it had escapes) already matched to
/// the struct's field list.
#[derive(Debug, Clone, Copy, Default)]
enum Key<'de> {
    #[default]
    None,
    Borrowed(&'de str),
    Static(&'static str),
}

/// What the wrappers share: the keys being read at each struct level, and the typed error
/// that serde_json's own error type cannot carry between a visitor and the adapter.
#[derive(Default)]
struct Track<'de> {
    /// Structs entered and not yet finished.
    depth: Cell<usize>,
    keys: [Cell<Key<'de>>; MAX_LEVELS],
    fields: [Cell<&'static [&'static str]>; MAX_LEVELS],
    /// The typed error behind the placeholder a visitor returned to serde_json.
    stash: Cell<Option<ReadError>>,
    unrecognised: Cell<Option<&'static str>>,
}

impl<'de> Track<'de> {
    /// A visitor's result, for serde_json: a typed error is kept here and a placeholder
    /// goes up instead (see [`Track::result`]).
    #[inline]
    fn stash<T, E: de::Error>(&self, r: Result<T, ReadError>) -> Result<T, E> {
        r.map_err(|e| {
            self.stash.set(Some(e));
            E::custom("see the typed error")
        })
    }

    /// serde_json's result, typed: the kept error if a visitor failed, else serde_json's.
    #[inline]
    fn result<T, E: fmt::Display>(&self, r: Result<T, E>) -> Result<T, ReadError> {
        r.map_err(|e| {
            self.stash
                .take()
                .unwrap_or_else(|| ReadError::Json(e.to_string()))
        })
    }

    #[inline]
    fn enter(&self, fields: &'static [&'static str]) -> usize {
        let level = self.depth.get();
        if let (Some(k), Some(f)) = (self.keys.get(level), self.fields.get(level)) {
            k.set(Key::None);
            f.set(fields);
        }
        self.depth.set(level + 1);
        level
    }

    #[inline]
    fn set_key(&self, key: Key<'de>) {
        if let Some(k) = self
            .depth
            .get()
            .checked_sub(1)
            .and_then(|l| self.keys.get(l))
        {
            k.set(key);
        }
    }

    /// The field name `key` has in the struct at `level`, as the struct's `&'static` name.
    fn field_name(&self, level: usize, key: &str) -> Option<&'static str> {
        let fields = self.fields.get(level)?.get();
        fields.iter().copied().find(|f| *f == key)
    }

    /// Dotted path of the keys of the first `levels` levels, then `last`.
    fn path(&self, levels: usize, last: Option<&'static str>) -> &'static str {
        let mut segments: Vec<&'static str> = Vec::with_capacity(levels + 1);
        for level in 0..levels.min(MAX_LEVELS) {
            let name = match self.keys[level].get() {
                Key::None => None,
                Key::Borrowed(k) => self.field_name(level, k),
                Key::Static(k) => Some(k),
            };
            match name {
                Some(name) => segments.push(name),
                None => break,
            }
        }
        segments.extend(last);
        intern(&segments)
    }
}

/// `segments` joined with dots, as a `&'static str`. Each distinct path is allocated once
/// and kept: segments are the derived types' own field names, so there are as many paths
/// as fields in the schema, however many bodies name them.
fn intern(segments: &[&'static str]) -> &'static str {
    match segments {
        [] => "",
        [one] => one,
        _ => {
            static PATHS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
            let joined = segments.join(".");
            let mut paths = PATHS.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(p) = paths.iter().find(|p| **p == joined) {
                return p;
            }
            let p: &'static str = Box::leak(joined.into_boxed_str());
            paths.push(p);
            p
        }
    }
}

/// serde_json's deserializer (or one of its nested ones), with the rules of the module docs.
struct Reader<'t, 'de, D> {
    de: D,
    t: &'t Track<'de>,
}

macro_rules! forward {
    ($($method:ident)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
            let t = self.t;
            t.result(self.de.$method(Wrap::new(visitor, t)))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Reader<'_, 'de, D> {
    type Error = ReadError;

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let t = self.t;
        t.result(self.de.deserialize_unit_struct(name, Wrap::new(visitor, t)))
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let t = self.t;
        t.result(
            self.de
                .deserialize_newtype_struct(name, Wrap::new(visitor, t)),
        )
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let t = self.t;
        t.result(self.de.deserialize_tuple(len, Wrap::new(visitor, t)))
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let t = self.t;
        t.result(
            self.de
                .deserialize_tuple_struct(name, len, Wrap::new(visitor, t)),
        )
    }

    /// From an object only, tracking its keys.
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let t = self.t;
        let wrap = Wrap {
            v: visitor,
            t,
            fields: Some(fields),
        };
        t.result(self.de.deserialize_map(wrap))
    }

    /// From a string only; an unrecognised name reads as the `unknown` variant if any.
    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let t = self.t;
        let name = EnumName {
            v: visitor,
            variants,
            t,
        };
        t.result(self.de.deserialize_str(name))
    }

    /// Parsed in full, as strictly as a known field, then dropped.
    #[inline]
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        let t = self.t;
        t.result(self.de.deserialize_any(Skip))?;
        visitor.visit_unit()
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor whose typed result is handed to serde_json through the [`Track`], and whose
/// nested deserializers are [`Reader`]s. `fields` is set when it reads a struct.
struct Wrap<'t, 'de, V> {
    v: V,
    t: &'t Track<'de>,
    fields: Option<&'static [&'static str]>,
}

impl<'t, 'de, V> Wrap<'t, 'de, V> {
    #[inline]
    fn new(v: V, t: &'t Track<'de>) -> Self {
        Wrap { v, t, fields: None }
    }
}

macro_rules! visit {
    ($($method:ident($ty:ty))*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, x: $ty) -> Result<V::Value, E> {
            self.t.stash(self.v.$method(x))
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    visit! {
        visit_bool(bool) visit_i64(i64) visit_i128(i128) visit_u64(u64) visit_u128(u128)
        visit_f64(f64) visit_char(char) visit_str(&str) visit_borrowed_str(&'de str)
        visit_string(String) visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8])
        visit_byte_buf(Vec<u8>)
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.t.stash(self.v.visit_unit())
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.t.stash(self.v.visit_none())
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let t = self.t;
        t.stash(self.v.visit_some(Reader { de, t }))
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let t = self.t;
        t.stash(self.v.visit_newtype_struct(Reader { de, t }))
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let t = self.t;
        t.stash(self.v.visit_seq(Access { a: seq, t }))
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let t = self.t;
        let Some(fields) = self.fields else {
            return t.stash(self.v.visit_map(Access { a: map, t }));
        };
        let level = t.enter(fields);
        let read = self.v.visit_map(Access { a: map, t });
        if read.is_ok() {
            t.depth.set(level);
        }
        t.stash(read)
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<V::Value, A::Error> {
        self.t.stash(Err(ReadError::WrongType))
    }
}

/// A map or sequence of a [`Wrap`]ped visitor: keys tracked, values read by [`Reader`]s.
struct Access<'t, 'de, A> {
    a: A,
    t: &'t Track<'de>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, 'de, A> {
    type Error = ReadError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ReadError> {
        let t = self.t;
        t.result(self.a.next_key_seed(KeySeed { seed, t }))
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, ReadError> {
        let t = self.t;
        t.result(self.a.next_value_seed(ValueSeed { seed, t }))
    }

    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, 'de, A> {
    type Error = ReadError;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, ReadError> {
        let t = self.t;
        t.result(self.a.next_element_seed(ValueSeed { seed, t }))
    }

    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

/// A value seed whose deserializer is a [`Reader`].
struct ValueSeed<'t, 'de, S> {
    seed: S,
    t: &'t Track<'de>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ValueSeed<'_, 'de, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let t = self.t;
        t.stash(self.seed.deserialize(Reader { de, t }))
    }
}

/// A key seed that records the key it reads.
struct KeySeed<'t, 'de, S> {
    seed: S,
    t: &'t Track<'de>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, 'de, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let t = self.t;
        t.stash(self.seed.deserialize(KeyReader { de, t }))
    }
}

/// The deserializer of a key: any request reads a string and records it.
struct KeyReader<'t, 'de, D> {
    de: D,
    t: &'t Track<'de>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for KeyReader<'_, 'de, D> {
    type Error = ReadError;

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        let t = self.t;
        t.result(self.de.deserialize_identifier(KeyVisitor { v: visitor, t }))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct KeyVisitor<'t, 'de, V> {
    v: V,
    t: &'t Track<'de>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    #[inline]
    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<V::Value, E> {
        self.t.set_key(Key::Borrowed(key));
        self.t.stash(self.v.visit_borrowed_str(key))
    }

    /// A key with escapes: matched to the field list now, as it is not kept.
    #[inline]
    fn visit_str<E: de::Error>(self, key: &str) -> Result<V::Value, E> {
        let t = self.t;
        let level = t.depth.get().saturating_sub(1);
        t.set_key(t.field_name(level, key).map_or(Key::None, Key::Static));
        t.stash(self.v.visit_str(key))
    }
}

/// Reads an enum from its name; see [`Reader::deserialize_enum`].
struct EnumName<'t, 'de, V> {
    v: V,
    variants: &'static [&'static str],
    t: &'t Track<'de>,
}

impl<'de, V: Visitor<'de>> EnumName<'_, 'de, V> {
    /// `name` if the enum has it; else `unknown` (noting where), if the enum has that.
    #[inline]
    fn known(&self, name: &str) -> Option<&'static str> {
        if self.variants.contains(&name) {
            return None;
        }
        let unknown = self
            .variants
            .iter()
            .copied()
            .find(|v| *v == UNKNOWN_VARIANT)?;
        if self.t.unrecognised.get().is_none() {
            let t = self.t;
            t.unrecognised.set(Some(t.path(t.depth.get(), None)));
        }
        Some(unknown)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for EnumName<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    #[inline]
    fn visit_borrowed_str<E: de::Error>(self, name: &'de str) -> Result<V::Value, E> {
        let read = match self.known(name) {
            Some(unknown) => self.v.visit_enum(BorrowedStrDeserializer::new(unknown)),
            None => self.v.visit_enum(BorrowedStrDeserializer::new(name)),
        };
        self.t.stash(read)
    }

    #[inline]
    fn visit_str<E: de::Error>(self, name: &str) -> Result<V::Value, E> {
        let read = match self.known(name) {
            Some(unknown) => self.v.visit_enum(BorrowedStrDeserializer::new(unknown)),
            None => self.v.visit_enum(StrDeserializer::new(name)),
        };
        self.t.stash(read)
    }
}

/// Any JSON value, parsed through `deserialize_any` (as strictly as `serde_json::Value`
/// parses it: UTF-8, escapes, number range, nesting limit) and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    #[inline]
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    #[inline]
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// What a dead letter's report needs from the body as a whole, read in one strict pass
/// (as strict as `serde_json::Value`, with the same error messages, but building nothing).
#[derive(Debug, Default)]
pub(super) struct Survey {
    /// The root is a JSON object.
    pub(super) object: bool,
    /// The root's `schema` (the last one, as `Value` keeps): `Some(None)` when not a string.
    pub(super) schema: Option<Option<String>>,
    /// The root's `instance`, when a string (the last one).
    pub(super) instance: Option<String>,
    /// Some object has a key twice (`Value` keeps the last; the typed reading refuses).
    pub(super) repeats: bool,
}

/// Surveys `bytes`; `Err` carries serde_json's message when the body is not JSON.
pub(super) fn survey(bytes: &[u8]) -> Result<Survey, String> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let survey = json.deserialize_any(Root).map_err(|e| e.to_string())?;
    json.end().map_err(|e| e.to_string())?;
    Ok(survey)
}

/// The root of a [`Survey`].
struct Root;

impl<'de> Visitor<'de> for Root {
    type Value = Survey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Survey, E> {
        Ok(Survey::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Survey, E> {
        Ok(Survey::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Survey, E> {
        Ok(Survey::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Survey, E> {
        Ok(Survey::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Survey, E> {
        Ok(Survey::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Survey, E> {
        Ok(Survey::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Survey, A::Error> {
        let repeats = Repeats.visit_seq(seq)?;
        Ok(Survey {
            repeats,
            ..Survey::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Survey, A::Error> {
        let mut survey = Survey {
            object: true,
            ..Survey::default()
        };
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = map.next_key_seed(KeyText)? {
            match &*key {
                "schema" => survey.schema = Some(map.next_value_seed(Text)?),
                "instance" => survey.instance = map.next_value_seed(Text)?,
                _ => survey.repeats |= map.next_value_seed(Repeats)?,
            }
            survey.repeats |= keys.contains(&key);
            keys.push(key);
        }
        Ok(survey)
    }
}

/// A key, borrowed from the body when it has no escapes.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(KeyText)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// Any JSON value, kept when it is a string.
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(Text)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(s.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Skip.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Skip.visit_map(map).map(|_| None)
    }
}

/// [`Skip`] that says whether it met an object with a key twice.
struct Repeats;
impl<'de> DeserializeSeed<'de> for Repeats {
    type Value = bool;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(Repeats)
    }
}

impl<'de> Visitor<'de> for Repeats {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    #[inline]
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    #[inline]
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut repeats = false;
        while let Some(r) = seq.next_element_seed(Repeats)? {
            repeats |= r;
        }
        Ok(repeats)
    }
    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut repeats = false;
        while let Some(key) = map.next_key_seed(KeyText)? {
            repeats |= map.next_value_seed(Repeats)?;
            repeats |= keys.contains(&key);
            keys.push(key);
        }
        Ok(repeats)
    }
}
