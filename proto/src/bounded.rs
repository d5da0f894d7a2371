//! Lists capped while they are decoded.
//!
//! A MessagePack array announces its length before its items, and an item
//! can be much smaller on the wire than in memory (an empty header is 3
//! bytes on the wire and about 48 in memory). Decoding a whole frame and
//! counting afterwards would let one 4 MiB frame grow into ~100 MiB. Every
//! list field of a frame is therefore read with [`vec`]: it refuses an
//! announced length above its cap before allocating anything, and stops
//! reading at the cap whatever the announcement. Encoding is unchanged, so
//! the wire bytes of valid frames are the same.
//!
//! Use: `#[serde(deserialize_with = "crate::bounded::vec::<_, _, CAP>")]`.

use serde::de::{Deserialize, Deserializer, Error, IgnoredAny, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// Reads a list of at most `N` items.
struct Bounded<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {N} items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let announced = seq.size_hint().unwrap_or(0);
        if announced > N {
            return Err(A::Error::invalid_length(announced, &self));
        }
        let mut items = Vec::with_capacity(announced);
        while items.len() < N {
            match seq.next_element()? {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
        // A format without an announced length: one more item is too many.
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(A::Error::invalid_length(N + 1, &self));
        }
        Ok(items)
    }
}

/// Deserializes a `Vec<T>` of at most `N` items (a serde `deserialize_with`
/// function).
pub(crate) fn vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(Bounded::<T, N>(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Three {
        #[serde(deserialize_with = "super::vec::<_, _, 3>")]
        items: Vec<u8>,
    }

    fn decode(bytes: &[u8]) -> Result<Three, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    #[test]
    fn accepts_up_to_the_cap_and_encodes_as_before() {
        for n in 0..=3u8 {
            let value = Three {
                items: (0..n).collect(),
            };
            let bytes = rmp_serde::to_vec(&value).unwrap();
            assert_eq!(bytes[1], 0x90 + n, "a plain MessagePack array");
            assert_eq!(decode(&bytes).unwrap(), value);
        }
    }

    #[test]
    fn rejects_an_announced_length_above_the_cap_before_reading_items() {
        // [ [ 4 items announced, none present ] ]: refused from the length alone.
        assert!(decode(&[0x91, 0x94]).is_err());
        // An array32 announcing 4 billion items.
        assert!(decode(&[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0x91, 0x94, 1, 2, 3, 4]).is_err());
    }

    #[test]
    fn struct_as_a_map_is_capped_too() {
        // { "items": [1, 2, 3, 4] }
        let mut bytes = vec![0x81, 0xa5];
        bytes.extend_from_slice(b"items");
        bytes.extend_from_slice(&[0x94, 1, 2, 3, 4]);
        assert!(decode(&bytes).is_err());
        bytes[7] = 0x93;
        bytes.pop();
        assert_eq!(decode(&bytes).unwrap().items, [1, 2, 3]);
    }
}
