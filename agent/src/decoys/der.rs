//! The little of ASN.1 DER the decoys speak (SPNEGO in SMB, CredSSP in
//! RDP): definite lengths up to 16 MiB, no indefinite forms. Pure and
//! bounded, for fuzzing.

/// `content` as one element of `tag`.
pub fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else if len < 0x1_0000 {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    } else {
        // Up to 16 MiB, as far as `element_len` reads.
        out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// How long an element is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementLen {
    /// Header and content together.
    Known(usize),
    /// Too few bytes to tell (at most 5 are needed).
    NeedMore,
    /// An indefinite or over-long length.
    Invalid,
}

/// How long the element starting with `head` is in all.
pub fn element_len(head: &[u8]) -> ElementLen {
    let Some(&first) = head.get(1) else {
        return ElementLen::NeedMore;
    };
    if first < 0x80 {
        return ElementLen::Known(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if !(1..=3).contains(&n) {
        return ElementLen::Invalid;
    }
    let Some(bytes) = head.get(2..2 + n) else {
        return ElementLen::NeedMore;
    };
    let len = bytes.iter().fold(0usize, |l, b| l << 8 | usize::from(*b));
    ElementLen::Known(2 + n + len)
}

/// One element of `b`: its tag, its content and what follows it.
pub fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let ElementLen::Known(total) = element_len(b) else {
        return None;
    };
    let head = match b[1] {
        l if l < 0x80 => 2,
        l => 2 + usize::from(l & 0x7f),
    };
    let element = b.get(..total)?;
    Some((b[0], &element[head..], &b[total..]))
}

/// The content of `b`'s first element if its tag is `tag`.
pub fn expect(b: &[u8], tag: u8) -> Option<&[u8]> {
    tlv(b).and_then(|(t, content, _)| (t == tag).then_some(content))
}

/// An INTEGER's content as an unsigned 32-bit value (as CredSSP's
/// version and NTSTATUS codes are sent): at most four bytes, or five with
/// a leading zero.
pub fn uint(content: &[u8]) -> Option<u32> {
    let content = match content {
        [0, rest @ ..] if rest.len() == 4 => rest,
        c if (1..=4).contains(&c.len()) => c,
        _ => return None,
    };
    Some(content.iter().fold(0u32, |v, b| v << 8 | u32::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_round_trip_at_every_length_form() {
        for len in [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x1234, 0x1_2345] {
            let content = vec![0x5a; len];
            let e = der(0x04, &content);
            assert_eq!(
                element_len(&e[..e.len().min(5)]),
                ElementLen::Known(e.len())
            );
            let mut with_more = e.clone();
            with_more.extend_from_slice(b"next");
            let (tag, c, rest) = tlv(&with_more).unwrap();
            assert_eq!((tag, c, rest), (0x04, &content[..], &b"next"[..]));
        }
    }

    #[test]
    fn short_lying_and_indefinite_elements_are_refused() {
        assert_eq!(element_len(&[0x30]), ElementLen::NeedMore);
        assert_eq!(element_len(&[0x30, 0x82, 0x01]), ElementLen::NeedMore);
        assert_eq!(
            element_len(&[0x30, 0x80]),
            ElementLen::Invalid,
            "indefinite"
        );
        assert_eq!(element_len(&[0x30, 0x84, 1, 2, 3, 4]), ElementLen::Invalid);
        assert_eq!(tlv(&[0x04, 0x05, 1, 2]), None, "claims more than it has");
        assert_eq!(expect(&der(0x02, &[6]), 0x04), None, "another tag");
        assert_eq!(uint(&[0xc0, 0, 0, 0x6d]), Some(0xc000_006d));
        assert_eq!(uint(&[0, 0xc0, 0, 0, 0x6d]), Some(0xc000_006d));
        assert_eq!(uint(&[1, 2, 3, 4, 5]), None);
        assert_eq!(uint(&[]), None);
    }
}
