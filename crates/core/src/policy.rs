//! Effective policy: a profile's limits merged with a subject's overrides.
//!
//! Pure Rust over `serde_json::Value`: the SQL layer hands over `to_jsonb(profile row)` and the
//! subject's `overrides`, and gets back a [`Policy`] or a [`PolicyError`] that names the bad key.

use serde_json::{Map, Value};

/// Every numeric limit a profile has. `NULL` (None) means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Limit {
    RequestsPerSecond,
    RequestsPerMinute,
    RequestsPerHour,
    RequestsPerDay,
    RequestsPerMonth,
    TokensPerMinute,
    InputTokensPerDay,
    OutputTokensPerDay,
    InputTokensPerMonth,
    OutputTokensPerMonth,
    MaxConcurrent,
    DailyBudgetCents,
    MonthlyBudgetCents,
}

pub const LIMIT_COUNT: usize = 13;

impl Limit {
    pub const ALL: [Limit; LIMIT_COUNT] = [
        Limit::RequestsPerSecond,
        Limit::RequestsPerMinute,
        Limit::RequestsPerHour,
        Limit::RequestsPerDay,
        Limit::RequestsPerMonth,
        Limit::TokensPerMinute,
        Limit::InputTokensPerDay,
        Limit::OutputTokensPerDay,
        Limit::InputTokensPerMonth,
        Limit::OutputTokensPerMonth,
        Limit::MaxConcurrent,
        Limit::DailyBudgetCents,
        Limit::MonthlyBudgetCents,
    ];

    /// The column name in `control_plane.profiles` and the key in `overrides`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::RequestsPerSecond => "requests_per_second",
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::RequestsPerHour => "requests_per_hour",
            Limit::RequestsPerDay => "requests_per_day",
            Limit::RequestsPerMonth => "requests_per_month",
            Limit::TokensPerMinute => "tokens_per_minute",
            Limit::InputTokensPerDay => "input_tokens_per_day",
            Limit::OutputTokensPerDay => "output_tokens_per_day",
            Limit::InputTokensPerMonth => "input_tokens_per_month",
            Limit::OutputTokensPerMonth => "output_tokens_per_month",
            Limit::MaxConcurrent => "max_concurrent",
            Limit::DailyBudgetCents => "daily_budget_cents",
            Limit::MonthlyBudgetCents => "monthly_budget_cents",
        }
    }

    pub fn from_name(name: &str) -> Option<Limit> {
        Limit::ALL.iter().copied().find(|l| l.name() == name)
    }
}

/// Keys of `overrides` that hold model lists rather than numbers.
pub const MODEL_LIST_KEYS: [&str; 2] = ["allowed_models", "blocked_models"];

/// What went wrong while reading a profile or validating overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub message: String,
    pub detail: String,
}

impl PolicyError {
    fn new(message: impl Into<String>, detail: impl Into<String>) -> Self {
        PolicyError {
            message: message.into(),
            detail: detail.into(),
        }
    }
}

/// The limits that apply to one subject.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    pub limits: [Option<i64>; LIMIT_COUNT],
    pub allowed_models: Option<Vec<String>>,
    pub blocked_models: Option<Vec<String>>,
    /// `features` jsonb of the profile: `{"name": false}` switches a feature off.
    pub features: Map<String, Value>,
    pub profile_active: bool,
    /// The model to call when a request names none (`profiles.default_model`).
    pub default_model: Option<String>,
    /// A cheaper model to call past an emergency threshold (`profiles.fallback_model`).
    pub fallback_model: Option<String>,
}

impl Policy {
    /// Heap bytes this policy owns, approximately (its cache is bounded in bytes).
    pub fn heap_bytes(&self) -> usize {
        let names = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map_or(0, |v| v.iter().map(|s| std::mem::size_of::<String>() + s.len()).sum())
        };
        let name = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len());
        names(&self.allowed_models)
            + names(&self.blocked_models)
            + crate::bounded::json_map_bytes(&self.features)
            + name(&self.default_model)
            + name(&self.fallback_model)
    }
}

/// Why a request is refused before any counter is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    ModelBlocked,
    ModelNotAllowed,
    FeatureDisabled,
}

impl Gate {
    pub fn reason(self) -> &'static str {
        match self {
            Gate::ModelBlocked => "model_blocked",
            Gate::ModelNotAllowed => "model_not_allowed",
            Gate::FeatureDisabled => "feature_disabled",
        }
    }
}

fn limit_value(key: &str, v: &Value) -> Result<Option<i64>, PolicyError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(x) if x >= 0 => Ok(Some(x)),
            _ => Err(PolicyError::new(
                format!("limit \"{key}\" must be a non-negative integer or null"),
                format!("got {n}"),
            )),
        },
        other => Err(PolicyError::new(
            format!("limit \"{key}\" must be a non-negative integer or null"),
            format!("got {}", type_name(other)),
        )),
    }
}

fn model_list(key: &str, v: &Value) -> Result<Option<Vec<String>>, PolicyError> {
    match v {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(PolicyError::new(
                    format!("\"{key}\" must be an array of model names or null"),
                    format!("it holds {}", type_name(other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(PolicyError::new(
            format!("\"{key}\" must be an array of model names or null"),
            format!("got {}", type_name(other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a subject's `overrides`: an object whose keys are limit names or model-list keys.
pub fn validate_overrides(overrides: &Value) -> Result<(), PolicyError> {
    let obj = match overrides {
        Value::Object(o) => o,
        Value::Null => return Ok(()),
        other => {
            return Err(PolicyError::new(
                "overrides must be a JSON object",
                format!("got {}", type_name(other)),
            ))
        }
    };
    for (k, v) in obj {
        if Limit::from_name(k).is_some() {
            limit_value(k, v)?;
        } else if MODEL_LIST_KEYS.contains(&k.as_str()) {
            model_list(k, v)?;
        } else {
            return Err(PolicyError::new(
                format!("unknown key \"{k}\" in overrides"),
                format!(
                    "allowed keys: {}, {}",
                    Limit::ALL.iter().map(|l| l.name()).collect::<Vec<_>>().join(", "),
                    MODEL_LIST_KEYS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A profile's `features`: an object whose values are booleans.
pub fn validate_features(features: &Value) -> Result<(), PolicyError> {
    let Value::Object(obj) = features else {
        return Err(PolicyError::new(
            "features must be a JSON object",
            format!("got {}", type_name(features)),
        ));
    };
    match obj.iter().find(|(_, v)| !v.is_boolean()) {
        None => Ok(()),
        Some((k, v)) => Err(PolicyError::new(
            format!("feature \"{k}\" must be true or false"),
            format!("got {}", type_name(v)),
        )),
    }
}

impl Policy {
    /// Reads a profile row given as `to_jsonb(profiles)`.
    pub fn from_profile(profile: &Value) -> Result<Policy, PolicyError> {
        let obj = profile
            .as_object()
            .ok_or_else(|| PolicyError::new("profile must be a JSON object", type_name(profile)))?;
        let mut p = Policy {
            profile_active: true,
            ..Policy::default()
        };
        for (i, l) in Limit::ALL.iter().enumerate() {
            if let Some(v) = obj.get(l.name()) {
                p.limits[i] = limit_value(l.name(), v)?;
            }
        }
        if let Some(v) = obj.get("allowed_models") {
            p.allowed_models = model_list("allowed_models", v)?;
        }
        if let Some(v) = obj.get("blocked_models") {
            p.blocked_models = model_list("blocked_models", v)?;
        }
        if let Some(Value::Object(f)) = obj.get("features") {
            p.features = f.clone();
        }
        if let Some(Value::Bool(a)) = obj.get("is_active") {
            p.profile_active = *a;
        }
        let text = |k: &str| match obj.get(k) {
            Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
            _ => None,
        };
        p.default_model = text("default_model");
        p.fallback_model = text("fallback_model");
        Ok(p)
    }

    /// Replaces every limit that `overrides` names (a present key with `null` means unlimited).
    pub fn apply_overrides(&mut self, overrides: &Value) -> Result<(), PolicyError> {
        validate_overrides(overrides)?;
        let Some(obj) = overrides.as_object() else {
            return Ok(());
        };
        for (k, v) in obj {
            if let Some(l) = Limit::from_name(k) {
                self.limits[l as usize] = limit_value(k, v)?;
            } else if k == "allowed_models" {
                self.allowed_models = model_list(k, v)?;
            } else if k == "blocked_models" {
                self.blocked_models = model_list(k, v)?;
            }
        }
        Ok(())
    }

    /// An active policy with just these limits (tests and examples).
    pub fn with_limits(pairs: &[(Limit, i64)]) -> Policy {
        let mut p = Policy {
            profile_active: true,
            ..Policy::default()
        };
        for (l, v) in pairs {
            p.limits[*l as usize] = Some(*v);
        }
        p
    }

    pub fn limit(&self, l: Limit) -> Option<i64> {
        self.limits[l as usize]
    }

    /// Whether a money budget (daily or monthly) applies.
    pub fn has_budget(&self) -> bool {
        self.limit(Limit::DailyBudgetCents).is_some() || self.limit(Limit::MonthlyBudgetCents).is_some()
    }

    /// The smallest budget that applies, in micro-units.
    pub fn smallest_budget_micros(&self) -> Option<i64> {
        [Limit::DailyBudgetCents, Limit::MonthlyBudgetCents]
            .into_iter()
            .filter_map(|l| self.limit(l))
            .min()
            .map(crate::money::cents_to_micros)
    }

    /// The model a request calls: the one it names, else the profile's default.
    pub fn model_for<'a>(&'a self, requested: Option<&'a str>) -> Option<&'a str> {
        requested.or(self.default_model.as_deref())
    }

    /// Model and feature gates. A request that names no model is not checked against the model
    /// lists; an empty `allowed_models` array allows no model at all.
    pub fn gate(&self, model: Option<&str>, feature: Option<&str>) -> Option<Gate> {
        if let Some(m) = model {
            if self.blocked_models.as_ref().is_some_and(|b| b.iter().any(|x| x == m)) {
                return Some(Gate::ModelBlocked);
            }
            if self.allowed_models.as_ref().is_some_and(|a| !a.iter().any(|x| x == m)) {
                return Some(Gate::ModelNotAllowed);
            }
        }
        if let Some(f) = feature {
            if matches!(self.features.get(f), Some(Value::Bool(false))) {
                return Some(Gate::FeatureDisabled);
            }
        }
        None
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn features_are_an_object_of_booleans() {
        assert!(validate_features(&json!({})).is_ok());
        assert!(validate_features(&json!({"video": false, "chat": true})).is_ok());
        assert!(validate_features(&json!([])).is_err());
        let e = validate_features(&json!({"video": {"nested": [false]}})).unwrap_err();
        assert_eq!(e.message, "feature \"video\" must be true or false");
        assert!(validate_features(&json!({"n": 1})).is_err());
    }

    #[test]
    fn gates_and_activity_as_the_sql_surface_spells_them() {
        assert_eq!(Gate::ModelBlocked.reason(), "model_blocked");
        assert_eq!(Gate::ModelNotAllowed.reason(), "model_not_allowed");
        assert_eq!(Gate::FeatureDisabled.reason(), "feature_disabled");
        assert!(Policy::with_limits(&[]).profile_active);
        assert!(Policy::from_profile(&json!({"name": "p"})).unwrap().profile_active);
    }

    #[test]
    fn default_and_fallback_models_and_budgets_come_from_the_profile() {
        let p = Policy::from_profile(&json!({"default_model": "m-small", "fallback_model": "",
                                             "daily_budget_cents": 250, "monthly_budget_cents": 100}))
        .unwrap();
        assert_eq!(p.model_for(None), Some("m-small"));
        assert_eq!(p.model_for(Some("m-big")), Some("m-big"));
        assert_eq!(p.fallback_model, None, "an empty name is no model");
        assert!(p.has_budget());
        assert_eq!(p.smallest_budget_micros(), Some(1_000_000));
        let none = Policy::with_limits(&[(Limit::RequestsPerDay, 1)]);
        assert!(!none.has_budget());
        assert_eq!((none.smallest_budget_micros(), none.model_for(None)), (None, None));
    }

    #[test]
    fn names_round_trip() {
        for l in Limit::ALL {
            assert_eq!(Limit::from_name(l.name()), Some(l));
            assert_eq!(Limit::ALL[l as usize], l);
        }
        assert_eq!(Limit::from_name("requests_per_fortnight"), None);
    }

    #[test]
    fn profile_and_overrides_merge() {
        let profile = json!({"name": "free", "requests_per_day": 100, "input_tokens_per_month": 100000,
                             "allowed_models": ["a", "b"], "features": {"video": false}, "is_active": true});
        let mut p = Policy::from_profile(&profile).unwrap();
        assert_eq!(p.limit(Limit::RequestsPerDay), Some(100));
        assert_eq!(p.limit(Limit::RequestsPerMonth), None);
        p.apply_overrides(&json!({"requests_per_day": 5, "input_tokens_per_month": null, "blocked_models": ["b"]}))
            .unwrap();
        assert_eq!(p.limit(Limit::RequestsPerDay), Some(5));
        assert_eq!(p.limit(Limit::InputTokensPerMonth), None);
        assert_eq!(p.gate(Some("a"), None), None);
        assert_eq!(p.gate(Some("b"), None), Some(Gate::ModelBlocked));
        assert_eq!(p.gate(Some("c"), None), Some(Gate::ModelNotAllowed));
        assert_eq!(p.gate(None, Some("video")), Some(Gate::FeatureDisabled));
        assert_eq!(p.gate(None, Some("blog")), None);
    }

    #[test]
    fn bad_overrides_are_named() {
        let e = validate_overrides(&json!({"requests_per_dya": 5})).unwrap_err();
        assert!(e.message.contains("requests_per_dya"), "{e:?}");
        let e = validate_overrides(&json!({"requests_per_day": -1})).unwrap_err();
        assert!(e.message.contains("non-negative"), "{e:?}");
        let e = validate_overrides(&json!({"requests_per_day": "5"})).unwrap_err();
        assert!(e.detail.contains("string"), "{e:?}");
        let e = validate_overrides(&json!({"requests_per_day": 1.5})).unwrap_err();
        assert!(e.detail.contains("1.5"), "{e:?}");
        let e = validate_overrides(&json!({"allowed_models": [1]})).unwrap_err();
        assert!(e.message.contains("allowed_models"), "{e:?}");
        assert!(validate_overrides(&json!([1])).is_err());
        assert!(validate_overrides(&json!({})).is_ok());
        assert!(validate_overrides(&json!({"max_concurrent": 0, "allowed_models": null})).is_ok());
    }

    proptest! {
        #[test]
        fn any_valid_override_wins(idx in 0usize..LIMIT_COUNT, v in proptest::option::of(0i64..i64::MAX), base in proptest::option::of(0i64..1_000_000)) {
            let l = Limit::ALL[idx];
            let mut p = Policy::from_profile(&json!({ l.name(): base })).unwrap();
            p.apply_overrides(&json!({ l.name(): v })).unwrap();
            prop_assert_eq!(p.limit(l), v);
        }

        #[test]
        fn negative_limits_never_pass(idx in 0usize..LIMIT_COUNT, v in i64::MIN..0) {
            let l = Limit::ALL[idx];
            let o = json!({ l.name(): v });
            prop_assert!(validate_overrides(&o).is_err());
            prop_assert!(Policy::from_profile(&o).is_err());
        }
    }
}
