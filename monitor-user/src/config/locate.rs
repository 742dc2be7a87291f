//! Finds the line a configuration key is on, so that semantic errors point at it like syntax
//! errors do.

use toml::de::{DeTable, DeValue};

/// The 1-based line of `key` (dotted, with `[i]` for array elements: `alerts.sinks[1].url`) in
/// `text`, or of the closest enclosing table that exists.
#[must_use]
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.get_key_value(name) else {
            break;
        };
        found = Some(k.span().start);
        let mut value = v;
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref()) {
            let Some(item) = items.get(i) else { break };
            found = Some(item.span().start);
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| text[..offset.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn finds_nested_keys_and_array_elements() {
        let text = "[capture]\nbody_limit = 1\n\n[[alerts.sinks]]\nname = \"a\"\n\n[[alerts.sinks]]\nname = \"b\"\nurl = \"x\"\n";
        assert_eq!(line_of(text, "capture.body_limit"), Some(2));
        assert_eq!(line_of(text, "alerts.sinks[1].url"), Some(9));
        assert_eq!(line_of(text, "alerts.sinks[0].url"), Some(4));
        assert_eq!(line_of(text, "nothing.here"), None);
    }
}
