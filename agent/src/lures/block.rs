//! Adding a lure block to an existing file and taking it out again, on
//! bytes only.
//!
//! A block is appended at the end of the file (after a newline, if the file
//! does not end with one). The exact bytes added and where they went are
//! recorded, so removal gives back the original bytes exactly, even if the
//! rest of the file was edited meanwhile. Blocks carry no marker an attacker
//! could read: they look like the file's own content.

use serde::{Deserialize, Serialize};

/// What [`insert`] added to a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inserted {
    /// Where the added bytes start.
    pub offset: usize,
    /// The added bytes: an optional separating newline, then the block.
    pub bytes: String,
}

/// Why a block could not be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("the lure block is no longer in the file")]
    Missing,
    #[error("the lure block appears more than once in the file")]
    Ambiguous,
}

/// Appends `block` to `original`. The block is made to end with a newline.
pub fn insert(original: &[u8], block: &str) -> (Vec<u8>, Inserted) {
    let mut bytes = String::new();
    if !original.is_empty() && !original.ends_with(b"\n") {
        bytes.push('\n');
    }
    bytes.push_str(block);
    if !block.ends_with('\n') {
        bytes.push('\n');
    }
    let mut out = Vec::with_capacity(original.len() + bytes.len());
    out.extend_from_slice(original);
    out.extend_from_slice(bytes.as_bytes());
    (
        out,
        Inserted {
            offset: original.len(),
            bytes,
        },
    )
}

/// Where the inserted bytes are now: at their recorded offset, or else at
/// their only occurrence.
pub fn locate(current: &[u8], inserted: &Inserted) -> Result<usize, BlockError> {
    let needle = inserted.bytes.as_bytes();
    if needle.is_empty() {
        return Err(BlockError::Missing);
    }
    if current.get(inserted.offset..inserted.offset + needle.len()) == Some(needle) {
        return Ok(inserted.offset);
    }
    let mut found = current
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    match (found.next(), found.next()) {
        (Some(i), None) => Ok(i),
        (None, _) => Err(BlockError::Missing),
        (Some(_), Some(_)) => Err(BlockError::Ambiguous),
    }
}

/// `current` without the inserted bytes.
pub fn remove(current: &[u8], inserted: &Inserted) -> Result<Vec<u8>, BlockError> {
    let at = locate(current, inserted)?;
    let mut out = Vec::with_capacity(current.len() - inserted.bytes.len());
    out.extend_from_slice(&current[..at]);
    out.extend_from_slice(&current[at + inserted.bytes.len()..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn separator_only_when_needed() {
        let (out, ins) = insert(b"[default]\nregion = us-east-1", "[pacs]\nkey = 1");
        assert_eq!(out, b"[default]\nregion = us-east-1\n[pacs]\nkey = 1\n");
        assert_eq!(ins.bytes, "\n[pacs]\nkey = 1\n");
        let (out, ins) = insert(b"", "x\n");
        assert_eq!(out, b"x\n");
        assert_eq!(ins.offset, 0);
        let (out, _) = insert(b"a\n", "b\n");
        assert_eq!(out, b"a\nb\n");
    }

    #[test]
    fn removal_survives_edits_elsewhere_and_reports_tampering() {
        let original = b"Host real\n  HostName 10.0.0.1\n".to_vec();
        let (planted, ins) = insert(&original, "Host pacs\n  User svc\n");
        // Someone adds a line before the block.
        let mut edited = b"# added later\n".to_vec();
        edited.extend_from_slice(&planted);
        let mut expected = b"# added later\n".to_vec();
        expected.extend_from_slice(&original);
        assert_eq!(remove(&edited, &ins).unwrap(), expected);
        // Someone edits the block itself.
        let tampered = String::from_utf8(planted.clone())
            .unwrap()
            .replace("svc", "evil");
        assert_eq!(remove(tampered.as_bytes(), &ins), Err(BlockError::Missing));
        // The block duplicated: refuse to guess.
        let mut twice = planted.clone();
        twice.extend_from_slice(ins.bytes.as_bytes());
        twice.splice(0..0, b"x".iter().copied());
        assert_eq!(remove(&twice, &ins), Err(BlockError::Ambiguous));
    }

    proptest! {
        #[test]
        fn insert_then_remove_gives_back_the_original(
            original in proptest::collection::vec(any::<u8>(), 0..2048),
            block in "[ -~\n]{1,200}",
        ) {
            let (planted, ins) = insert(&original, &block);
            prop_assert!(planted.starts_with(&original));
            prop_assert!(planted.ends_with(b"\n"));
            prop_assert_eq!(locate(&planted, &ins), Ok(original.len()));
            prop_assert_eq!(remove(&planted, &ins).unwrap(), original);
        }

        #[test]
        fn removal_after_prepended_edits_keeps_the_edits(
            original in proptest::collection::vec(any::<u8>(), 0..1024),
            prefix in proptest::collection::vec(any::<u8>(), 1..256),
            block in "[a-z]{8}=[A-Za-z0-9]{24}",
        ) {
            let (planted, ins) = insert(&original, &block);
            let mut edited = prefix.clone();
            edited.extend_from_slice(&planted);
            let mut expected = prefix;
            expected.extend_from_slice(&original);
            // The random block cannot occur twice, so removal is exact.
            prop_assume!(locate(&edited, &ins).is_ok());
            prop_assert_eq!(remove(&edited, &ins).unwrap(), expected);
        }
    }
}
