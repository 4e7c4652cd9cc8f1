//! The JSON objects of the v4 API and its envelope: `{"success", "errors", "messages",
//! "result"}`. Times are RFC 3339 UTC with microseconds and `Z`.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::{Binding, Micros, Prefix, ProvisioningState, Service};

pub fn time(time: Micros) -> String {
    let since_epoch = std::time::Duration::from_micros(time.0.max(0) as u64);
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + since_epoch).to_string()
}

pub fn prefix(prefix: &Prefix) -> Value {
    json!({
        "id": prefix.id.to_string(),
        "account_id": prefix.account_id.to_string(),
        "cidr": prefix.cidr.to_string(),
        "asn": prefix.asn,
        "description": prefix.description,
        "created_at": time(prefix.created_at),
        "modified_at": time(prefix.modified_at),
    })
}

pub fn binding(binding: &Binding) -> Value {
    let state = match binding.state {
        ProvisioningState::Provisioning => "provisioning",
        ProvisioningState::Active => "active",
    };
    json!({
        "id": binding.id.to_string(),
        "cidr": binding.cidr.to_string(),
        "provisioning": {"state": state},
        "service_id": binding.service.id().to_string(),
        "service_name": binding.service.name(),
    })
}

pub fn service(service: Service) -> Value {
    json!({"id": service.id().to_string(), "name": service.name()})
}

/// A JSON document as a response body.
pub struct JsonDocument(Value);

impl IntoResponse for JsonDocument {
    fn into_response(self) -> Response {
        let content_type = [(http::header::CONTENT_TYPE, "application/json")];
        (content_type, self.0.to_string()).into_response()
    }
}

/// A success: exactly the four envelope fields.
pub fn success(result: Value) -> JsonDocument {
    JsonDocument(json!({"success": true, "errors": [], "messages": [], "result": result}))
}

/// A failure: one entry per (code, message, pointer).
pub fn failure(errors: &[(u32, String, Option<String>)]) -> JsonDocument {
    let errors: Vec<Value> = (errors.iter())
        .map(|(code, message, pointer)| match pointer {
            Some(pointer) => json!({"code": code, "message": message, "source": {"pointer": pointer}}),
            None => json!({"code": code, "message": message}),
        })
        .collect();
    JsonDocument(json!({"success": false, "errors": errors, "messages": [], "result": null}))
}
