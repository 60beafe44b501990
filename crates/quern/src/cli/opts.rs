//! QEMU's `key=value,key=value` option strings (QemuOpts), and the JSON form that
//! `-device`, `-blockdev` and friends also accept.
//!
//! Rules, as QEMU applies them: a comma inside a value is written `,,`; the first item
//! may omit its key where the option has an implied one (`-machine pc` means
//! `type=pc`); a bare `key` elsewhere means `key=on`; a repeated key's last value wins.

/// The parsed items, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opts {
    items: Vec<(String, String)>,
}

impl Opts {
    /// Parses `s`; `implied` names the key of a leading bare value.
    pub fn parse(s: &str, implied: Option<&str>) -> Result<Opts, String> {
        if s.trim_start().starts_with('{') {
            return Self::parse_json(s);
        }
        let mut items = Vec::new();
        for (i, part) in split_escaped(s).into_iter().enumerate() {
            if part.is_empty() {
                if i == 0 && implied.is_some() {
                    return Err("empty value".into());
                }
                continue;
            }
            match part.split_once('=') {
                Some(("", _)) => return Err(format!("'{part}': missing the name before '='")),
                Some((k, v)) => items.push((k.to_string(), v.to_string())),
                None => match implied {
                    Some(key) if i == 0 => items.push((key.to_string(), part)),
                    _ => items.push((part, "on".to_string())),
                },
            }
        }
        Ok(Opts { items })
    }

    /// A JSON object (`{"driver":"e1000","id":"net0"}`); nested objects become dotted
    /// keys (`file.filename`), as QEMU's keyval flattening does.
    fn parse_json(s: &str) -> Result<Opts, String> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
        let serde_json::Value::Object(map) = v else { return Err("JSON must be an object".into()) };
        let mut items = Vec::new();
        flatten("", &map, &mut items)?;
        Ok(Opts { items })
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value given for `key`, in order (`hostfwd=` repeats).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.items.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Keys in order of appearance (with repeats).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(k, _)| k.as_str())
    }

    /// The first key not in `allowed`, for "unknown property" errors.
    pub fn unknown_key(&self, allowed: &[&str]) -> Option<&str> {
        self.keys().find(|k| !allowed.contains(k))
    }

    /// An `on|off` (also yes/no, true/false) switch.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.get(key).map(|v| parse_bool(v).ok_or_else(|| format!("{key}={v}: expected 'on' or 'off'"))).transpose()
    }

    /// The same items without `keys`.
    pub fn without(&self, keys: &[&str]) -> Opts {
        Opts { items: self.items.iter().filter(|(k, _)| !keys.contains(&k.as_str())).cloned().collect() }
    }

    /// Merges `later` over `self` (QEMU merges repeated `-machine` options).
    pub fn merge(&mut self, later: Opts) {
        self.items.extend(later.items);
    }
}

/// QEMU's boolean spellings.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// Splits at single commas; `,,` stands for a literal comma.
fn split_escaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                parts.last_mut().unwrap().push(',');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

fn flatten(
    prefix: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for (k, v) in map {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            serde_json::Value::Object(m) => flatten(&key, m, out)?,
            serde_json::Value::String(s) => out.push((key, s.clone())),
            serde_json::Value::Bool(b) => out.push((key, if *b { "on" } else { "off" }.into())),
            serde_json::Value::Number(n) => out.push((key, n.to_string())),
            serde_json::Value::Null | serde_json::Value::Array(_) => {
                return Err(format!("'{key}': lists and null are not accepted here"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(o: &Opts) -> Vec<(&str, &str)> {
        o.items.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn implied_key_and_pairs() {
        let o = Opts::parse("pc,accel=tcg,usb=off", Some("type")).unwrap();
        assert_eq!(items(&o), [("type", "pc"), ("accel", "tcg"), ("usb", "off")]);
        let o = Opts::parse("type=pc", Some("type")).unwrap();
        assert_eq!(o.get("type"), Some("pc"));
    }

    #[test]
    fn double_comma_is_a_literal_comma() {
        let o = Opts::parse("file:a,,b,id=x", Some("path")).unwrap();
        assert_eq!(items(&o), [("path", "file:a,b"), ("id", "x")]);
    }

    #[test]
    fn bare_key_means_on_and_last_wins() {
        let o = Opts::parse("timestamp,x=1,x=2", None).unwrap();
        assert_eq!(o.get("timestamp"), Some("on"));
        assert_eq!(o.get("x"), Some("2"));
        assert_eq!(o.get_bool("timestamp"), Ok(Some(true)));
        assert!(o.get_bool("x").is_err());
    }

    #[test]
    fn json_objects_flatten() {
        let o = Opts::parse(r#"{"driver":"file","filename":"/a","node-name":"n","cache":{"direct":true},"n":5}"#, None)
            .unwrap();
        assert_eq!(o.get("driver"), Some("file"));
        assert_eq!(o.get("cache.direct"), Some("on"));
        assert_eq!(o.get("n"), Some("5"));
        assert!(Opts::parse("{not json", None).is_err());
        assert!(Opts::parse("[1]", None).unwrap().get("[1]").is_some(), "not JSON: a bare key");
        assert!(Opts::parse(r#"{"a":[1]}"#, None).is_err());
    }

    #[test]
    fn bad_items() {
        assert!(Opts::parse("=x", None).is_err());
        assert!(Opts::parse("", Some("size")).is_err());
        assert_eq!(Opts::parse("a,,", None).unwrap().get("a,"), Some("on"));
    }
}
