//! Operator edits of the coordinator's settings (`fedgectl config show | set KEY VALUE`): dotted keys over the
//! [`CoordinatorConfig`] seen as a TOML document, and the set of operator overrides the store keeps so that they
//! survive a restart (applied on top of server.toml's `[coordinator]`).
//!
//! Pure functions: no I/O, no clock. A refused value is reported with its key, the reason and the allowed range;
//! nothing here may accept a configuration that [`CoordinatorConfig::validate`] refuses.

use crate::coordinator::CoordinatorConfig;
use fedge_shared::admin::ConfigEntry;

/// The plan's FedProx μ, which is not a setting (the strategy's `mu` is): `set` refuses it, `entries` leaves it out.
pub const PROX_MU: &str = "hyper.prox_mu";

/// Why a setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("{key} = {value} refused: {reason}{}", allowed.map(|a| format!(" (allowed: {a})")).unwrap_or_default())]
    Refused { key: String, value: String, reason: String, allowed: Option<&'static str> },
    #[error("stored operator settings are unreadable: {0}")]
    Stored(String),
}

/// The allowed values of a key, for error messages and `config show`.
pub fn allowed(key: &str) -> Option<&'static str> {
    Some(match key {
        "min_agents" => "an integer >= 1, <= max_agents",
        "min_available" => "an integer >= min_agents",
        "max_agents" => "an integer >= min_agents",
        "fraction" => "a number in (0, 1]",
        "overselect" => "a number in [1, 10]",
        "seed" => "an integer >= 0",
        "round_timeout_ms" => "an integer >= 1 (milliseconds)",
        "retry_backoff_ms" => "an integer >= 0 (milliseconds)",
        "max_examples" => "an integer >= 1",
        "hyper.epochs" => "an integer >= 1",
        "hyper.batch_size" => "an integer >= 1",
        "hyper.learning_rate" => "a number > 0",
        "hyper.momentum" => "a number in [0, 1)",
        "hyper.optimizer" => "\"sgd\" or \"adam\"",
        "hyper.weight_decay" => "a number >= 0",
        "hyper.loss" => "\"cross_entropy\" or \"mse\"",
        "hyper.upload" => "\"int8\" (plain updates a byte a coordinate, the default) or \"f32\" (exact)",
        "hyper.seed" | "hyper.deadline_ms" => "an integer >= 0",
        "hyper.trainable" => "a list of glob patterns over the model's weight names, e.g. [\"head.*\"] ([] = all)",
        "strategy.kind" => {
            "fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad, or (plain rounds only) median, trimmed_mean, krum"
        }
        "strategy.mu" => "a number >= 0 (fedprox)",
        "strategy.eta" => "a number > 0 (fedavgm, fedadam, fedyogi, fedadagrad)",
        "strategy.beta1" => "a number in [0, 1) (fedadam, fedyogi, fedadagrad)",
        "strategy.beta2" => "a number in [0, 1) (fedadam, fedyogi)",
        "strategy.tau" => "a number > 0 (fedadam, fedyogi, fedadagrad)",
        "strategy.momentum" => "a number in [0, 1) (fedavgm)",
        "strategy.beta" => "a number in [0, 0.5): the fraction trimmed at each end (trimmed_mean)",
        "strategy.byzantine" => "an integer >= 0 with 2 * byzantine + 3 <= min_agents (krum)",
        "strategy.keep" => "an integer >= 1: how many of the best updates are averaged (krum)",
        _ => return None,
    })
}

/// Every setting of `config` as dotted key and TOML value, sorted by key; `overridden` marks the operator's.
pub fn entries(config: &CoordinatorConfig, overrides: &toml::Table) -> Vec<ConfigEntry> {
    let mut out = vec![];
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(config) {
        flatten("", &t, &mut out);
    }
    out.retain(|e| e.key != PROX_MU);
    for e in &mut out {
        e.overridden = overrides.contains_key(&e.key)
            || (e.key.starts_with("strategy.") && overrides.keys().any(|k| k.starts_with("strategy")));
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<ConfigEntry>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            // Settings are f32 or f64; show an f32 the way it was written (0.05, not 0.05000000074505806).
            toml::Value::Float(f) if f.is_finite() && (*f as f32) as f64 == *f => {
                out.push(ConfigEntry { key, value: format!("{:?}", *f as f32), overridden: false })
            }
            v => out.push(ConfigEntry { key, value: v.to_string(), overridden: false }),
        }
    }
}

/// Parses an operator's value: TOML (`3`, `0.1`, `true`, `"adam"`, `{ kind = "fedprox", mu = 0.1 }`), or else a bare
/// word taken as a string (`adam`).
pub fn parse_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.trim().to_string()),
    }
}

/// Sets `key` (dotted) to `value` in `doc`, creating tables on the way. Setting `strategy.kind` replaces the whole
/// strategy table (the parameters of one strategy mean nothing to another).
fn set_dotted(doc: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    if key == "strategy.kind" {
        let mut t = toml::Table::new();
        t.insert("kind".into(), value);
        doc.insert("strategy".into(), toml::Value::Table(t));
        return Ok(());
    }
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty key segment".into());
    }
    let (last, path) = parts.split_last().ok_or("empty key")?;
    let mut table = doc;
    for p in path {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{p} is not a section")),
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// `base` with every override applied, validated.
pub fn apply_all(base: &CoordinatorConfig, overrides: &toml::Table) -> Result<CoordinatorConfig, SettingError> {
    let mut doc = match toml::Value::try_from(base) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(SettingError::Stored("the configuration is not a table".into())),
    };
    // `strategy.kind` first: it replaces the strategy table that other strategy keys then fill in.
    let mut keys: Vec<&String> = overrides.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "strategy.kind", k.as_str()));
    for k in keys {
        if let Some(v) = overrides.get(k) {
            set_dotted(&mut doc, k, v.clone()).map_err(|e| SettingError::Stored(format!("{k}: {e}")))?;
        }
    }
    let config: CoordinatorConfig =
        toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| SettingError::Stored(e.to_string()))?;
    config.validate().map_err(|e| SettingError::Stored(e.to_string()))?;
    Ok(config)
}

/// Sets `key` to the operator's `value_text` on top of `base` and the existing `overrides`. Returns the new
/// configuration (validated) and the new overrides; refuses with the key, the reason and the allowed range.
pub fn set(
    base: &CoordinatorConfig,
    overrides: &toml::Table,
    key: &str,
    value_text: &str,
) -> Result<(CoordinatorConfig, toml::Table), SettingError> {
    let key = key.trim().trim_start_matches("coordinator.");
    let refused = |reason: String| SettingError::Refused {
        key: key.to_string(),
        value: value_text.to_string(),
        reason,
        allowed: allowed(key),
    };
    if key == PROX_MU {
        return Err(refused(crate::coordinator::PROX_MU_IS_THE_STRATEGYS.into()));
    }
    let value = parse_value(value_text);
    let mut next = overrides.clone();
    if key == "strategy.kind" || key == "strategy" {
        next.retain(|k, _| !k.starts_with("strategy"));
    }
    next.insert(key.to_string(), value);
    let mut doc = match toml::Value::try_from(base) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(refused("the configuration is not a table".into())),
    };
    let mut keys: Vec<&String> = next.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "strategy.kind", k.as_str()));
    for k in keys {
        if let Some(v) = next.get(k) {
            set_dotted(&mut doc, k, v.clone()).map_err(&refused)?;
        }
    }
    let config: CoordinatorConfig = toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| {
        let msg = e.message().trim().to_string();
        refused(if msg.starts_with("unknown field") || msg.contains("unknown variant") {
            format!("unknown key or value: {msg}")
        } else {
            msg
        })
    })?;
    config.validate().map_err(|e| refused(e.to_string()))?;
    Ok((config, next))
}

/// The overrides as the store keeps them (a TOML document of quoted dotted keys).
pub fn overrides_to_text(overrides: &toml::Table) -> String {
    toml::to_string(overrides).unwrap_or_default()
}

/// Reads stored overrides.
pub fn overrides_from_text(text: &str) -> Result<toml::Table, SettingError> {
    toml::from_str(text).map_err(|e: toml::de::Error| SettingError::Stored(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::TrainHyper;
    use proptest::prelude::*;

    fn base() -> CoordinatorConfig {
        CoordinatorConfig {
            min_agents: 2,
            min_available: None,
            max_agents: 10,
            fraction: 1.0,
            overselect: 1.0,
            seed: 1,
            round_timeout_ms: 10_000,
            retry_backoff_ms: 100,
            max_examples: None,
            hyper: TrainHyper::default(),
            strategy: Default::default(),
        }
    }

    #[test]
    fn fedprox_mu_is_set_by_the_strategy_alone_and_hyper_prox_mu_is_refused_naming_strategy_mu() {
        let e = set(&base(), &toml::Table::new(), "hyper.prox_mu", "0.1").unwrap_err().to_string();
        assert!(e.contains("hyper.prox_mu") && e.contains("strategy.mu"), "{e}");
        let e = set(&base(), &toml::Table::new(), "coordinator.hyper.prox_mu", "0").unwrap_err().to_string();
        assert!(e.contains("strategy.mu"), "refused whatever the value: {e}");
        assert!(entries(&base(), &toml::Table::new()).iter().all(|e| e.key != PROX_MU), "not shown as a setting");
        let stored: toml::Table = toml::from_str("\"hyper.prox_mu\" = 0.1").unwrap();
        let e = apply_all(&base(), &stored).unwrap_err().to_string();
        assert!(e.contains("strategy.mu"), "{e}");
        // The plan carries what the strategy's configure_round puts there: FedProx's mu, or 0 for any other.
        let (c, _) = set(&base(), &toml::Table::new(), "strategy", "{ kind = \"fedprox\", mu = 0.1 }").unwrap();
        assert_eq!(c.strategy.build().unwrap().configure_round(1, &c.hyper).prox_mu, 0.1);
        let c = base();
        assert_eq!(c.strategy.build().unwrap().configure_round(1, &c.hyper).prox_mu, 0.0);
    }

    #[test]
    fn a_valid_setting_changes_only_its_key_and_is_remembered_as_an_override() {
        let (c, o) = set(&base(), &toml::Table::new(), "hyper.learning_rate", "0.2").unwrap();
        assert_eq!(c.hyper.learning_rate, 0.2);
        assert_eq!(CoordinatorConfig { hyper: base().hyper, ..c.clone() }, base());
        assert_eq!(o.len(), 1);
        let again = apply_all(&base(), &overrides_from_text(&overrides_to_text(&o)).unwrap()).unwrap();
        assert_eq!(again, c);
        let shown = entries(&c, &o);
        let lr = shown.iter().find(|e| e.key == "hyper.learning_rate").unwrap();
        assert!(lr.overridden);
        assert_eq!(parse_value(&lr.value).as_float().map(|v| v as f32), Some(0.2));
    }

    #[test]
    fn an_out_of_range_value_is_refused_naming_the_key_and_the_range() {
        let e = set(&base(), &toml::Table::new(), "fraction", "1.5").unwrap_err().to_string();
        assert!(e.contains("fraction") && e.contains("(0, 1]"), "{e}");
        let e = set(&base(), &toml::Table::new(), "hyper.epochs", "0").unwrap_err().to_string();
        assert!(e.contains("hyper.epochs") && e.contains(">= 1"), "{e}");
        let e = set(&base(), &toml::Table::new(), "max_agents", "1").unwrap_err().to_string();
        assert!(e.contains("max_agents") && e.contains(">= min_agents"), "{e}");
        let e = set(&base(), &toml::Table::new(), "hyper.weight_decay", "-0.1").unwrap_err().to_string();
        assert!(e.contains("hyper.weight_decay") && e.contains(">= 0"), "{e}");
    }

    #[test]
    fn trainable_patterns_are_a_setting_like_the_other_hyper_parameters_and_a_bad_glob_is_refused() {
        assert!(base().hyper.trainable.is_empty(), "the whole model unless configured");
        // What `fedgectl round start --train-only 'head.*' --train-only '*.bias'` sends.
        let (c, o) = set(&base(), &toml::Table::new(), "hyper.trainable", r#"["head.*", "*.bias"]"#).unwrap();
        assert_eq!(c.hyper.trainable, ["head.*", "*.bias"]);
        let shown = entries(&c, &o);
        let t = shown.iter().find(|e| e.key == "hyper.trainable").unwrap();
        assert!(t.overridden);
        assert_eq!(apply_all(&base(), &overrides_from_text(&overrides_to_text(&o)).unwrap()).unwrap(), c);
        let (whole, _) = set(&base(), &o, "hyper.trainable", "[]").unwrap();
        assert!(whole.hyper.trainable.is_empty());
        let e = set(&base(), &toml::Table::new(), "hyper.trainable", r#"["head.["]"#).unwrap_err().to_string();
        assert!(e.contains("hyper.trainable") && e.contains("\"head.[\"") && e.contains("glob"), "{e}");
    }

    #[test]
    fn weight_decay_is_a_setting_like_the_other_hyper_parameters() {
        assert_eq!(base().hyper.weight_decay, 0.0, "off unless configured");
        let (c, o) = set(&base(), &toml::Table::new(), "hyper.weight_decay", "5e-4").unwrap();
        assert_eq!(c.hyper.weight_decay, 5e-4);
        let shown = entries(&c, &o);
        let wd = shown.iter().find(|e| e.key == "hyper.weight_decay").unwrap();
        assert!(wd.overridden);
        assert_eq!(apply_all(&base(), &o).unwrap().hyper.weight_decay, 5e-4);
    }

    #[test]
    fn an_unknown_key_or_strategy_is_refused_naming_it() {
        let e = set(&base(), &toml::Table::new(), "hyper.lr", "0.1").unwrap_err().to_string();
        assert!(e.contains("hyper.lr") && e.contains("unknown"), "{e}");
        let e = set(&base(), &toml::Table::new(), "strategy.kind", "fedmagic").unwrap_err().to_string();
        assert!(e.contains("strategy.kind") && e.contains("fedavg, fedprox"), "{e}");
    }

    #[test]
    fn switching_strategy_drops_the_old_strategys_parameters() {
        let (_, o) = set(&base(), &toml::Table::new(), "strategy.kind", "fedadam").unwrap();
        let (c, o) = set(&base(), &o, "strategy.eta", "0.5").unwrap();
        assert!(matches!(c.strategy, crate::strategy::StrategyConfig::FedAdam { eta, .. } if eta == 0.5));
        // fedprox needs mu: the bare switch is refused, naming it.
        let e = set(&base(), &o, "strategy.kind", "fedprox").unwrap_err().to_string();
        assert!(e.contains("strategy.kind") && e.contains("mu"), "{e}");
        let (c, o) = set(&base(), &o, "strategy", "{ kind = \"fedprox\", mu = 0.1 }").unwrap();
        assert_eq!(c.strategy, crate::strategy::StrategyConfig::FedProx { mu: 0.1 });
        assert!(!o.contains_key("strategy.eta"));
    }

    proptest! {
        #[test]
        fn whatever_set_accepts_validates_and_survives_a_restart(
            key in prop::sample::select(vec!["min_agents", "max_agents", "fraction", "overselect", "hyper.epochs",
                "hyper.batch_size", "hyper.learning_rate", "hyper.momentum", "hyper.weight_decay", "round_timeout_ms"]),
            value in -3.0f64..20.0,
            integer in any::<bool>(),
        ) {
            let text = if integer { format!("{}", value.round() as i64) } else { format!("{value}") };
            if let Ok((c, o)) = set(&base(), &toml::Table::new(), key, &text) {
                prop_assert!(c.validate().is_ok());
                let restored = apply_all(&base(), &overrides_from_text(&overrides_to_text(&o)).unwrap()).unwrap();
                prop_assert_eq!(restored, c);
            } else {
                let e = set(&base(), &toml::Table::new(), key, &text).unwrap_err().to_string();
                prop_assert!(e.contains(key), "{}", e);
            }
        }
    }
}
