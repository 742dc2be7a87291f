//! A forgiving JSON walker: reports every scalar value with its path, key and parent key,
//! reads truncated documents as far as they go, never allocates per value, and keeps its
//! memory bounded whatever the nesting.

use std::ops::Range;

/// One step of a path: an object key (raw bytes of the document) or an array element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a [u8]),
    Index,
}

/// Where a value is in the document.
#[derive(Debug, Default)]
pub struct Path<'a> {
    segs: Vec<Seg<'a>>,
    /// Start offsets of the enclosing objects, innermost last.
    objects: Vec<usize>,
}

impl<'a> Path<'a> {
    /// Identity (start offset) of the object the value is a member of; `usize::MAX` when the
    /// value is not inside an object.
    #[must_use]
    pub fn object(&self) -> usize {
        self.objects.last().copied().unwrap_or(usize::MAX)
    }

    /// The key the value sits under (the nearest object key).
    #[must_use]
    pub fn key(&self) -> Option<&'a [u8]> {
        self.segs.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(*k),
            Seg::Index => None,
        })
    }

    /// The key of the object (or array) holding the value's key.
    #[must_use]
    pub fn parent_key(&self) -> Option<&'a [u8]> {
        self.segs
            .iter()
            .rev()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(*k),
                Seg::Index => None,
            })
            .nth(1)
    }

    /// `$.customer.addresses[*].line1`: array positions collapse to `[*]`, so the same field of
    /// every element is one field.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::from("$");
        for s in &self.segs {
            match s {
                Seg::Index => out.push_str("[*]"),
                Seg::Key(k) => {
                    let k = String::from_utf8_lossy(k);
                    if !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                    {
                        out.push('.');
                        out.push_str(&k);
                    } else {
                        out.push_str("[\"");
                        out.push_str(&k.replace('"', "\\\""));
                        out.push_str("\"]");
                    }
                }
            }
        }
        out
    }
}

/// A scalar value: its byte range (inside the quotes for strings) and whether it is a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scalar {
    pub span: Range<usize>,
    pub string: bool,
}

/// Containers deeper than this are still walked, but their keys are not tracked.
const MAX_DEPTH: usize = 128;

#[derive(Clone, Copy, Debug)]
struct Frame {
    /// `None` for an array; for an object, whether the next string is a key.
    expect_key: Option<bool>,
    /// An object member's key is on the path (popped at `,` or `}`).
    has_key: bool,
    /// The container is an array element: an `[*]` step was pushed when it opened.
    indexed: bool,
}

/// Whether `doc` looks like JSON (starts with `{` or `[` after whitespace).
#[must_use]
pub fn looks_like_json(doc: &[u8]) -> bool {
    doc.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[')
}

/// The buffers of a walk, kept between documents so that walking allocates nothing once they
/// have grown to the documents' depth.
#[derive(Debug, Default)]
pub struct Scratch {
    segs: Vec<Seg<'static>>,
    objects: Vec<usize>,
    frames: Vec<Frame>,
}

/// Calls `visit` for every scalar (string, number, literal) of `doc`, in order.
pub fn walk<'a>(doc: &'a [u8], visit: impl FnMut(&Path<'a>, &Scalar)) {
    walk_with(doc, &mut Scratch::default(), visit);
}

/// [`walk`] with the buffers of `scratch`.
pub fn walk_with<'a>(doc: &'a [u8], scratch: &mut Scratch, visit: impl FnMut(&Path<'a>, &Scalar)) {
    let mut path = Path {
        segs: std::mem::take(&mut scratch.segs),
        objects: std::mem::take(&mut scratch.objects),
    };
    let mut frames = std::mem::take(&mut scratch.frames);
    path.objects.clear();
    frames.clear();
    walk_in(doc, &mut path, &mut frames, visit);
    let Path { mut segs, objects } = path;
    segs.clear();
    // Empty, so nothing is mapped: only the lifetime changes, and collecting in place keeps
    // the buffer.
    scratch.segs = segs.into_iter().map(|_| Seg::Index).collect();
    scratch.objects = objects;
    scratch.frames = frames;
}

fn walk_in<'a>(
    doc: &'a [u8],
    path: &mut Path<'a>,
    frames: &mut Vec<Frame>,
    mut visit: impl FnMut(&Path<'a>, &Scalar),
) {
    // Depth beyond MAX_DEPTH: counted, not tracked.
    let mut overflow = 0usize;
    let mut i = 0;
    let n = doc.len();
    while i < n {
        match doc[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            open @ (b'{' | b'[') => {
                if frames.len() >= MAX_DEPTH || overflow > 0 {
                    overflow += 1;
                } else {
                    let indexed = matches!(
                        frames.last(),
                        Some(Frame {
                            expect_key: None,
                            ..
                        })
                    );
                    if indexed {
                        path.segs.push(Seg::Index);
                    }
                    let expect_key = (open == b'{').then_some(true);
                    if open == b'{' {
                        path.objects.push(i);
                    }
                    frames.push(Frame {
                        expect_key,
                        has_key: false,
                        indexed,
                    });
                }
                i += 1;
            }
            b'}' | b']' => {
                if overflow > 0 {
                    overflow -= 1;
                } else if let Some(f) = frames.pop() {
                    if f.expect_key.is_some() {
                        path.objects.pop();
                    }
                    if f.has_key {
                        path.segs.pop();
                    }
                    if f.indexed {
                        path.segs.pop();
                    }
                }
                i += 1;
            }
            b':' => {
                if overflow == 0
                    && let Some(Frame {
                        expect_key: Some(e),
                        ..
                    }) = frames.last_mut()
                {
                    *e = false;
                }
                i += 1;
            }
            b',' => {
                if overflow == 0
                    && let Some(
                        f @ Frame {
                            expect_key: Some(_),
                            ..
                        },
                    ) = frames.last_mut()
                {
                    f.expect_key = Some(true);
                    if f.has_key {
                        f.has_key = false;
                        path.segs.pop();
                    }
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                // Jump to the next quote or backslash: string contents are most of a document.
                while let Some(off) = memchr::memchr2(b'"', b'\\', &doc[j.min(n)..]) {
                    j += off;
                    if doc[j] == b'"' {
                        break;
                    }
                    j += 2;
                }
                if j >= n || doc[j] != b'"' {
                    j = n;
                }
                let end = j.min(n);
                let key_frame = if overflow == 0 {
                    frames.last_mut().filter(|f| f.expect_key == Some(true))
                } else {
                    None
                };
                if let Some(f) = key_frame {
                    if f.has_key {
                        path.segs.pop();
                    }
                    f.has_key = true;
                    path.segs.push(Seg::Key(&doc[start..end]));
                } else {
                    with_element(path, frames, overflow, |p| {
                        visit(
                            p,
                            &Scalar {
                                span: start..end,
                                string: true,
                            },
                        )
                    });
                }
                i = end + 1;
            }
            _ => {
                let start = i;
                while i < n
                    && !matches!(
                        doc[i],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' | b':'
                    )
                {
                    i += 1;
                }
                if i == start {
                    i += 1;
                    continue;
                }
                with_element(path, frames, overflow, |p| {
                    visit(
                        p,
                        &Scalar {
                            span: start..i,
                            string: false,
                        },
                    )
                });
            }
        }
    }
}

/// Visits a value: an array element gets an `[*]` step for the time of the visit.
fn with_element<'a>(
    path: &mut Path<'a>,
    frames: &[Frame],
    overflow: usize,
    f: impl FnOnce(&Path<'a>),
) {
    let in_array = overflow == 0
        && matches!(
            frames.last(),
            Some(Frame {
                expect_key: None,
                ..
            })
        );
    if in_array {
        path.segs.push(Seg::Index);
    }
    f(path);
    if in_array {
        path.segs.pop();
    }
}

/// The text of a JSON string value (escapes decoded), or the raw bytes of other scalars.
#[must_use]
pub fn scalar_text<'a>(doc: &'a [u8], s: &Scalar) -> std::borrow::Cow<'a, str> {
    let raw = &doc[s.span.clone()];
    if s.string && raw.contains(&b'\\') {
        let mut quoted = Vec::with_capacity(raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw);
        quoted.push(b'"');
        if let Ok(text) = serde_json::from_slice::<String>(&quoted) {
            return std::borrow::Cow::Owned(text);
        }
    }
    String::from_utf8_lossy(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(doc: &str) -> Vec<(String, String, Option<String>)> {
        let mut out = Vec::new();
        walk(doc.as_bytes(), |p, s| {
            out.push((
                p.render(),
                scalar_text(doc.as_bytes(), s).into_owned(),
                p.parent_key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
            ));
        });
        out
    }

    #[test]
    fn paths_keys_and_parents() {
        let got = paths(
            r#"{"customer":{"email":"a@b.co","name":"Lu","tags":["x",1]},"items":[{"sku":7},{"sku":8}],"n":null}"#,
        );
        assert_eq!(
            got,
            vec![
                (
                    "$.customer.email".into(),
                    "a@b.co".into(),
                    Some("customer".into())
                ),
                (
                    "$.customer.name".into(),
                    "Lu".into(),
                    Some("customer".into())
                ),
                (
                    "$.customer.tags[*]".into(),
                    "x".into(),
                    Some("customer".into())
                ),
                (
                    "$.customer.tags[*]".into(),
                    "1".into(),
                    Some("customer".into())
                ),
                ("$.items[*].sku".into(), "7".into(), Some("items".into())),
                ("$.items[*].sku".into(), "8".into(), Some("items".into())),
                ("$.n".into(), "null".into(), None),
            ]
        );
    }

    #[test]
    fn escapes_truncation_and_odd_keys() {
        let got = paths(r#"{"a b":"x\"y\u0040z","c":[[1,2],{"d":"trunc"#);
        assert_eq!(got[0], ("$[\"a b\"]".into(), "x\"y@z".into(), None));
        assert_eq!(got[1].0, "$.c[*][*]");
        assert_eq!(got.last().map(|g| g.0.clone()), Some("$.c[*].d".into()));
        assert_eq!(got.last().map(|g| g.1.clone()), Some("trunc".into()));
    }

    #[test]
    fn empty_containers_keep_paths_right() {
        let got = paths(r#"{"a":{"b":{},"c":1,"d":[],"e":[{}],"f":2},"g":3}"#);
        let p: Vec<_> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(p, vec!["$.a.c", "$.a.f", "$.g"]);
    }

    #[test]
    fn deep_nesting_stays_bounded() {
        let doc = "[".repeat(100_000) + "1" + &"]".repeat(100_000);
        let mut count = 0;
        walk(doc.as_bytes(), |p, _| {
            assert!(p.render().len() < 1000);
            count += 1;
        });
        assert_eq!(count, 1);
        // Garbage never panics.
        walk(b"}}]],,::\"\\", |_, _| {});
    }
}
