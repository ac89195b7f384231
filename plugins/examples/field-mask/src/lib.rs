//! Masks fields of JSON record values and filters records, at any stage
//! (produce: before the data is stored; tee: before it leaves for another
//! site; fetch: per route, what consumers see).
//!
//! Config (JSON):
//!
//! ```json
//! {"mask": ["card.number", "ssn"], "replacement": "***",
//!  "drop": [{"field": "type", "equals": "test"}]}
//! ```
//!
//! * `mask`: dotted paths into JSON objects; a present field's value becomes
//!   `replacement` (default `"***"`), whatever its type;
//! * `drop`: records whose value has `field` equal to `equals` (any JSON
//!   value) are dropped; any one condition is enough.
//!
//! Values that are not JSON objects (or null values) pass unchanged.

use serde::Deserialize;
use serde_json::Value;
use switchyard_plugin_sdk::{
    export_plugin, plugin_info, Batch, Decision, Plugin, PluginInfo, Site,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mask: Vec<String>,
    replacement: Option<Value>,
    #[serde(default)]
    drop: Vec<Condition>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct Condition {
    field: String,
    equals: Value,
}

#[derive(Default)]
pub struct FieldMask {
    mask: Vec<Vec<String>>,
    replacement: Value,
    drop: Vec<(Vec<String>, Value)>,
}

fn path(p: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = p.split('.').map(str::to_string).collect();
    if parts.iter().any(|s| s.is_empty()) {
        return Err(format!("field-mask: {p:?} is not a dotted field path"));
    }
    Ok(parts)
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set(v: &mut Value, path: &[String], to: &Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let Some(obj) = parents
        .iter()
        .try_fold(v, |v, k| v.get_mut(k))
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    match obj.get_mut(last) {
        Some(slot) => {
            *slot = to.clone();
            true
        }
        None => false,
    }
}

impl FieldMask {
    /// What to do with one value.
    pub fn decide(&self, value: Option<&[u8]>) -> Decision {
        let Some(mut doc) = value.and_then(|v| serde_json::from_slice::<Value>(v).ok()) else {
            return Decision::Keep;
        };
        if !doc.is_object() {
            return Decision::Keep;
        }
        if self.drop.iter().any(|(p, eq)| get(&doc, p) == Some(eq)) {
            return Decision::Drop;
        }
        let mut changed = false;
        for p in &self.mask {
            changed |= set(&mut doc, p, &self.replacement);
        }
        match changed {
            true => Decision::ReplaceValue(Some(doc.to_string().into_bytes())),
            false => Decision::Keep,
        }
    }
}

impl Plugin for FieldMask {
    fn init(&mut self, config: &str, _sites: &[Site]) -> Result<PluginInfo, String> {
        let c: Config =
            serde_json::from_str(config).map_err(|e| format!("field-mask config: {e}"))?;
        if c.mask.is_empty() && c.drop.is_empty() {
            return Err("field-mask: give \"mask\" and/or \"drop\"".into());
        }
        self.mask = c.mask.iter().map(|p| path(p)).collect::<Result<_, _>>()?;
        self.replacement = c.replacement.unwrap_or_else(|| Value::String("***".into()));
        self.drop = c
            .drop
            .iter()
            .map(|d| Ok((path(&d.field)?, d.equals.clone())))
            .collect::<Result<_, String>>()?;
        Ok(plugin_info(
            "field-mask",
            env!("CARGO_PKG_VERSION"),
            &["batch"],
        ))
    }

    fn on_batch(&self, batch: &Batch) -> Result<Vec<Decision>, String> {
        let decisions: Vec<Decision> = batch.records()?.map(|r| self.decide(r.value)).collect();
        // All kept: the cheap answer, and the host keeps the batch's bytes.
        if decisions.iter().all(|d| matches!(d, Decision::Keep)) {
            return Ok(Vec::new());
        }
        Ok(decisions)
    }
}

export_plugin!(FieldMask);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> FieldMask {
        let mut p = FieldMask::default();
        p.init(
            r#"{"mask":["card.number","ssn"],"drop":[{"field":"type","equals":"test"}]}"#,
            &[],
        )
        .unwrap();
        p
    }

    #[test]
    fn masks_nested_fields_and_drops_matches() {
        let p = plugin();
        let d = p.decide(Some(
            br#"{"id":1,"card":{"number":"4111","exp":"12/30"},"ssn":7}"#,
        ));
        let Decision::ReplaceValue(Some(v)) = d else {
            panic!("{d:?}")
        };
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["card"]["number"], "***");
        assert_eq!(v["card"]["exp"], "12/30");
        assert_eq!(v["ssn"], "***");
        assert_eq!(
            p.decide(Some(br#"{"type":"test","ssn":1}"#)),
            Decision::Drop
        );
        assert_eq!(p.decide(Some(br#"{"id":2}"#)), Decision::Keep);
        assert_eq!(p.decide(Some(b"not json")), Decision::Keep);
        assert_eq!(p.decide(Some(b"[1,2]")), Decision::Keep);
        assert_eq!(p.decide(None), Decision::Keep);
    }

    #[test]
    fn bad_configs() {
        for c in ["", "{}", r#"{"mask":["a..b"]}"#, r#"{"mask":["a"],"x":1}"#] {
            assert!(FieldMask::default().init(c, &[]).is_err(), "{c}");
        }
    }
}
