//! Reading a manifest object field by field: every key read is marked, and
//! [`Fields::finish`] turns every other key into an error naming its path, unless
//! [`super::podspec::IGNORED`] lists it. This is what makes "a field the runner cannot honour
//! is an error" hold for fields nobody thought of.

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};

/// The fields of one JSON object being interpreted: every key read is marked, and
/// [`Fields::finish`] turns the rest into errors (unless [`IGNORED`]).
pub(super) struct Fields<'a> {
    /// The field path with real indices (for messages).
    pub path: String,
    /// The same with `[*]` (for [`IGNORED`]).
    pattern: String,
    pub map: &'a Map<String, Value>,
    read: Vec<String>,
}

pub(super) fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

pub(super) fn unsupported(path: &str) -> anyhow::Error {
    anyhow!("{path}: not supported by the netns cluster")
}

impl<'a> Fields<'a> {
    pub fn new(value: &'a Value, path: &str, pattern: &str) -> Result<Fields<'a>> {
        let map = value
            .as_object()
            .ok_or_else(|| anyhow!("{path}: expected an object, found {value}"))?;
        Ok(Fields {
            path: path.to_string(),
            pattern: pattern.to_string(),
            map,
            read: Vec::new(),
        })
    }

    /// The field's value (a JSON null counts as absent) and marks it read.
    pub fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.read.push(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The field converted by `convert`, or an error saying it is not `expected`.
    fn typed<T>(
        &mut self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| anyhow!("{}: expected {expected}, found {v}", self.at(key))),
        }
    }

    pub fn str(&mut self, key: &str) -> Result<Option<&'a str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A string that must be there.
    pub fn required_str(&mut self, key: &str) -> Result<&'a str> {
        self.str(key)?
            .ok_or_else(|| anyhow!("{}: missing", self.at(key)))
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "true or false", Value::as_bool)
    }

    pub fn int(&mut self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", Value::as_i64)
    }

    pub fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let at = self.at(key);
                let list = v
                    .as_array()
                    .ok_or_else(|| anyhow!("{at}: expected a list, found {v}"))?;
                list.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| anyhow!("{at}[{i}]: expected a string, found {s}"))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }

    /// A nested object's fields.
    pub fn object(&mut self, key: &str) -> Result<Option<Fields<'a>>> {
        let (path, pattern) = (self.at(key), join(&self.pattern, key));
        self.get(key)
            .map(|v| Fields::new(v, &path, &pattern))
            .transpose()
    }

    /// A nested object that must be there.
    pub fn required_object(&mut self, key: &str) -> Result<Fields<'a>> {
        let at = self.at(key);
        self.object(key)?.ok_or_else(|| anyhow!("{at}: missing"))
    }

    /// A list of objects' fields.
    pub fn objects(&mut self, key: &str) -> Result<Vec<Fields<'a>>> {
        let (path, pattern) = (self.at(key), join(&self.pattern, key));
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        let list = v
            .as_array()
            .ok_or_else(|| anyhow!("{path}: expected a list, found {v}"))?;
        list.iter()
            .enumerate()
            .map(|(i, item)| Fields::new(item, &format!("{path}[{i}]"), &format!("{pattern}[*]")))
            .collect()
    }

    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Every key not read is an error, unless [`IGNORED`] lists it.
    pub fn finish(self) -> Result<()> {
        for key in self.map.keys() {
            if self.read.iter().any(|r| r == key) {
                continue;
            }
            let pattern = join(&self.pattern, key);
            if super::podspec::IGNORED.iter().any(|(p, _)| *p == pattern) {
                continue;
            }
            return Err(unsupported(&self.at(key)));
        }
        Ok(())
    }
}
