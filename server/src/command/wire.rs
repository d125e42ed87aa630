//! What commands look like on the wire, in both directions, and the checks
//! on what operators ask for. Pure, so every rule is a table of tests.

use app::model::{
    Command, CommandRequest, CommandState, DEFAULT_COMMAND_TIMEOUT_MS, DEFAULT_COMMAND_TTL_MS,
};
use serde_json::{json, Value};

use crate::acl::AnswerTopic;
use crate::names::valid_name;

/// The shortest and longest timeout a command may ask for. Under 100 ms a
/// healthy device on a mobile network would miss it; a day is as long as a
/// person would wait on a page.
const TIMEOUT_RANGE_MS: (i64, i64) = (100, 24 * 60 * 60 * 1000);

/// The shortest and longest a persistent command may wait for its device.
const TTL_RANGE_MS: (i64, i64) = (1000, 30 * 24 * 60 * 60 * 1000);

/// Why an operator's command was refused before it was stored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(String),
    #[error("the command is {size} bytes as sent to the device; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// Checks a request and turns it into a new, queued command for `device`.
pub fn accept(
    device: &str,
    req: CommandRequest,
    id: String,
    now: i64,
    max_bytes: usize,
) -> Result<Command, Refusal> {
    if !valid_name(&req.name) {
        return Err(Refusal::Invalid(format!(
            "command name {:?} is not valid: use 1 to 64 letters, digits, '_', '-', '.' or ':'",
            req.name.chars().take(80).collect::<String>()
        )));
    }
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS);
    check_range("timeout_ms", timeout_ms, TIMEOUT_RANGE_MS)?;
    let ttl_ms = req.ttl_ms.unwrap_or(DEFAULT_COMMAND_TTL_MS);
    check_range("ttl_ms", ttl_ms, TTL_RANGE_MS)?;
    let command = Command {
        id,
        device: device.to_owned(),
        name: req.name,
        params: req.params,
        two_way: req.two_way,
        persistent: req.persistent,
        timeout_ms,
        ttl_ms,
        state: CommandState::Queued,
        created_at: now,
        sent_at: None,
        delivered_at: None,
        completed_at: None,
        response: None,
        error: None,
    };
    let size = request(&command).len();
    if size > max_bytes {
        return Err(Refusal::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    Ok(command)
}

fn check_range(what: &str, value: i64, (low, high): (i64, i64)) -> Result<(), Refusal> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "{what} must be between {low} and {high}, not {value}"
        )))
    }
}

/// The payload on `command/<device>`: the seed's `{"id","name","params"}`.
pub fn request(c: &Command) -> Vec<u8> {
    json!({ "id": c.id, "name": c.name, "params": c.params })
        .to_string()
        .into_bytes()
}

/// The payload on ThingsBoard's `v1/devices/me/rpc/request/<id>`, in
/// ThingsBoard's own shape, so its client libraries work unchanged.
pub fn thingsboard_request(c: &Command) -> Vec<u8> {
    json!({ "method": c.name, "params": c.params })
        .to_string()
        .into_bytes()
}

/// A device's answer to a command.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub id: String,
    /// The result, or the device's error message.
    pub outcome: Result<Value, String>,
}

/// Reads an answer. On `command/<device>/response` the payload is
/// `{"id":..,"result":..}` or `{"id":..,"error":..}`; with MQTT 5
/// correlation data, the id may be left out. Anything else in the object
/// (without `result` or `error`) is taken as the result itself. ThingsBoard
/// answers are the result as they are, and text that is not JSON is kept as
/// a string, as ThingsBoard does.
pub fn answer(
    topic: &AnswerTopic,
    correlation: Option<&[u8]>,
    payload: &[u8],
) -> Result<Answer, String> {
    let correlated = match correlation {
        Some(bytes) => Some(
            std::str::from_utf8(bytes)
                .map_err(|_| "correlation data is not a command id".to_owned())?
                .to_owned(),
        ),
        None => None,
    };
    match topic {
        AnswerTopic::ThingsBoard(id) => {
            let text = std::str::from_utf8(payload)
                .map_err(|_| "the answer is not UTF-8 text".to_owned())?;
            let result =
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
            Ok(Answer {
                id: correlated.unwrap_or_else(|| id.clone()),
                outcome: Ok(result),
            })
        }
        AnswerTopic::Native => {
            let value: Value = serde_json::from_slice(payload)
                .map_err(|e| format!("the answer is not valid JSON: {e}"))?;
            let mut fields = match value {
                Value::Object(fields) => fields,
                other => {
                    // A bare value can only be matched by correlation data.
                    let id = correlated.ok_or("the answer has no \"id\"")?;
                    return Ok(Answer {
                        id,
                        outcome: Ok(other),
                    });
                }
            };
            let id = match (correlated, fields.remove("id")) {
                (Some(id), _) => id,
                (None, Some(Value::String(id))) => id,
                (None, Some(Value::Number(n))) => n.to_string(),
                (None, _) => return Err("the answer has no \"id\"".to_owned()),
            };
            let outcome = if let Some(error) = fields.remove("error") {
                Err(match error {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            } else if let Some(result) = fields.remove("result") {
                Ok(result)
            } else {
                Ok(Value::Object(fields))
            };
            Ok(Answer { id, outcome })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> CommandRequest {
        CommandRequest {
            name: name.into(),
            params: json!({"ms": 500}),
            two_way: true,
            persistent: false,
            timeout_ms: None,
            ttl_ms: None,
        }
    }

    #[test]
    fn a_request_gets_the_default_timeout_and_ttl() {
        let c = accept("D1", req("set_interval"), "c1".into(), 7, 1024).expect("valid");
        assert_eq!(c.timeout_ms, 30_000);
        assert_eq!(c.ttl_ms, 86_400_000);
        assert_eq!(c.state, CommandState::Queued);
        assert_eq!(c.created_at, 7);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        for name in ["", "a b", "x/y", "#", "é", &"n".repeat(65)] {
            let err = accept("D1", req(name), "c".into(), 0, 1024).expect_err("refused");
            assert!(err.to_string().contains("not valid"), "{name:?}: {err}");
        }
        let mut slow = req("ping");
        slow.timeout_ms = Some(0);
        assert!(accept("D1", slow, "c".into(), 0, 1024)
            .expect_err("refused")
            .to_string()
            .contains("timeout_ms"));
        let mut big = req("ping");
        big.params = json!({ "blob": "x".repeat(2000) });
        assert!(matches!(
            accept("D1", big, "c".into(), 0, 1024),
            Err(Refusal::TooLarge { limit: 1024, .. })
        ));
    }

    #[test]
    fn requests_use_the_seed_shape_and_thingsboard_shape() {
        let c = accept("D1", req("set_interval"), "c1".into(), 0, 1024).expect("valid");
        let native: Value = serde_json::from_slice(&request(&c)).expect("valid");
        assert_eq!(
            native,
            json!({"id": "c1", "name": "set_interval", "params": {"ms": 500}})
        );
        let tb: Value = serde_json::from_slice(&thingsboard_request(&c)).expect("valid");
        assert_eq!(tb, json!({"method": "set_interval", "params": {"ms": 500}}));
    }

    #[test]
    fn answers_are_read_in_every_accepted_shape() {
        let native = AnswerTopic::Native;
        let a = answer(&native, None, br#"{"id":"c1","result":{"pong":1}}"#).expect("valid");
        assert_eq!(
            a,
            Answer {
                id: "c1".into(),
                outcome: Ok(json!({"pong": 1}))
            }
        );
        let a = answer(&native, None, br#"{"id":"c1","error":"busy"}"#).expect("valid");
        assert_eq!(a.outcome, Err("busy".into()));
        let a = answer(&native, None, br#"{"id":"c1","ms":500}"#).expect("valid");
        assert_eq!(a.outcome, Ok(json!({"ms": 500})));
        // MQTT 5: the id is in the correlation data.
        let a = answer(&native, Some(b"c2"), b"42").expect("valid");
        assert_eq!(
            a,
            Answer {
                id: "c2".into(),
                outcome: Ok(json!(42))
            }
        );
        let tb = AnswerTopic::ThingsBoard("c3".into());
        let a = answer(&tb, None, b"ok").expect("valid");
        assert_eq!(
            a,
            Answer {
                id: "c3".into(),
                outcome: Ok(json!("ok"))
            }
        );
    }

    #[test]
    fn unreadable_answers_say_why() {
        let native = AnswerTopic::Native;
        for (payload, why) in [
            (&b"{nope"[..], "not valid JSON"),
            (&b"{\"result\":1}"[..], "no \"id\""),
            (&b"17"[..], "no \"id\""),
        ] {
            let err = answer(&native, None, payload).expect_err("refused");
            assert!(err.contains(why), "{err}");
        }
        let tb = AnswerTopic::ThingsBoard("c".into());
        assert!(answer(&tb, None, &[0xff, 0xfe])
            .expect_err("refused")
            .contains("UTF-8"));
        assert!(answer(&native, Some(&[0xff]), b"1")
            .expect_err("refused")
            .contains("correlation"));
    }
}
