//! The parts of the Kubernetes objects the agent reads or writes, under the API's field names: a
//! pod's containers, their statuses and pull secrets; a secret's type and data; a service
//! account's pull secrets; the Event it posts. Everything else in an answer is skipped unread (a
//! full Pod type's decoder was ~300 KiB of code for the fifteen fields used). A field that is
//! absent or `null` takes its default, as the API's own optional fields do.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

/// `null` or absent as the type's default (the API writes `null` for an empty list at times).
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpec>,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Option<Vec<Container>>,
    #[serde(default)]
    pub ephemeral_containers: Option<Vec<Container>>,
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`, still set by old clients.
    #[serde(default)]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LocalObjectReference {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub image: String,
    #[serde(default)]
    pub state: Option<ContainerState>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerState {
    #[serde(default)]
    pub waiting: Option<ContainerStateWaiting>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStateWaiting {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A Secret's type and data; its `Debug` shows the keys, never the values.
#[derive(Clone, Default, Deserialize)]
pub struct Secret {
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(default)]
    pub data: Option<BTreeMap<String, ByteString>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.data.iter().flat_map(|d| d.keys()).collect();
        f.debug_struct("Secret")
            .field("type", &self.type_)
            .field("data keys", &keys)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

/// A Secret's value: base64 in the JSON, bytes here.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ByteString(pub Vec<u8>);

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text: String = nullable(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(ByteString)
            // Says what is wrong, never what is there: this is a secret's value.
            .map_err(|_| serde::de::Error::custom("a data value is not base64"))
    }
}

/// The object an Event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub field_path: String,
}

/// An events.k8s.io/v1 Event, as the agent posts it (no series: every one is new).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    /// RFC 3339 with microseconds (the API's MicroTime).
    pub event_time: String,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
    pub regarding: ObjectReference,
    pub reporting_controller: &'static str,
    pub reporting_instance: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_null_fields_take_their_defaults() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"p","labels":{"a":"b"}},
                "spec":{"containers":null,"nodeName":"n","volumes":[{"name":"v"}]},
                "status":{"phase":"Pending","containerStatuses":[{"name":null,"state":{"waiting":{}}}]}}"#,
        )
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert!(pod.spec.unwrap().containers.is_empty());
        let statuses = pod.status.unwrap().container_statuses.unwrap();
        assert_eq!(statuses[0].name, "");
        assert!(statuses[0].state.as_ref().unwrap().waiting.is_some());
        let pod: Pod = serde_json::from_str(r#"{"metadata":null}"#).unwrap();
        assert_eq!(pod.metadata, ObjectMeta::default());
    }

    #[test]
    fn secret_values_decode_and_never_show() {
        let secret: Secret = serde_json::from_str(
            r#"{"type":"kubernetes.io/dockerconfigjson","data":{".dockerconfigjson":"aHVudGVyMg=="}}"#,
        )
        .unwrap();
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[".dockerconfigjson"].0, b"hunter2");
        let shown = format!("{secret:?}");
        assert!(
            shown.contains(".dockerconfigjson") && !shown.contains("hunter2"),
            "{shown}"
        );
        let error = serde_json::from_str::<Secret>(r#"{"data":{"k":"hunter2!"}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("a data value is not base64"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn the_event_has_the_apis_field_names() {
        let event = Event {
            api_version: "events.k8s.io/v1",
            kind: "Event",
            metadata: ObjectMeta {
                name: Some("p.1f".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            event_time: "2026-12-03T10:00:00.000001Z".into(),
            type_: "Warning",
            reason: "PullDiagnosis",
            action: "DiagnosePull",
            note: "n".into(),
            regarding: ObjectReference {
                field_path: "spec.containers{app}".into(),
                ..ObjectReference::default()
            },
            reporting_controller: "pullwatch",
            reporting_instance: "node-1".into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["apiVersion"], "events.k8s.io/v1");
        assert_eq!(
            json["metadata"],
            serde_json::json!({"name": "p.1f", "namespace": "shop"})
        );
        assert_eq!(json["eventTime"], "2026-12-03T10:00:00.000001Z");
        assert_eq!(json["type"], "Warning");
        assert_eq!(json["regarding"]["fieldPath"], "spec.containers{app}");
        assert_eq!(json["reportingController"], "pullwatch");
        assert_eq!(json["reportingInstance"], "node-1");
    }
}
