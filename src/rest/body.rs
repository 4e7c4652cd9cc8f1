//! Request bodies: the content type, the JSON document, and typed fields taken from it. A
//! field of the wrong JSON type is `MALFORMED_REQUEST` naming it; an absent one is empty and
//! left to the operation's own checks (a missing `cidr` is `INVALID_CIDR`, as an empty one);
//! unknown fields are ignored.

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::domain::error::FieldViolation;
use crate::domain::{Error, Reason};

/// The fields of a JSON object body, as the caller sent it.
pub struct JsonBody {
    object: Map<String, Value>,
    /// Fields of the wrong type, collected so that every one is named at once.
    violations: Vec<FieldViolation>,
}

/// Checks the content type (JSON, parameters such as `charset` allowed) and parses `bytes`
/// as a JSON object.
pub fn parse(headers: &HeaderMap, bytes: &[u8]) -> Result<JsonBody, Error> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(Error::new(
            Reason::UnsupportedContentType,
            format!("the body must be application/json, not {content_type:?}"),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => Ok(JsonBody {
            object,
            violations: Vec::new(),
        }),
        Ok(_) => Err(Error::field(
            Reason::MalformedJson,
            "",
            "the body must be a JSON object",
        )),
        Err(error) => Err(Error::field(
            Reason::MalformedJson,
            "",
            format!("the body is not valid JSON: {error}"),
        )),
    }
}

impl JsonBody {
    /// A string field; absent or `null` is `None`.
    pub fn string(&mut self, field: &str) -> Option<String> {
        match self.object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                self.wrong_type(field, "a string");
                None
            }
        }
    }

    /// An unsigned 32-bit integer field; absent or `null` is `None`.
    pub fn u32(&mut self, field: &str) -> Option<u32> {
        match self.object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => match number.as_u64().and_then(|value| u32::try_from(value).ok()) {
                Some(value) => Some(value),
                None => {
                    self.wrong_type(field, "an integer from 0 to 4294967295");
                    None
                }
            },
            Some(_) => {
                self.wrong_type(field, "an integer from 0 to 4294967295");
                None
            }
        }
    }

    fn wrong_type(&mut self, field: &str, expected: &str) {
        self.violations.push(FieldViolation {
            field: field.to_string(),
            description: format!("{field} must be {expected}"),
        });
    }

    /// `Err` naming every field of the wrong type, if any.
    pub fn finish(self) -> Result<(), Error> {
        let mut violations = self.violations.into_iter();
        let Some(first) = violations.next() else {
            return Ok(());
        };
        let mut error = Error::field(Reason::MalformedRequest, first.field, first.description);
        error.violations.extend(violations);
        Err(error)
    }
}
