//! An ordered, byte-oriented header map that behaves like Envoy's `HeaderMapImpl` as seen
//! through the proxy-wasm ABI.

use crate::abi::{self, Pairs};

/// Ordered multimap of header names to values. Names are lower-cased on insert (Envoy's
/// `LowerCaseString`); values are arbitrary bytes (not necessarily UTF-8). Pseudo-headers
/// (`:path`, ...) are kept in front of regular headers, as Envoy's header list does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Pairs,
}

fn lower(key: &[u8]) -> Vec<u8> {
    key.to_ascii_lowercase()
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from pairs, adding each one in order (so repeated names are kept).
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    /// Parses the proxy-wasm wire format (see [`abi::deserialize_pairs`]).
    pub fn from_wire(buf: &[u8]) -> Option<Self> {
        abi::deserialize_pairs(buf).map(Self::from_pairs)
    }

    /// Serializes to the proxy-wasm wire format.
    pub fn to_wire(&self) -> Vec<u8> {
        abi::serialize_pairs(&self.entries)
    }

    /// Number of entries (what Envoy passes as `num_headers`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of key and value lengths (Envoy's `byteSize()`, i.e. `proxy_get_header_map_size`).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The first value of `key` (case-insensitive), which is what `proxy_get_header_map_value` returns.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let key = lower(key.as_ref());
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_slice())
    }

    /// The first value of `key` as UTF-8 (lossy), for convenient assertions.
    pub fn get_str(&self, key: impl AsRef<[u8]>) -> Option<String> {
        self.get(key).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// All values of `key`, in order.
    pub fn get_all(&self, key: impl AsRef<[u8]>) -> Vec<&[u8]> {
        let key = lower(key.as_ref());
        self.entries.iter().filter(|(k, _)| *k == key).map(|(_, v)| v.as_slice()).collect()
    }

    /// Appends an entry (Envoy `addCopy`); pseudo-headers go after the existing pseudo-headers.
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = lower(key.as_ref());
        let entry = (key, value.as_ref().to_vec());
        if entry.0.first() == Some(&b':') {
            let at = self.entries.iter().position(|(k, _)| k.first() != Some(&b':'));
            match at {
                Some(i) => self.entries.insert(i, entry),
                None => self.entries.push(entry),
            }
        } else {
            self.entries.push(entry);
        }
    }

    /// Removes every value of `key`, then adds `value` (Envoy 1.40 `setCopy`).
    pub fn replace(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.remove(key.as_ref());
        self.add(key, value);
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = lower(key.as_ref());
        self.entries.retain(|(k, _)| *k != key);
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Entries in order, as owned pairs.
    pub fn pairs(&self) -> &Pairs {
        &self.entries
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_orders_pseudo_headers_and_replaces_all() {
        let mut m = HeaderMap::from_pairs([("X-A", "1"), (":path", "/"), ("x-a", "2")]);
        m.add(":method", "GET");
        assert_eq!(
            m.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>(),
            vec![b":path".to_vec(), b":method".to_vec(), b"x-a".to_vec(), b"x-a".to_vec()]
        );
        assert_eq!(m.get("X-a"), Some(&b"1"[..]));
        m.replace("x-a", "3");
        assert_eq!(m.get_all("x-a"), vec![&b"3"[..]]);
        assert_eq!(m.byte_size(), 5 + 1 + 7 + 3 + 3 + 1);
        m.remove("X-A");
        assert_eq!(m.get("x-a"), None);
    }

    #[test]
    fn binary_values_survive_the_wire() {
        let m = HeaderMap::from_pairs([("k", vec![0xc3u8, 0x28, 0xff])]);
        assert_eq!(HeaderMap::from_wire(&m.to_wire()).unwrap(), m);
    }
}
